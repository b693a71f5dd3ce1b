//! Expire: what leaves the flow table on its own, decided in the kernel where packets
//! cannot race the decision (see `conntrack::expire`). The agent runs this as a program
//! of its own (BPF_PROG_RUN) every second:
//!
//! - handshakes that have not completed `handshake_s` after they were opened (the
//!   `HANDSHAKES` queue, oldest first);
//! - closed connections once they have lingered (the `CLOSINGS` queue): longer if the
//!   target closed first and holds the tuple in TIME_WAIT;
//! - connections the agent's scan of the table found idle longer than their endpoint's
//!   timeout, or whose endpoint is gone, passed in the frame as keys.
//!
//! The frame: a [`Header`], then `count` flow keys. The program writes back how many
//! connections it removed. The agent says what time it is (the monotonic clock the data
//! path stamps flows with), so that its tests can run ahead of the clock.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use endpoint_common::maps::{
    EXPIRE_KEYS, FlowKey, PROTO_UDP, PROVIDER_NETWORK, Pending, Policy, Settings, tcp,
};

use crate::{
    classify, conntrack,
    maps::{CLOSINGS, HANDSHAKES, LIMITS},
    policy,
};

/// The frame's header (16 bytes: a test run's frame is at least an Ethernet header).
#[repr(C)]
pub struct Header {
    /// Now, on the monotonic clock.
    pub now_ns: u64,
    /// Keys that follow.
    pub count: u32,
    /// Written back: connections removed.
    pub removed: u32,
}

/// Queue items one run looks at, at most, per queue.
const MAX_QUEUED: u32 = 128;
const NS: u64 = 1_000_000_000;

pub fn run(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    if start + size_of::<Header>() > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let header = start as *mut Header;
    let Some(settings) = classify::settings() else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: checked above.
    let (now_ns, count) = unsafe { ((*header).now_ns, (*header).count) };
    let mut removed = handshakes(now_ns, settings) + closings(now_ns, settings);
    let now = now_ns / NS;
    let mut i = 0;
    while i < EXPIRE_KEYS && i < count {
        let at = start + size_of::<Header>() + i as usize * size_of::<FlowKey>();
        if at + size_of::<FlowKey>() > ctx.data_end() {
            break;
        }
        // SAFETY: checked just above.
        let key = unsafe { (at as *const FlowKey).read_unaligned() };
        if candidate(&key, now, settings) {
            removed += 1;
        }
        i += 1;
    }
    // SAFETY: checked above.
    unsafe { (*header).removed = removed };
    xdp_action::XDP_PASS
}

/// Handshakes that ran out. One that a packet used this very second gets another
/// round.
#[inline(never)]
fn handshakes(now_ns: u64, settings: &Settings) -> u32 {
    let now = now_ns / NS;
    let mut removed = 0;
    let mut n = 0;
    while n < MAX_QUEUED {
        let Ok(Some(pending)) = HANDSHAKES.peek() else {
            break;
        };
        if now_ns.saturating_sub(pending.since_ns) < settings.handshake_s as u64 * NS {
            break;
        }
        let _ = HANDSHAKES.pop();
        let Some(flow) = conntrack::lookup(&pending.key) else {
            n += 1;
            continue;
        };
        if flow.opened_ns == pending.opened_ns && flow.tcp() & tcp::ESTABLISHED == 0 {
            if conntrack::expire(&pending.key, 0, now) {
                removed += 1;
            } else {
                requeue(&pending, now_ns, true);
            }
        }
        n += 1;
    }
    removed
}

/// Closed connections that have lingered long enough.
#[inline(never)]
fn closings(now_ns: u64, settings: &Settings) -> u32 {
    let now = now_ns / NS;
    let mut removed = 0;
    let mut n = 0;
    while n < MAX_QUEUED {
        let Ok(Some(pending)) = CLOSINGS.peek() else {
            break;
        };
        if now_ns.saturating_sub(pending.since_ns) < settings.closed_s as u64 * NS {
            break;
        }
        let _ = CLOSINGS.pop();
        let Some(flow) = conntrack::lookup(&pending.key) else {
            n += 1;
            continue;
        };
        if flow.opened_ns == pending.opened_ns {
            let linger = if flow.tcp() & tcp::TARGET_CLOSED_FIRST != 0 {
                settings.time_wait_s
            } else {
                settings.closed_s
            };
            if conntrack::expire(&pending.key, linger, now) {
                removed += 1;
            } else {
                requeue(&pending, now_ns, false);
            }
        }
        n += 1;
    }
    removed
}

/// Looks at `pending` again a round later.
#[inline(always)]
fn requeue(pending: &Pending, now_ns: u64, handshake: bool) {
    let again = Pending {
        since_ns: now_ns,
        ..*pending
    };
    let queue = if handshake { &HANDSHAKES } else { &CLOSINGS };
    // Full: the agent's scan finds it after its idle timeout instead.
    let _ = queue.push(&again, 0);
}

/// A key the agent's scan found idle: a connection idle longer than its endpoint's
/// timeout (at once if its endpoint is gone), or a reply entry left alone — a NAT port
/// reservation past TIME_WAIT, or one whose connection is missing.
#[inline(never)]
fn candidate(key: &FlowKey, now: u64, settings: &Settings) -> bool {
    if key.network() == PROVIDER_NETWORK {
        let Some(reply) = conntrack::lookup(key) else {
            return false;
        };
        if reply.tcp() & tcp::RESERVED == 0
            && conntrack::lookup(&conntrack::forward_key_of(&reply)).is_some()
        {
            return false;
        }
        return conntrack::expire_alone(key, settings.time_wait_s, now);
    }
    let Some(flow) = conntrack::lookup(key) else {
        return false;
    };
    let gone = Policy::of(policy::word(flow.slot)).uid != Policy::of(flow.policy).uid;
    let limit = if gone {
        0
    } else {
        LIMITS.get(flow.slot).map_or(settings.time_wait_s, |l| {
            if key.proto() == PROTO_UDP {
                l.udp_idle_timeout_s
            } else {
                l.idle_timeout_s
            }
        })
    };
    conntrack::expire(key, limit, now)
}
