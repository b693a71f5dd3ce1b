//! Translate: IPv6 consumers of IPv4 services (RFC 7915's header translation, stateful:
//! the flow entry holds both sides, as Google's Private Service Connect does). A flow
//! from an IPv6 endpoint address to an IPv4 target leaves as IPv4 from an IPv4 NAT
//! address, and its replies come back as IPv6 from the endpoint's address. The
//! frame's head moves by the 20 bytes the headers differ in; the new IP header is
//! written whole, and the TCP or UDP checksum is updated for the pseudo-header that
//! changed family (the length and protocol words sum alike in both) and the ports.
//!
//! IPv4 to IPv6: the traffic class is the TOS, the hop limit the TTL, less one. IPv6 to
//! IPv4: identification 0 and DF set (nothing is fragmented on the way), the header
//! checksum computed. An IPv4 datagram without a UDP checksum cannot become IPv6 (which
//! requires one): it is dropped (`drop_bad_checksum`).
//!
//! A provider-side ICMPv4 error about a translated flow reaches its consumer as the
//! ICMPv6 error it means (RFC 7915 §4.2): unreachable (no route, administratively
//! prohibited, port), fragmentation needed as packet too big (the MTU 20 bytes larger),
//! time exceeded; the quote rebuilt as the consumer sent it. Others are dropped.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use endpoint_common::{
    checksum::{Delta, Sum},
    counter,
    maps::{Flow, Interface, PROTO_TCP, PROTO_UDP},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    forward::{self, Route},
    outcome::Outcome,
    parse::{L4_OFFSET, L4_OFFSET_V6, PROTO_ICMPV6},
};

/// How much longer an IPv6 header is.
const GROWTH: usize = Ipv6Hdr::LEN - Ipv4Hdr::LEN;
/// Where the checksum is in a TCP and in a UDP header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

/// TCP's and UDP's checksum offsets, and the bytes of their headers they need: each
/// direction is built once per protocol (`CHECK`, `NEEDED`), as its own function, so
/// that the verifier sees constants where the bounds are checked.
const TCP: (usize, usize) = (TCP_CHECK, 20);
const UDP: (usize, usize) = (UDP_CHECK, 8);

/// Sends a consumer's IPv6 packet of forward entry `flow` (whose addresses are IPv4)
/// as IPv4, by `route`, counted under `counter`.
#[inline(always)]
pub fn to_ipv4(
    ctx: &XdpContext,
    interface: &Interface,
    flow: &Flow,
    route: &Route,
    counter: u32,
) -> Outcome {
    if flow.proto == PROTO_TCP {
        to_ipv4_as::<{ TCP.0 }, { TCP.1 }>(ctx, interface, flow, route, counter)
    } else {
        to_ipv4_as::<{ UDP.0 }, { UDP.1 }>(ctx, interface, flow, route, counter)
    }
}

/// Sends a target's IPv4 packet of reply entry `flow` (whose addresses are IPv6) as
/// IPv6, by `route`, counted under `counter`.
#[inline(always)]
pub fn to_ipv6(
    ctx: &XdpContext,
    interface: &Interface,
    flow: &Flow,
    route: &Route,
    counter: u32,
) -> Outcome {
    if flow.proto == PROTO_TCP {
        to_ipv6_as::<{ TCP.0 }, { TCP.1 }>(ctx, interface, flow, route, counter)
    } else {
        to_ipv6_as::<{ UDP.0 }, { UDP.1 }>(ctx, interface, flow, route, counter)
    }
}

/// `to_ipv4` for a transport header with its checksum at `CHECK`, `NEEDED` bytes long.
// The head moves first and the old header is read where it then lies (only its first
// six bytes fall off the front): little is held across the helper call, and the stack
// along this call chain is short.
#[inline(never)]
fn to_ipv4_as<const CHECK: usize, const NEEDED: usize>(
    ctx: &XdpContext,
    interface: &Interface,
    flow: &Flow,
    route: &Route,
    counter: u32,
) -> Outcome {
    let slot = flow.slot;
    let malformed = Outcome::drop_for(counter::DROP_MALFORMED, slot);
    let start = ctx.data();
    if start + L4_OFFSET_V6 + 8 > ctx.data_end() {
        return malformed;
    }
    // SAFETY: checked just above.
    let ip = unsafe { &*((start + EthHdr::LEN) as *const Ipv6Hdr) };
    let class = ip.vcf[0] << 4 | ip.vcf[1] >> 4;
    let total = u16::from_be_bytes(ip.payload_len) + Ipv4Hdr::LEN as u16;
    // SAFETY: moving the frame's start; every pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, GROWTH as i32) } != 0 {
        return malformed;
    }
    // The old header's next header, hop limit and addresses now begin the frame.
    let start = ctx.data();
    if start + L4_OFFSET + NEEDED > ctx.data_end() {
        return malformed;
    }
    // SAFETY: checked just above.
    let (proto, hop_limit) = unsafe { (*(start as *const u8), *((start + 1) as *const u8)) };
    // The old pseudo-header's 32 bytes of addresses out, the new 8 in.
    // SAFETY: the 32 bytes of both old addresses, within the bytes checked above.
    let removed = unsafe { bpf_csum_diff((start + 2) as *mut _, 32, core::ptr::null_mut(), 0, 0) };
    let l4 = start + L4_OFFSET;
    // SAFETY: the transport header's first `NEEDED` bytes, checked above.
    let (ports, old_check) = unsafe {
        (
            *(l4 as *const [[u8; 2]; 2]),
            *((l4 + CHECK) as *const [u8; 2]),
        )
    };
    let transport = Delta::default()
        .summed(removed as u32)
        .dword(0, flow.src.ipv4_be())
        .dword(0, flow.dst.ipv4_be())
        .word(u16::from_ne_bytes(ports[0]), flow.src_port_be)
        .word(u16::from_ne_bytes(ports[1]), flow.dst_port_be);
    let new_check = new_checksum(proto, transport, u16::from_ne_bytes(old_check));
    // SAFETY: within the bytes checked above.
    let (eth, ip) = unsafe {
        (
            &mut *(start as *mut EthHdr),
            &mut *((start + EthHdr::LEN) as *mut Ipv4Hdr),
        )
    };
    eth.dst_addr = route.mac_dst;
    eth.src_addr = route.mac_src;
    eth.ether_type = EtherType::Ipv4 as u16;
    ip.vihl = 0x45;
    ip.tos = class;
    ip.tot_len = total.to_be_bytes();
    ip.id = [0; 2];
    ip.frags = 0x4000u16.to_be_bytes();
    ip.ttl = hop_limit - 1;
    ip.proto = proto;
    ip.src_addr = flow.src.ipv4_be().to_ne_bytes();
    ip.dst_addr = flow.dst.ipv4_be().to_ne_bytes();
    ip.check = Sum::default()
        .word(u16::from_ne_bytes([ip.vihl, ip.tos]))
        .word(u16::from_ne_bytes(ip.tot_len))
        .word(u16::from_ne_bytes(ip.frags))
        .word(u16::from_ne_bytes([ip.ttl, ip.proto]))
        .dword(flow.src.ipv4_be())
        .dword(flow.dst.ipv4_be())
        .finish()
        .to_ne_bytes();
    write_transport(l4 + CHECK, l4, flow, new_check);
    send(ctx, interface, route, counter, slot)
}

/// `to_ipv6` for a transport header with its checksum at `CHECK`, `NEEDED` bytes long.
// As in `to_ipv4_as`: the head moves first, and the old headers are read where they
// then lie, 20 bytes on.
#[inline(never)]
fn to_ipv6_as<const CHECK: usize, const NEEDED: usize>(
    ctx: &XdpContext,
    interface: &Interface,
    flow: &Flow,
    route: &Route,
    counter: u32,
) -> Outcome {
    let slot = flow.slot;
    let malformed = Outcome::drop_for(counter::DROP_MALFORMED, slot);
    // SAFETY: moving the frame's start; every pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROWTH as i32)) } != 0 {
        return malformed;
    }
    let start = ctx.data();
    if start + L4_OFFSET_V6 + NEEDED > ctx.data_end() {
        return malformed;
    }
    // SAFETY: checked just above: the old IPv4 header lies 20 bytes on.
    let old = unsafe { &*((start + GROWTH + EthHdr::LEN) as *const Ipv4Hdr) };
    let (proto, ttl, tos) = (old.proto, old.ttl, old.tos);
    let payload = old.tot_len().wrapping_sub(Ipv4Hdr::LEN as u16);
    let l4 = start + L4_OFFSET_V6;
    // SAFETY: the transport header's first `NEEDED` bytes, checked above.
    let (ports, old_check) = unsafe {
        (
            *(l4 as *const [[u8; 2]; 2]),
            *((l4 + CHECK) as *const [u8; 2]),
        )
    };
    let old_check = u16::from_ne_bytes(old_check);
    if proto == PROTO_UDP && old_check == 0 {
        return Outcome::drop_for(counter::DROP_BAD_CHECKSUM, slot);
    }
    // The old pseudo-header's 8 bytes of addresses out, the new 32 (the entry's, side
    // by side) in.
    // SAFETY: both addresses of the checked old header, and 32 bytes of the flow entry.
    let addresses = unsafe {
        bpf_csum_diff(
            old.src_addr.as_ptr().cast_mut().cast(),
            8,
            (&raw const flow.src).cast_mut().cast(),
            32,
            0,
        )
    };
    let transport = Delta::default()
        .summed(addresses as u32)
        .word(u16::from_ne_bytes(ports[0]), flow.src_port_be)
        .word(u16::from_ne_bytes(ports[1]), flow.dst_port_be);
    let new_check = new_checksum(proto, transport, old_check);
    // SAFETY: within the bytes checked above; the old headers were read.
    let (eth, ip) = unsafe {
        (
            &mut *(start as *mut EthHdr),
            &mut *((start + EthHdr::LEN) as *mut Ipv6Hdr),
        )
    };
    eth.dst_addr = route.mac_dst;
    eth.src_addr = route.mac_src;
    eth.ether_type = EtherType::Ipv6 as u16;
    ip.vcf = [0x60 | tos >> 4, tos << 4, 0, 0];
    ip.payload_len = payload.to_be_bytes();
    ip.next_hdr = proto;
    ip.hop_limit = ttl - 1;
    // SAFETY: `src` and `dst` lie side by side in both: 32 bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (&raw const flow.src).cast::<u8>(),
            ip.src_addr.as_mut_ptr(),
            32,
        )
    };
    write_transport(l4 + CHECK, l4, flow, new_check);
    send(ctx, interface, route, counter, slot)
}

/// The transport checksum `old` updated by `delta` (a UDP checksum that comes out 0 is
/// written as 0xFFFF).
#[inline(always)]
fn new_checksum(proto: u8, delta: Delta, old: u16) -> u16 {
    let new = delta.apply(old);
    if proto == PROTO_UDP && new == 0 {
        0xffff
    } else {
        new
    }
}

/// Writes the flow's ports into the transport header at `l4` and the new checksum at
/// `check`.
#[inline(always)]
fn write_transport(check: usize, l4: usize, flow: &Flow, new_check: u16) {
    // SAFETY: the callers checked the header's first `NEEDED` bytes lie in the frame.
    unsafe {
        *(l4 as *mut [[u8; 2]; 2]) = [
            flow.src_port_be.to_ne_bytes(),
            flow.dst_port_be.to_ne_bytes(),
        ];
        *(check as *mut [u8; 2]) = new_check.to_ne_bytes();
    }
}

/// The translated frame's way out.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    interface: &Interface,
    route: &Route,
    counter: u32,
    slot: u32,
) -> Outcome {
    let action = if route.ifindex == ctx.ingress_ifindex() as u32 {
        forward::bounce(ctx, interface)
    } else {
        forward::redirect(route.ifindex)
    };
    Outcome::new(action, counter, slot)
}

/// An ICMPv4 error as received: headers, the quoted IPv4 header and 8 bytes.
const ERROR_V4: usize = L4_OFFSET + 8 + Ipv4Hdr::LEN + 8;
/// The ICMPv6 error it becomes: the quote is an IPv6 header and the same 8 bytes, which
/// stay where they were once the head has grown by twice the headers' difference.
const ERROR_V6: usize = L4_OFFSET_V6 + 8 + Ipv6Hdr::LEN + 8;
const QUOTE_V6: usize = L4_OFFSET_V6 + 8;
/// How much the head grows: twice the headers' difference.
const GROWN: usize = ERROR_V6 - ERROR_V4;
const MESSAGE_V6: usize = 8 + Ipv6Hdr::LEN + 8;

/// The ICMPv6 type, code and MTU an ICMPv4 error (`kind`, `code`, next-hop MTU)
/// means, if it means one.
#[inline(always)]
fn icmpv6_for(kind: u8, code: u8, mtu: u32) -> Option<(u8, u8, u32)> {
    match (kind, code) {
        // Net or host unreachable, unknown: no route.
        (3, 0 | 1 | 6 | 7) => Some((1, 0, 0)),
        // Administratively prohibited.
        (3, 9 | 10 | 13) => Some((1, 1, 0)),
        (3, 3) => Some((1, 4, 0)),
        (3, 4) if mtu >= 1280 - 20 => Some((2, 0, mtu + 20)),
        (11, _) => Some((3, code, 0)),
        _ => None,
    }
}

/// Sends a provider-side ICMPv4 error (the frame) about reply entry `reply`'s
/// translated flow to its IPv6 consumer, by `route`, as the ICMPv6 error it means.
// The frame is resized first and the old headers read where they then lie, 40 bytes
// on: little is held across the helper calls, and the stack along this chain is short.
#[inline(never)]
pub fn error_to_ipv6(
    ctx: &XdpContext,
    interface: &Interface,
    reply: &Flow,
    route: &Route,
) -> Outcome {
    let slot = reply.slot;
    let refused = Outcome::drop_for(counter::DROP_ICMP, slot);
    let start = ctx.data();
    if start + ERROR_V4 > ctx.data_end() {
        return refused;
    }
    // SAFETY: checked just above.
    let icmp = unsafe { &*((start + L4_OFFSET) as *const [u8; 8]) };
    let Some((kind, code, mtu)) = icmpv6_for(
        icmp[0],
        icmp[1],
        u16::from_be_bytes([icmp[6], icmp[7]]) as u32,
    ) else {
        return refused;
    };
    // Cut to the quote, then grow room for the longer headers in front: the quoted 8
    // bytes land where the new quote's are.
    let frame_len = core::hint::black_box(ctx.data_end() - ctx.data());
    let excess = frame_len as i32 - ERROR_V4 as i32;
    // SAFETY: resizing the frame; every pointer is derived again below.
    if (excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -excess) } != 0)
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROWN as i32)) } != 0
    {
        return refused;
    }
    let start = ctx.data();
    if start + ERROR_V6 > ctx.data_end() {
        return refused;
    }
    // The old headers, GROWN bytes on.
    // SAFETY: all within the ERROR_V6 bytes checked just above.
    let (ttl, quoted) = unsafe {
        (
            (*((start + GROWN + EthHdr::LEN) as *const Ipv4Hdr)).ttl,
            &*((start + GROWN + L4_OFFSET + 8) as *const Ipv4Hdr),
        )
    };
    let (proto, quoted_ttl) = (quoted.proto, quoted.ttl);
    let quoted_payload = quoted.tot_len().wrapping_sub(Ipv4Hdr::LEN as u16);
    // The quoted datagram's UDP checksum as the consumer sent it: the pseudo-header's
    // IPv4 addresses out, the consumer's and the endpoint's in (the entry's 32 bytes:
    // any order sums alike), and its ports.
    // SAFETY: both quoted addresses, and 32 bytes of the flow entry.
    let addresses = unsafe {
        bpf_csum_diff(
            quoted.src_addr.as_ptr().cast_mut().cast(),
            8,
            (&raw const reply.src).cast_mut().cast(),
            32,
            0,
        )
    };
    // SAFETY: as above: the quoted 8 bytes are where the new quote's go.
    let ports = unsafe { &mut *((start + ERROR_V6 - 8) as *mut [[u8; 2]; 4]) };
    let (consumer_port, endpoint_port) = (reply.dst_port_be, reply.src_port_be);
    let old_check = u16::from_ne_bytes(ports[3]);
    if proto == PROTO_UDP && old_check != 0 {
        let delta = Delta::default()
            .summed(addresses as u32)
            .word(u16::from_ne_bytes(ports[0]), consumer_port)
            .word(u16::from_ne_bytes(ports[1]), endpoint_port);
        ports[3] = new_checksum(PROTO_UDP, delta, old_check).to_ne_bytes();
    }
    ports[0] = consumer_port.to_ne_bytes();
    ports[1] = endpoint_port.to_ne_bytes();
    // SAFETY: as above; the old headers were read.
    let (eth, ip, icmp, quote) = unsafe {
        (
            &mut *(start as *mut EthHdr),
            &mut *((start + EthHdr::LEN) as *mut Ipv6Hdr),
            &mut *((start + L4_OFFSET_V6) as *mut [u8; 8]),
            &mut *((start + QUOTE_V6) as *mut Ipv6Hdr),
        )
    };
    quote.vcf = [0x60, 0, 0, 0];
    quote.payload_len = quoted_payload.to_be_bytes();
    quote.next_hdr = proto;
    quote.hop_limit = quoted_ttl;
    quote.src_addr = reply.dst.octets();
    quote.dst_addr = reply.src.octets();
    *icmp = [kind, code, 0, 0, 0, 0, 0, 0];
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    eth.dst_addr = route.mac_dst;
    eth.src_addr = route.mac_src;
    eth.ether_type = EtherType::Ipv6 as u16;
    ip.vcf = [0x60, 0, 0, 0];
    ip.payload_len = (MESSAGE_V6 as u16).to_be_bytes();
    ip.next_hdr = PROTO_ICMPV6;
    ip.hop_limit = ttl - 1;
    // SAFETY: `src` and `dst` lie side by side in both: 32 bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (&raw const reply.src).cast::<u8>(),
            ip.src_addr.as_mut_ptr(),
            32,
        )
    };
    // The ICMPv6 checksum over the pseudo-header (the outer addresses) and the whole
    // message.
    // SAFETY: the header's addresses and the message, within the frame checked above.
    let (outer, words) = unsafe {
        (
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                ip.src_addr.as_mut_ptr().cast(),
                32,
                0,
            ),
            &*((start + L4_OFFSET_V6) as *const [u16; MESSAGE_V6 / 2]),
        )
    };
    let mut sum = Sum::of(outer as u32)
        .word(u16::from_ne_bytes([0, PROTO_ICMPV6]))
        .dword((MESSAGE_V6 as u32).to_be());
    let mut i = 0;
    while i < MESSAGE_V6 / 2 {
        sum = sum.word(words[i]);
        i += 1;
    }
    icmp[2..4].copy_from_slice(&sum.finish().to_ne_bytes());
    send(ctx, interface, route, counter::ICMP_ERROR, slot)
}
