//! Verify: what a segment must be before the node acts on it — sent to the interface's
//! own MAC from a unicast one, with a correct IPv4 header checksum, flags a connection
//! can carry, and, when it would open a flow, a correct TCP or UDP checksum and a
//! source that can be a client.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use endpoint_common::{
    checksum::Sum,
    counter,
    maps::{Addr, Interface, MAX_SEGMENT, PROTO_UDP, SEGMENT_ROOM, address_kind},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{classify, maps::SEGMENT, outcome::Outcome, parse::Packet};

/// TCP flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A frame for an endpoint (or a reply) reaches the node only if it was sent to the
/// interface's own MAC, by a unicast one: broadcast or another host's frames are not
/// ours, and a reply must never go back to a multicast source.
#[inline(always)]
pub fn addressed_to(interface: &Interface, packet: &Packet, endpoint: u32) -> Result<(), Outcome> {
    let eth: &EthHdr = packet.eth();
    if eth.dst_addr != interface.mac || eth.src_addr[0] & 1 != 0 {
        return Err(Outcome::drop_for(counter::DROP_NOT_FOR_US, endpoint));
    }
    Ok(())
}

/// The IPv4 header's checksum is right (it is updated, not recomputed, on the way).
/// IPv6 has none.
#[inline(always)]
pub fn ip_checksum(packet: &Packet, endpoint: u32) -> Result<(), Outcome> {
    if packet.is_ipv6() {
        return Ok(());
    }
    // SAFETY: `parse` checked the 20-byte header lies within the frame.
    let words = unsafe { &*(packet.ip as *const [u16; Ipv4Hdr::LEN / 2]) };
    let mut sum = Sum::default();
    let mut i = 0;
    while i < Ipv4Hdr::LEN / 2 {
        sum = sum.word(words[i]);
        i += 1;
    }
    if sum.finish() != 0 {
        return Err(Outcome::drop_for(counter::DROP_BAD_CHECKSUM, endpoint));
    }
    Ok(())
}

/// A TCP segment's flags, if they are ones a connection can carry ([`sane_flags`]);
/// none (0) for UDP.
#[inline(always)]
pub fn tcp_flags(packet: &Packet, endpoint: u32) -> Result<u8, Outcome> {
    if !packet.is_tcp() {
        return Ok(0);
    }
    let flags = flags(packet);
    sane_flags(flags, endpoint)?;
    Ok(flags)
}

/// The segment's TCP flags.
#[inline(always)]
pub fn flags(packet: &Packet) -> u8 {
    // SAFETY: byte 13 of the TCP header, which `parse` checked lies within the frame.
    unsafe { *packet.l4.add(13) }
}

/// Flags no segment of a connection carries (as Linux's conntrack judges them): SYN
/// with FIN or RST, RST with FIN, FIN without ACK, or none of SYN, ACK and RST.
#[inline(always)]
fn sane_flags(flags: u8, endpoint: u32) -> Result<(), Outcome> {
    let syn_with_end = flags & SYN != 0 && flags & (FIN | RST) != 0;
    let bad_fin = flags & FIN != 0 && (flags & RST != 0 || flags & ACK == 0);
    if syn_with_end || bad_fin || flags & (SYN | ACK | RST) == 0 {
        return Err(Outcome::drop_for(counter::DROP_BAD_FLAGS, endpoint));
    }
    Ok(())
}

/// A source that can be a client of an endpoint in `network`: not [`martian`], and not
/// an address the node answers for in that network (replies would go to it).
#[inline(always)]
pub fn source(network: u32, packet: &Packet, endpoint: u32) -> Result<(), Outcome> {
    let martian = martian(packet)
        || classify::owned(network, packet.family(), packet.src())
            .is_some_and(|a| a.kind != address_kind::WAITING && a.kind != address_kind::NAT);
    if martian {
        return Err(Outcome::drop_for(counter::DROP_MARTIAN, endpoint));
    }
    Ok(())
}

/// A source that cannot be a client at all: unspecified, loopback, multicast,
/// broadcast or reserved (IPv6: link-local or IPv4-mapped too), or the destination
/// itself.
#[inline(always)]
pub fn martian(packet: &Packet) -> bool {
    let src = packet.src();
    let martian = if packet.is_ipv6() {
        let [w0, w1, w2, w3] = src.words_be;
        let first = u32::from_be(w0);
        let unspecified_or_loopback = w0 == 0 && w1 == 0 && w2 == 0 && u32::from_be(w3) <= 1;
        let mapped = w0 == 0 && w1 == 0 && u32::from_be(w2) == 0xffff;
        unspecified_or_loopback || mapped || first >> 24 == 0xff || first >> 22 == 0x3fa
    } else {
        let first = src.octets()[0];
        first == 0 || first == 127 || first >= 224
    };
    martian || src == packet.dst()
}

/// The TCP or UDP checksum over the pseudo-header, the header and the payload is right
/// (a UDP datagram may carry none: 0). The segment is copied into per-CPU room (a loop
/// over packet bytes at offsets only known at run time does not pass the verifier) and
/// summed by the kernel, 512 bytes a call.
// Its own BPF function: the copy and the sums are one step.
#[inline(never)]
pub fn transport_checksum(ctx: &XdpContext, packet: &Packet, slot: u32) -> Result<(), Outcome> {
    let bad = Outcome::drop_for(counter::DROP_BAD_CHECKSUM, slot);
    if packet.proto() == PROTO_UDP {
        // SAFETY: bytes 6..8 of the 8-byte UDP header `parse` checked.
        if unsafe { *packet.l4.add(6).cast::<[u8; 2]>() } == [0; 2] {
            // IPv6 requires a UDP checksum (RFC 8200).
            return if packet.is_ipv6() { Err(bad) } else { Ok(()) };
        }
    }
    let length = packet.l4_len() as usize;
    if length > MAX_SEGMENT {
        return Err(bad);
    }
    let Some(buffer) = SEGMENT.get_ptr_mut(0) else {
        return Err(bad);
    };
    let buffer = buffer.cast::<u8>();
    let length = (length & (SEGMENT_ROOM - 1)) as u32;
    // SAFETY: the helper copies `length` (≤ MAX_SEGMENT) bytes into the buffer, which
    // holds SEGMENT_ROOM + 4.
    if length == 0
        || unsafe { bpf_xdp_load_bytes(ctx.ctx, packet.l4_offset() as u32, buffer.cast(), length) }
            != 0
    {
        return Err(bad);
    }
    // Summed in 4-byte words: the odd bytes at the end count as if padded with zeros.
    let padded = (length + 3) & !3;
    let end = if length as usize > MAX_SEGMENT {
        MAX_SEGMENT
    } else {
        length as usize
    };
    // SAFETY: the buffer holds SEGMENT_ROOM + 4 bytes.
    unsafe { buffer.add(end).cast::<[u8; 4]>().write_unaligned([0; 4]) };
    let pseudo = pseudo_header(packet.src(), packet.dst(), packet.proto(), length);
    let mut sum = pseudo.partial() as i64;
    let mut chunk = 0;
    while chunk < MAX_SEGMENT / CSUM_CHUNK + 1 {
        let start = (chunk * CSUM_CHUNK) as u32;
        if start >= padded {
            break;
        }
        let size = if padded - start > CSUM_CHUNK as u32 {
            CSUM_CHUNK as u32
        } else {
            padded - start
        };
        // SAFETY: `size` bytes from `start` lie within the buffer.
        sum = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                buffer.add(start as usize).cast(),
                size & 0x3fc,
                sum as u32,
            )
        };
        if sum < 0 {
            return Err(bad);
        }
        chunk += 1;
    }
    if Sum::of(sum as u32).finish() != 0 {
        return Err(bad);
    }
    Ok(())
}

/// The sum of the pseudo-header a TCP, UDP or ICMPv6 checksum covers: the addresses
/// (IPv4 ones have only their first word), the protocol and the segment's `length`.
#[inline(always)]
pub fn pseudo_header(src: Addr, dst: Addr, proto: u8, length: u32) -> Sum {
    let (s, d) = (src.words_be, dst.words_be);
    Sum::default()
        .dword(s[0])
        .dword(s[1])
        .dword(s[2])
        .dword(s[3])
        .dword(d[0])
        .dword(d[1])
        .dword(d[2])
        .dword(d[3])
        .word(u16::from_ne_bytes([0, proto]))
        .dword(length.to_be())
}

/// The most bytes one `bpf_csum_diff` call sums.
const CSUM_CHUNK: usize = 512;

/// The TCP header's length in bytes.
#[inline(always)]
pub fn tcp_header_len(packet: &Packet) -> usize {
    packet.tcp().doff() as usize * 4
}

/// The segment's payload length in bytes.
#[inline(always)]
pub fn payload_len(packet: &Packet) -> u32 {
    packet.l4_len() - tcp_header_len(packet) as u32
}
