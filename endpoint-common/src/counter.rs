//! Per-CPU counters: one per verdict and drop reason, kept per endpoint.
//!
//! The `STATS` map is a per-CPU array of [`Count`]s indexed by
//! `endpoint * COUNT + counter` ([`index`]); endpoint slot 0 holds what no endpoint
//! can be blamed for (frames that are not ours, malformed frames).

/// Packets and bytes counted under one counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident = $text:literal,)*) => {
        /// Every counter, in index order.
        pub const ALL: &[(u32, &str)] = &[$(($name, $text)),*];
        counters!(@consts 0u32, $($(#[doc = $doc])* $name,)*);
    };
    (@consts $n:expr, $(#[doc = $doc:literal])* $name:ident, $($rest:tt)*) => {
        $(#[doc = $doc])*
        pub const $name: u32 = $n;
        counters!(@consts $n + 1, $($rest)*);
    };
    (@consts $n:expr,) => {
        /// How many counters there are.
        pub const COUNT: u32 = $n;
    };
}

counters! {
    /// Not endpoint traffic, on an interface that also carries the node's own: handed
    /// to the kernel untouched.
    PASS = "pass",
    /// An ARP request for an endpoint or NAT address, answered.
    ARP_REPLY = "arp_reply",
    /// An IPv6 neighbour solicitation for an endpoint or NAT address, answered with an
    /// advertisement.
    NEIGHBOUR_ADVERT = "neighbour_advert",
    /// A SYN (or a UDP datagram) to an available endpoint that opened a flow.
    FORWARD_NEW = "forward_new",
    /// A packet of an established flow, consumer to target.
    FORWARD = "forward",
    /// A packet of an established flow, target back to consumer.
    REPLY = "reply",
    /// A RST the node sent for a connection it cut (`on_revoke: reset`).
    RESET_SENT = "reset_sent",
    /// A provider-side ICMP error about a flow (unreachable, fragmentation needed, time
    /// exceeded, parameter problem), translated back to its consumer (RFC 5508).
    ICMP_ERROR = "icmp_error",
    /// ICMP fragmentation needed sent to the sender of a packet with DF set that does
    /// not fit the egress MTU.
    ICMP_FRAG_NEEDED_SENT = "icmp_frag_needed_sent",
    /// ICMP time exceeded sent to the sender of a packet whose TTL ran out here.
    ICMP_TIME_EXCEEDED_SENT = "icmp_time_exceeded_sent",
    /// An ICMP echo request to an available endpoint, answered.
    ICMP_ECHO_REPLY = "icmp_echo_reply",
    /// A SYN or SYN-ACK whose MSS was lowered to fit both sides' MTUs (or the
    /// service's `mss`): counted besides the packet's own outcome.
    MSS_CLAMPED = "mss_clamped",
    /// A TCP RST in its connection's window, from either end (passed on): counted
    /// besides the packet's own outcome.
    RESET_RECEIVED = "reset_received",
    /// A connection record (`--flow-log`) the agent had no room for: the record is
    /// lost, never the packet. Counted besides the packet's own outcome.
    FLOW_RECORD_DROPPED = "flow_record_dropped",
    /// A DNS query to a consumer network's resolver address, answered with records or
    /// with none of the type asked (NODATA).
    DNS_ANSWER = "dns_answer",
    /// A DNS query for a name in our zones that the network does not have, answered
    /// NXDOMAIN.
    DNS_NXDOMAIN = "dns_nxdomain",
    /// A DNS query for a name that is not ours (or another class, a zone transfer),
    /// answered REFUSED; or another opcode, answered NOTIMP.
    DNS_REFUSED = "dns_refused",
    /// A malformed DNS query with a whole header, answered FORMERR.
    DNS_FORMERR = "dns_formerr",
    /// On a consumer interface, anything that is neither endpoint traffic nor ARP for
    /// the node's addresses there: the node itself is not reachable from a consumer.
    DROP_NOT_ENDPOINT = "drop_not_endpoint",
    /// Endpoint traffic not sent to the interface's own MAC (broadcast, multicast,
    /// another host's), or from a multicast MAC.
    DROP_NOT_FOR_US = "drop_not_for_us",
    /// Truncated or invalid Ethernet, IPv4, IPv6, TCP, UDP or ICMP header.
    DROP_MALFORMED = "drop_malformed",
    /// IPv4 options on traffic to one of our addresses (not supported).
    DROP_IP_OPTIONS = "drop_ip_options",
    /// An IPv4 fragment to one of our addresses (not supported).
    DROP_FRAGMENT = "drop_fragment",
    /// An IPv6 packet with an extension header to one of our addresses (not supported).
    DROP_IPV6_EXTENSION = "drop_ipv6_extension",
    /// A wrong IPv4 header checksum, or a wrong TCP or UDP checksum on a packet that
    /// would open a flow.
    DROP_BAD_CHECKSUM = "drop_bad_checksum",
    /// TCP flags no segment of a connection carries (SYN with FIN or RST, none at all).
    DROP_BAD_FLAGS = "drop_bad_flags",
    /// A source that cannot be a client: unspecified, loopback, multicast, broadcast,
    /// reserved, or one of the node's own addresses in that network.
    DROP_MARTIAN = "drop_martian",
    /// TTL would reach zero (answered with time exceeded, within the ICMP budget).
    DROP_TTL_EXPIRED = "drop_ttl_expired",
    /// Not a SYN and no flow: nothing to continue.
    DROP_NO_FLOW = "drop_no_flow",
    /// A segment that does not fit its connection's state (data before the handshake).
    DROP_OUT_OF_STATE = "drop_out_of_state",
    /// A RST or FIN outside the receiver's window: spoofed, or stale.
    DROP_OUT_OF_WINDOW = "drop_out_of_window",
    /// A provider-side packet to a NAT address and port that matches no flow.
    DROP_REPLY_NO_FLOW = "drop_reply_no_flow",
    /// A reply that arrived on another interface than its flow's provider interface.
    DROP_WRONG_INTERFACE = "drop_wrong_interface",
    /// A packet of a flow whose endpoint was deleted (or whose consumer interface moved
    /// to another network): the flow is removed.
    DROP_FLOW_GONE = "drop_flow_gone",
    /// The endpoint's service has no target to send the flow to.
    DROP_NO_TARGET = "drop_no_target",
    /// No free NAT port for this target after a bounded search.
    DROP_NAT_EXHAUSTED = "drop_nat_exhausted",
    /// The flow table is full: new connections wait for room (none is evicted).
    DROP_FLOW_TABLE_FULL = "drop_flow_table_full",
    /// The consumer network's or the endpoint's connections in their handshake are at
    /// their limit (a SYN flood is held there).
    DROP_HALF_OPEN_LIMIT = "drop_half_open_limit",
    /// The endpoint's open connections are at its `limits.connections`.
    DROP_CONNECTION_LIMIT = "drop_connection_limit",
    /// Above the endpoint's `limits.new_connections_per_second`.
    DROP_RATE_LIMIT = "drop_rate_limit",
    /// A RST the node would have sent, over the per-CPU budget.
    DROP_RESET_BUDGET = "drop_reset_budget",
    /// An ICMP message the node would have sent, over the per-CPU budget (the packet
    /// that caused it is dropped).
    DROP_ICMP_BUDGET = "drop_icmp_budget",
    /// A message to a resolver address that cannot be answered: shorter than a DNS
    /// header, or itself a response.
    DROP_DNS = "drop_dns",
    /// ICMP to one of the node's addresses that it does not take: to a NAT address and
    /// not an error about one of its flows; to an endpoint and not an echo request.
    DROP_ICMP = "drop_icmp",
    /// The route to the target has no resolved neighbour (MAC) yet.
    DROP_FIB_NO_NEIGHBOUR = "drop_fib_no_neighbour",
    /// The packet is larger than the egress MTU and may be fragmented (the node does
    /// not fragment; one with DF set is answered with ICMP instead).
    DROP_FIB_FRAG_NEEDED = "drop_fib_frag_needed",
    /// No usable route to the target (unreachable, blackhole, prohibited, forwarding off).
    DROP_FIB_UNREACHABLE = "drop_fib_unreachable",
    /// The route leaves through an interface the program is not attached to: a frame
    /// redirected there could be lost unseen.
    DROP_EGRESS_NOT_ATTACHED = "drop_egress_not_attached",
    /// The endpoint is `pendingAcceptance`.
    DROP_STATE_PENDING_ACCEPTANCE = "drop_state_pending_acceptance",
    /// The endpoint is `pending`.
    DROP_STATE_PENDING = "drop_state_pending",
    /// The endpoint is `rejected`.
    DROP_STATE_REJECTED = "drop_state_rejected",
    /// The endpoint is `failed`.
    DROP_STATE_FAILED = "drop_state_failed",
    /// The endpoint is `deleting`.
    DROP_STATE_DELETING = "drop_state_deleting",
    /// The endpoint is `deleted`.
    DROP_STATE_DELETED = "drop_state_deleted",
    /// The endpoint is `expired`.
    DROP_STATE_EXPIRED = "drop_state_expired",
    /// The source is outside the endpoint's security groups.
    DROP_SECURITY_GROUP = "drop_security_group",
}

/// The counter a packet to an endpoint in `state` (not available) is dropped under.
#[inline(always)]
pub const fn drop_for_state(state: u8) -> u32 {
    use crate::maps::state;
    match state {
        state::PENDING_ACCEPTANCE => DROP_STATE_PENDING_ACCEPTANCE,
        state::PENDING => DROP_STATE_PENDING,
        state::REJECTED => DROP_STATE_REJECTED,
        state::FAILED => DROP_STATE_FAILED,
        state::DELETING => DROP_STATE_DELETING,
        state::DELETED => DROP_STATE_DELETED,
        // state::EXPIRED, the only one left (the agent writes no other codes).
        _ => DROP_STATE_EXPIRED,
    }
}

/// Where `counter` of endpoint slot `endpoint` lives in the `STATS` array.
#[inline(always)]
pub const fn index(endpoint: u32, counter: u32) -> u32 {
    endpoint * COUNT + counter
}

/// Whether `counter` counts dropped packets (all drops come after the other outcomes).
#[inline(always)]
pub const fn is_drop(counter: u32) -> bool {
    counter >= DROP_NOT_ENDPOINT
}
