//! TCP: what a segment tells about its connection. The handshake is tracked (a
//! connection counts as half-open until the consumer acknowledges the target's SYN-ACK,
//! which must acknowledge the consumer's SYN); each direction remembers what its sender
//! acknowledged and its window, and a RST or FIN counts only if it falls where its
//! receiver expects it (RFC 5961): a host that sprays RSTs or FINs with guessed numbers
//! ends nobody's connection. FINs are tracked per direction: a half-closed connection
//! lives on (a slow server may still answer); a closed one lingers and is removed, later
//! if the target closed first (it holds the tuple in TIME_WAIT).

use aya_ebpf::{
    helpers::generated::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use endpoint_common::{
    checksum::Delta,
    counter,
    maps::{FAMILY_IPV6, Flow, FlowKey, tcp},
};

use crate::{
    conntrack::{self, Entry},
    limits,
    maps::{LIMITS, SEGMENT},
    outcome::Outcome,
    parse::Packet,
    stats,
    verify::{self, ACK, FIN, RST, SYN},
};

/// How far behind the receiver's acknowledgement a FIN may be (a retransmission).
const BEHIND: u32 = 1 << 16;
/// The smallest window assumed for a receiver (before one was seen, or a zero window).
const MIN_WINDOW: u32 = 1 << 16;

/// Remembers what a non-SYN segment's sender acknowledges and the window it offers.
#[inline(always)]
pub fn track(flow: &Entry, packet: &Packet, flags: u8) {
    if flags & ACK == 0 {
        return;
    }
    let segment = packet.tcp();
    let ack = u32::from_be_bytes(segment.ack_seq);
    let window = (u16::from_be_bytes(segment.window) as u32) << (flow.wscale & 15);
    let at = flow.ptr();
    // SAFETY: fields of the entry; only this direction's packets write them, and a torn
    // pair only loosens one check.
    unsafe {
        if (*at).ack != ack {
            (*at).ack = ack;
        }
        if (*at).window != window {
            (*at).window = window;
        }
    }
}

/// A consumer's segment on its established (or opening) flow: the handshake's end, and
/// its RST or FIN.
#[inline(never)]
pub fn from_consumer(
    key: &FlowKey,
    flow: &Entry,
    packet: &Packet,
    flags: u8,
) -> Result<(), Outcome> {
    let bits = flow.tcp();
    if bits & tcp::ESTABLISHED == 0 && flags & ACK != 0 {
        // The third packet of the handshake: it must acknowledge the target's SYN.
        let Some(reply) = conntrack::lookup(&conntrack::reply_key(flow)) else {
            return Err(out_of_state(flow));
        };
        let ack = u32::from_be_bytes(packet.tcp().ack_seq);
        if bits & tcp::SYN_ACKED == 0 || ack != reply.isn_next {
            return Err(out_of_state(flow));
        }
        if flow.set(tcp::ESTABLISHED) & tcp::ESTABLISHED == 0 {
            limits::established(flow.ptr());
        }
    } else if bits & tcp::SYN_ACKED == 0 && flags & RST == 0 {
        // Nothing but the SYN (or a RST abandoning it) before the target answered.
        return Err(out_of_state(flow));
    }
    if flags & (RST | FIN) == 0 {
        return Ok(());
    }
    // The target receives: where does it expect this segment?
    let receiver = conntrack::lookup(&conntrack::reply_key(flow));
    let expected = match &receiver {
        Some(reply) if bits & tcp::SYN_ACKED != 0 => Expected::Window(reply.ack, reply.window),
        // Before the target answered, only the consumer's own next number fits.
        _ => Expected::Exactly(flow.isn_next),
    };
    ending(key, flow, packet, flags, expected, tcp::FIN_CONSUMER)
}

/// A target's segment on a flow (`reply` its reply entry): its SYN-ACK, RST or FIN.
#[inline(never)]
pub fn from_target(
    reply: &Entry,
    packet: &Packet,
    flags: u8,
    ctx: &XdpContext,
) -> Result<(), Outcome> {
    let key = conntrack::forward_key_of(reply);
    let Some(flow) = conntrack::lookup(&key) else {
        return Err(Outcome::drop_for(counter::DROP_REPLY_NO_FLOW, reply.slot));
    };
    let segment = packet.tcp();
    if flags & SYN != 0 {
        // A SYN-ACK acknowledges the consumer's SYN, or is not from this connection.
        let ack = u32::from_be_bytes(segment.ack_seq);
        if flags & ACK == 0 || ack != flow.isn_next || flow.tcp() & tcp::ESTABLISHED != 0 {
            return Err(out_of_state(&flow));
        }
        let seq = u32::from_be_bytes(segment.seq);
        let scale = window_scale(ctx, packet);
        // SAFETY: fields of the reply entry, written only by the target's segments.
        unsafe {
            let at = reply.ptr();
            (*at).isn_next = seq.wrapping_add(1);
            (*at).wscale = scale;
            // What it acknowledges and offers (a SYN's window is never scaled).
            (*at).ack = ack;
            (*at).window = u16::from_be_bytes(segment.window) as u32;
        }
        flow.set(tcp::SYN_ACKED);
        return Ok(());
    }
    if flags & (RST | FIN) == 0 {
        return Ok(());
    }
    // The consumer receives: where does it expect this segment?
    let expected = if flow.tcp() & tcp::ESTABLISHED != 0 {
        Expected::Window(flow.ack, flow.window)
    } else if flags & RST != 0 && flags & ACK != 0 {
        // Refusing the SYN: the RST acknowledges it.
        let ack = u32::from_be_bytes(segment.ack_seq);
        if ack != flow.isn_next {
            return Err(Outcome::drop_for(counter::DROP_OUT_OF_WINDOW, flow.slot));
        }
        Expected::Exactly(u32::from_be_bytes(segment.seq))
    } else {
        return Err(out_of_state(&flow));
    };
    ending(&key, &flow, packet, flags, expected, tcp::FIN_TARGET)
}

/// Where a RST or FIN must fall: in the receiver's window from what it acknowledged,
/// or (before it acknowledged anything) exactly at one number.
enum Expected {
    Window(u32, u32),
    Exactly(u32),
}

/// A RST or FIN from the end whose FIN bit is `fin`, on the connection of forward entry
/// `flow` at `key`.
#[inline(always)]
fn ending(
    key: &FlowKey,
    flow: &Entry,
    packet: &Packet,
    flags: u8,
    expected: Expected,
    fin: u64,
) -> Result<(), Outcome> {
    let seq = u32::from_be_bytes(packet.tcp().seq);
    let (exact, in_window, plausible) = match expected {
        Expected::Exactly(at) => (seq == at, seq == at, seq == at),
        Expected::Window(ack, window) => {
            let window = if window < MIN_WINDOW {
                MIN_WINDOW
            } else {
                window
            };
            let ahead = seq.wrapping_sub(ack);
            (
                ahead == 0,
                ahead < window,
                ahead.wrapping_add(BEHIND) <= window.wrapping_add(BEHIND),
            )
        }
    };
    let bits = if flags & RST != 0 {
        // RFC 5961: only a RST at the receiver's next number resets; one elsewhere in
        // the window draws a challenge ACK from the host; one outside is dropped.
        if !in_window {
            return Err(Outcome::drop_for(counter::DROP_OUT_OF_WINDOW, flow.slot));
        }
        stats::note(counter::RESET_RECEIVED, flow.slot);
        if !exact {
            return Ok(());
        }
        flow.set(tcp::RESET) | tcp::RESET
    } else {
        if !plausible {
            return Err(Outcome::drop_for(counter::DROP_OUT_OF_WINDOW, flow.slot));
        }
        let other = tcp::FIN_CONSUMER | tcp::FIN_TARGET;
        let before = flow.set(fin);
        if fin == tcp::FIN_TARGET && before & other == 0 {
            flow.set(tcp::TARGET_CLOSED_FIRST);
        }
        before | fin
    };
    if tcp::closed(bits) {
        conntrack::closed(key, flow);
    }
    Ok(())
}

#[inline(always)]
fn out_of_state(flow: &Flow) -> Outcome {
    Outcome::drop_for(counter::DROP_OUT_OF_STATE, flow.slot)
}

/// The window scale a SYN offers (RFC 7323): its shift, or 0 without the option.
#[inline(never)]
pub fn window_scale(ctx: &XdpContext, packet: &Packet) -> u8 {
    match option(ctx, packet, WINDOW_SCALE) {
        Some((options, at)) => options.byte(at).min(14),
        None => 0,
    }
}

/// Lowers the MSS a SYN or SYN-ACK announces to `limit` (0: no limit), so that no
/// segment of the connection needs fragmenting across the node; the TCP checksum is
/// updated. Returns whether it was lowered. A segment without the option is left alone
/// (its peer assumes 536, RFC 9293 §3.7.1).
#[inline(never)]
pub fn clamp_mss(ctx: &XdpContext, packet: &Packet, limit: u32) -> bool {
    if limit == 0 || limit > 0xffff {
        return false;
    }
    let Some((options, at)) = option(ctx, packet, MSS) else {
        return false;
    };
    let old = [options.byte(at), options.byte(at + 1)];
    if u16::from_be_bytes(old) as u32 <= limit {
        return false;
    }
    let new = (limit as u16).to_be_bytes();
    let offset = 20 + at;
    // SAFETY: the helper writes 2 bytes within the TCP header, which the options walk
    // found there.
    if unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            (packet.l4_offset() + offset) as u32,
            new.as_ptr() as *mut _,
            2,
        )
    } != 0
    {
        return false;
    }
    // A value at an odd offset straddles two checksum words: its bytes count swapped.
    let (old, new) = if offset % 2 == 0 {
        (u16::from_ne_bytes(old), u16::from_ne_bytes(new))
    } else {
        (
            u16::from_ne_bytes([old[1], old[0]]),
            u16::from_ne_bytes([new[1], new[0]]),
        )
    };
    // SAFETY: bytes 16..18 of the 20-byte header `parse` checked.
    let check = unsafe { &mut *packet.l4.add(16).cast::<[u8; 2]>() };
    *check = Delta::default()
        .word(old, new)
        .apply(u16::from_ne_bytes(*check))
        .to_ne_bytes();
    true
}

/// The MSS `packet`, a SYN or SYN-ACK of endpoint `slot` that leaves as `family`, may
/// announce between interfaces with MTUs `mtus` (0: unknown): what fits both, and the
/// service's `mss`. A connection translated between IPv6 and IPv4 must fit the IPv6
/// side's longer header on both.
#[inline(always)]
pub fn mss_limit(packet: &Packet, family: u8, mtus: [u32; 2], slot: u32) -> u32 {
    let mut limit = LIMITS.get(slot).map_or(0, |l| l.mss as u32);
    // The IP and TCP headers without options.
    let headers = if packet.is_ipv6() || family == FAMILY_IPV6 {
        60
    } else {
        40
    };
    for mtu in mtus {
        if mtu > headers && (limit == 0 || mtu - headers < limit) {
            limit = mtu - headers;
        }
    }
    limit
}

/// Lowers the MSS of a SYN or SYN-ACK of endpoint `slot` to `limit`, counted.
#[inline(always)]
pub fn clamp(ctx: &XdpContext, packet: &Packet, limit: u32, slot: u32) {
    if clamp_mss(ctx, packet, limit) {
        stats::note(counter::MSS_CLAMPED, slot);
    }
}

/// TCP options: kind and length.
const MSS: (u8, usize) = (2, 4);
const WINDOW_SCALE: (u8, usize) = (3, 3);

/// A SYN's options, copied out into per-CPU room (a walk over packet bytes at offsets
/// only known at run time does not pass the verifier).
struct Options(*const u8);

impl Options {
    #[inline(always)]
    fn byte(&self, at: usize) -> u8 {
        // SAFETY: masked under 64, within the buffer.
        unsafe { *self.0.add(at & 0x3f) }
    }
}

/// Where the option `kind` (of its length) is among the segment's options: the options,
/// and the offset of the option's value in them.
#[inline(always)]
fn option(ctx: &XdpContext, packet: &Packet, (kind, len): (u8, usize)) -> Option<(Options, usize)> {
    let length = verify::tcp_header_len(packet).wrapping_sub(20);
    if length == 0 || length > 40 {
        return None;
    }
    let buffer = SEGMENT.get_ptr_mut(0)?;
    let options = buffer.cast::<u8>();
    // SAFETY: the helper copies `length` (≤ 40) bytes into the buffer.
    let copied = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (packet.l4_offset() + 20) as u32,
            options.cast(),
            (length & 0x3f) as u32,
        )
    };
    if copied != 0 {
        return None;
    }
    let options = Options(options);
    // Position by position (a walk that jumps from option to option makes the verifier
    // follow every way the jumps could go): `next` is where the next option starts.
    let mut next = 0;
    let mut at = 0;
    while at < 40 {
        if at + 1 >= length {
            break;
        }
        if at == next {
            let found = options.byte(at);
            if found == 0 {
                break;
            }
            if found == 1 {
                next = at + 1;
            } else {
                let found_len = options.byte(at + 1) as usize;
                if found_len < 2 {
                    break;
                }
                if found == kind && found_len == len && at + len <= length {
                    return Some((options, at + 2));
                }
                next = at + found_len;
            }
        }
        at += 1;
    }
    None
}
