//! `endpoint-agent status`: what a running (or kept) instance is doing — its interfaces
//! and their attach modes, services, endpoints with their states and counters, and the
//! node's totals — read from the pinned maps and the state directory.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, MapData};
use endpoint_common::{
    counter::{self, Count},
    maps::{Flow, FlowKey},
};

use crate::{
    apply::{Maps as _, Pinned},
    config::{self, Config},
    events,
    ids::Ids,
    instance::Instance,
    loader::Modes,
    stats::Counters,
};

pub fn show(instance: &Instance) -> Result<String> {
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
    let maps = Pinned::open(&instance.pins, &["STATS", "FLOWS"])?;
    let counters = Counters::read(&maps)?;
    let flows: HashMap<&MapData, FlowKey, Flow> =
        HashMap::try_from(maps.map("FLOWS").context("no map FLOWS")?)?;
    let flows = flows.keys().count();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "instance {:?}: {} flow entries (two per connection)",
        instance.name, flows
    );
    let _ = writeln!(out, "\ninterfaces:");
    for i in &config.node.interfaces {
        let mode = modes
            .get(&i.name)
            .map_or("not attached".to_string(), |m| m.to_string());
        let role = match &i.consumer_network {
            Some(n) => format!("{:?} for {n}", i.role),
            None => format!("{:?}", i.role),
        };
        let nat: Vec<String> = i.nat_addresses.iter().map(ToString::to_string).collect();
        let nat = if nat.is_empty() {
            String::new()
        } else {
            format!("  NAT {}", nat.join(", "))
        };
        let _ = writeln!(out, "  {:<12} {:<28} {mode}{nat}", i.name, role);
    }
    let states = events::effective_states(&config);
    let sum = |ids: &mut dyn Iterator<Item = u32>, counter: u32| -> u64 {
        ids.map(|id| counters.get(id, counter).packets).sum()
    };
    let _ = writeln!(out, "\nservices:");
    for s in &config.services {
        let members: Vec<u32> = config
            .endpoints
            .iter()
            .filter(|e| e.service == s.name)
            .filter_map(|e| ids.endpoints.get(&e.id).copied())
            .collect();
        let targets: usize = s
            .load_balancers
            .iter()
            .flat_map(|lb| &lb.listeners)
            .map(|l| l.targets.len())
            .sum();
        let _ = writeln!(
            out,
            "  {:<16} acceptance {:<8} endpoints {:<3} targets {:<3} connections opened {:<8} packets forwarded {:<10} replies {}",
            s.name,
            if s.acceptance_required {
                "required"
            } else {
                "no"
            },
            members.len(),
            targets,
            sum(&mut members.iter().copied(), counter::FORWARD_NEW),
            sum(&mut members.iter().copied(), counter::FORWARD),
            sum(&mut members.iter().copied(), counter::REPLY),
        );
    }
    let _ = writeln!(out, "\nendpoints:");
    let _ = writeln!(
        out,
        "  {:<20} {:<12} {:<10} {:<16} {:<18} {:>8} {:>10} {:>10} {:>8}",
        "ID", "SERVICE", "NETWORK", "IP", "STATE", "OPENED", "FORWARDED", "REPLIES", "DROPPED"
    );
    for e in &config.endpoints {
        let Some(&id) = ids.endpoints.get(&e.id) else {
            continue;
        };
        let dropped: u64 = counter::ALL
            .iter()
            .filter(|(c, _)| *c >= counter::DROP_MALFORMED && *c != counter::RESET_REVOKED)
            .map(|(c, _)| counters.get(id, *c).packets)
            .sum();
        let _ = writeln!(
            out,
            "  {:<20} {:<12} {:<10} {:<16} {:<18} {:>8} {:>10} {:>10} {:>8}",
            e.id,
            e.service,
            e.consumer_network,
            e.ip,
            states.get(e.id.as_str()).map_or("?", |s| s.name()),
            counters.get(id, counter::FORWARD_NEW).packets,
            counters.get(id, counter::FORWARD).packets,
            counters.get(id, counter::REPLY).packets,
            dropped,
        );
    }
    let _ = writeln!(out, "\ncounters (all endpoints, packets/bytes):");
    for (c, name) in counter::ALL {
        let total = counters.total(*c);
        if total != Count::default() {
            let _ = writeln!(
                out,
                "  {name:<32} {:>12} {:>14}",
                total.packets, total.bytes
            );
        }
    }
    Ok(out)
}
