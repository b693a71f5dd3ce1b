//! `endpoint-agent status [--json]`: what a running (or kept) instance is doing — the
//! config generation in its maps, its interfaces and their attach modes, services,
//! endpoints with their states, limits, usage and counters, and the node's totals —
//! read from the pinned maps and the state directory. `--json` is for programs (the
//! tests wait on `generation`); the text is for people.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, Result, bail};
use endpoint_common::{
    counter::{self, Count},
    maps::{Limits, Usage, dns_counter, name},
};
use serde::Serialize;

use crate::{
    acceptance,
    config::{self, Config, Protocol},
    expiry,
    facts::Facts,
    ids::Ids,
    instance::{Instance, Record},
    loader::Modes,
    maps::Maps,
    placement,
    stats::Counters,
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub instance: String,
    /// Config generations applied to the maps (the last one's number).
    pub generation: u64,
    /// Entries in the flow table (two per connection).
    pub flow_entries: usize,
    pub interfaces: Vec<InterfaceStatus>,
    pub services: Vec<ServiceStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// Every counter over all endpoints (zero ones left out).
    pub counters: BTreeMap<&'static str, Traffic>,
    /// What each consumer network's resolver address answered, and private DNS names.
    pub dns: Option<DnsStatus>,
}

#[derive(Debug, Serialize)]
pub struct DnsStatus {
    pub domain: String,
    pub networks: Vec<NetworkDns>,
    pub private_names: Vec<crate::verification::Record>,
}

#[derive(Debug, Serialize)]
pub struct NetworkDns {
    pub consumer_network: String,
    /// Its resolver addresses (one of each family at most).
    pub resolvers: Vec<String>,
    /// Queries answered (records or NODATA), NXDOMAIN, REFUSED, malformed.
    pub queries: BTreeMap<&'static str, u64>,
}

/// Packets and bytes under one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Count> for Traffic {
    fn from(count: Count) -> Self {
        Self {
            packets: count.packets,
            bytes: count.bytes,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub role: String,
    pub consumer_network: Option<String>,
    /// `native` or `generic`; none: not attached.
    pub attached: Option<String>,
    /// Whether the node has it.
    pub present: bool,
    /// veth: frames the program sent out it that the kernel dropped (its peer has
    /// neither an XDP program nor GRO); none: not a veth.
    pub undelivered: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub acceptance_required: bool,
    pub endpoints: usize,
    pub targets: usize,
    pub connections_opened: u64,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub id: String,
    pub service: String,
    pub consumer_network: String,
    pub ip: String,
    pub state: String,
    /// The listeners of the load balancer it is placed on.
    pub listeners: Vec<ListenerStatus>,
    pub limits: LimitsStatus,
    /// Open connections, and those in their handshake.
    pub connections: u64,
    pub half_open: u64,
    /// This endpoint's counters (zero ones left out).
    pub counters: BTreeMap<&'static str, Traffic>,
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Serialize)]
pub struct LimitsStatus {
    /// TCP connections idle this long are removed ...
    pub idle_timeout_seconds: u32,
    /// ... and UDP flows this long.
    pub udp_idle_timeout_seconds: u32,
    /// The largest TCP MSS its connections may announce (0: what the MTUs allow).
    pub mss: u16,
    /// 0: none.
    pub connections: u32,
    pub new_connections_per_second: u64,
    pub half_open: u32,
}

/// What instance `instance` is doing.
pub fn read(instance: &Instance) -> Result<Status> {
    if !instance.exists() {
        bail!(
            "instance {:?} has no data path (nothing pinned under {})",
            instance.name,
            instance.pins.display()
        );
    }
    let text = std::fs::read_to_string(instance.state.join("applied.yaml"))
        .context("the instance has no applied config")?;
    let config: Config = config::parse("applied.yaml", &text)?;
    let ids: Ids = instance.read("ids.json")?.unwrap_or_default();
    let modes: Modes = instance.read("modes.json")?.unwrap_or_default();
    let record: Record = instance.read("record.json")?.unwrap_or_default();
    let maps = Maps::open_pinned(&instance.pins)?;
    // Slots are given densely from 1: the counters above the highest are all zero.
    let slots = ids.endpoints.values().max().map_or(1, |&slot| slot + 1);
    let counters = Counters::read_slots(&maps, slots)?;
    let flow_entries = expiry::read_all::<
        endpoint_common::maps::FlowKey,
        endpoint_common::maps::Flow,
    >(maps.data(name::FLOWS)?)?
    .len();
    let facts = Facts::of_this_node()?;
    let limits = maps.array::<Limits>(name::LIMITS)?;
    let usage = maps.array::<Usage>(name::USAGE)?;
    let nonzero = |slot: u32| -> BTreeMap<&'static str, Traffic> {
        counter::ALL
            .iter()
            .filter(|(c, _)| counters.get(slot, *c) != Count::default())
            .map(|(c, name)| (*name, counters.get(slot, *c).into()))
            .collect()
    };
    let states = acceptance::effective_states(&config);
    let placed: BTreeMap<&str, &config::LoadBalancer> = placement::place(&config)
        .iter()
        .map(|p| (p.endpoint.id.as_str(), p.load_balancer))
        .collect();
    Ok(Status {
        instance: instance.name.clone(),
        generation: record.generation,
        flow_entries,
        interfaces: config
            .node
            .interfaces
            .iter()
            .map(|i| InterfaceStatus {
                name: i.name.clone(),
                role: format!("{:?}", i.role).to_lowercase(),
                consumer_network: i.consumer_network.clone(),
                attached: modes.get(&i.name).map(ToString::to_string),
                present: facts.links.contains_key(&i.name),
                undelivered: crate::delivery::undelivered(&i.name),
            })
            .collect(),
        services: config
            .services
            .iter()
            .map(|s| {
                let members: Vec<u32> = config
                    .endpoints
                    .iter()
                    .filter(|e| e.service == s.name)
                    .filter_map(|e| ids.endpoints.get(&e.id).copied())
                    .collect();
                ServiceStatus {
                    name: s.name.clone(),
                    acceptance_required: s.acceptance_required,
                    endpoints: members.len(),
                    targets: s
                        .load_balancers
                        .iter()
                        .flat_map(|lb| &lb.listeners)
                        .map(|l| l.targets.len())
                        .sum(),
                    connections_opened: members
                        .iter()
                        .map(|&slot| counters.get(slot, counter::FORWARD_NEW).packets)
                        .sum(),
                }
            })
            .collect(),
        endpoints: config
            .endpoints
            .iter()
            .filter_map(|e| {
                let slot = *ids.endpoints.get(&e.id)?;
                let limit = limits.get(&slot, 0).unwrap_or_default();
                let used = usage.get(&slot, 0).unwrap_or_default();
                Some(EndpointStatus {
                    id: e.id.clone(),
                    service: e.service.clone(),
                    consumer_network: e.consumer_network.clone(),
                    ip: e.ips(),
                    state: states.get(e.id.as_str()).map_or("?", |s| s.name()).into(),
                    listeners: placed
                        .get(e.id.as_str())
                        .iter()
                        .flat_map(|lb| &lb.listeners)
                        .map(|l| ListenerStatus {
                            port: l.port,
                            protocol: l.protocol,
                        })
                        .collect(),
                    limits: LimitsStatus {
                        idle_timeout_seconds: limit.idle_timeout_s,
                        udp_idle_timeout_seconds: limit.udp_idle_timeout_s,
                        mss: limit.mss,
                        connections: limit.connections,
                        new_connections_per_second: 1_000_000_000_u64
                            .checked_div(limit.interval_ns)
                            .unwrap_or(0),
                        half_open: limit.half_open,
                    },
                    connections: used.connections,
                    half_open: used.half_open,
                    counters: nonzero(slot),
                })
            })
            .collect(),
        counters: counter::ALL
            .iter()
            .filter(|(c, _)| counters.total(*c) != Count::default())
            .map(|(c, name)| (*name, counters.total(*c).into()))
            .collect(),
        dns: dns(&config, &ids, &maps, instance)?,
    })
}

/// What each network's resolver address answered (summed over CPUs): for `status` and
/// the metrics.
pub fn resolvers(config: &Config, ids: &Ids, maps: &Maps) -> Result<Vec<NetworkDns>> {
    let mut networks = Vec::new();
    let Some(settings) = &config.dns else {
        return Ok(networks);
    };
    let stats = maps.per_cpu_array::<Count>(name::DNS_STATS)?;
    let mut resolvers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for resolver in &settings.resolvers {
        resolvers
            .entry(resolver.consumer_network.as_str())
            .or_default()
            .push(resolver.ip.to_string());
    }
    for (consumer_network, addresses) in resolvers {
        let Some(&network) = ids.networks.get(consumer_network) else {
            continue;
        };
        let mut queries = BTreeMap::new();
        for (which, label) in dns_counter::NAMES.iter().enumerate() {
            let index = network * dns_counter::COUNT + which as u32;
            let total = stats
                .get(&index, 0)
                .map_or(0, |per_cpu| per_cpu.iter().map(|c| c.packets).sum());
            queries.insert(*label, total);
        }
        networks.push(NetworkDns {
            consumer_network: consumer_network.to_string(),
            resolvers: addresses,
            queries,
        });
    }
    Ok(networks)
}

/// The DNS part of the status: per network what its resolver addresses answered (summed
/// over CPUs), and each private DNS name's verification.
fn dns(config: &Config, ids: &Ids, maps: &Maps, instance: &Instance) -> Result<Option<DnsStatus>> {
    let Some(settings) = &config.dns else {
        return Ok(None);
    };
    let networks = resolvers(config, ids, maps)?;
    let private_names = if settings.verification.is_some() {
        instance
            .read(crate::agent::VERIFICATION_FILE)?
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Some(DnsStatus {
        domain: settings.domain.clone(),
        networks,
        private_names,
    }))
}

/// `status` as JSON.
pub fn json(instance: &Instance) -> Result<String> {
    Ok(serde_json::to_string_pretty(&read(instance)?)?)
}

/// `status` for people.
pub fn show(instance: &Instance) -> Result<String> {
    let status = read(instance)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "instance {:?}: config generation {}, {} flow entries (two per connection)",
        status.instance, status.generation, status.flow_entries
    );
    let _ = writeln!(out, "\ninterfaces:");
    for i in &status.interfaces {
        let role = match &i.consumer_network {
            Some(n) => format!("{} for {n}", i.role),
            None => i.role.clone(),
        };
        let attached = match (&i.attached, i.present) {
            (_, false) => "missing from the node".to_string(),
            (Some(mode), true) => mode.clone(),
            (None, true) => "not attached".to_string(),
        };
        let lost = match i.undelivered {
            Some(n) if n > 0 => format!("  {n} frames undelivered (veth peer without XDP or GRO)"),
            _ => String::new(),
        };
        let _ = writeln!(out, "  {:<12} {:<28} {attached}{lost}", i.name, role);
    }
    let _ = writeln!(out, "\nservices:");
    for s in &status.services {
        let _ = writeln!(
            out,
            "  {:<16} acceptance {:<8} endpoints {:<3} targets {:<3} connections opened {}",
            s.name,
            if s.acceptance_required {
                "required"
            } else {
                "no"
            },
            s.endpoints,
            s.targets,
            s.connections_opened,
        );
    }
    let _ = writeln!(out, "\nendpoints:");
    let _ = writeln!(
        out,
        "  {:<20} {:<12} {:<10} {:<16} {:<18} {:>6} {:>9} {:>8} {:>10} {:>8}",
        "ID",
        "SERVICE",
        "NETWORK",
        "IP",
        "STATE",
        "CONNS",
        "HALF-OPEN",
        "OPENED",
        "FORWARDED",
        "DROPPED"
    );
    for e in &status.endpoints {
        let packets = |name: &str| e.counters.get(name).map_or(0, |c| c.packets);
        let dropped: u64 = counter::ALL
            .iter()
            .filter(|(c, _)| counter::is_drop(*c))
            .map(|(_, name)| packets(name))
            .sum();
        let _ = writeln!(
            out,
            "  {:<20} {:<12} {:<10} {:<16} {:<18} {:>6} {:>9} {:>8} {:>10} {:>8}",
            e.id,
            e.service,
            e.consumer_network,
            e.ip,
            e.state,
            e.connections,
            e.half_open,
            packets("forward_new"),
            packets("forward") + packets("reply"),
            dropped,
        );
        let l = &e.limits;
        let listeners: Vec<String> = e
            .listeners
            .iter()
            .map(|l| format!("{}/{}", l.port, l.protocol))
            .collect();
        let mss = if l.mss != 0 {
            format!(", mss {}", l.mss)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<20} listeners: {}; idle {} s (UDP {} s){mss}",
            "",
            listeners.join(" "),
            l.idle_timeout_seconds,
            l.udp_idle_timeout_seconds
        );
        if l.connections != 0 || l.new_connections_per_second != 0 {
            let _ = writeln!(
                out,
                "  {:<20} limits: {} connections, {} new per second, {} half-open",
                "", l.connections, l.new_connections_per_second, l.half_open
            );
        }
    }
    if let Some(dns) = &status.dns {
        let _ = writeln!(out, "\nDNS ({}):", dns.domain);
        for n in &dns.networks {
            let counts: Vec<String> = n.queries.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                out,
                "  {:<12} resolvers {:<24} {}",
                n.consumer_network,
                n.resolvers.join(", "),
                counts.join(", ")
            );
        }
        for name in &dns.private_names {
            let _ = writeln!(
                out,
                "  private name {} (service {}): {}; TXT {}.{} \"{}\"",
                name.name,
                name.service,
                name.status.name(),
                crate::verification::LABEL,
                name.name,
                name.token
            );
        }
    }
    let _ = writeln!(out, "\ncounters (all endpoints, packets/bytes):");
    for (name, total) in &status.counters {
        let _ = writeln!(
            out,
            "  {name:<32} {:>12} {:>14}",
            total.packets, total.bytes
        );
    }
    Ok(out)
}
