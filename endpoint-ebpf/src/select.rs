//! Select: the target a new flow goes to (its slot in the listener's Maglev ring) and the
//! NAT address it is translated to, both by the flow hash.

use endpoint_common::{
    counter, hash,
    maps::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, MAX_NAT_ADDRESSES, NO_TARGET, Scratch, Settings},
};

use crate::{
    maps::{RINGS, TARGETS},
    outcome::Outcome,
};

/// Chooses into `scratch` (per-CPU: the stack is too small to carry it): `hash`,
/// `target_index`, `target` and `nat`.
// Its own BPF function, to keep the caller's stack frame small.
#[inline(never)]
pub fn choose(
    ring: u32,
    key: &FlowKey,
    settings: &Settings,
    scratch: &mut Scratch,
) -> Result<(), Outcome> {
    let slot = scratch.forward.slot;
    let no_target = Outcome::drop_for(counter::DROP_NO_TARGET, slot);
    if settings.ring_size == 0 {
        return Err(no_target);
    }
    let hash = hash::flow(key, settings.hash_seed);
    let index = ring * settings.ring_size + hash % settings.ring_size;
    let target_index = match RINGS.get_ptr(index) {
        // SAFETY: an aligned u32 the agent writes with one store.
        Some(slot) => unsafe { slot.read_volatile() },
        None => return Err(no_target),
    };
    if target_index == NO_TARGET {
        return Err(no_target);
    }
    let target = *TARGETS.get(target_index).ok_or(no_target)?;
    if target.family == 0 {
        return Err(no_target);
    }

    let exhausted = Outcome::drop_for(counter::DROP_NAT_EXHAUSTED, slot);
    // The target's family's NAT addresses: IPv4 ones first, then IPv6.
    let (first, count) = if target.family == FAMILY_IPV6 {
        (settings.nat_ipv4 as usize, settings.nat_ipv6 as u64)
    } else {
        (0, settings.nat_ipv4 as u64)
    };
    if count == 0 || first >= MAX_NAT_ADDRESSES {
        return Err(exhausted);
    }
    // `hash * count / 2^32` spreads like `hash % count`, and the verifier can follow
    // its bounds (it cannot a remainder's): the index is below `count`.
    let index = first + ((hash as u64 * count) >> 32) as usize;
    let nat = settings.nat.get(index).ok_or(exhausted)?;
    scratch.hash = hash;
    scratch.target_index = target_index;
    scratch.target = target;
    scratch.nat = *nat;
    Ok(())
}

/// Whether the chosen target can be reached from `family`, the consumer's: of the same
/// family, or IPv4 from IPv6 (translated).
#[inline(always)]
pub fn reachable_from(scratch: &Scratch, family: u8) -> Result<(), Outcome> {
    let target = scratch.target.family;
    if target != family && !(family == FAMILY_IPV6 && target == FAMILY_IPV4) {
        return Err(Outcome::drop_for(
            counter::DROP_NO_TARGET,
            scratch.forward.slot,
        ));
    }
    Ok(())
}
