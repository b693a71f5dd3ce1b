//! Desired state: the exact contents every map should have for a valid config. Pure:
//! interface names are resolved by the caller, so host tests can build it too.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use endpoint_common::{
    maglev,
    maps::{
        self, Addr, Address, AddressKey, EndpointKey, FAMILY_IPV4, NatAddress, PROTO_TCP, Target,
        address_kind, bounce, role,
    },
};

use crate::config::Config;

/// What the node knows about an interface named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// A veth device (frames sent back out it are redirected, see `maps::bounce`).
    pub veth: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub interfaces: BTreeMap<u32, maps::Interface>,
    pub endpoints: BTreeMap<EndpointKey, maps::Endpoint>,
    pub addresses: BTreeMap<AddressKey, Address>,
    pub nat: Vec<NatAddress>,
    pub config: maps::Config,
    pub targets: Vec<Target>,
    /// All rings, `config.ring_size` slots each, end to end.
    pub rings: Vec<u32>,
}

/// Consumer networks get ids 1, 2, … in name order (0 is the provider side).
pub fn network_ids(config: &Config) -> BTreeMap<&str, u32> {
    let mut names: Vec<&str> = config
        .node
        .interfaces
        .iter()
        .filter_map(|i| i.consumer_network.as_deref())
        .collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().zip(1..).collect()
}

pub fn build(config: &Config, link: impl Fn(&str) -> Result<Link>) -> Result<Desired> {
    let mut desired = Desired::default();
    let networks = network_ids(config);
    let node = &config.node;

    let mut links = BTreeMap::new();
    for interface in &node.interfaces {
        let found = link(&interface.name)
            .with_context(|| format!("interface {:?} (node.interfaces)", interface.name))?;
        links.insert(interface.name.as_str(), found);
        let mut roles = 0;
        if interface.role.consumer() {
            roles |= role::CONSUMER;
        }
        if interface.role.provider() {
            roles |= role::PROVIDER;
        }
        let network = interface
            .consumer_network
            .as_deref()
            .map_or(0, |n| networks[n]);
        desired.interfaces.insert(
            found.ifindex,
            maps::Interface {
                roles,
                network,
                mac: found.mac,
                bounce: if found.veth {
                    bounce::REDIRECT
                } else {
                    bounce::TX
                },
                _pad: 0,
            },
        );
        for &addr in &interface.nat_addresses {
            let addr = Addr::ipv4(addr.octets());
            desired.nat.push(NatAddress {
                addr,
                ifindex: found.ifindex,
                family: FAMILY_IPV4,
                _pad: [0; 3],
            });
            desired.addresses.insert(
                address_key(found.ifindex, addr),
                Address {
                    kind: address_kind::NAT,
                    nat_port_min: node.nat_ports.first,
                    nat_port_max: node.nat_ports.last,
                },
            );
        }
    }

    let ring_size = node.tables.ring_size;
    desired.config = maps::Config {
        ring_size,
        nat_addresses: desired.nat.len() as u32,
        nat_port_min: node.nat_ports.first,
        nat_port_max: node.nat_ports.last,
        hash_seed: node.hash_seed,
    };

    // One ring per listener of each load balancer: (service, lb, port) → ring id.
    let mut rings = BTreeMap::new();
    for (s, service) in config.services.iter().enumerate() {
        for (l, lb) in service.load_balancers.iter().enumerate() {
            for listener in &lb.listeners {
                let first = desired.targets.len() as u32;
                let members: Vec<maglev::Member> = listener
                    .targets
                    .iter()
                    .map(|t| maglev::Member {
                        identity: (u64::from(u32::from(t.ip)) << 16) | u64::from(t.port),
                        weight: t.weight,
                    })
                    .collect();
                desired
                    .targets
                    .extend(listener.targets.iter().map(|t| Target {
                        addr: Addr::ipv4(t.ip.octets()),
                        port_be: t.port.to_be(),
                        family: FAMILY_IPV4,
                        _pad: 0,
                    }));
                let ring = maglev::ring(&members, ring_size, node.hash_seed);
                desired.rings.extend(ring.into_iter().map(|slot| {
                    if slot == maps::NO_TARGET {
                        slot
                    } else {
                        first + slot
                    }
                }));
                rings.insert((s, l, listener.port), rings.len() as u32);
            }
        }
    }

    // Endpoints: spread over their service's load balancers round-robin, in file order.
    let services: BTreeMap<&str, usize> = config
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut per_service = vec![0usize; config.services.len()];
    for (id, endpoint) in (1u32..).zip(&config.endpoints) {
        let Some(&s) = services.get(endpoint.service.as_str()) else {
            bail!("endpoint {:?}: unknown service", endpoint.id);
        };
        let service = &config.services[s];
        let l = per_service[s] % service.load_balancers.len();
        per_service[s] += 1;
        let network = networks[endpoint.consumer_network.as_str()];
        let addr = Addr::ipv4(endpoint.ip.octets());
        for listener in &service.load_balancers[l].listeners {
            desired.endpoints.insert(
                EndpointKey {
                    network,
                    addr,
                    port_be: listener.port.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_IPV4,
                },
                maps::Endpoint {
                    id,
                    state: endpoint.state.code(),
                    ring: rings[&(s, l, listener.port)],
                    service: s as u32 + 1,
                },
            );
        }
        // Answer ARP for the endpoint IP on every interface facing its network.
        for interface in &node.interfaces {
            if interface.consumer_network.as_deref() == Some(endpoint.consumer_network.as_str()) {
                desired.addresses.insert(
                    address_key(links[interface.name.as_str()].ifindex, addr),
                    Address {
                        kind: address_kind::ENDPOINT,
                        nat_port_min: 0,
                        nat_port_max: 0,
                    },
                );
            }
        }
    }
    Ok(desired)
}

fn address_key(ifindex: u32, addr: Addr) -> AddressKey {
    AddressKey {
        ifindex,
        family: FAMILY_IPV4,
        _pad: [0; 3],
        addr,
    }
}
