//! Select: the target a new flow goes to (its slot in the endpoint's Maglev ring) and the
//! NAT address it is translated to, both by the flow hash.

use endpoint_common::{
    counter, hash,
    maps::{Config, Endpoint, FlowKey, NO_TARGET, NatAddress, Target},
};

use crate::{
    maps::{CONFIG, NAT, RINGS, TARGETS},
    outcome::Outcome,
};

/// Everything a new flow needs decided before it is opened.
#[repr(C)]
pub struct Choice {
    pub hash: u32,
    pub target_index: u32,
    pub target: Target,
    pub nat: NatAddress,
    pub nat_port_min: u16,
    pub nat_port_max: u16,
}

/// Chooses into `choice` (per-CPU scratch: the stack is too small to carry it).
// Its own BPF function, to keep the caller's stack frame small.
#[inline(never)]
pub fn choose(endpoint: &Endpoint, key: &FlowKey, choice: &mut Choice) -> Result<(), Outcome> {
    let no_target = Outcome::drop_for(counter::DROP_NO_TARGET, endpoint.id);
    let config: Config = match CONFIG.get(0) {
        Some(config) if config.ring_size != 0 => *config,
        _ => return Err(no_target),
    };
    let hash = hash::flow(key, config.hash_seed);

    let slot = endpoint.ring * config.ring_size + hash % config.ring_size;
    let target_index = match RINGS.get(slot) {
        Some(&index) if index != NO_TARGET => index,
        _ => return Err(no_target),
    };
    let target = *TARGETS.get(target_index).ok_or(no_target)?;

    let exhausted = Outcome::drop_for(counter::DROP_NAT_EXHAUSTED, endpoint.id);
    if config.nat_addresses == 0 {
        return Err(exhausted);
    }
    let nat = *NAT.get(hash % config.nat_addresses).ok_or(exhausted)?;
    *choice = Choice {
        hash,
        target_index,
        target,
        nat,
        nat_port_min: config.nat_port_min,
        nat_port_max: config.nat_port_max,
    };
    Ok(())
}
