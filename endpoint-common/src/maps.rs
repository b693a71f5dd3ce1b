//! Keys and values of every BPF map, and the registry of the maps themselves.
//!
//! Rules: fixed-width integers only, explicit `_pad` so no byte is left uninitialised
//! (keys are hashed byte for byte), `_be` for fields that hold packet bytes in network
//! order, sizes asserted below. The registry ([`MAPS`]) is the one list of map names,
//! kinds and sizes: the eBPF crate names its statics alike (the agent checks the object
//! against it) and the agent checks pinned maps against it before adopting them.
//!
//! Arrays the agent changes while packets read them are mmapped by the agent and
//! written with single aligned stores (see [`Map::mmapped`]): a map update copies a
//! value byte by byte, and a packet could read it half old, half new.

/// The version of this layout: bumped whenever a map's kind, key or value changes, so
/// that an agent never adopts maps pinned by one with another layout.
pub const LAYOUT: u32 = 9;

/// Address family codes.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// IP protocol numbers used in keys.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Endpoint slots are below `1 << SLOT_BITS`: the data path packs a slot in that many
/// bits with what it did to a packet.
pub const SLOT_BITS: u32 = 22;

/// Consumer-network id of reply-direction flow keys: the provider side is one network.
pub const PROVIDER_NETWORK: u32 = 0;

/// An IPv4 or IPv6 address as it appears in the packet; IPv4 uses word 0 only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    pub words_be: [u32; 4],
}

impl Addr {
    /// An IPv4 address from the four bytes in the packet.
    #[inline(always)]
    pub const fn ipv4(octets: [u8; 4]) -> Self {
        Self {
            words_be: [u32::from_ne_bytes(octets), 0, 0, 0],
        }
    }

    /// An IPv6 address from the sixteen bytes in the packet.
    #[inline(always)]
    pub const fn ipv6(octets: [u8; 16]) -> Self {
        // SAFETY: sixteen bytes either way; any bit pattern is a valid u32.
        Self {
            words_be: unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(octets) },
        }
    }

    /// The IPv4 address as it appears in the packet.
    #[inline(always)]
    pub const fn ipv4_be(self) -> u32 {
        self.words_be[0]
    }

    /// The sixteen bytes as they appear in the packet (IPv4: the first four).
    #[inline(always)]
    pub const fn octets(self) -> [u8; 16] {
        // SAFETY: sixteen bytes either way.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(self.words_be) }
    }

    /// The address as `family` ([`FAMILY_IPV4`] or [`FAMILY_IPV6`]) reads it.
    pub fn ip(self, family: u8) -> core::net::IpAddr {
        let octets = self.octets();
        if family == FAMILY_IPV6 {
            core::net::IpAddr::from(octets)
        } else {
            core::net::IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
        }
    }

    /// The address and a port as in the packet, as a socket address.
    pub fn socket(self, family: u8, port_be: u16) -> core::net::SocketAddr {
        core::net::SocketAddr::new(self.ip(family), u16::from_be(port_be))
    }

    /// The family code of `ip`.
    pub const fn family_of(ip: core::net::IpAddr) -> u8 {
        match ip {
            core::net::IpAddr::V4(_) => FAMILY_IPV4,
            core::net::IpAddr::V6(_) => FAMILY_IPV6,
        }
    }
}

impl From<core::net::IpAddr> for Addr {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(ip) => Self::ipv4(ip.octets()),
            core::net::IpAddr::V6(ip) => Self::ipv6(ip.octets()),
        }
    }
}

/// The kinds of map the data path uses (values of `bpf_map_type`).
pub mod kind {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PROG_ARRAY: u32 = 3;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LPM_TRIE: u32 = 11;
    pub const QUEUE: u32 = 22;
    pub const RINGBUF: u32 = 27;
}

/// A map of the data path: what the agent expects to find, loaded or pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Map {
    pub name: &'static str,
    pub kind: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// Written by the agent through an mmap (created with `BPF_F_MMAPABLE`).
    pub mmapped: bool,
}

const fn map<K, V>(name: &'static str, kind: u32, mmapped: bool) -> Map {
    Map {
        name,
        kind,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        mmapped,
    }
}

/// Map names, as the eBPF crate's statics are called.
pub mod name {
    pub const INTERFACES: &str = "INTERFACES";
    pub const PORTS: &str = "PORTS";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const POLICIES: &str = "POLICIES";
    pub const LIMITS: &str = "LIMITS";
    pub const USAGE: &str = "USAGE";
    pub const NETWORK_USAGE: &str = "NETWORK_USAGE";
    pub const SECURITY_GROUPS: &str = "SECURITY_GROUPS";
    pub const ADDRESSES: &str = "ADDRESSES";
    pub const SETTINGS: &str = "SETTINGS";
    pub const TARGETS: &str = "TARGETS";
    pub const RINGS: &str = "RINGS";
    pub const FLOWS: &str = "FLOWS";
    pub const HANDSHAKES: &str = "HANDSHAKES";
    pub const CLOSINGS: &str = "CLOSINGS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const FLOW_KEY: &str = "FLOW_KEY";
    pub const SEGMENT: &str = "SEGMENT";
    pub const BUDGETS: &str = "BUDGETS";
    pub const STATS: &str = "STATS";
    pub const RECORDS: &str = "RECORDS";
    pub const NAMES: &str = "NAMES";
    pub const DNS: &str = "DNS";
    pub const DNS_STATS: &str = "DNS_STATS";
    pub const PROGRAMS: &str = "PROGRAMS";
}

/// Slots of `PROGRAMS`: the programs the attached one hands packets to (tail calls).
pub mod program {
    /// Answers queries to a resolver address (its own program: the verifier checks
    /// each program within its own budget of a million instructions).
    pub const DNS: u32 = 0;
}

/// Every map of the data path.
pub const MAPS: &[Map] = &[
    map::<u32, Interface>(name::INTERFACES, kind::ARRAY, true),
    map::<u32, PortBitmap>(name::PORTS, kind::ARRAY, true),
    map::<EndpointKey, EndpointRef>(name::ENDPOINTS, kind::HASH, false),
    map::<u32, u64>(name::POLICIES, kind::ARRAY, true),
    map::<u32, Limits>(name::LIMITS, kind::ARRAY, false),
    map::<u32, Usage>(name::USAGE, kind::ARRAY, false),
    map::<u32, u64>(name::NETWORK_USAGE, kind::ARRAY, false),
    Map {
        // An LPM trie's key is a 4-byte prefix length, then the data.
        key_size: 4 + size_of::<SourcePrefix>() as u32,
        ..map::<SourcePrefix, SecurityGroup>(name::SECURITY_GROUPS, kind::LPM_TRIE, false)
    },
    map::<AddressKey, Address>(name::ADDRESSES, kind::HASH, false),
    map::<u32, Settings>(name::SETTINGS, kind::HASH, false),
    map::<u32, Target>(name::TARGETS, kind::ARRAY, false),
    map::<u32, u32>(name::RINGS, kind::ARRAY, true),
    map::<FlowKey, Flow>(name::FLOWS, kind::HASH, false),
    Map {
        key_size: 0,
        ..map::<(), Pending>(name::HANDSHAKES, kind::QUEUE, false)
    },
    Map {
        key_size: 0,
        ..map::<(), Pending>(name::CLOSINGS, kind::QUEUE, false)
    },
    map::<u32, Scratch>(name::SCRATCH, kind::PERCPU_ARRAY, false),
    map::<u32, FlowKey>(name::FLOW_KEY, kind::PERCPU_ARRAY, false),
    map::<u32, Segment>(name::SEGMENT, kind::PERCPU_ARRAY, false),
    map::<u32, Budget>(name::BUDGETS, kind::PERCPU_ARRAY, false),
    map::<u32, crate::counter::Count>(name::STATS, kind::PERCPU_ARRAY, false),
    map::<(), ()>(name::RECORDS, kind::RINGBUF, false),
    map::<NameKey, Name>(name::NAMES, kind::HASH, false),
    map::<u32, DnsSettings>(name::DNS, kind::HASH, false),
    map::<u32, crate::counter::Count>(name::DNS_STATS, kind::PERCPU_ARRAY, false),
    map::<u32, u32>(name::PROGRAMS, kind::PROG_ARRAY, false),
];

/// Interface roles (bits of [`Interface::roles`]).
pub mod role {
    /// Consumer traffic to endpoints arrives here.
    pub const CONSUMER: u8 = 1;
    /// Targets are reached, and replies arrive, here.
    pub const PROVIDER: u8 = 2;
}

/// `INTERFACES` (array indexed by ifindex, mmapped): what each attached interface is for.
/// The agent writes it as 8-byte words, the first (network, roles, bounce) in one store,
/// so a packet never sees an interface half moved to another network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// The consumer network (id ≥ 1) whose endpoints this interface serves.
    pub network: u32,
    /// [`role`] bits; 0: not attached.
    pub roles: u8,
    /// How a frame goes back out the interface it came in on ([`bounce`]).
    pub bounce: u8,
    /// Consumer interfaces: the zone its clients are in (0: none named), whose
    /// endpoint addresses DNS answers list first.
    pub zone: u8,
    pub _pad: u8,
    /// The interface's own Ethernet address: the source of what the node sends here.
    pub mac: [u8; 6],
    pub _pad2: u16,
    /// Provider interfaces: a packet is a reply only if it goes to a port in
    /// `nat_port_min..=nat_port_max` (host order); elsewhere it is the node's own.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// The interface's MTU: no packet longer than this (IPv4 total length) is sent out
    /// it. A flow keeps its route for a second without asking the kernel, and replies
    /// never ask: this is their check. 0: unknown, not checked.
    pub mtu: u32,
    /// Consumer interfaces: the network's IPv4 resolver address, where DNS queries to
    /// port 53 are answered (as in the packet; 0: none). An IPv6 one is in `ADDRESSES`
    /// only.
    pub resolver: [u8; 4],
    pub _pad3: u32,
}

impl Interface {
    #[inline(always)]
    pub const fn consumer(&self) -> bool {
        self.roles & role::CONSUMER != 0
    }

    #[inline(always)]
    pub const fn provider(&self) -> bool {
        self.roles & role::PROVIDER != 0
    }
}

/// Interfaces the `INTERFACES` array can describe: ifindex below this.
pub const MAX_IFINDEX: u32 = 1 << 16;

/// Ways to send a frame back out its ingress interface (values of [`Interface::bounce`]).
pub mod bounce {
    /// `XDP_TX`: the fast way on real NICs.
    pub const TX: u8 = 0;
    /// A redirect to the same interface. On veth, `XDP_TX` frames wait in the peer's ring
    /// until other traffic wakes it, unless the peer runs an XDP program; a redirect
    /// flushes them at once.
    pub const REDIRECT: u8 = 1;
}

/// `PORTS` (array, mmapped): per consumer network and protocol ([`ports_index`]), a bit
/// per port some endpoint listens on. A packet to another port is not endpoint traffic,
/// decided without a hash lookup.
pub type PortBitmap = [u64; 1024];

/// Where the bitmap of `network`'s ports of `proto` (TCP or UDP) is in `PORTS`.
#[inline(always)]
pub const fn ports_index(network: u32, proto: u8) -> u32 {
    network * 2 + (proto == PROTO_UDP) as u32
}

/// Acceptance states of an endpoint, as stored in the policy word.
pub mod state {
    pub const AVAILABLE: u8 = 1;
    pub const PENDING_ACCEPTANCE: u8 = 2;
    pub const PENDING: u8 = 3;
    pub const REJECTED: u8 = 4;
    pub const FAILED: u8 = 5;
    pub const DELETING: u8 = 6;
    pub const DELETED: u8 = 7;
    pub const EXPIRED: u8 = 8;
}

/// Bits of the policy word's flags.
pub mod policy_flag {
    /// Only sources in the endpoint's security groups may use it (`SECURITY_GROUPS`).
    pub const SECURITY_GROUPS: u8 = 1;
    /// When the endpoint stops being available or is deleted, its connections are reset
    /// (both ends get a RST) instead of drained or dropped.
    pub const RESET_ON_REVOKE: u8 = 2;
}

/// An endpoint's policy as one 64-bit word (`POLICIES`, per endpoint slot, mmapped and
/// written with one store): the endpoint's unique id (never reused: 0 = no endpoint),
/// the revision of its security groups, its state and flags. A flow keeps the word it
/// was last admitted under; while the endpoint's word is the same, nothing needs
/// checking again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    pub uid: u32,
    /// 24 bits.
    pub revision: u32,
    /// 4 bits.
    pub state: u8,
    /// 4 bits ([`policy_flag`]).
    pub flags: u8,
}

impl Policy {
    #[inline(always)]
    pub const fn word(self) -> u64 {
        (self.uid as u64) << 32
            | ((self.revision & 0xff_ffff) as u64) << 8
            | ((self.state & 0xf) as u64) << 4
            | (self.flags & 0xf) as u64
    }

    #[inline(always)]
    pub const fn of(word: u64) -> Self {
        Self {
            uid: (word >> 32) as u32,
            revision: ((word >> 8) & 0xff_ffff) as u32,
            state: ((word >> 4) & 0xf) as u8,
            flags: (word & 0xf) as u8,
        }
    }
}

/// `ENDPOINTS` key: a listener port of an endpoint in a consumer network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointKey {
    pub network: u32,
    pub addr: Addr,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

/// `ENDPOINTS` value: which endpoint, and what its listener on this port uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointRef {
    /// The endpoint's slot (≥ 1) in `POLICIES`, `LIMITS`, `USAGE` and `STATS`.
    pub slot: u32,
    /// The target ring (`RINGS` row) new flows are hashed over.
    pub ring: u32,
    /// This port's index among the endpoint's listeners (bit in [`SecurityGroup::ports`]).
    pub listener: u32,
}

/// `LIMITS` (array, per endpoint slot): what a new connection must fit in, and how long
/// an idle one lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections idle this long are removed (the service's
    /// `idle_timeout_seconds`) ...
    pub idle_timeout_s: u32,
    /// ... and UDP flows this long (`udp_idle_timeout_seconds`).
    pub udp_idle_timeout_s: u32,
    /// Open connections at once (0: no limit).
    pub connections: u32,
    /// Connections still in their handshake at once.
    pub half_open: u32,
    /// New connections: one per `interval_ns` on average (0: no limit) ...
    pub interval_ns: u64,
    /// ... with bursts of up to this much ahead of that pace.
    pub burst_ns: u64,
    /// The largest TCP MSS a SYN or SYN-ACK of the endpoint may announce (the
    /// service's `mss`; 0: only what the interfaces' MTUs allow).
    pub mss: u16,
    pub _pad: [u8; 6],
}

/// `USAGE` (array, per endpoint slot): written by the data path only, atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Open connections (flows that count as [`tcp::ACTIVE`]).
    pub connections: u64,
    /// Connections in their handshake ([`tcp::HALF_OPEN`]).
    pub half_open: u64,
    /// The rate limit's theoretical arrival time (GCRA), monotonic nanoseconds.
    pub next_ns: u64,
}

/// `SECURITY_GROUPS` key data (an LPM trie, whose keys are a prefix length followed by
/// this): the endpoint's slot, then the source address. A rule's prefix length is
/// [`SourcePrefix::FIXED_BITS`] + its CIDR's length, so the endpoint always matches whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePrefix {
    pub slot: u32,
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}

impl SourcePrefix {
    /// Bits before the address: slot and family.
    pub const FIXED_BITS: u32 = 40;
}

/// `SECURITY_GROUPS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Listener indices ([`EndpointRef::listener`]) sources under this prefix may use.
    pub ports: u32,
}

/// `ADDRESSES` key: an address the node answers for, in a scope: a consumer network
/// (endpoint addresses) or a provider interface ([`nat_scope`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressKey {
    pub scope: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: Addr,
}

/// The scope of NAT addresses on the provider interface `ifindex`.
#[inline(always)]
pub const fn nat_scope(ifindex: u32) -> u32 {
    0x8000_0000 | ifindex
}

/// What an owned address is (values of [`Address::kind`]).
pub mod address_kind {
    /// An endpoint IP in a consumer network: ARP for it is answered.
    pub const ENDPOINT: u32 = 1;
    /// A provider-side NAT address: ARP for it is answered.
    pub const NAT: u32 = 2;
    /// The IP of an endpoint request that was never accepted: ARP for it is not
    /// answered (a request claims no address), only counted for the endpoint.
    pub const WAITING: u32 = 3;
    /// A consumer network's resolver address: ARP or neighbour discovery for it is
    /// answered, DNS to it too.
    pub const RESOLVER: u32 = 4;
    /// An endpoint IP another node of its zone holds (a fleet's failover): traffic
    /// that arrives is carried as for `ENDPOINT`, but ARP is left to the holder.
    pub const STANDBY: u32 = 5;
}

/// `ADDRESSES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Address {
    /// [`address_kind`].
    pub kind: u32,
    /// Endpoint addresses: the endpoint's slot.
    pub slot: u32,
}

/// The provider-side source addresses flows are translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatAddress {
    pub addr: Addr,
    /// The provider interface the address lives on: where the route to a target is
    /// looked up from.
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// NAT addresses a node may have.
pub const MAX_NAT_ADDRESSES: usize = 64;

/// `SETTINGS` (a hash map with the one key 0, so that a change replaces it whole):
/// node-wide settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Slots per target ring (a prime).
    pub ring_size: u32,
    /// Seed of the flow hash; the same on every node so they choose alike.
    pub hash_seed: u32,
    /// NAT ports are taken from `nat_port_min..=nat_port_max` (host order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// How many of `nat` are in use: the first `nat_ipv4` are IPv4 addresses, the
    /// next `nat_ipv6` IPv6 (a flow is translated to one of its target's family).
    pub nat_ipv4: u16,
    pub nat_ipv6: u16,
    /// Connections in their handshake at once, per consumer network.
    pub half_open_per_network: u32,
    /// RST answers each CPU may send per second.
    pub resets_per_second: u32,
    /// ICMP messages of its own (fragmentation needed, time exceeded, echo replies)
    /// each CPU may send per second.
    pub icmp_per_second: u32,
    /// 1: a [`FlowRecord`] goes to `RECORDS` when a connection opens and when it ends.
    pub flow_records: u32,
    /// A handshake that has not completed after this long is dropped.
    pub handshake_s: u32,
    /// A closed connection lingers this long for the last ACKs ...
    pub closed_s: u32,
    /// ... or, when the target closed first, this long: the target keeps the tuple in
    /// TIME_WAIT (Linux: 60 s), and the NAT port must not be reused meanwhile.
    pub time_wait_s: u32,
    pub nat: [NatAddress; MAX_NAT_ADDRESSES],
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ring_size: 0,
            hash_seed: 0,
            nat_port_min: 0,
            nat_port_max: 0,
            nat_ipv4: 0,
            nat_ipv6: 0,
            half_open_per_network: 0,
            resets_per_second: 0,
            icmp_per_second: 0,
            flow_records: 0,
            handshake_s: 0,
            closed_s: 0,
            time_wait_s: 0,
            nat: [NatAddress::default(); MAX_NAT_ADDRESSES],
        }
    }
}

/// `TARGETS` (array) entries: where a ring slot sends a flow. An index is written once
/// for a target and not reused while a ring may point at it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub addr: Addr,
    pub port_be: u16,
    pub family: u8,
    pub _pad: u8,
}

/// A `RINGS` slot that holds no target.
pub const NO_TARGET: u32 = u32::MAX;

/// `FLOWS` key: one direction of a flow (TCP or UDP, IPv4 or IPv6), as it arrives.
/// Consumer-to-target keys carry the consumer network in `scope`, so equal addresses in
/// two consumer networks never meet; target-to-consumer keys carry
/// [`PROVIDER_NETWORK`]. The family is in `scope` too: an IPv4 address and an IPv6 one
/// whose first word is the same are different keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// `network << 16 | family << 8 | protocol` (networks are below `1 << 14`).
    pub scope: u32,
}

impl FlowKey {
    #[inline(always)]
    pub const fn scope(network: u32, family: u8, proto: u8) -> u32 {
        network << 16 | (family as u32) << 8 | proto as u32
    }

    #[inline(always)]
    pub const fn network(&self) -> u32 {
        self.scope >> 16
    }

    #[inline(always)]
    pub const fn family(&self) -> u8 {
        (self.scope >> 8) as u8
    }

    #[inline(always)]
    pub const fn proto(&self) -> u8 {
        self.scope as u8
    }
}

/// `FLOWS` value: how to translate and where to send a packet of this direction, whose
/// endpoint it belongs to, and (in the consumer-to-target entry) the connection's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// The endpoint's policy word when the flow was last admitted.
    pub policy: u64,
    /// When the connection was opened (monotonic ns): tells this connection from a later
    /// one with the same key.
    pub opened_ns: u64,
    /// The second a packet last used this direction (monotonic clock), written at most
    /// once a second with compare-and-swap; [`DEAD`] while the flow is being removed.
    pub last_seen_s: u64,
    /// Consumer-to-target entry: [`tcp`] bits, changed atomically (a UDP flow has only
    /// [`tcp::ACTIVE`]). Reply entry: only [`tcp::RESERVED`].
    pub tcp: u64,
    /// The packet's new source and destination (of `family`).
    pub src: Addr,
    pub dst: Addr,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// Egress interface. Replies: the consumer interface the flow came in on (a route
    /// lookup cannot tell overlapping consumer networks apart). Towards the target: the
    /// route lookup's result, kept and checked again once a second.
    pub ifindex: u32,
    /// Towards the target: the interface the route is looked up from (the NAT
    /// address's). Replies: the provider interface they must arrive on.
    pub via: u32,
    /// The consumer network of the connection.
    pub network: u32,
    /// The endpoint's slot and the target (index) the flow went to.
    pub slot: u32,
    pub target: u32,
    /// What this direction's sender acknowledged last (host order) and its receive
    /// window (scaled): a RST or FIN from the other end must fall in it.
    pub ack: u32,
    pub window: u32,
    /// This direction's sender's first sequence number after its SYN: what a RST must
    /// acknowledge before the other end acknowledged anything.
    pub isn_next: u32,
    /// Ethernet addresses out of `ifindex`: towards the target, the route's; replies,
    /// (the interface's own, taken when sent, and) the client's.
    pub mac_src: [u8; 6],
    pub mac_dst: [u8; 6],
    /// This direction's sender's window scale (from its SYN).
    pub wscale: u8,
    /// The endpoint listener's index (its bit in [`SecurityGroup::ports`]).
    pub listener: u8,
    /// The flow's protocol (`PROTO_TCP`, `PROTO_UDP`), as in its keys.
    pub proto: u8,
    /// The family of `src` and `dst`.
    pub family: u8,
    pub _pad: [u8; 4],
    /// What this direction carried (whole frames), added to atomically.
    pub packets: u64,
    pub bytes: u64,
}

impl Flow {
    /// The key replies of this consumer-to-target entry arrive with.
    #[inline(always)]
    pub const fn reply_key(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port_be: self.dst_port_be,
            dst_port_be: self.src_port_be,
            scope: FlowKey::scope(PROVIDER_NETWORK, self.family, self.proto),
        }
    }
}

/// [`Flow::last_seen_s`] of a flow being removed.
pub const DEAD: u64 = u64::MAX;

/// Bits of [`Flow::tcp`].
pub mod tcp {
    /// The target's SYN-ACK was seen (it acknowledged the consumer's SYN).
    pub const SYN_ACKED: u64 = 1;
    /// The handshake completed (the consumer acknowledged the SYN-ACK).
    pub const ESTABLISHED: u64 = 2;
    /// The consumer sent a FIN.
    pub const FIN_CONSUMER: u64 = 4;
    /// The target sent a FIN.
    pub const FIN_TARGET: u64 = 8;
    /// The target closed first: it keeps the tuple in TIME_WAIT, so the NAT port waits.
    pub const TARGET_CLOSED_FIRST: u64 = 16;
    /// A RST in the window was seen (or sent by the node).
    pub const RESET: u64 = 32;
    /// Counted in the endpoint's and network's half-open connections.
    pub const HALF_OPEN: u64 = 64;
    /// Counted in the endpoint's open connections.
    pub const ACTIVE: u64 = 128;
    /// Queued to be removed after its close.
    pub const CLOSE_QUEUED: u64 = 256;
    /// A reply entry whose connection is gone, kept only so that its NAT port is not
    /// reused while the target may hold the tuple in TIME_WAIT.
    pub const RESERVED: u64 = 512;

    /// Both ends closed, or the connection was reset.
    #[inline(always)]
    pub const fn closed(bits: u64) -> bool {
        bits & RESET != 0 || bits & (FIN_CONSUMER | FIN_TARGET) == FIN_CONSUMER | FIN_TARGET
    }
}

/// `HANDSHAKES` and `CLOSINGS` (queues) items: a connection to look at again once it may
/// have run out (a handshake that never completed; a closed connection's linger).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The consumer-to-target key.
    pub key: FlowKey,
    /// Which connection of that key ([`Flow::opened_ns`]).
    pub opened_ns: u64,
    /// When it was queued (monotonic ns).
    pub since_ns: u64,
}

/// Flow keys one run of the `expire` program looks at, at most: with its 16-byte header
/// they fit in the page a test run's frame may fill.
pub const EXPIRE_KEYS: u32 = 80;

/// `RECORDS` (a ring buffer the agent reads) items: a connection opened or ended, for
/// connection logs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// [`record`].
    pub kind: u32,
    pub network: u32,
    /// The consumer-to-target key: client and endpoint address and port, protocol.
    pub key: FlowKey,
    /// What the target sees (NAT address and port) and the target, of `family`.
    pub nat: Addr,
    pub target: Addr,
    pub nat_port_be: u16,
    pub target_port_be: u16,
    /// The endpoint's slot.
    pub slot: u32,
    pub family: u8,
    pub _pad: [u8; 7],
    pub opened_ns: u64,
    /// When it opened or ended (monotonic ns).
    pub at_ns: u64,
    /// Consumer to target, then target to consumer (whole frames).
    pub forward_packets: u64,
    pub forward_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// Kinds of [`FlowRecord`].
pub mod record {
    pub const OPENED: u32 = 1;
    pub const ENDED: u32 = 2;
}

/// `RECORDS`' size in bytes (a power of two of pages): about 11,000 records waiting.
pub const RECORDS_BYTES: u32 = 1 << 20;

/// `SCRATCH`: per-CPU room for what opening a flow builds (the 512-byte stack cannot
/// hold it along the program's call chain).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Scratch {
    pub forward: Flow,
    pub reply: Flow,
    pub reply_key: FlowKey,
    pub target: Target,
    pub nat: NatAddress,
    pub hash: u32,
    pub target_index: u32,
    /// The new connection's handshake, queued.
    pub pending: Pending,
}

/// Longest TCP segment or UDP datagram (header and payload) whose checksum is verified
/// before it opens a flow: a SYN is short, but may carry data (TCP Fast Open); a first
/// datagram may fill a jumbo frame.
pub const MAX_SEGMENT: usize = 9216;

/// Room for any length a 14-bit mask lets through (what the verifier is shown).
pub const SEGMENT_ROOM: usize = 1 << 14;

/// `SEGMENT`: per-CPU room for a segment whose checksum is verified (padded to 4 bytes).
pub type Segment = [u8; SEGMENT_ROOM + 4];

/// `BUDGETS` (per CPU): what the node may still send of its own this second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub second: u32,
    pub resets: u32,
    pub icmp: u32,
}

/// `NAMES` key: a DNS name (its [`crate::dns`] hash) one consumer network may ask the
/// node about.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameKey {
    pub network: u32,
    pub _pad: u32,
    pub hash: u64,
}

/// Addresses one name may have (one per zone of an endpoint): answers always fit 512
/// bytes.
pub const MAX_NAME_ADDRESSES: usize = 8;

/// Bits of [`Name::flags`].
pub mod name_flag {
    /// The name is a zone apex: it has the zone's SOA and NS records, and names under it
    /// that the network has not are NXDOMAIN.
    pub const APEX: u8 = 1;
}

/// `NAMES` value: a name's A and AAAA records, for one consumer network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Name {
    /// The name's own key. The kernel may give a replaced or deleted element to another
    /// key at once, even while a program reads it: the data path copies the value and
    /// keeps the copy only if this was its key before and after.
    pub key: NameKey,
    /// [`name_flag`] bits.
    pub flags: u8,
    /// How many of `addrs` are used (0: the name has no A record).
    pub count: u8,
    /// The labels of the apex of the zone the name is in: the owner of the SOA in a
    /// negative answer is that suffix of the question's name.
    pub apex_labels: u8,
    /// How many of `addrs6` are used (0: the name has no AAAA record).
    pub count6: u8,
    /// Each address's zone id ([`Interface::zone`]).
    pub zones: [u8; MAX_NAME_ADDRESSES],
    pub zones6: [u8; MAX_NAME_ADDRESSES],
    /// The records' TTL, as in the packet (`dns.ttl_seconds`; here too, so that an
    /// answer needs no other lookup).
    pub ttl: [u8; 4],
    /// The addresses, as in the packet. The IPv6 ones last: an answer without AAAA
    /// records reads only the words before them ([`NAME_WITHOUT_AAAA`]).
    pub addrs: [[u8; 4]; MAX_NAME_ADDRESSES],
    pub addrs6: [[u8; 16]; MAX_NAME_ADDRESSES],
}

/// The bytes of a [`Name`] before its IPv6 addresses.
pub const NAME_WITHOUT_AAAA: usize = core::mem::offset_of!(Name, addrs6);

/// Longest SOA and NS records, after their owner name (validated: the domain is at most
/// 64 bytes in wire format).
pub const MAX_SOA: usize = 176;
pub const MAX_NS: usize = 80;

/// `DNS` (a hash map with the one key 0, replaced whole): what every zone's answers
/// share.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// The records' TTL, as in the packet (each `Name` carries it too, for answers;
    /// `plan` shows it from here).
    pub ttl: [u8; 4],
    pub soa_len: u16,
    pub ns_len: u16,
    /// The SOA record after its owner name: type, class, TTL, length and data (every
    /// zone's is the same: `ns.<domain>`, `hostmaster.<domain>`).
    pub soa: [u8; MAX_SOA],
    /// The NS record likewise (`ns.<domain>`).
    pub ns: [u8; MAX_NS],
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            ttl: [0; 4],
            soa_len: 0,
            ns_len: 0,
            soa: [0; MAX_SOA],
            ns: [0; MAX_NS],
        }
    }
}

/// `DNS_STATS` (per CPU): per consumer network, what its resolver addresses answered
/// (indexed `network * dns_counter::COUNT + counter`).
pub mod dns_counter {
    /// Answers with records, or none of the type asked (NODATA).
    pub const ANSWER: u32 = 0;
    pub const NXDOMAIN: u32 = 1;
    /// Names that are not ours (or not this network's).
    pub const REFUSED: u32 = 2;
    /// Malformed queries, answered (FORMERR) or dropped.
    pub const MALFORMED: u32 = 3;
    pub const COUNT: u32 = 4;
    pub const NAMES: [&str; COUNT as usize] = ["answer", "nxdomain", "refused", "malformed"];
}

/// Longest DNS message the data path reads or writes (a query's excess is not read); it
/// is read, and its answer built, in the per-CPU `SEGMENT`.
pub const DNS_ROOM: usize = 512;

const _: () = {
    assert!(size_of::<Addr>() == 16);
    assert!(size_of::<Interface>() == 32);
    assert!(size_of::<NameKey>() == 16);
    assert!(size_of::<Name>() == 200);
    assert!(NAME_WITHOUT_AAAA.is_multiple_of(8));
    assert!(size_of::<DnsSettings>() == 8 + MAX_SOA + MAX_NS);
    assert!(size_of::<PortBitmap>() == 8192);
    assert!(size_of::<EndpointKey>() == 24);
    assert!(size_of::<EndpointRef>() == 12);
    assert!(size_of::<Limits>() == 40);
    assert!(size_of::<Usage>() == 24);
    assert!(size_of::<SourcePrefix>() == 24);
    assert!(size_of::<SecurityGroup>() == 4);
    assert!(size_of::<AddressKey>() == 24);
    assert!(size_of::<Address>() == 8);
    assert!(size_of::<NatAddress>() == 24);
    assert!(size_of::<Settings>() == 44 + 24 * MAX_NAT_ADDRESSES);
    assert!(size_of::<Target>() == 20);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<Flow>() == 136);
    assert!(size_of::<FlowRecord>() == 144);
    assert!(size_of::<Pending>() == 56);
    assert!(size_of::<Budget>() == 12);
    assert!(size_of::<crate::counter::Count>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::counter::Count;

    // SAFETY: all of these are `repr(C)`, made of integers and byte arrays, with no
    // implicit padding (the size assertions above would catch it).
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for Interface {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointRef {}
    unsafe impl aya::Pod for Limits {}
    unsafe impl aya::Pod for Usage {}
    unsafe impl aya::Pod for SourcePrefix {}
    unsafe impl aya::Pod for SecurityGroup {}
    unsafe impl aya::Pod for AddressKey {}
    unsafe impl aya::Pod for Address {}
    unsafe impl aya::Pod for NatAddress {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Target {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for FlowRecord {}
    unsafe impl aya::Pod for Pending {}
    unsafe impl aya::Pod for Count {}
    unsafe impl aya::Pod for NameKey {}
    unsafe impl aya::Pod for Name {}
    unsafe impl aya::Pod for DnsSettings {}
}
