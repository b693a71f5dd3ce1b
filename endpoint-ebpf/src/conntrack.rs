//! Conntrack: one LRU table shared by all CPUs holds both directions of every flow. The
//! consumer-to-target entry is keyed by consumer network + 5-tuple; the reply entry by
//! the translated 5-tuple on the provider side. A flow stays on its target for life.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext,
};
use aya_log_ebpf::{debug, warn};
use endpoint_common::{
    counter, hash,
    maps::{Addr, Endpoint, FAMILY_IPV4, Flow, FlowKey, PROTO_TCP, PROVIDER_NETWORK, flow_flag},
};

use core::ops::Deref;

use crate::{
    forward::Route,
    maps::{FLOWS, OPENING},
    outcome::Outcome,
    parse::Tcp,
    select::Choice,
};

/// How many NAT ports a new flow tries before it is dropped as exhausted (with a
/// quarter of the ports towards a target in use, all 16 are taken once in 4 billion).
const NAT_PORT_ATTEMPTS: u32 = 16;

/// The key of a packet as it arrives, in the given network.
#[inline(always)]
pub fn key_of(network: u32, packet: &Tcp) -> FlowKey {
    // SAFETY: `parse` checked the headers lie within the frame.
    let (ip, tcp) = unsafe { (&*packet.ip, &*packet.tcp) };
    FlowKey {
        network,
        src: Addr::ipv4(ip.src_addr),
        dst: Addr::ipv4(ip.dst_addr),
        src_port_be: u16::from_ne_bytes(tcp.source),
        dst_port_be: u16::from_ne_bytes(tcp.dest),
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

/// A flow entry in the table, read in place (no 72-byte copy on the 512-byte stack).
pub struct Entry(*const Flow);

impl Deref for Entry {
    type Target = Flow;

    #[inline(always)]
    fn deref(&self) -> &Flow {
        // SAFETY: a pointer the map gave out; the kernel keeps the value alive while the
        // program runs, and writers only ever store whole small fields.
        unsafe { &*self.0 }
    }
}

/// The flow entry for `key`, if any; `packet` marks it as used (and as closing on a
/// FIN or RST, as open again on a SYN). `fresh`: the first use this second.
#[inline(always)]
pub fn lookup(key: &FlowKey, packet: &Tcp) -> Option<(Entry, bool)> {
    let flow = FLOWS.get_ptr_mut(key)?;
    // SAFETY: as in `Entry`; the header was checked by `parse`.
    let fresh = unsafe {
        let now = now_s();
        let fresh = (*flow).last_seen_s != now;
        if fresh {
            (*flow).last_seen_s = now;
        }
        let tcp = &*packet.tcp;
        let closing = (*flow).flags & flow_flag::CLOSING != 0;
        if (tcp.fin() != 0 || tcp.rst() != 0) && !closing {
            (*flow).flags |= flow_flag::CLOSING;
        } else if closing && tcp.syn() != 0 && tcp.ack() == 0 {
            // The tuple is used again for a new connection.
            (*flow).flags &= !flow_flag::CLOSING;
        }
        fresh
    };
    Some((Entry(flow), fresh))
}

impl Entry {
    /// Keeps `route` as this (consumer-to-target) flow's way out, if it changed.
    #[inline(always)]
    pub fn keep_route(&self, route: &Route) {
        let flow = self.0 as *mut Flow;
        // SAFETY: as in `Entry`.
        unsafe {
            if (*flow).ifindex != route.ifindex
                || (*flow).mac_src != route.mac_src
                || (*flow).mac_dst != route.mac_dst
            {
                (*flow).ifindex = route.ifindex;
                (*flow).mac_src = route.mac_src;
                (*flow).mac_dst = route.mac_dst;
            }
        }
    }
}

/// Seconds on the monotonic clock (the agent reads the same clock to expire flows).
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: a plain helper call.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The flow a provider-side packet is a reply of, if any.
#[inline(always)]
pub fn reply(packet: &Tcp) -> Option<Entry> {
    lookup(&key_of(PROVIDER_NETWORK, packet), packet).map(|(entry, _)| entry)
}

/// A SYN without ACK: the first segment of a connection.
#[inline(always)]
pub fn is_syn(packet: &Tcp) -> bool {
    // SAFETY: as in `key_of`.
    let tcp = unsafe { &*packet.tcp };
    tcp.syn() != 0 && tcp.ack() == 0
}

/// Only a SYN may open a flow.
#[inline(always)]
pub fn require_syn(packet: &Tcp, endpoint: u32) -> Result<(), Outcome> {
    if is_syn(packet) {
        Ok(())
    } else {
        Err(Outcome::drop_for(counter::DROP_NO_FLOW, endpoint))
    }
}

/// What a new flow is built from and of, kept in per-CPU scratch (`OPENING`): along
/// the program's call chain the 512-byte stack cannot also hold them.
#[repr(C)]
pub struct Opening {
    pub choice: Choice,
    /// The route to the target, looked up before the flow is opened.
    pub route: Route,
    pub reply_key: FlowKey,
    pub reply: Flow,
    pub forward: Flow,
}

/// This CPU's scratch for opening a flow.
#[inline(always)]
pub fn opening(endpoint: u32) -> Result<&'static mut Opening, Outcome> {
    match OPENING.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
        Some(opening) => Ok(unsafe { &mut *opening }),
        None => Err(Outcome::drop_for(counter::DROP_NO_FLOW, endpoint)),
    }
}

/// Opens a flow: finds a NAT port free towards the target (the reply entry is inserted
/// only if absent, which makes the choice race-free across CPUs), then the forward entry.
// Its own BPF function: its stack frame is not added to its siblings' (the
// program's whole call chain must fit in 512 bytes).
#[inline(never)]
pub fn open(
    ctx: &XdpContext,
    key: &FlowKey,
    packet: &Tcp,
    endpoint: &Endpoint,
) -> Result<Entry, Outcome> {
    let Opening {
        choice,
        route,
        reply_key,
        reply,
        forward,
    } = opening(endpoint.id)?;
    // SAFETY: as in `key_of`.
    let eth = unsafe { &*packet.eth };
    let span = (choice.nat_port_max - choice.nat_port_min) as u32 + 1;
    let start = hash::nat(choice.hash, key.network);
    // Field by field: a whole struct literal would be built on the stack first.
    reply_key.network = PROVIDER_NETWORK;
    reply_key.src = choice.target.addr;
    reply_key.dst = choice.nat.addr;
    reply_key.src_port_be = choice.target.port_be;
    reply_key.dst_port_be = 0;
    reply_key.proto = key.proto;
    reply_key.family = key.family;
    reply_key._pad = [0; 2];
    reply.src = key.dst;
    reply.dst = key.src;
    reply.src_port_be = key.dst_port_be;
    reply.dst_port_be = key.src_port_be;
    reply.peer_network = key.network;
    reply.endpoint = endpoint.id;
    reply.target = choice.target_index;
    reply.ifindex = ctx.ingress_ifindex() as u32;
    // Replies go back to whoever sent this, from the address it sent to.
    reply.mac_src = eth.dst_addr;
    reply.mac_dst = eth.src_addr;
    reply.route_from = 0;
    reply.last_seen_s = now_s();
    reply.flags = 0;
    reply._pad = [0; 3];
    let mut attempt = 0;
    while attempt < NAT_PORT_ATTEMPTS {
        // An odd multiplier walks the whole range in a scattered order.
        let offset = start.wrapping_add(attempt.wrapping_mul(0x9e37_79b1)) % span;
        let port = choice.nat_port_min + offset as u16;
        reply_key.dst_port_be = port.to_be();
        if FLOWS
            .insert(&*reply_key, &*reply, BPF_NOEXIST as u64)
            .is_ok()
        {
            forward.src = choice.nat.addr;
            forward.dst = choice.target.addr;
            forward.src_port_be = reply_key.dst_port_be;
            forward.dst_port_be = choice.target.port_be;
            forward.peer_network = PROVIDER_NETWORK;
            forward.endpoint = endpoint.id;
            forward.target = choice.target_index;
            forward.ifindex = route.ifindex;
            forward.mac_src = route.mac_src;
            forward.mac_dst = route.mac_dst;
            forward.route_from = choice.nat.ifindex;
            forward.last_seen_s = reply.last_seen_s;
            forward.flags = 0;
            forward._pad = [0; 3];
            if FLOWS.insert(key, &*forward, BPF_NOEXIST as u64).is_ok() {
                debug!(
                    ctx,
                    "flow opened: endpoint {} -> target {}, NAT port {}",
                    endpoint.id,
                    choice.target_index,
                    port
                );
            } else {
                // Another CPU opened the same flow first (a retransmitted SYN): use theirs.
                let _ = FLOWS.remove(&*reply_key);
            }
            return lookup(key, packet)
                .map(|(entry, _)| entry)
                .ok_or(Outcome::drop_for(counter::DROP_NO_FLOW, endpoint.id));
        }
        attempt += 1;
    }
    warn!(
        ctx,
        "no free NAT port towards target {} after {} tries (endpoint {})",
        choice.target_index,
        NAT_PORT_ATTEMPTS,
        endpoint.id
    );
    Err(Outcome::drop_for(counter::DROP_NAT_EXHAUSTED, endpoint.id))
}
