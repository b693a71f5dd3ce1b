//! Placement: each endpoint is placed on one of its service's load balancers in the
//! endpoint's zone (any zone if none is there), taking turns across the service's
//! endpoints of that zone in file order, so that every node places alike. From that
//! follow the rings: one per listener of a load balancer and zone of the endpoints placed
//! on it. Validation counts them, ids number them and the desired state fills them from
//! this one enumeration.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    config::{Config, Endpoint, Listener, LoadBalancer, Service},
    keys::{ListenerKey, RingKey},
};

/// An endpoint and the load balancer it is placed on.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    pub endpoint: &'a Endpoint,
    pub service: &'a Service,
    pub load_balancer: &'a LoadBalancer,
}

/// One listener of a placed endpoint: its index among the load balancer's listeners
/// (the bit security groups use), and the ring its new flows are hashed over.
pub struct PlacedListener<'a> {
    pub index: usize,
    pub listener: &'a Listener,
    pub key: ListenerKey,
    pub ring: RingKey,
}

impl<'a> Placed<'a> {
    pub fn listeners(&self) -> impl Iterator<Item = PlacedListener<'a>> + '_ {
        self.load_balancer
            .listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                let key = ListenerKey::of(self.service, self.load_balancer, listener);
                let ring = key.ring(&self.endpoint.zone);
                PlacedListener {
                    index,
                    listener,
                    key,
                    ring,
                }
            })
    }
}

/// Every endpoint whose service exists (all of them in a valid config), in file order,
/// with the load balancer it is placed on.
pub fn place(config: &Config) -> Vec<Placed<'_>> {
    let services: BTreeMap<&str, &Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut turns: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    config
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let service = *services.get(endpoint.service.as_str())?;
            let local: Vec<&LoadBalancer> = service
                .load_balancers
                .iter()
                .filter(|lb| lb.zone == endpoint.zone)
                .collect();
            let candidates = if local.is_empty() {
                service.load_balancers.iter().collect()
            } else {
                local
            };
            if candidates.is_empty() {
                return None;
            }
            let turn = turns
                .entry((service.name.as_str(), endpoint.zone.as_str()))
                .or_default();
            let load_balancer = candidates[*turn % candidates.len()];
            *turn += 1;
            Some(Placed {
                endpoint,
                service,
                load_balancer,
            })
        })
        .collect()
}

/// Every ring `config` needs.
pub fn rings(config: &Config) -> BTreeSet<RingKey> {
    place(config)
        .iter()
        .flat_map(|placed| placed.listeners().map(|l| l.ring).collect::<Vec<_>>())
        .collect()
}
