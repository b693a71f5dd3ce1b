//! NAT: rewrite addresses, ports and TTL as the flow entry says, updating the IPv4 and
//! TCP or UDP checksums incrementally (RFC 1624) from the words that changed — never
//! over payload. A UDP datagram sent without a checksum (0) keeps none; one whose new
//! checksum comes out 0 carries 0xFFFF, its equal in one's complement (RFC 768).

use endpoint_common::{
    checksum::Delta,
    maps::{Flow, PROTO_TCP},
};

use crate::parse::Packet;

/// Where the checksum is in a TCP and in a UDP header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

// Its own BPF function, to keep the caller's stack frame small.
#[inline(never)]
pub fn rewrite(packet: &Packet, flow: &Flow) {
    // SAFETY: `parse` checked the headers lie within the frame: the ports begin both
    // transport headers, and the checksum lies within each one's checked length.
    let ip = unsafe { &mut *packet.ip };
    let ports = unsafe { &mut *packet.l4.cast::<[[u8; 2]; 2]>() };
    let (old_src, new_src) = (u32::from_ne_bytes(ip.src_addr), flow.src_be);
    let (old_dst, new_dst) = (u32::from_ne_bytes(ip.dst_addr), flow.dst_be);
    let (old_sport, new_sport) = (u16::from_ne_bytes(ports[0]), flow.src_port_be);
    let (old_dport, new_dport) = (u16::from_ne_bytes(ports[1]), flow.dst_port_be);
    // TTL shares a checksum word with the protocol.
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);

    let addresses = Delta::default()
        .dword(old_src, new_src)
        .dword(old_dst, new_dst);
    let ip_check = addresses
        .word(old_ttl, new_ttl)
        .apply(u16::from_ne_bytes(ip.check));
    // The transport checksum covers the addresses through the pseudo-header.
    let transport = addresses
        .word(old_sport, new_sport)
        .word(old_dport, new_dport);

    ip.src_addr = new_src.to_ne_bytes();
    ip.dst_addr = new_dst.to_ne_bytes();
    ip.ttl -= 1;
    ip.check = ip_check.to_ne_bytes();
    ports[0] = new_sport.to_ne_bytes();
    ports[1] = new_dport.to_ne_bytes();
    if packet.proto == PROTO_TCP {
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
