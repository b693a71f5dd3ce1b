//! NAT: rewrite addresses, ports and TTL as the flow entry says, updating the IPv4 and TCP
//! checksums incrementally (RFC 1624) from the words that changed — never over payload.

use endpoint_common::{checksum::Delta, maps::Flow};

use crate::parse::Packet;

// Its own BPF function, to keep the caller's stack frame small.
#[inline(never)]
pub fn rewrite(packet: &Packet, flow: &Flow) {
    // SAFETY: `parse` checked the headers lie within the frame.
    let (ip, tcp) = unsafe { (&mut *packet.ip, &mut *packet.tcp) };
    let (old_src, new_src) = (u32::from_ne_bytes(ip.src_addr), flow.src_be);
    let (old_dst, new_dst) = (u32::from_ne_bytes(ip.dst_addr), flow.dst_be);
    let (old_sport, new_sport) = (u16::from_ne_bytes(tcp.source), flow.src_port_be);
    let (old_dport, new_dport) = (u16::from_ne_bytes(tcp.dest), flow.dst_port_be);
    // TTL shares a checksum word with the protocol.
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);

    let addresses = Delta::default()
        .dword(old_src, new_src)
        .dword(old_dst, new_dst);
    let ip_check = addresses
        .word(old_ttl, new_ttl)
        .apply(u16::from_ne_bytes(ip.check));
    // The TCP checksum covers the addresses through the pseudo-header.
    let tcp_check = addresses
        .word(old_sport, new_sport)
        .word(old_dport, new_dport)
        .apply(u16::from_ne_bytes(tcp.check));

    ip.src_addr = new_src.to_ne_bytes();
    ip.dst_addr = new_dst.to_ne_bytes();
    ip.ttl -= 1;
    ip.check = ip_check.to_ne_bytes();
    tcp.source = new_sport.to_ne_bytes();
    tcp.dest = new_dport.to_ne_bytes();
    tcp.check = tcp_check.to_ne_bytes();
}
