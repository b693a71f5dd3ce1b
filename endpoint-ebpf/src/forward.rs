//! Forward: where the rewritten packet goes. Towards a target: a FIB lookup gives the
//! egress interface and MACs, and any failure drops the packet (counted by reason)
//! before it is rewritten. Back to a consumer: the interface and MACs the flow arrived
//! with, because a FIB lookup cannot tell overlapping consumer networks apart.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use endpoint_common::{
    counter,
    maps::{Addr, Flow, Interface, bounce},
};
use network_types::eth::EthHdr;

use crate::{outcome::Outcome, parse::Tcp};

const AF_INET: u8 = 2;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Route {
    pub ifindex: u32,
    pub mac_src: [u8; 6],
    pub mac_dst: [u8; 6],
}

impl Route {
    /// The way out a flow entry keeps: for replies, where the flow came from; towards
    /// a target, the last route lookup's result.
    #[inline(always)]
    pub fn kept(flow: &Flow) -> Self {
        Self {
            ifindex: flow.ifindex,
            mac_src: flow.mac_src,
            mac_dst: flow.mac_dst,
        }
    }
}

/// A router does not forward a packet whose TTL would reach zero.
#[inline(always)]
pub fn check_ttl(packet: &Tcp, endpoint: u32) -> Result<(), Outcome> {
    // SAFETY: `parse` checked the header lies within the frame.
    if unsafe { (*packet.ip).ttl } > 1 {
        Ok(())
    } else {
        Err(Outcome::drop_for(counter::DROP_TTL_EXPIRED, endpoint))
    }
}

/// Where a packet towards a target goes: its new source and destination, and the
/// interface the route is looked up from (the NAT address's provider interface).
#[derive(Clone, Copy)]
pub struct Hop {
    pub src: Addr,
    pub dst: Addr,
    pub ifindex: u32,
}

/// The route for `hop`, looked up as if the packet arrived on `hop.ifindex`.
#[inline(never)]
pub fn route(ctx: &XdpContext, packet: &Tcp, hop: &Hop, endpoint: u32) -> Result<Route, Outcome> {
    let Hop { src, dst, ifindex } = *hop;
    // SAFETY: `parse` checked the header lies within the frame.
    let ip = unsafe { &*packet.ip };
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid (empty) request.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.proto;
    params.__bindgen_anon_1.tot_len = ip.tot_len();
    params.__bindgen_anon_2.tos = ip.tos;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = src.ipv4_be();
    params.__bindgen_anon_4.ipv4_dst = dst.ipv4_be();
    // SAFETY: the helper reads and writes only `params`.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    let reason = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            return Ok(Route {
                ifindex: params.ifindex,
                mac_src: params.smac,
                mac_dst: params.dmac,
            });
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => counter::DROP_FIB_NO_NEIGHBOUR,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => counter::DROP_FIB_FRAG_NEEDED,
        _ => counter::DROP_FIB_UNREACHABLE,
    };
    Err(Outcome::drop_for(reason, endpoint))
}

/// Sends the rewritten packet: back out the interface it came in on, or to another.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Tcp,
    route: &Route,
    counter: u32,
    endpoint: u32,
) -> Outcome {
    // SAFETY: `parse` checked the header lies within the frame.
    let eth: &mut EthHdr = unsafe { &mut *packet.eth };
    eth.src_addr = route.mac_src;
    eth.dst_addr = route.mac_dst;
    let action = if route.ifindex == ctx.ingress_ifindex() as u32 {
        bounce(ctx, interface)
    } else {
        redirect(route.ifindex)
    };
    Outcome {
        action,
        counter,
        endpoint,
    }
}

/// The action that sends the frame back out its ingress interface.
#[inline(always)]
pub fn bounce(ctx: &XdpContext, interface: &Interface) -> u32 {
    if interface.bounce == bounce::REDIRECT {
        redirect(ctx.ingress_ifindex() as u32)
    } else {
        xdp_action::XDP_TX
    }
}

#[inline(always)]
fn redirect(ifindex: u32) -> u32 {
    // SAFETY: a plain helper call; it returns the XDP action to take.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}
