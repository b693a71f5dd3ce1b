//! Desired state: the exact contents every map should have for a valid config, given
//! the ids to use. Pure: interface names are resolved by the caller, so host tests
//! build it too.

use std::collections::{BTreeMap, BTreeSet};

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
    config::{Config, CrossZone, Listener, LoadBalancer, Node, Revoke},
    ids::{self, Ids},
    keys::{ListenerKey, TargetKey},
    placement,
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

/// The state for `config` with `ids` (see [`Ids::assign`]), given the targets found
/// unhealthy.
pub fn build(
    config: &Config,
    ids: &Ids,
    unhealthy: &BTreeSet<TargetKey>,
    link: impl Fn(&str) -> Result<Link>,
) -> Result<State> {
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

    // Targets, each once per listener.
    for (key, target) in ids::targets(config) {
        state.targets.insert(
            ids.targets[&key],
            Target {
                addr: Addr::ipv4(target.ip.octets()),
                port_be: target.port.to_be(),
                family: FAMILY_IPV4,
                _pad: 0,
            },
        );
    }

    for placed in placement::place(config) {
        let (endpoint, service, lb) = (placed.endpoint, placed.service, placed.load_balancer);
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
        for listener in placed.listeners() {
            let ring = ids.rings[&listener.ring];
            state.rings.entry(ring).or_insert_with(|| {
                ring_slots(
                    listener.listener,
                    lb,
                    &endpoint.zone,
                    &listener.key,
                    ids,
                    unhealthy,
                    node,
                )
            });
            state.endpoints.insert(
                EndpointKey {
                    network,
                    addr,
                    port_be: listener.listener.port.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_IPV4,
                },
                maps::Endpoint {
                    id,
                    ring,
                    service: ids.services[&service.name],
                    state: state_code,
                    flags,
                    listener: listener.index as u8,
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

/// The Maglev ring of `listener` for endpoints in `zone`: healthy targets of the zone,
/// or of every zone as `cross_zone` says; when none is healthy it fails open (as an NLB
/// does) and uses them all rather than none.
fn ring_slots(
    listener: &Listener,
    lb: &LoadBalancer,
    zone: &str,
    key: &ListenerKey,
    ids: &Ids,
    unhealthy: &BTreeSet<TargetKey>,
    node: &Node,
) -> Vec<u32> {
    let named: Vec<(TargetKey, &crate::config::Target)> = listener
        .targets
        .iter()
        .map(|t| (key.target(t), t))
        .collect();
    let in_zone = |t: &crate::config::Target| t.zone.as_deref().unwrap_or(&lb.zone) == zone;
    let healthy = |name: &TargetKey| !unhealthy.contains(name);
    let pick = |keep: &dyn Fn(&crate::config::Target) -> bool, need_healthy: bool| {
        named
            .iter()
            .filter(|(name, t)| keep(t) && (!need_healthy || healthy(name)) && t.weight > 0)
            .collect::<Vec<_>>()
    };
    let everywhere = |_: &crate::config::Target| true;
    let chosen = match lb.cross_zone {
        CrossZone::Always => Some(pick(&everywhere, true)),
        CrossZone::Never => Some(pick(&in_zone, true)),
        CrossZone::OnFailure => [pick(&in_zone, true), pick(&everywhere, true)]
            .into_iter()
            .find(|set| !set.is_empty()),
    }
    .filter(|set| !set.is_empty())
    .unwrap_or_else(|| match lb.cross_zone {
        CrossZone::Never => pick(&in_zone, false),
        _ => pick(&everywhere, false),
    });
    let members: Vec<maglev::Member> = chosen
        .iter()
        .map(|(_, t)| maglev::Member {
            identity: (u64::from(u32::from(t.ip)) << 16) | u64::from(t.port),
            weight: t.weight,
        })
        .collect();
    maglev::ring(&members, node.tables.ring_size, node.hash_seed)
        .into_iter()
        .map(|slot| match slot {
            maps::NO_TARGET => slot,
            member => ids.targets[&chosen[member as usize].0],
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{facts::Facts, validate};

    const ZONED: &str = "
node:
  interfaces:
    - { name: cons, role: consumer, consumer_network: vpc }
    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }
services:
  - name: s
    acceptance_required: false
    allowed_principals: [p]
    load_balancers:
      - name: a1
        zone: za
        cross_zone: CROSS
        listeners:
          - port: 80
            targets:
              - { ip: 172.16.0.10, port: 80 }
              - { ip: 172.16.0.11, port: 80 }
              - { ip: 172.16.0.20, port: 80, zone: zb }
      - name: a2
        zone: za
        listeners: [{ port: 80, targets: [{ ip: 172.16.0.12, port: 80 }] }]
      - name: b1
        zone: zb
        listeners: [{ port: 80, targets: [{ ip: 172.16.0.21, port: 80 }] }]
endpoints:
  - { id: e1, service: s, principal: p, consumer_network: vpc, ip: 10.0.0.1, zone: za }
  - { id: e2, service: s, principal: p, consumer_network: vpc, ip: 10.0.0.2, zone: zb }
  - { id: e3, service: s, principal: p, consumer_network: vpc, ip: 10.0.0.3, zone: za }
  - { id: e4, service: s, principal: p, consumer_network: vpc, ip: 10.0.0.4, zone: zc }
  - { id: e5, service: s, principal: p, consumer_network: vpc, ip: 10.0.0.5, zone: zc }
  - { id: e6, service: s, principal: p, consumer_network: vpc, ip: 10.0.0.6, zone: za }
";

    fn link(name: &str) -> Result<Link> {
        Ok(Link {
            ifindex: if name == "cons" { 2 } else { 3 },
            mac: [2, 0, 0, 0, 0, 1],
            veth: false,
        })
    }

    fn config(cross: &str) -> Config {
        validate::load("t", &ZONED.replace("CROSS", cross), &Facts::default())
            .expect("valid")
            .config
    }

    #[test]
    fn endpoints_go_round_robin_over_the_load_balancers_of_their_zone() {
        // za has a1, a2 (e1, e3, e6 take turns); zb has b1; zc has none: all three.
        let config = config("on_failure");
        let placed: Vec<&str> = placement::place(&config)
            .iter()
            .map(|p| p.load_balancer.name.as_str())
            .collect();
        assert_eq!(placed, ["a1", "b1", "a2", "a1", "a2", "a1"]);
    }

    /// The targets (addresses) e1's ring (a1, zone za) uses, given unhealthy targets.
    fn e1_targets(cross: &str, unhealthy: &[&str]) -> BTreeSet<String> {
        let config = config(cross);
        let ids = Ids::default().assign(&config);
        let a1 = ListenerKey {
            service: "s".into(),
            load_balancer: "a1".into(),
            port: 80,
        };
        let unhealthy = unhealthy
            .iter()
            .map(|t| TargetKey {
                listener: a1.clone(),
                ip: format!("172.16.0.{t}").parse().unwrap(),
                port: 80,
            })
            .collect();
        let state = build(&config, &ids, &unhealthy, link).unwrap();
        let ring = ids.rings[&a1.ring("za")];
        state.rings[&ring]
            .iter()
            .map(|index| {
                let target = state.targets[index];
                format!(
                    "{}",
                    std::net::Ipv4Addr::from(target.addr.ipv4_be().to_ne_bytes())
                )
            })
            .collect()
    }

    fn set(addresses: &[&str]) -> BTreeSet<String> {
        addresses.iter().map(|a| format!("172.16.0.{a}")).collect()
    }

    #[test]
    fn rings_prefer_the_zone_and_fall_back_across_zones_as_configured() {
        assert_eq!(e1_targets("on_failure", &[]), set(&["10", "11"]));
        assert_eq!(e1_targets("on_failure", &["10"]), set(&["11"]));
        assert_eq!(
            e1_targets("on_failure", &["10", "11"]),
            set(&["20"]),
            "fallback"
        );
        assert_eq!(e1_targets("always", &[]), set(&["10", "11", "20"]));
        assert_eq!(e1_targets("always", &["20"]), set(&["10", "11"]));
        assert_eq!(e1_targets("never", &["10"]), set(&["11"]));
        // Nowhere healthy: fail open rather than drop everything.
        assert_eq!(e1_targets("never", &["10", "11"]), set(&["10", "11"]));
        assert_eq!(
            e1_targets("on_failure", &["10", "11", "20"]),
            set(&["10", "11", "20"])
        );
    }
}
