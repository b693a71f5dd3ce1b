//! Names: the DNS records each consumer network's resolver address answers (the data
//! path's `dns` step), as map contents — `NAMES` and `DNS`, and the resolver addresses
//! in `INTERFACES` and `ADDRESSES`:
//!
//! - `<domain>` (the zone apex: SOA and NS) and `ns.<domain>` (the resolver address);
//! - regional `<endpoint-id>.<service>.<domain>`: every address of the endpoint (the
//!   client's zone first, chosen by the data path);
//! - zonal `<endpoint-id>-<zone>.<service>.<domain>`: that zone's address;
//! - `<service>.<domain>`, a name with no records of its own (NODATA, not NXDOMAIN);
//! - the service's `private_dns_name`, its own zone apex, in networks whose endpoint
//!   enables `private_dns` (once verified, if verification is configured).
//!
//! A network sees only its own endpoints' names, and only while they are available. An
//! endpoint's IPv4 addresses are its names' A records, its IPv6 addresses their AAAA
//! records.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use endpoint_common::{
    dns,
    maps::{
        Address, DnsSettings, MAX_NAME_ADDRESSES, MAX_NS, MAX_SOA, Name, NameKey, address_kind,
        name_flag,
    },
};

use crate::{
    acceptance,
    config::{Config, EndpointAddress, State},
    desired::{self, Desired},
    ids::Ids,
    pipeline::{Failover, Inputs},
};

/// The zone ids interfaces and names use: every zone named by a consumer interface or an
/// endpoint address, numbered from 1 in name order (0: none).
pub fn zone_ids(config: &Config) -> BTreeMap<String, u8> {
    let zones: BTreeSet<String> = config
        .node
        .interfaces
        .iter()
        .filter_map(|i| i.zone.clone())
        .chain(
            config
                .endpoints
                .iter()
                .flat_map(|e| e.addresses().into_iter().map(|a| a.zone)),
        )
        .collect();
    zones
        .into_iter()
        .enumerate()
        .map(|(i, zone)| (zone, (i + 1).min(255) as u8))
        .collect()
}

/// An endpoint's regional name, lowercased (`domain` is).
pub fn regional(id: &str, service: &str, domain: &str) -> String {
    format!("{id}.{service}.{domain}").to_ascii_lowercase()
}

/// An endpoint's name in one zone, lowercased.
pub fn zonal(id: &str, zone: &str, service: &str, domain: &str) -> String {
    format!("{id}-{zone}.{service}.{domain}").to_ascii_lowercase()
}

/// A name's records before they become a map entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    pub apex: bool,
    /// Labels of the apex of the name's zone.
    pub apex_labels: usize,
    /// Addresses (A or AAAA records) and their zone ids.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// Every name each network's resolver answers, by network id: the text, its records.
pub fn records(
    config: &Config,
    ids: &Ids,
    verified: &BTreeSet<String>,
    failover: &Failover,
) -> BTreeMap<u32, BTreeMap<String, Records>> {
    let mut all = BTreeMap::new();
    let Some(settings) = &config.dns else {
        return all;
    };
    let domain = settings.domain.trim_end_matches('.').to_ascii_lowercase();
    let domain_labels = dns::hash(&domain).1;
    let zones = zone_ids(config);
    let services: BTreeMap<&str, _> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    // Each network's resolver addresses: one of each family at most (validated).
    let mut resolvers: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for resolver in &settings.resolvers {
        resolvers
            .entry(resolver.consumer_network.as_str())
            .or_default()
            .push(resolver.ip);
    }
    for (consumer_network, resolver_ips) in resolvers {
        let Some(&network) = ids.networks.get(consumer_network) else {
            continue;
        };
        let names: &mut BTreeMap<String, Records> = all.entry(network).or_default();
        // A name in the domain's zone.
        let under = || Records {
            apex_labels: domain_labels,
            ..Records::default()
        };
        names.insert(
            domain.clone(),
            Records {
                apex: true,
                ..under()
            },
        );
        names.insert(
            format!("ns.{domain}"),
            Records {
                addresses: resolver_ips.iter().map(|&ip| (ip, 0)).collect(),
                ..under()
            },
        );
        for endpoint in &config.endpoints {
            if endpoint.consumer_network != consumer_network {
                continue;
            }
            let Some(service) = services.get(endpoint.service.as_str()) else {
                continue;
            };
            if acceptance::effective(endpoint, service) != State::Available {
                continue;
            }
            // In a zoned fleet, an address whose zone has no live node is left out; an
            // endpoint with none left has no names.
            let served: Vec<_> = endpoint
                .addresses()
                .into_iter()
                .filter(|a| !failover.unserved(&endpoint.consumer_network, a.ip))
                .collect();
            if served.is_empty() {
                continue;
            }
            let record = |a: &EndpointAddress| (a.ip, zones.get(&a.zone).copied().unwrap_or(0));
            let addresses: Vec<(IpAddr, u8)> = served.iter().map(record).collect();
            names
                .entry(format!("{}.{domain}", service.name.to_ascii_lowercase()))
                .or_insert_with(under);
            names.insert(
                regional(&endpoint.id, &service.name, &domain),
                Records {
                    addresses: addresses.clone(),
                    ..under()
                },
            );
            // A dual-stack zone's two addresses share the zonal name.
            for address in &served {
                names
                    .entry(zonal(&endpoint.id, &address.zone, &service.name, &domain))
                    .or_insert_with(under)
                    .addresses
                    .push(record(address));
            }
            if let Some(private) = &service.private_dns_name
                && endpoint.private_dns
                && (settings.verification.is_none() || verified.contains(private))
            {
                let private = private.trim_end_matches('.').to_ascii_lowercase();
                let labels = dns::hash(&private).1;
                names.insert(
                    private,
                    Records {
                        apex: true,
                        apex_labels: labels,
                        addresses: addresses.clone(),
                    },
                );
            }
        }
    }
    all
}

/// The text of every name `config` may give any network (private names as if
/// verified), by hash: for showing plans.
pub fn texts(config: &Config, ids: &Ids) -> BTreeMap<u64, String> {
    let every: BTreeSet<String> = config
        .services
        .iter()
        .filter_map(|s| s.private_dns_name.clone())
        .collect();
    records(config, ids, &every, &Failover::default())
        .into_values()
        .flat_map(BTreeMap::into_keys)
        .map(|text| (dns::hash(&text).0, text))
        .collect()
}

/// Fills in what DNS needs of the maps for `config`: names, settings, and the resolver
/// addresses and client zones of consumer interfaces.
pub fn build(config: &Config, ids: &Ids, inputs: &Inputs, desired: &mut Desired) {
    let facts = inputs.facts;
    let state = &mut desired.contents;
    let zones = zone_ids(config);
    let resolvers: Vec<(&str, IpAddr)> = config
        .dns
        .iter()
        .flat_map(|d| &d.resolvers)
        .map(|r| (r.consumer_network.as_str(), r.ip))
        .collect();
    for interface in &config.node.interfaces {
        let (Some(link), Some(network)) = (
            facts.links.get(&interface.name),
            interface.consumer_network.as_deref(),
        ) else {
            continue;
        };
        let Some(entry) = state.interfaces.get_mut(&link.ifindex) else {
            continue;
        };
        entry.zone = interface
            .zone
            .as_ref()
            .and_then(|z| zones.get(z))
            .copied()
            .unwrap_or(0);
        // Every resolver address is one of the network's (ARP or neighbour discovery,
        // pings, and an IPv6 query's destination is looked up there); the IPv4 one is
        // the interface's too, where the program checks it without a lookup.
        for &(_, ip) in resolvers.iter().filter(|(n, _)| *n == network) {
            if let IpAddr::V4(ip) = ip {
                entry.resolver = ip.octets();
            }
            state.addresses.insert(
                desired::address_key(ids.networks[network], ip),
                Address {
                    kind: address_kind::RESOLVER,
                    slot: 0,
                },
            );
        }
    }
    let Some(settings) = &config.dns else {
        return;
    };
    let mut digest: u32 = 0x811c_9dc5;
    let mut hashed: BTreeMap<NameKey, String> = BTreeMap::new();
    for (network, names) in records(config, ids, inputs.verified, inputs.failover) {
        for (text, records) in names {
            let key = NameKey {
                network,
                _pad: 0,
                hash: dns::hash(&text).0,
            };
            // A 64-bit hash is a name's only identity in the map: two that share one
            // (never yet seen) cannot both be answered.
            if let Some(first) = hashed.get(&key) {
                log::warn!(
                    "DNS names {first:?} and {text:?} share a hash: {text:?} is not answered"
                );
                continue;
            }
            hashed.insert(key, text.clone());
            let name = name_value(key, &records, settings.ttl_seconds);
            for byte in text
                .bytes()
                .chain(name.addrs.iter().flatten().copied())
                .chain(name.zones)
                .chain(name.addrs6.iter().flatten().copied())
                .chain(name.zones6)
            {
                digest = (digest ^ u32::from(byte)).wrapping_mul(0x0100_0193);
            }
            state.names.insert(key, name);
        }
    }
    state.dns = dns_settings(&settings.domain, settings.ttl_seconds, digest);
}

/// A name's map value: its records, A and AAAA apart (validation keeps each family
/// within `MAX_NAME_ADDRESSES`: one address per zone and family, at most 8 zones).
fn name_value(key: NameKey, records: &Records, ttl: u32) -> Name {
    let mut name = Name {
        key,
        ttl: ttl.to_be_bytes(),
        flags: if records.apex { name_flag::APEX } else { 0 },
        apex_labels: records.apex_labels as u8,
        ..Name::default()
    };
    for &(ip, zone) in &records.addresses {
        match ip {
            IpAddr::V4(ip) if (name.count as usize) < MAX_NAME_ADDRESSES => {
                name.addrs[name.count as usize] = ip.octets();
                name.zones[name.count as usize] = zone;
                name.count += 1;
            }
            IpAddr::V6(ip) if (name.count6 as usize) < MAX_NAME_ADDRESSES => {
                name.addrs6[name.count6 as usize] = ip.octets();
                name.zones6[name.count6 as usize] = zone;
                name.count6 += 1;
            }
            _ => {}
        }
    }
    name
}

/// The SOA and NS records every zone shares, and the TTL; `serial` changes with the
/// records.
pub fn dns_settings(domain: &str, ttl: u32, serial: u32) -> DnsSettings {
    let domain = domain.trim_end_matches('.');
    let ns = dns::wire(&format!("ns.{domain}"));
    let hostmaster = dns::wire(&format!("hostmaster.{domain}"));
    let mut soa_data = Vec::new();
    soa_data.extend_from_slice(&ns);
    soa_data.extend_from_slice(&hostmaster);
    // Serial, refresh, retry, expire, minimum (the negative-answer TTL).
    for value in [serial, 3600, 600, 86400, ttl] {
        soa_data.extend_from_slice(&value.to_be_bytes());
    }
    let record = |rtype: u16, data: &[u8]| {
        let mut out = Vec::new();
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&dns::rtype::CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    };
    let soa = record(dns::rtype::SOA, &soa_data);
    let ns = record(dns::rtype::NS, &ns);
    let mut settings = DnsSettings {
        ttl: ttl.to_be_bytes(),
        soa_len: soa.len().min(MAX_SOA) as u16,
        ns_len: ns.len().min(MAX_NS) as u16,
        ..DnsSettings::default()
    };
    settings.soa[..soa.len().min(MAX_SOA)].copy_from_slice(&soa[..soa.len().min(MAX_SOA)]);
    settings.ns[..ns.len().min(MAX_NS)].copy_from_slice(&ns[..ns.len().min(MAX_NS)]);
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{facts::Facts, ids::Ids, validate};

    const CONFIG: &str = "
node:
  interfaces:
    - { name: cons-a, role: consumer, consumer_network: vpc-a, zone: z2 }
    - { name: cons-b, role: consumer, consumer_network: vpc-b }
    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }
services:
  - name: orders
    acceptance_required: false
    allowed_principals: ['*']
    private_dns_name: Orders.Example.com
    load_balancers:
      - { name: lb, zone: z1, listeners: [{ port: 80, targets: [{ ip: 172.16.0.10, port: 80 }] }] }
endpoints:
  - id: e1
    service: orders
    principal: p
    consumer_network: vpc-a
    addresses: [{ zone: z1, ip: 10.0.0.1 }, { zone: z2, ip: 10.0.0.2 }]
    private_dns: true
  - { id: e2, service: orders, principal: p, consumer_network: vpc-b, ip: 10.0.0.1, zone: z1 }
  - { id: e3, service: orders, principal: p, consumer_network: vpc-b, ip: 10.0.0.3, zone: z1, state: rejected }
dns:
  domain: endpoints.internal
  resolvers:
    - { consumer_network: vpc-a, ip: 10.0.0.53 }
    - { consumer_network: vpc-b, ip: 10.0.0.53 }
";

    fn names(verified: &[&str]) -> BTreeMap<String, BTreeMap<String, Records>> {
        let config = validate::load("t", CONFIG, &Facts::default())
            .expect("valid")
            .config;
        let ids = Ids::default().assign(&config);
        let verified = verified.iter().map(ToString::to_string).collect();
        records(&config, &ids, &verified, &Failover::default())
            .into_iter()
            .map(|(network, names)| {
                let name = ids.networks.iter().find(|&(_, &n)| n == network).unwrap().0;
                (name.clone(), names)
            })
            .collect()
    }

    #[test]
    fn each_network_has_its_own_available_endpoints_names_only() {
        let all = names(&[]);
        let zones = zone_ids(
            &validate::load("t", CONFIG, &Facts::default())
                .unwrap()
                .config,
        );
        let (z1, z2) = (zones["z1"], zones["z2"]);
        let a = &all["vpc-a"];
        let b = &all["vpc-b"];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            a["e1.orders.endpoints.internal"].addresses,
            [(ip("10.0.0.1"), z1), (ip("10.0.0.2"), z2)]
        );
        assert_eq!(
            a["e1-z2.orders.endpoints.internal"].addresses,
            [(ip("10.0.0.2"), z2)]
        );
        assert_eq!(a["ns.endpoints.internal"].addresses, [(ip("10.0.0.53"), 0)]);
        assert!(a["endpoints.internal"].apex);
        assert!(a["orders.endpoints.internal"].addresses.is_empty());
        // Private names are lowercased and their own apex; no verification configured.
        let private = &a["orders.example.com"];
        assert!(private.apex && private.apex_labels == 3);
        assert_eq!(private.addresses.len(), 2);
        // vpc-b: its own endpoint, not vpc-a's; the rejected one has no name; e2 did not
        // ask for the private name.
        assert!(b.contains_key("e2.orders.endpoints.internal"));
        assert!(!b.contains_key("e1.orders.endpoints.internal"));
        assert!(!a.contains_key("e2.orders.endpoints.internal"));
        assert!(!b.contains_key("e3.orders.endpoints.internal"));
        assert!(!b.contains_key("orders.example.com"));
    }

    #[test]
    fn with_verification_a_private_name_is_served_once_verified() {
        let text = format!("{CONFIG}  verification: {{ resolver: '127.0.0.1:53' }}\n");
        let config = validate::load("t", &text, &Facts::default())
            .expect("valid")
            .config;
        let ids = Ids::default().assign(&config);
        let network = ids.networks["vpc-a"];
        let unverified = records(&config, &ids, &BTreeSet::new(), &Failover::default());
        assert!(!unverified[&network].contains_key("orders.example.com"));
        let verified = records(
            &config,
            &ids,
            &BTreeSet::from(["Orders.Example.com".to_string()]),
            &Failover::default(),
        );
        assert!(verified[&network].contains_key("orders.example.com"));
    }

    #[test]
    fn the_soa_record_is_wire_format_with_the_ttl_as_negative_ttl() {
        let settings = dns_settings("endpoints.internal.", 30, 7);
        let soa = &settings.soa[..settings.soa_len as usize];
        assert_eq!(
            &soa[..10],
            &[0, 6, 0, 1, 0, 0, 0, 30, 0, (soa.len() - 10) as u8]
        );
        assert!(soa[10..].starts_with(b"\x02ns\x09endpoints\x08internal\x00\x0ahostmaster"));
        assert_eq!(
            &soa[soa.len() - 20..],
            &[
                0, 0, 0, 7, 0, 0, 14, 16, 0, 0, 2, 88, 0, 1, 81, 128, 0, 0, 0, 30
            ]
        );
        let ns = &settings.ns[..settings.ns_len as usize];
        assert_eq!(&ns[..4], &[0, 2, 0, 1]);
    }

    #[test]
    fn ipv6_addresses_are_aaaa_records_beside_the_a_records() {
        let text = CONFIG
            .replace(
                "nat_addresses: [172.16.0.100]",
                "nat_addresses: [172.16.0.100, fd00:16::100]",
            )
            .replace(
                "targets: [{ ip: 172.16.0.10, port: 80 }]",
                "targets: [{ ip: 172.16.0.10, port: 80 }, { ip: fd00:16::10, port: 80 }]",
            )
            .replace(
                "{ zone: z2, ip: 10.0.0.2 }]",
                "{ zone: z2, ip: 10.0.0.2 }, { zone: z2, ip: fd00:a::2 }, { zone: z3, ip: fd00:a::3 }]",
            );
        let config = validate::load("t", &text, &Facts::default())
            .expect("valid")
            .config;
        let ids = Ids::default().assign(&config);
        let zones = zone_ids(&config);
        let (z1, z2, z3) = (zones["z1"], zones["z2"], zones["z3"]);
        let a =
            &records(&config, &ids, &BTreeSet::new(), &Failover::default())[&ids.networks["vpc-a"]];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let regional = &a["e1.orders.endpoints.internal"];
        assert_eq!(
            regional.addresses,
            [
                (ip("10.0.0.1"), z1),
                (ip("10.0.0.2"), z2),
                (ip("fd00:a::2"), z2),
                (ip("fd00:a::3"), z3)
            ]
        );
        // The map value keeps the families apart, each with its zones.
        let value = name_value(NameKey::default(), regional, 60);
        assert_eq!((value.count, value.count6), (2, 2));
        assert_eq!(&value.addrs[..2], &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        assert_eq!(&value.zones[..2], &[z1, z2]);
        assert_eq!(
            &value.addrs6[..2],
            &[ip6("fd00:a::2").octets(), ip6("fd00:a::3").octets()]
        );
        assert_eq!(&value.zones6[..2], &[z2, z3]);
        // z2 is dual-stack: both its addresses; z3 has only an IPv6 one.
        assert_eq!(
            a["e1-z2.orders.endpoints.internal"].addresses,
            [(ip("10.0.0.2"), z2), (ip("fd00:a::2"), z2)]
        );
        assert_eq!(
            a["e1-z3.orders.endpoints.internal"].addresses,
            [(ip("fd00:a::3"), z3)]
        );
        let value = name_value(
            NameKey::default(),
            &a["e1-z3.orders.endpoints.internal"],
            60,
        );
        assert_eq!((value.count, value.count6), (0, 1));
    }

    fn ip6(s: &str) -> std::net::Ipv6Addr {
        s.parse().unwrap()
    }
}
