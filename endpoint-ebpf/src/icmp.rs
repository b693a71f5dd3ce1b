//! ICMP: what the node says itself, and the errors it passes on.
//!
//! - Its own errors (RFC 792, RFC 1812 §4.3): a packet with DF set that does not fit
//!   the egress MTU is answered with fragmentation needed and the next-hop MTU, one
//!   whose TTL runs out here with time exceeded — from the address it was sent to (the
//!   endpoint's, or a NAT address), back to its sender, quoting its IPv4 header and the
//!   first 8 bytes after it (the ports). Never about an ICMP message.
//! - Echo replies: a consumer may ping an endpoint that is available and whose security
//!   groups admit the source, and its network's resolver address.
//! - Provider-side errors about a flow (unreachable, fragmentation needed, time
//!   exceeded, parameter problem), found by the quoted tuple, go to the flow's consumer
//!   translated (RFC 5508): from the endpoint's address, the quoted header and ports as
//!   the consumer sent them, every checksum updated. Other ICMP to a NAT address is
//!   dropped.
//!
//! What the node sends of its own comes out of a per-CPU budget (`icmp_per_second`).

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use endpoint_common::{
    checksum::{Delta, Sum},
    counter,
    maps::{
        Addr, Address, FAMILY_IPV4, FAMILY_IPV6, Flow, FlowKey, Interface, PROTO_ICMP, PROTO_TCP,
        PROTO_UDP, Policy, address_kind, nat_scope, tcp,
    },
};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr};

use crate::{
    budget, classify,
    conntrack::{self, Entry},
    forward::{self, Route},
    icmpv6,
    maps::INTERFACES,
    outcome::Outcome,
    parse::Packet,
    policy::{self, Admission},
    translate, verify,
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACHABLE: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;

/// Don't fragment, in the raw big-endian `frags` field.
const DF: u16 = 0x4000;
/// What an error quotes: the IPv4 header and 8 bytes after it.
const QUOTED: usize = Ipv4Hdr::LEN + 8;
/// Where the quoted packet begins, and the whole error frame's length.
const QUOTED_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN + Icmpv4Hdr::LEN;
const ERROR_LEN: usize = QUOTED_OFFSET + QUOTED;
/// An error is built in front of the packet's own headers: these bytes are added.
const GROWTH: usize = Ipv4Hdr::LEN + Icmpv4Hdr::LEN;

/// A packet too big for the egress MTU `mtu`: with DF set, its sender is told
/// (fragmentation needed); without, it is dropped — the node does not fragment. IPv6
/// is never fragmented on the way: its sender is always told (packet too big).
#[inline(always)]
pub fn too_big(ctx: &XdpContext, packet: &Packet, mtu: u32, slot: u32) -> Outcome {
    if packet.is_ipv6() {
        return icmpv6::error(
            ctx,
            icmpv6::PACKET_TOO_BIG,
            mtu,
            counter::ICMP_FRAG_NEEDED_SENT,
            slot,
        );
    }
    if packet.proto() == PROTO_ICMP || u16::from_be_bytes(packet.ipv4().frags) & DF == 0 {
        return Outcome::drop_for(counter::DROP_FIB_FRAG_NEEDED, slot);
    }
    let next_hop = if mtu > 0xffff { 0xffff } else { mtu };
    error(
        ctx,
        u16::from_be_bytes([DEST_UNREACHABLE, FRAG_NEEDED]),
        next_hop,
        counter::ICMP_FRAG_NEEDED_SENT,
        slot,
    )
}

/// A packet whose TTL runs out here: its sender is told (time exceeded in transit).
#[inline(always)]
pub fn time_exceeded(ctx: &XdpContext, packet: &Packet, slot: u32) -> Outcome {
    if packet.is_ipv6() {
        return icmpv6::error(
            ctx,
            icmpv6::TIME_EXCEEDED,
            0,
            counter::ICMP_TIME_EXCEEDED_SENT,
            slot,
        );
    }
    if packet.proto() == PROTO_ICMP {
        return Outcome::drop_for(counter::DROP_TTL_EXPIRED, slot);
    }
    error(
        ctx,
        u16::from_be_bytes([TIME_EXCEEDED, 0]),
        0,
        counter::ICMP_TIME_EXCEEDED_SENT,
        slot,
    )
}

/// Turns the frame into the ICMP error `kind` (type and code) about it, with `info`
/// in the header's last two bytes (the next-hop MTU), sent back to its sender.
#[inline(never)]
fn error(ctx: &XdpContext, kind: u16, info: u32, sent: u32, slot: u32) -> Outcome {
    let dropped = Outcome::drop_for(counter::DROP_ICMP_BUDGET, slot);
    // The packet's own IPv4 header lands where the quote begins.
    let Some(interface) = room_for_error(ctx, QUOTED, GROWTH) else {
        return dropped;
    };
    let start = ctx.data();
    if start + ERROR_LEN > ctx.data_end() {
        return dropped;
    }
    // SAFETY: all within the ERROR_LEN bytes checked just above. The old Ethernet
    // header (at GROWTH) is read before the new headers overwrite it.
    unsafe {
        let sender_mac = (*((start + GROWTH) as *const EthHdr)).src_addr;
        let quoted = &*((start + QUOTED_OFFSET) as *const Ipv4Hdr);
        let (src, dst) = (quoted.dst_addr, quoted.src_addr);
        let eth = &mut *(start as *mut EthHdr);
        eth.dst_addr = sender_mac;
        eth.src_addr = interface.mac;
        eth.ether_type = network_types::eth::EtherType::Ipv4 as u16;
        let ip = &mut *((start + EthHdr::LEN) as *mut Ipv4Hdr);
        write_ip_header(
            ip,
            src,
            dst,
            (Ipv4Hdr::LEN + Icmpv4Hdr::LEN + QUOTED) as u16,
        );
        let icmp = &mut *((start + EthHdr::LEN + Ipv4Hdr::LEN) as *mut Icmpv4Hdr);
        let kind = kind.to_be_bytes();
        icmp.type_ = kind[0];
        icmp.code = kind[1];
        icmp.data = [0, 0, (info >> 8) as u8, info as u8];
        let mut sum = Sum::default()
            .word(u16::from_ne_bytes(kind))
            .word(u16::from_ne_bytes([icmp.data[0], icmp.data[1]]))
            .word(u16::from_ne_bytes([icmp.data[2], icmp.data[3]]));
        let words = &*((start + QUOTED_OFFSET) as *const [u16; QUOTED / 2]);
        let mut i = 0;
        while i < QUOTED / 2 {
            sum = sum.word(words[i]);
            i += 1;
        }
        icmp.check = sum.finish().to_ne_bytes();
    }
    Outcome::new(forward::bounce(ctx, interface), sent, slot)
}

/// Makes room for an error of the node's own, within the ICMP budget: the frame cut to
/// its headers and the `quoted` bytes after them, then `growth` bytes more in front for
/// the error's own headers. Every pointer into the frame must be derived again. Returns
/// the interface the error goes back out.
#[inline(always)]
pub fn room_for_error(
    ctx: &XdpContext,
    quoted: usize,
    growth: usize,
) -> Option<&'static Interface> {
    let interface = INTERFACES.get(ctx.ingress_ifindex() as u32)?;
    if !budget::icmp() {
        return None;
    }
    // A plain number (LLVM would otherwise do arithmetic on the end pointer, which the
    // verifier forbids).
    let frame_len = core::hint::black_box(ctx.data_end() - ctx.data());
    let excess = frame_len as i32 - (EthHdr::LEN + quoted) as i32;
    // SAFETY: resizing the frame; the callers derive every pointer again.
    if excess < 0
        || (excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -excess) } != 0)
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(growth as i32)) } != 0
    {
        return None;
    }
    Some(interface)
}

/// A fresh IPv4 header for an ICMP error of the node's own, checksum computed.
#[inline(always)]
fn write_ip_header(ip: &mut Ipv4Hdr, src: [u8; 4], dst: [u8; 4], total_len: u16) {
    ip.vihl = 0x45;
    // Precedence "internetwork control", as routers send their errors.
    ip.tos = 0xc0;
    ip.tot_len = total_len.to_be_bytes();
    ip.id = [0; 2];
    ip.frags = [0; 2];
    ip.ttl = 64;
    ip.proto = PROTO_ICMP;
    ip.src_addr = src;
    ip.dst_addr = dst;
    ip.check = Sum::default()
        .word(u16::from_ne_bytes([ip.vihl, ip.tos]))
        .word(u16::from_ne_bytes(ip.tot_len))
        .word(u16::from_ne_bytes([ip.ttl, ip.proto]))
        .dword(u32::from_ne_bytes(src))
        .dword(u32::from_ne_bytes(dst))
        .finish()
        .to_ne_bytes();
}

/// An ICMP message that arrived: an echo request to an endpoint, or a provider-side
/// error about a flow; anything else of ours is dropped, the rest is not ours.
#[inline(never)]
pub fn arrived(ctx: &XdpContext, interface: &Interface, packet: &Packet) -> Outcome {
    let (family, dst) = (packet.family(), packet.dst());
    // An endpoint's address, whether or not it was accepted: its policy decides. The
    // network's resolver address answers anyone in it.
    if interface.consumer()
        && let Some(address) = classify::owned(interface.network, family, dst)
    {
        if packet.is_ipv6() {
            return icmpv6::echo(ctx, interface, packet, &address);
        }
        return echo(ctx, interface, packet, &address);
    }
    if interface.provider() {
        let scope = nat_scope(ctx.ingress_ifindex() as u32);
        if classify::owned(scope, family, dst).is_some() {
            if packet.is_ipv6() {
                return icmpv6::from_provider(ctx, interface, packet);
            }
            return from_provider(ctx, interface, packet);
        }
    }
    classify::not_ours(interface)
}

/// An echo request to an endpoint's address: answered if it is available and its
/// security groups admit the source; to the resolver address: answered.
#[inline(never)]
fn echo(ctx: &XdpContext, interface: &Interface, packet: &Packet, address: &Address) -> Outcome {
    let slot = address.slot;
    // SAFETY: `parse` checked the 8-byte ICMP header lies within the frame.
    let icmp = unsafe { &mut *packet.l4.cast::<Icmpv4Hdr>() };
    if icmp.type_ != ECHO_REQUEST || icmp.code != 0 {
        return Outcome::drop_for(counter::DROP_ICMP, slot);
    }
    verify::addressed_to(interface, packet, slot)?;
    verify::ip_checksum(packet, slot)?;
    verify::source(interface.network, packet, slot)?;
    if address.kind != address_kind::RESOLVER {
        let word = policy::word(slot);
        let policy = Policy::of(word);
        if !matches!(policy::of(policy), Admission::Open) {
            return policy::refused(policy, slot);
        }
        policy::security_groups(word, slot, policy::ANY_LISTENER, packet)?;
    }
    if !budget::icmp() {
        return Outcome::drop_for(counter::DROP_ICMP_BUDGET, slot);
    }
    // SAFETY: as above, and `parse` checked the IPv4 and Ethernet headers.
    let (eth, ip) = unsafe { (&mut *packet.eth, &mut *packet.ip.cast::<Ipv4Hdr>()) };
    eth.dst_addr = eth.src_addr;
    eth.src_addr = interface.mac;
    // Swapping the addresses leaves the sums as they are; the TTL and type change.
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_ne_bytes([64, ip.proto]);
    (ip.src_addr, ip.dst_addr) = (ip.dst_addr, ip.src_addr);
    ip.ttl = 64;
    ip.check = Delta::default()
        .word(old_ttl, new_ttl)
        .apply(u16::from_ne_bytes(ip.check))
        .to_ne_bytes();
    let old_type = u16::from_ne_bytes([icmp.type_, icmp.code]);
    icmp.type_ = ECHO_REPLY;
    icmp.check = Delta::default()
        .word(old_type, u16::from_ne_bytes([icmp.type_, icmp.code]))
        .apply(u16::from_ne_bytes(icmp.check))
        .to_ne_bytes();
    Outcome::new(
        forward::bounce(ctx, interface),
        counter::ICMP_ECHO_REPLY,
        slot,
    )
}

/// The flow a provider-side error is about — `key`, its quote the other way round —
/// and the way back to its consumer: a live flow of the error's family (or an IPv6
/// consumer's, translated), that leaves by the interface the error came in on and is
/// still admitted, and an error that may travel one more hop.
#[inline(always)]
pub fn flow_of_error(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Packet,
    key: &FlowKey,
) -> Result<(Entry, Route), Outcome> {
    let Some(reply) = conntrack::lookup(key) else {
        return Err(Outcome::drop(counter::DROP_ICMP));
    };
    let slot = reply.slot;
    if reply.tcp() & tcp::RESERVED != 0 || (packet.is_ipv6() && reply.family != FAMILY_IPV6) {
        return Err(Outcome::drop_for(counter::DROP_ICMP, slot));
    }
    if ctx.ingress_ifindex() as u32 != reply.via {
        return Err(Outcome::drop_for(counter::DROP_WRONG_INTERFACE, slot));
    }
    verify::addressed_to(interface, packet, slot)?;
    verify::ip_checksum(packet, slot)?;
    if packet.hop_limit() <= 1 {
        return Err(Outcome::drop_for(counter::DROP_TTL_EXPIRED, slot));
    }
    if policy::word(slot) != reply.policy && policy::recheck_reply(&reply).is_err() {
        return Err(Outcome::drop_for(counter::DROP_FLOW_GONE, slot));
    }
    let (route, _) = Route::back(&reply)?;
    Ok((reply, route))
}

/// A provider-side ICMP message to a NAT address: an error about one of its flows goes
/// to the flow's consumer, translated; anything else is dropped.
#[inline(never)]
fn from_provider(ctx: &XdpContext, interface: &Interface, packet: &Packet) -> Outcome {
    let refused = Outcome::drop(counter::DROP_ICMP);
    // SAFETY: `parse` checked the 8-byte ICMP header lies within the frame.
    let kind = unsafe { (*packet.l4.cast::<Icmpv4Hdr>()).type_ };
    if kind != DEST_UNREACHABLE && kind != TIME_EXCEEDED && kind != PARAMETER_PROBLEM {
        return refused;
    }
    let start = ctx.data();
    if start + ERROR_LEN > ctx.data_end()
        || packet.ipv4().tot_len() < (ERROR_LEN - EthHdr::LEN) as u16
    {
        return refused;
    }
    // SAFETY: the quote lies within the ERROR_LEN bytes checked just above.
    let (quoted, ports) = unsafe {
        (
            &mut *((start + QUOTED_OFFSET) as *mut Ipv4Hdr),
            &mut *((start + QUOTED_OFFSET + Ipv4Hdr::LEN) as *mut [[u8; 2]; 4]),
        )
    };
    let proto = quoted.proto;
    if quoted.vihl != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return refused;
    }
    // The quote is what the flow sent towards the target: its reply entry is keyed by
    // the other way round. It must have been sent from the address the error goes to.
    if quoted.src_addr != packet.ipv4().dst_addr {
        return refused;
    }
    let quote = (Addr::ipv4(quoted.src_addr), Addr::ipv4(quoted.dst_addr));
    let Some(key) =
        conntrack::quoted_key(quote.0, quote.1, [ports[0], ports[1]], FAMILY_IPV4, proto)
    else {
        return refused;
    };
    let (reply, route) = flow_of_error(ctx, interface, packet, key)?;
    if reply.family == FAMILY_IPV6 {
        return translate::error_to_ipv6(ctx, interface, &reply, &route);
    }
    let slot = reply.slot;

    translate_error(packet, &reply, quoted, ports);
    forward::send(ctx, interface, packet, &route, counter::ICMP_ERROR, slot)
}

/// Rewrites an error about reply entry `reply`'s flow as its consumer sees it: from the
/// endpoint's address, about the packet the consumer sent (`quoted`, and the 8 bytes
/// after it, `ports`), every checksum updated.
// Its own BPF function: the caller's stack frame stays small.
#[inline(never)]
fn translate_error(packet: &Packet, reply: &Flow, quoted: &mut Ipv4Hdr, ports: &mut [[u8; 2]; 4]) {
    // The consumer sees the error come from the endpoint, about the packet it sent.
    let (consumer, endpoint) = (reply.dst.ipv4_be(), reply.src.ipv4_be());
    let (consumer_port, endpoint_port) = (reply.dst_port_be, reply.src_port_be);
    let (old_sport, old_dport) = (u16::from_ne_bytes(ports[0]), u16::from_ne_bytes(ports[1]));
    let addresses = Delta::default()
        .dword(u32::from_ne_bytes(quoted.src_addr), consumer)
        .dword(u32::from_ne_bytes(quoted.dst_addr), endpoint);
    let quoted_ip_check = addresses.apply(u16::from_ne_bytes(quoted.check));
    // What the quoted datagram's own checksum sees: addresses (pseudo-header) and ports.
    let transport = addresses
        .word(old_sport, consumer_port)
        .word(old_dport, endpoint_port);
    // The ICMP checksum covers the whole quote: addresses, their checksum, ports, and
    // (UDP) the quoted datagram's checksum.
    let mut message = transport.word(u16::from_ne_bytes(quoted.check), quoted_ip_check);
    quoted.src_addr = consumer.to_ne_bytes();
    quoted.dst_addr = endpoint.to_ne_bytes();
    quoted.check = quoted_ip_check.to_ne_bytes();
    ports[0] = consumer_port.to_ne_bytes();
    ports[1] = endpoint_port.to_ne_bytes();
    let old = u16::from_ne_bytes(ports[3]);
    if quoted.proto == PROTO_UDP && old != 0 {
        let sum = transport.apply(old);
        let new = if sum == 0 { 0xffff } else { sum };
        message = message.word(old, new);
        ports[3] = new.to_ne_bytes();
    }
    // SAFETY: `parse` checked the ICMP and IPv4 headers.
    let (icmp, ip) = unsafe {
        (
            &mut *packet.l4.cast::<Icmpv4Hdr>(),
            &mut *packet.ip.cast::<Ipv4Hdr>(),
        )
    };
    icmp.check = message.apply(u16::from_ne_bytes(icmp.check)).to_ne_bytes();
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    ip.check = Delta::default()
        .dword(u32::from_ne_bytes(ip.src_addr), endpoint)
        .dword(u32::from_ne_bytes(ip.dst_addr), consumer)
        .word(old_ttl, new_ttl)
        .apply(u16::from_ne_bytes(ip.check))
        .to_ne_bytes();
    ip.src_addr = endpoint.to_ne_bytes();
    ip.dst_addr = consumer.to_ne_bytes();
    ip.ttl -= 1;
}
