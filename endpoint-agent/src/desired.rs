//! Desired: the exact contents every map should have for a valid config, given the ids
//! to use, the node's facts and the targets found unhealthy. Pure, so host tests build
//! it too. Interfaces the node does not have (yet) are left out and reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use endpoint_common::{
    maglev,
    maps::{
        self, Addr, Address, AddressKey, DnsSettings, EndpointKey, EndpointRef, FAMILY_IPV4,
        Interface, Limits, Name, NameKey, NatAddress, Policy, SecurityGroup, Settings,
        SourcePrefix, Target, address_kind, bounce, nat_scope, policy_flag, ports_index, role,
    },
};

use crate::{
    acceptance,
    config::{
        self, Config, CrossZone, HALF_OPEN_PER_ENDPOINT, Listener, LoadBalancer, Revoke, Service,
    },
    facts::Facts,
    ids::{self, Ids},
    keys::{ListenerKey, TargetKey},
    placement,
};

/// An LPM trie key: prefix length (see [`SourcePrefix::FIXED_BITS`]) and data.
pub type PrefixKey = (u32, SourcePrefix);

/// The contents of the maps the agent owns (not the flow table, the queues, the usage
/// or the counters). Arrays are listed by index, absent indices hold zeroes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    pub interfaces: BTreeMap<u32, Interface>,
    /// (`PORTS` index, port) pairs some endpoint listens on.
    pub ports: BTreeSet<(u32, u16)>,
    pub endpoints: BTreeMap<EndpointKey, EndpointRef>,
    /// Slot → policy word.
    pub policies: BTreeMap<u32, u64>,
    pub limits: BTreeMap<u32, Limits>,
    pub security_groups: BTreeMap<PrefixKey, SecurityGroup>,
    pub addresses: BTreeMap<AddressKey, Address>,
    pub settings: Settings,
    pub targets: BTreeMap<u32, Target>,
    /// Ring index → its `settings.ring_size` slots (target indices).
    pub rings: BTreeMap<u32, Vec<u32>>,
    /// Each consumer network's DNS names (see `names`).
    pub names: BTreeMap<NameKey, Name>,
    pub dns: DnsSettings,
}

/// The contents for `config`, and the interfaces it names that the node does not have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub contents: Contents,
    pub missing: Vec<String>,
}

/// The contents for `config` with `ids` (see [`Ids::assign`]) on the node `facts`
/// describe, with hash seed `seed`, given the targets found unhealthy.
pub fn build(
    config: &Config,
    ids: &Ids,
    facts: &Facts,
    seed: u32,
    unhealthy: &BTreeSet<TargetKey>,
) -> Desired {
    let mut desired = Desired::default();
    let state = &mut desired.contents;
    let node = &config.node;

    let mut nat = Vec::new();
    let mut links = BTreeMap::new();
    for interface in &node.interfaces {
        let Some(link) = facts.links.get(&interface.name) else {
            desired.missing.push(interface.name.clone());
            continue;
        };
        links.insert(interface.name.as_str(), link.ifindex);
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
        let provider = interface.role.provider();
        state.interfaces.insert(
            link.ifindex,
            Interface {
                network,
                roles,
                bounce: if link.veth {
                    bounce::REDIRECT
                } else {
                    bounce::TX
                },
                mac: link.mac,
                mtu: link.mtu,
                nat_port_min: if provider { node.nat_ports.first } else { 0 },
                nat_port_max: if provider { node.nat_ports.last } else { 0 },
                ..Interface::default()
            },
        );
        for &ip in &interface.nat_addresses {
            nat.push(NatAddress {
                addr: Addr::from(ip),
                ifindex: link.ifindex,
                family: Addr::family_of(ip),
                _pad: [0; 3],
            });
            state.addresses.insert(
                address_key(nat_scope(link.ifindex), ip),
                Address {
                    kind: address_kind::NAT,
                    slot: 0,
                },
            );
        }
    }

    // The data path takes a flow's NAT address from its target's family's part of the
    // list: the IPv4 ones first, then the IPv6 ones (each in file order).
    nat.sort_by_key(|a| a.family != FAMILY_IPV4);
    let nat_ipv4 = nat.iter().filter(|a| a.family == FAMILY_IPV4).count();
    state.settings = Settings {
        ring_size: node.tables.ring_size,
        hash_seed: seed,
        nat_port_min: node.nat_ports.first,
        nat_port_max: node.nat_ports.last,
        nat_ipv4: nat_ipv4 as u16,
        nat_ipv6: (nat.len() - nat_ipv4) as u16,
        half_open_per_network: node.limits.half_open_per_network,
        resets_per_second: node.limits.resets_per_second,
        icmp_per_second: node.limits.icmp_per_second,
        handshake_s: node.timeouts.handshake_seconds,
        closed_s: node.timeouts.closed_seconds,
        time_wait_s: node.timeouts.time_wait_seconds,
        ..Settings::default()
    };
    for (slot, address) in state.settings.nat.iter_mut().zip(nat) {
        *slot = address;
    }

    for (key, target) in ids::targets(config) {
        state.targets.insert(
            ids.targets[&key],
            Target {
                addr: Addr::from(target.ip),
                port_be: target.port.to_be(),
                family: Addr::family_of(target.ip),
                _pad: 0,
            },
        );
    }

    let rings = Rings {
        ids,
        unhealthy,
        size: node.tables.ring_size,
        seed,
    };
    for placed in placement::place(config) {
        let (endpoint, service, lb) = (placed.endpoint, placed.service, placed.load_balancer);
        let slot = ids.endpoints[&endpoint.id];
        let network = ids.networks[&endpoint.consumer_network];
        let ip = placed.address.ip;
        for listener in placed.listeners() {
            let ring = ids.rings[&listener.ring];
            state.rings.entry(ring).or_insert_with(|| {
                ring_slots(
                    listener.listener,
                    lb,
                    &placed.address.zone,
                    Addr::family_of(ip),
                    &listener.key,
                    &rings,
                )
            });
            let proto = listener.listener.protocol.number();
            state.endpoints.insert(
                EndpointKey {
                    network,
                    addr: Addr::from(ip),
                    port_be: listener.listener.port.to_be(),
                    proto,
                    family: Addr::family_of(ip),
                },
                EndpointRef {
                    slot,
                    ring,
                    listener: listener.index as u32,
                },
            );
            state
                .ports
                .insert((ports_index(network, proto), listener.listener.port));
        }
        // The node answers ARP for the endpoint's addresses only while it can carry
        // traffic: a request that was never accepted cannot claim an address (ARP for it
        // is only counted, for `pending_traffic`).
        let kind = if acceptance::carries_traffic(endpoint, service) {
            address_kind::ENDPOINT
        } else {
            address_kind::WAITING
        };
        state
            .addresses
            .insert(address_key(network, ip), Address { kind, slot });
    }
    let services: BTreeMap<&str, &Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    for endpoint in &config.endpoints {
        let Some(&service) = services.get(endpoint.service.as_str()) else {
            continue;
        };
        let slot = ids.endpoints[&endpoint.id];
        let listeners = placement::service_listeners(service);
        let mut groups = BTreeMap::new();
        for rule in endpoint.security_groups.iter().flatten() {
            let ports = listeners
                .iter()
                .enumerate()
                .filter(|(_, (port, _))| rule.ports.as_ref().is_none_or(|p| p.contains(port)))
                .filter(|(_, (_, protocol))| rule.protocol.is_none_or(|p| p == *protocol))
                .fold(0u32, |mask, (i, _)| mask | 1 << i);
            let network = rule.cidr.network();
            let key = (
                SourcePrefix::FIXED_BITS + u32::from(rule.cidr.prefix_len()),
                SourcePrefix {
                    slot,
                    family: Addr::family_of(network),
                    addr: Addr::from(network).octets(),
                    _pad: [0; 3],
                },
            );
            groups.entry(key).or_insert(SecurityGroup::default()).ports |= ports;
        }
        widen_security_groups(&mut groups);
        let mut flags = 0;
        if endpoint.security_groups.is_some() {
            flags |= policy_flag::SECURITY_GROUPS;
        }
        if service.on_revoke == Revoke::Reset {
            flags |= policy_flag::RESET_ON_REVOKE;
        }
        let policy = Policy {
            uid: ids.uids[&endpoint.id],
            revision: revision(&groups),
            state: acceptance::effective(endpoint, service).code(),
            flags,
        };
        state.policies.insert(slot, policy.word());
        state.security_groups.extend(groups);
        state
            .limits
            .insert(slot, limits(endpoint.limits.or(service.limits), service));
    }
    desired
}

/// The revision of an endpoint's security groups: a digest of what the trie holds for
/// it, 24 bits (policy words of different groups are equal once in 16 million).
fn revision(groups: &BTreeMap<PrefixKey, SecurityGroup>) -> u32 {
    // FNV-1a over the entries, without the slot (the same groups on another slot are
    // the same revision).
    let mut hash: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    for ((length, prefix), group) in groups {
        // IPv4 entries digest as before IPv6 (their revisions stay across the upgrade).
        if prefix.family != FAMILY_IPV4 {
            eat(&[prefix.family]);
        }
        eat(&length.to_le_bytes());
        eat(&prefix.addr);
        eat(&group.ports.to_le_bytes());
    }
    hash & 0xff_ffff
}

/// An endpoint's limits in the map's terms, with its service's timeouts and MSS.
fn limits(limits: config::Limits, service: &Service) -> Limits {
    let rate = limits.new_connections_per_second.unwrap_or(0);
    let interval_ns = if rate == 0 {
        0
    } else {
        1_000_000_000 / u64::from(rate)
    };
    // Bursts of `burst` back to back: the pace may run that many intervals ahead.
    let burst = limits.burst.unwrap_or((rate / 10).max(1));
    Limits {
        idle_timeout_s: service.idle_timeout_seconds,
        udp_idle_timeout_s: service.udp_idle_timeout_seconds,
        connections: limits.connections.unwrap_or(0),
        half_open: limits.half_open.unwrap_or(HALF_OPEN_PER_ENDPOINT),
        interval_ns,
        burst_ns: interval_ns * u64::from(burst.saturating_sub(1)),
        mss: service.mss.unwrap_or(0),
        _pad: [0; 6],
    }
}

/// What every ring is built with.
#[derive(Clone, Copy)]
struct Rings<'a> {
    ids: &'a Ids,
    unhealthy: &'a BTreeSet<TargetKey>,
    size: u32,
    seed: u32,
}

/// The Maglev ring of `listener` for endpoint addresses of `family` in `zone`: healthy
/// targets of that family in the zone, or in every zone as `cross_zone` says; when none
/// is healthy it fails open (as an NLB does) and uses them all rather than none.
fn ring_slots(
    listener: &Listener,
    lb: &LoadBalancer,
    zone: &str,
    family: u8,
    key: &ListenerKey,
    rings: &Rings,
) -> Vec<u32> {
    let Rings {
        ids,
        unhealthy,
        size,
        seed,
    } = *rings;
    let named: Vec<(TargetKey, &crate::config::Target)> = listener
        .targets
        .iter()
        .filter(|t| Some(Addr::family_of(t.ip)) == listener.target_family(family))
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
            identity: identity(t.ip, t.port),
            weight: t.weight,
        })
        .collect();
    maglev::ring(&members, size, seed)
        .into_iter()
        .map(|slot| match slot {
            maps::NO_TARGET => slot,
            member => ids.targets[&chosen[member as usize].0],
        })
        .collect()
}

/// A target's identity in its rings, which decides its slot preferences: the same on
/// every node.
fn identity(ip: IpAddr, port: u16) -> u64 {
    match ip {
        // As before IPv6, so that IPv4 rings stay as they were.
        IpAddr::V4(ip) => (u64::from(u32::from(ip)) << 16) | u64::from(port),
        // 144 bits do not fit: FNV-1a over the address and port.
        IpAddr::V6(ip) => ip
            .octets()
            .into_iter()
            .chain(port.to_be_bytes())
            .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            }),
    }
}

/// An LPM lookup returns only the longest matching prefix, but a source may use the
/// ports of every rule that contains it: give each prefix the ports of the wider
/// prefixes of the same endpoint around it.
fn widen_security_groups(groups: &mut BTreeMap<PrefixKey, SecurityGroup>) {
    let rules: Vec<(PrefixKey, u32)> = groups.iter().map(|(k, v)| (*k, v.ports)).collect();
    for ((len, prefix), group) in groups.iter_mut() {
        for ((wider_len, wider), ports) in &rules {
            if wider.slot == prefix.slot
                && wider.family == prefix.family
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

/// The `ADDRESSES` key of `ip` in `scope`.
pub fn address_key(scope: u32, ip: IpAddr) -> AddressKey {
    AddressKey {
        scope,
        family: Addr::family_of(ip),
        _pad: [0; 3],
        addr: Addr::from(ip),
    }
}

#[cfg(test)]
mod tests {
    use endpoint_common::maps::FAMILY_IPV6;

    use super::*;
    use crate::{
        facts::{Facts, Link},
        validate,
    };

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

    fn facts() -> Facts {
        let link = |ifindex| Link {
            ifindex,
            mac: [2, 0, 0, 0, 0, 1],
            veth: false,
            mtu: 1500,
        };
        Facts {
            links: [("cons".into(), link(2)), ("prov".into(), link(3))].into(),
            ..Facts::default()
        }
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

    #[test]
    fn a_dual_stack_endpoints_two_addresses_in_a_zone_take_one_turn() {
        let text = ZONED.replace("CROSS", "on_failure").replace(
            "ip: 10.0.0.1, zone: za }",
            "addresses: [{ zone: za, ip: 10.0.0.1 }, { zone: za, ip: fd00:a::1 }] }",
        );
        let config = config::parse("t", &text).expect("YAML");
        let placed: Vec<&str> = placement::place(&config)
            .iter()
            .map(|p| p.load_balancer.name.as_str())
            .collect();
        assert_eq!(placed, ["a1", "a1", "b1", "a2", "a1", "a2", "a1"]);
    }

    /// The targets (addresses) e1's ring (a1, zone za) uses, given unhealthy targets.
    fn e1_targets(cross: &str, unhealthy: &[&str]) -> BTreeSet<String> {
        let config = config(cross);
        let ids = Ids::default().assign(&config);
        let a1 = ListenerKey {
            service: "s".into(),
            load_balancer: "a1".into(),
            port: 80,
            protocol: config::Protocol::Tcp,
        };
        let unhealthy = unhealthy
            .iter()
            .map(|t| TargetKey {
                listener: a1.clone(),
                ip: format!("172.16.0.{t}").parse().unwrap(),
                port: 80,
            })
            .collect();
        let state = build(&config, &ids, &facts(), 7, &unhealthy).contents;
        let ring = ids.rings[&a1.ring("za", FAMILY_IPV4)];
        state.rings[&ring]
            .iter()
            .map(|index| {
                let target = state.targets[index];
                target.addr.ip(target.family).to_string()
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

    /// TCP and UDP on port 53: two endpoint keys (protocol 6 and 17) with rings of their
    /// own, and the port open in the network's TCP and UDP bitmaps.
    #[test]
    fn a_udp_listener_has_a_udp_key_and_the_udp_ports_bitmap() {
        use endpoint_common::maps::{PROTO_TCP, PROTO_UDP};

        let text = "
node:
  interfaces:
    - { name: cons, role: consumer, consumer_network: vpc }
    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }
  limits: { icmp_per_second: 50 }
services:
  - name: dns
    acceptance_required: false
    allowed_principals: [p]
    udp_idle_timeout_seconds: 60
    mss: 1400
    load_balancers:
      - name: lb
        zone: z
        health_check: { port: 8053 }
        listeners:
          - { port: 53, targets: [{ ip: 172.16.0.10, port: 53 }] }
          - { port: 53, protocol: udp, targets: [{ ip: 172.16.0.10, port: 53 }] }
endpoints:
  - { id: e1, service: dns, principal: p, consumer_network: vpc, ip: 10.0.0.1, zone: z }
";
        let config = validate::load("t", text, &Facts::default())
            .expect("valid")
            .config;
        let ids = Ids::default().assign(&config);
        let state = build(&config, &ids, &facts(), 7, &BTreeSet::new()).contents;
        let network = ids.networks["vpc"];
        let key = |proto| EndpointKey {
            network,
            addr: Addr::ipv4([10, 0, 0, 1]),
            port_be: 53u16.to_be(),
            proto,
            family: FAMILY_IPV4,
        };
        let tcp = state.endpoints[&key(PROTO_TCP)];
        let udp = state.endpoints[&key(PROTO_UDP)];
        assert_eq!(PROTO_UDP, 17);
        assert_eq!((tcp.listener, udp.listener), (0, 1));
        assert_ne!(tcp.ring, udp.ring, "a ring per listener");
        assert_ne!(
            ports_index(network, PROTO_UDP),
            ports_index(network, PROTO_TCP)
        );
        assert_eq!(
            state.ports,
            BTreeSet::from([
                (ports_index(network, PROTO_TCP), 53),
                (ports_index(network, PROTO_UDP), 53),
            ])
        );
        let limits = state.limits[&ids.endpoints["e1"]];
        assert_eq!(
            (limits.idle_timeout_s, limits.udp_idle_timeout_s, limits.mss),
            (350, 60, 1400)
        );
        assert_eq!(state.settings.icmp_per_second, 50);
    }

    const DUAL: &str = "
node:
  interfaces:
    - { name: cons, role: consumer, consumer_network: vpc }
    - { name: prov, role: provider, nat_addresses: [fd00:16::100, 172.16.0.100, fd00:16::101, 172.16.0.101] }
services:
  - name: s
    acceptance_required: false
    allowed_principals: [p]
    load_balancers:
      - name: lb
        zone: z
        listeners:
          - port: 80
            targets:
              - { ip: 172.16.0.10, port: 80 }
              - { ip: fd00:16::10, port: 80 }
              - { ip: 172.16.0.11, port: 80 }
              - { ip: fd00:16::11, port: 80 }
          - { port: 443, targets: [{ ip: 172.16.0.10, port: 443 }, { ip: fd00:16::10, port: 443 }] }
endpoints:
  - id: e1
    service: s
    principal: p
    consumer_network: vpc
    addresses: [{ zone: z, ip: 10.0.0.1 }, { zone: z, ip: fd00:a::1 }]
    security_groups: RULES
";

    fn dual(rules: &str) -> (Ids, Contents) {
        let config = validate::load("t", &DUAL.replace("RULES", rules), &Facts::default())
            .expect("valid")
            .config;
        let ids = Ids::default().assign(&config);
        let state = build(&config, &ids, &facts(), 7, &BTreeSet::new()).contents;
        (ids, state)
    }

    #[test]
    fn a_dual_stack_endpoint_has_a_key_per_family_each_with_a_ring_of_its_family() {
        let (ids, state) = dual("[{ cidr: 0.0.0.0/0 }]");
        let network = ids.networks["vpc"];
        let ring_of = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            let key = EndpointKey {
                network,
                addr: Addr::from(ip),
                port_be: 80u16.to_be(),
                proto: maps::PROTO_TCP,
                family: Addr::family_of(ip),
            };
            let endpoint = state
                .endpoints
                .get(&key)
                .expect("a key of the address's family");
            assert_eq!(endpoint.slot, ids.endpoints["e1"], "one endpoint");
            let targets: BTreeSet<String> = state.rings[&endpoint.ring]
                .iter()
                .map(|index| {
                    let target = state.targets[index];
                    target.addr.ip(target.family).to_string()
                })
                .collect();
            (endpoint.ring, targets)
        };
        let (ring4, targets4) = ring_of("10.0.0.1");
        let (ring6, targets6) = ring_of("fd00:a::1");
        assert_ne!(ring4, ring6);
        assert_eq!(
            targets4,
            BTreeSet::from(["172.16.0.10".into(), "172.16.0.11".into()])
        );
        assert_eq!(
            targets6,
            BTreeSet::from(["fd00:16::10".into(), "fd00:16::11".into()])
        );
        // Two ports, two families: four rings; both addresses are answered.
        assert_eq!(state.endpoints.len(), 4);
        assert_eq!(state.rings.len(), 4);
        let six = address_key(network, "fd00:a::1".parse().unwrap());
        assert_eq!(six.family, FAMILY_IPV6);
        assert_eq!(state.addresses[&six].kind, address_kind::ENDPOINT);
    }

    #[test]
    fn nat_addresses_are_ipv4_first_and_counted_per_family() {
        let (_, state) = dual("[{ cidr: 0.0.0.0/0 }]");
        let settings = state.settings;
        assert_eq!((settings.nat_ipv4, settings.nat_ipv6), (2, 2));
        let nat: Vec<String> = settings.nat[..4]
            .iter()
            .map(|a| {
                assert_eq!(a.ifindex, 3);
                a.addr.ip(a.family).to_string()
            })
            .collect();
        assert_eq!(
            nat,
            [
                "172.16.0.100",
                "172.16.0.101",
                "fd00:16::100",
                "fd00:16::101"
            ]
        );
        assert_eq!(settings.nat[4], NatAddress::default());
    }

    #[test]
    fn security_group_prefixes_carry_their_family_and_widen_only_within_it() {
        let (ids, state) =
            dual("[{ cidr: 0.0.0.0/0, ports: [443] }, { cidr: \"fd00:a::/64\", ports: [80] }]");
        let slot = ids.endpoints["e1"];
        let groups: Vec<(u32, u8, IpAddr, u32)> = state
            .security_groups
            .iter()
            .map(|((len, prefix), group)| {
                assert_eq!(prefix.slot, slot);
                let addr = Addr::ipv6(prefix.addr).ip(prefix.family);
                (*len, prefix.family, addr, group.ports)
            })
            .collect();
        // Listeners 80 and 443 are bits 0 and 1: the IPv4 /0 does not widen the IPv6 /64.
        assert_eq!(
            groups,
            [
                (40, FAMILY_IPV4, "0.0.0.0".parse().unwrap(), 0b10),
                (104, FAMILY_IPV6, "fd00:a::".parse().unwrap(), 0b01),
            ]
        );
        // Everything of one family or the other is two revisions.
        let policy = |rules: &str| Policy::of(dual(rules).1.policies[&slot]);
        assert_ne!(
            policy("[{ cidr: 0.0.0.0/0 }]").revision,
            policy("[{ cidr: \"::/0\" }]").revision
        );
    }

    #[test]
    fn ring_identities_are_those_of_before_for_ipv4_and_use_every_bit_of_ipv6() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(identity(ip("172.16.0.10"), 80), (0xac10_000a << 16) | 80);
        assert_ne!(identity(ip("fd00::1"), 80), identity(ip("fd01::1"), 80));
        assert_ne!(identity(ip("fd00::1"), 80), identity(ip("fd00::2"), 80));
        assert_ne!(identity(ip("fd00::1"), 80), identity(ip("fd00::1"), 81));
    }
}
