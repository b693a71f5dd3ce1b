//! Fuzz: random frames, and frames mutated from valid ones of every kind the program
//! handles, through the real program (BPF_PROG_RUN), each judged against a model written
//! here from the README's rules — not from the program:
//!
//! - nothing is forwarded (XDP_TX, XDP_REDIRECT) that the model refuses, and what is
//!   forwarded is exactly what the model expects: the translation of a connection it
//!   knows, a new connection on a listener that may open one (to one of its targets,
//!   from the NAT address and a NAT port no other connection holds), the ARP answer, or
//!   the RST that answers a segment of a connection its endpoint's revocation cuts;
//! - every forwarded frame has a correct IPv4 checksum and keeps its TCP checksum right
//!   (both computed from scratch here; a segment that came in with a wrong one must
//!   leave with a wrong one: no translation launders it), and its lengths;
//! - on a consumer interface nothing is handed to the kernel, and on a provider one
//!   nothing for a NAT port is, and what is handed over is untouched;
//! - the flow table holds exactly the connections the model saw opened (both
//!   directions, the NAT port reservations of those closed by the target), a
//!   connection goes only when a new SYN replaces it closed, its endpoint's
//!   revocation cuts it, or expiry takes it (whole), the endpoints' and networks'
//!   usage counts match what the table holds, and every frame is counted once, under
//!   what it did.
//!
//! Every 25,000 frames the config changes, between the endpoints as configured and
//! three of them revoked (drain, reset, security groups narrowed), so that
//! revocations meet established connections.
//!
//! `ENDPOINT_FUZZ_FRAMES` (default 100,000) and `ENDPOINT_FUZZ_SEED` (decimal or 0x hex)
//! set the run; `cargo xtask fuzz` runs a million. A failure names the seed, the frame
//! (hex) and why, and the command that runs the same frames again.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    time::Instant,
};

use aya::programs::{TestRun, TestRunOptions};
use endpoint_agent::loader;
use endpoint_common::{
    counter,
    maps::{Flow, FlowKey, PROTO_TCP, PROVIDER_NETWORK, Usage, name, tcp},
};

use crate::rig::*;

/// The NAT ports of the fuzzed node: few, so that running out of them is reached.
const NAT_FIRST: u16 = 20000;
const NAT_LAST: u16 = 20255;
const XDP_TX: u32 = 3;
const PSH: u8 = 0x08;
/// The MTU of every link of the rig: no frame on them is longer.
const MAX_FRAME: usize = 1514;
/// Frames between two full comparisons of the flow table with the model.
const SYNC_EVERY: u64 = 1000;

/// Frames between two changes of the config (from one [`Phase`] to the other).
const PHASE_FRAMES: u64 = 25_000;

/// The configs the run moves between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The rig's config with a small flow table, few NAT ports, low handshake and
    /// connection limits, so that those limits are reached too.
    Configured,
    /// The same with endpoint `a` revoked (its connections drain), `strict` revoked
    /// with `on_revoke: reset` (its connections are answered with a RST), and
    /// `guarded`'s port 80 closed by its security groups (its connections are cut).
    Revoked,
}

impl Phase {
    fn config(self) -> String {
        let configured = CONFIG
            .replace(
                "nat_ports: { first: 20000, last: 20999 }",
                &format!("nat_ports: {{ first: {NAT_FIRST}, last: {NAT_LAST} }}"),
            )
            .replace(
                "  hash_seed: 11",
                "  hash_seed: 11\n  tables: { flows: 512 }\n  limits: { half_open_per_network: 100 }",
            )
            .replace(
                "ip: 10.0.0.100, zone: z1, state: available }\n  - { id: pending,",
                "ip: 10.0.0.100, zone: z1, state: available, limits: { connections: 40 } }\n  - { id: pending,",
            );
        match self {
            Phase::Configured => configured,
            Phase::Revoked => configured
                .replace(
                    "ip: 10.0.0.100, zone: z1, state: available }\n  - { id: b,",
                    "ip: 10.0.0.100, zone: z1, state: rejected, accepted_at: '2026-01-01T00:00:00Z' }\n  - { id: b,",
                )
                .replace(
                    "ip: 10.0.0.105, zone: z1, state: available,",
                    "ip: 10.0.0.105, zone: z1, state: rejected,",
                )
                .replace("      - { cidr: 10.0.0.0/28, ports: [80] }\n", ""),
        }
    }

    /// What has become of the connections of `endpoint`'s listener on `port`.
    fn revocation(self, endpoint: &str, port: u16) -> Revocation {
        match (self, endpoint, port) {
            (Phase::Configured, ..) => Revocation::None,
            (Phase::Revoked, "a", _) => Revocation::Drain,
            (Phase::Revoked, "strict", _) => Revocation::Reset,
            (Phase::Revoked, "guarded", 80) => Revocation::Closed,
            _ => Revocation::None,
        }
    }
}

/// What a revocation does to the connections an endpoint has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revocation {
    /// Nothing: the endpoint opens connections.
    None,
    /// They carry on; no new one opens (a SYN on one included).
    Drain,
    /// Each end's next segment is answered with a RST, and the connection goes.
    Reset,
    /// The security groups no longer admit its source: the consumer's next segment
    /// cuts it (replies still go back until then).
    Closed,
}

#[test]
fn random_and_mutated_frames_are_forwarded_only_as_the_model_allows() {
    let frames = env_number("ENDPOINT_FUZZ_FRAMES").unwrap_or(100_000);
    let seed = env_number("ENDPOINT_FUZZ_SEED").unwrap_or(0x5eed_f00d);
    let (configured, revoked) = (Phase::Configured.config(), Phase::Revoked.config());
    // Every replacement found its text.
    assert_eq!(configured.matches("limits:").count(), 2, "{configured}");
    assert_eq!(
        (
            revoked.matches("rejected").count(),
            revoked.matches("cidr").count()
        ),
        (4, 1),
        "{revoked}"
    );
    with_rig_for(&configured, |rig| Fuzz::new(rig, seed).run(frames));
}

fn env_number(var: &str) -> Option<u64> {
    let text = std::env::var(var).ok()?.replace('_', "");
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{var}={text:?}: not a number")))
}

/// xorshift64*: small, fast and the same everywhere, so a seed replays its frames.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Never zero (xorshift's fixed point); spread small seeds.
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (> 0).
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// One of `items`, or (as often as any one of them) a `random` one.
    fn pick_or<T: Copy>(&mut self, items: &[T], random: fn(&mut Rng) -> T) -> T {
        match self.below(items.len() + 1) {
            i if i == items.len() => random(self),
            i => items[i],
        }
    }

    fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

// ---------------------------------------------------------------------------------
// What the config says, written out by hand (the model's knowledge of the node).

/// An attached interface of the rig.
#[derive(Clone, Copy)]
struct Port {
    name: &'static str,
    ifindex: u32,
    mac: [u8; 6],
    /// The consumer network's id (0: a provider interface).
    network: u32,
    /// The consumer network's name in the config.
    vpc: &'static str,
}

const CONS_A: usize = 0;
const CONS_B: usize = 1;
const PROV: usize = 2;
const PROV2: usize = 3;
const NAMES: [(&str, &str); 4] = [
    ("cons-a", "vpc-a"),
    ("cons-b", "vpc-b"),
    ("prov", ""),
    ("prov2", ""),
];

/// An endpoint listener of the config.
struct Listener {
    endpoint: &'static str,
    vpc: &'static str,
    ip: [u8; 4],
    port: u16,
    /// Whether it may open connections: available, and its targets reachable (the
    /// rig has neighbours for the `orders` targets only).
    opens: bool,
    targets: &'static [([u8; 4], u16)],
    /// Security groups on this port: sources under these prefixes (None: anyone).
    groups: Option<&'static [([u8; 4], u8)]>,
}

const T0: [u8; 4] = TARGETS[0].0;
const T1: [u8; 4] = TARGETS[1].0;
const ORDERS: &[([u8; 4], u16)] = &[(T0, 8080), (T1, 8080)];
const STRICT_80: &[([u8; 4], u16)] = &[(T0, 8080)];
const STRICT_443: &[([u8; 4], u16)] = &[(T0, 8443)];

const LISTENERS: &[Listener] = &[
    Listener {
        endpoint: "a",
        vpc: "vpc-a",
        ip: ENDPOINT,
        port: 80,
        opens: true,
        targets: ORDERS,
        groups: None,
    },
    Listener {
        endpoint: "b",
        vpc: "vpc-b",
        ip: ENDPOINT,
        port: 80,
        opens: true,
        targets: ORDERS,
        groups: None,
    },
    Listener {
        endpoint: "pending",
        vpc: "vpc-a",
        ip: PENDING,
        port: 80,
        opens: false,
        targets: ORDERS,
        groups: None,
    },
    Listener {
        endpoint: "rejected",
        vpc: "vpc-b",
        ip: PENDING,
        port: 80,
        opens: false,
        targets: ORDERS,
        groups: None,
    },
    Listener {
        endpoint: "unresolved",
        vpc: "vpc-a",
        ip: NO_NEIGHBOUR,
        port: 80,
        opens: false,
        targets: &[],
        groups: None,
    },
    Listener {
        endpoint: "unrouted",
        vpc: "vpc-a",
        ip: NO_ROUTE,
        port: 80,
        opens: false,
        targets: &[],
        groups: None,
    },
    Listener {
        endpoint: "guarded",
        vpc: "vpc-b",
        ip: GUARDED,
        port: 80,
        opens: true,
        targets: STRICT_80,
        // 10.0.0.0/28 has port 80 (and 443, being inside the /24 too).
        groups: Some(&[([10, 0, 0, 0], 28)]),
    },
    Listener {
        endpoint: "guarded",
        vpc: "vpc-b",
        ip: GUARDED,
        port: 443,
        opens: true,
        targets: STRICT_443,
        groups: Some(&[([10, 0, 0, 0], 24)]),
    },
    Listener {
        endpoint: "strict",
        vpc: "vpc-a",
        ip: STRICT,
        port: 80,
        opens: true,
        targets: STRICT_80,
        groups: None,
    },
    Listener {
        endpoint: "strict",
        vpc: "vpc-a",
        ip: STRICT,
        port: 443,
        opens: true,
        targets: STRICT_443,
        groups: None,
    },
];

/// The addresses the node answers for in a consumer network: endpoints that carry
/// traffic (never-accepted requests claim none).
fn answered(vpc: &str) -> &'static [[u8; 4]] {
    match vpc {
        "vpc-a" => &[ENDPOINT, NO_NEIGHBOUR, NO_ROUTE, STRICT],
        "vpc-b" => &[ENDPOINT, GUARDED],
        _ => &[],
    }
}

fn target_mac(ip: [u8; 4]) -> Option<[u8; 6]> {
    TARGETS.iter().find(|(t, _)| *t == ip).map(|(_, mac)| *mac)
}

fn in_prefix(addr: [u8; 4], prefix: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(prefix) & mask
}

// ---------------------------------------------------------------------------------
// Frames: built by hand, checksums computed from scratch.

/// Ones' complement sum of `data` as big-endian words (an odd byte padded with zero).
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether the 20-byte IPv4 header at 14 sums right.
fn ip_checksum_ok(f: &[u8]) -> bool {
    f.len() >= 34 && fold(sum(&f[14..34], 0)) == 0xffff
}

/// Whether the TCP segment after an IPv4 header of `ihl` bytes, `tot_len` long, sums
/// right with its pseudo-header.
fn tcp_checksum_ok(f: &[u8], ihl: usize, tot_len: usize) -> bool {
    let (start, end) = (14 + ihl, 14 + tot_len);
    if tot_len < ihl || end > f.len() || f.len() < 34 {
        return false;
    }
    let pseudo = sum(&f[26..34], 6 + (tot_len - ihl) as u64);
    fold(sum(&f[start..end], pseudo)) == 0xffff
}

/// Makes both checksums right again, as far as the frame lets them be computed.
fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [8, 0] {
        return;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    if ihl < 20 || 14 + ihl > f.len() {
        return;
    }
    f[24..26].fill(0);
    let ip = !fold(sum(&f[14..14 + ihl], 0));
    f[24..26].copy_from_slice(&ip.to_be_bytes());
    let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let end = (14 + tot_len).min(f.len());
    if f[23] != 6 || 14 + ihl + 18 > end {
        return;
    }
    let check = 14 + ihl + 16;
    f[check..check + 2].fill(0);
    let pseudo = sum(&f[26..34], 6 + (end - 14 - ihl) as u64);
    let tcp = !fold(sum(&f[14 + ihl..end], pseudo));
    f[check..check + 2].copy_from_slice(&tcp.to_be_bytes());
}

/// A TCP/IPv4 segment's fields.
#[derive(Clone)]
struct Wire {
    mac_src: [u8; 6],
    mac_dst: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ttl: u8,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    /// TCP options (a multiple of 4 bytes).
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl Wire {
    fn frame(&self) -> Vec<u8> {
        let tcp_len = 20 + self.options.len();
        let tot_len = 20 + tcp_len + self.payload.len();
        let mut f = Vec::with_capacity(14 + tot_len);
        f.extend(self.mac_dst);
        f.extend(self.mac_src);
        f.extend([8, 0]);
        f.extend([0x45, 0]);
        f.extend((tot_len as u16).to_be_bytes());
        f.extend([0x12, 0x34, 0x40, 0, self.ttl, 6, 0, 0]);
        f.extend(self.src);
        f.extend(self.dst);
        f.extend(self.sport.to_be_bytes());
        f.extend(self.dport.to_be_bytes());
        f.extend(self.seq.to_be_bytes());
        f.extend(self.ack.to_be_bytes());
        f.extend([((tcp_len / 4) as u8) << 4, self.flags]);
        f.extend(self.window.to_be_bytes());
        f.extend([0, 0, 0, 0]);
        f.extend(&self.options);
        f.extend(&self.payload);
        fix_checksums(&mut f);
        f
    }
}

/// An IPv4 packet of another protocol.
fn ipv4_frame(
    mac: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(mac.1);
    f.extend(mac.0);
    f.extend([8, 0, 0x45, 0]);
    f.extend(((20 + body.len()) as u16).to_be_bytes());
    f.extend([0, 1, 0, 0, 64, proto, 0, 0]);
    f.extend(src);
    f.extend(dst);
    f.extend(body);
    fix_checksums(&mut f);
    f
}

/// The fields of a frame the program takes as TCP/IPv4 (the README's rules: a whole
/// 20-byte IPv4 header, no fragment, a TCP header of at least 20 bytes within the total
/// length, the total length within the frame).
struct Tcp {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    ttl: u8,
    tot_len: usize,
}

impl Tcp {
    fn of(f: &[u8]) -> Option<Tcp> {
        if f.len() < 34 || f[12..14] != [8, 0] || f[23] != 6 {
            return None;
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
        if f[14] >> 4 != 4 || ihl != 20 || tot_len < ihl || 14 + tot_len > f.len() || fragment {
            return None;
        }
        if f.len() < 54 {
            return None;
        }
        let doff = usize::from(f[46] >> 4) * 4;
        if doff < 20 || 20 + doff > tot_len {
            return None;
        }
        Some(Tcp {
            src: f[26..30].try_into().unwrap(),
            dst: f[30..34].try_into().unwrap(),
            sport: u16::from_be_bytes([f[34], f[35]]),
            dport: u16::from_be_bytes([f[36], f[37]]),
            flags: f[47],
            ttl: f[22],
            tot_len,
        })
    }
}

/// Flags a segment of a connection can carry: not SYN with FIN or RST, not FIN with RST
/// or without ACK, and some of SYN, ACK, RST.
fn sane_flags(flags: u8) -> bool {
    let syn_with_end = flags & SYN != 0 && flags & (FIN | RST) != 0;
    let bad_fin = flags & FIN != 0 && (flags & RST != 0 || flags & ACK == 0);
    !syn_with_end && !bad_fin && flags & (SYN | ACK | RST) != 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---------------------------------------------------------------------------------
// The model's state: the connections it saw opened.

/// A connection the model saw opened.
#[derive(Clone, Copy, Debug)]
struct Conn {
    /// The consumer interface it came in on.
    port: usize,
    client_mac: [u8; 6],
    target: [u8; 4],
    target_port: u16,
    nat_port: u16,
    slot: u32,
    /// Its endpoint, and the listener's port.
    endpoint: &'static str,
    listener: u16,
    /// Tells it from a later connection on the same tuple.
    opened_ns: u64,
    /// For the frame generator: the client's and the target's next sequence numbers.
    client_next: u32,
    target_next: Option<u32>,
}

impl Conn {
    /// The key its replies arrive with.
    fn reply_key(&self) -> FlowKey {
        FlowKey {
            src_be: u32::from_ne_bytes(self.target),
            dst_be: u32::from_ne_bytes(NAT),
            src_port_be: self.target_port.to_be(),
            dst_port_be: self.nat_port.to_be(),
            scope: FlowKey::scope(PROVIDER_NETWORK, PROTO_TCP),
        }
    }
}

fn reply_key_of(forward: &Flow) -> FlowKey {
    FlowKey {
        src_be: forward.dst_be,
        dst_be: forward.src_be,
        src_port_be: forward.dst_port_be,
        dst_port_be: forward.src_port_be,
        scope: FlowKey::scope(PROVIDER_NETWORK, PROTO_TCP),
    }
}

fn addr(word_be: u32) -> [u8; 4] {
    word_be.to_ne_bytes()
}

#[derive(Default)]
struct Model {
    /// Connections by their consumer-to-target key (ordered: the same seed picks the
    /// same ones).
    flows: BTreeMap<FlowKey, Conn>,
    /// Reply key → consumer-to-target key.
    replies: BTreeMap<FlowKey, FlowKey>,
    /// NAT port reservations: reply keys of connections the target closed first.
    reserved: BTreeSet<FlowKey>,
}

impl Model {
    fn insert(&mut self, key: FlowKey, conn: Conn) {
        self.replies.insert(conn.reply_key(), key);
        self.flows.insert(key, conn);
    }

    fn remove(&mut self, key: &FlowKey) -> Option<Conn> {
        let conn = self.flows.remove(key)?;
        self.replies.remove(&conn.reply_key());
        Some(conn)
    }
}

/// Which way a known connection's frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    ToTarget,
    ToConsumer,
}

/// What the model lets the program do with one frame.
#[derive(Default)]
struct Allowed {
    /// Hand it to the kernel, untouched.
    pass: bool,
    /// Answer it with exactly this ARP reply.
    arp: Option<Vec<u8>>,
    /// Forward it on this known connection, this way.
    forward: Option<(FlowKey, Conn, Way)>,
    /// Answer it with exactly this RST (its connection cut by a revocation).
    reset: Option<Vec<u8>>,
    /// It may remove its known connection (revoked with reset, or no longer admitted).
    removes: bool,
    /// Open a connection for it on this listener.
    open: Option<&'static Listener>,
}

/// A frame that ran: where it arrived, what it was, what the program did with it.
struct Ran<'a> {
    port: usize,
    frame: &'a [u8],
    action: u32,
    out: &'a [u8],
}

impl Ran<'_> {
    fn forwarded(&self) -> bool {
        self.action == XDP_TX || self.action == XDP_REDIRECT
    }
}

#[derive(Default)]
struct Tally {
    mutated: u64,
    random: u64,
    forward_new: u64,
    forward: u64,
    reply: u64,
    arp: u64,
    pass: u64,
    drop: u64,
    syncs: u64,
    expired: u64,
    phases: u64,
    reset: u64,
}

// ---------------------------------------------------------------------------------
// The run.

struct Fuzz<'r> {
    rig: &'r mut Rig,
    seed: u64,
    rng: Rng,
    ports: [Port; 4],
    /// Endpoint slots by name.
    slots: BTreeMap<&'static str, u32>,
    model: Model,
    phase: Phase,
    tally: Tally,
    /// Frames run so far.
    n: u64,
    /// The last frames (interface, input, action), for failure messages.
    recent: VecDeque<(usize, Vec<u8>, u32)>,
    out: Vec<u8>,
}

impl<'r> Fuzz<'r> {
    fn new(rig: &'r mut Rig, seed: u64) -> Self {
        let ids = rig.pipeline.applied().ids.clone();
        let ports = NAMES.map(|(name, vpc)| {
            let link = rig.facts.links[name];
            Port {
                name,
                ifindex: link.ifindex,
                mac: link.mac,
                network: if vpc.is_empty() { 0 } else { ids.networks[vpc] },
                vpc,
            }
        });
        let slots = LISTENERS
            .iter()
            .map(|l| (l.endpoint, ids.endpoints[l.endpoint]))
            .collect();
        Self {
            rig,
            seed,
            rng: Rng::new(seed),
            ports,
            slots,
            model: Model::default(),
            phase: Phase::Configured,
            tally: Tally::default(),
            n: 0,
            recent: VecDeque::new(),
            out: vec![0; 4096],
        }
    }

    fn run(mut self, frames: u64) {
        let start = Instant::now();
        eprintln!(
            "packet fuzz: seed {:#x}, {frames} frames (ENDPOINT_FUZZ_SEED, ENDPOINT_FUZZ_FRAMES)",
            self.seed
        );
        while self.n < frames {
            let (port, frame) = self.frame();
            self.step(port, &frame);
            if self.n.is_multiple_of(SYNC_EVERY) {
                self.sync();
                self.maybe_expire();
            }
            if self.n.is_multiple_of(PHASE_FRAMES) {
                self.phase = match self.phase {
                    Phase::Configured => Phase::Revoked,
                    Phase::Revoked => Phase::Configured,
                };
                self.rig.reconfigure(&self.phase.config());
                self.tally.phases += 1;
                // A change of config alone removes no connection.
                self.sync();
            }
        }
        self.sync();
        let elapsed = start.elapsed();
        self.check_counters(elapsed.as_secs_f64());
    }

    // -- running and judging -------------------------------------------------------

    /// Runs `frame` as if it arrived on `port`: the action and output length.
    fn run_frame(&mut self, port: usize, frame: &[u8]) -> (u32, usize) {
        let ifindex = self.ports[port].ifindex;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let result = loader::program(&mut self.rig.ebpf)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut self.out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            });
        match result {
            Ok(result) => (result.return_value, result.data_size_out as usize),
            Err(e) => panic!(
                "packet fuzz: BPF_PROG_RUN refused a frame: {e}\n  {}\n  interface {}\n  frame {}",
                self.reproduce(),
                self.ports[port].name,
                hex(frame)
            ),
        }
    }

    fn step(&mut self, port: usize, frame: &[u8]) {
        let allowed = self.allowed(port, frame);
        // The connection the frame may open, change or remove: its entry before and
        // after tells what happened to it.
        let key = self.touched(port, frame);
        let before = key.and_then(|key| self.flow_entry(&key));
        self.n += 1;
        let (action, len) = self.run_frame(port, frame);
        if self.recent.len() == 8 {
            self.recent.pop_front();
        }
        self.recent.push_back((port, frame.to_vec(), action));
        let out = self.out[..len].to_vec();
        let ran = Ran {
            port,
            frame,
            action,
            out: &out,
        };
        match action {
            XDP_DROP => self.tally.drop += 1,
            XDP_PASS => {
                if !allowed.pass {
                    self.fail(&ran, "handed to the kernel, which must not see it");
                }
                if out != frame {
                    self.fail(&ran, "handed to the kernel changed");
                }
                self.tally.pass += 1;
            }
            XDP_TX | XDP_REDIRECT => {}
            _ => self.fail(&ran, "an action the program never takes"),
        }
        match key {
            Some(key) => self.outcome(&ran, &allowed, key, before),
            None if ran.forwarded() => self.judge_forwarded(&ran, &allowed, false),
            None => {}
        }
    }

    /// What the model lets the program do with `f` arriving on `port`.
    fn allowed(&self, port: usize, f: &[u8]) -> Allowed {
        let p = self.ports[port];
        let consumer = p.network != 0;
        let mut allowed = Allowed {
            pass: !consumer && !self.for_a_nat_port(port, f),
            ..Allowed::default()
        };
        if f.len() >= 14 && f[12..14] == [8, 6] {
            allowed.arp = self.arp_answer(port, f);
            return allowed;
        }
        let Some(seg) = Tcp::of(f) else {
            return allowed;
        };
        // What anything forwarded must be: sent to this interface from a unicast MAC,
        // a right IPv4 checksum, TTL left, flags a connection can carry.
        if f[0..6] != p.mac || f[6] & 1 != 0 || !ip_checksum_ok(f) || seg.ttl < 2 {
            return allowed;
        }
        if !sane_flags(seg.flags) {
            return allowed;
        }
        if consumer {
            if seg.flags & (SYN | ACK) == SYN | ACK {
                return allowed;
            }
            let key = FlowKey {
                src_be: u32::from_ne_bytes(seg.src),
                dst_be: u32::from_ne_bytes(seg.dst),
                src_port_be: seg.sport.to_be(),
                dst_port_be: seg.dport.to_be(),
                scope: FlowKey::scope(p.network, PROTO_TCP),
            };
            if let Some(conn) = self.model.flows.get(&key) {
                match self.phase.revocation(conn.endpoint, conn.listener) {
                    Revocation::None => allowed.forward = Some((key, *conn, Way::ToTarget)),
                    // A SYN on a draining connection would open it again: refused.
                    Revocation::Drain if seg.flags & SYN == 0 => {
                        allowed.forward = Some((key, *conn, Way::ToTarget))
                    }
                    Revocation::Drain => {}
                    Revocation::Reset => {
                        allowed.removes = true;
                        allowed.reset = self.rst_answer(port, f);
                    }
                    Revocation::Closed => allowed.removes = true,
                }
            }
            if seg.flags & SYN != 0 {
                allowed.open = self.opens(p, f, &seg);
            }
        } else if port == PROV && seg.dst == NAT && (NAT_FIRST..=NAT_LAST).contains(&seg.dport) {
            // Targets answer; they never open anything towards a consumer.
            if seg.flags & SYN != 0 && seg.flags & ACK == 0 {
                return allowed;
            }
            let reply = FlowKey {
                src_be: u32::from_ne_bytes(seg.src),
                dst_be: u32::from_ne_bytes(seg.dst),
                src_port_be: seg.sport.to_be(),
                dst_port_be: seg.dport.to_be(),
                scope: FlowKey::scope(PROVIDER_NETWORK, PROTO_TCP),
            };
            if let Some(key) = self.model.replies.get(&reply) {
                let conn = self.model.flows[key];
                match self.phase.revocation(conn.endpoint, conn.listener) {
                    Revocation::Reset => {
                        allowed.removes = true;
                        allowed.reset = self.rst_answer(port, f);
                    }
                    // Only whether the endpoint is still there counts for a reply.
                    _ => allowed.forward = Some((*key, conn, Way::ToConsumer)),
                }
            }
        }
        allowed
    }

    /// The listener a SYN may open a connection on: an available endpoint of the
    /// interface's network, listening on the port, with a reachable target; a source
    /// that can be a client and that its security groups admit; a right TCP checksum.
    fn opens(&self, p: Port, f: &[u8], seg: &Tcp) -> Option<&'static Listener> {
        let listener = LISTENERS
            .iter()
            .find(|l| l.vpc == p.vpc && l.ip == seg.dst && l.port == seg.dport)?;
        let first = seg.src[0];
        let martian = first == 0
            || first == 127
            || first >= 224
            || seg.src == seg.dst
            || answered(p.vpc).contains(&seg.src);
        let admitted = listener.groups.is_none_or(|groups| {
            groups
                .iter()
                .any(|(prefix, len)| in_prefix(seg.src, *prefix, *len))
        });
        let revoked = self.phase.revocation(listener.endpoint, listener.port) != Revocation::None;
        let fits = seg.tot_len <= 1500;
        (listener.opens
            && !revoked
            && seg.flags & ACK == 0
            && !martian
            && admitted
            && fits
            && tcp_checksum_ok(f, 20, seg.tot_len))
        .then_some(listener)
    }

    /// Whether `f` is addressed to a NAT port where it arrived (or is ARP for the NAT
    /// address): the kernel must never see it.
    fn for_a_nat_port(&self, port: usize, f: &[u8]) -> bool {
        if port != PROV || f.len() < 34 {
            return false;
        }
        if f[12..14] == [8, 6] {
            return self.arp_answer(port, f).is_some();
        }
        if f[12..14] != [8, 0] || f[23] != 6 || f[30..34] != NAT {
            return false;
        }
        // TCP to the NAT address: only the node's own connections' (a port outside the
        // NAT range) may pass, and only whole.
        match Tcp::of(f) {
            Some(seg) => (NAT_FIRST..=NAT_LAST).contains(&seg.dport),
            None => true,
        }
    }

    /// The RST answering the segment `f` (RFC 9293 §3.10.7.1), back to its sender from
    /// the interface `port`: bare headers, from what the segment acknowledged, or
    /// acknowledging it.
    fn rst_answer(&self, port: usize, f: &[u8]) -> Option<Vec<u8>> {
        let seg = Tcp::of(f)?;
        if seg.flags & RST != 0 {
            return None;
        }
        let number = |at: usize| u32::from_be_bytes(f[at..at + 4].try_into().unwrap());
        let payload = seg.tot_len - 20 - usize::from(f[46] >> 4) * 4;
        let consumed =
            payload as u32 + u32::from(seg.flags & SYN != 0) + u32::from(seg.flags & FIN != 0);
        let (seq, ack, flags) = if seg.flags & ACK != 0 {
            (number(42), 0, RST)
        } else {
            (0, number(38).wrapping_add(consumed), RST | ACK)
        };
        let mut rst = Wire {
            mac_src: self.ports[port].mac,
            mac_dst: f[6..12].try_into().unwrap(),
            src: seg.dst,
            dst: seg.src,
            sport: seg.dport,
            dport: seg.sport,
            ttl: 64,
            seq,
            ack,
            flags,
            window: 0,
            options: Vec::new(),
            payload: Vec::new(),
        }
        .frame();
        // IPv4 id 0.
        rst[18..20].fill(0);
        fix_checksums(&mut rst);
        Some(rst)
    }

    /// The answer to an ARP request for an address the node answers for on `port`.
    fn arp_answer(&self, port: usize, f: &[u8]) -> Option<Vec<u8>> {
        let p = self.ports[port];
        if f.len() < 42 || f[12..14] != [8, 6] || f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] {
            return None;
        }
        let wanted: [u8; 4] = f[38..42].try_into().unwrap();
        let ours = if p.network != 0 {
            answered(p.vpc).contains(&wanted)
        } else {
            port == PROV && wanted == NAT
        };
        if !ours {
            return None;
        }
        let (sha, spa) = (&f[22..28], &f[28..32]);
        let mut reply = f.to_vec();
        reply[0..6].copy_from_slice(sha);
        reply[6..12].copy_from_slice(&p.mac);
        reply[20..22].copy_from_slice(&[0, 2]);
        reply[22..28].copy_from_slice(&p.mac);
        reply[28..32].copy_from_slice(&wanted);
        reply[32..38].copy_from_slice(sha);
        reply[38..42].copy_from_slice(spa);
        Some(reply)
    }

    /// A forwarded frame that opened no connection: an ARP answer, a segment of a
    /// known connection, or (`gone`: its connection went) the RST that cut it — exactly
    /// as the model expects it.
    fn judge_forwarded(&mut self, ran: &Ran, allowed: &Allowed, gone: bool) {
        if let Some(arp) = &allowed.arp {
            if ran.out != arp.as_slice() {
                self.fail(ran, &format!("a wrong ARP answer; expected {}", hex(arp)));
            }
            self.tally.arp += 1;
            return;
        }
        if gone {
            let Some(rst) = &allowed.reset else {
                self.fail(ran, "forwarded, but its connection went");
            };
            if ran.out != rst.as_slice() {
                self.fail(ran, &format!("not the expected RST; expected {}", hex(rst)));
            }
            self.tally.reset += 1;
            return;
        }
        let Some((key, conn, way)) = allowed.forward else {
            self.fail(ran, "forwarded, but the model refuses it");
        };
        self.check_translation(ran, &key, &conn, way);
        match way {
            Way::ToTarget => self.tally.forward += 1,
            Way::ToConsumer => self.tally.reply += 1,
        }
    }

    /// The output is the frame translated for `conn` going `way` and redirected: only
    /// addresses, ports, MACs, TTL and checksums changed, the IPv4 checksum right and the
    /// TCP one as right as it came in, the lengths kept and within the egress MTU.
    fn check_translation(&self, ran: &Ran, key: &FlowKey, conn: &Conn, way: Way) {
        let f = ran.frame;
        if ran.action != XDP_REDIRECT {
            self.fail(ran, "must leave through another interface (a redirect)");
        }
        let (mac_src, mac_dst, src, dst, sport, dport) = match way {
            Way::ToTarget => (
                self.ports[PROV].mac,
                target_mac(conn.target).expect("a target with a neighbour"),
                NAT,
                conn.target,
                conn.nat_port,
                conn.target_port,
            ),
            Way::ToConsumer => (
                self.ports[conn.port].mac,
                conn.client_mac,
                addr(key.dst_be),
                addr(key.src_be),
                u16::from_be(key.dst_port_be),
                u16::from_be(key.src_port_be),
            ),
        };
        let mut expected = f.to_vec();
        expected[0..6].copy_from_slice(&mac_dst);
        expected[6..12].copy_from_slice(&mac_src);
        expected[22] = f[22].wrapping_sub(1);
        expected[26..30].copy_from_slice(&src);
        expected[30..34].copy_from_slice(&dst);
        expected[34..36].copy_from_slice(&sport.to_be_bytes());
        expected[36..38].copy_from_slice(&dport.to_be_bytes());
        let checksums = [24, 25, 50, 51];
        let differs = ran.out.len() != expected.len()
            || ran
                .out
                .iter()
                .zip(&expected)
                .enumerate()
                .any(|(i, (a, b))| a != b && !checksums.contains(&i));
        if differs {
            self.fail(
                ran,
                &format!(
                    "not the expected translation ({way:?}); expected (checksums aside) {}",
                    hex(&expected)
                ),
            );
        }
        let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
        if !ip_checksum_ok(ran.out) {
            self.fail(ran, "a wrong IPv4 checksum leaves");
        }
        if tcp_checksum_ok(ran.out, 20, tot_len) != tcp_checksum_ok(f, 20, tot_len) {
            self.fail(ran, "the TCP checksum did not stay as right as it came in");
        }
        if tot_len > 1500 {
            self.fail(ran, "longer than the egress MTU");
        }
    }

    // -- SYNs: opening, reopening, removing ---------------------------------------

    /// The consumer-to-target key of the connection `f` may open (a consumer's SYN) or
    /// change (a segment of a known one, either way), read at the offsets the program
    /// reads them at.
    fn touched(&self, port: usize, f: &[u8]) -> Option<FlowKey> {
        let p = self.ports[port];
        if f.len() < 54 || f[12..14] != [8, 0] || f[23] != 6 {
            return None;
        }
        let key = |network| FlowKey {
            src_be: u32::from_ne_bytes(f[26..30].try_into().unwrap()),
            dst_be: u32::from_ne_bytes(f[30..34].try_into().unwrap()),
            src_port_be: u16::from_ne_bytes([f[34], f[35]]),
            dst_port_be: u16::from_ne_bytes([f[36], f[37]]),
            scope: FlowKey::scope(network, PROTO_TCP),
        };
        if p.network == 0 {
            return self.model.replies.get(&key(PROVIDER_NETWORK)).copied();
        }
        let key = key(p.network);
        (f[47] & SYN != 0 || self.model.flows.contains_key(&key)).then_some(key)
    }

    fn flow_entry(&self, key: &FlowKey) -> Option<Flow> {
        let flows = self
            .rig
            .pipeline
            .maps()
            .hash::<FlowKey, Flow>(name::FLOWS)
            .unwrap();
        flows.get(key, 0).ok()
    }

    /// A frame that may open, change or remove the connection at `key` ran: what it
    /// did to it must be one of what the model allows — nothing, a segment forwarded on
    /// it, a new one (or a closed one replaced) opened as the listener says, a closed
    /// one removed by a new SYN, or one its endpoint's revocation cuts removed.
    fn outcome(&mut self, ran: &Ran, allowed: &Allowed, key: FlowKey, before: Option<Flow>) {
        let after = self.flow_entry(&key);
        let Some(old) = self.model.flows.get(&key).copied() else {
            match after {
                Some(flow) => self.opened(ran, allowed, key, flow),
                None if ran.forwarded() => self.judge_forwarded(ran, allowed, false),
                None => {}
            }
            return;
        };
        // A new connection on the tuple, or the same one? `opened_ns` is taken from a
        // coarse clock (one tick is milliseconds, many frames here), so a connection
        // reopened within a tick has the old one's: a closed connection followed by one
        // that is not tells too.
        let renewed = match (before, after) {
            (Some(b), Some(a)) => {
                a.opened_ns != b.opened_ns || (tcp::closed(b.tcp) && !tcp::closed(a.tcp))
            }
            _ => true,
        };
        if after.is_some() && !renewed {
            if ran.forwarded() {
                self.judge_forwarded(ran, allowed, false);
            }
            return;
        }
        // The old connection went: a closed one may, for a consumer's new SYN (its NAT
        // port stays reserved if the target closed first: it holds the tuple in
        // TIME_WAIT), or one its endpoint's revocation cuts.
        let f = ran.frame;
        let new_syn = self.ports[ran.port].network != 0 && f[47] & (SYN | ACK) == SYN;
        let closed_by_syn = new_syn && before.is_some_and(|b| tcp::closed(b.tcp));
        if !closed_by_syn && !allowed.removes {
            self.fail(ran, "a connection went that nothing here may remove");
        }
        let keep_port =
            closed_by_syn && before.is_some_and(|b| b.tcp & tcp::TARGET_CLOSED_FIRST != 0);
        let old_reply = old.reply_key();
        self.model.remove(&key);
        let reply = self.flow_entry(&old_reply);
        let reused = after.is_some_and(|a| reply_key_of(&a) == old_reply);
        match reply {
            Some(r) if keep_port && r.tcp & tcp::RESERVED != 0 => {
                self.model.reserved.insert(old_reply);
            }
            None if !keep_port => {}
            Some(_) if !keep_port && reused => {}
            _ if keep_port => self.fail(
                ran,
                "the NAT port of a connection the target closed first was not kept",
            ),
            _ => self.fail(ran, "a removed connection left its reply entry behind"),
        }
        match after {
            Some(flow) => self.opened(ran, allowed, key, flow),
            None if ran.forwarded() => self.judge_forwarded(ran, allowed, true),
            None => {}
        }
    }

    /// The SYN opened connection `flow` at `key`: it must have been allowed to, and be
    /// forwarded as the new connection says, to one of the listener's targets from the
    /// NAT address and a NAT port no other connection holds.
    fn opened(&mut self, ran: &Ran, allowed: &Allowed, key: FlowKey, flow: Flow) {
        let f = ran.frame;
        let Some(listener) = allowed.open else {
            self.fail(ran, "a connection opened that the model refuses");
        };
        if !ran.forwarded() {
            self.fail(ran, "a SYN opened a connection but was not forwarded");
        }
        let target = (addr(flow.dst_be), u16::from_be(flow.dst_port_be));
        let nat_port = u16::from_be(flow.src_port_be);
        let slot = self.slots[listener.endpoint];
        let reply_key = reply_key_of(&flow);
        let problem = if addr(flow.src_be) != NAT {
            Some("not from the NAT address")
        } else if !listener.targets.contains(&target) {
            Some("to a target that is not the listener's")
        } else if !(NAT_FIRST..=NAT_LAST).contains(&nat_port) {
            Some("from a port outside the NAT ports")
        } else if flow.slot != slot || flow.network != key.network() {
            Some("counted for another endpoint or network")
        } else if self.model.replies.contains_key(&reply_key)
            || self.model.reserved.contains(&reply_key)
        {
            Some("on a NAT address, port and target another connection holds")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.fail(ran, &format!("a new connection {problem}: {flow:?}"));
        }
        let reply = self.flow_entry(&reply_key);
        let client_mac: [u8; 6] = f[6..12].try_into().unwrap();
        let way_back = reply.is_some_and(|r| {
            r.tcp & tcp::RESERVED == 0
                && (r.src_be, r.dst_be) == (key.dst_be, key.src_be)
                && (r.src_port_be, r.dst_port_be) == (key.dst_port_be, key.src_port_be)
                && r.network == key.network()
                && r.slot == slot
                && r.ifindex == self.ports[ran.port].ifindex
                && r.mac_dst == client_mac
        });
        if !way_back {
            self.fail(
                ran,
                &format!("a new connection's reply entry is not its way back: {reply:?}"),
            );
        }
        let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
        let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let payload = tot_len - 20 - usize::from(f[46] >> 4) * 4;
        let conn = Conn {
            port: ran.port,
            client_mac,
            target: target.0,
            target_port: target.1,
            nat_port,
            slot,
            endpoint: listener.endpoint,
            listener: listener.port,
            opened_ns: flow.opened_ns,
            client_next: seq.wrapping_add(1 + payload as u32),
            target_next: None,
        };
        self.check_translation(ran, &key, &conn, Way::ToTarget);
        self.model.insert(key, conn);
        self.tally.forward_new += 1;
    }

    // -- the whole table ------------------------------------------------------------

    /// Compares the flow table with the model: the same connections, both directions
    /// each, the reservations; and the usage counts with what the table holds.
    fn sync(&mut self) {
        self.tally.syncs += 1;
        let entries = self.rig.flows();
        let mut problems = Vec::new();
        let mut forward = BTreeMap::new();
        let mut replies = BTreeMap::new();
        for (key, flow) in entries {
            if key.network() == PROVIDER_NETWORK {
                replies.insert(key, flow);
            } else {
                forward.insert(key, flow);
            }
        }
        for (key, flow) in &forward {
            match self.model.flows.get(key) {
                None => problems.push(format!(
                    "a connection the model never saw opened: {key:?} {flow:?}"
                )),
                Some(conn) => {
                    let same = flow.opened_ns == conn.opened_ns
                        && reply_key_of(flow) == conn.reply_key()
                        && flow.slot == conn.slot;
                    if !same {
                        problems.push(format!(
                            "{key:?} is not the connection the model saw: {flow:?} vs {conn:?}"
                        ));
                    }
                    match replies.get(&conn.reply_key()) {
                        Some(reply) if reply.tcp & tcp::RESERVED == 0 => {}
                        other => problems.push(format!("{key:?} has no reply entry: {other:?}")),
                    }
                }
            }
        }
        for key in self.model.flows.keys() {
            if !forward.contains_key(key) {
                problems.push(format!(
                    "a connection went with no packet or expiry removing it: {key:?}"
                ));
            }
        }
        for (key, reply) in &replies {
            let owned = self
                .model
                .replies
                .get(key)
                .is_some_and(|k| forward.contains_key(k));
            let reserved = self.model.reserved.contains(key) && reply.tcp & tcp::RESERVED != 0;
            if !owned && !reserved {
                problems.push(format!(
                    "a reply entry no connection owns: {key:?} {reply:?}"
                ));
            }
        }
        for key in &self.model.reserved {
            if !replies.contains_key(key) {
                problems.push(format!(
                    "a NAT port reservation went with no expiry: {key:?}"
                ));
            }
        }
        problems.extend(self.usage_problems(&forward));
        if !problems.is_empty() {
            self.fail_table(&problems);
        }
    }

    /// The endpoints' and networks' counts of open and half-open connections against
    /// the table's.
    fn usage_problems(&self, forward: &BTreeMap<FlowKey, Flow>) -> Vec<String> {
        let maps = self.rig.pipeline.maps();
        let usage = maps.array::<Usage>(name::USAGE).unwrap();
        let network_usage = maps.array::<u64>(name::NETWORK_USAGE).unwrap();
        let mut problems = Vec::new();
        let held = |bit: u64, pick: &dyn Fn(&Flow) -> bool| {
            forward
                .values()
                .filter(|f| f.tcp & bit != 0 && pick(f))
                .count() as u64
        };
        let slots: BTreeSet<u32> = self.slots.values().copied().collect();
        for slot in slots {
            let used = usage.get(&slot, 0).unwrap();
            let counted = (
                held(tcp::ACTIVE, &|f| f.slot == slot),
                held(tcp::HALF_OPEN, &|f| f.slot == slot),
            );
            if (used.connections, used.half_open) != counted {
                problems.push(format!(
                    "endpoint slot {slot} counts (connections, half open) {:?}, the table holds {counted:?}",
                    (used.connections, used.half_open)
                ));
            }
        }
        for p in &self.ports[..2] {
            let used = network_usage.get(&p.network, 0).unwrap();
            let counted = held(tcp::HALF_OPEN, &|f| f.network == p.network);
            if used != counted {
                problems.push(format!(
                    "network {} counts {used} half-open connections, the table holds {counted}",
                    p.vpc
                ));
            }
        }
        problems
    }

    /// Sometimes runs a round of expiry as the agent does, ahead of the clock: what it
    /// removes goes whole (both directions), and nothing goes before its time.
    fn maybe_expire(&mut self) {
        let ahead = match self.rng.below(32) {
            0..8 => 0,
            8..12 => 12,
            12..14 => 70,
            14 => 400,
            _ => return,
        };
        let removed = self.rig.expire(ahead);
        self.tally.expired += removed as u64;
        let present: BTreeSet<FlowKey> = self.rig.flows().into_iter().map(|(k, _)| k).collect();
        let mut problems = Vec::new();
        if ahead == 0 && removed != 0 {
            problems.push(format!(
                "expiry at the current time removed {removed} connections"
            ));
        }
        let gone: Vec<FlowKey> = self
            .model
            .flows
            .keys()
            .filter(|k| !present.contains(k))
            .copied()
            .collect();
        for key in &gone {
            let conn = self.model.remove(key).unwrap();
            if present.contains(&conn.reply_key()) {
                problems.push(format!(
                    "expiry left half a connection: the reply entry of {key:?}"
                ));
            }
        }
        self.model.reserved.retain(|k| present.contains(k));
        if ahead == 0 && !gone.is_empty() {
            problems.push(format!("expiry at the current time removed {gone:?}"));
        }
        if !problems.is_empty() {
            self.fail_table(&problems);
        }
        self.sync();
    }

    /// Every frame counted once, under what it did; prints the summary.
    fn check_counters(&mut self, seconds: f64) {
        let counters = self.rig.counters();
        let total: u64 = counter::ALL.iter().map(|(c, _)| counters.packets(*c)).sum();
        let t = &self.tally;
        let forwarded = t.forward_new + t.forward + t.reply + t.arp + t.reset;
        let mut summary = format!(
            "packet fuzz: seed {:#x}: {} frames ({} mutated, {} random) in {seconds:.1} s \
             ({:.0}/s), {} table checks, {} config changes, {} connections expired: \
             forwarded {forwarded} (forward_new {}, forward {}, reply {}, arp_reply {}, \
             reset_sent {}), passed {}, dropped {}:",
            self.seed,
            self.n,
            t.mutated,
            t.random,
            self.n as f64 / seconds,
            t.syncs,
            t.phases,
            t.expired,
            t.forward_new,
            t.forward,
            t.reply,
            t.arp,
            t.reset,
            t.pass,
            t.drop,
        );
        for (c, name) in counter::ALL {
            let packets = counters.packets(*c);
            if counter::is_drop(*c) && packets != 0 {
                let _ = write!(summary, " {name} {packets}");
            }
        }
        println!("{summary}");
        let expect = [
            ("every frame", total, self.n),
            (
                "forward_new",
                counters.packets(counter::FORWARD_NEW),
                t.forward_new,
            ),
            ("forward", counters.packets(counter::FORWARD), t.forward),
            ("reply", counters.packets(counter::REPLY), t.reply),
            ("arp_reply", counters.packets(counter::ARP_REPLY), t.arp),
            ("pass", counters.packets(counter::PASS), t.pass),
            ("reset_sent", counters.packets(counter::RESET_SENT), t.reset),
        ];
        for (what, counted, seen) in expect {
            assert_eq!(
                counted, seen,
                "seed {:#x}: {what}: counted {counted}, seen {seen}",
                self.seed
            );
        }
        // The generator must reach every kind of outcome, or the run proves little (RSTs
        // need a revocation: the second phase).
        let outcomes = [
            ("forward_new", t.forward_new, 20_000),
            ("forward", t.forward, 20_000),
            ("reply", t.reply, 20_000),
            ("arp_reply", t.arp, 20_000),
            ("pass", t.pass, 20_000),
            ("reset_sent", t.reset, 2 * PHASE_FRAMES),
        ];
        for (what, n, after) in outcomes {
            assert!(
                n > 0 || self.n < after,
                "seed {:#x}: no frame was a {what}",
                self.seed
            );
        }
    }

    fn reproduce(&self) -> String {
        format!(
            "seed {:#x}, frame #{} (reproduce: ENDPOINT_FUZZ_SEED={:#x} ENDPOINT_FUZZ_FRAMES={} \
             cargo test -p endpoint-agent --test packets fuzz -- --nocapture)",
            self.seed, self.n, self.seed, self.n
        )
    }

    fn fail(&self, ran: &Ran, why: &str) -> ! {
        panic!(
            "packet fuzz: {why}\n  {}\n  interface {}\n  frame  {}\n  action {}\n  output {}",
            self.reproduce(),
            self.ports[ran.port].name,
            hex(ran.frame),
            ran.action,
            hex(ran.out)
        );
    }

    fn fail_table(&self, problems: &[String]) -> ! {
        let mut recent = String::new();
        for (port, frame, action) in &self.recent {
            let _ = write!(
                recent,
                "\n    {} action {action}: {}",
                self.ports[*port].name,
                hex(frame)
            );
        }
        panic!(
            "packet fuzz: the flow table is not what the model expects\n  {}\n  {}\n  last frames:{recent}",
            self.reproduce(),
            problems.join("\n  ")
        );
    }

    // -- frames ---------------------------------------------------------------------

    /// The next frame and the interface it arrives on: mostly a valid frame of some
    /// kind, half of those mutated; a few random ones.
    fn frame(&mut self) -> (usize, Vec<u8>) {
        let (mut port, mut frame) = match self.rng.below(100) {
            0..25 => self.consumer_syn(),
            25..50 => self.consumer_segment(),
            50..72 => self.target_segment(),
            72..82 => self.arp_request(),
            82..92 => self.node_traffic(),
            92..95 => self.stray_reply(),
            _ => {
                self.tally.random += 1;
                return self.junk();
            }
        };
        if self.rng.chance(50) {
            self.tally.mutated += 1;
            self.mutate(&mut frame);
            if self.rng.chance(5) {
                port = self.rng.below(4);
            }
        }
        frame.truncate(MAX_FRAME);
        (port, frame)
    }

    fn client(&mut self) -> [u8; 4] {
        match self.rng.below(20) {
            0 => [
                self.rng.pick(&[0, 127, 224, 240, 255, 10]),
                self.rng.u8(),
                0,
                1,
            ],
            1 => self.rng.pick(&[ENDPOINT, STRICT, GUARDED, PENDING, NAT]),
            2 => self.rng.u32().to_be_bytes(),
            _ => self.rng.pick(&[
                CLIENT,
                [10, 0, 0, 11],
                [10, 0, 0, 12],
                [10, 0, 0, 200],
                [10, 0, 1, 1],
            ]),
        }
    }

    fn tcp_options(&mut self) -> Vec<u8> {
        match self.rng.below(8) {
            0..3 => Vec::new(),
            3 => vec![2, 4, 5, 0xb4],
            4 => vec![1, 3, 3, self.rng.u8() % 16],
            5 => {
                let scale = self.rng.u8() % 16;
                let mut o = vec![2, 4, 5, 0xb4, 4, 2, 8, 10];
                o.extend(self.rng.u32().to_be_bytes());
                o.extend([0, 0, 0, 0, 1, 3, 3, scale]);
                o
            }
            _ => {
                let n = 4 * (1 + self.rng.below(10));
                let mut o = self.rng.bytes(n);
                if self.rng.chance(50) {
                    let at = 4 * self.rng.below(n / 4);
                    o[at..at + 4].copy_from_slice(&[1, 3, 3, self.rng.u8()]);
                }
                o
            }
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        match self.rng.below(10) {
            0..5 => Vec::new(),
            5..9 => {
                let n = 1 + self.rng.below(64);
                self.rng.bytes(n)
            }
            _ => {
                let n = self.rng.below(1400);
                self.rng.bytes(n)
            }
        }
    }

    /// A consumer's SYN to an endpoint listener (sometimes another address or port),
    /// from a few clients and source ports, so that tuples meet again.
    fn consumer_syn(&mut self) -> (usize, Vec<u8>) {
        let listener = &LISTENERS[self.rng.below(LISTENERS.len())];
        let mut port = if listener.vpc == "vpc-a" {
            CONS_A
        } else {
            CONS_B
        };
        if self.rng.chance(10) {
            port = CONS_A + CONS_B - port;
        }
        let dst = if self.rng.chance(90) {
            listener.ip
        } else {
            self.rng
                .pick(&[NODE, NAT, [10, 0, 0, 1], [10, 0, 0, 99], T0])
        };
        let dport = if self.rng.chance(90) {
            listener.port
        } else {
            self.rng.pick_or(&[22, 443, 80, 8080, 0], Rng::u16)
        };
        let sport = if self.rng.chance(80) {
            40000 + self.rng.below(32) as u16
        } else {
            self.rng.u16()
        };
        let options = self.tcp_options();
        let payload = if self.rng.chance(10) {
            self.payload()
        } else {
            Vec::new()
        };
        let wire = Wire {
            mac_src: if self.rng.chance(90) {
                CLIENT_MAC
            } else {
                [2, 0, 0, 0, 1, self.rng.u8()]
            },
            mac_dst: self.ports[port].mac,
            src: self.client(),
            dst,
            sport,
            dport,
            ttl: self.rng.pick(&[64, 64, 64, 2, 255]),
            seq: self.rng.u32(),
            ack: 0,
            flags: SYN,
            window: self.rng.u16(),
            options,
            payload,
        };
        (port, wire.frame())
    }

    /// A known connection, picked at random, with its key.
    fn known(&mut self) -> Option<(FlowKey, Conn)> {
        if self.model.flows.is_empty() {
            return None;
        }
        let i = self.rng.below(self.model.flows.len());
        self.model.flows.iter().nth(i).map(|(k, c)| (*k, *c))
    }

    /// A client's segment on a known connection: the handshake's last ACK, data, a FIN
    /// or a RST, near where the connection is.
    fn consumer_segment(&mut self) -> (usize, Vec<u8>) {
        let Some((key, conn)) = self.known() else {
            return self.consumer_syn();
        };
        let target_next = conn.target_next.unwrap_or_else(|| self.rng.u32());
        let mut seq = conn.client_next;
        let mut ack = target_next;
        let (flags, payload) = match self.rng.below(10) {
            0..3 => (ACK, Vec::new()),
            3..6 => (ACK | PSH, self.payload()),
            6 => (FIN | ACK, Vec::new()),
            7 => (RST, Vec::new()),
            8 => (RST | ACK, Vec::new()),
            _ => (SYN, Vec::new()),
        };
        if self.rng.chance(20) {
            seq = seq.wrapping_add(self.rng.pick_or(&[1, 100, 70_000, 1 << 31], Rng::u32));
        }
        if self.rng.chance(10) {
            ack = self.rng.u32();
        }
        let advance = payload.len() as u32 + u32::from(flags & FIN != 0);
        if let Some(c) = self.model.flows.get_mut(&key) {
            c.client_next = c.client_next.wrapping_add(advance);
        }
        let wire = Wire {
            mac_src: conn.client_mac,
            mac_dst: self.ports[conn.port].mac,
            src: addr(key.src_be),
            dst: addr(key.dst_be),
            sport: u16::from_be(key.src_port_be),
            dport: u16::from_be(key.dst_port_be),
            ttl: 64,
            seq,
            ack: if flags & ACK != 0 { ack } else { 0 },
            flags,
            window: self.rng.pick(&[0, 512, 4096, 65535]),
            options: Vec::new(),
            payload,
        };
        (conn.port, wire.frame())
    }

    /// A target's segment on a known connection: its SYN-ACK, data, a FIN or a RST
    /// (now and then on the other provider interface).
    fn target_segment(&mut self) -> (usize, Vec<u8>) {
        let Some((key, conn)) = self.known() else {
            return self.stray_reply();
        };
        let client_isn_next = conn.client_next;
        let (flags, payload) = match (conn.target_next, self.rng.below(10)) {
            (None, 0..7) | (_, 0) => (SYN | ACK, Vec::new()),
            (_, 1..4) => (ACK, Vec::new()),
            (_, 4..7) => (ACK | PSH, self.payload()),
            (_, 7) => (FIN | ACK, Vec::new()),
            (_, 8) => (RST, Vec::new()),
            _ => (RST | ACK, Vec::new()),
        };
        let seq = if flags & SYN != 0 {
            let isn = self.rng.u32();
            if let Some(c) = self.model.flows.get_mut(&key) {
                c.target_next = Some(isn.wrapping_add(1));
            }
            isn
        } else {
            let next = conn.target_next.unwrap_or(0);
            let advance = payload.len() as u32 + u32::from(flags & FIN != 0);
            if let Some(c) = self.model.flows.get_mut(&key) {
                c.target_next = Some(next.wrapping_add(advance));
            }
            next
        };
        let port = if self.rng.chance(5) { PROV2 } else { PROV };
        let wire = Wire {
            mac_src: target_mac(conn.target).unwrap(),
            mac_dst: self.ports[port].mac,
            src: conn.target,
            dst: NAT,
            sport: conn.target_port,
            dport: conn.nat_port,
            ttl: 64,
            seq,
            ack: client_isn_next,
            flags,
            window: self.rng.pick(&[0, 1024, 29200, 65535]),
            options: if flags & SYN != 0 {
                self.tcp_options()
            } else {
                Vec::new()
            },
            payload,
        };
        (port, wire.frame())
    }

    /// A target's segment to a NAT port no connection (or a random one) holds.
    fn stray_reply(&mut self) -> (usize, Vec<u8>) {
        let (target, target_port) = self.rng.pick(&[(T0, 8080), (T1, 8080), (T0, 8443)]);
        let port = if self.rng.chance(80) { PROV } else { PROV2 };
        let wire = Wire {
            mac_src: target_mac(target).unwrap(),
            mac_dst: self.ports[port].mac,
            src: target,
            dst: NAT,
            sport: target_port,
            dport: NAT_FIRST + self.rng.below(usize::from(NAT_LAST - NAT_FIRST) + 1) as u16,
            ttl: 64,
            seq: self.rng.u32(),
            ack: self.rng.u32(),
            flags: self.rng.pick(&[SYN | ACK, ACK, RST, FIN | ACK, SYN]),
            window: 1024,
            options: Vec::new(),
            payload: Vec::new(),
        };
        (port, wire.frame())
    }

    /// An ARP request on any interface, for an address of ours or not.
    fn arp_request(&mut self) -> (usize, Vec<u8>) {
        let port = self.rng.below(4);
        let wanted = self.rng.pick(&[
            ENDPOINT,
            PENDING,
            NO_NEIGHBOUR,
            NO_ROUTE,
            GUARDED,
            STRICT,
            NAT,
            NODE,
            T0,
            [10, 0, 0, 1],
        ]);
        let (mac, ip) = if self.ports[port].network != 0 {
            (CLIENT_MAC, self.client())
        } else {
            (TARGETS[0].1, T0)
        };
        let mut frame = arp_request(mac, ip, wanted);
        if self.rng.chance(30) {
            frame[0..6].copy_from_slice(&self.ports[port].mac);
        }
        if self.rng.chance(20) {
            frame.extend(vec![0; 18]);
        }
        (port, frame)
    }

    /// What reaches a provider interface that is not a reply: the node's own traffic
    /// (TCP to its address, or to the NAT address outside the NAT ports), ICMP, UDP,
    /// IPv6.
    fn node_traffic(&mut self) -> (usize, Vec<u8>) {
        let port = if self.rng.chance(70) { PROV } else { PROV2 };
        let macs = (TARGETS[0].1, self.ports[port].mac);
        let frame = match self.rng.below(6) {
            0..3 => Wire {
                mac_src: macs.0,
                mac_dst: macs.1,
                src: T0,
                dst: self.rng.pick(&[NODE, NODE, NAT]),
                sport: self.rng.pick_or(&[8080, 22], Rng::u16),
                dport: self
                    .rng
                    .pick_or(&[22, 45000, 32768, NAT_LAST + 1, NAT_FIRST - 1], Rng::u16),
                ttl: 64,
                seq: self.rng.u32(),
                ack: self.rng.u32(),
                flags: self
                    .rng
                    .pick(&[SYN, ACK, SYN | ACK, FIN | ACK, RST, ACK | PSH]),
                window: 1024,
                options: Vec::new(),
                payload: self.payload(),
            }
            .frame(),
            3 => ipv4_frame(
                macs,
                T0,
                self.rng.pick(&[NODE, NAT]),
                1,
                &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
            ),
            4 => ipv4_frame(
                macs,
                T0,
                self.rng.pick(&[NODE, NAT]),
                17,
                &[0x13, 0x88, 0, 53, 0, 8, 0, 0],
            ),
            _ => {
                let mut f = macs.1.to_vec();
                f.extend(macs.0);
                f.extend([0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
                f.extend(self.rng.bytes(32 + 20));
                f
            }
        };
        (port, frame)
    }

    /// Random bytes: bare, or after an Ethernet header to one of the interfaces.
    fn junk(&mut self) -> (usize, Vec<u8>) {
        let port = self.rng.below(4);
        let n = 14 + self.rng.below(120);
        let mut f = self.rng.bytes(n);
        if self.rng.chance(60) {
            f[0..6].copy_from_slice(&self.ports[port].mac);
            let ether_type = self.rng.pick(&[[8, 0], [8, 6], [0x86, 0xdd]]);
            f[12..14].copy_from_slice(&ether_type);
        }
        if self.rng.chance(30) && f.len() >= 34 {
            f[14] = 0x45;
            f[23] = 6;
            fix_checksums(&mut f);
        }
        (port, f)
    }

    /// One to four mutations: bits, bytes, lengths, header fields, options; then the
    /// checksums are made right again more often than not, so that the mutation is
    /// judged past them.
    fn mutate(&mut self, f: &mut Vec<u8>) {
        for _ in 0..1 + self.rng.below(4) {
            let len = f.len();
            match self.rng.below(21) {
                0 => {
                    let at = self.rng.below(len);
                    f[at] ^= 1 << self.rng.below(8);
                }
                1 | 2 => {
                    let at = self.rng.below(len.min(66));
                    f[at] ^= 1 << self.rng.below(8);
                }
                3 => {
                    let at = self.rng.below(len);
                    f[at] = self.rng.u8();
                }
                4 => {
                    let keep = 14 + self.rng.below(len - 13);
                    f.truncate(keep);
                }
                5 => {
                    let n = 1 + self.rng.below(64);
                    f.extend(self.rng.bytes(n));
                }
                6 if len > 14 => f[14] = (f[14] & 0xf0) | self.rng.u8() & 0xf,
                7 if len > 14 => f[14] = (self.rng.u8() << 4) | (f[14] & 0xf),
                8 if len > 21 => {
                    let frags = self
                        .rng
                        .pick_or(&[0x2000u16, 0x0001, 0x4000, 0x6000, 0x1fff], Rng::u16);
                    f[20..22].copy_from_slice(&frags.to_be_bytes());
                }
                9 if len > 17 => {
                    let tot_len = u16::from_be_bytes([f[16], f[17]]);
                    let new = match self.rng.below(4) {
                        0 => self.rng.u16(),
                        1 => tot_len
                            .wrapping_add(self.rng.below(9) as u16)
                            .wrapping_sub(4),
                        2 => (len - 14) as u16,
                        _ => self.rng.pick(&[0, 19, 20, 39, 40, 41]),
                    };
                    f[16..18].copy_from_slice(&new.to_be_bytes());
                }
                10 if len > 22 => f[22] = self.rng.pick_or(&[0, 1, 2, 255], Rng::u8),
                11 if len > 23 => f[23] = self.rng.pick_or(&[17, 1, 0, 6], Rng::u8),
                12 if len >= 34 => {
                    let interesting = [
                        CLIENT,
                        ENDPOINT,
                        PENDING,
                        GUARDED,
                        STRICT,
                        NO_ROUTE,
                        NAT,
                        NODE,
                        T0,
                        T1,
                        [0; 4],
                        [127, 0, 0, 1],
                        [224, 0, 0, 1],
                        [255; 4],
                        self.rng.u32().to_be_bytes(),
                    ];
                    let at = self.rng.pick(&[26, 30]);
                    f[at..at + 4].copy_from_slice(&self.rng.pick(&interesting));
                }
                13 if len >= 38 => {
                    let interesting = [
                        80,
                        443,
                        22,
                        8080,
                        8443,
                        NAT_FIRST,
                        NAT_LAST,
                        NAT_LAST + 1,
                        NAT_FIRST - 1,
                        0,
                        65535,
                        40000,
                        self.rng.u16(),
                    ];
                    let at = self.rng.pick(&[34, 36]);
                    f[at..at + 2].copy_from_slice(&self.rng.pick(&interesting).to_be_bytes());
                }
                14 if len > 47 => {
                    f[47] = self.rng.pick_or(
                        &[
                            SYN,
                            ACK,
                            FIN,
                            RST,
                            SYN | ACK,
                            SYN | FIN,
                            SYN | RST,
                            FIN | RST,
                            FIN | ACK,
                            RST | ACK,
                            0,
                            PSH,
                            0xff,
                        ],
                        Rng::u8,
                    );
                }
                15 if len > 46 => {
                    if self.rng.chance(50) {
                        f[46] = (self.rng.u8() << 4) | (f[46] & 0xf);
                    } else {
                        self.insert_tcp_options(f);
                    }
                }
                16 if len >= 34 => self.insert_ip_options(f),
                17 if len >= 52 => {
                    let at = self.rng.pick(&[24, 50]);
                    f[at + 1] = f[at + 1].wrapping_add(self.rng.pick(&[1, 255]));
                }
                18 => {
                    let own = self.ports[self.rng.below(4)].mac;
                    let mac =
                        self.rng
                            .pick(&[[0xff; 6], [1, 0, 0x5e, 0, 0, 1], [2, 9, 9, 9, 9, 9], own]);
                    let at = self.rng.pick(&[0, 6]);
                    f[at..at + 6].copy_from_slice(&mac);
                }
                19 => {
                    let ether_type = self
                        .rng
                        .pick_or(&[[8, 0], [8, 6], [0x86, 0xdd], [0x81, 0]], |r| {
                            [r.u8(), r.u8()]
                        });
                    f[12..14].copy_from_slice(&ether_type);
                }
                20 if len >= 42 && f[12..14] == [8, 6] => {
                    let at = self.rng.pick(&[14, 16, 18, 19, 20, 38]);
                    f[at + 1] = f[at + 1].wrapping_add(self.rng.pick(&[1, 255]));
                }
                _ => {}
            }
        }
        if self.rng.chance(60) {
            fix_checksums(f);
        }
    }

    /// TCP options of 4 to 40 bytes after the 20-byte TCP header, lengths moved.
    fn insert_tcp_options(&mut self, f: &mut Vec<u8>) {
        let options = match self.tcp_options() {
            o if o.is_empty() => vec![1, 1, 1, 0],
            o => o,
        };
        let doff = usize::from(f.get(46).copied().unwrap_or(0) >> 4);
        if f.len() < 54 || doff < 5 || doff * 4 + options.len() > 60 {
            return;
        }
        let at = 34 + usize::from(f[46] >> 4) * 4;
        if at > f.len() {
            return;
        }
        let n = options.len();
        f.splice(at..at, options);
        f[46] += ((n / 4) as u8) << 4;
        let tot_len = u16::from_be_bytes([f[16], f[17]]).wrapping_add(n as u16);
        f[16..18].copy_from_slice(&tot_len.to_be_bytes());
    }

    /// IPv4 options of 4 to 40 bytes, IHL and length moved.
    fn insert_ip_options(&mut self, f: &mut Vec<u8>) {
        let words = 1 + self.rng.below(10);
        let mut options = if self.rng.chance(50) {
            vec![1; 4 * words]
        } else {
            self.rng.bytes(4 * words)
        };
        options[4 * words - 1] = 0;
        f.splice(34..34, options);
        f[14] = (f[14] & 0xf0) | (5 + words as u8);
        let tot_len = u16::from_be_bytes([f[16], f[17]]).wrapping_add(4 * words as u16);
        f[16..18].copy_from_slice(&tot_len.to_be_bytes());
    }
}
