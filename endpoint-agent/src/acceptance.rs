//! Acceptance: an endpoint's effective state, and the transitions a provider may make.
//!
//! A consumer asks for a connection by adding an endpoint without a `state`. An allowed
//! principal's request is `available` at once when the service needs no acceptance and
//! `pendingAcceptance` when it does; a principal that is not allowed is `rejected`. The
//! provider then accepts (`pendingAcceptance` → `available`) or rejects
//! (`pendingAcceptance` or `available` → `rejected`; rejecting an available endpoint is
//! a revocation, handled as the service's `on_revoke` says).

use std::collections::BTreeMap;

use crate::config::{Config, Endpoint, Service, State};

/// Whether `service` lets `principal` have endpoints.
pub fn allowed(service: &Service, principal: &str) -> bool {
    service
        .allowed_principals
        .iter()
        .any(|p| p == "*" || p == principal)
}

/// The state the data path enforces for `endpoint` of `service`.
pub fn effective(endpoint: &Endpoint, service: &Service) -> State {
    match endpoint.state {
        Some(state) => state,
        None if !allowed(service, &endpoint.principal) => State::Rejected,
        None if service.acceptance_required => State::PendingAcceptance,
        None => State::Available,
    }
}

/// Endpoint id → effective state.
pub fn effective_states(config: &Config) -> BTreeMap<&str, State> {
    config
        .endpoints
        .iter()
        .filter_map(|e| {
            let service = config.services.iter().find(|s| s.name == e.service)?;
            Some((e.id.as_str(), effective(e, service)))
        })
        .collect()
}

/// Whether `endpoint` may carry traffic: it is available, or it was accepted once and
/// its connections may still be draining (or be reset). Only then does the node answer
/// for its address: a request never accepted claims nothing in the consumer network.
pub fn carries_traffic(endpoint: &Endpoint, service: &Service) -> bool {
    effective(endpoint, service) == State::Available || endpoint.accepted_at.is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Reject,
}

/// The state after `decision` on an endpoint in `state`, or why the model refuses it.
pub fn decide(state: State, decision: Decision) -> Result<State, String> {
    match (decision, state) {
        (Decision::Accept, State::PendingAcceptance) => Ok(State::Available),
        (Decision::Reject, State::PendingAcceptance | State::Available) => Ok(State::Rejected),
        (Decision::Accept, State::Available) => Err("it is already available".into()),
        (Decision::Reject, State::Rejected) => Err("it is already rejected".into()),
        (Decision::Accept, other) => Err(format!(
            "it is {other}; only pendingAcceptance endpoints can be accepted"
        )),
        (Decision::Reject, other) => Err(format!(
            "it is {other}; only pendingAcceptance and available endpoints can be rejected"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_transitions_are_allowed() {
        use Decision::*;
        use State::*;
        for state in State::ALL {
            let accepted = decide(state, Accept);
            let rejected = decide(state, Reject);
            assert_eq!(
                accepted.is_ok(),
                state == PendingAcceptance,
                "accept {state}"
            );
            assert_eq!(
                rejected.is_ok(),
                matches!(state, PendingAcceptance | Available),
                "reject {state}"
            );
        }
        assert_eq!(decide(PendingAcceptance, Accept), Ok(Available));
        assert_eq!(decide(Available, Reject), Ok(Rejected));
    }
}
