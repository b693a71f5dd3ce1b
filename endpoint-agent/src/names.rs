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
//! A network sees only its own endpoints' names, and only while they are available.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use endpoint_common::{
    dns,
    maps::{
        Address, AddressKey, DnsSettings, FAMILY_IPV4, MAX_NAME_ADDRESSES, MAX_NS, MAX_SOA, Name,
        NameKey, address_kind, name_flag,
    },
};

use crate::{
    acceptance,
    config::{Config, State},
    desired::Desired,
    facts::Facts,
    ids::Ids,
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

/// A name's records before they become a map entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    pub apex: bool,
    /// Labels of the apex of the name's zone.
    pub apex_labels: usize,
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// Every name each network's resolver answers, by network id: the text, its records.
pub fn records(
    config: &Config,
    ids: &Ids,
    verified: &BTreeSet<String>,
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
    for resolver in &settings.resolvers {
        let Some(&network) = ids.networks.get(&resolver.consumer_network) else {
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
                addresses: vec![(resolver.ip, 0)],
                ..under()
            },
        );
        for endpoint in &config.endpoints {
            if endpoint.consumer_network != resolver.consumer_network {
                continue;
            }
            let Some(service) = services.get(endpoint.service.as_str()) else {
                continue;
            };
            if acceptance::effective(endpoint, service) != State::Available {
                continue;
            }
            let addresses: Vec<(Ipv4Addr, u8)> = endpoint
                .addresses()
                .iter()
                .map(|a| (a.ip, zones.get(&a.zone).copied().unwrap_or(0)))
                .collect();
            let service_name = service.name.to_ascii_lowercase();
            let id = endpoint.id.to_ascii_lowercase();
            names
                .entry(format!("{service_name}.{domain}"))
                .or_insert_with(under);
            names.insert(
                format!("{id}.{service_name}.{domain}"),
                Records {
                    addresses: addresses.clone(),
                    ..under()
                },
            );
            for (address, &(ip, zone)) in endpoint.addresses().iter().zip(&addresses) {
                let zone_name = address.zone.to_ascii_lowercase();
                names.insert(
                    format!("{id}-{zone_name}.{service_name}.{domain}"),
                    Records {
                        addresses: vec![(ip, zone)],
                        ..under()
                    },
                );
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

/// Fills in what DNS needs of the maps for `config`: names, settings, and the resolver
/// addresses and client zones of consumer interfaces.
pub fn build(
    config: &Config,
    ids: &Ids,
    facts: &Facts,
    verified: &BTreeSet<String>,
    desired: &mut Desired,
) {
    let state = &mut desired.contents;
    let zones = zone_ids(config);
    let resolvers: BTreeMap<&str, Ipv4Addr> = config
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
        if let Some(ip) = resolvers.get(network) {
            entry.resolver = ip.octets();
            state.addresses.insert(
                AddressKey {
                    scope: ids.networks[network],
                    family: FAMILY_IPV4,
                    _pad: [0; 3],
                    addr: endpoint_common::maps::Addr::ipv4(ip.octets()),
                },
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
    for (network, names) in records(config, ids, verified) {
        for (text, records) in names {
            let mut name = Name {
                flags: if records.apex { name_flag::APEX } else { 0 },
                count: records.addresses.len().min(MAX_NAME_ADDRESSES) as u8,
                apex_labels: records.apex_labels as u8,
                ..Name::default()
            };
            for (i, &(ip, zone)) in records
                .addresses
                .iter()
                .take(MAX_NAME_ADDRESSES)
                .enumerate()
            {
                name.addrs[i] = ip.octets();
                name.zones[i] = zone;
            }
            for byte in text.bytes().chain(name.addrs.iter().flatten().copied()) {
                digest = (digest ^ u32::from(byte)).wrapping_mul(0x0100_0193);
            }
            let key = NameKey {
                network,
                _pad: 0,
                hash: dns::hash(&text).0,
            };
            state.names.insert(key, name);
        }
    }
    state.dns = dns_settings(&settings.domain, settings.ttl_seconds, digest);
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
