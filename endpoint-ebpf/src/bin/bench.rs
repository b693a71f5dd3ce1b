//! Programs for the benchmarks (`cargo xtask bench`), in one object with the data path:
//!
//! - baselines: `empty` (XDP_PASS) and `swap_tx` (swap MACs, XDP_TX: the least work a
//!   forwarder does);
//! - `restore_pass` / `restore_endpoint` / `restore_new_flow`: BPF_PROG_RUN does not reset
//!   the frame between repeats, so these first copy the pristine frame back from
//!   `FRAME` (the copy's cost is `restore_pass` − `empty`) and then run the data path —
//!   `restore_new_flow` with a new source port each time (1024–31023, clear of the
//!   other cases' 40000), so every run opens a flow
//!   (`expire`, the data path's own, empties the table between rounds; `dns`, the data
//!   path's own too, is where `endpoint` hands DNS queries);
//! - for packets per second through namespaces: `generate` and `generate6` (live-frames
//!   traffic: `FRAME` or, for IPv6, `FRAME6` with a new source port per frame over
//!   `FLOWS_GENERATED` flows, XDP_TX), `sink` (count TCP and UDP, drop) and `redirect`
//!   (MACs and egress from `REDIRECT`: the ceiling of the pipeline);
//! - for new connections per second through namespaces: `generate_syn` (`FRAME`, a SYN,
//!   with a source address and port never used before in the run), `reflect` (a target
//!   that answers every SYN with a SYN-ACK) and `count_syn_ack` (counts, on the consumer
//!   side, the SYN-ACKs that come back as expected);
//! - for DNS: `restore_dns_pass` / `restore_dns` (as `restore_*`, for a query frame from
//!   `DNS_FRAME`, first resized to the query's length: an answer is longer),
//!   `generate_dns` (live-frames queries: `DNS_FRAME` with a new source port and DNS id
//!   per frame over `FLOWS_GENERATED` ports, XDP_TX) and `count_dns` (counts, on the
//!   client side, the answers that come back, and drops).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_loop, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_store_bytes},
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

/// The IPv6 frames' length (80 bytes, a multiple of 8 for the copy), where their
/// next-header field and source port are, and their TCP or UDP checksum.
const FRAME6_LEN: usize = 80;
const NEXT_HEADER6: usize = 20;
const SOURCE_PORT6: usize = 54;
const TCP_CHECK6: usize = 70;
const UDP_CHECK6: usize = 60;

/// The frame `restore_*` programs and `generate` start from.
#[map]
static FRAME: Array<[u8; FRAME_LEN]> = Array::with_max_entries(1, 0);

/// The IPv6 frame `generate6` starts from.
#[map]
static FRAME6: Array<[u8; FRAME6_LEN]> = Array::with_max_entries(1, 0);

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

/// How many SYNs `generate_syn` made so far: the next one's tuple.
#[map]
static SYNS: Array<u32> = Array::with_max_entries(1, 0);

/// `reflect`: SYNs answered, other frames dropped.
#[map]
static REFLECTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// `count_syn_ack`: SYN-ACKs from `SYN_ACK_FROM` acknowledging a `generate_syn` SYN,
/// and everything else.
#[map]
static SYN_ACKS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The address and port the SYN-ACKs must come from (the endpoint), each as its bytes
/// in the packet read in native order.
#[map]
static SYN_ACK_FROM: Array<[u32; 2]> = Array::with_max_entries(1, 0);

/// Room for a DNS query frame in `DNS_FRAME` (the frame is shorter: an Ethernet header
/// up to `DNS_FRAME_LEN` - 1 bytes).
const DNS_FRAME_LEN: usize = 128;

/// The DNS query frame `restore_dns*` and `generate_dns` start from: its length (a
/// native-order u32), then the frame.
#[map]
static DNS_FRAME: Array<[u8; 4 + DNS_FRAME_LEN]> = Array::with_max_entries(1, 0);

/// `count_dns`: answers with records (NOERROR, at least one answer), NXDOMAIN answers,
/// and any other UDP/IPv4 frame.
#[map]
static DNS_ANSWERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// `generate_dns` spins this many rounds of a loop per query (0: none), which slows it
/// down to a chosen rate.
#[map]
static DNS_SPIN: Array<u32> = Array::with_max_entries(1, 0);

/// Where the UDP checksum and the DNS message's id and flags are (no IP options).
const UDP_CHECK: usize = 40;
const DNS_ID: usize = 42;

/// Sequence numbers of the generated SYNs and of the reflector's SYN-ACKs.
const SYN_SEQ: u32 = 0x5eed_0001;
const SYN_ACK_SEQ: u32 = 0x7a66_0001;

/// Where the IPv4 checksum and source address, and the TCP flags and sequence numbers
/// are in frames without IP options.
const IP_CHECK: usize = 24;
const SOURCE_ADDRESS: usize = 26;
const TCP_SEQ: usize = 38;
const TCP_FLAGS: usize = 47;
/// The SYN's ports a generated SYN takes before the next source address: every source
/// port of a round differs, so nftables' masquerade keeps them all (its cheapest case).
const PORTS_PER_ADDRESS: u32 = 64_512;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;

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
    restore_from(ctx, &FRAME)
}

/// Copies the pristine frame of `map` back over the packet.
#[inline(always)]
fn restore_from<const LEN: usize>(ctx: &XdpContext, map: &Array<[u8; LEN]>) -> bool {
    let start = ctx.data();
    if start + LEN > ctx.data_end() {
        return false;
    }
    let Some(frame) = map.get_ptr(0) else {
        return false;
    };
    // SAFETY: both are LEN bytes (checked above); copied as 8-byte words.
    unsafe {
        let from = frame as *const u64;
        let to = start as *mut u64;
        for i in 0..LEN / 8 {
            to.add(i).write_unaligned(from.add(i).read_unaligned());
        }
    }
    true
}

/// Gives the frame the next source port of the sequence (below `flows` distinct ones),
/// keeping the TCP checksum right.
#[inline(always)]
fn next_source_port(ctx: &XdpContext, flows: u32) -> bool {
    next_port_at::<SOURCE_PORT, TCP_CHECK>(ctx, flows)
}

/// As `next_source_port`, for a frame whose source port is at `PORT` and whose TCP or
/// UDP checksum is at `CHECK`.
#[inline(always)]
fn next_port_at<const PORT: usize, const CHECK: usize>(ctx: &XdpContext, flows: u32) -> bool {
    let start = ctx.data();
    if start + PORT + 2 > ctx.data_end() || start + CHECK + 2 > ctx.data_end() {
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
        let port_at = (start + PORT) as *mut [u8; 2];
        let check_at = (start + CHECK) as *mut [u8; 2];
        let old = u16::from_ne_bytes(*port_at);
        let new = port.to_be();
        let mut check = Delta::default()
            .word(old, new)
            .apply(u16::from_ne_bytes(*check_at));
        // A UDP/IPv6 checksum of 0 would mean none, which IPv6 does not allow.
        if CHECK == UDP_CHECK6 && check == 0 {
            check = 0xffff;
        }
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

/// The data path's DNS program, which `endpoint` hands queries to.
#[xdp]
pub fn dns(ctx: XdpContext) -> u32 {
    endpoint_ebpf::dns::run(&ctx)
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

/// `generate` for IPv6: TCP segments or UDP datagrams (with their checksum, which IPv6
/// requires) from `FRAME6`.
#[xdp]
pub fn generate6(ctx: XdpContext) -> u32 {
    let flows = FLOWS_GENERATED.get(0).copied().unwrap_or(1);
    if !restore_from(&ctx, &FRAME6) {
        return xdp_action::XDP_ABORTED;
    }
    let start = ctx.data();
    if start + NEXT_HEADER6 + 1 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: checked above.
    let tcp = unsafe { *((start + NEXT_HEADER6) as *const u8) } == 6;
    let moved = if tcp {
        next_port_at::<SOURCE_PORT6, TCP_CHECK6>(&ctx, flows)
    } else {
        next_port_at::<SOURCE_PORT6, UDP_CHECK6>(&ctx, flows)
    };
    if !moved {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

/// Gives the frame (restored from `FRAME`) the run's next unused tuple: source port
/// 1024 + n mod 64512, source address `FRAME`'s + n / 64512, checksums kept right.
#[inline(always)]
fn next_tuple(ctx: &XdpContext) -> bool {
    let start = ctx.data();
    if start + FRAME_LEN > ctx.data_end() {
        return false;
    }
    let Some(count) = SYNS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: one generator runs at a time (BPF_PROG_RUN from one thread); header bytes
    // checked above.
    unsafe {
        let n = *count;
        *count = n.wrapping_add(1);
        let port = ((1024 + n % PORTS_PER_ADDRESS) as u16).to_be_bytes();
        let address_at = (start + SOURCE_ADDRESS) as *mut [u8; 4];
        let address = u32::from_be_bytes(*address_at)
            .wrapping_add(n / PORTS_PER_ADDRESS)
            .to_be_bytes();
        let port_at = (start + SOURCE_PORT) as *mut [u8; 2];
        let ip_check_at = (start + IP_CHECK) as *mut [u8; 2];
        let tcp_check_at = (start + TCP_CHECK) as *mut [u8; 2];
        let moved =
            Delta::default().dword(u32::from_ne_bytes(*address_at), u32::from_ne_bytes(address));
        let ip_check = moved.apply(u16::from_ne_bytes(*ip_check_at));
        let tcp_check = moved
            .word(u16::from_ne_bytes(*port_at), u16::from_ne_bytes(port))
            .apply(u16::from_ne_bytes(*tcp_check_at));
        *address_at = address;
        *port_at = port;
        *ip_check_at = ip_check.to_ne_bytes();
        *tcp_check_at = tcp_check.to_ne_bytes();
    }
    true
}

/// Live-frames SYNs, each opening a connection never seen before in the run.
#[xdp]
pub fn generate_syn(ctx: XdpContext) -> u32 {
    if !restore(&ctx) || !next_tuple(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn count_in(map: &PerCpuArray<u64>, index: u32) {
    if let Some(count) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot.
        unsafe { *count += 1 };
    }
}

/// The TCP/IPv4 segment without IP options at the frame's start: its flags, or None.
#[inline(always)]
fn tcp_flags(ctx: &XdpContext) -> Option<u8> {
    let start = ctx.data();
    if start + TCP_CHECK + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: the Ethernet, IPv4 and TCP headers' fixed parts were checked above.
    unsafe {
        let ethertype = *((start + 12) as *const [u8; 2]);
        let version_ihl = *((start + 14) as *const u8);
        let protocol = *((start + 23) as *const u8);
        if ethertype != [0x08, 0x00] || version_ihl != 0x45 || protocol != 6 {
            return None;
        }
        Some(*((start + TCP_FLAGS) as *const u8))
    }
}

/// A target host that answers every SYN at once: MACs, addresses and ports swapped
/// (which leaves both checksums as they were), SYN-ACK acknowledging the SYN and its
/// payload, options echoed, XDP_TX. Other TCP is dropped; the rest (ARP) goes to the
/// kernel.
#[xdp]
pub fn reflect(ctx: XdpContext) -> u32 {
    let Some(flags) = tcp_flags(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    if flags & (SYN | ACK | RST | FIN) != SYN {
        count_in(&REFLECTED, 1);
        return xdp_action::XDP_DROP;
    }
    let start = ctx.data();
    if start + TCP_CHECK + 2 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: all bytes touched lie before TCP_CHECK + 2, checked above.
    unsafe {
        let macs = start as *mut [u8; 12];
        let old = *macs;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&old[6..]);
        swapped[6..].copy_from_slice(&old[..6]);
        *macs = swapped;
        let addresses = (start + SOURCE_ADDRESS) as *mut [u8; 8];
        let old = *addresses;
        let mut swapped = [0u8; 8];
        swapped[..4].copy_from_slice(&old[4..]);
        swapped[4..].copy_from_slice(&old[..4]);
        *addresses = swapped;
        let ports = (start + SOURCE_PORT) as *mut [u8; 4];
        let old = *ports;
        *ports = [old[2], old[3], old[0], old[1]];

        let total = u16::from_be_bytes(*((start + 16) as *const [u8; 2])) as u32;
        let header = (*((start + TCP_FLAGS - 1) as *const u8) >> 4) as u32 * 4;
        let payload = total.wrapping_sub(20).wrapping_sub(header);
        let numbers = (start + TCP_SEQ) as *mut [u8; 8];
        let old = *numbers;
        let seq = u32::from_be_bytes([old[0], old[1], old[2], old[3]]);
        let mut new = [0u8; 8];
        new[..4].copy_from_slice(&SYN_ACK_SEQ.to_be_bytes());
        new[4..].copy_from_slice(&seq.wrapping_add(1).wrapping_add(payload).to_be_bytes());
        let flags_at = (start + TCP_FLAGS - 1) as *mut [u8; 2];
        let old_flags = *flags_at;
        let new_flags = [old_flags[0], SYN | ACK];
        let word = |bytes: &[u8; 8], at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let check_at = (start + TCP_CHECK) as *mut [u8; 2];
        let check = Delta::default()
            .dword(word(&old, 0), word(&new, 0))
            .dword(word(&old, 4), word(&new, 4))
            .word(u16::from_ne_bytes(old_flags), u16::from_ne_bytes(new_flags))
            .apply(u16::from_ne_bytes(*check_at));
        *numbers = new;
        *flags_at = new_flags;
        *check_at = check.to_ne_bytes();
    }
    count_in(&REFLECTED, 0);
    xdp_action::XDP_TX
}

/// Counts, and drops, what comes back to the consumer: a SYN-ACK from `SYN_ACK_FROM`
/// with the reflector's sequence number, acknowledging a generated SYN (slot 0), or
/// anything else (slot 1).
#[xdp]
pub fn count_syn_ack(ctx: XdpContext) -> u32 {
    let expected = tcp_flags(&ctx) == Some(SYN | ACK) && {
        let start = ctx.data();
        match SYN_ACK_FROM.get(0) {
            // SAFETY: the headers' fixed parts lie within the frame (checked again here
            // for the verifier); read as they are in the packet.
            Some(&[address, port]) if start + TCP_CHECK <= ctx.data_end() => unsafe {
                let read = |at: usize| ((start + at) as *const u32).read_unaligned();
                read(SOURCE_ADDRESS) == address
                    && ((start + SOURCE_PORT) as *const u16).read_unaligned() as u32 == port
                    && read(TCP_SEQ) == u32::from_ne_bytes(SYN_ACK_SEQ.to_be_bytes())
                    && read(TCP_SEQ + 4)
                        == u32::from_ne_bytes(SYN_SEQ.wrapping_add(1).to_be_bytes())
            },
            _ => false,
        }
    };
    count_in(&SYN_ACKS, if expected { 0 } else { 1 });
    xdp_action::XDP_DROP
}

/// Puts the query frame of `DNS_FRAME` in place of the packet, the packet first resized
/// to its length at its head, where the answer grew it (always, even by 0 bytes, so that
/// `restore_dns_pass` costs what the restore in `restore_dns` does). For answers longer
/// than the query only: a shorter one is cut at the tail, and this would take the
/// headroom away repeat by repeat.
#[inline(always)]
fn restore_query(ctx: &XdpContext) -> bool {
    let Some(frame) = DNS_FRAME.get_ptr_mut(0) else {
        return false;
    };
    let frame = frame.cast::<u8>();
    // SAFETY: the map value's first 4 bytes. The mask bounds the length for the
    // verifier (below DNS_FRAME_LEN).
    let len = unsafe { frame.cast::<u32>().read_unaligned() } & (DNS_FRAME_LEN as u32 - 1);
    if len < 14 {
        return false;
    }
    let mut have = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: a local. Read back, the length stays a number for the verifier (not
    // `len - data_end + data`, arithmetic on the end pointer).
    have = unsafe { core::ptr::read_volatile(&have) };
    // SAFETY: resizing the frame; no pointer into it is held. Then `len` (below
    // DNS_FRAME_LEN) bytes of the map value after its length, into the frame that now
    // has that length.
    unsafe {
        bpf_xdp_adjust_head(ctx.ctx, have - len as i32) == 0
            && bpf_xdp_store_bytes(ctx.ctx, 0, frame.add(4).cast(), len) == 0
    }
}

#[xdp]
pub fn restore_dns_pass(ctx: XdpContext) -> u32 {
    if !restore_query(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn restore_dns(ctx: XdpContext) -> u32 {
    if !restore_query(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    endpoint_ebpf::handle(&ctx)
}

/// One round of `generate_dns`'s spin: nothing.
extern "C" fn spin_once(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    0
}

/// Live-frames DNS queries: `DNS_FRAME`, each with the next source port (below
/// `FLOWS_GENERATED` distinct ones) and a new DNS id, its UDP checksum kept right.
///
/// The test run's own context is resized by the restore (the frames it is given are
/// longer than the query), which makes the kernel take the frame's length from it every
/// time: a receiver that answered in place with a longer frame does not leave its length
/// behind for the page's next query.
#[xdp]
pub fn generate_dns(ctx: XdpContext) -> u32 {
    let flows = FLOWS_GENERATED.get(0).copied().unwrap_or(1);
    let spin = DNS_SPIN.get(0).copied().unwrap_or(0);
    if spin > 0 {
        // SAFETY: a helper call with a callback that touches nothing.
        unsafe {
            bpf_loop(
                spin.min(1 << 16),
                spin_once as *mut _,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    if !restore_query(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    let start = ctx.data();
    if start + DNS_ID + 2 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(sequence) = SEQUENCE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot, and header bytes checked above.
    unsafe {
        let n = *sequence;
        *sequence = n.wrapping_add(1);
        let port = ((1024 + n % flows.max(1)) as u16).to_be_bytes();
        let id = (n as u16).to_be_bytes();
        let port_at = (start + SOURCE_PORT) as *mut [u8; 2];
        let id_at = (start + DNS_ID) as *mut [u8; 2];
        let check_at = (start + UDP_CHECK) as *mut [u8; 2];
        let old = *check_at;
        if old != [0; 2] {
            let mut check = Delta::default()
                .word(u16::from_ne_bytes(*port_at), u16::from_ne_bytes(port))
                .word(u16::from_ne_bytes(*id_at), u16::from_ne_bytes(id))
                .apply(u16::from_ne_bytes(old));
            // 0 would mean "no checksum".
            if check == 0 {
                check = 0xffff;
            }
            *check_at = check.to_ne_bytes();
        }
        *port_at = port;
        *id_at = id;
    }
    xdp_action::XDP_TX
}

/// Counts, and drops, the UDP/IPv4 frames that reach the client: DNS answers from port
/// 53 with records (slot 0), NXDOMAIN answers (slot 1), anything else (slot 2). Other
/// frames (ARP) go to the kernel.
#[xdp]
pub fn count_dns(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + DNS_ID + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the Ethernet, IPv4, UDP and DNS headers' bytes, checked above.
    unsafe {
        let ethertype = *((start + 12) as *const [u8; 2]);
        let version_ihl = *((start + 14) as *const u8);
        let protocol = *((start + 23) as *const u8);
        if ethertype != [0x08, 0x00] || version_ihl != 0x45 || protocol != 17 {
            return xdp_action::XDP_PASS;
        }
        let from_53 = *((start + SOURCE_PORT) as *const [u8; 2]) == [0, 53];
        let [flags, code] = *((start + DNS_ID + 2) as *const [u8; 2]);
        let answers = *((start + DNS_ID + 6) as *const [u8; 2]);
        let response = from_53 && flags & 0x80 != 0;
        let slot = if response && code & 0x0f == 0 && answers != [0; 2] {
            0
        } else if response && code & 0x0f == 3 {
            1
        } else {
            2
        };
        count_in(&DNS_ANSWERS, slot);
    }
    xdp_action::XDP_DROP
}

/// Counts and drops TCP and UDP frames (IPv4 without options, or IPv6 without extension
/// headers); the rest (ARP, neighbour discovery) goes to the kernel.
#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 24 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the first 24 bytes, checked above.
    let protocol = unsafe {
        match *((start + 12) as *const [u8; 2]) {
            [0x08, 0x00] => *((start + 23) as *const u8),
            [0x86, 0xdd] => *((start + NEXT_HEADER6) as *const u8),
            _ => 0,
        }
    };
    if protocol != 6 && protocol != 17 {
        return xdp_action::XDP_PASS;
    }
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
