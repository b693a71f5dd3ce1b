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

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head},
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
    parse::{L4_OFFSET, L4_OFFSET_V6},
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
