//! Limits: what a new connection must fit in before it is opened — the consumer
//! network's and the endpoint's connections in their handshake (a SYN flood fills only
//! its own network's share), the endpoint's open connections and its rate of new ones —
//! and the counting that goes with them, by the data path alone, atomically. A
//! connection is counted once: the bits [`tcp::HALF_OPEN`] and [`tcp::ACTIVE`] say what
//! it holds, and whoever clears a bit gives that back.

use endpoint_common::{
    counter,
    maps::{Flow, Limits, PROTO_TCP, Policy, Settings, Usage, tcp},
};

use crate::{
    atomic,
    conntrack::now_ns,
    maps::{LIMITS, NETWORK_USAGE, POLICIES, USAGE},
    outcome::Outcome,
};

/// Counts a new connection of endpoint `slot` in `network` (into `flow.tcp`), if it
/// fits; if it is then not opened, [`release`] gives it back.
#[inline(never)]
pub fn reserve(flow: *mut Flow, settings: &Settings) -> Result<(), Outcome> {
    // SAFETY: `flow` is this CPU's scratch.
    let (slot, network) = unsafe { ((*flow).slot, (*flow).network) };
    let (Some(limits), Some(usage), Some(network_usage)) = (
        LIMITS.get(slot),
        USAGE.get_ptr_mut(slot),
        NETWORK_USAGE.get_ptr_mut(network),
    ) else {
        return Err(Outcome::drop_for(counter::DROP_CONNECTION_LIMIT, slot));
    };
    rate(limits, usage, slot)?;
    // A UDP flow has no handshake: it is open from its first datagram.
    // SAFETY: `flow` is this CPU's scratch.
    let handshake = unsafe { (*flow).proto } == PROTO_TCP;
    // SAFETY: fields of array values, changed only atomically.
    unsafe {
        let network_half_open = network_usage;
        let half_open = &raw mut (*usage).half_open;
        let connections = &raw mut (*usage).connections;
        let flood = Outcome::drop_for(counter::DROP_HALF_OPEN_LIMIT, slot);
        if handshake && !take(network_half_open, settings.half_open_per_network) {
            return Err(flood);
        }
        if handshake && !take(half_open, limits.half_open) {
            atomic::add(network_half_open, u64::MAX);
            return Err(flood);
        }
        if !take(connections, limits.connections) {
            if handshake {
                atomic::add(network_half_open, u64::MAX);
                atomic::add(half_open, u64::MAX);
            }
            return Err(Outcome::drop_for(counter::DROP_CONNECTION_LIMIT, slot));
        }
        (*flow).tcp |= if handshake {
            tcp::HALF_OPEN | tcp::ACTIVE
        } else {
            tcp::ACTIVE
        };
    }
    Ok(())
}

/// Counts one more in `count` if that stays within `limit` (0: none).
///
/// # Safety
/// `count` points into map memory changed only atomically.
#[inline(always)]
unsafe fn take(count: *mut u64, limit: u32) -> bool {
    let limit = if limit == 0 { u64::MAX } else { limit as u64 };
    // SAFETY: the caller's.
    unsafe { atomic::take(count, limit) }
}

/// The endpoint's rate of new connections, by the generic cell rate algorithm: each
/// connection moves the theoretical arrival time one interval on; one that would move
/// it more than the burst ahead of now is refused.
#[inline(always)]
fn rate(limits: &Limits, usage: *mut Usage, slot: u32) -> Result<(), Outcome> {
    if limits.interval_ns == 0 {
        return Ok(());
    }
    let now = now_ns();
    // SAFETY: a field of an array value, changed only atomically.
    let at = unsafe { &raw mut (*usage).next_ns };
    let mut tries = 0;
    while tries < 4 {
        // SAFETY: as above.
        let next = unsafe { at.read_volatile() };
        let start = if next > now { next } else { now };
        if start - now > limits.burst_ns {
            break;
        }
        // SAFETY: as above.
        if unsafe { atomic::swap_if(at, next, start + limits.interval_ns) } {
            return Ok(());
        }
        tries += 1;
    }
    Err(Outcome::drop_for(counter::DROP_RATE_LIMIT, slot))
}

/// The handshake completed: the connection no longer counts as half-open.
#[inline(always)]
pub fn established(flow: *mut Flow) {
    give_back(flow, tcp::HALF_OPEN);
}

/// The connection is gone (or was never opened): gives back what it counted.
#[inline(always)]
pub fn release(flow: *mut Flow) {
    give_back(flow, tcp::HALF_OPEN | tcp::ACTIVE);
}

#[inline(never)]
fn give_back(flow: *mut Flow, bits: u64) {
    // SAFETY: `flow` is a map entry or this CPU's scratch; its bits change atomically.
    let (held, slot, network, uid) = unsafe {
        let held = atomic::clear(&raw mut (*flow).tcp, bits) & bits;
        (
            held,
            (*flow).slot,
            (*flow).network,
            Policy::of((*flow).policy).uid,
        )
    };
    if held == 0 {
        return;
    }
    // A slot given to another endpoint since had its counts started afresh.
    let current = POLICIES.get(slot).map_or(0, |&word| Policy::of(word).uid);
    let (Some(usage), Some(network_usage)) =
        (USAGE.get_ptr_mut(slot), NETWORK_USAGE.get_ptr_mut(network))
    else {
        return;
    };
    // SAFETY: fields of array values, changed only atomically.
    unsafe {
        if held & tcp::HALF_OPEN != 0 {
            atomic::add(network_usage, u64::MAX);
            if current == uid {
                atomic::add(&raw mut (*usage).half_open, u64::MAX);
            }
        }
        if held & tcp::ACTIVE != 0 && current == uid {
            atomic::add(&raw mut (*usage).connections, u64::MAX);
        }
    }
}
