//! Desired state: the exact contents every map should have for a valid config, given
//! the ids to use. Pure: interface names are resolved by the caller, so host tests
//! build it too.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use endpoint_common::{
    maglev,
    maps::{
        self, Addr, Address, AddressKey, EndpointKey, FAMILY_IPV4, NatAddress, PROTO_TCP,
        SecurityGroup, SourcePrefix, Target, address_kind, bounce, endpoint_flag, role,
    },
};

use crate::{
    acceptance,
    config::{Config, Revoke},
    ids::{self, Ids},
};

/// What the node knows about an interface named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// A veth device (frames sent back out it are redirected, see `maps::bounce`).
    pub veth: bool,
}

/// An LPM trie key: prefix length (see [`SourcePrefix::FIXED_BITS`]) and data.
pub type PrefixKey = (u32, SourcePrefix);

/// The contents of the maps the agent owns (not the flow table or the counters).
/// Arrays are listed by index, absent indices hold zeroes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub interfaces: BTreeMap<u32, maps::Interface>,
    pub endpoints: BTreeMap<EndpointKey, maps::Endpoint>,
    pub addresses: BTreeMap<AddressKey, Address>,
    pub security_groups: BTreeMap<PrefixKey, SecurityGroup>,
    pub nat: BTreeMap<u32, NatAddress>,
    pub config: maps::Config,
    pub targets: BTreeMap<u32, Target>,
    /// Ring index → its `config.ring_size` slots (target indices).
    pub rings: BTreeMap<u32, Vec<u32>>,
}

/// The state for `config` with `ids` (see [`Ids::assign`]).
pub fn build(config: &Config, ids: &Ids, link: impl Fn(&str) -> Result<Link>) -> Result<State> {
    let mut state = State::default();
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
            .as_ref()
            .map_or(0, |n| ids.networks[n]);
        state.interfaces.insert(
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
            state.nat.insert(
                state.nat.len() as u32,
                NatAddress {
                    addr,
                    ifindex: found.ifindex,
                    family: FAMILY_IPV4,
                    _pad: [0; 3],
                },
            );
            state.addresses.insert(
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
    state.config = maps::Config {
        ring_size,
        nat_addresses: state.nat.len() as u32,
        nat_port_min: node.nat_ports.first,
        nat_port_max: node.nat_ports.last,
        hash_seed: node.hash_seed,
    };

    for service in &config.services {
        for lb in &service.load_balancers {
            for listener in &lb.listeners {
                let ring = ids::ring_name(&service.name, &lb.name, listener.port);
                let indices: Vec<u32> = listener
                    .targets
                    .iter()
                    .map(|t| ids.targets[&ids::target_name(&ring, t)])
                    .collect();
                for (target, &index) in listener.targets.iter().zip(&indices) {
                    state.targets.insert(
                        index,
                        Target {
                            addr: Addr::ipv4(target.ip.octets()),
                            port_be: target.port.to_be(),
                            family: FAMILY_IPV4,
                            _pad: 0,
                        },
                    );
                }
                let members: Vec<maglev::Member> = listener
                    .targets
                    .iter()
                    .map(|t| maglev::Member {
                        identity: (u64::from(u32::from(t.ip)) << 16) | u64::from(t.port),
                        weight: t.weight,
                    })
                    .collect();
                let slots = maglev::ring(&members, ring_size, node.hash_seed)
                    .into_iter()
                    .map(|slot| match slot {
                        maps::NO_TARGET => slot,
                        member => indices[member as usize],
                    })
                    .collect();
                state.rings.insert(ids.rings[&ring], slots);
            }
        }
    }

    // Endpoints are spread over their service's load balancers round-robin, in file
    // order.
    let services: BTreeMap<&str, &crate::config::Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for endpoint in &config.endpoints {
        let service = services[endpoint.service.as_str()];
        let turn = spread.entry(service.name.as_str()).or_default();
        let lb = &service.load_balancers[*turn % service.load_balancers.len()];
        *turn += 1;
        let id = ids.endpoints[&endpoint.id];
        let network = ids.networks[&endpoint.consumer_network];
        let addr = Addr::ipv4(endpoint.ip.octets());
        let mut flags = 0;
        if endpoint.security_groups.is_some() {
            flags |= endpoint_flag::SECURITY_GROUPS;
        }
        if service.on_revoke == Revoke::Reset {
            flags |= endpoint_flag::RESET_ON_REVOKE;
        }
        let state_code = acceptance::effective(endpoint, service).code();
        for (listener_index, listener) in lb.listeners.iter().enumerate() {
            state.endpoints.insert(
                EndpointKey {
                    network,
                    addr,
                    port_be: listener.port.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_IPV4,
                },
                maps::Endpoint {
                    id,
                    ring: ids.rings[&ids::ring_name(&service.name, &lb.name, listener.port)],
                    service: ids.services[&service.name],
                    state: state_code,
                    flags,
                    listener: listener_index as u8,
                    _pad: 0,
                },
            );
        }
        for rule in endpoint.security_groups.iter().flatten() {
            let ports = lb
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| rule.ports.as_ref().is_none_or(|p| p.contains(&l.port)))
                .fold(0u32, |mask, (i, _)| mask | 1 << i);
            let mut key_addr = [0u8; 16];
            key_addr[..4].copy_from_slice(&rule.cidr.network().octets());
            let key = (
                SourcePrefix::FIXED_BITS + u32::from(rule.cidr.prefix_len()),
                SourcePrefix {
                    endpoint: id,
                    family: FAMILY_IPV4,
                    addr: key_addr,
                    _pad: [0; 3],
                },
            );
            state.security_groups.entry(key).or_default().ports |= ports;
        }
        // Answer ARP for the endpoint IP on every interface facing its network.
        for interface in &node.interfaces {
            if interface.consumer_network.as_ref() == Some(&endpoint.consumer_network) {
                state.addresses.insert(
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
    widen_security_groups(&mut state.security_groups);
    Ok(state)
}

/// An LPM lookup returns only the longest matching prefix, but a source may use the
/// ports of every rule that contains it: give each prefix the ports of the wider
/// prefixes of the same endpoint around it.
fn widen_security_groups(groups: &mut BTreeMap<PrefixKey, SecurityGroup>) {
    let rules: Vec<(PrefixKey, u32)> = groups.iter().map(|(k, v)| (*k, v.ports)).collect();
    for ((len, prefix), group) in groups.iter_mut() {
        for ((wider_len, wider), ports) in &rules {
            if wider.endpoint == prefix.endpoint
                && wider_len < len
                && same_prefix(
                    &wider.addr,
                    &prefix.addr,
                    wider_len - SourcePrefix::FIXED_BITS,
                )
            {
                group.ports |= ports;
            }
        }
    }
}

fn same_prefix(a: &[u8; 16], b: &[u8; 16], bits: u32) -> bool {
    let a = u128::from_be_bytes(*a);
    let b = u128::from_be_bytes(*b);
    bits == 0 || (a ^ b) >> (128 - bits) == 0
}

fn address_key(ifindex: u32, addr: Addr) -> AddressKey {
    AddressKey {
        ifindex,
        family: FAMILY_IPV4,
        _pad: [0; 3],
        addr,
    }
}
