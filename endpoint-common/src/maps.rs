//! Keys and values of every BPF map.
//!
//! Rules: fixed-width integers only, explicit `_pad` so no byte is left uninitialised
//! (keys are hashed byte for byte), `_be` for fields that hold packet bytes in network
//! order, sizes asserted below. Addresses are always 16 bytes and keys carry a family and
//! a protocol, so IPv6 and UDP need no new layout.

/// Address family codes.
pub const FAMILY_IPV4: u8 = 4;
/// Address family codes.
pub const FAMILY_IPV6: u8 = 6;

/// IP protocol numbers used in keys.
pub const PROTO_TCP: u8 = 6;

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

    /// The IPv4 address as it appears in the packet.
    #[inline(always)]
    pub const fn ipv4_be(self) -> u32 {
        self.words_be[0]
    }
}

/// Interface roles (bits of [`Interface::roles`]).
pub mod role {
    /// Consumer traffic to endpoints arrives here.
    pub const CONSUMER: u32 = 1;
    /// Targets are reached, and replies arrive, here.
    pub const PROVIDER: u32 = 2;
}

/// `INTERFACES`: ifindex (u32) → what the interface is for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// [`role`] bits.
    pub roles: u32,
    /// The consumer network (id ≥ 1) whose endpoints this interface serves.
    pub network: u32,
    /// The interface's own Ethernet address, for ARP replies.
    pub mac: [u8; 6],
    /// How a frame goes back out the interface it came in on ([`bounce`]).
    pub bounce: u8,
    pub _pad: u8,
}

/// Ways to send a frame back out its ingress interface (values of [`Interface::bounce`]).
pub mod bounce {
    /// `XDP_TX`: the fast way on real NICs.
    pub const TX: u8 = 0;
    /// A redirect to the same interface. On veth, `XDP_TX` frames wait in the peer's ring
    /// until other traffic wakes it, unless the peer runs an XDP program; a redirect
    /// flushes them at once.
    pub const REDIRECT: u8 = 1;
}

/// Acceptance states of an endpoint, as stored in [`Endpoint::state`].
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

/// Bits of [`Endpoint::flags`].
pub mod endpoint_flag {
    /// Only sources in the endpoint's security groups may use it (`SECURITY_GROUPS`).
    pub const SECURITY_GROUPS: u8 = 1;
    /// When the endpoint stops being available, established flows are reset (the
    /// consumer gets a RST) instead of drained.
    pub const RESET_ON_REVOKE: u8 = 2;
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

/// `ENDPOINTS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Endpoint id (≥ 1): its slot in the `STATS` counters.
    pub id: u32,
    /// The target ring (`RINGS` row) new flows are hashed over.
    pub ring: u32,
    /// Service id, for per-service accounting.
    pub service: u32,
    /// Acceptance [`state`]; only `AVAILABLE` opens flows.
    pub state: u8,
    /// [`endpoint_flag`] bits.
    pub flags: u8,
    /// This port's index among the endpoint's listeners (bit in [`SecurityGroup::ports`]).
    pub listener: u8,
    pub _pad: u8,
}

/// `SECURITY_GROUPS` key data (an LPM trie, whose keys are a prefix length followed by
/// this): the endpoint, then the source address. A rule's prefix length is
/// [`SourcePrefix::FIXED_BITS`] + its CIDR's length, so the endpoint always matches whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePrefix {
    pub endpoint: u32,
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}

impl SourcePrefix {
    /// Bits before the address: endpoint and family.
    pub const FIXED_BITS: u32 = 40;
}

/// `SECURITY_GROUPS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Listener indices ([`Endpoint::listener`]) sources under this prefix may use.
    pub ports: u32,
}

/// `ADDRESSES` key: an address the node answers ARP for on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressKey {
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: Addr,
}

/// What an owned address is (values of [`Address::kind`]).
pub mod address_kind {
    /// An endpoint IP in a consumer network.
    pub const ENDPOINT: u32 = 1;
    /// A provider-side NAT address.
    pub const NAT: u32 = 2;
}

/// `ADDRESSES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Address {
    /// [`address_kind`].
    pub kind: u32,
    /// For NAT addresses: only packets to these ports (host order) are replies.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
}

/// `NAT` (array) entries: the provider-side source addresses flows are translated to.
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

/// `CONFIG` (array of one): node-wide settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Slots per target ring (a prime).
    pub ring_size: u32,
    /// How many `NAT` entries are in use.
    pub nat_addresses: u32,
    /// NAT ports are taken from `nat_port_min..=nat_port_max` (host order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Seed of the flow hash; the same on every node so they choose alike.
    pub hash_seed: u32,
}

/// `TARGETS` (array) entries: where a ring slot sends a flow.
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

/// `FLOWS` key: one direction of a connection, as it arrives.
///
/// Consumer-to-target keys carry the consumer network, so equal addresses in two
/// consumer networks never meet; target-to-consumer keys carry [`PROVIDER_NETWORK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub network: u32,
    pub src: Addr,
    pub dst: Addr,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `FLOWS` value: how to translate and where to send a packet of this direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// The packet's new source and destination.
    pub src: Addr,
    pub dst: Addr,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// The network of the opposite direction's key (to find it again).
    pub peer_network: u32,
    /// Endpoint id, for counters and policy.
    pub endpoint: u32,
    /// Target index the flow is pinned to.
    pub target: u32,
    /// Egress interface and Ethernet addresses. Replies: the interface the flow came in
    /// on and the MACs it came with (a route lookup cannot tell overlapping consumer
    /// networks apart). Towards the target: the route lookup's result, kept and checked
    /// again once a second.
    pub ifindex: u32,
    pub mac_src: [u8; 6],
    pub mac_dst: [u8; 6],
    /// Towards the target: the interface the route is looked up from (the NAT address's).
    pub route_from: u32,
    /// When a packet last used this direction (monotonic clock, seconds); written at
    /// most once a second, for the agent's idle expiry.
    pub last_seen_s: u32,
    /// [`flow_flag`] bits.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// Bits of [`Flow::flags`].
pub mod flow_flag {
    /// A FIN or RST was seen: the connection is ending, expire it soon.
    pub const CLOSING: u8 = 1;
}

const _: () = {
    assert!(size_of::<Addr>() == 16);
    assert!(size_of::<Interface>() == 16);
    assert!(size_of::<EndpointKey>() == 24);
    assert!(size_of::<Endpoint>() == 16);
    assert!(size_of::<AddressKey>() == 24);
    assert!(size_of::<Address>() == 8);
    assert!(size_of::<NatAddress>() == 24);
    assert!(size_of::<Config>() == 16);
    assert!(size_of::<Target>() == 20);
    assert!(size_of::<FlowKey>() == 44);
    assert!(size_of::<Flow>() == 76);
    assert!(size_of::<SourcePrefix>() == 24);
    assert!(size_of::<SecurityGroup>() == 4);
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
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for AddressKey {}
    unsafe impl aya::Pod for Address {}
    unsafe impl aya::Pod for NatAddress {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Target {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for SourcePrefix {}
    unsafe impl aya::Pod for SecurityGroup {}
    unsafe impl aya::Pod for Count {}
}
