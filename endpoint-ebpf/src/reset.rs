//! Reset: turns a segment of a connection the node cuts (its endpoint revoked or
//! deleted with `reset`) into the TCP RST that answers it (RFC 9293 §3.10.7.1), sent
//! back to its sender — consumer or target — from the interface's own MAC. Only
//! segments of an existing flow are answered, within a per-CPU budget. The frame is cut
//! to bare headers and both checksums are computed from scratch over them.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use endpoint_common::{checksum::Sum, counter, maps::Interface};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{budget, forward, outcome::Outcome, parse::Packet};

const RST_LEN: usize = EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN;

// Its own BPF function: its stack frame is not added to its siblings' (the
// program's whole call chain must fit in 512 bytes).
#[inline(never)]
pub fn answer(ctx: &XdpContext, interface: &Interface, packet: &Packet, slot: u32) -> Outcome {
    // SAFETY: `parse` checked the headers lie within the frame.
    let (eth, ip, tcp) = (packet.eth(), packet.ip(), packet.tcp());
    let drop = Outcome::drop_for(counter::DROP_FLOW_GONE, slot);
    if tcp.rst() != 0 {
        // Never answer a reset with a reset.
        return drop;
    }
    if !budget::reset() {
        return Outcome::drop_for(counter::DROP_RESET_BUDGET, slot);
    }
    let payload = ip.tot_len() as u32 - Ipv4Hdr::LEN as u32 - tcp.doff() as u32 * 4;
    let (seq, ack, with_ack) = if tcp.ack() != 0 {
        (u32::from_be_bytes(tcp.ack_seq), 0, false)
    } else {
        let consumed = payload + tcp.syn() as u32 + tcp.fin() as u32;
        (0, u32::from_be_bytes(tcp.seq).wrapping_add(consumed), true)
    };
    let mac_src = eth.src_addr;
    let (addr_src, addr_dst) = (ip.src_addr, ip.dst_addr);
    let (port_src, port_dst) = (tcp.source, tcp.dest);

    let excess = (ctx.data_end() - ctx.data()) as i32 - RST_LEN as i32;
    // SAFETY: shrinking the frame; the pointers are re-derived below.
    if excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -excess) } != 0 {
        return drop;
    }
    let start = ctx.data();
    if start + RST_LEN > ctx.data_end() {
        return drop;
    }
    // SAFETY: checked just above.
    let (eth, ip, tcp) = unsafe {
        (
            &mut *(start as *mut EthHdr),
            &mut *((start + EthHdr::LEN) as *mut Ipv4Hdr),
            &mut *((start + EthHdr::LEN + Ipv4Hdr::LEN) as *mut TcpHdr),
        )
    };
    eth.src_addr = interface.mac;
    eth.dst_addr = mac_src;

    ip.vihl = 0x45;
    ip.tos = 0;
    ip.set_tot_len((Ipv4Hdr::LEN + TcpHdr::LEN) as u16);
    ip.id = [0; 2];
    ip.frags = 0x4000u16.to_be_bytes(); // don't fragment
    ip.ttl = 64;
    ip.src_addr = addr_dst;
    ip.dst_addr = addr_src;
    ip.check = [0; 2];
    ip.check = Sum::default()
        .word(u16::from_ne_bytes([ip.vihl, ip.tos]))
        .word(u16::from_ne_bytes(ip.tot_len))
        .word(u16::from_ne_bytes(ip.id))
        .word(u16::from_ne_bytes(ip.frags))
        .word(u16::from_ne_bytes([ip.ttl, ip.proto]))
        .dword(u32::from_ne_bytes(ip.src_addr))
        .dword(u32::from_ne_bytes(ip.dst_addr))
        .finish()
        .to_ne_bytes();

    tcp.source = port_dst;
    tcp.dest = port_src;
    tcp.seq = seq.to_be_bytes();
    tcp.ack_seq = ack.to_be_bytes();
    // Data offset 5 (no options), RST, and ACK when answering a segment without one.
    let flags: u16 = 0x5000 | 0x0004 | if with_ack { 0x0010 } else { 0 };
    let flags_word = flags.to_be_bytes();
    // SAFETY: the flags word is bytes 12..14 of the 20-byte header checked above.
    unsafe { *((tcp as *mut TcpHdr as *mut u8).add(12) as *mut [u8; 2]) = flags_word };
    tcp.window = [0; 2];
    tcp.urg_ptr = [0; 2];
    tcp.check = [0; 2];
    tcp.check = Sum::default()
        // Pseudo-header: addresses, protocol, TCP length.
        .dword(u32::from_ne_bytes(ip.src_addr))
        .dword(u32::from_ne_bytes(ip.dst_addr))
        .word(u16::from_ne_bytes([0, ip.proto]))
        .word((TcpHdr::LEN as u16).to_be())
        .word(u16::from_ne_bytes(tcp.source))
        .word(u16::from_ne_bytes(tcp.dest))
        .dword(u32::from_ne_bytes(tcp.seq))
        .dword(u32::from_ne_bytes(tcp.ack_seq))
        .word(u16::from_ne_bytes(flags_word))
        .finish()
        .to_ne_bytes();

    Outcome::new(forward::bounce(ctx, interface), counter::RESET_SENT, slot)
}
