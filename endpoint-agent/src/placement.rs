//! Placement: each address of an endpoint is placed on one of its service's load
//! balancers in the address's zone (any zone if none is there), taking turns across the
//! service's endpoints of that zone in file order, so that every node places alike (a
//! dual-stack endpoint's two addresses in a zone take one turn: one load balancer). From
//! that follow the rings: one per listener of a load balancer, zone and family of the
//! addresses placed on it. Validation counts them, ids number them and the desired state
//! fills them from this one enumeration.

use std::collections::{BTreeMap, BTreeSet};

use endpoint_common::maps::Addr;

use crate::{
    config::{Config, Endpoint, EndpointAddress, Listener, LoadBalancer, Protocol, Service},
    keys::{ListenerKey, RingKey},
};

/// An endpoint's address and the load balancer it is placed on.
#[derive(Debug, Clone)]
pub struct Placed<'a> {
    pub endpoint: &'a Endpoint,
    pub address: EndpointAddress,
    pub service: &'a Service,
    pub load_balancer: &'a LoadBalancer,
}

/// One listener of a placed address: its index among the service's listeners (the bit
/// security groups use, the same whichever load balancer an address is placed on), and
/// the ring its new flows are hashed over.
pub struct PlacedListener<'a> {
    pub index: usize,
    pub listener: &'a Listener,
    pub key: ListenerKey,
    pub ring: RingKey,
}

impl<'a> Placed<'a> {
    pub fn listeners(&self) -> impl Iterator<Item = PlacedListener<'a>> + '_ {
        self.load_balancer.listeners.iter().map(|listener| {
            let key = ListenerKey::of(self.service, self.load_balancer, listener);
            let ring = key.ring(&self.address.zone, Addr::family_of(self.address.ip));
            let index = listener_index(self.service, listener.port, listener.protocol);
            PlacedListener {
                index,
                listener,
                key,
                ring,
            }
        })
    }
}

/// The service's listeners (port and protocol) over all its load balancers, in order:
/// a listener's index here is its bit in security groups.
pub fn service_listeners(service: &Service) -> Vec<(u16, Protocol)> {
    let all: BTreeSet<(u16, Protocol)> = service
        .load_balancers
        .iter()
        .flat_map(|lb| lb.listeners.iter().map(|l| (l.port, l.protocol)))
        .collect();
    all.into_iter().collect()
}

fn listener_index(service: &Service, port: u16, protocol: Protocol) -> usize {
    service_listeners(service)
        .iter()
        .position(|&l| l == (port, protocol))
        .unwrap_or(0)
}

/// Every address of every endpoint whose service exists (all of them in a valid config),
/// in file order, with the load balancer it is placed on.
pub fn place(config: &Config) -> Vec<Placed<'_>> {
    let services: BTreeMap<&str, &Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut turns: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut placed = Vec::new();
    for endpoint in &config.endpoints {
        let Some(&service) = services.get(endpoint.service.as_str()) else {
            continue;
        };
        // This endpoint's load balancer in each zone so far.
        let mut chosen: BTreeMap<String, &LoadBalancer> = BTreeMap::new();
        for address in endpoint.addresses() {
            if let Some(&load_balancer) = chosen.get(&address.zone) {
                placed.push(Placed {
                    endpoint,
                    address,
                    service,
                    load_balancer,
                });
                continue;
            }
            let local: Vec<&LoadBalancer> = service
                .load_balancers
                .iter()
                .filter(|lb| lb.zone == address.zone)
                .collect();
            let candidates = if local.is_empty() {
                service.load_balancers.iter().collect()
            } else {
                local
            };
            if candidates.is_empty() {
                continue;
            }
            let turn = turns
                .entry((service.name.as_str(), address.zone.clone()))
                .or_default();
            let load_balancer = candidates[*turn % candidates.len()];
            *turn += 1;
            chosen.insert(address.zone.clone(), load_balancer);
            placed.push(Placed {
                endpoint,
                address,
                service,
                load_balancer,
            });
        }
    }
    placed
}

/// Every ring `config` needs.
pub fn rings(config: &Config) -> BTreeSet<RingKey> {
    place(config)
        .iter()
        .flat_map(|placed| placed.listeners().map(|l| l.ring).collect::<Vec<_>>())
        .collect()
}
