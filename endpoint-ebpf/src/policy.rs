//! Policy: acceptance and security groups, enforced on every packet. An endpoint that
//! is not `available` opens no flow; its established flows drain or are reset, as its
//! service says. A source outside the endpoint's security groups is dropped.

use aya_ebpf::maps::lpm_trie::Key;
use endpoint_common::{
    counter,
    maps::{Endpoint, FAMILY_IPV4, SourcePrefix, endpoint_flag, state},
};

use crate::{maps::SECURITY_GROUPS, outcome::Outcome, parse::Tcp};

/// What an endpoint's state lets a packet do.
pub enum Admission {
    /// Available: everything, including opening flows.
    Open,
    /// Revoked (or never accepted), draining: only established flows carry on.
    EstablishedOnly,
    /// Revoked with `reset`: established flows are answered with a RST.
    Reset,
}

#[inline(always)]
pub fn admission(endpoint: &Endpoint) -> Admission {
    if endpoint.state == state::AVAILABLE {
        Admission::Open
    } else if endpoint.flags & endpoint_flag::RESET_ON_REVOKE != 0 {
        Admission::Reset
    } else {
        Admission::EstablishedOnly
    }
}

/// Why a packet that may not open a flow and has none is dropped.
#[inline(always)]
pub fn refused(endpoint: &Endpoint) -> Outcome {
    Outcome::drop_for(counter::drop_for_state(endpoint.state), endpoint.id)
}

/// Drops sources outside the endpoint's security groups (when it has any).
#[inline(always)]
pub fn security_groups(endpoint: &Endpoint, packet: &Tcp) -> Result<(), Outcome> {
    if endpoint.flags & endpoint_flag::SECURITY_GROUPS == 0 {
        return Ok(());
    }
    check_security_groups(endpoint, packet)
}

// Its own BPF function, to keep the caller's stack frame small.
#[inline(never)]
fn check_security_groups(endpoint: &Endpoint, packet: &Tcp) -> Result<(), Outcome> {
    // SAFETY: `parse` checked the header lies within the frame.
    let source = unsafe { (*packet.ip).src_addr };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&source);
    let key = Key::new(
        SourcePrefix::FIXED_BITS + 32,
        SourcePrefix {
            endpoint: endpoint.id,
            family: FAMILY_IPV4,
            addr,
            _pad: [0; 3],
        },
    );
    match SECURITY_GROUPS.get(&key) {
        Some(group) if group.ports & (1 << endpoint.listener) != 0 => Ok(()),
        _ => Err(Outcome::drop_for(counter::DROP_SECURITY_GROUP, endpoint.id)),
    }
}
