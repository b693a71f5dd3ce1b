//! `flows`: the live connection table as a person reads it — like `conntrack -L` —
//! streamed from a running instance's pinned table, a thousand entries per system call,
//! one line per connection (its consumer-to-target entry), never the whole table in
//! memory.

use std::{collections::BTreeMap, io::Write, net::SocketAddr};

use anyhow::{Context as _, Result, bail};
use aya::maps::HashMap;
use endpoint_common::maps::{Flow, FlowKey, PROTO_UDP, PROVIDER_NETWORK, name, tcp};
use serde::Serialize;

use crate::{
    expiry::{self, read_batch},
    ids::Ids,
    instance::Instance,
    maps::Maps,
};

/// Which connections to show (all given must match).
#[derive(Debug, Default)]
pub struct Filter {
    pub endpoint: Option<String>,
    pub network: Option<String>,
    pub target: Option<SocketAddr>,
}

/// One connection.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    pub network: &'a str,
    pub protocol: &'static str,
    pub client: SocketAddr,
    pub endpoint: &'a str,
    /// The endpoint's address and port the client talks to.
    pub endpoint_address: SocketAddr,
    pub target: SocketAddr,
    /// The address and port the target sees the connection come from.
    pub nat: SocketAddr,
    /// `opening`, `established` or `closing` (TCP); `open` (UDP).
    pub state: &'static str,
    /// Seconds since a packet last used either direction.
    pub idle_seconds: u64,
}

/// Writes the connections of `instance` that pass `filter` to `out` — as JSON lines
/// with `json`, else as a table — and returns how many.
pub fn list(
    instance: &Instance,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> Result<usize> {
    if !instance.exists() {
        bail!(
            "instance {:?} has no data path (nothing pinned under {})",
            instance.name,
            instance.pins.display()
        );
    }
    let ids: Ids = instance.read("ids.json")?.unwrap_or_default();
    let maps = Maps::open_pinned(&instance.pins)?;
    write(&maps, &ids, filter, json, out)
}

/// [`list`], from `maps` named by `ids`.
pub fn write(
    maps: &Maps,
    ids: &Ids,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> Result<usize> {
    let networks: BTreeMap<u32, &str> = ids
        .networks
        .iter()
        .map(|(n, &id)| (id, n.as_str()))
        .collect();
    let endpoints: BTreeMap<u32, &str> = ids
        .endpoints
        .iter()
        .map(|(e, &slot)| (slot, e.as_str()))
        .collect();
    let wanted_network = match &filter.network {
        Some(name) => Some(
            *ids.networks
                .get(name)
                .with_context(|| format!("no consumer network {name:?}"))?,
        ),
        None => None,
    };
    let wanted_slot = match &filter.endpoint {
        Some(id) => Some(
            *ids.endpoints
                .get(id)
                .with_context(|| format!("no endpoint {id:?}"))?,
        ),
        None => None,
    };
    let table = maps.data(name::FLOWS)?;
    let replies: HashMap<_, FlowKey, Flow> = maps.hash(name::FLOWS)?;
    let now = expiry::now_ns() / 1_000_000_000;
    if !json {
        writeln!(
            out,
            "{:<12} {:<5} {:<21} {:<16} {:<21} {:<21} {:<21} {:<11} {:>6}",
            "NETWORK",
            "PROTO",
            "CLIENT",
            "ENDPOINT",
            "ENDPOINT ADDRESS",
            "TARGET",
            "NAT",
            "STATE",
            "IDLE"
        )?;
    }
    let mut shown = 0;
    let mut cursor = None;
    loop {
        let (batch, next) = read_batch::<FlowKey, Flow>(table, cursor, 1024)?;
        for (key, flow) in &batch {
            let network = key.network();
            if network == PROVIDER_NETWORK
                || wanted_network.is_some_and(|n| n != network)
                || wanted_slot.is_some_and(|s| s != flow.slot)
            {
                continue;
            }
            let target = flow.dst.socket(flow.family, flow.dst_port_be);
            if filter.target.is_some_and(|t| t != target) {
                continue;
            }
            // The reply direction is looked up only when this one is idle.
            let mut seen = flow.last_seen_s;
            if now.saturating_sub(seen) > 1
                && let Ok(reply) = replies.get(&flow.reply_key(), 0)
                && reply.last_seen_s != endpoint_common::maps::DEAD
            {
                seen = seen.max(reply.last_seen_s);
            }
            let row = Row {
                network: networks.get(&network).copied().unwrap_or("?"),
                protocol: if key.proto() == PROTO_UDP {
                    "udp"
                } else {
                    "tcp"
                },
                client: key.src.socket(key.family(), key.src_port_be),
                endpoint: endpoints.get(&flow.slot).copied().unwrap_or("?"),
                endpoint_address: key.dst.socket(key.family(), key.dst_port_be),
                target,
                nat: flow.src.socket(flow.family, flow.src_port_be),
                state: state(key, flow),
                idle_seconds: now.saturating_sub(seen),
            };
            if json {
                serde_json::to_writer(&mut *out, &row)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<12} {:<5} {:<21} {:<16} {:<21} {:<21} {:<21} {:<11} {:>5}s",
                    row.network,
                    row.protocol,
                    row.client.to_string(),
                    row.endpoint,
                    row.endpoint_address.to_string(),
                    row.target.to_string(),
                    row.nat.to_string(),
                    row.state,
                    row.idle_seconds
                )?;
            }
            shown += 1;
        }
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok(shown),
        }
    }
}

fn state(key: &FlowKey, flow: &Flow) -> &'static str {
    let bits = flow.tcp;
    if key.proto() == PROTO_UDP {
        "open"
    } else if bits & (tcp::FIN_CONSUMER | tcp::FIN_TARGET | tcp::RESET) != 0 {
        "closing"
    } else if bits & tcp::ESTABLISHED != 0 {
        "established"
    } else {
        "opening"
    }
}
