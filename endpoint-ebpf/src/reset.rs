//! Reset: turns a segment of a connection the node cuts (its endpoint revoked or
//! deleted with `reset`) into the TCP RST that answers it (RFC 9293 §3.10.7.1), sent
//! back to its sender — consumer or target — from the interface's own MAC. Only
//! segments of an existing flow are answered, within a per-CPU budget. The frame is cut
//! to bare headers and both checksums are computed from scratch over them.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use endpoint_common::{
    checksum::Sum,
    counter,
    maps::{Interface, PROTO_TCP},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{budget, forward, outcome::Outcome, parse::Packet, verify};

// Its own BPF function: its stack frame is not added to its siblings' (the
// program's whole call chain must fit in 512 bytes).
#[inline(never)]
pub fn answer(ctx: &XdpContext, interface: &Interface, packet: &Packet, slot: u32) -> Outcome {
    let tcp = packet.tcp();
    let drop = Outcome::drop_for(counter::DROP_FLOW_GONE, slot);
    if tcp.rst() != 0 {
        // Never answer a reset with a reset.
        return drop;
    }
    if !budget::reset() {
        return Outcome::drop_for(counter::DROP_RESET_BUDGET, slot);
    }
    let payload = verify::payload_len(packet);
    let (seq, ack, with_ack) = if tcp.ack() != 0 {
        (u32::from_be_bytes(tcp.ack_seq), 0, false)
    } else {
        let consumed = payload + tcp.syn() as u32 + tcp.fin() as u32;
        (0, u32::from_be_bytes(tcp.seq).wrapping_add(consumed), true)
    };
    let ipv6 = packet.is_ipv6();
    let ip_len = packet.ip_header_len();
    let rst_len = EthHdr::LEN + ip_len + TcpHdr::LEN;

    // The headers stay where they are: cut what follows them, then turn them round.
    // A plain number (LLVM would otherwise subtract `rst_len` from the end pointer,
    // which the verifier forbids).
    let frame_len = core::hint::black_box(ctx.data_end() - ctx.data());
    let excess = frame_len as i32 - rst_len as i32;
    // SAFETY: shrinking the frame; the pointers are re-derived below.
    if excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -excess) } != 0 {
        return drop;
    }
    let start = ctx.data();
    // The IPv6 frame is the longer: checked whole, whichever is built.
    if start + EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN > ctx.data_end()
        || (ipv6 && start + EthHdr::LEN + Ipv6Hdr::LEN + TcpHdr::LEN > ctx.data_end())
    {
        return drop;
    }
    // SAFETY: checked just above.
    let eth = unsafe { &mut *(start as *mut EthHdr) };
    eth.dst_addr = eth.src_addr;
    eth.src_addr = interface.mac;
    // The addresses, turned round, are what the pseudo-header sums.
    // SAFETY: as above.
    let addresses = if ipv6 {
        ipv6_header(unsafe { &mut *((start + EthHdr::LEN) as *mut Ipv6Hdr) })
    } else {
        ipv4_header(unsafe { &mut *((start + EthHdr::LEN) as *mut Ipv4Hdr) })
    };
    // SAFETY: as above.
    let tcp = unsafe { &mut *((start + EthHdr::LEN + ip_len) as *mut TcpHdr) };
    (tcp.source, tcp.dest) = (tcp.dest, tcp.source);
    tcp.seq = seq.to_be_bytes();
    tcp.ack_seq = ack.to_be_bytes();
    // Data offset 5 (no options), RST, and ACK when answering a segment without one.
    let flags: u16 = 0x5000 | 0x0004 | if with_ack { 0x0010 } else { 0 };
    let flags_word = flags.to_be_bytes();
    // SAFETY: the flags word is bytes 12..14 of the 20-byte header checked above.
    unsafe { *((tcp as *mut TcpHdr as *mut u8).add(12) as *mut [u8; 2]) = flags_word };
    tcp.window = [0; 2];
    tcp.urg_ptr = [0; 2];
    tcp.check = addresses
        .word(u16::from_ne_bytes([0, PROTO_TCP]))
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

/// Turns the IPv4 header round into the RST's; returns the sum of its addresses.
#[inline(always)]
fn ipv4_header(ip: &mut Ipv4Hdr) -> Sum {
    (ip.src_addr, ip.dst_addr) = (ip.dst_addr, ip.src_addr);
    ip.vihl = 0x45;
    ip.tos = 0;
    ip.set_tot_len((Ipv4Hdr::LEN + TcpHdr::LEN) as u16);
    ip.id = [0; 2];
    ip.frags = 0x4000u16.to_be_bytes(); // don't fragment
    ip.ttl = 64;
    let addresses = Sum::default()
        .dword(u32::from_ne_bytes(ip.src_addr))
        .dword(u32::from_ne_bytes(ip.dst_addr));
    ip.check = addresses
        .word(u16::from_ne_bytes([ip.vihl, ip.tos]))
        .word(u16::from_ne_bytes(ip.tot_len))
        .word(u16::from_ne_bytes(ip.frags))
        .word(u16::from_ne_bytes([ip.ttl, ip.proto]))
        .finish()
        .to_ne_bytes();
    addresses
}

/// Turns the IPv6 header round into the RST's; returns the sum of its addresses.
#[inline(always)]
fn ipv6_header(ip: &mut Ipv6Hdr) -> Sum {
    // Word by word: a 16-byte temporary would sit on the stack.
    let (src, dst) = (
        ip.src_addr.as_mut_ptr().cast::<[u8; 4]>(),
        ip.dst_addr.as_mut_ptr().cast::<[u8; 4]>(),
    );
    let mut i = 0;
    while i < 4 {
        // SAFETY: word `i` of each 16-byte address.
        unsafe { core::ptr::swap(src.add(i), dst.add(i)) };
        i += 1;
    }
    ip.vcf = [0x60, 0, 0, 0];
    ip.payload_len = (TcpHdr::LEN as u16).to_be_bytes();
    ip.hop_limit = 64;
    // SAFETY: the 32 bytes of both addresses, side by side in the checked header.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            ip.src_addr.as_mut_ptr().cast(),
            32,
            0,
        )
    };
    Sum::of(sum as u32)
}
