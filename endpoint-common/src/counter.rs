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
    /// Not endpoint traffic: handed to the kernel untouched.
    PASS = "pass",
    /// An ARP request for an endpoint or NAT address, answered.
    ARP_REPLY = "arp_reply",
    /// A SYN to an available endpoint that opened a flow.
    FORWARD_NEW = "forward_new",
    /// A packet of an established flow, consumer to target.
    FORWARD = "forward",
    /// A packet of an established flow, target back to consumer.
    REPLY = "reply",
    /// Truncated or invalid Ethernet, IPv4 or TCP header.
    DROP_MALFORMED = "drop_malformed",
    /// IPv4 options on traffic to one of our addresses (not supported).
    DROP_IP_OPTIONS = "drop_ip_options",
    /// An IPv4 fragment to one of our addresses (not supported).
    DROP_FRAGMENT = "drop_fragment",
    /// TTL would reach zero.
    DROP_TTL_EXPIRED = "drop_ttl_expired",
    /// Not a SYN and no flow: nothing to continue.
    DROP_NO_FLOW = "drop_no_flow",
    /// A provider-side packet to a NAT address and port that matches no flow.
    DROP_REPLY_NO_FLOW = "drop_reply_no_flow",
    /// The endpoint's service has no target to send the flow to.
    DROP_NO_TARGET = "drop_no_target",
    /// No free NAT port for this target after a bounded search.
    DROP_NAT_EXHAUSTED = "drop_nat_exhausted",
    /// The route to the target has no resolved neighbour (MAC) yet.
    DROP_FIB_NO_NEIGHBOUR = "drop_fib_no_neighbour",
    /// The packet is larger than the egress MTU.
    DROP_FIB_FRAG_NEEDED = "drop_fib_frag_needed",
    /// No usable route to the target (unreachable, blackhole, prohibited, forwarding off).
    DROP_FIB_UNREACHABLE = "drop_fib_unreachable",
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
    /// A packet of a flow whose endpoint was revoked with `reset`: answered with a RST.
    RESET_REVOKED = "reset_revoked",
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
