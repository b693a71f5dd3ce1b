//! Ids: the numbers the maps use for consumer networks, services, endpoints, targets and
//! rings. They are kept stable across config changes and agent restarts (persisted in
//! the state directory): flow keys carry the network id and flow entries the endpoint
//! and target, so renumbering would cut established connections.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::Config;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// Consumer network → id (≥ 1; 0 is the provider side).
    pub networks: BTreeMap<String, u32>,
    /// Service → id (≥ 1).
    pub services: BTreeMap<String, u32>,
    /// Endpoint → id (≥ 1; its counter slot).
    pub endpoints: BTreeMap<String, u32>,
    /// `service/load balancer/port@zone` → ring index: one per listener and zone of the
    /// endpoints mapped onto it.
    pub rings: BTreeMap<String, u32>,
    /// `service/load balancer/port/ip:port` → target index (≥ 1: a zeroed ring slot
    /// means "never written").
    pub targets: BTreeMap<String, u32>,
}

/// The name of a listener of a load balancer.
pub fn listener_name(service: &str, lb: &str, port: u16) -> String {
    format!("{service}/{lb}/{port}")
}

/// The name of the ring of a listener for endpoints in `zone`.
pub fn ring_name(listener: &str, zone: &str) -> String {
    format!("{listener}@{zone}")
}

/// The name of a target of a listener.
pub fn target_name(listener: &str, target: &crate::config::Target) -> String {
    format!("{listener}/{}:{}", target.ip, target.port)
}

impl Ids {
    /// Ids for `config`: everything that still exists keeps its id; new things get the
    /// lowest id that `self` does not use — not one freed by this very change, which the
    /// maps may still refer to until it is applied — and what is gone is forgotten.
    pub fn assign(&self, config: &Config) -> Ids {
        let networks = config
            .node
            .interfaces
            .iter()
            .filter_map(|i| i.consumer_network.clone());
        let services = config.services.iter().map(|s| s.name.clone());
        let endpoints = config.endpoints.iter().map(|e| e.id.clone());
        let mut targets = Vec::new();
        for service in &config.services {
            for lb in &service.load_balancers {
                for listener in &lb.listeners {
                    let name = listener_name(&service.name, &lb.name, listener.port);
                    targets.extend(listener.targets.iter().map(|t| target_name(&name, t)));
                }
            }
        }
        let mut rings = Vec::new();
        for (endpoint, lb) in config
            .endpoints
            .iter()
            .zip(crate::desired::placement(config))
        {
            let Some(service) = config.services.iter().find(|s| s.name == endpoint.service) else {
                continue;
            };
            let lb = &service.load_balancers[lb];
            for listener in &lb.listeners {
                let listener = listener_name(&service.name, &lb.name, listener.port);
                rings.push(ring_name(&listener, &endpoint.zone));
            }
        }
        Ids {
            networks: keep(&self.networks, networks, 1),
            services: keep(&self.services, services, 1),
            endpoints: keep(&self.endpoints, endpoints, 1),
            rings: keep(&self.rings, rings, 0),
            targets: keep(&self.targets, targets, 1),
        }
    }
}

fn keep(
    old: &BTreeMap<String, u32>,
    names: impl IntoIterator<Item = String>,
    first: u32,
) -> BTreeMap<String, u32> {
    let names: BTreeSet<String> = names.into_iter().collect();
    let mut ids: BTreeMap<String, u32> = old
        .iter()
        .filter(|(name, _)| names.contains(*name))
        .map(|(name, &id)| (name.clone(), id))
        .collect();
    let mut used: BTreeSet<u32> = old.values().copied().collect();
    let mut next = first;
    for name in names {
        if ids.contains_key(&name) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        used.insert(next);
        ids.insert(name, next);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kept_names_keep_their_ids_and_new_ones_fill_gaps() {
        let first = keep(&BTreeMap::new(), names(&["b", "a", "c"]), 1);
        assert_eq!(
            first.values().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([1, 2, 3])
        );
        let second = keep(&first, names(&["c", "d", "a"]), 1);
        assert_eq!(second["a"], first["a"]);
        assert_eq!(second["c"], first["c"]);
        assert_eq!(
            second["d"], 4,
            "an id freed by this change is not reused by it"
        );
        assert!(!second.contains_key("b"));
        let third = keep(&second, names(&["c", "d", "a", "e"]), 1);
        assert_eq!(third["e"], first["b"], "but by the next one");
    }

    #[test]
    fn inserting_a_network_that_sorts_first_moves_nobody() {
        let first = keep(&BTreeMap::new(), names(&["vpc-b"]), 1);
        let second = keep(&first, names(&["vpc-a", "vpc-b"]), 1);
        assert_eq!(second["vpc-b"], first["vpc-b"]);
        assert_eq!(second["vpc-a"], 2);
    }
}
