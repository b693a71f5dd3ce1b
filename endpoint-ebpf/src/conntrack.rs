//! Conntrack: one hash table shared by all CPUs holds both directions of every
//! connection. The consumer-to-target entry is keyed by consumer network + 5-tuple and
//! holds the connection's state; the reply entry is keyed by the translated 5-tuple on
//! the provider side. Nothing is ever evicted to make room: a full table refuses new
//! connections, and what leaves it leaves as a whole (both directions, counted once),
//! through [`remove`] or [`expire`] — the only two ways out.
//!
//! A direction's `last_seen_s` is written with compare-and-swap, and a flow being removed
//! is marked [`DEAD`] the same way first: a packet that used a flow after the decision to
//! expire it makes the expiry fail, and one that comes after finds it gone — never both.

use core::ops::Deref;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use endpoint_common::{
    counter, hash,
    maps::{
        Addr, DEAD, Flow, FlowKey, PROTO_TCP, PROVIDER_NETWORK, Pending, Scratch, Settings, tcp,
    },
};

use crate::{
    atomic, limits,
    maps::{CLOSINGS, FLOW_KEY, FLOWS, HANDSHAKES, SCRATCH},
    outcome::Outcome,
    parse::Packet,
    record,
};

/// How many NAT ports a new flow tries before it is dropped as exhausted (with a
/// quarter of the ports towards a target in use, all 16 are taken once in 4 billion).
const NAT_PORT_ATTEMPTS: u32 = 16;

/// The key of a consumer-side packet in `network` (or a provider-side one in
/// `PROVIDER_NETWORK`), kept per CPU for the packet's journey ([`packet_key`]).
#[inline(always)]
pub fn forward_key(network: u32, packet: &Packet) -> Option<&'static FlowKey> {
    let key = FLOW_KEY.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
    unsafe {
        write_key(key, network, packet);
        Some(&*key)
    }
}

/// The reply key of the flow whose packet (`src` to `dst`, `ports` as in the packet) an
/// ICMP error quotes: the other way round, on the provider side. Kept per CPU too.
#[inline(always)]
pub fn quoted_key(
    src: Addr,
    dst: Addr,
    ports: [[u8; 2]; 2],
    family: u8,
    proto: u8,
) -> Option<&'static FlowKey> {
    let key = FLOW_KEY.get_ptr_mut(0)?;
    // SAFETY: as above.
    unsafe {
        (*key).src = dst;
        (*key).dst = src;
        (*key).src_port_be = u16::from_ne_bytes(ports[1]);
        (*key).dst_port_be = u16::from_ne_bytes(ports[0]);
        (*key).scope = FlowKey::scope(PROVIDER_NETWORK, family, proto);
        Some(&*key)
    }
}

/// The key [`forward_key`] made for the packet at hand.
#[inline(always)]
pub fn packet_key() -> Option<&'static FlowKey> {
    // SAFETY: as above.
    FLOW_KEY.get_ptr(0).map(|key| unsafe { &*key })
}

/// Writes the key of `packet` in `network` field by field (a whole struct would be
/// built on the stack first).
#[inline(always)]
fn write_key(key: *mut FlowKey, network: u32, packet: &Packet) {
    let (src_port_be, dst_port_be) = packet.ports_be();
    // SAFETY: the caller's key.
    unsafe {
        (*key).src = packet.src();
        (*key).dst = packet.dst();
        (*key).src_port_be = src_port_be;
        (*key).dst_port_be = dst_port_be;
        (*key).scope = FlowKey::scope(network, packet.family(), packet.proto());
    }
}

/// The key replies of the consumer-to-target entry `forward` arrive with.
#[inline(always)]
pub fn reply_key(forward: &Flow) -> FlowKey {
    forward.reply_key()
}

/// The consumer-to-target key of the reply entry `reply`.
#[inline(always)]
pub fn forward_key_of(reply: &Flow) -> FlowKey {
    FlowKey {
        src: reply.dst,
        dst: reply.src,
        src_port_be: reply.dst_port_be,
        dst_port_be: reply.src_port_be,
        scope: FlowKey::scope(reply.network, reply.family, reply.proto),
    }
}

/// A flow entry in the table, used in place (the value is freed only after every
/// program that may hold it has finished: the table allocates on demand, under RCU).
pub struct Entry(*mut Flow);

impl Deref for Entry {
    type Target = Flow;

    #[inline(always)]
    fn deref(&self) -> &Flow {
        // SAFETY: a pointer the map gave out, valid while the program runs.
        unsafe { &*self.0 }
    }
}

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<Entry> {
    FLOWS.get_ptr_mut(key).map(Entry)
}

/// Seconds on the monotonic clock (the agent reads the same clock).
#[inline(always)]
pub fn now_s() -> u64 {
    now_ns() / 1_000_000_000
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The same clock, to the nanosecond: a connection's opening time is its identity (two
/// connections on one tuple within a coarse tick must not look alike).
#[inline(always)]
pub fn opening_ns() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// What a packet does to its flow's last-seen stamp.
pub enum Touch {
    /// Used again within the same second.
    Same,
    /// The first use this second (the route is looked up again).
    Fresh,
    /// The flow is being removed: as if it were not there.
    Gone,
}

impl Entry {
    #[inline(always)]
    pub fn ptr(&self) -> *mut Flow {
        self.0
    }

    /// Marks this direction used now.
    #[inline(always)]
    pub fn touch(&self) -> Touch {
        let now = now_s();
        // SAFETY: a field of the entry; other CPUs change it only atomically.
        let at = unsafe { &raw mut (*self.0).last_seen_s };
        let seen = unsafe { at.read_volatile() };
        if seen == now {
            return Touch::Same;
        }
        if seen == DEAD {
            return Touch::Gone;
        }
        // SAFETY: as above.
        if unsafe { atomic::swap_if(at, seen, now) } {
            return Touch::Fresh;
        }
        // Someone else stamped it, or marked it for removal, in between.
        if unsafe { at.read_volatile() } == DEAD {
            Touch::Gone
        } else {
            Touch::Same
        }
    }

    /// Counts a packet of `bytes` this direction carried.
    #[inline(always)]
    pub fn carried(&self, bytes: u64) {
        // SAFETY: fields of the entry, changed only atomically.
        unsafe {
            atomic::add(&raw mut (*self.0).packets, 1);
            atomic::add(&raw mut (*self.0).bytes, bytes);
        }
    }

    /// The connection's [`tcp`] bits (consumer-to-target entry).
    #[inline(always)]
    pub fn tcp(&self) -> u64 {
        // SAFETY: as in `touch`.
        unsafe { (&raw const (*self.0).tcp).read_volatile() }
    }

    /// Sets `bits`; returns the bits before.
    #[inline(always)]
    pub fn set(&self, bits: u64) -> u64 {
        // SAFETY: as in `touch`.
        unsafe { atomic::set(&raw mut (*self.0).tcp, bits) }
    }

    /// Keeps the policy word the flow was admitted under.
    #[inline(always)]
    pub fn admitted(&self, policy: u64) {
        // SAFETY: as in `touch`; a torn write can only make the next check fail again.
        unsafe { (*self.0).policy = policy };
    }
}

/// Opens a connection from what `select` and `forward` put in the scratch (`forward`,
/// `reply`, `reply_key` without its port): claims a NAT port free towards the target —
/// the reply entry is inserted only if absent, which makes the choice race-free across
/// CPUs — then inserts the forward entry and queues the handshake. The connection was
/// counted by `limits::reserve`; if it cannot be opened, that is undone. The scratch's
/// `forward` is then what was inserted (the packet is translated from it).
// Its own BPF function: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn open(key: &FlowKey, settings: &Settings) -> Result<(), Outcome> {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Err(Outcome::drop(counter::DROP_NO_FLOW));
    };
    // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
    let Scratch {
        forward,
        reply,
        reply_key,
        hash,
        pending,
        ..
    } = unsafe { &mut *scratch };
    let slot = forward.slot;
    let min = settings.nat_port_min;
    let span = settings.nat_port_max.wrapping_sub(min) as u32 + 1;
    if min == 0 || settings.nat_port_max < min {
        limits::release(&raw mut *forward);
        return Err(Outcome::drop_for(counter::DROP_NAT_EXHAUSTED, slot));
    }
    let start = hash::nat(*hash, forward.network);
    let mut attempt = 0;
    let mut full = false;
    while attempt < NAT_PORT_ATTEMPTS {
        // An odd multiplier walks the whole range in a scattered order.
        let offset = start.wrapping_add(attempt.wrapping_mul(0x9e37_79b1)) % span;
        let port_be = (min + offset as u16).to_be();
        reply_key.dst_port_be = port_be;
        match FLOWS.insert(&*reply_key, &*reply, BPF_NOEXIST as u64) {
            Ok(()) => {
                forward.src_port_be = port_be;
                if FLOWS.insert(key, &*forward, BPF_NOEXIST as u64).is_err() {
                    // Another CPU opened the same connection first (a retransmitted SYN),
                    // or the table filled up: either way, not ours to open.
                    let _ = FLOWS.remove(&*reply_key);
                    limits::release(&raw mut *forward);
                    return Err(Outcome::drop_for(counter::DROP_NO_FLOW, slot));
                }
                pending.key = *key;
                pending.opened_ns = forward.opened_ns;
                pending.since_ns = forward.opened_ns;
                // The queue's capacity bounds the handshakes of all networks together
                // (UDP has none: its flows go when idle).
                if key.proto() == PROTO_TCP && HANDSHAKES.push(&*pending, 0).is_err() {
                    if let Some(entry) = lookup(key) {
                        remove(key, &entry, false);
                    }
                    return Err(Outcome::drop_for(counter::DROP_HALF_OPEN_LIMIT, slot));
                }
                record::opened(key, forward, settings);
                return Ok(());
            }
            // E2BIG: no room; EEXIST: the port is taken, try the next.
            Err(-7) => {
                full = true;
                break;
            }
            Err(_) => {}
        }
        attempt += 1;
    }
    limits::release(&raw mut *forward);
    if full {
        Err(Outcome::drop_for(counter::DROP_FLOW_TABLE_FULL, slot))
    } else {
        Err(Outcome::drop_for(counter::DROP_NAT_EXHAUSTED, slot))
    }
}

/// Removes the connection of the consumer-to-target entry `entry` (at `key`), both
/// directions, and releases what it counted. With `keep_port`, the reply entry stays
/// behind as a reservation, so the NAT port is not reused while the target may hold
/// the tuple in TIME_WAIT.
#[inline(never)]
pub fn remove(key: &FlowKey, entry: &Entry, keep_port: bool) {
    let flow = entry.ptr();
    // SAFETY: fields of the entry; removal marks it before anything else.
    unsafe { (&raw mut (*flow).last_seen_s).write_volatile(DEAD) };
    let reply_key = reply_key(entry);
    let reply = lookup(&reply_key);
    record::ended(key, entry, reply.as_deref());
    if let Some(reply) = reply {
        if keep_port {
            reply.set(tcp::RESERVED);
            let _ = reply.touch();
        } else {
            // SAFETY: as above.
            unsafe { (&raw mut (*reply.ptr()).last_seen_s).write_volatile(DEAD) };
            let _ = FLOWS.remove(&reply_key);
        }
    }
    let _ = FLOWS.remove(key);
    limits::release(entry.ptr());
}

/// Removes the connection at `key` if it has been idle longer than it may be, deciding
/// with the stamps as they are now and claiming them with compare-and-swap: a packet
/// that uses either direction meanwhile keeps it. Returns whether it was removed.
#[inline(never)]
pub fn expire(key: &FlowKey, limit_s: u32, now: u64) -> bool {
    let Some(entry) = lookup(key) else {
        return false;
    };
    // SAFETY: fields of entries, changed by others only atomically.
    let (at, seen) = unsafe {
        let at = &raw mut (*entry.ptr()).last_seen_s;
        (at, at.read_volatile())
    };
    if seen == DEAD || now.wrapping_sub(seen) <= limit_s as u64 {
        return false;
    }
    let reply_key = reply_key(&entry);
    let reply = lookup(&reply_key);
    if let Some(reply) = &reply {
        // SAFETY: as above.
        let reply_seen = unsafe { (&raw const (*reply.ptr()).last_seen_s).read_volatile() };
        if reply_seen != DEAD && now.wrapping_sub(reply_seen) <= limit_s as u64 {
            return false;
        }
    }
    // SAFETY: as above.
    if !unsafe { atomic::swap_if(at, seen, DEAD) } {
        return false;
    }
    if let Some(reply) = &reply {
        // SAFETY: as above.
        let reply_at = unsafe { &raw mut (*reply.ptr()).last_seen_s };
        let reply_seen = unsafe { reply_at.read_volatile() };
        if reply_seen != DEAD
            && (now.wrapping_sub(reply_seen) <= limit_s as u64
                || !unsafe { atomic::swap_if(reply_at, reply_seen, DEAD) })
        {
            // A reply used it after all: it stays.
            // SAFETY: as above.
            unsafe { at.write_volatile(seen) };
            return false;
        }
        let _ = FLOWS.remove(&reply_key);
    }
    record::ended(key, &entry, reply.as_deref());
    let _ = FLOWS.remove(key);
    limits::release(entry.ptr());
    true
}

/// Removes the lone entry at `key` (a NAT port reservation, or a reply entry whose
/// connection is missing) if it has been idle longer than `limit_s`.
#[inline(never)]
pub fn expire_alone(key: &FlowKey, limit_s: u32, now: u64) -> bool {
    let Some(entry) = lookup(key) else {
        return false;
    };
    // SAFETY: a field of the entry, changed by others only atomically.
    let at = unsafe { &raw mut (*entry.ptr()).last_seen_s };
    let seen = unsafe { at.read_volatile() };
    if seen == DEAD || now.wrapping_sub(seen) <= limit_s as u64 {
        return false;
    }
    // SAFETY: as above.
    if !unsafe { atomic::swap_if(at, seen, DEAD) } {
        return false;
    }
    let _ = FLOWS.remove(key);
    true
}

/// Queues a connection that just closed, to be removed once it has lingered (once). It
/// no longer counts against its endpoint's limits: a consumer's closed connections
/// do not hold its room while they linger.
#[inline(always)]
pub fn closed(key: &FlowKey, entry: &Entry) {
    if entry.set(tcp::CLOSE_QUEUED) & tcp::CLOSE_QUEUED == 0 {
        let pending = Pending {
            key: *key,
            opened_ns: entry.opened_ns,
            since_ns: now_ns(),
        };
        // Full: the agent's scan removes it after its idle timeout instead.
        let _ = CLOSINGS.push(&pending, 0);
        limits::release(entry.ptr());
    }
}
