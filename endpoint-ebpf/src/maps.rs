//! The maps. Sizes here are defaults; the agent sets the real ones from the node's
//! `tables` settings before loading.

use crate::conntrack::Opening;
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use endpoint_common::{
    counter::{self, Count},
    maps::{
        Address, AddressKey, Config, Endpoint, EndpointKey, Flow, FlowKey, Interface, NatAddress,
        SecurityGroup, SourcePrefix, Target,
    },
};

/// ifindex → role and consumer network of each attached interface.
#[map]
pub static INTERFACES: HashMap<u32, Interface> = HashMap::with_max_entries(256, 0);

/// (consumer network, endpoint IP, port, protocol) → endpoint. Config-sized maps
/// allocate entries on demand: their limits can be generous without costing memory.
#[map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// (endpoint, source prefix) → listeners the source may use, for endpoints with
/// security groups.
#[map]
pub static SECURITY_GROUPS: LpmTrie<SourcePrefix, SecurityGroup> =
    LpmTrie::with_max_entries(65536, 0);

/// (interface, IP) → endpoint and NAT addresses the node answers for there.
#[map]
pub static ADDRESSES: HashMap<AddressKey, Address> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// The provider-side addresses flows are translated to.
#[map]
pub static NAT: Array<NatAddress> = Array::with_max_entries(64, 0);

/// Node-wide settings (one entry).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Every target of every service.
#[map]
pub static TARGETS: Array<Target> = Array::with_max_entries(16384, 0);

/// Target rings, `ring_size` slots each, laid end to end: slot → index in `TARGETS`.
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(1 << 20, 0);

/// The connection table, both directions, shared by all CPUs (a reply may arrive on
/// another CPU than its request).
#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(1 << 18, 0);

/// Per-CPU scratch for opening a flow (see `conntrack::Opening`).
#[map]
pub static OPENING: PerCpuArray<Opening> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, per endpoint slot (see `endpoint_common::counter`).
#[map]
pub static STATS: PerCpuArray<Count> = PerCpuArray::with_max_entries(4097 * counter::COUNT, 0);
