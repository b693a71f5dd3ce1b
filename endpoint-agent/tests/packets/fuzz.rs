//! Fuzz: random frames, and frames mutated from valid ones of every kind the program
//! handles, through the real program (BPF_PROG_RUN), each judged against a model written
//! here from the README's rules — not from the program:
//!
//! - nothing is forwarded (XDP_TX, XDP_REDIRECT) that the model refuses, and what is
//!   forwarded is exactly what the model expects: the translation of a connection it
//!   knows (TCP or UDP), a new connection on a listener that may open one (to one of its
//!   targets, from the NAT address and a NAT port no other connection holds), the ARP
//!   answer, the RST that answers a segment of a connection its endpoint's revocation
//!   cuts, the node's own ICMP answers (time exceeded where a packet it would forward
//!   has no TTL left, fragmentation needed where one with DF set does not fit the way
//!   out, echo replies from endpoints that admit the source), or a provider's ICMP error
//!   about a known connection translated back to its consumer; a SYN's or SYN-ACK's MSS
//!   lowered to what the MTUs allow, and nothing else of it changed;
//! - every forwarded frame has a correct IPv4 checksum and keeps its TCP, UDP or ICMP
//!   checksums right (computed from scratch here; one that came in wrong must leave
//!   wrong: no translation launders it; a UDP datagram without one keeps none), and its
//!   lengths;
//! - on a consumer interface nothing is handed to the kernel, and on a provider one
//!   nothing for a NAT port or ICMP to a NAT address is, and what is handed over is
//!   untouched;
//! - the flow table holds exactly the connections the model saw opened (both
//!   directions, the NAT port reservations of those closed by the target), a
//!   connection goes only when a new SYN replaces it closed, its endpoint's
//!   revocation cuts it, or expiry takes it (whole), an ICMP answer changes nothing of
//!   its connection but what the steps before it may, the endpoints' and networks'
//!   usage counts match what the table holds (a UDP flow is never half-open), and every
//!   frame is counted once, under what it did (ICMP answers over the budget under
//!   `drop_icmp_budget`);
//! - DNS queries to each consumer network's resolver address (well-formed and mutated:
//!   names the network has, has not, or that are not ours, every record type and class,
//!   EDNS, mixed case, pointers, cut short, wrong counts, responses, other opcodes) get
//!   exactly the outcome the model gives them from the README's DNS rules: the answer
//!   (its rcode, AA, counts, echoed ID and question, the records — A records the name's
//!   addresses for that network, the asking interface's zone first, SOA and NS, the SOA
//!   of negative answers owned by the zone apex, our OPT) in a frame sent back with
//!   addresses and ports swapped, lengths and checksums right; or the drop under the
//!   counter the model names (`drop_dns` for what cannot be answered, the verify steps'
//!   counters before it, `drop_not_endpoint` for DNS to other addresses, the kernel on a
//!   provider interface); the node's and each network's DNS counters add up.
//!
//! Every 25,000 frames the config changes, between the endpoints as configured and
//! three of them revoked (drain, reset, security groups narrowed) with a small ICMP
//! budget, so that revocations meet established connections and the budget runs out.
//! The revocations take the revoked endpoints' names away, and cons-a's clients move
//! out of their zone, so that DNS answers follow the config too.
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
    counter::{self, Count},
    maps::{
        Addr, DnsSettings, FAMILY_IPV4, Flow, FlowKey, PROTO_TCP, PROTO_UDP, PROVIDER_NETWORK,
        Usage, dns_counter, name, tcp,
    },
};

use crate::rig::*;

/// The NAT ports of the fuzzed node: few, so that running out of them is reached.
const NAT_FIRST: u16 = 20000;
const NAT_LAST: u16 = 20255;
const XDP_TX: u32 = 3;
const PSH: u8 = 0x08;
/// The MTU of every link of the rig (checked at the start): the egress MTU of every
/// packet the node forwards.
const MTU: usize = 1500;
/// The longest frame made: longer than the links' MTU, as from a link with a larger one,
/// so that packets too big for the way out arrive too.
const MAX_FRAME: usize = 14 + MTU + 128;
/// Don't fragment, in byte 20 of a frame (the IPv4 flags).
const DF: u8 = 0x40;
/// ICMP types.
const ECHO_REPLY: u8 = 0;
const UNREACHABLE: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;
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
    /// `guarded`'s port 80 closed by its security groups (its connections are cut); and
    /// an ICMP budget small enough to run out.
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
            )
            // DNS: cons-a's clients in z2, private names (`orders`' in both networks,
            // `strict`'s in vpc-a only), a multi-zone endpoint, each network's resolver.
            .replace(CONS_A_PLAIN, CONS_A_IN_Z2)
            .replace(
                "  - name: orders\n",
                "  - name: orders\n    private_dns_name: Orders.Corp.Example.\n",
            )
            .replace(
                "  - name: strict\n",
                "  - name: strict\n    private_dns_name: secure.example.com\n",
            )
            .replace(
                "{ id: b, service: orders,",
                "{ id: b, private_dns: true, service: orders,",
            )
            .replace(
                "{ id: strict, service: strict,",
                "{ id: strict, private_dns: true, service: strict,",
            )
            + DNS_CONFIG;
        match self {
            Phase::Configured => configured,
            Phase::Revoked => configured
                .replace(CONS_A_IN_Z2, CONS_A_PLAIN)
                .replace(
                    "limits: { half_open_per_network: 100 }",
                    "limits: { half_open_per_network: 100, icmp_per_second: 5 }",
                )
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

    /// Its index in tables kept per phase.
    fn index(self) -> usize {
        match self {
            Phase::Configured => 0,
            Phase::Revoked => 1,
        }
    }

    /// The zone cons-a's (`port`'s) clients are in: z2 as configured, none once revoked
    /// (cons-b's: none).
    fn client_zone(self, port: usize) -> Option<&'static str> {
        (self == Phase::Configured && port == CONS_A).then_some("z2")
    }

    /// Whether an endpoint that is `available` as configured still is (its names are
    /// there).
    fn has(self, available: Avail) -> bool {
        match available {
            Avail::Always => true,
            Avail::Configured => self == Phase::Configured,
            Avail::Never => false,
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
            revoked.matches("cidr").count(),
            revoked.matches("icmp_per_second").count(),
        ),
        (4, 1, 1),
        "{revoked}"
    );
    assert_eq!(
        (
            configured.matches("private_dns").count(),
            configured.matches(CONS_A_IN_Z2).count(),
            revoked.matches(CONS_A_IN_Z2).count(),
        ),
        (5, 1, 0),
        "{configured}"
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
    /// The action that sends a frame back out of it: a redirect on veth (as the agent
    /// configures it), XDP_TX elsewhere.
    bounce: u32,
    /// Its MTU: the next-hop MTU of a packet too big to leave by it.
    mtu: u16,
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
    proto: u8,
    /// Whether its endpoint is available (in the configured phase).
    available: bool,
    /// How far the route lookup towards its targets gets (the rig has neighbours for
    /// 172.16.0.10 and .11 only).
    reach: Reach,
    targets: &'static [([u8; 4], u16)],
    /// Security groups on this port: sources under these prefixes (None: anyone).
    groups: Option<&'static [([u8; 4], u8)]>,
}

/// How far a new connection's route lookup gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// To the target's MAC: the connection opens.
    Neighbour,
    /// A route, and so its MTU, but no neighbour.
    NoNeighbour,
    /// No route.
    NoRoute,
}

const T0: [u8; 4] = TARGETS[0].0;
const T1: [u8; 4] = TARGETS[1].0;
const ORDERS: &[([u8; 4], u16)] = &[(T0, 8080), (T1, 8080)];
const STRICT_80: &[([u8; 4], u16)] = &[(T0, 8080)];
const STRICT_443: &[([u8; 4], u16)] = &[(T0, 8443)];
const DNS_TCP: &[([u8; 4], u16)] = &[(T0, 5300)];
const DNS_UDP: &[([u8; 4], u16)] = &[(T1, 5353)];

/// A TCP listener on port 80, available, reaching its targets, no security groups.
const fn web(
    endpoint: &'static str,
    vpc: &'static str,
    ip: [u8; 4],
    targets: &'static [([u8; 4], u16)],
) -> Listener {
    Listener {
        endpoint,
        vpc,
        ip,
        port: 80,
        proto: PROTO_TCP,
        available: true,
        reach: Reach::Neighbour,
        targets,
        groups: None,
    }
}

const LISTENERS: &[Listener] = &[
    web("a", "vpc-a", ENDPOINT, ORDERS),
    web("b", "vpc-b", ENDPOINT, ORDERS),
    Listener {
        available: false,
        ..web("pending", "vpc-a", PENDING, ORDERS)
    },
    Listener {
        available: false,
        ..web("rejected", "vpc-b", PENDING, ORDERS)
    },
    Listener {
        reach: Reach::NoNeighbour,
        ..web("unresolved", "vpc-a", NO_NEIGHBOUR, &[])
    },
    Listener {
        reach: Reach::NoRoute,
        ..web("unrouted", "vpc-a", NO_ROUTE, &[])
    },
    Listener {
        // 10.0.0.0/28 has port 80 (and 443, being inside the /24 too).
        groups: Some(&[([10, 0, 0, 0], 28)]),
        ..web("guarded", "vpc-b", GUARDED, STRICT_80)
    },
    Listener {
        port: 443,
        groups: Some(&[([10, 0, 0, 0], 24)]),
        ..web("guarded", "vpc-b", GUARDED, STRICT_443)
    },
    web("strict", "vpc-a", STRICT, STRICT_80),
    Listener {
        port: 443,
        ..web("strict", "vpc-a", STRICT, STRICT_443)
    },
    Listener {
        port: 53,
        ..web("dns-a", "vpc-a", DNS, DNS_TCP)
    },
    Listener {
        port: 53,
        proto: PROTO_UDP,
        ..web("dns-a", "vpc-a", DNS, DNS_UDP)
    },
    Listener {
        port: 53,
        ..web("dns-b", "vpc-b", DNS, DNS_TCP)
    },
    Listener {
        port: 53,
        proto: PROTO_UDP,
        ..web("dns-b", "vpc-b", DNS, DNS_UDP)
    },
    // One address per zone.
    web("multi", "vpc-a", MULTI[0], ORDERS),
    web("multi", "vpc-a", MULTI[1], ORDERS),
    web("multi", "vpc-a", MULTI[2], ORDERS),
];

/// The addresses the node answers for in a consumer network: endpoints that carry
/// traffic (never-accepted requests claim none), and the network's resolver address.
fn answered(vpc: &str) -> &'static [[u8; 4]] {
    match vpc {
        "vpc-a" => &[
            ENDPOINT,
            NO_NEIGHBOUR,
            NO_ROUTE,
            STRICT,
            DNS,
            MULTI[0],
            MULTI[1],
            MULTI[2],
            RESOLVER_A,
        ],
        "vpc-b" => &[ENDPOINT, GUARDED, DNS, RESOLVER_B],
        _ => &[],
    }
}

/// A source that cannot be a client in `vpc` (of `dst` there): unspecified, loopback,
/// multicast, broadcast, reserved, the destination itself, or an address the node
/// answers for there (replies would go to it).
fn martian(vpc: &str, src: [u8; 4], dst: [u8; 4]) -> bool {
    never_a_client(src, dst) || answered(vpc).contains(&src)
}

/// A source that can be no client at all: unspecified, loopback, multicast, broadcast,
/// reserved or the destination itself (a DNS query from another of the node's addresses
/// is answered: the answer goes to the frame's sender alone).
fn never_a_client(src: [u8; 4], dst: [u8; 4]) -> bool {
    let first = src[0];
    first == 0 || first == 127 || first >= 224 || src == dst
}

fn target_mac(ip: [u8; 4]) -> Option<[u8; 6]> {
    TARGETS.iter().find(|(t, _)| *t == ip).map(|(_, mac)| *mac)
}

fn in_prefix(addr: [u8; 4], prefix: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(prefix) & mask
}

// ---------------------------------------------------------------------------------
// DNS, as the README's "DNS names" section says, for the config written out by hand.

/// What the fuzzed config adds for DNS: a multi-zone endpoint (its private name
/// enabled) and the `dns` section, each network's resolver at an address of its own.
const DNS_CONFIG: &str = "  - id: multi
    service: orders
    principal: p
    consumer_network: vpc-a
    private_dns: true
    addresses:
      - { zone: z1, ip: 10.0.0.110 }
      - { zone: z2, ip: 10.0.0.111 }
      - { zone: z3, ip: 10.0.0.112 }
dns:
  domain: endpoints.internal
  ttl_seconds: 45
  resolvers:
    - { consumer_network: vpc-a, ip: 10.0.0.2 }
    - { consumer_network: vpc-b, ip: 10.0.0.3 }
";
const CONS_A_PLAIN: &str = "{ name: cons-a, role: consumer, consumer_network: vpc-a }";
const CONS_A_IN_Z2: &str = "{ name: cons-a, role: consumer, consumer_network: vpc-a, zone: z2 }";
const DOMAIN: &str = "endpoints.internal";
const DNS_TTL: u32 = 45;
const RESOLVER_A: [u8; 4] = [10, 0, 0, 2];
const RESOLVER_B: [u8; 4] = [10, 0, 0, 3];
/// The `multi` endpoint's addresses, in z1, z2, z3.
const MULTI: [[u8; 4]; 3] = [[10, 0, 0, 110], [10, 0, 0, 111], [10, 0, 0, 112]];
/// Of the frames made, how many in a hundred are DNS.
const DNS_PERCENT: usize = 8;

/// Record types and classes, response codes and header bits.
mod wire {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
    pub const IN: u16 = 1;
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    /// In the header's third byte.
    pub const QR: u8 = 0x80;
    pub const OPCODE: u8 = 0x78;
    pub const AA: u8 = 0x04;
    pub const RD: u8 = 0x01;
    /// The payload size our OPT record announces.
    pub const PAYLOAD: u16 = 1232;
}

/// The network a resolver address is in.
fn resolver(vpc: &str) -> [u8; 4] {
    match vpc {
        "vpc-a" => RESOLVER_A,
        _ => RESOLVER_B,
    }
}

/// When an endpoint is available (its names exist).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Avail {
    Always,
    /// In the configured phase only: revoked in the other.
    Configured,
    Never,
}

/// An endpoint as DNS sees it.
struct Named {
    id: &'static str,
    service: &'static str,
    vpc: &'static str,
    /// Its addresses and their zones, as listed.
    addresses: &'static [([u8; 4], &'static str)],
    private_dns: bool,
    available: Avail,
}

const fn named(
    id: &'static str,
    service: &'static str,
    vpc: &'static str,
    addresses: &'static [([u8; 4], &'static str)],
    available: Avail,
) -> Named {
    Named {
        id,
        service,
        vpc,
        addresses,
        private_dns: false,
        available,
    }
}

const NAMED: &[Named] = &[
    named("dns-a", "dns", "vpc-a", &[(DNS, "z1")], Avail::Always),
    named("dns-b", "dns", "vpc-b", &[(DNS, "z1")], Avail::Always),
    named(
        "a",
        "orders",
        "vpc-a",
        &[(ENDPOINT, "z1")],
        Avail::Configured,
    ),
    Named {
        private_dns: true,
        ..named("b", "orders", "vpc-b", &[(ENDPOINT, "z1")], Avail::Always)
    },
    named(
        "pending",
        "orders",
        "vpc-a",
        &[(PENDING, "z1")],
        Avail::Never,
    ),
    named(
        "rejected",
        "orders",
        "vpc-b",
        &[(PENDING, "z1")],
        Avail::Never,
    ),
    named(
        "unresolved",
        "unresolved",
        "vpc-a",
        &[(NO_NEIGHBOUR, "z1")],
        Avail::Always,
    ),
    named(
        "unrouted",
        "unrouted",
        "vpc-a",
        &[(NO_ROUTE, "z1")],
        Avail::Always,
    ),
    named(
        "guarded",
        "strict",
        "vpc-b",
        &[(GUARDED, "z1")],
        Avail::Always,
    ),
    Named {
        private_dns: true,
        ..named(
            "strict",
            "strict",
            "vpc-a",
            &[(STRICT, "z1")],
            Avail::Configured,
        )
    },
    Named {
        private_dns: true,
        ..named(
            "multi",
            "orders",
            "vpc-a",
            &[(MULTI[0], "z1"), (MULTI[1], "z2"), (MULTI[2], "z3")],
            Avail::Always,
        )
    },
];

/// A service's private DNS name (lowercase: it is configured in mixed case).
fn private_name(service: &str) -> Option<&'static str> {
    match service {
        "orders" => Some("orders.corp.example"),
        "strict" => Some("secure.example.com"),
        _ => None,
    }
}

/// A name as labels, lowercased (DNS compares names so: RFC 4343).
type Labels = Vec<Vec<u8>>;

fn labels_of(dotted: &str) -> Labels {
    dotted
        .split('.')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase().into_bytes())
        .collect()
}

fn dotted(labels: &[Vec<u8>]) -> String {
    let texts: Vec<String> = labels
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    texts.join(".")
}

/// A name's records in one network.
#[derive(Clone)]
struct Records {
    /// A zone apex (SOA and NS).
    apex: bool,
    /// The labels of the apex of its zone.
    apex_labels: usize,
    /// Its addresses, as listed, and their zones ("": none).
    addresses: Vec<([u8; 4], &'static str)>,
}

/// Every name `vpc`'s resolver answers in `phase` (the README's table): the domain (an
/// apex), `ns.<domain>`, and for each available endpoint its service's name (no
/// records), its regional name, a zonal name per address, and its service's private name
/// (an apex of its own) if it asks for it.
fn dns_names(vpc: &str, phase: Phase) -> BTreeMap<Labels, Records> {
    let under = Records {
        apex: false,
        apex_labels: labels_of(DOMAIN).len(),
        addresses: Vec::new(),
    };
    let mut names = BTreeMap::new();
    names.insert(
        labels_of(DOMAIN),
        Records {
            apex: true,
            ..under.clone()
        },
    );
    names.insert(
        labels_of(&format!("ns.{DOMAIN}")),
        Records {
            addresses: vec![(resolver(vpc), "")],
            ..under.clone()
        },
    );
    for e in NAMED
        .iter()
        .filter(|e| e.vpc == vpc && phase.has(e.available))
    {
        let (id, service) = (e.id, e.service);
        names
            .entry(labels_of(&format!("{service}.{DOMAIN}")))
            .or_insert_with(|| under.clone());
        names.insert(
            labels_of(&format!("{id}.{service}.{DOMAIN}")),
            Records {
                addresses: e.addresses.to_vec(),
                ..under.clone()
            },
        );
        for &(ip, zone) in e.addresses {
            names.insert(
                labels_of(&format!("{id}-{zone}.{service}.{DOMAIN}")),
                Records {
                    addresses: vec![(ip, zone)],
                    ..under.clone()
                },
            );
        }
        if let Some(private) = private_name(service).filter(|_| e.private_dns) {
            let labels = labels_of(private);
            names.insert(
                labels.clone(),
                Records {
                    apex: true,
                    apex_labels: labels.len(),
                    addresses: e.addresses.to_vec(),
                },
            );
        }
    }
    names
}

/// Names to ask about: every name of every network and phase, those of endpoints that
/// are never available, and others that are not ours or not there.
fn dns_known() -> Vec<Labels> {
    let mut known = BTreeSet::new();
    for phase in [Phase::Configured, Phase::Revoked] {
        for vpc in ["vpc-a", "vpc-b"] {
            known.extend(dns_names(vpc, phase).into_keys());
        }
    }
    for e in NAMED {
        known.insert(labels_of(&format!("{}.{}.{DOMAIN}", e.id, e.service)));
    }
    for other in [
        "hostmaster.endpoints.internal",
        "multi-z4.orders.endpoints.internal",
        "multi.strict.endpoints.internal",
        "www.orders.corp.example",
        "www.secure.example.com",
        "corp.example",
        "example.com",
        "internal",
        "endpoints",
        "endpoints.internal.example.com",
        "orders.corp.example.org",
        "example.org",
    ] {
        known.insert(labels_of(other));
    }
    known.into_iter().collect()
}

/// What the model says becomes of a DNS frame (or of a frame to a resolver address, or
/// to port 53 elsewhere).
enum DnsExpect {
    /// Answered with this message.
    Reply(DnsReply),
    /// Dropped, counted under `counter` (endpoint slot 0), and under `which` of the
    /// network's DNS counters if any.
    Drop { counter: u32, which: Option<u32> },
    /// Handed to the kernel (on a provider interface: not the node's business).
    Pass,
}

/// What an answer is, for the tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DnsKind {
    /// NOERROR with records.
    Answer,
    /// NOERROR without (NODATA).
    Nodata,
    Nxdomain,
    Refused,
    Notimp,
    Formerr,
    Badvers,
}

/// A record the model expects in an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rdata {
    A([u8; 4]),
    Soa,
    Ns,
}

/// The answer the model expects to a query.
struct DnsReply {
    kind: DnsKind,
    /// The header's third and fourth bytes (flags and rcode).
    flags: [u8; 2],
    /// Where the question ends in the query: the answer echoes it (0: a header alone).
    question_end: usize,
    /// The question's name.
    name: Labels,
    answers: Vec<Rdata>,
    /// The owner of the SOA in the authority section (negative answers).
    authority: Option<Labels>,
    /// Our OPT record, with this extended rcode.
    opt: Option<u8>,
    /// The node's counter and the network's DNS counter it is counted under.
    counter: u32,
    which: u32,
}

impl DnsReply {
    fn counts(&self) -> [u16; 4] {
        if self.question_end == 0 {
            return [0; 4];
        }
        [
            1,
            self.answers.len() as u16,
            u16::from(self.authority.is_some()),
            u16::from(self.opt.is_some()),
        ]
    }
}

/// The question of a query as the README reads it: a name of plain labels (no
/// compression pointer, no other label type) of at most 255 bytes from byte 12, then
/// its type and class, all within the message. Its labels (lowercased) and where it ends.
fn question_of(m: &[u8]) -> Option<(Labels, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        if at - 12 >= 255 {
            return None;
        }
        let len = usize::from(*m.get(at)?);
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(m.get(at + 1..at + 1 + len)?.to_ascii_lowercase());
        at += 1 + len;
    }
    let end = at + 5;
    (end <= m.len()).then_some((labels, end))
}

/// A record of a message, as parsed.
struct Parsed {
    owner: Labels,
    rtype: u16,
    class: u16,
    ttl: u32,
    /// Where its data begins, and its length.
    data: (usize, usize),
}

/// A DNS message, parsed strictly: every section whole and nothing after the last.
struct Message {
    counts: [u16; 4],
    question_end: usize,
    sections: [Vec<Parsed>; 3],
}

/// A name at `at` in `m` (compression pointers followed, only backwards), lowercased,
/// and where what follows it begins.
fn read_name(m: &[u8], at: usize) -> Result<(Labels, usize), String> {
    let (mut labels, mut pos, mut next, mut length) = (Vec::new(), at, None, 0);
    loop {
        let byte = *m.get(pos).ok_or("a name runs past the end")?;
        match byte {
            0 => {
                length += 1;
                if length > 255 {
                    return Err("a name longer than 255 bytes".into());
                }
                return Ok((labels, next.unwrap_or(pos + 1)));
            }
            1..=63 => {
                let len = usize::from(byte);
                let label = m
                    .get(pos + 1..pos + 1 + len)
                    .ok_or("a label runs past the end")?;
                labels.push(label.to_ascii_lowercase());
                length += 1 + len;
                pos += 1 + len;
            }
            0xc0..=0xff => {
                let low = *m.get(pos + 1).ok_or("a pointer cut short")?;
                let to = usize::from(u16::from_be_bytes([byte & 0x3f, low]));
                if to >= pos {
                    return Err(format!("a pointer at {pos} to {to}: not backwards"));
                }
                next.get_or_insert(pos + 2);
                pos = to;
            }
            _ => return Err(format!("label type {byte:#x} at {pos}")),
        }
    }
}

fn parse_message(m: &[u8]) -> Result<Message, String> {
    if m.len() < 12 {
        return Err("shorter than a header".into());
    }
    let count = |i: usize| u16::from_be_bytes([m[4 + 2 * i], m[5 + 2 * i]]);
    let counts = [count(0), count(1), count(2), count(3)];
    let mut at = 12;
    for _ in 0..counts[0] {
        at = read_name(m, at)?.1 + 4;
        if at > m.len() {
            return Err("a question cut short".into());
        }
    }
    let question_end = at;
    let mut sections: [Vec<Parsed>; 3] = Default::default();
    for (section, &n) in sections.iter_mut().zip(&counts[1..]) {
        for _ in 0..n {
            let (owner, after) = read_name(m, at)?;
            let fixed = m.get(after..after + 10).ok_or("a record cut short")?;
            let word = |i: usize| u16::from_be_bytes([fixed[i], fixed[i + 1]]);
            let len = usize::from(word(8));
            if after + 10 + len > m.len() {
                return Err("a record's data runs past the end".into());
            }
            section.push(Parsed {
                owner,
                rtype: word(0),
                class: word(2),
                ttl: u32::from_be_bytes(fixed[4..8].try_into().unwrap()),
                data: (after + 10, len),
            });
            at = after + 10 + len;
        }
    }
    if at != m.len() {
        return Err(format!("{} bytes after the last record", m.len() - at));
    }
    Ok(Message {
        counts,
        question_end,
        sections,
    })
}

/// Whether the data at `data` of `m` is the name `ns.<domain>`, whole.
fn ns_name(m: &[u8], (at, len): (usize, usize)) -> bool {
    read_name(m, at)
        .is_ok_and(|(name, after)| name == labels_of(&format!("ns.{DOMAIN}")) && after == at + len)
}

/// A counter's name.
fn counter_name(which: u32) -> &'static str {
    counter::ALL
        .iter()
        .find(|(c, _)| *c == which)
        .map_or("?", |(_, name)| name)
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

/// Whether the TCP segment (or UDP datagram: `proto`) after an IPv4 header of `ihl`
/// bytes, `tot_len` long, sums right with its pseudo-header.
fn transport_sum_ok(f: &[u8], proto: u8, ihl: usize, tot_len: usize) -> bool {
    let (start, end) = (14 + ihl, 14 + tot_len);
    if tot_len < ihl || end > f.len() || f.len() < 34 {
        return false;
    }
    let pseudo = sum(&f[26..34], u64::from(proto) + (tot_len - ihl) as u64);
    fold(sum(&f[start..end], pseudo)) == 0xffff
}

/// Whether `f[range]` sums right (an ICMP message, an IPv4 header).
fn sums_right(f: &[u8], range: std::ops::Range<usize>) -> bool {
    range.end <= f.len() && fold(sum(&f[range], 0)) == 0xffff
}

/// A ones' complement sum with its two zeros (0 and 0xFFFF) made one: what an
/// incremental update keeps.
fn ones(acc: u64) -> u16 {
    match fold(acc) {
        0xffff => 0,
        n => n,
    }
}

/// Makes the IPv4 header's checksum right again.
fn fix_ip_checksum(f: &mut [u8]) {
    if f.len() < 34 {
        return;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    if ihl < 20 || 14 + ihl > f.len() {
        return;
    }
    f[24..26].fill(0);
    let ip = !fold(sum(&f[14..14 + ihl], 0));
    f[24..26].copy_from_slice(&ip.to_be_bytes());
}

/// Makes the checksums right again (IPv4, and TCP, UDP or ICMP), as far as the frame
/// lets them be computed.
fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [8, 0] {
        return;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    if ihl < 20 || 14 + ihl > f.len() {
        return;
    }
    fix_ip_checksum(f);
    let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let end = (14 + tot_len).min(f.len());
    let start = 14 + ihl;
    let (check, pseudo) = match f[23] {
        6 if start + 18 <= end => (start + 16, true),
        17 if start + 8 <= end => (start + 6, true),
        1 if start + 4 <= end => (start + 2, false),
        _ => return,
    };
    f[check..check + 2].fill(0);
    let pseudo = if pseudo {
        sum(&f[26..34], u64::from(f[23]) + (end - start) as u64)
    } else {
        0
    };
    let mut sum = !fold(sum(&f[start..end], pseudo));
    // A UDP checksum that computes to 0 is sent as 0xFFFF (0 means none).
    if f[23] == 17 && sum == 0 {
        sum = 0xffff;
    }
    f[check..check + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Clears DF, keeping the IPv4 checksum right.
fn clear_df(f: &mut [u8]) {
    if f.len() >= 34 {
        f[20] &= !DF;
        fix_ip_checksum(f);
    }
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

/// A UDP datagram's fields.
struct Datagram {
    mac_src: [u8; 6],
    mac_dst: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ttl: u8,
    df: bool,
    /// Whether it carries a checksum (else 0: none).
    checksum: bool,
    payload: Vec<u8>,
}

impl Datagram {
    fn frame(&self) -> Vec<u8> {
        let mut body = self.sport.to_be_bytes().to_vec();
        body.extend(self.dport.to_be_bytes());
        body.extend(((8 + self.payload.len()) as u16).to_be_bytes());
        body.extend([0, 0]);
        body.extend(&self.payload);
        let mut f = ipv4_frame((self.mac_src, self.mac_dst), self.src, self.dst, 17, &body);
        f[20] = if self.df { DF } else { 0 };
        f[22] = self.ttl;
        fix_checksums(&mut f);
        if !self.checksum {
            f[40..42].fill(0);
        }
        f
    }
}

/// The last word of a payload of `len` (even, ≥ 2) bytes that makes a datagram from
/// `src`:`sport` to `dst`:`dport` sum to all ones without its checksum: its checksum
/// computes to 0 (sent as 0xFFFF).
fn zero_sum_payload(
    rng: &mut Rng,
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    len: usize,
) -> Vec<u8> {
    let mut payload = rng.bytes(len);
    payload[len - 2..].fill(0);
    let udp_len = (8 + len) as u64;
    let mut acc = sum(&src, sum(&dst, 17 + udp_len));
    acc += u64::from(sport) + u64::from(dport) + udp_len;
    let last = !fold(sum(&payload, acc));
    payload[len - 2..].copy_from_slice(&last.to_be_bytes());
    payload
}

/// The fields of a frame the program takes as TCP or UDP over IPv4 (the README's
/// rules: a whole 20-byte IPv4 header, no fragment, the total length within the frame;
/// a TCP header of at least 20 bytes within the total length, or a UDP header of 8
/// whose length is the rest of it).
struct Seg {
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    /// TCP flags (none for UDP).
    flags: u8,
    ttl: u8,
    df: bool,
    tot_len: usize,
}

impl Seg {
    fn of(f: &[u8]) -> Option<Seg> {
        if f.len() < 34 || f[12..14] != [8, 0] || (f[23] != 6 && f[23] != 17) {
            return None;
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
        if f[14] >> 4 != 4 || ihl != 20 || tot_len < ihl || 14 + tot_len > f.len() || fragment {
            return None;
        }
        let proto = f[23];
        if proto == PROTO_TCP {
            if f.len() < 54 {
                return None;
            }
            let doff = usize::from(f[46] >> 4) * 4;
            if doff < 20 || 20 + doff > tot_len {
                return None;
            }
        } else {
            if f.len() < 42 {
                return None;
            }
            // A UDP length below its own header's is inconsistent: malformed.
            let udp_len = usize::from(u16::from_be_bytes([f[38], f[39]]));
            if udp_len != tot_len - 20 || udp_len < 8 {
                return None;
            }
        }
        Some(Seg {
            proto,
            src: f[26..30].try_into().unwrap(),
            dst: f[30..34].try_into().unwrap(),
            sport: u16::from_be_bytes([f[34], f[35]]),
            dport: u16::from_be_bytes([f[36], f[37]]),
            flags: if proto == PROTO_TCP { f[47] } else { 0 },
            ttl: f[22],
            df: f[20] & DF != 0,
            tot_len,
        })
    }

    fn tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }

    /// The key it arrives with in `network`.
    fn key(&self, network: u32) -> FlowKey {
        FlowKey {
            src: Addr::ipv4(self.src),
            dst: Addr::ipv4(self.dst),
            src_port_be: self.sport.to_be(),
            dst_port_be: self.dport.to_be(),
            scope: FlowKey::scope(network, FAMILY_IPV4, self.proto),
        }
    }

    /// Its TCP checksum is right, or its UDP one (or it has none).
    fn checksum_ok(&self, f: &[u8]) -> bool {
        if !self.tcp() && f[40..42] == [0, 0] {
            return true;
        }
        transport_sum_ok(f, self.proto, 20, self.tot_len)
    }
}

/// The fields of a frame the program takes as ICMP over IPv4 (a whole 20-byte IPv4
/// header, no fragment, at least the 8-byte ICMP header within the total length).
struct Icmp {
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    kind: u8,
    code: u8,
    tot_len: usize,
}

impl Icmp {
    fn of(f: &[u8]) -> Option<Icmp> {
        if f.len() < 42 || f[12..14] != [8, 0] || f[23] != 1 {
            return None;
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
        if f[14] >> 4 != 4 || ihl != 20 || tot_len < 28 || 14 + tot_len > f.len() || fragment {
            return None;
        }
        Some(Icmp {
            src: f[26..30].try_into().unwrap(),
            dst: f[30..34].try_into().unwrap(),
            ttl: f[22],
            kind: f[34],
            code: f[35],
            tot_len,
        })
    }
}

/// Flags a segment of a connection can carry: not SYN with FIN or RST, not FIN with RST
/// or without ACK, and some of SYN, ACK, RST (UDP: any datagram).
fn sane_flags(seg: &Seg) -> bool {
    if !seg.tcp() {
        return true;
    }
    let flags = seg.flags;
    let syn_with_end = flags & SYN != 0 && flags & (FIN | RST) != 0;
    let bad_fin = flags & FIN != 0 && (flags & RST != 0 || flags & ACK == 0);
    !syn_with_end && !bad_fin && flags & (SYN | ACK | RST) != 0
}

/// Where the value of the MSS option (kind 2, length 4) of the TCP segment `f` is, if
/// it has one: options walked as RFC 9293 §3.1 lays them out (the end-of-list ends
/// them, a NOP is one byte, any other gives its length, at least 2).
fn mss_at(f: &[u8]) -> Option<usize> {
    let doff = usize::from(f[46] >> 4) * 4;
    let options = f.get(54..34 + doff)?;
    let mut at = 0;
    while at + 1 < options.len() {
        match (options[at], usize::from(options[at + 1])) {
            (0, _) => break,
            (1, _) => at += 1,
            (_, len) if len < 2 => break,
            (2, 4) if at + 4 <= options.len() => return Some(54 + at + 2),
            (_, len) => at += len,
        }
    }
    None
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
    proto: u8,
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
    /// For the frame generator: the client's and the target's next sequence numbers
    /// (TCP).
    client_next: u32,
    target_next: Option<u32>,
}

impl Conn {
    /// The key its replies arrive with.
    fn reply_key(&self) -> FlowKey {
        FlowKey {
            src: Addr::ipv4(self.target),
            dst: Addr::ipv4(NAT),
            src_port_be: self.target_port.to_be(),
            dst_port_be: self.nat_port.to_be(),
            scope: FlowKey::scope(PROVIDER_NETWORK, FAMILY_IPV4, self.proto),
        }
    }
}

fn reply_key_of(forward: &Flow) -> FlowKey {
    FlowKey {
        src: forward.dst,
        dst: forward.src,
        src_port_be: forward.dst_port_be,
        dst_port_be: forward.src_port_be,
        scope: FlowKey::scope(PROVIDER_NETWORK, FAMILY_IPV4, forward.proto),
    }
}

fn addr(addr: Addr) -> [u8; 4] {
    addr.ipv4_be().to_ne_bytes()
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
    /// Answer it with this ICMP message of the node's own — or, over the ICMP budget,
    /// drop it.
    answer: Option<Answer>,
    /// Translate this provider's ICMP error about the known connection back to its
    /// consumer.
    error: Option<(FlowKey, Conn)>,
    /// A DNS query (or a frame to a resolver address, or for port 53 elsewhere): what
    /// must become of it, and nothing else.
    dns: Option<DnsExpect>,
}

/// An ICMP message the node may answer a frame with.
struct Answer {
    kind: Own,
    /// Exactly this frame (an echo reply's checksums aside: they are updated, so they
    /// are as right as they came in).
    frame: Vec<u8>,
    /// The endpoint slot its budget drop is counted for.
    slot: u32,
    /// Whether nothing but the budget may drop the frame instead (else the steps
    /// before the answer may too: limits, TCP tracking, a closed connection's SYN taken
    /// as a new one).
    sure: bool,
    /// The connection it is about, the side the frame came from, and what the steps
    /// before the answer may have changed of it.
    about: Option<(FlowKey, Way, Before)>,
}

impl Answer {
    /// Whether `out` is this answer.
    fn matches(&self, out: &[u8]) -> bool {
        if self.kind != Own::EchoReply {
            return out == self.frame.as_slice();
        }
        // Both checksums are updated: the IPv4 one right, the ICMP one as right as it
        // came in (as the expected frame's is).
        let f = &self.frame;
        let end = 14 + usize::from(u16::from_be_bytes([f[16], f[17]]));
        let checksums = [24, 25, 36, 37];
        out.len() == f.len()
            && out
                .iter()
                .zip(f)
                .enumerate()
                .all(|(i, (a, b))| a == b || checksums.contains(&i))
            && ip_checksum_ok(out)
            && sums_right(out, 34..end) == sums_right(f, 34..end)
    }
}

/// The node's own ICMP messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    TimeExceeded,
    FragNeeded,
    EchoReply,
}

/// What the steps before an ICMP answer may change of the connection the frame is on
/// (each includes the ones before it): of the entry of the side it came from, unless
/// said otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Before {
    /// Nothing: its TTL is looked at first.
    Nothing,
    /// The policy word it is admitted under (judged again first).
    Admitted,
    /// Its last-seen stamp (used, then found too big for the kept route).
    Touched,
    /// What TCP tracking learnt from the segment (and the connection's state bits): a
    /// reply is checked against the consumer's MTU last.
    Tracked,
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
    time_exceeded: u64,
    frag_needed: u64,
    echo: u64,
    icmp_error: u64,
    icmp_budget: u64,
    udp_new: u64,
    udp_forward: u64,
    udp_reply: u64,
    mss_clamped: u64,
    dns: DnsTally,
}

/// What became of DNS frames (and of the others the DNS model judged).
#[derive(Default)]
struct DnsTally {
    frames: u64,
    mutated: u64,
    /// Answers by kind; of them, with our OPT record.
    kinds: BTreeMap<DnsKind, u64>,
    with_opt: u64,
    /// Records in answers: A (and of those, answers listing more than one zone's
    /// addresses, the asker's first), SOA and NS.
    a_records: u64,
    zone_first: u64,
    soa: u64,
    ns: u64,
    /// Answers whose UDP checksum computed to 0 (sent as 0xFFFF).
    zero_sum: u64,
    /// Drops by counter, and frames handed to the kernel.
    drops: BTreeMap<u32, u64>,
    pass: u64,
    /// What each consumer network's DNS counters must hold.
    stats: [[u64; dns_counter::COUNT as usize]; 2],
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
    /// `drop_icmp_budget` per endpoint slot, as last read.
    budget_seen: BTreeMap<u32, u64>,
    /// The names each network's resolver answers, per phase ([`Phase::index`], then
    /// [`CONS_A`] or [`CONS_B`]).
    names: [[BTreeMap<Labels, Records>; 2]; 2],
    /// Names the generator asks about.
    known: Vec<Labels>,
    /// The zones' SOA serial (it changes with the records: read from the map).
    serial: u32,
}

impl<'r> Fuzz<'r> {
    fn new(rig: &'r mut Rig, seed: u64) -> Self {
        let ids = rig.pipeline.applied().ids.clone();
        let ports = NAMES.map(|(name, vpc)| {
            let link = rig.facts.links[name];
            assert_eq!(link.mtu as usize, MTU, "{name}'s MTU");
            Port {
                name,
                ifindex: link.ifindex,
                mac: link.mac,
                network: if vpc.is_empty() { 0 } else { ids.networks[vpc] },
                vpc,
                bounce: if link.veth { XDP_REDIRECT } else { XDP_TX },
                mtu: link.mtu as u16,
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
            budget_seen: BTreeMap::new(),
            names: [Phase::Configured, Phase::Revoked]
                .map(|phase| [dns_names("vpc-a", phase), dns_names("vpc-b", phase)]),
            known: dns_known(),
            serial: 0,
        }
        .with_serial()
    }

    /// The zones' SOA serial, as the agent last wrote it.
    fn with_serial(mut self) -> Self {
        let settings: DnsSettings = self
            .rig
            .pipeline
            .maps()
            .hash::<u32, DnsSettings>(name::DNS)
            .unwrap()
            .get(&0, 0)
            .expect("DNS settings");
        let names = [format!("ns.{DOMAIN}"), format!("hostmaster.{DOMAIN}")];
        let at = 10 + names.iter().map(|n| 2 + n.len()).sum::<usize>();
        self.serial = u32::from_be_bytes(settings.soa[at..at + 4].try_into().unwrap());
        self
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
                self = self.with_serial();
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
        // What an ICMP answer may leave changed of its connection: both entries before.
        let about = allowed.answer.as_ref().and_then(|a| a.about);
        let before_about = about.and_then(|(key, ..)| {
            let conn = self.model.flows.get(&key)?;
            Some((self.flow_entry(&key)?, self.flow_entry(&conn.reply_key())?))
        });
        // The counter a DNS frame must be counted under, before.
        let counted = match &allowed.dns {
            Some(DnsExpect::Drop { counter, .. }) => Some((*counter, self.stat(*counter))),
            Some(DnsExpect::Pass) => Some((counter::PASS, self.stat(counter::PASS))),
            Some(DnsExpect::Reply(reply)) => Some((reply.counter, self.stat(reply.counter))),
            _ => None,
        };
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
            XDP_DROP => {
                self.tally.drop += 1;
                if let Some(answer) = &allowed.answer {
                    self.dropped_answer(&ran, answer);
                }
            }
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
        if let Some(dns) = &allowed.dns {
            self.judge_dns(&ran, dns, counted);
        }
        let answered = ran.forwarded() && allowed.answer.as_ref().is_some_and(|a| a.matches(&out));
        if let (Some((key, way, may)), Some(before), true) = (about, before_about, answered) {
            self.check_kept(&ran, key, way, may, before);
        }
    }

    /// A frame the model expected an ICMP answer to was dropped: over the budget
    /// (counted so), or (if the answer was not sure) for a step before it.
    fn dropped_answer(&mut self, ran: &Ran, answer: &Answer) {
        let index = counter::index(answer.slot, counter::DROP_ICMP_BUDGET);
        let now: u64 = self
            .rig
            .pipeline
            .maps()
            .per_cpu_array::<Count>(name::STATS)
            .unwrap()
            .get(&index, 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum();
        let seen = self.budget_seen.entry(answer.slot).or_default();
        let was = *seen;
        *seen = now;
        match now.checked_sub(was) {
            Some(1) => self.tally.icmp_budget += 1,
            Some(0) if !answer.sure => {}
            Some(0) => self.fail(
                ran,
                &format!(
                    "dropped, not over the ICMP budget, instead of answered ({:?}); expected {}",
                    answer.kind,
                    hex(&answer.frame)
                ),
            ),
            _ => self.fail(
                ran,
                &format!(
                    "drop_icmp_budget went from {was} to {now}: frames that had no ICMP \
                     answer coming were counted there"
                ),
            ),
        }
    }

    /// An ICMP answer left its connection as the steps before it may have: `way` the
    /// side the frame came from, `may` what those steps may change.
    fn check_kept(&self, ran: &Ran, key: FlowKey, way: Way, may: Before, before: (Flow, Flow)) {
        let Some(conn) = self.model.flows.get(&key) else {
            // Gone (a closed connection's SYN taken as a new one): judged as such.
            return;
        };
        let after = (self.flow_entry(&key), self.flow_entry(&conn.reply_key()));
        let (Some(forward), Some(reply)) = after else {
            self.fail(ran, "an ICMP answer removed half a connection");
        };
        let mask = |mut flow: Flow, side: Way| {
            if side == way {
                if may >= Before::Admitted {
                    flow.policy = 0;
                }
                if may >= Before::Touched {
                    flow.last_seen_s = 0;
                }
                if may >= Before::Tracked {
                    (flow.ack, flow.window, flow.isn_next, flow.wscale) = (0, 0, 0, 0);
                }
            } else if may >= Before::Tracked && side == Way::ToTarget {
                // The connection's TCP state lives in the consumer-to-target entry.
                flow.tcp = 0;
            }
            flow
        };
        let same = mask(before.0, Way::ToTarget) == mask(forward, Way::ToTarget)
            && mask(before.1, Way::ToConsumer) == mask(reply, Way::ToConsumer);
        if !same {
            self.fail(
                ran,
                &format!(
                    "an ICMP answer changed its connection beyond what comes before it ({may:?}): {:?} -> {:?}",
                    before,
                    (forward, reply)
                ),
            );
        }
    }

    /// What the model lets the program do with `f` arriving on `port`.
    fn allowed(&self, port: usize, f: &[u8]) -> Allowed {
        let p = self.ports[port];
        let consumer = p.network != 0;
        let mut allowed = Allowed {
            pass: !consumer && !self.for_a_nat_address(port, f),
            ..Allowed::default()
        };
        if f.len() >= 14 && f[12..14] == [8, 6] {
            allowed.arp = self.arp_answer(port, f);
            return allowed;
        }
        if let Some(icmp) = Icmp::of(f) {
            if consumer {
                allowed.answer = self.echo_answer(port, f, &icmp);
            } else if port == PROV && icmp.dst == NAT {
                allowed.error = self.error_about(port, f, &icmp);
            }
            return allowed;
        }
        if let Some(dns) = self.unparsed_to_resolver(port, f) {
            allowed.dns = Some(dns);
            return allowed;
        }
        let Some(seg) = Seg::of(f) else {
            return allowed;
        };
        if let Some(dns) = self.dns_expect(port, f, &seg) {
            allowed.pass = matches!(dns, DnsExpect::Pass);
            allowed.dns = Some(dns);
            return allowed;
        }
        // What anything forwarded (or answered) must be: sent to this interface from a
        // unicast MAC, a right IPv4 checksum, flags a connection can carry.
        if f[0..6] != p.mac || f[6] & 1 != 0 || !ip_checksum_ok(f) || !sane_flags(&seg) {
            return allowed;
        }
        let fits = seg.tot_len <= MTU;
        if consumer {
            if seg.flags & (SYN | ACK) == SYN | ACK {
                return allowed;
            }
            let syn = seg.flags & SYN != 0;
            let key = seg.key(p.network);
            let known = self.model.flows.get(&key).copied();
            // Whether the connection's endpoint still admits the frame.
            let mut admitted = false;
            if let Some(conn) = known {
                match self.phase.revocation(conn.endpoint, conn.listener) {
                    Revocation::None => admitted = true,
                    // A SYN on a draining connection would open it again: refused.
                    Revocation::Drain => admitted = !syn,
                    Revocation::Reset => {
                        allowed.removes = true;
                        // UDP has nothing to reset: the flow just goes.
                        if seg.tcp() {
                            allowed.reset = self.rst_answer(port, f);
                        }
                    }
                    Revocation::Closed => allowed.removes = true,
                }
            }
            // A SYN, or a datagram with no flow, may open one (a SYN on a known
            // connection too, if that one closed).
            let opening = if syn || (!seg.tcp() && known.is_none()) {
                self.may_open(p, f, &seg)
            } else {
                None
            };
            let slot = match (known, opening) {
                (Some(conn), _) => self.slots[conn.endpoint],
                (None, Some(listener)) => self.slots[listener.endpoint],
                (None, None) => return allowed,
            };
            let about = known.map(|_| key);
            // The TTL is looked at once the endpoint admitted the frame; the size once
            // the route is known (a new connection's route, after its limits).
            if seg.ttl <= 1 {
                if admitted || opening.is_some() {
                    allowed.answer = Some(Answer {
                        kind: Own::TimeExceeded,
                        frame: self.icmp_error(port, f, TIME_EXCEEDED, 0, 0),
                        slot,
                        // A SYN on a known connection that closed is taken as a new one.
                        sure: (admitted && !syn) || opening.is_some(),
                        about: about.map(|key| (key, Way::ToTarget, Before::Admitted)),
                    });
                }
            } else if !fits {
                let routed = opening.is_some_and(|l| l.reach != Reach::NoRoute);
                if seg.df && (admitted || routed) {
                    let mtu = self.ports[PROV].mtu;
                    allowed.answer = Some(Answer {
                        kind: Own::FragNeeded,
                        frame: self.icmp_error(port, f, UNREACHABLE, FRAG_NEEDED, mtu),
                        slot,
                        sure: admitted && !syn,
                        about: about.map(|key| (key, Way::ToTarget, Before::Touched)),
                    });
                }
            } else {
                if admitted {
                    allowed.forward = known.map(|conn| (key, conn, Way::ToTarget));
                }
                allowed.open = opening.filter(|l| l.reach == Reach::Neighbour);
            }
        } else if port == PROV && seg.dst == NAT && (NAT_FIRST..=NAT_LAST).contains(&seg.dport) {
            // Targets answer; they never open anything towards a consumer.
            if seg.flags & SYN != 0 && seg.flags & ACK == 0 {
                return allowed;
            }
            let Some(key) = self.model.replies.get(&seg.key(PROVIDER_NETWORK)) else {
                return allowed;
            };
            let conn = self.model.flows[key];
            let slot = self.slots[conn.endpoint];
            // The TTL is looked at before the endpoint is judged again.
            if seg.ttl <= 1 {
                allowed.answer = Some(Answer {
                    kind: Own::TimeExceeded,
                    frame: self.icmp_error(port, f, TIME_EXCEEDED, 0, 0),
                    slot,
                    sure: true,
                    about: Some((*key, Way::ToConsumer, Before::Nothing)),
                });
                return allowed;
            }
            match self.phase.revocation(conn.endpoint, conn.listener) {
                Revocation::Reset => {
                    allowed.removes = true;
                    if seg.tcp() {
                        allowed.reset = self.rst_answer(port, f);
                    }
                }
                // Only whether the endpoint is still there counts for a reply; its size
                // is checked last, against the consumer interface's MTU.
                _ if !fits => {
                    if seg.df {
                        let mtu = self.ports[conn.port].mtu;
                        allowed.answer = Some(Answer {
                            kind: Own::FragNeeded,
                            frame: self.icmp_error(port, f, UNREACHABLE, FRAG_NEEDED, mtu),
                            slot,
                            sure: !seg.tcp(),
                            about: Some((*key, Way::ToConsumer, Before::Tracked)),
                        });
                    }
                }
                _ => allowed.forward = Some((*key, conn, Way::ToConsumer)),
            }
        }
        allowed
    }

    /// The listener a SYN (or a UDP datagram) to an endpoint passes every check of up to
    /// its TTL on: an available endpoint of the interface's network, listening on the
    /// port, that its security groups let the source reach; a source that can be a
    /// client; a right TCP (or UDP) checksum.
    fn may_open(&self, p: Port, f: &[u8], seg: &Seg) -> Option<&'static Listener> {
        let listener = LISTENERS.iter().find(|l| {
            l.vpc == p.vpc && l.ip == seg.dst && l.port == seg.dport && l.proto == seg.proto
        })?;
        let admitted = self.groups(listener).is_none_or(|groups| {
            groups
                .iter()
                .any(|(prefix, len)| in_prefix(seg.src, *prefix, *len))
        });
        (self.available(listener)
            && seg.flags & ACK == 0
            && admitted
            && !martian(p.vpc, seg.src, seg.dst)
            && seg.checksum_ok(f))
        .then_some(listener)
    }

    /// Whether the listener's endpoint is available in this phase.
    fn available(&self, listener: &Listener) -> bool {
        let revocation = self.phase.revocation(listener.endpoint, listener.port);
        listener.available && !matches!(revocation, Revocation::Drain | Revocation::Reset)
    }

    /// The listener's security groups in this phase (None: no groups, anyone).
    fn groups(&self, listener: &Listener) -> Option<&'static [([u8; 4], u8)]> {
        match self.phase.revocation(listener.endpoint, listener.port) {
            Revocation::Closed => Some(&[]),
            _ => listener.groups,
        }
    }

    /// Whether `f` is addressed to a NAT port where it arrived, is ICMP to the NAT
    /// address, or is ARP for it: the kernel must never see it.
    fn for_a_nat_address(&self, port: usize, f: &[u8]) -> bool {
        if port != PROV || f.len() < 34 {
            return false;
        }
        if f[12..14] == [8, 6] {
            return self.arp_answer(port, f).is_some();
        }
        if f[12..14] != [8, 0] || f[30..34] != NAT {
            return false;
        }
        match f[23] {
            // An error about a flow of the NAT address goes to its consumer; any other
            // ICMP to it is dropped.
            1 => true,
            // TCP or UDP to the NAT address: only the node's own connections' (a port
            // outside the NAT range) may pass, and only whole.
            6 | 17 => match Seg::of(f) {
                Some(seg) => (NAT_FIRST..=NAT_LAST).contains(&seg.dport),
                None => true,
            },
            _ => false,
        }
    }

    /// The node's own ICMP error `kind`/`code` about `f` (which arrived on `port`), with
    /// `mtu` in the header's last two bytes: from the address `f` was sent to, back to
    /// its sender, quoting its IPv4 header and the 8 bytes after it.
    fn icmp_error(&self, port: usize, f: &[u8], kind: u8, code: u8, mtu: u16) -> Vec<u8> {
        let mut icmp = vec![kind, code, 0, 0, 0, 0];
        icmp.extend(mtu.to_be_bytes());
        icmp.extend(&f[14..42]);
        let check = !fold(sum(&icmp, 0));
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        let mut e = f[6..12].to_vec();
        e.extend(self.ports[port].mac);
        // IPv4: no options, precedence "internetwork control", 56 bytes, id 0, may be
        // fragmented, TTL 64, ICMP.
        e.extend([8, 0, 0x45, 0xc0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0]);
        e.extend(&f[30..34]);
        e.extend(&f[26..30]);
        let check = !fold(sum(&e[14..34], 0));
        e[24..26].copy_from_slice(&check.to_be_bytes());
        e.extend(icmp);
        e
    }

    /// The answer to an echo request to the network's resolver address, or to an
    /// endpoint of the interface's network that is available, from a source that can be a
    /// client and that its security groups (if it has any) let reach some listener.
    fn echo_answer(&self, port: usize, f: &[u8], icmp: &Icmp) -> Option<Answer> {
        let p = self.ports[port];
        if !answered(p.vpc).contains(&icmp.dst) || icmp.kind != ECHO_REQUEST || icmp.code != 0 {
            return None;
        }
        // The resolver address answers anyone in its network; an endpoint's, as its
        // state and security groups say.
        let (slot, reachable) = if icmp.dst == resolver(p.vpc) {
            (0, true)
        } else {
            let endpoint = LISTENERS
                .iter()
                .find(|l| l.vpc == p.vpc && l.ip == icmp.dst)?
                .endpoint;
            let of_endpoint = || LISTENERS.iter().filter(move |l| l.endpoint == endpoint);
            let listener = of_endpoint().next().unwrap();
            let admitted = of_endpoint().all(|l| l.groups.is_none())
                || of_endpoint().any(|l| {
                    self.groups(l).is_some_and(|groups| {
                        groups
                            .iter()
                            .any(|(prefix, len)| in_prefix(icmp.src, *prefix, *len))
                    })
                });
            (
                self.slots[listener.endpoint],
                self.available(listener) && admitted,
            )
        };
        let ok = f[0..6] == p.mac
            && f[6] & 1 == 0
            && ip_checksum_ok(f)
            && !martian(p.vpc, icmp.src, icmp.dst)
            && reachable;
        if !ok {
            return None;
        }
        let mut reply = f.to_vec();
        reply[0..6].copy_from_slice(&f[6..12]);
        reply[6..12].copy_from_slice(&p.mac);
        reply[22] = 64;
        reply[26..30].copy_from_slice(&icmp.dst);
        reply[30..34].copy_from_slice(&icmp.src);
        reply[34] = ECHO_REPLY;
        // The ICMP checksum updated for the new type (RFC 1624): as right as it came in.
        let old = u16::from_be_bytes([f[36], f[37]]);
        let (was, is) = (
            u16::from_be_bytes([f[34], f[35]]),
            u16::from_be_bytes([reply[34], reply[35]]),
        );
        let check = !fold(u64::from(!old) + u64::from(!was) + u64::from(is));
        reply[36..38].copy_from_slice(&check.to_be_bytes());
        fix_ip_checksum(&mut reply);
        Some(Answer {
            kind: Own::EchoReply,
            frame: reply,
            slot,
            sure: true,
            about: None,
        })
    }

    /// The known connection a provider's ICMP error to the NAT address is about: an
    /// error (unreachable, time exceeded, parameter problem) quoting a whole IPv4 header
    /// without options and 8 bytes of TCP or UDP, sent from the NAT address on the
    /// connection; the error sent to the interface, a right IPv4 checksum, TTL left,
    /// and the connection's endpoint not revoked with `reset`.
    fn error_about(&self, port: usize, f: &[u8], icmp: &Icmp) -> Option<(FlowKey, Conn)> {
        let kinds = [UNREACHABLE, TIME_EXCEEDED, PARAMETER_PROBLEM];
        if !kinds.contains(&icmp.kind) || f.len() < 70 || icmp.tot_len < 56 {
            return None;
        }
        let proto = f[42 + 9];
        if f[42] != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) || f[54..58] != NAT {
            return None;
        }
        let quoted = FlowKey {
            src: Addr::ipv4(f[58..62].try_into().unwrap()),
            dst: Addr::ipv4(NAT),
            src_port_be: u16::from_ne_bytes([f[64], f[65]]),
            dst_port_be: u16::from_ne_bytes([f[62], f[63]]),
            scope: FlowKey::scope(PROVIDER_NETWORK, FAMILY_IPV4, proto),
        };
        let key = *self.model.replies.get(&quoted)?;
        let conn = self.model.flows[&key];
        let ok = f[0..6] == self.ports[port].mac
            && f[6] & 1 == 0
            && ip_checksum_ok(f)
            && icmp.ttl > 1
            && self.phase.revocation(conn.endpoint, conn.listener) != Revocation::Reset;
        ok.then_some((key, conn))
    }

    /// The RST answering the segment `f` (RFC 9293 §3.10.7.1), back to its sender from
    /// the interface `port`: bare headers, from what the segment acknowledged, or
    /// acknowledging it.
    fn rst_answer(&self, port: usize, f: &[u8]) -> Option<Vec<u8>> {
        let seg = Seg::of(f).filter(Seg::tcp)?;
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

    /// A forwarded frame that opened no connection: an ARP answer, an ICMP answer, a
    /// segment (or datagram) of a known connection, a provider's ICMP error about one,
    /// or (`gone`: its connection went) the RST that cut it — exactly as the model
    /// expects it.
    fn judge_forwarded(&mut self, ran: &Ran, allowed: &Allowed, gone: bool) {
        // Judged by `judge_dns`, whatever happened.
        if allowed.dns.is_some() {
            return;
        }
        if let Some(arp) = &allowed.arp {
            if ran.out != arp.as_slice() {
                self.fail(ran, &format!("a wrong ARP answer; expected {}", hex(arp)));
            }
            self.check_bounce(ran);
            self.tally.arp += 1;
            return;
        }
        // An answer is all the model allows where it expects one (a closed
        // connection's SYN that it answers took the new connection's way: `gone`).
        if let Some(answer) = &allowed.answer {
            if !answer.matches(ran.out) {
                self.fail(
                    ran,
                    &format!(
                        "not the expected ICMP answer ({:?}); expected {}",
                        answer.kind,
                        hex(&answer.frame)
                    ),
                );
            }
            self.check_bounce(ran);
            match answer.kind {
                Own::TimeExceeded => self.tally.time_exceeded += 1,
                Own::FragNeeded => self.tally.frag_needed += 1,
                Own::EchoReply => self.tally.echo += 1,
            }
            return;
        }
        if gone {
            let Some(rst) = &allowed.reset else {
                self.fail(ran, "forwarded, but its connection went");
            };
            if ran.out != rst.as_slice() {
                self.fail(ran, &format!("not the expected RST; expected {}", hex(rst)));
            }
            self.check_bounce(ran);
            self.tally.reset += 1;
            return;
        }
        if let Some((key, conn)) = allowed.error {
            self.check_error(ran, &key, &conn);
            self.tally.icmp_error += 1;
            return;
        }
        let Some((key, conn, way)) = allowed.forward else {
            self.fail(ran, "forwarded, but the model refuses it");
        };
        if self.check_translation(ran, &key, &conn, way) {
            self.tally.mss_clamped += 1;
        }
        match (way, conn.proto) {
            (Way::ToTarget, PROTO_UDP) => self.tally.udp_forward += 1,
            (Way::ToConsumer, PROTO_UDP) => self.tally.udp_reply += 1,
            _ => {}
        }
        match way {
            Way::ToTarget => self.tally.forward += 1,
            Way::ToConsumer => self.tally.reply += 1,
        }
    }

    /// What the node says itself goes back out the interface it came in on.
    fn check_bounce(&self, ran: &Ran) {
        let expected = self.ports[ran.port].bounce;
        if ran.action != expected {
            self.fail(
                ran,
                &format!("an answer must go back out its interface (action {expected})"),
            );
        }
    }

    /// The output is the frame translated for `conn` going `way` and redirected: only
    /// addresses, ports, MACs, TTL and checksums changed, the IPv4 checksum right and the
    /// TCP or UDP one as right as it came in (a UDP datagram without one keeps none,
    /// and one with one never leaves with 0), the lengths kept and within the egress
    /// MTU; a SYN's or SYN-ACK's MSS lowered to what the MTUs allow. Returns whether it
    /// was.
    fn check_translation(&self, ran: &Ran, key: &FlowKey, conn: &Conn, way: Way) -> bool {
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
                addr(key.dst),
                addr(key.src),
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
        // A SYN and its SYN-ACK announce no larger MSS than both sides' MTUs allow
        // (the IPv4 and TCP headers aside; the rig's services set no `mss` of their
        // own).
        let limit = (MTU - 40) as u16;
        let syn = conn.proto == PROTO_TCP && f[47] & SYN != 0;
        let clamped = match syn.then(|| mss_at(f)).flatten() {
            Some(at) if u16::from_be_bytes([f[at], f[at + 1]]) > limit => {
                expected[at..at + 2].copy_from_slice(&limit.to_be_bytes());
                true
            }
            _ => false,
        };
        let check = if conn.proto == PROTO_TCP { 50 } else { 40 };
        let checksums = [24, 25, check, check + 1];
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
        let right = |frame: &[u8]| transport_sum_ok(frame, conn.proto, 20, tot_len);
        match (conn.proto, [f[40], f[41]], [ran.out[40], ran.out[41]]) {
            (PROTO_UDP, [0, 0], out) if out != [0, 0] => {
                self.fail(ran, "a datagram without a UDP checksum leaves with one")
            }
            (PROTO_UDP, [0, 0], _) => {}
            (PROTO_UDP, _, [0, 0]) => self.fail(
                ran,
                "a UDP checksum leaves as 0 (none), not 0xFFFF, or the datagram lost it",
            ),
            _ if right(ran.out) != right(f) => self.fail(
                ran,
                "the TCP or UDP checksum did not stay as right as it came in",
            ),
            _ => {}
        }
        if tot_len > MTU {
            self.fail(ran, "longer than the egress MTU");
        }
        clamped
    }

    /// The output is the provider's ICMP error `ran.frame` about the connection `conn`
    /// (at `key`) translated for its consumer and sent like a reply: from the endpoint
    /// to the consumer, TTL one less, the quoted packet as the consumer sent it; every
    /// checksum as right as it came in (the outer IPv4 one right), a quoted UDP
    /// checksum updated or left 0.
    fn check_error(&self, ran: &Ran, key: &FlowKey, conn: &Conn) {
        let f = ran.frame;
        if ran.action != XDP_REDIRECT {
            self.fail(ran, "must leave through another interface (a redirect)");
        }
        let (consumer, endpoint) = (addr(key.src), addr(key.dst));
        let mut expected = f.to_vec();
        expected[0..6].copy_from_slice(&conn.client_mac);
        expected[6..12].copy_from_slice(&self.ports[conn.port].mac);
        expected[22] = f[22] - 1;
        expected[26..30].copy_from_slice(&endpoint);
        expected[30..34].copy_from_slice(&consumer);
        expected[54..58].copy_from_slice(&consumer);
        expected[58..62].copy_from_slice(&endpoint);
        expected[62..64].copy_from_slice(&u16::from_be(key.src_port_be).to_be_bytes());
        expected[64..66].copy_from_slice(&u16::from_be(key.dst_port_be).to_be_bytes());
        let udp = conn.proto == PROTO_UDP;
        let checksums: &[usize] = if udp {
            &[24, 25, 36, 37, 52, 53, 68, 69]
        } else {
            &[24, 25, 36, 37, 52, 53]
        };
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
                    "not the expected translated ICMP error; expected (checksums aside) {}",
                    hex(&expected)
                ),
            );
        }
        let end = 14 + usize::from(u16::from_be_bytes([f[16], f[17]]));
        if !ip_checksum_ok(ran.out) {
            self.fail(ran, "a wrong IPv4 checksum leaves");
        }
        if sums_right(ran.out, 34..end) != sums_right(f, 34..end) {
            self.fail(ran, "the ICMP checksum did not stay as right as it came in");
        }
        if sums_right(ran.out, 42..62) != sums_right(f, 42..62) {
            self.fail(
                ran,
                "the quoted IPv4 checksum did not stay as right as it came in",
            );
        }
        if udp {
            // What the quoted datagram's checksum covers of the quote (addresses, ports
            // and itself) sums the same: the rest of it is unchanged.
            let covered = |g: &[u8]| ones(sum(&g[54..66], sum(&g[68..70], 0)));
            let (was, is) = ([f[68], f[69]], [ran.out[68], ran.out[69]]);
            let updated = match was {
                [0, 0] => is == [0, 0],
                _ => is != [0, 0] && covered(ran.out) == covered(f),
            };
            if !updated {
                self.fail(
                    ran,
                    "the quoted UDP checksum was not updated (or left 0) as it must",
                );
            }
        }
    }

    // -- DNS ------------------------------------------------------------------------

    /// `counter` of endpoint slot 0 (what no endpoint is blamed for), over all CPUs.
    fn stat(&self, counter: u32) -> u64 {
        self.rig
            .pipeline
            .maps()
            .per_cpu_array::<Count>(name::STATS)
            .unwrap()
            .get(&counter::index(0, counter), 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// What the DNS model says becomes of the TCP or UDP segment `f` arriving on `port`,
    /// if it is for port 53 or for a resolver address: a query to the network's resolver
    /// is judged as DNS ([`Fuzz::query`]); on a consumer interface anything else that no
    /// listener takes is not endpoint traffic; on a provider interface, what is not for
    /// a NAT address or port is the kernel's.
    fn dns_expect(&self, port: usize, f: &[u8], seg: &Seg) -> Option<DnsExpect> {
        let p = self.ports[port];
        if seg.dport != 53 && seg.dst != RESOLVER_A && seg.dst != RESOLVER_B {
            return None;
        }
        if p.network == 0 {
            let nat_port = (NAT_FIRST..=NAT_LAST).contains(&seg.dport);
            return (seg.dst != NAT && !nat_port).then_some(DnsExpect::Pass);
        }
        if seg.proto == PROTO_UDP && seg.dport == 53 && seg.dst == resolver(p.vpc) {
            return Some(self.query(port, f, seg));
        }
        let listener = LISTENERS.iter().any(|l| {
            l.vpc == p.vpc && l.ip == seg.dst && l.port == seg.dport && l.proto == seg.proto
        });
        (!listener).then_some(DnsExpect::Drop {
            counter: counter::DROP_NOT_ENDPOINT,
            which: None,
        })
    }

    /// IPv4 to a resolver address on a consumer interface that is not a whole TCP, UDP
    /// or ICMP packet (README: what the program does not handle): another protocol is
    /// not endpoint traffic; a truncated or inconsistent header is malformed; a fragment,
    /// or IPv4 options, is dropped as such where the address is the network's resolver,
    /// as not endpoint traffic elsewhere.
    fn unparsed_to_resolver(&self, port: usize, f: &[u8]) -> Option<DnsExpect> {
        let p = self.ports[port];
        if p.network == 0 || f.len() < 34 || f[12..14] != [8, 0] {
            return None;
        }
        let dst: [u8; 4] = f[30..34].try_into().unwrap();
        if dst != RESOLVER_A && dst != RESOLVER_B {
            return None;
        }
        let drop = |counter| {
            Some(DnsExpect::Drop {
                counter,
                which: None,
            })
        };
        let proto = f[23];
        if ![1, PROTO_TCP, PROTO_UDP].contains(&proto) {
            return drop(counter::DROP_NOT_ENDPOINT);
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
        if f[14] >> 4 != 4 || ihl < 20 || tot_len < ihl || 14 + tot_len > f.len() {
            return drop(counter::DROP_MALFORMED);
        }
        let ours = dst == resolver(p.vpc);
        if u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0 {
            return drop(if ours {
                counter::DROP_FRAGMENT
            } else {
                counter::DROP_NOT_ENDPOINT
            });
        }
        if ihl != 20 {
            return drop(if ours {
                counter::DROP_IP_OPTIONS
            } else {
                counter::DROP_NOT_ENDPOINT
            });
        }
        let payload = tot_len - 20;
        let whole = match proto {
            PROTO_TCP => f.len() >= 54 && (20..=payload).contains(&(usize::from(f[46] >> 4) * 4)),
            PROTO_UDP => {
                f.len() >= 42
                    && payload >= 8
                    && usize::from(u16::from_be_bytes([f[38], f[39]])) == payload
            }
            _ => f.len() >= 42 && payload >= 8,
        };
        if !whole {
            return drop(counter::DROP_MALFORMED);
        }
        // A whole TCP or UDP packet: see `dns_expect` (ICMP: `echo_answer`).
        None
    }

    /// A datagram to port 53 of the resolver address of `port`'s network: checked like
    /// endpoint traffic (sent to the interface from a unicast MAC, a right IPv4 checksum,
    /// a source that can be a client at all, a right UDP checksum or none), then answered as the
    /// README's DNS rules say — or dropped if shorter than a header or a response.
    fn query(&self, port: usize, f: &[u8], seg: &Seg) -> DnsExpect {
        let p = self.ports[port];
        let drop = |counter, which| DnsExpect::Drop { counter, which };
        if f[0..6] != p.mac || f[6] & 1 != 0 {
            return drop(counter::DROP_NOT_FOR_US, None);
        }
        if !ip_checksum_ok(f) {
            return drop(counter::DROP_BAD_CHECKSUM, None);
        }
        if never_a_client(seg.src, seg.dst) {
            return drop(counter::DROP_MARTIAN, None);
        }
        if !seg.checksum_ok(f) {
            return drop(counter::DROP_BAD_CHECKSUM, None);
        }
        let m = &f[42..14 + seg.tot_len];
        if m.len() < 12 || m[2] & wire::QR != 0 {
            return drop(counter::DROP_DNS, Some(dns_counter::MALFORMED));
        }
        // Answers keep the query's opcode and RD; the rest of the flags are theirs.
        let kept = (m[2] & (wire::OPCODE | wire::RD)) | wire::QR;
        let header_only = |kind, code, counter, which| {
            DnsExpect::Reply(DnsReply {
                kind,
                flags: [kept, code],
                question_end: 0,
                name: Vec::new(),
                answers: Vec::new(),
                authority: None,
                opt: None,
                counter,
                which,
            })
        };
        if m[2] & wire::OPCODE != 0 {
            return header_only(
                DnsKind::Notimp,
                wire::NOTIMP,
                counter::DNS_REFUSED,
                dns_counter::REFUSED,
            );
        }
        let count = |i: usize| u16::from_be_bytes([m[4 + 2 * i], m[5 + 2 * i]]);
        let question = question_of(m).filter(|_| [count(0), count(1), count(2)] == [1, 0, 0]);
        let Some((name, end)) = question else {
            return header_only(
                DnsKind::Formerr,
                wire::FORMERR,
                counter::DNS_FORMERR,
                dns_counter::MALFORMED,
            );
        };
        let qtype = u16::from_be_bytes([m[end - 4], m[end - 3]]);
        let qclass = u16::from_be_bytes([m[end - 2], m[end - 1]]);
        // EDNS: the one additional record is an OPT record for the root (its version in
        // its seventh byte).
        let edns = (count(3) == 1
            && m.len() >= end + 11
            && m[end] == 0
            && m[end + 1..end + 3] == wire::OPT.to_be_bytes())
        .then(|| m[end + 6]);
        let reply = |kind, code, answers, authority, opt, counter, which| {
            DnsExpect::Reply(DnsReply {
                kind,
                flags: [kept, code],
                question_end: end,
                name: name.clone(),
                answers,
                authority,
                opt,
                counter,
                which,
            })
        };
        if edns.is_some_and(|version| version > 0) {
            // BADVERS: extended rcode 1, nothing else, not authoritative.
            return reply(
                DnsKind::Badvers,
                wire::NOERROR,
                Vec::new(),
                None,
                Some(1),
                counter::DNS_FORMERR,
                dns_counter::MALFORMED,
            );
        }
        let names = &self.names[self.phase.index()][port];
        let (kind, answers, authority) =
            if qclass != wire::IN || qtype == wire::AXFR || qtype == wire::IXFR {
                (DnsKind::Refused, Vec::new(), None)
            } else if let Some(records) = names.get(&name) {
                let answers = match qtype {
                    wire::SOA if records.apex => vec![Rdata::Soa],
                    wire::NS if records.apex => vec![Rdata::Ns],
                    wire::A | wire::ANY => {
                        let zone = self.phase.client_zone(port);
                        let local = |z: &&str| Some(*z) == zone;
                        let (first, rest): (Vec<([u8; 4], &str)>, Vec<_>) =
                            records.addresses.iter().partition(|(_, z)| local(z));
                        first
                            .into_iter()
                            .chain(rest)
                            .map(|(ip, _): ([u8; 4], &str)| Rdata::A(ip))
                            .collect()
                    }
                    _ => Vec::new(),
                };
                if answers.is_empty() {
                    // NODATA: the SOA owned by the apex of the name's zone.
                    let apex = name[name.len() - records.apex_labels..].to_vec();
                    (DnsKind::Nodata, answers, Some(apex))
                } else {
                    (DnsKind::Answer, answers, None)
                }
            } else {
                // Under one of the network's zone apexes (the longest proper suffix of at
                // most 15 labels that is one): NXDOMAIN, its SOA owned by that apex; not
                // ours: REFUSED.
                let apex = (1..name.len().min(16))
                    .rev()
                    .map(|n| &name[name.len() - n..])
                    .find(|suffix| names.get(*suffix).is_some_and(|r| r.apex));
                match apex {
                    Some(apex) => (DnsKind::Nxdomain, Vec::new(), Some(apex.to_vec())),
                    None => (DnsKind::Refused, Vec::new(), None),
                }
            };
        let (code, counter, which) = match kind {
            DnsKind::Refused => (wire::REFUSED, counter::DNS_REFUSED, dns_counter::REFUSED),
            DnsKind::Nxdomain => (wire::NXDOMAIN, counter::DNS_NXDOMAIN, dns_counter::NXDOMAIN),
            _ => (wire::NOERROR, counter::DNS_ANSWER, dns_counter::ANSWER),
        };
        let opt = edns.map(|_| 0);
        match reply(kind, code, answers, authority, opt, counter, which) {
            // Authoritative, unless refused.
            DnsExpect::Reply(mut r) if kind != DnsKind::Refused => {
                r.flags[0] |= wire::AA;
                DnsExpect::Reply(r)
            }
            other => other,
        }
    }

    /// A frame the DNS model judged: it must have become what the model says — the
    /// answer, or the drop (or the kernel) counted under its counter, once.
    fn judge_dns(&mut self, ran: &Ran, expect: &DnsExpect, counted: Option<(u32, u64)>) {
        let vpc = ran.port.min(CONS_B);
        match expect {
            DnsExpect::Reply(reply) => {
                if !ran.forwarded() {
                    self.fail(
                        ran,
                        &format!(
                            "not answered; expected {:?} (flags {}, counts {:?}, answers {:?}, \
                             authority {:?}, OPT {:?})",
                            reply.kind,
                            hex(&reply.flags),
                            reply.counts(),
                            reply.answers,
                            reply.authority.as_deref().map(dotted),
                            reply.opt
                        ),
                    );
                }
                self.check_bounce(ran);
                self.check_dns_reply(ran, reply);
                self.check_counted(ran, counted);
                let t = &mut self.tally.dns;
                *t.kinds.entry(reply.kind).or_default() += 1;
                t.with_opt += u64::from(reply.opt.is_some());
                t.stats[vpc][reply.which as usize] += 1;
                for record in &reply.answers {
                    match record {
                        Rdata::A(_) => t.a_records += 1,
                        Rdata::Soa => t.soa += 1,
                        Rdata::Ns => t.ns += 1,
                    }
                }
                let zones = self.phase.client_zone(ran.port).is_some();
                t.zone_first += u64::from(zones && reply.answers.len() > 1);
                let out = ran.out;
                let zero = out[40..42] == [0xff, 0xff] && {
                    let mut without = out.to_vec();
                    without[40..42].fill(0);
                    transport_sum_ok(&without, 17, 20, out.len() - 14)
                };
                t.zero_sum += u64::from(zero);
            }
            DnsExpect::Drop { counter, which } => {
                if ran.action != XDP_DROP {
                    self.fail(
                        ran,
                        &format!("not dropped (under {})", counter_name(*counter)),
                    );
                }
                self.check_counted(ran, counted);
                let t = &mut self.tally.dns;
                *t.drops.entry(*counter).or_default() += 1;
                if let Some(which) = which {
                    t.stats[vpc][*which as usize] += 1;
                }
            }
            DnsExpect::Pass => {
                if ran.action != XDP_PASS {
                    self.fail(ran, "not handed to the kernel");
                }
                self.check_counted(ran, counted);
                self.tally.dns.pass += 1;
            }
        }
    }

    /// The frame was counted once under the counter the model names (read before it ran).
    fn check_counted(&self, ran: &Ran, counted: Option<(u32, u64)>) {
        let Some((counter, was)) = counted else {
            return;
        };
        let now = self.stat(counter);
        if now != was + 1 {
            self.fail(
                ran,
                &format!(
                    "counted {} times under {}, not once",
                    now.wrapping_sub(was),
                    counter_name(counter)
                ),
            );
        }
    }

    /// The output is the answer the model expects: back out the interface to the asker,
    /// from the address and port it asked (the rest of the IPv4 header kept but for the
    /// lengths, DF, TTL 64 and the ECN bits, cleared), both checksums right (computed here); the message parses,
    /// echoes the ID and the question byte for byte, has the flags, rcode and counts the
    /// model gives, and exactly its records.
    fn check_dns_reply(&self, ran: &Ran, reply: &DnsReply) {
        let (f, out) = (ran.frame, ran.out);
        let p = self.ports[ran.port];
        let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let query = &f[42..14 + tot_len];
        if out.len() < 42 + 12 {
            self.fail(ran, "an answer shorter than its headers and a DNS header");
        }
        let message = &out[42..];
        let mut headers = f[6..12].to_vec();
        headers.extend(p.mac);
        headers.extend([8, 0, 0x45, f[15] & !3]);
        headers.extend(((20 + 8 + message.len()) as u16).to_be_bytes());
        headers.extend(&f[18..20]);
        headers.extend([DF, 0, 64, 17]);
        headers.extend(&out[24..26]);
        headers.extend(&f[30..34]);
        headers.extend(&f[26..30]);
        headers.extend(&f[36..38]);
        headers.extend(&f[34..36]);
        headers.extend(((8 + message.len()) as u16).to_be_bytes());
        headers.extend(&out[40..42]);
        if out[..42] != headers[..] {
            self.fail(
                ran,
                &format!(
                    "not the answer's headers; expected (checksums aside) {}",
                    hex(&headers)
                ),
            );
        }
        if !ip_checksum_ok(out) {
            self.fail(ran, "an answer with a wrong IPv4 checksum");
        }
        if out[40..42] == [0, 0] || !transport_sum_ok(out, 17, 20, out.len() - 14) {
            self.fail(ran, "an answer without a right UDP checksum");
        }
        let parsed = match parse_message(message) {
            Ok(parsed) => parsed,
            Err(e) => self.fail(ran, &format!("the answer does not parse: {e}")),
        };
        let mut problems = Vec::new();
        if message[0..2] != query[0..2] {
            problems.push("the ID is not the query's".to_string());
        }
        if message[2..4] != reply.flags {
            problems.push(format!(
                "flags and rcode {}, expected {}",
                hex(&message[2..4]),
                hex(&reply.flags)
            ));
        }
        if parsed.counts != reply.counts() {
            problems.push(format!(
                "counts {:?}, expected {:?}",
                parsed.counts,
                reply.counts()
            ));
        } else {
            let end = reply.question_end;
            if end != 0 && (parsed.question_end != end || message[12..end] != query[12..end]) {
                problems.push("the question is not echoed byte for byte".to_string());
            }
            problems.extend(self.record_problems(message, &parsed, reply));
        }
        if !problems.is_empty() {
            self.fail(
                ran,
                &format!(
                    "not the expected DNS answer ({:?}; answers {:?}, authority {:?}, OPT \
                     {:?}): {}",
                    reply.kind,
                    reply.answers,
                    reply.authority.as_deref().map(dotted),
                    reply.opt,
                    problems.join("; ")
                ),
            );
        }
    }

    /// How the answer's records differ from the model's (the counts agree).
    fn record_problems(&self, m: &[u8], parsed: &Message, reply: &DnsReply) -> Vec<String> {
        let mut problems = Vec::new();
        let [answers, authority, additional] = &parsed.sections;
        for (i, (rr, want)) in answers.iter().zip(&reply.answers).enumerate() {
            let (at, len) = rr.data;
            let data = &m[at..at + len];
            let rtype = match want {
                Rdata::A(_) => wire::A,
                Rdata::Soa => wire::SOA,
                Rdata::Ns => wire::NS,
            };
            if rr.owner != reply.name || rr.class != wire::IN || rr.ttl != DNS_TTL {
                problems.push(format!(
                    "answer {i}: owner {}, class {}, TTL {}",
                    dotted(&rr.owner),
                    rr.class,
                    rr.ttl
                ));
            }
            let right = rr.rtype == rtype
                && match want {
                    Rdata::A(ip) => data == ip,
                    Rdata::Soa => self.soa_problem(m, rr.data).is_none(),
                    Rdata::Ns => ns_name(m, rr.data),
                };
            if !right {
                problems.push(format!(
                    "answer {i}: type {} data {}, expected {want:?}{}",
                    rr.rtype,
                    hex(data),
                    match want {
                        Rdata::Soa => self.soa_problem(m, rr.data),
                        _ => None,
                    }
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
                ));
            }
        }
        if let (Some(owner), Some(rr)) = (&reply.authority, authority.first()) {
            let right = rr.owner == *owner
                && rr.rtype == wire::SOA
                && rr.class == wire::IN
                && rr.ttl == DNS_TTL;
            if !right {
                problems.push(format!(
                    "authority: owner {} type {} class {} TTL {}, expected the SOA of {}",
                    dotted(&rr.owner),
                    rr.rtype,
                    rr.class,
                    rr.ttl,
                    dotted(owner)
                ));
            }
            if let Some(problem) = self.soa_problem(m, rr.data) {
                problems.push(format!("authority: {problem}"));
            }
        }
        if let (Some(extended), Some(rr)) = (reply.opt, additional.first()) {
            let right = rr.owner.is_empty()
                && rr.rtype == wire::OPT
                && rr.class == wire::PAYLOAD
                && rr.ttl == u32::from(extended) << 24
                && rr.data.1 == 0;
            if !right {
                problems.push(format!(
                    "OPT: owner {:?} type {} payload {} extended rcode, version and flags \
                     {:#010x}, {} bytes of options; expected ours with extended rcode \
                     {extended}",
                    dotted(&rr.owner),
                    rr.rtype,
                    rr.class,
                    rr.ttl,
                    rr.data.1
                ));
            }
        }
        problems
    }

    /// What is wrong with the SOA data at `data` of `m`, if anything: every zone's is
    /// `ns.<domain>`, `hostmaster.<domain>`, the serial, refresh 3600, retry 600, expire
    /// 86400 and the TTL as minimum.
    fn soa_problem(&self, m: &[u8], (at, len): (usize, usize)) -> Option<String> {
        let names = read_name(m, at).and_then(|(mname, after)| {
            read_name(m, after).map(|(rname, after)| (mname, rname, after))
        });
        let (mname, rname, after) = match names {
            Ok(names) => names,
            Err(e) => return Some(format!("SOA names: {e}")),
        };
        let values: Vec<u32> = match m.get(after..after + 20) {
            Some(bytes) if after + 20 == at + len => bytes
                .chunks(4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
                .collect(),
            _ => return Some("SOA data of another length".to_string()),
        };
        let right = mname == labels_of(&format!("ns.{DOMAIN}"))
            && rname == labels_of(&format!("hostmaster.{DOMAIN}"))
            && values == [self.serial, 3600, 600, 86400, DNS_TTL];
        (!right).then(|| {
            format!(
                "SOA {} {} {values:?}, serial {} expected",
                dotted(&mname),
                dotted(&rname),
                self.serial
            )
        })
    }

    // -- SYNs: opening, reopening, removing ---------------------------------------

    /// The consumer-to-target key of the connection `f` may open (a consumer's SYN, any
    /// datagram) or change (a segment of a known one, either way), read at the offsets
    /// the program reads them at.
    fn touched(&self, port: usize, f: &[u8]) -> Option<FlowKey> {
        let p = self.ports[port];
        let proto = *f.get(23)?;
        let least = match proto {
            6 => 54,
            17 => 42,
            _ => return None,
        };
        if f.len() < least || f[12..14] != [8, 0] {
            return None;
        }
        let key = |network| FlowKey {
            src: Addr::ipv4(f[26..30].try_into().unwrap()),
            dst: Addr::ipv4(f[30..34].try_into().unwrap()),
            src_port_be: u16::from_ne_bytes([f[34], f[35]]),
            dst_port_be: u16::from_ne_bytes([f[36], f[37]]),
            scope: FlowKey::scope(network, FAMILY_IPV4, proto),
        };
        if p.network == 0 {
            return self.model.replies.get(&key(PROVIDER_NETWORK)).copied();
        }
        let key = key(p.network);
        let opens = proto == PROTO_UDP || f[47] & SYN != 0;
        (opens || self.model.flows.contains_key(&key)).then_some(key)
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
        let new_syn =
            self.ports[ran.port].network != 0 && f[23] == PROTO_TCP && f[47] & (SYN | ACK) == SYN;
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
        let target = (addr(flow.dst), u16::from_be(flow.dst_port_be));
        let nat_port = u16::from_be(flow.src_port_be);
        let slot = self.slots[listener.endpoint];
        let reply_key = reply_key_of(&flow);
        let problem = if addr(flow.src) != NAT {
            Some("not from the NAT address")
        } else if !listener.targets.contains(&target) {
            Some("to a target that is not the listener's")
        } else if !(NAT_FIRST..=NAT_LAST).contains(&nat_port) {
            Some("from a port outside the NAT ports")
        } else if flow.slot != slot || flow.network != key.network() {
            Some("counted for another endpoint or network")
        } else if flow.proto != key.proto() || flow.proto != listener.proto {
            Some("of another protocol")
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
                && r.proto == key.proto()
                && (r.src, r.dst) == (key.dst, key.src)
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
        let client_next = if listener.proto == PROTO_TCP {
            let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
            let tot_len = usize::from(u16::from_be_bytes([f[16], f[17]]));
            let payload = tot_len - 20 - usize::from(f[46] >> 4) * 4;
            seq.wrapping_add(1 + payload as u32)
        } else {
            0
        };
        let conn = Conn {
            proto: listener.proto,
            port: ran.port,
            client_mac,
            target: target.0,
            target_port: target.1,
            nat_port,
            slot,
            endpoint: listener.endpoint,
            listener: listener.port,
            opened_ns: flow.opened_ns,
            client_next,
            target_next: None,
        };
        if self.check_translation(ran, &key, &conn, Way::ToTarget) {
            self.tally.mss_clamped += 1;
        }
        self.model.insert(key, conn);
        self.tally.forward_new += 1;
        if conn.proto == PROTO_UDP {
            self.tally.udp_new += 1;
        }
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
        // A UDP flow has no handshake: it counts as a connection, never as half-open.
        for (key, flow) in forward {
            if flow.proto == PROTO_UDP && flow.tcp & tcp::HALF_OPEN != 0 {
                problems.push(format!("a UDP flow counts as half-open: {key:?} {flow:?}"));
            }
        }
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
        // Every counter but those counted besides an outcome (MSS clamps, RSTs received).
        let total: u64 = counter::ALL
            .iter()
            .filter(|(c, _)| *c != counter::MSS_CLAMPED && *c != counter::RESET_RECEIVED)
            .map(|(c, _)| counters.packets(*c))
            .sum();
        let t = &self.tally;
        let forwarded = t.forward_new
            + t.forward
            + t.reply
            + t.arp
            + t.reset
            + t.time_exceeded
            + t.frag_needed
            + t.echo
            + t.icmp_error
            + t.dns.kinds.values().sum::<u64>();
        let mut summary = format!(
            "packet fuzz: seed {:#x}: {} frames ({} mutated, {} random) in {seconds:.1} s \
             ({:.0}/s), {} table checks, {} config changes, {} connections expired: \
             forwarded {forwarded} (forward_new {} (UDP {}), forward {} (UDP {}), reply {} \
             (UDP {}), arp_reply {}, reset_sent {}, icmp_time_exceeded_sent {}, \
             icmp_frag_needed_sent {}, icmp_echo_reply {}, icmp_error {}; mss_clamped {}), \
             passed {}, dropped {}:",
            self.seed,
            self.n,
            t.mutated,
            t.random,
            self.n as f64 / seconds,
            t.syncs,
            t.phases,
            t.expired,
            t.forward_new,
            t.udp_new,
            t.forward,
            t.udp_forward,
            t.reply,
            t.udp_reply,
            t.arp,
            t.reset,
            t.time_exceeded,
            t.frag_needed,
            t.echo,
            t.icmp_error,
            t.mss_clamped,
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
        println!("{}", self.dns_summary());
        let d = &t.dns;
        let kind = |k: DnsKind| d.kinds.get(&k).copied().unwrap_or(0);
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
            (
                "icmp_time_exceeded_sent",
                counters.packets(counter::ICMP_TIME_EXCEEDED_SENT),
                t.time_exceeded,
            ),
            (
                "icmp_frag_needed_sent",
                counters.packets(counter::ICMP_FRAG_NEEDED_SENT),
                t.frag_needed,
            ),
            (
                "icmp_echo_reply",
                counters.packets(counter::ICMP_ECHO_REPLY),
                t.echo,
            ),
            (
                "icmp_error",
                counters.packets(counter::ICMP_ERROR),
                t.icmp_error,
            ),
            (
                "drop_icmp_budget",
                counters.packets(counter::DROP_ICMP_BUDGET),
                t.icmp_budget,
            ),
            (
                "mss_clamped",
                counters.packets(counter::MSS_CLAMPED),
                t.mss_clamped,
            ),
            (
                "dns_answer",
                counters.packets(counter::DNS_ANSWER),
                kind(DnsKind::Answer) + kind(DnsKind::Nodata),
            ),
            (
                "dns_nxdomain",
                counters.packets(counter::DNS_NXDOMAIN),
                kind(DnsKind::Nxdomain),
            ),
            (
                "dns_refused",
                counters.packets(counter::DNS_REFUSED),
                kind(DnsKind::Refused) + kind(DnsKind::Notimp),
            ),
            (
                "dns_formerr",
                counters.packets(counter::DNS_FORMERR),
                kind(DnsKind::Formerr) + kind(DnsKind::Badvers),
            ),
            (
                "drop_dns",
                counters.packets(counter::DROP_DNS),
                d.drops.get(&counter::DROP_DNS).copied().unwrap_or(0),
            ),
        ];
        for (what, counted, seen) in expect {
            assert_eq!(
                counted, seen,
                "seed {:#x}: {what}: counted {counted}, seen {seen}",
                self.seed
            );
        }
        // The generator must reach every kind of outcome, or the run proves little (RSTs
        // need a revocation and the ICMP budget to run out its small one: the second
        // phase).
        let outcomes = [
            ("forward_new", t.forward_new, 20_000),
            ("forward", t.forward, 20_000),
            ("reply", t.reply, 20_000),
            ("forward_new (UDP)", t.udp_new, 20_000),
            ("forward (UDP)", t.udp_forward, 20_000),
            ("reply (UDP)", t.udp_reply, 20_000),
            ("arp_reply", t.arp, 20_000),
            ("pass", t.pass, 20_000),
            ("icmp_time_exceeded_sent", t.time_exceeded, 20_000),
            ("icmp_frag_needed_sent", t.frag_needed, 20_000),
            ("icmp_echo_reply", t.echo, 20_000),
            ("icmp_error", t.icmp_error, 20_000),
            ("mss_clamped", t.mss_clamped, 20_000),
            ("reset_sent", t.reset, 2 * PHASE_FRAMES),
            ("drop_icmp_budget", t.icmp_budget, 2 * PHASE_FRAMES),
            ("DNS answer", kind(DnsKind::Answer), 20_000),
            ("DNS NODATA", kind(DnsKind::Nodata), 20_000),
            ("DNS NXDOMAIN", kind(DnsKind::Nxdomain), 20_000),
            ("DNS REFUSED", kind(DnsKind::Refused), 20_000),
            ("DNS NOTIMP", kind(DnsKind::Notimp), 20_000),
            ("DNS FORMERR", kind(DnsKind::Formerr), 20_000),
            ("DNS BADVERS", kind(DnsKind::Badvers), 20_000),
            ("DNS answer with OPT", d.with_opt, 20_000),
            ("DNS answer, the zone's address first", d.zone_first, 50_000),
            ("DNS SOA answer", d.soa, 50_000),
            ("DNS NS answer", d.ns, 50_000),
            ("DNS to the kernel", d.pass, 20_000),
            (
                "DNS answer whose checksum computed to 0",
                d.zero_sum,
                20_000,
            ),
            (
                "drop_dns",
                d.drops.get(&counter::DROP_DNS).copied().unwrap_or(0),
                20_000,
            ),
            (
                "DNS drop_not_endpoint",
                d.drops
                    .get(&counter::DROP_NOT_ENDPOINT)
                    .copied()
                    .unwrap_or(0),
                20_000,
            ),
        ];
        for (what, n, after) in outcomes {
            assert!(
                n > 0 || self.n < after,
                "seed {:#x}: no frame was a {what}",
                self.seed
            );
        }
        // Each network's DNS counters.
        let stats = self
            .rig
            .pipeline
            .maps()
            .per_cpu_array::<Count>(name::DNS_STATS)
            .unwrap();
        for (p, expected) in self.ports[..2].iter().zip(d.stats) {
            let counted: Vec<u64> = (0..dns_counter::COUNT)
                .map(|which| {
                    let index = p.network * dns_counter::COUNT + which;
                    let per_cpu = stats.get(&index, 0).unwrap();
                    per_cpu.iter().map(|c| c.packets).sum()
                })
                .collect();
            assert_eq!(
                counted,
                expected,
                "seed {:#x}: {}'s DNS counters ({:?})",
                self.seed,
                p.vpc,
                dns_counter::NAMES
            );
        }
    }

    /// What became of the DNS frames.
    fn dns_summary(&self) -> String {
        let d = &self.tally.dns;
        let mut summary = format!(
            "packet fuzz: DNS: {} frames made ({} messages mutated); of them and the other \
             frames for port 53 or a resolver address: answered",
            d.frames, d.mutated
        );
        for (kind, n) in &d.kinds {
            let _ = write!(summary, " {kind:?} {n}");
        }
        let _ = write!(
            summary,
            " ({} with OPT; records: A {}, SOA {}, NS {}; {} answers listing the asker's \
             zone first; {} whose UDP checksum computed to 0); dropped",
            d.with_opt, d.a_records, d.soa, d.ns, d.zone_first, d.zero_sum
        );
        for (c, n) in &d.drops {
            let _ = write!(summary, " {} {n}", counter_name(*c));
        }
        let _ = write!(
            summary,
            "; to the kernel {}; per network [answer, nxdomain, refused, malformed]: vpc-a {:?}, vpc-b {:?}",
            d.pass, d.stats[0], d.stats[1]
        );
        summary
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
    /// kind, half of those mutated; a few random ones; DNS queries.
    fn frame(&mut self) -> (usize, Vec<u8>) {
        if self.rng.chance(DNS_PERCENT) {
            return self.dns_frame();
        }
        let (mut port, mut frame) = match self.rng.below(100) {
            0..22 => self.consumer_syn(),
            22..44 => self.consumer_segment(),
            44..63 => self.target_segment(),
            63..69 => self.consumer_icmp(),
            69..75 => self.provider_icmp(),
            75..83 => self.arp_request(),
            83..92 => self.node_traffic(),
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
            1 => self.rng.pick(&[
                ENDPOINT, STRICT, GUARDED, PENDING, NAT, RESOLVER_A, RESOLVER_B,
            ]),
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
        // An MSS the links' MTUs allow, or not (jumbo frames, the largest there is).
        let [hi, lo] = self
            .rng
            .pick_or(&[1460, 1460, 536, 1461, 8960, 65535], Rng::u16)
            .to_be_bytes();
        match self.rng.below(9) {
            0..3 => Vec::new(),
            3 => vec![2, 4, hi, lo],
            4 => vec![1, 3, 3, self.rng.u8() % 16],
            // The MSS at an odd offset, after a NOP.
            5 => vec![1, 2, 4, hi, lo, 0, 0, 0],
            6 => {
                let scale = self.rng.u8() % 16;
                let mut o = vec![2, 4, hi, lo, 4, 2, 8, 10];
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

    /// A payload after `headers` bytes of IPv4 and TCP or UDP headers: mostly none or
    /// short, now and then long, or around the links' MTU (fitting it exactly, or too
    /// big for it by up to 100 bytes).
    fn payload(&mut self, headers: usize) -> Vec<u8> {
        let n = match self.rng.below(12) {
            0..6 => 0,
            6..10 => 1 + self.rng.below(64),
            10 => self.rng.below(1400),
            _ => (MTU - headers.min(MTU)) + self.rng.pick_or(&[0, 1], |r| r.below(101)),
        };
        self.rng.bytes(n)
    }

    /// A TTL: mostly plenty, sometimes none left to forward with (`percent` of the
    /// time), or just enough.
    fn ttl(&mut self, percent: usize) -> u8 {
        if self.rng.chance(percent) {
            self.rng.pick(&[0, 1, 1, 2])
        } else {
            self.rng.pick(&[64, 64, 64, 255])
        }
    }

    /// A consumer's SYN to an endpoint listener (sometimes another address or port),
    /// or a datagram to a UDP one, from a few clients and source ports, so that tuples
    /// meet again.
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
            self.rng.pick_or(&[22, 443, 80, 8080, 53, 0], Rng::u16)
        };
        // Fewer source ports for datagrams: each opens a flow, and lingers.
        let ports = if listener.proto == PROTO_UDP { 8 } else { 32 };
        let sport = if self.rng.chance(80) {
            40000 + self.rng.below(ports) as u16
        } else {
            self.rng.u16()
        };
        let mac_src = if self.rng.chance(90) {
            CLIENT_MAC
        } else {
            [2, 0, 0, 0, 1, self.rng.u8()]
        };
        let ttl = self.ttl(8);
        if listener.proto == PROTO_UDP {
            let payload = self.payload(28);
            let datagram = Datagram {
                mac_src,
                mac_dst: self.ports[port].mac,
                src: self.client(),
                dst,
                sport,
                dport,
                ttl,
                df: self.rng.chance(80),
                checksum: self.rng.chance(80),
                payload,
            };
            return (port, datagram.frame());
        }
        let options = self.tcp_options();
        let payload = if self.rng.chance(15) {
            self.payload(40 + options.len())
        } else {
            Vec::new()
        };
        let wire = Wire {
            mac_src,
            mac_dst: self.ports[port].mac,
            src: self.client(),
            dst,
            sport,
            dport,
            ttl,
            seq: self.rng.u32(),
            ack: 0,
            flags: SYN,
            window: self.rng.u16(),
            options,
            payload,
        };
        let mut frame = wire.frame();
        if self.rng.chance(20) {
            clear_df(&mut frame);
        }
        (port, frame)
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
    /// or a RST, near where the connection is (a datagram on a UDP one); now and then
    /// with no TTL left, or too big for the way out.
    fn consumer_segment(&mut self) -> (usize, Vec<u8>) {
        let Some((key, conn)) = self.known() else {
            return self.consumer_syn();
        };
        let ttl = self.ttl(10);
        if conn.proto == PROTO_UDP {
            let (src, dst) = (addr(key.src), addr(key.dst));
            let (sport, dport) = (u16::from_be(key.src_port_be), u16::from_be(key.dst_port_be));
            // Now and then one whose translation's checksum computes to 0 (sent as
            // 0xFFFF).
            let payload = if self.rng.chance(5) {
                let len = 2 * (1 + self.rng.below(16));
                zero_sum_payload(
                    &mut self.rng,
                    (NAT, conn.nat_port),
                    (conn.target, conn.target_port),
                    len,
                )
            } else {
                self.payload(28)
            };
            let datagram = Datagram {
                mac_src: conn.client_mac,
                mac_dst: self.ports[conn.port].mac,
                src,
                dst,
                sport,
                dport,
                ttl,
                df: self.rng.chance(80),
                checksum: self.rng.chance(85),
                payload,
            };
            return (conn.port, datagram.frame());
        }
        let target_next = conn.target_next.unwrap_or_else(|| self.rng.u32());
        let mut seq = conn.client_next;
        let mut ack = target_next;
        let (flags, payload) = match self.rng.below(10) {
            0..3 => (ACK, Vec::new()),
            3..6 => (ACK | PSH, self.payload(40)),
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
        // What is not forwarded does not move the connection on.
        if ttl > 1 && 40 + payload.len() <= MTU {
            let advance = payload.len() as u32 + u32::from(flags & FIN != 0);
            if let Some(c) = self.model.flows.get_mut(&key) {
                c.client_next = c.client_next.wrapping_add(advance);
            }
        }
        let wire = Wire {
            mac_src: conn.client_mac,
            mac_dst: self.ports[conn.port].mac,
            src: addr(key.src),
            dst: addr(key.dst),
            sport: u16::from_be(key.src_port_be),
            dport: u16::from_be(key.dst_port_be),
            ttl,
            seq,
            ack: if flags & ACK != 0 { ack } else { 0 },
            flags,
            window: self.rng.pick(&[0, 512, 4096, 65535]),
            options: Vec::new(),
            payload,
        };
        let mut frame = wire.frame();
        if self.rng.chance(15) {
            clear_df(&mut frame);
        }
        (conn.port, frame)
    }

    /// A target's segment on a known connection: its SYN-ACK, data, a FIN or a RST (a
    /// datagram on a UDP one; now and then on the other provider interface, with no TTL
    /// left, or too big for the way back).
    fn target_segment(&mut self) -> (usize, Vec<u8>) {
        let Some((key, conn)) = self.known() else {
            return self.stray_reply();
        };
        let port = if self.rng.chance(5) { PROV2 } else { PROV };
        let ttl = self.ttl(10);
        let mac_src = target_mac(conn.target).unwrap();
        if conn.proto == PROTO_UDP {
            let payload = if self.rng.chance(5) {
                let len = 2 * (1 + self.rng.below(16));
                zero_sum_payload(
                    &mut self.rng,
                    (addr(key.dst), u16::from_be(key.dst_port_be)),
                    (addr(key.src), u16::from_be(key.src_port_be)),
                    len,
                )
            } else {
                self.payload(28)
            };
            let datagram = Datagram {
                mac_src,
                mac_dst: self.ports[port].mac,
                src: conn.target,
                dst: NAT,
                sport: conn.target_port,
                dport: conn.nat_port,
                ttl,
                df: self.rng.chance(80),
                checksum: self.rng.chance(85),
                payload,
            };
            return (port, datagram.frame());
        }
        let client_isn_next = conn.client_next;
        let (flags, payload) = match (conn.target_next, self.rng.below(10)) {
            (None, 0..7) | (_, 0) => (SYN | ACK, Vec::new()),
            (_, 1..4) => (ACK, Vec::new()),
            (_, 4..7) => (ACK | PSH, self.payload(40)),
            (_, 7) => (FIN | ACK, Vec::new()),
            (_, 8) => (RST, Vec::new()),
            _ => (RST | ACK, Vec::new()),
        };
        let forwarded = ttl > 1 && 40 + payload.len() <= MTU;
        let seq = if flags & SYN != 0 {
            let isn = self.rng.u32();
            if let Some(c) = self.model.flows.get_mut(&key).filter(|_| forwarded) {
                c.target_next = Some(isn.wrapping_add(1));
            }
            isn
        } else {
            let next = conn.target_next.unwrap_or(0);
            let advance = payload.len() as u32 + u32::from(flags & FIN != 0);
            if let Some(c) = self.model.flows.get_mut(&key).filter(|_| forwarded) {
                c.target_next = Some(next.wrapping_add(advance));
            }
            next
        };
        let wire = Wire {
            mac_src,
            mac_dst: self.ports[port].mac,
            src: conn.target,
            dst: NAT,
            sport: conn.target_port,
            dport: conn.nat_port,
            ttl,
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
        let mut frame = wire.frame();
        if self.rng.chance(15) {
            clear_df(&mut frame);
        }
        (port, frame)
    }

    /// A target's segment (or datagram) to a NAT port no connection (or a random one)
    /// holds.
    fn stray_reply(&mut self) -> (usize, Vec<u8>) {
        let (target, target_port) =
            self.rng
                .pick(&[(T0, 8080), (T1, 8080), (T0, 8443), (T1, 5353), (T0, 5300)]);
        let port = if self.rng.chance(80) { PROV } else { PROV2 };
        let dport = NAT_FIRST + self.rng.below(usize::from(NAT_LAST - NAT_FIRST) + 1) as u16;
        if self.rng.chance(20) {
            let datagram = Datagram {
                mac_src: target_mac(target).unwrap(),
                mac_dst: self.ports[port].mac,
                src: target,
                dst: NAT,
                sport: target_port,
                dport,
                ttl: 64,
                df: true,
                checksum: true,
                payload: self.payload(28),
            };
            return (port, datagram.frame());
        }
        let wire = Wire {
            mac_src: target_mac(target).unwrap(),
            mac_dst: self.ports[port].mac,
            src: target,
            dst: NAT,
            sport: target_port,
            dport,
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

    /// ICMP from a consumer: mostly echo requests to the endpoint addresses of its
    /// network (available, pending, behind security groups, unreachable), some other
    /// messages, from clients and sources that cannot be.
    fn consumer_icmp(&mut self) -> (usize, Vec<u8>) {
        let mut port = self.rng.pick(&[CONS_A, CONS_B]);
        if self.rng.chance(5) {
            port = PROV;
        }
        let dst = self.rng.pick(&[
            ENDPOINT,
            ENDPOINT,
            PENDING,
            NO_NEIGHBOUR,
            NO_ROUTE,
            GUARDED,
            GUARDED,
            STRICT,
            DNS,
            [10, 0, 0, 1],
            MULTI[2],
            RESOLVER_A,
            RESOLVER_B,
        ]);
        let (kind, code) = if self.rng.chance(85) {
            (ECHO_REQUEST, 0)
        } else {
            self.rng.pick_or(
                &[(ECHO_REQUEST, 1), (ECHO_REPLY, 0), (3, 3), (11, 0), (13, 0)],
                |r| (r.u8(), r.u8()),
            )
        };
        let mut body = vec![kind, code, 0, 0];
        body.extend(self.rng.bytes(4));
        let n = if self.rng.chance(5) {
            self.rng.below(1500)
        } else {
            self.rng.below(64)
        };
        body.extend(self.rng.bytes(n));
        let mac_src = if self.rng.chance(90) {
            CLIENT_MAC
        } else {
            self.rng
                .pick(&[[2, 0, 0, 0, 1, 2], [0xff; 6], [1, 0, 0x5e, 0, 0, 1]])
        };
        let src = self.client();
        let mut f = ipv4_frame((mac_src, self.ports[port].mac), src, dst, 1, &body);
        f[22] = self.ttl(10);
        fix_checksums(&mut f);
        (port, f)
    }

    /// ICMP from the provider side to the NAT address: mostly errors quoting what the
    /// node sent on a known connection (from the target or a router on the way), some
    /// about nothing it knows, some other messages.
    fn provider_icmp(&mut self) -> (usize, Vec<u8>) {
        let port = if self.rng.chance(90) { PROV } else { PROV2 };
        let (target, target_port, nat_port, proto) = match self.known() {
            Some((_, c)) if self.rng.chance(85) => (c.target, c.target_port, c.nat_port, c.proto),
            _ => (
                self.rng.pick(&[T0, T1]),
                self.rng.pick(&[8080, 8443, 5300, 5353]),
                NAT_FIRST + self.rng.below(usize::from(NAT_LAST - NAT_FIRST) + 1) as u16,
                self.rng.pick(&[PROTO_TCP, PROTO_UDP]),
            ),
        };
        let (kind, code) = match self.rng.below(10) {
            0..4 => (UNREACHABLE, self.rng.pick(&[0, 1, 3, 4, 4, 13])),
            4..6 => (TIME_EXCEEDED, self.rng.pick(&[0, 1])),
            6 => (PARAMETER_PROBLEM, 0),
            7 => (self.rng.pick(&[ECHO_REQUEST, ECHO_REPLY, 5, 4]), 0),
            _ => (self.rng.pick(&[UNREACHABLE, TIME_EXCEEDED]), 0),
        };
        let mut body = vec![kind, code, 0, 0, 0, 0];
        let mtu = if kind == UNREACHABLE && code == FRAG_NEEDED {
            self.rng.pick(&[1400u16, 1280, 576])
        } else {
            0
        };
        body.extend(mtu.to_be_bytes());
        // The quote: what the node sent (an IPv4 header, now and then off, and the
        // first 8 bytes of TCP or UDP).
        let mut quote = vec![0x45, 0];
        quote.extend(self.rng.pick(&[60u16, 1500, 40]).to_be_bytes());
        quote.extend(self.rng.u16().to_be_bytes());
        quote.extend([DF, 0, self.rng.pick(&[63, 1, 62]), proto, 0, 0]);
        quote.extend(NAT);
        quote.extend(target);
        let check = !fold(sum(&quote, 0));
        quote[10..12].copy_from_slice(&check.to_be_bytes());
        quote.extend(nat_port.to_be_bytes());
        quote.extend(target_port.to_be_bytes());
        if proto == PROTO_UDP {
            quote.extend(self.rng.pick(&[20u16, 100, 1480]).to_be_bytes());
            quote.extend(self.rng.pick_or(&[0, 0xffff], Rng::u16).to_be_bytes());
        } else {
            quote.extend(self.rng.bytes(4));
        }
        match self.rng.below(20) {
            0 => quote[12..16].copy_from_slice(&NODE),
            1 => quote[9] = self.rng.pick(&[1, 0, 47]),
            2 => quote[0] = self.rng.pick(&[0x46, 0x44, 0x65]),
            3 => quote.swap(20, 22),
            4 => quote[11] ^= 0x10,
            5 => quote.truncate(self.rng.below(28)),
            6..9 => {
                let n = self.rng.below(100);
                quote.extend(self.rng.bytes(n));
            }
            _ => {}
        }
        body.extend(quote);
        let src = if self.rng.chance(70) {
            target
        } else {
            self.rng.pick(&[NODE, [172, 16, 0, 254], [192, 168, 99, 1]])
        };
        let dst = if self.rng.chance(90) { NAT } else { NODE };
        let macs = (TARGETS[0].1, self.ports[port].mac);
        let mut f = ipv4_frame(macs, src, dst, 1, &body);
        f[22] = self.ttl(8);
        fix_checksums(&mut f);
        (port, f)
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
            MULTI[1],
            RESOLVER_A,
            RESOLVER_B,
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
                payload: self.payload(40),
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

    /// A DNS query, mostly to the resolver address of the interface's network, now and
    /// then to another address or port, over TCP, from a source or MAC that cannot ask,
    /// with a checksum wrong or on a provider interface; a quarter of the messages
    /// mutated, some frames too.
    fn dns_frame(&mut self) -> (usize, Vec<u8>) {
        self.tally.dns.frames += 1;
        if self.rng.chance(2) {
            return self.zero_sum_query();
        }
        let port = match self.rng.below(20) {
            0 => self.rng.pick(&[PROV, PROV2]),
            1..10 => CONS_A,
            _ => CONS_B,
        };
        let own = match port {
            CONS_A => RESOLVER_A,
            CONS_B => RESOLVER_B,
            _ => self.rng.pick(&[RESOLVER_A, RESOLVER_B]),
        };
        let dst = if self.rng.chance(85) {
            own
        } else {
            self.rng.pick(&[
                RESOLVER_A,
                RESOLVER_B,
                DNS,
                ENDPOINT,
                MULTI[1],
                [10, 0, 0, 1],
                NODE,
            ])
        };
        let dport = if self.rng.chance(92) {
            53
        } else {
            self.rng.pick_or(&[5353, 853, 54, 0, NAT_FIRST], Rng::u16)
        };
        let mut message = self.dns_message(port);
        if self.rng.chance(25) {
            self.tally.dns.mutated += 1;
            self.mutate_dns(&mut message);
        }
        let src = match self.rng.below(20) {
            0 => self.rng.pick(&[RESOLVER_A, RESOLVER_B, MULTI[0], DNS]),
            1 => self.client(),
            _ => self.rng.pick(&[
                CLIENT,
                [10, 0, 0, 11],
                [10, 0, 0, 200],
                [10, 0, 1, 1],
                [192, 168, 7, 7],
            ]),
        };
        let sport = if self.rng.chance(50) {
            self.rng.u16()
        } else {
            self.rng.pick(&[53, 40053, 5353, 65535])
        };
        let mac_src = if self.rng.chance(96) {
            CLIENT_MAC
        } else {
            self.rng
                .pick(&[[1, 0, 0x5e, 0, 0, 1], [0xff; 6], [2, 0, 0, 0, 1, 9]])
        };
        let mac_dst = if self.rng.chance(96) {
            self.ports[port].mac
        } else {
            self.rng.pick(&[[0xff; 6], [2, 9, 9, 9, 9, 9]])
        };
        let mut f = if self.rng.chance(4) {
            // DNS over TCP (a SYN, or the message with its length).
            let syn = self.rng.chance(50);
            let mut payload = Vec::new();
            if !syn {
                payload.extend((message.len() as u16).to_be_bytes());
                payload.extend(&message);
            }
            Wire {
                mac_src,
                mac_dst,
                src,
                dst,
                sport,
                dport,
                ttl: 64,
                seq: self.rng.u32(),
                ack: self.rng.u32(),
                flags: if syn { SYN } else { ACK | PSH },
                window: 1024,
                options: Vec::new(),
                payload,
            }
            .frame()
        } else {
            Datagram {
                mac_src,
                mac_dst,
                src,
                dst,
                sport,
                dport,
                ttl: self.ttl(10),
                df: self.rng.chance(70),
                checksum: self.rng.chance(85),
                payload: message,
            }
            .frame()
        };
        match self.rng.below(50) {
            // A wrong IPv4 or UDP checksum.
            0 => f[25] ^= 1 << self.rng.below(8),
            1 if f[23] == 17 => f[41] ^= 1 << self.rng.below(8),
            // Bytes after the IPv4 packet (Ethernet padding).
            2 | 3 => {
                let n = 1 + self.rng.below(40);
                f.extend(self.rng.bytes(n));
            }
            _ => {}
        }
        if self.rng.chance(6) {
            self.tally.mutated += 1;
            self.mutate(&mut f);
        }
        f.truncate(MAX_FRAME);
        (port, f)
    }

    /// A query for a name that is not ours whose ID makes the REFUSED answer's UDP
    /// checksum compute to 0 (sent as 0xFFFF): the answer is the query with other flags.
    fn zero_sum_query(&mut self) -> (usize, Vec<u8>) {
        let port = self.rng.pick(&[CONS_A, CONS_B]);
        let resolver = resolver(self.ports[port].vpc);
        let sport = self.rng.u16();
        let flags = if self.rng.chance(50) { wire::RD } else { 0 };
        let mut m = vec![0, 0, flags, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let top = self.rng.pick(&["com", "org", "net"]);
        for label in [self.label(), top.as_bytes().to_vec()] {
            m.push(label.len() as u8);
            m.extend(label);
        }
        m.extend([0, 0, 1, 0, 1]);
        let mut answer = m.clone();
        answer[2] |= wire::QR;
        answer[3] = wire::REFUSED;
        let udp_len = (8 + answer.len()) as u64;
        let pseudo = sum(&resolver, sum(&CLIENT, 17 + udp_len));
        let acc = sum(&answer, pseudo + 53 + u64::from(sport) + udp_len);
        let id = 0xffff - fold(acc);
        m[0..2].copy_from_slice(&id.to_be_bytes());
        let datagram = Datagram {
            mac_src: CLIENT_MAC,
            mac_dst: self.ports[port].mac,
            src: CLIENT,
            dst: resolver,
            sport,
            dport: 53,
            ttl: 64,
            df: true,
            checksum: true,
            payload: m,
        };
        (port, datagram.frame())
    }

    /// A well-formed query: a random ID, RD or not (other flag bits now and then), one
    /// question — a name from [`Fuzz::dns_name`], mostly type A and class IN — and EDNS
    /// (OPT: payload size, DO, a cookie; now and then a version above 0) a third of the
    /// time; now and then bytes after it.
    fn dns_message(&mut self, port: usize) -> Vec<u8> {
        let mut m = self.rng.u16().to_be_bytes().to_vec();
        let mut flags = if self.rng.chance(50) { wire::RD } else { 0 };
        if self.rng.chance(10) {
            // TC, AA.
            flags |= self.rng.u8() & 0x06;
        }
        let more = if self.rng.chance(15) {
            self.rng.u8()
        } else {
            0
        };
        let edns = self.rng.chance(30);
        m.extend([flags, more, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        m.extend(self.dns_name(port));
        let qtype = self.rng.pick_or(
            &[
                wire::A,
                wire::A,
                wire::A,
                wire::A,
                wire::A,
                wire::A,
                wire::NS,
                wire::SOA,
                wire::AAAA,
                wire::NS,
                wire::SOA,
                wire::ANY,
                wire::AXFR,
                wire::IXFR,
                wire::MX,
                wire::TXT,
            ],
            Rng::u16,
        );
        let qclass = if self.rng.chance(90) {
            wire::IN
        } else {
            self.rng.pick_or(&[3, 4, 254, 255, 0], Rng::u16)
        };
        m.extend(qtype.to_be_bytes());
        m.extend(qclass.to_be_bytes());
        if edns {
            let payload = self.rng.pick_or(&[512, 1232, 4096, 65535, 0], Rng::u16);
            let extended = if self.rng.chance(90) {
                0
            } else {
                self.rng.u8()
            };
            let version = if self.rng.chance(85) {
                0
            } else {
                self.rng.pick_or(&[1, 2, 255], Rng::u8)
            };
            let do_bit: u16 = if self.rng.chance(50) { 0x8000 } else { 0 };
            let mut options = Vec::new();
            if self.rng.chance(30) {
                options.extend([0, 10, 0, 8]);
                options.extend(self.rng.bytes(8));
            }
            m.push(0);
            m.extend(wire::OPT.to_be_bytes());
            m.extend(payload.to_be_bytes());
            m.extend([extended, version]);
            m.extend(do_bit.to_be_bytes());
            m.extend((options.len() as u16).to_be_bytes());
            m.extend(options);
        }
        if self.rng.chance(4) {
            let n = self.rng.below(40);
            m.extend(self.rng.bytes(n));
        }
        m
    }

    /// A question's name in wire format: mostly a name the network of `port` has, or
    /// some network has (or had, or never had), or one under it; names under the domain
    /// or a private name, names not ours, the root, names near the 255-byte limit, labels
    /// of any bytes; half of them in random case (DNS 0x20).
    fn dns_name(&mut self, port: usize) -> Vec<u8> {
        let known = |fuzz: &mut Self| fuzz.known[fuzz.rng.below(fuzz.known.len())].clone();
        let names = &self.names[self.phase.index()][port.min(CONS_B)];
        // Names with addresses in more than one zone (their order depends on the
        // asker's).
        let zoned: Vec<&Labels> = names
            .iter()
            .filter(|(_, r)| r.addresses.len() > 1)
            .map(|(name, _)| name)
            .collect();
        let labels: Labels = match self.rng.below(27) {
            0..2 if !zoned.is_empty() => self.rng.pick(&zoned).clone(),
            25 | 26 => {
                let i = self.rng.below(names.len());
                let name = names.keys().nth(i).unwrap().clone();
                self.near_miss(name)
            }
            0..10 => {
                let i = self.rng.below(names.len());
                names.keys().nth(i).unwrap().clone()
            }
            10..15 => known(self),
            15..18 => [vec![self.label()], known(self)].concat(),
            18..20 => {
                let n = 1 + self.rng.below(3);
                let mut labels: Labels = (0..n).map(|_| self.label()).collect();
                labels.extend(labels_of(DOMAIN));
                labels
            }
            20 => {
                let top = self
                    .rng
                    .pick(&["com", "org", "example", "internal", "arpa"]);
                vec![self.label(), top.as_bytes().to_vec()]
            }
            21 => Vec::new(),
            22 => self.long_name(),
            23 => {
                let n = 1 + self.rng.below(3);
                let mut labels: Labels = (0..n)
                    .map(|_| {
                        let len = 1 + self.rng.below(20);
                        self.rng.bytes(len)
                    })
                    .collect();
                if self.rng.chance(50) {
                    labels.extend(labels_of(DOMAIN));
                }
                labels
            }
            _ => {
                let long: Vec<u8> = (0..63).map(|_| b'a' + self.rng.below(26) as u8).collect();
                [vec![long], known(self)].concat()
            }
        };
        let mixed = self.rng.chance(50);
        let mut out = Vec::new();
        for label in labels {
            out.push(label.len() as u8);
            for byte in label {
                let flip = mixed && byte.is_ascii_alphabetic() && self.rng.chance(50);
                out.push(if flip { byte ^ 0x20 } else { byte });
            }
        }
        out.push(0);
        out
    }

    /// A name that is not `name` but close to it: 0x20 flipped in a byte that is not a
    /// letter (not a case), two labels made one with the dot inside it, a byte one off.
    fn near_miss(&mut self, mut name: Labels) -> Labels {
        if name.is_empty() {
            return name;
        }
        let i = self.rng.below(name.len());
        match self.rng.below(3) {
            0 => {
                let label = &mut name[i];
                let others: Vec<usize> = (0..label.len())
                    .filter(|&j| !label[j].is_ascii_alphabetic())
                    .collect();
                match others.as_slice() {
                    [] => label[0] = label[0].wrapping_add(1),
                    some => label[self.rng.pick(some)] ^= 0x20,
                }
            }
            1 if i + 1 < name.len() => {
                let next = name.remove(i + 1);
                name[i].push(b'.');
                name[i].extend(next);
            }
            _ => {
                let label = &mut name[i];
                let j = self.rng.below(label.len());
                label[j] = label[j].wrapping_add(self.rng.pick(&[1, 255]));
            }
        }
        name
    }

    /// A label of letters, digits and '-', mostly short.
    fn label(&mut self) -> Vec<u8> {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        let len = if self.rng.chance(90) {
            1 + self.rng.below(12)
        } else {
            1 + self.rng.below(63)
        };
        (0..len).map(|_| self.rng.pick(CHARS)).collect()
    }

    /// A name of about 255 bytes in wire format (exactly 255 or 256 more often than
    /// not), under the domain or a private name mostly.
    fn long_name(&mut self) -> Labels {
        let total = self
            .rng
            .pick_or(&[255, 255, 256, 256, 254], |r| 200 + r.below(80));
        let suffix = match self.rng.below(4) {
            0 | 1 => labels_of(DOMAIN),
            2 => labels_of(
                self.rng
                    .pick(&["orders.corp.example", "secure.example.com"]),
            ),
            _ => Vec::new(),
        };
        // Bytes left for labels before the suffix and the root.
        let mut left = total - 1 - suffix.iter().map(|l| 1 + l.len()).sum::<usize>();
        let mut labels = Vec::new();
        while left >= 2 {
            let mut len = (left - 1).min(1 + self.rng.below(63));
            // Never leave a single byte: no label fits it.
            if left - 1 - len == 1 {
                len = if len > 1 { len - 1 } else { len + 1 };
            }
            labels.push(vec![b'x'; len]);
            left -= 1 + len;
        }
        labels.extend(suffix);
        labels
    }

    /// One to three mutations of a DNS message: cut short, a compression pointer, a
    /// label's length, a flag bit, QR, the counts, a byte, the opcode, bytes added,
    /// inserted or removed, the question a pointer.
    fn mutate_dns(&mut self, m: &mut Vec<u8>) {
        for _ in 0..1 + self.rng.below(3) {
            let len = m.len();
            match self.rng.below(12) {
                0 => m.truncate(self.rng.below(len + 1)),
                1 if len > 13 => {
                    let at = 12 + self.rng.below(len - 13);
                    m[at] = 0xc0 | (self.rng.u8() & self.rng.pick(&[0, 0x3f]));
                    m[at + 1] = self.rng.pick_or(&[12, 0, 2], Rng::u8);
                }
                2 if len > 12 => {
                    // A label's length byte (or the root's).
                    let mut starts = vec![12];
                    while let Some(&n) = m.get(*starts.last().unwrap()) {
                        if n == 0 || n > 63 {
                            break;
                        }
                        starts.push(starts.last().unwrap() + 1 + usize::from(n));
                    }
                    let at = self.rng.pick(&starts);
                    if at < len {
                        m[at] = self
                            .rng
                            .pick_or(&[0, 1, 62, 63, 64, 0x80, 0xc0, 0xff], Rng::u8);
                    }
                }
                3 if len >= 4 => m[2 + self.rng.below(2)] ^= 1 << self.rng.below(8),
                4 if len > 2 => m[2] |= wire::QR,
                5 if len >= 12 => {
                    let at = 4 + 2 * self.rng.below(4);
                    let count = self.rng.pick_or(&[0, 1, 2, 0xffff], Rng::u16);
                    m[at..at + 2].copy_from_slice(&count.to_be_bytes());
                }
                6 if len > 0 => {
                    let at = self.rng.below(len);
                    m[at] = self.rng.u8();
                }
                7 if len > 2 => {
                    let opcode = self.rng.pick_or(&[1, 2, 4, 5, 15], Rng::u8);
                    m[2] = (m[2] & !wire::OPCODE) | ((opcode << 3) & wire::OPCODE);
                }
                8 => {
                    let n = if self.rng.chance(70) {
                        1 + self.rng.below(64)
                    } else {
                        500 + self.rng.below(1000)
                    };
                    m.extend(self.rng.bytes(n));
                }
                9 if len > 12 => {
                    let at = 12 + self.rng.below(len - 11);
                    m.insert(at, self.rng.u8());
                }
                10 if len > 13 => {
                    m.remove(12 + self.rng.below(len - 12));
                }
                11 if len >= 12 => {
                    m.truncate(12);
                    m.extend([0xc0, 0x0c, 0, 1, 0, 1]);
                }
                _ => {}
            }
        }
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
                        _ => self.rng.pick(&[0, 19, 20, 27, 28, 39, 40, 41]),
                    };
                    f[16..18].copy_from_slice(&new.to_be_bytes());
                    // A UDP length that moves with it, so that short or long datagrams
                    // are whole otherwise.
                    if len >= 40 && f[23] == 17 && self.rng.chance(50) {
                        f[38..40].copy_from_slice(&new.wrapping_sub(20).to_be_bytes());
                    }
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
                        RESOLVER_A,
                        RESOLVER_B,
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
                    // The IPv4, TCP, UDP or ICMP checksum.
                    let at = self.rng.pick(&[24, 50, 40, 36]);
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
