//! Forward: where the rewritten packet goes. Towards a target: a FIB lookup gives the
//! egress interface and MACs, and any failure drops the packet (counted by reason)
//! before it is rewritten; the egress must be an interface the program is attached to
//! (a frame redirected elsewhere could be lost unseen). Back to a consumer: the
//! interface the flow arrived on — still in the flow's consumer network — from its own
//! MAC to the client's, because a FIB lookup cannot tell overlapping consumer networks
//! apart.

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
    maps::{Addr, FAMILY_IPV6, Flow, Interface, bounce},
};
use network_types::eth::EthHdr;

use crate::{icmp, maps::INTERFACES, mem, outcome::Outcome, parse::Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Route {
    pub ifindex: u32,
    pub mac_src: [u8; 6],
    pub mac_dst: [u8; 6],
}

impl Route {
    /// The way out a consumer-to-target flow keeps (the last route lookup's result).
    #[inline(always)]
    pub fn kept(flow: &Flow) -> Self {
        Self {
            ifindex: flow.ifindex,
            mac_src: flow.mac_src,
            mac_dst: flow.mac_dst,
        }
    }

    /// The way back to the consumer of reply entry `flow`: its interface, if that still
    /// faces the flow's consumer network, from that interface's own MAC; and the
    /// interface's MTU.
    #[inline(always)]
    pub fn back(flow: &Flow) -> Result<(Self, u32), Outcome> {
        match INTERFACES.get(flow.ifindex) {
            Some(interface) if interface.consumer() && interface.network == flow.network => {
                let route = Self {
                    ifindex: flow.ifindex,
                    mac_src: interface.mac,
                    mac_dst: flow.mac_dst,
                };
                Ok((route, interface.mtu))
            }
            _ => Err(Outcome::drop_for(counter::DROP_FLOW_GONE, flow.slot)),
        }
    }

    /// A kept route still takes `packet`, leaving as `family`: it is no longer than the
    /// egress MTU (the route lookup checks that only once a second).
    #[inline(always)]
    pub fn takes(
        &self,
        ctx: &XdpContext,
        packet: &Packet,
        family: u8,
        slot: u32,
    ) -> Result<(), Outcome> {
        match INTERFACES.get(self.ifindex) {
            Some(egress) => fits(ctx, packet, mtu_for(packet, family, egress.mtu), slot),
            None => Ok(()),
        }
    }
}

/// An egress MTU as `packet` sees it when it leaves as `family`: translated between
/// IPv6 and IPv4, its header shrinks or grows by 20 bytes.
#[inline(always)]
pub fn mtu_for(packet: &Packet, family: u8, mtu: u32) -> u32 {
    if mtu == 0 || packet.family() == family {
        mtu
    } else if packet.is_ipv6() {
        mtu + 20
    } else {
        mtu.saturating_sub(20)
    }
}

/// `packet`'s length once it leaves as `family`.
#[inline(always)]
fn length_as(packet: &Packet, family: u8) -> u32 {
    if packet.family() == family {
        packet.ip_len()
    } else if packet.is_ipv6() {
        packet.ip_len() - 20
    } else {
        packet.ip_len() + 20
    }
}

/// Whether `packet` fits an egress MTU of `mtu` (0: unknown); if not, its sender is
/// told (or it is dropped).
#[inline(always)]
pub fn fits(ctx: &XdpContext, packet: &Packet, mtu: u32, slot: u32) -> Result<(), Outcome> {
    if mtu != 0 && packet.ip_len() > mtu {
        return Err(icmp::too_big(ctx, packet, mtu, slot));
    }
    Ok(())
}

/// A router does not forward a packet whose TTL would reach zero: it tells the sender.
#[inline(always)]
pub fn check_ttl(ctx: &XdpContext, packet: &Packet, slot: u32) -> Result<(), Outcome> {
    if packet.hop_limit() > 1 {
        Ok(())
    } else {
        Err(icmp::time_exceeded(ctx, packet, slot))
    }
}

/// Where a packet towards a target goes: its new source and destination (of `family`:
/// the packet's, or IPv4 for an IPv6 packet translated), the interface the route is
/// looked up from (the NAT address's), and the endpoint slot it is counted for.
pub struct Hop<'a> {
    pub src: &'a Addr,
    pub dst: &'a Addr,
    pub family: u8,
    pub via: u32,
    pub slot: u32,
    /// Set by [`route`] when the packet is too big for the route: its MTU.
    pub mtu: u32,
}

/// The route for `hop`, looked up as if the packet arrived on `hop.via`. A packet too
/// big for it is dropped with the route's MTU in `hop` (see [`unroutable`]).
#[inline(never)]
pub fn route(ctx: &XdpContext, packet: &Packet, hop: &mut Hop) -> Result<Route, Outcome> {
    let mut request = core::mem::MaybeUninit::<FibParams>::uninit();
    mem::zero(request.as_mut_ptr());
    // SAFETY: zeroed just above; an all-zero `bpf_fib_lookup` is a valid (empty) request.
    let params = unsafe { request.assume_init_mut() };
    params.l4_protocol = packet.proto();
    params.__bindgen_anon_1.tot_len = length_as(packet, hop.family) as u16;
    params.ifindex = hop.via;
    if hop.family == FAMILY_IPV6 {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = hop.src.words_be;
        params.__bindgen_anon_4.ipv6_dst = hop.dst.words_be;
    } else {
        params.family = AF_INET;
        if !packet.is_ipv6() {
            params.__bindgen_anon_2.tos = packet.ipv4().tos;
        }
        params.__bindgen_anon_3.ipv4_src = hop.src.ipv4_be();
        params.__bindgen_anon_4.ipv4_dst = hop.dst.ipv4_be();
    }
    // SAFETY: the helper reads and writes only `params`.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &raw mut *params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    let reason = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => match INTERFACES.get(params.ifindex) {
            Some(egress) if egress.roles != 0 => {
                return Ok(Route {
                    ifindex: params.ifindex,
                    mac_src: params.smac,
                    mac_dst: params.dmac,
                });
            }
            _ => counter::DROP_EGRESS_NOT_ATTACHED,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => counter::DROP_FIB_NO_NEIGHBOUR,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            // SAFETY: on this result the kernel wrote the route's MTU there.
            let mtu = unsafe { params.__bindgen_anon_1.mtu_result } as u32;
            hop.mtu = mtu_for(packet, hop.family, mtu);
            counter::DROP_FIB_FRAG_NEEDED
        }
        _ => counter::DROP_FIB_UNREACHABLE,
    };
    Err(Outcome::drop_for(reason, hop.slot))
}

/// What becomes of a packet whose route lookup failed with `outcome`: one too big for
/// the route tells its sender (decided here, in the caller's stack frame: the lookup's
/// own is large).
#[inline(always)]
pub fn unroutable(ctx: &XdpContext, packet: &Packet, hop: &Hop, outcome: Outcome) -> Outcome {
    if outcome.counter() == counter::DROP_FIB_FRAG_NEEDED && hop.mtu != 0 {
        icmp::too_big(ctx, packet, hop.mtu, hop.slot)
    } else {
        outcome
    }
}

/// Sends the rewritten packet: back out the interface it came in on, or to another.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Packet,
    route: &Route,
    counter: u32,
    slot: u32,
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
    Outcome::new(action, counter, slot)
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
pub fn redirect(ifindex: u32) -> u32 {
    // SAFETY: a plain helper call; it returns the XDP action to take.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}
