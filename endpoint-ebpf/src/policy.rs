//! Policy: acceptance and security groups, enforced on every packet. An endpoint that
//! is not `available` opens no flow (a SYN on an existing flow included); its
//! established flows drain or are reset, as its service says; a flow whose endpoint
//! is gone stops. A source outside the endpoint's security groups is dropped.
//!
//! A flow keeps the policy word it was admitted under ([`Flow::policy`]): while the
//! endpoint's word is the same, one array read decides; when it changed, the flow is
//! judged again here.

use aya_ebpf::maps::lpm_trie::Key;
use endpoint_common::{
    counter,
    maps::{Flow, Policy, SourcePrefix, policy_flag, state},
};

use crate::{
    maps::{POLICIES, SECURITY_GROUPS},
    mem,
    outcome::Outcome,
    parse::Packet,
};

/// What an endpoint's policy lets a packet do.
pub enum Admission {
    /// Available: everything, including opening flows.
    Open,
    /// Revoked (or never accepted), draining: only established flows carry on.
    EstablishedOnly,
    /// Revoked, or deleted, with `reset`: established flows are answered with a RST.
    Reset,
    /// Deleted, or replaced by another endpoint: the flow is removed.
    Gone,
}

/// The policy word of endpoint slot `slot` now (one aligned load: the agent writes it
/// with one store).
#[inline(always)]
pub fn word(slot: u32) -> u64 {
    match POLICIES.get_ptr(slot) {
        // SAFETY: an aligned u64 in an array value.
        Some(word) => unsafe { word.read_volatile() },
        None => 0,
    }
}

/// What the endpoint's policy `now` lets a flow admitted under `then` do.
#[inline(always)]
pub fn admission(then: u64, now: u64) -> Admission {
    let (then, now) = (Policy::of(then), Policy::of(now));
    if now.uid != then.uid {
        if then.flags & policy_flag::RESET_ON_REVOKE != 0 {
            Admission::Reset
        } else {
            Admission::Gone
        }
    } else {
        of(now)
    }
}

/// What an endpoint with `policy` lets a packet do.
#[inline(always)]
pub fn of(policy: Policy) -> Admission {
    if policy.state == state::AVAILABLE {
        Admission::Open
    } else if policy.flags & policy_flag::RESET_ON_REVOKE != 0 {
        Admission::Reset
    } else {
        Admission::EstablishedOnly
    }
}

/// Why a packet that may not open a flow is dropped.
#[inline(always)]
pub fn refused(policy: Policy, slot: u32) -> Outcome {
    if policy.uid == 0 {
        return Outcome::drop_for(counter::DROP_FLOW_GONE, slot);
    }
    Outcome::drop_for(counter::drop_for_state(policy.state), slot)
}

/// Any listener of an endpoint (an echo request is for the endpoint as a whole).
pub const ANY_LISTENER: u8 = u8::MAX;

/// Drops `packet` if its source is outside the endpoint's security groups (when it has
/// any) for the listener `listener`, or for every one of them ([`ANY_LISTENER`]).
#[inline(always)]
pub fn security_groups(word: u64, slot: u32, listener: u8, packet: &Packet) -> Result<(), Outcome> {
    if Policy::of(word).flags & policy_flag::SECURITY_GROUPS == 0 {
        return Ok(());
    }
    check_security_groups(slot, listener, packet)
}

// Its own BPF function, to keep the caller's stack frame small.
#[inline(never)]
fn check_security_groups(slot: u32, listener: u8, packet: &Packet) -> Result<(), Outcome> {
    let mut key = core::mem::MaybeUninit::<Key<SourcePrefix>>::uninit();
    mem::zero(key.as_mut_ptr());
    // SAFETY: zeroed just above (padding and the address's unused bytes included).
    let key = unsafe { key.assume_init_mut() };
    key.prefix_len = SourcePrefix::FIXED_BITS + if packet.is_ipv6() { 128 } else { 32 };
    key.data.slot = slot;
    key.data.family = packet.family();
    key.data.addr = packet.src().octets();
    match SECURITY_GROUPS.get(&*key) {
        Some(group) if listener == ANY_LISTENER && group.ports != 0 => Ok(()),
        Some(group) if group.ports & (1 << (listener & 31)) != 0 => Ok(()),
        _ => Err(Outcome::drop_for(counter::DROP_SECURITY_GROUP, slot)),
    }
}

/// What becomes of a flow its endpoint's policy no longer admits.
pub enum Refusal {
    /// This packet is dropped; the flow stays (a SYN to a draining endpoint).
    Drop(Outcome),
    /// The flow is removed and the packet dropped.
    Cut(Outcome),
    /// The flow is removed and the packet answered with a RST (counted for the slot).
    Reset(u32),
}

impl Refusal {
    /// Whether the flow goes.
    #[inline(always)]
    pub fn removes(&self) -> bool {
        !matches!(self, Refusal::Drop(_))
    }
}

/// The policy word a consumer-to-target flow `flow` keeps — its endpoint's now — if
/// `packet` may still use it (`syn`: it would open the connection again).
#[inline(never)]
pub fn recheck(flow: &Flow, packet: &Packet, syn: bool) -> Result<u64, Refusal> {
    let now = word(flow.slot);
    match admission(flow.policy, now) {
        Admission::Open => {}
        Admission::EstablishedOnly if !syn => {}
        // A SYN to a draining endpoint is refused like any other new connection.
        Admission::EstablishedOnly => {
            return Err(Refusal::Drop(refused(Policy::of(now), flow.slot)));
        }
        Admission::Reset => return Err(Refusal::Reset(flow.slot)),
        // Blamed on no endpoint: the slot may have a new owner.
        Admission::Gone => return Err(Refusal::Cut(Outcome::drop(counter::DROP_FLOW_GONE))),
    }
    // A source the groups no longer admit loses its flow.
    security_groups(now, flow.slot, flow.listener, packet).map_err(Refusal::Cut)?;
    Ok(now)
}

/// The same for a reply: only whether the endpoint is still there (and not revoked
/// with `reset`) matters; the consumer side enforces the rest.
#[inline(always)]
pub fn recheck_reply(flow: &Flow) -> Result<u64, Refusal> {
    let now = word(flow.slot);
    match admission(flow.policy, now) {
        Admission::Open | Admission::EstablishedOnly => Ok(now),
        Admission::Reset => Err(Refusal::Reset(flow.slot)),
        Admission::Gone => Err(Refusal::Cut(Outcome::drop(counter::DROP_FLOW_GONE))),
    }
}
