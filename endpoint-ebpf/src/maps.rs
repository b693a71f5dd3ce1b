//! The maps, named as `endpoint_common::maps::name` lists them (the agent checks). Sizes
//! here are defaults: the agent sets the real ones from the node's `tables` before
//! loading.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray, Queue, RingBuf},
};
use endpoint_common::{
    counter::{self, Count},
    maps::{
        Address, AddressKey, Budget, DnsSettings, EndpointKey, EndpointRef, Flow, FlowKey,
        Interface, Limits, MAX_IFINDEX, Name, NameKey, Pending, PortBitmap, RECORDS_BYTES, Scratch,
        SecurityGroup, Segment, Settings, SourcePrefix, Target, Usage, dns_counter,
    },
};

/// ifindex → what the interface is for (mmapped by the agent).
#[map]
pub static INTERFACES: Array<Interface> = Array::with_max_entries(MAX_IFINDEX, BPF_F_MMAPABLE);

/// Consumer network → ports some endpoint listens on (mmapped by the agent).
#[map]
pub static PORTS: Array<PortBitmap> = Array::with_max_entries(256, BPF_F_MMAPABLE);

/// (consumer network, endpoint IP, port, protocol) → endpoint. Config-sized maps
/// allocate entries on demand: their limits can be generous without costing memory.
#[map]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointRef> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Endpoint slot → policy word (mmapped by the agent).
#[map]
pub static POLICIES: Array<u64> = Array::with_max_entries(8193, BPF_F_MMAPABLE);

/// Endpoint slot → limits and idle timeout.
#[map]
pub static LIMITS: Array<Limits> = Array::with_max_entries(8193, 0);

/// Endpoint slot → what it uses of its limits (changed atomically, here only).
#[map]
pub static USAGE: Array<Usage> = Array::with_max_entries(8193, 0);

/// Consumer network → its connections in their handshake (changed atomically).
#[map]
pub static NETWORK_USAGE: Array<u64> = Array::with_max_entries(256, 0);

/// (endpoint slot, source prefix) → listeners the source may use, for endpoints with
/// security groups.
#[map]
pub static SECURITY_GROUPS: LpmTrie<SourcePrefix, SecurityGroup> =
    LpmTrie::with_max_entries(65536, 0);

/// (consumer network or provider interface, IP) → the node's addresses there.
#[map]
pub static ADDRESSES: HashMap<AddressKey, Address> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// 0 → node-wide settings (a hash, so that an update replaces the value whole).
#[map]
pub static SETTINGS: HashMap<u32, Settings> = HashMap::with_max_entries(1, 0);

/// Every target of every service.
#[map]
pub static TARGETS: Array<Target> = Array::with_max_entries(32769, 0);

/// Target rings, `ring_size` slots each, laid end to end: slot → index in `TARGETS`
/// (mmapped by the agent).
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(1 << 21, BPF_F_MMAPABLE);

/// The connection table, both directions, shared by all CPUs (a reply may arrive on
/// another CPU than its request). Not an LRU: nothing is ever evicted to make room.
#[map]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(1 << 18, 0);

/// Connections in their handshake, oldest first (its capacity bounds them all).
#[map]
pub static HANDSHAKES: Queue<Pending> = Queue::with_max_entries(1 << 15, 0);

/// Closed connections, to be removed once they have lingered.
#[map]
pub static CLOSINGS: Queue<Pending> = Queue::with_max_entries(1 << 15, 0);

/// Per-CPU room for opening a flow.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for the flow key of the consumer's packet at hand (40 bytes the
/// stack cannot spare twice along the call chain).
#[map]
pub static FLOW_KEY: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for a segment whose checksum is verified.
#[map]
pub static SEGMENT: PerCpuArray<Segment> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU budgets for what the node sends of its own.
#[map]
pub static BUDGETS: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, per endpoint slot (see `endpoint_common::counter`).
#[map]
pub static STATS: PerCpuArray<Count> = PerCpuArray::with_max_entries(8193 * counter::COUNT, 0);

/// Connection records for the agent (`--flow-log`), when it asked for them.
#[map]
pub static RECORDS: RingBuf = RingBuf::with_byte_size(RECORDS_BYTES, 0);

/// (consumer network, name hash) → the name's records in that network.
#[map]
pub static NAMES: HashMap<NameKey, Name> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// 0 → what every zone's DNS answers share (a hash: an update replaces it whole).
#[map]
pub static DNS: HashMap<u32, DnsSettings> = HashMap::with_max_entries(1, 0);

/// Per-CPU counts of what each consumer network's resolver address answered.
#[map]
pub static DNS_STATS: PerCpuArray<Count> =
    PerCpuArray::with_max_entries(256 * dns_counter::COUNT, 0);

/// The programs the attached one hands packets to, by `endpoint_common::maps::program`
/// slot (filled by the agent before it attaches).
#[map]
pub static PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);
