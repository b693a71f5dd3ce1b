//! NAT: rewrite addresses, ports and TTL (hop limit) as the flow entry says, updating
//! the IPv4 and TCP or UDP checksums incrementally (RFC 1624) from the words that
//! changed — never over payload; IPv6 has no header checksum, and the transport
//! checksum covers its addresses through the pseudo-header alike. A UDP datagram sent
//! without a checksum (0, IPv4 only) keeps none; one whose new checksum comes out 0
//! carries 0xFFFF, its equal in one's complement (RFC 768).

use aya_ebpf::helpers::generated::bpf_csum_diff;
use endpoint_common::{
    checksum::Delta,
    maps::{Flow, PROTO_TCP},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::parse::Packet;

/// Where the checksum is in a TCP and in a UDP header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

// Its own BPF function, to keep the caller's stack frame small.
#[inline(never)]
pub fn rewrite(packet: &Packet, flow: &Flow) {
    // SAFETY: `parse` checked the headers lie within the frame: the ports begin both
    // transport headers, and the checksum lies within each one's checked length.
    let ports = unsafe { &mut *packet.l4.cast::<[[u8; 2]; 2]>() };
    let (old_sport, new_sport) = (u16::from_ne_bytes(ports[0]), flow.src_port_be);
    let (old_dport, new_dport) = (u16::from_ne_bytes(ports[1]), flow.dst_port_be);
    // The transport checksum covers the addresses through the pseudo-header.
    let addresses = if packet.is_ipv6() {
        // SAFETY: as above.
        ipv6(unsafe { &mut *packet.ip.cast::<Ipv6Hdr>() }, flow)
    } else {
        // SAFETY: as above.
        ipv4(unsafe { &mut *packet.ip.cast::<Ipv4Hdr>() }, flow)
    };
    let transport = addresses
        .word(old_sport, new_sport)
        .word(old_dport, new_dport);
    ports[0] = new_sport.to_ne_bytes();
    ports[1] = new_dport.to_ne_bytes();
    if packet.proto() == PROTO_TCP {
        // SAFETY: within the 20 checked bytes of the TCP header.
        let check = unsafe { &mut *packet.l4.add(TCP_CHECK).cast::<[u8; 2]>() };
        *check = transport.apply(u16::from_ne_bytes(*check)).to_ne_bytes();
    } else {
        // SAFETY: within the 8 checked bytes of the UDP header.
        let check = unsafe { &mut *packet.l4.add(UDP_CHECK).cast::<[u8; 2]>() };
        let old = u16::from_ne_bytes(*check);
        if old != 0 {
            let new = transport.apply(old);
            *check = if new == 0 { 0xffff } else { new }.to_ne_bytes();
        }
    }
}

/// Rewrites the IPv4 header; returns the change of its addresses.
#[inline(always)]
fn ipv4(ip: &mut Ipv4Hdr, flow: &Flow) -> Delta {
    let (old_src, new_src) = (u32::from_ne_bytes(ip.src_addr), flow.src.ipv4_be());
    let (old_dst, new_dst) = (u32::from_ne_bytes(ip.dst_addr), flow.dst.ipv4_be());
    // TTL shares a checksum word with the protocol.
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    let addresses = Delta::default()
        .dword(old_src, new_src)
        .dword(old_dst, new_dst);
    ip.check = addresses
        .word(old_ttl, new_ttl)
        .apply(u16::from_ne_bytes(ip.check))
        .to_ne_bytes();
    ip.src_addr = new_src.to_ne_bytes();
    ip.dst_addr = new_dst.to_ne_bytes();
    ip.ttl -= 1;
    addresses
}

/// Rewrites the IPv6 header; returns the change of its addresses. Their 32 bytes are
/// summed by the kernel: word by word, the old and new words would not all fit in
/// registers, and the stack they spill to is short.
#[inline(always)]
fn ipv6(ip: &mut Ipv6Hdr, flow: &Flow) -> Delta {
    // `src` and `dst` lie side by side in both.
    let old = ip.src_addr.as_mut_ptr();
    let new = (&raw const flow.src).cast_mut();
    // SAFETY: 32 bytes of the checked header, and of the flow entry.
    let partial = unsafe { bpf_csum_diff(old.cast(), 32, new.cast(), 32, 0) };
    ip.src_addr = flow.src.octets();
    ip.dst_addr = flow.dst.octets();
    ip.hop_limit -= 1;
    Delta::default().summed(partial as u32)
}
