//! Programs for the benchmarks (`cargo xtask bench`), in one object with the data path:
//!
//! - baselines: `empty` (XDP_PASS) and `swap_tx` (swap MACs, XDP_TX: the least work a
//!   forwarder does);
//! - `restore_pass` / `restore_endpoint` / `restore_new_flow`: BPF_PROG_RUN does not reset
//!   the frame between repeats, so these first copy the pristine frame back from
//!   `FRAME` (the copy's cost is `restore_pass` − `empty`) and then run the data path —
//!   `restore_new_flow` with a new source port each time (1024–31023, clear of the
//!   other cases' 40000), so every run opens a flow
//!   (`expire`, the data path's own, empties the table between rounds);
//! - for packets per second through namespaces: `generate` (live-frames traffic: `FRAME`
//!   with a new source port per frame over `FLOWS_GENERATED` flows, XDP_TX), `sink` (count, drop)
//!   and `redirect` (MACs and egress from `REDIRECT`: the ceiling of the pipeline).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use endpoint_common::checksum::Delta;

/// The bench frames' length: 64 bytes, headers and padding.
const FRAME_LEN: usize = 64;
/// Where the TCP source port and checksum are in those frames.
const SOURCE_PORT: usize = 34;
const TCP_CHECK: usize = 50;

/// The frame `restore_*` programs start from.
#[map]
static FRAME: Array<[u8; FRAME_LEN]> = Array::with_max_entries(1, 0);

/// Per-CPU sequence for new source ports; `SEQUENCE[0]` of `FLOWS_GENERATED` is how many
/// distinct flows `generate` cycles through.
#[map]
static SEQUENCE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static FLOWS_GENERATED: Array<u32> = Array::with_max_entries(1, 0);

/// Packets the sink saw.
#[map]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Egress of `redirect`: ifindex, then destination and source MAC.
#[map]
static REDIRECT: Array<[u32; 4]> = Array::with_max_entries(1, 0);

#[xdp]
pub fn empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn swap_tx(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the 12 bytes of the two MACs were checked above.
    unsafe {
        let eth = start as *mut [u8; 12];
        let macs = *eth;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        *eth = swapped;
    }
    xdp_action::XDP_TX
}

/// Copies the pristine frame back over the packet.
#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let start = ctx.data();
    if start + FRAME_LEN > ctx.data_end() {
        return false;
    }
    let Some(frame) = FRAME.get_ptr(0) else {
        return false;
    };
    // SAFETY: both are FRAME_LEN bytes (checked above); copied as 8-byte words.
    unsafe {
        let from = frame as *const u64;
        let to = start as *mut u64;
        for i in 0..FRAME_LEN / 8 {
            to.add(i).write_unaligned(from.add(i).read_unaligned());
        }
    }
    true
}

/// Gives the frame the next source port of the sequence (below `flows` distinct ones),
/// keeping the TCP checksum right.
#[inline(always)]
fn next_source_port(ctx: &XdpContext, flows: u32) -> bool {
    let start = ctx.data();
    if start + FRAME_LEN > ctx.data_end() {
        return false;
    }
    let Some(sequence) = SEQUENCE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot, and header bytes checked above.
    unsafe {
        let n = *sequence;
        *sequence = n.wrapping_add(1);
        let port = (1024 + n % flows.max(1)) as u16;
        let port_at = (start + SOURCE_PORT) as *mut [u8; 2];
        let check_at = (start + TCP_CHECK) as *mut [u8; 2];
        let old = u16::from_ne_bytes(*port_at);
        let new = port.to_be();
        let check = Delta::default()
            .word(old, new)
            .apply(u16::from_ne_bytes(*check_at));
        *port_at = new.to_ne_bytes();
        *check_at = check.to_ne_bytes();
    }
    true
}

#[xdp]
pub fn restore_pass(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn restore_endpoint(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    endpoint_ebpf::handle(&ctx)
}

/// The data path's own expiry, so that rounds of new flows start from an empty table.
#[xdp]
pub fn expire(ctx: XdpContext) -> u32 {
    endpoint_ebpf::expire::run(&ctx)
}

#[xdp]
pub fn restore_new_flow(ctx: XdpContext) -> u32 {
    if !restore(&ctx) || !next_source_port(&ctx, 30_000) {
        return xdp_action::XDP_ABORTED;
    }
    endpoint_ebpf::handle(&ctx)
}

/// Live frames' pages come back as the receivers left them (the forwarder and the
/// kernel rewrite them): every frame starts again from `FRAME`.
#[xdp]
pub fn generate(ctx: XdpContext) -> u32 {
    let flows = FLOWS_GENERATED.get(0).copied().unwrap_or(1);
    if !restore(&ctx) || !next_source_port(&ctx, flows) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn sink(_ctx: XdpContext) -> u32 {
    if let Some(count) = SINK.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn redirect(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let Some(&[ifindex, a, b, c]) = REDIRECT.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the 12 MAC bytes were checked above.
    unsafe {
        let macs = start as *mut [u8; 12];
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&a.to_ne_bytes());
        bytes[4..8].copy_from_slice(&b.to_ne_bytes());
        bytes[8..].copy_from_slice(&c.to_ne_bytes());
        *macs = bytes;
        bpf_redirect(ifindex, 0) as u32
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
