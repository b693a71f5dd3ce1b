//! ICMPv6: what the node says itself, and the errors it passes on — ICMP's
//! counterparts for IPv6 (RFC 4443).
//!
//! - Its own errors: packet too big (with the egress MTU) and time exceeded, from the
//!   address the packet was sent to, quoting its IPv6 header and 8 bytes (the ports).
//! - Echo replies: a consumer may ping an IPv6 endpoint address that is available and
//!   whose security groups admit the source.
//! - Provider-side errors about a flow (destination unreachable, packet too big, time
//!   exceeded, parameter problem) to a NAT address, found by the quoted tuple, go to the
//!   flow's consumer translated: from the endpoint's address, the quote as the consumer
//!   sent it, every checksum updated. Other ICMPv6 to a NAT address is dropped.
//!
//! What the node sends of its own comes out of the ICMP budget. Neighbour discovery is
//! `neighbour`'s.

use aya_ebpf::{helpers::generated::bpf_csum_diff, programs::XdpContext};
use endpoint_common::{
    checksum::{Delta, Sum},
    counter,
    maps::{
        Addr, Address, FAMILY_IPV6, Flow, Interface, PROTO_TCP, PROTO_UDP, Policy, address_kind,
    },
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    budget, conntrack, forward, icmp,
    outcome::Outcome,
    parse::{PROTO_ICMPV6, Packet},
    policy::{self, Admission},
    verify,
};

const DEST_UNREACHABLE_TYPE: u8 = 1;
const PACKET_TOO_BIG_TYPE: u8 = 2;
const TIME_EXCEEDED_TYPE: u8 = 3;
const PARAMETER_PROBLEM_TYPE: u8 = 4;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// ICMPv6 errors (type and code) the node sends.
pub const PACKET_TOO_BIG: u16 = (PACKET_TOO_BIG_TYPE as u16) << 8;
pub const TIME_EXCEEDED: u16 = (TIME_EXCEEDED_TYPE as u16) << 8;
/// What an ICMPv6 error quotes: the IPv6 header and 8 bytes after it (the ports) —
/// less than RFC 4443 allows, all a receiver needs to find its socket.
const QUOTED: usize = Ipv6Hdr::LEN + 8;
const QUOTED_OFFSET: usize = EthHdr::LEN + Ipv6Hdr::LEN + 8;
const ERROR_LEN: usize = QUOTED_OFFSET + QUOTED;
const GROWTH: usize = Ipv6Hdr::LEN + 8;
/// The ICMPv6 message: its header and the quote.
const MESSAGE_LEN: usize = 8 + QUOTED;

/// Turns the frame into the ICMPv6 error `kind` (type and code) about it, with `info`
/// in the header's last four bytes (the MTU), sent back to its sender from the address
/// the packet was sent to.
#[inline(never)]
pub fn error(ctx: &XdpContext, kind: u16, info: u32, sent: u32, slot: u32) -> Outcome {
    let dropped = Outcome::drop_for(counter::DROP_ICMP_BUDGET, slot);
    let Some(interface) = icmp::room_for_error(ctx, QUOTED, GROWTH) else {
        return dropped;
    };
    let start = ctx.data();
    if start + ERROR_LEN > ctx.data_end() {
        return dropped;
    }
    // SAFETY: all within the ERROR_LEN bytes checked just above; the old Ethernet
    // header (at GROWTH) is read before the new headers overwrite it.
    unsafe {
        let sender_mac = (*((start + GROWTH) as *const EthHdr)).src_addr;
        let quoted = &*((start + QUOTED_OFFSET) as *const Ipv6Hdr);
        let eth = &mut *(start as *mut EthHdr);
        eth.dst_addr = sender_mac;
        eth.src_addr = interface.mac;
        eth.ether_type = network_types::eth::EtherType::Ipv6 as u16;
        let ip = &mut *((start + EthHdr::LEN) as *mut Ipv6Hdr);
        ip.vcf = [0x60, 0, 0, 0];
        ip.payload_len = (MESSAGE_LEN as u16).to_be_bytes();
        ip.next_hdr = PROTO_ICMPV6;
        ip.hop_limit = 64;
        ip.src_addr = quoted.dst_addr;
        ip.dst_addr = quoted.src_addr;
        let message = &mut *((start + EthHdr::LEN + Ipv6Hdr::LEN) as *mut [u8; 8]);
        let kind = kind.to_be_bytes();
        *message = [kind[0], kind[1], 0, 0, 0, 0, 0, 0];
        message[4..8].copy_from_slice(&info.to_be_bytes());
        // The pseudo-header's addresses, side by side in the new header.
        let addresses = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            ip.src_addr.as_mut_ptr().cast(),
            32,
            0,
        );
        let mut sum = Sum::of(addresses as u32)
            .word(u16::from_ne_bytes([0, PROTO_ICMPV6]))
            .dword((MESSAGE_LEN as u32).to_be());
        let words = &*((start + EthHdr::LEN + Ipv6Hdr::LEN) as *const [u16; MESSAGE_LEN / 2]);
        let mut i = 0;
        while i < MESSAGE_LEN / 2 {
            sum = sum.word(words[i]);
            i += 1;
        }
        message[2..4].copy_from_slice(&sum.finish().to_ne_bytes());
    }
    Outcome::new(forward::bounce(ctx, interface), sent, slot)
}

/// An echo request to an IPv6 endpoint address: answered if the endpoint is available
/// and its security groups admit the source; to the resolver address: answered.
#[inline(never)]
pub fn echo(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Packet,
    address: &Address,
) -> Outcome {
    let slot = address.slot;
    // SAFETY: `parse` checked the 8-byte ICMPv6 header lies within the frame.
    let icmp = unsafe { &mut *packet.l4.cast::<[u8; 8]>() };
    if icmp[0] != ECHO_REQUEST || icmp[1] != 0 {
        return Outcome::drop_for(counter::DROP_ICMP, slot);
    }
    verify::addressed_to(interface, packet, slot)?;
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
    // SAFETY: `parse` checked the Ethernet and IPv6 headers.
    let (eth, ip) = unsafe { (&mut *packet.eth, &mut *packet.ip.cast::<Ipv6Hdr>()) };
    eth.dst_addr = eth.src_addr;
    eth.src_addr = interface.mac;
    // Swapping the addresses leaves the pseudo-header's sum as it is; the type changes.
    swap_addresses(ip);
    ip.hop_limit = 64;
    let old = u16::from_ne_bytes([icmp[0], icmp[1]]);
    icmp[0] = ECHO_REPLY;
    let check = Delta::default()
        .word(old, u16::from_ne_bytes([icmp[0], icmp[1]]))
        .apply(u16::from_ne_bytes([icmp[2], icmp[3]]));
    icmp[2..4].copy_from_slice(&check.to_ne_bytes());
    Outcome::new(
        forward::bounce(ctx, interface),
        counter::ICMP_ECHO_REPLY,
        slot,
    )
}

/// Swaps an IPv6 header's addresses word by word (a 16-byte temporary would sit on the
/// stack).
#[inline(always)]
pub fn swap_addresses(ip: &mut Ipv6Hdr) {
    let src = ip.src_addr.as_mut_ptr().cast::<[u8; 4]>();
    let dst = ip.dst_addr.as_mut_ptr().cast::<[u8; 4]>();
    let mut i = 0;
    while i < 4 {
        // SAFETY: word `i` of each 16-byte address.
        unsafe { core::ptr::swap(src.add(i), dst.add(i)) };
        i += 1;
    }
}

/// Where an arriving error's quote begins, and the frame's least length.
const ARRIVED_QUOTE: usize = EthHdr::LEN + Ipv6Hdr::LEN + 8;
const ARRIVED_LEN: usize = ARRIVED_QUOTE + Ipv6Hdr::LEN + 8;

/// A provider-side ICMPv6 message to a NAT address: an error about one of its flows
/// goes to the flow's consumer, translated; anything else is dropped.
#[inline(never)]
pub fn from_provider(ctx: &XdpContext, interface: &Interface, packet: &Packet) -> Outcome {
    let refused = Outcome::drop(counter::DROP_ICMP);
    // SAFETY: `parse` checked the 8-byte ICMPv6 header lies within the frame.
    let kind = unsafe { *packet.l4 };
    if kind != DEST_UNREACHABLE_TYPE
        && kind != PACKET_TOO_BIG_TYPE
        && kind != TIME_EXCEEDED_TYPE
        && kind != PARAMETER_PROBLEM_TYPE
    {
        return refused;
    }
    let start = ctx.data();
    if start + ARRIVED_LEN > ctx.data_end()
        || packet.l4_len() < (ARRIVED_LEN - ARRIVED_QUOTE + 8) as u32
    {
        return refused;
    }
    // SAFETY: the quote lies within the ARRIVED_LEN bytes checked just above.
    let (quoted, ports) = unsafe {
        (
            &mut *((start + ARRIVED_QUOTE) as *mut Ipv6Hdr),
            &mut *((start + ARRIVED_QUOTE + Ipv6Hdr::LEN) as *mut [[u8; 2]; 4]),
        )
    };
    let proto = quoted.next_hdr;
    if quoted.vcf[0] >> 4 != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return refused;
    }
    // The quote is what the flow sent towards the target, from the address the error
    // goes to: its reply entry is keyed the other way round.
    if quoted.src_addr != packet.ipv6().dst_addr {
        return refused;
    }
    let quote = (Addr::ipv6(quoted.src_addr), Addr::ipv6(quoted.dst_addr));
    let Some(key) =
        conntrack::quoted_key(quote.0, quote.1, [ports[0], ports[1]], FAMILY_IPV6, proto)
    else {
        return refused;
    };
    let (reply, route) = icmp::flow_of_error(ctx, interface, packet, key)?;
    let slot = reply.slot;
    // SAFETY: `parse` checked the ICMPv6 and IPv6 headers.
    let (icmp, ip) = unsafe {
        (
            &mut *packet.l4.cast::<[u8; 8]>(),
            &mut *packet.ip.cast::<Ipv6Hdr>(),
        )
    };
    translate(&reply, ip, quoted, ports, icmp);
    forward::send(ctx, interface, packet, &route, counter::ICMP_ERROR, slot)
}

/// Rewrites an error about reply entry `reply`'s flow as its consumer sees it: the
/// error from the endpoint's address to the consumer, the quote from the consumer to
/// the endpoint, every checksum updated.
#[inline(always)]
fn translate(
    reply: &Flow,
    ip: &mut Ipv6Hdr,
    quoted: &mut Ipv6Hdr,
    ports: &mut [[u8; 2]; 4],
    icmp: &mut [u8; 8],
) {
    // The reply entry's addresses, side by side (endpoint, consumer), are the 32 bytes
    // both pairs of addresses become: the outer ones in that order, the quoted ones the
    // other way round — which sums the same.
    let new = (&raw const reply.src).cast_mut().cast();
    // SAFETY: 32 bytes of each header, and of the flow entry.
    let (outer, inner) = unsafe {
        (
            bpf_csum_diff(ip.src_addr.as_mut_ptr().cast(), 32, new, 32, 0),
            bpf_csum_diff(quoted.src_addr.as_mut_ptr().cast(), 32, new, 32, 0),
        )
    };
    let (consumer_port, endpoint_port) = (reply.dst_port_be, reply.src_port_be);
    let quote = Delta::default()
        .summed(inner as u32)
        .word(u16::from_ne_bytes(ports[0]), consumer_port)
        .word(u16::from_ne_bytes(ports[1]), endpoint_port);
    // The ICMPv6 checksum covers the pseudo-header (the outer addresses) and the quote
    // (its addresses, ports and, for UDP, the quoted datagram's checksum).
    let mut message = quote.summed(outer as u32);
    let old = u16::from_ne_bytes(ports[3]);
    if quoted.next_hdr == PROTO_UDP && old != 0 {
        let sum = quote.apply(old);
        let new = if sum == 0 { 0xffff } else { sum };
        message = message.word(old, new);
        ports[3] = new.to_ne_bytes();
    }
    quoted.src_addr = reply.dst.octets();
    quoted.dst_addr = reply.src.octets();
    ports[0] = consumer_port.to_ne_bytes();
    ports[1] = endpoint_port.to_ne_bytes();
    ip.src_addr = reply.src.octets();
    ip.dst_addr = reply.dst.octets();
    ip.hop_limit -= 1;
    let check = message.apply(u16::from_ne_bytes([icmp[2], icmp[3]]));
    icmp[2..4].copy_from_slice(&check.to_ne_bytes());
}
