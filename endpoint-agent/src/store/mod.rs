//! The fleet's store: one desired state for many nodes, kept in etcd (v3), one key per
//! object, under a prefix:
//!
//! - `PREFIX/model/dns`: the `dns:` section;
//! - `PREFIX/model/services/<name>`: one service;
//! - `PREFIX/model/endpoints/<id>`: one endpoint;
//! - `PREFIX/nodes/<node>/status`: what a node has applied (JSON), on the node's lease;
//! - `PREFIX/events`: the node that emits the fleet's endpoint events, on its lease.
//!
//! Objects are YAML, as in the config file. A node's own part (`node:` — interfaces, NAT
//! addresses, tables) stays in its local file: [`compose`] joins the two into the text
//! the usual pipeline (validate → plan → apply) takes.

pub mod follow;

pub use follow::Elections;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::{
    acceptance::{self, Decision},
    config::{Config, Endpoint, Service},
    pipeline::Failover,
};

/// Where a fleet's state is: `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub endpoints: Vec<String>,
    /// Starts with `/`, never ends with one.
    pub prefix: String,
}

impl FromStr for Location {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let usage = "expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX";
        let rest = s
            .strip_prefix("etcd://")
            .with_context(|| format!("store {s:?}: {usage}"))?;
        let (hosts, prefix) = rest
            .split_once('/')
            .with_context(|| format!("store {s:?}: no /PREFIX; {usage}"))?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            bail!("store {s:?}: the prefix is empty; {usage}");
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let Some((name, port)) = host.rsplit_once(':') else {
                bail!("store {s:?}: {host:?} has no port; {usage}");
            };
            if name.is_empty() || port.parse::<u16>().is_err() {
                bail!("store {s:?}: {host:?} is not HOST:PORT; {usage}");
            }
            endpoints.push(format!("http://{host}"));
        }
        Ok(Self {
            endpoints,
            prefix: format!("/{prefix}"),
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        write!(f, "etcd://{}{}", hosts.join(","), self.prefix)
    }
}

/// Every call gives up after this (the client reconnects by itself).
const TIMEOUT: Duration = Duration::from_secs(3);

/// etcd refuses transactions of more operations than this (its `--max-txn-ops`
/// default): larger imports go in several.
const TXN_OPS: usize = 128;

/// A connection to the fleet's store.
pub struct Store {
    pub client: Client,
    pub location: Location,
}

impl Store {
    pub async fn connect(location: &Location) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(TIMEOUT)
            .with_timeout(TIMEOUT)
            // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time)
            // by closing the connection.
            .with_keep_alive(Duration::from_secs(10), TIMEOUT)
            // A member cut off from its cluster fails calls and watches instead of
            // serving what it last knew in silence.
            .with_require_leader(true);
        let client = Client::connect(&location.endpoints, Some(options))
            .await
            .with_context(|| format!("connecting to {location}"))?;
        Ok(Self {
            client,
            location: location.clone(),
        })
    }

    pub fn key(&self, relative: &str) -> String {
        format!("{}/{relative}", self.location.prefix)
    }

    /// Where the model's objects are.
    pub fn model_prefix(&self) -> String {
        self.key("model/")
    }

    /// The model as of now.
    pub async fn model(&mut self) -> Result<Model> {
        let prefix = self.model_prefix();
        let response = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .with_context(|| format!("reading {}{}", self.location, "/model"))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut objects = BTreeMap::new();
        for kv in response.kvs() {
            // Not UTF-8: kept as read, for `compose` to report with its key.
            let key = String::from_utf8_lossy(kv.key())
                .trim_start_matches(&prefix)
                .to_string();
            objects.insert(key, String::from_utf8_lossy(kv.value()).into_owned());
        }
        Ok(Model { revision, objects })
    }

    /// Replaces the model with the services, endpoints and DNS settings of the config
    /// `text` (its `node:` part is left out: it is each node's own). Returns the
    /// revisions written and how many objects changed and went.
    pub async fn import(&mut self, text: &str) -> Result<String> {
        let objects = split(text)?;
        let current = self.model().await?;
        let prefix = self.model_prefix();
        let mut ops = Vec::new();
        let mut changed = 0;
        for (key, value) in &objects {
            if current.objects.get(key) != Some(value) {
                ops.push(TxnOp::put(format!("{prefix}{key}"), value.as_str(), None));
                changed += 1;
            }
        }
        let mut removed = 0;
        for key in current.objects.keys() {
            if !objects.contains_key(key) {
                ops.push(TxnOp::delete(format!("{prefix}{key}"), None));
                removed += 1;
            }
        }
        // Within one transaction the fleet sees the change at once; a larger import is
        // seen in parts, which nodes apply once the watch is quiet (see `follow`).
        let mut revision = current.revision;
        for chunk in ops.chunks(TXN_OPS) {
            let response = self
                .client
                .txn(Txn::new().and_then(chunk.to_vec()))
                .await
                .with_context(|| format!("writing to {}", self.location))?;
            revision = response.header().map_or(revision, |h| h.revision());
        }
        Ok(format!(
            "{}: {} objects ({changed} written, {removed} removed), revision {revision}",
            self.location,
            objects.len()
        ))
    }

    /// Every node seen, with its status.
    pub async fn fleet(&mut self) -> Result<Fleet> {
        let prefix = self.key("nodes/");
        let response = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .with_context(|| format!("reading {prefix}"))?;
        let mut nodes = BTreeMap::new();
        for kv in response.kvs() {
            let key = kv.key_str()?.trim_start_matches(&prefix);
            let Some((node, what)) = key.split_once('/') else {
                continue;
            };
            let entry = nodes.entry(node.to_string()).or_insert(None);
            if what == "status" {
                *entry = serde_json::from_str(kv.value_str()?).ok();
            }
        }
        let model = self.model().await?;
        Ok(Fleet {
            location: self.location.to_string(),
            revision: model.revision,
            model: model.digest(),
            nodes,
        })
    }

    /// The model as one YAML document (`dns`, `services`, `endpoints`).
    pub async fn export(&mut self) -> Result<String> {
        let model = self.model().await?;
        Ok(model.yaml(&self.location))
    }

    /// Accepts or rejects endpoint `id` in one transaction on its revision: of two
    /// operators deciding at once, one wins and the other is told.
    pub async fn decide(&mut self, id: &str, decision: Decision) -> Result<String> {
        let key = self.key(&format!("model/endpoints/{id}"));
        let response = self
            .client
            .get(key.as_str(), None)
            .await
            .with_context(|| format!("reading {key}"))?;
        let kv = response
            .kvs()
            .first()
            .with_context(|| format!("no endpoint {id:?} in {}", self.location))?;
        let (text, revision) = (kv.value_str()?.to_string(), kv.mod_revision());
        let endpoint: Endpoint = serde_yaml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{key}: {e}; fix it before deciding"))?;
        let service_key = self.key(&format!("model/services/{}", endpoint.service));
        let service = self
            .client
            .get(service_key.as_str(), None)
            .await
            .with_context(|| format!("reading {service_key}"))?;
        let service: Service = match service.kvs().first() {
            Some(kv) => serde_yaml::from_str(kv.value_str()?)
                .map_err(|e| anyhow::anyhow!("{service_key}: {e}"))?,
            None => bail!(
                "endpoint {id:?} is of service {:?}, which {} does not have",
                endpoint.service,
                self.location
            ),
        };
        let verb = match decision {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
        };
        let current = acceptance::effective(&endpoint, &service);
        let next = acceptance::decide(current, decision)
            .map_err(|why| anyhow::anyhow!("cannot {verb} endpoint {id:?}: {why}"))?;
        let mut value: Value = serde_yaml::from_str(&text)?;
        let map = value.as_mapping_mut().context("an endpoint is a mapping")?;
        map.insert("state".into(), next.name().into());
        if decision == Decision::Accept {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            map.insert("accepted_at".into(), now.to_string().into());
        }
        let edited = serde_yaml::to_string(&value)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key.as_str(), edited, None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self
            .client
            .txn(txn)
            .await
            .with_context(|| format!("writing {key}"))?;
        if !response.succeeded() {
            let now = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            });
            bail!(
                "conflict: endpoint {id:?} changed while deciding (revision {revision}, now {}); \
                 nothing was written: look again (`store export`) and decide on what it is now",
                now.map_or("deleted".into(), |r| r.to_string())
            );
        }
        let written = response.header().map_or(0, |h| h.revision());
        Ok(format!(
            "endpoint {id:?}: {} → {} (revision {written})",
            current.name(),
            next.name()
        ))
    }
}

/// What a node says of itself in `PREFIX/nodes/<node>/status` (`status --fleet`).
// Fields a node of another version does not write are defaulted, not a node taken for
// gone.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct NodeStatus {
    pub node: String,
    /// The store revision applied.
    pub applied_revision: i64,
    /// The digest of the model applied ([`Model::digest`]).
    pub model: String,
    /// The config generation in the node's maps.
    pub generation: u64,
    /// Why the latest change was refused, if it was.
    pub refused: Option<String>,
    /// Interface → attach mode.
    pub interfaces: BTreeMap<String, String>,
    pub summary: String,
    /// Flow entries (two per connection), as of the expiry scan's last whole pass.
    pub flow_entries: u64,
    pub unhealthy_targets: usize,
    /// Whether this node emits the fleet's endpoint events.
    pub emits_events: bool,
    /// The failover addresses (`zone/network/ip`) it answers ARP for.
    pub answers_for: BTreeSet<String>,
}

/// Every node the fleet has seen: what each applied, and which are gone.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub location: String,
    /// The model's revision and digest now.
    pub revision: i64,
    pub model: String,
    /// Node → its status (none: gone, its lease expired).
    pub nodes: BTreeMap<String, Option<NodeStatus>>,
}

impl fmt::Display for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: store at revision {}", self.location, self.revision)?;
        for (node, status) in &self.nodes {
            let Some(s) = status else {
                writeln!(f, "  {node:<16} gone (its lease expired)")?;
                continue;
            };
            let behind = if s.model == self.model {
                " (current)"
            } else {
                " (behind)"
            };
            let interfaces: Vec<String> = s
                .interfaces
                .iter()
                .map(|(name, mode)| format!("{name}:{mode}"))
                .collect();
            writeln!(
                f,
                "  {node:<16} applied revision {}{behind}, generation {}, {}, {} flow entries; {} unhealthy targets; {}{}",
                s.applied_revision,
                s.generation,
                s.summary,
                s.flow_entries,
                s.unhealthy_targets,
                interfaces.join(" "),
                if s.emits_events {
                    "; emits the fleet's events"
                } else {
                    ""
                }
            )?;
            if !s.answers_for.is_empty() {
                let held: Vec<&str> = s.answers_for.iter().map(String::as_str).collect();
                writeln!(f, "    answers for {}", held.join(", "))?;
            }
            if let Some(refused) = &s.refused {
                for line in refused.lines() {
                    writeln!(f, "    refused: {line}")?;
                }
            }
        }
        Ok(())
    }
}

/// The election key (under `PREFIX/zones/`) of an endpoint address of either family:
/// `zone/network/ip`, a `/` inside a name written `%2F` (names never hold `%`; IPv6
/// addresses no `/`).
pub fn claim(zone: &str, network: &str, ip: IpAddr) -> String {
    format!(
        "{}/{}/{ip}",
        zone.replace('/', "%2F"),
        network.replace('/', "%2F")
    )
}

/// The (consumer network, IP) of a claim, if it is one.
fn claimed(claim: &str) -> Option<(String, IpAddr)> {
    let mut parts = claim.split('/');
    let (_zone, network, ip) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((network.replace("%2F", "/"), ip.parse().ok()?))
}

/// The failover addresses of `zone` in `config` that a node of that zone stands for
/// (those that carry traffic), as claims.
pub fn claims(config: &Config, zone: &str) -> BTreeSet<String> {
    let services: BTreeMap<&str, &Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut claims = BTreeSet::new();
    for endpoint in &config.endpoints {
        let Some(service) = services.get(endpoint.service.as_str()) else {
            continue;
        };
        if !acceptance::carries_traffic(endpoint, service) {
            continue;
        }
        for address in endpoint.addresses() {
            if address.zone == zone {
                claims.insert(claim(zone, &endpoint.consumer_network, address.ip));
            }
        }
    }
    claims
}

/// What a zoned node answers for after `elections`: ARP for the addresses it holds,
/// DNS for those any live node holds; every other address, however new, is left alone.
pub fn failover(elections: &Elections) -> Failover {
    let addresses = |claims: &BTreeSet<String>| claims.iter().filter_map(|c| claimed(c)).collect();
    Failover {
        zoned: true,
        mine: addresses(&elections.mine),
        held: addresses(&elections.held),
    }
}

/// The fleet-wide part of the desired state at one revision: object key (relative to
/// `PREFIX/model/`) → its YAML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub revision: i64,
    pub objects: BTreeMap<String, String>,
}

impl Model {
    /// A digest of the objects (FNV-1a, 64 bits): nodes that applied the same model
    /// report the same, whatever revision each read it at.
    pub fn digest(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (key, value) in &self.objects {
            for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    /// The model as one YAML document, each object under the key it came from.
    pub fn yaml(&self, location: &Location) -> String {
        let mut out = format!("# {location} at revision {}\n", self.revision);
        self.write(&mut out, "", &mut Vec::new());
        out
    }

    /// Appends the model's sections to `out`, noting where each object starts (named
    /// `prefix` + its key).
    fn write(&self, out: &mut String, prefix: &str, origins: &mut Vec<(usize, String)>) {
        let line = |out: &String| out.lines().count() + 1;
        if let Some(dns) = self.objects.get("dns") {
            out.push_str("dns:\n");
            origins.push((line(out), format!("{prefix}dns")));
            for l in body(dns).lines() {
                out.push_str(&format!("  {l}\n"));
            }
        }
        for section in ["services", "endpoints"] {
            let mut items = self
                .objects
                .iter()
                .filter(|(k, _)| k.strip_prefix(section).is_some_and(|r| r.starts_with('/')))
                .peekable();
            if items.peek().is_none() {
                continue;
            }
            out.push_str(&format!("{section}:\n"));
            for (key, text) in items {
                origins.push((line(out), format!("{prefix}{key}")));
                for (n, l) in body(text).lines().enumerate() {
                    let lead = if n == 0 { "  - " } else { "    " };
                    out.push_str(&format!("{lead}{l}\n"));
                }
            }
        }
    }
}

/// An object's text without a document marker.
fn body(text: &str) -> &str {
    let text = text.trim_start_matches("---\n");
    text.trim_end()
}

/// The config text a node applies: its own file (`node:` only) and the model, and
/// where each part came from, so that problems are reported where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    pub text: String,
    pub revision: i64,
    /// What the whole is called: the store and revision.
    name: String,
    /// (first line, where it came from), in order.
    origins: Vec<(usize, String)>,
}

/// Joins a node's file and the fleet's model. Each object must be one YAML mapping
/// named as its key says: checked here, with the key in the message, before the usual
/// validation sees the whole.
pub fn compose(
    node_file: &str,
    node_text: &str,
    model: &Model,
    location: &Location,
) -> Result<Composed, crate::config::Invalid> {
    let mut problems = Vec::new();
    match serde_yaml::from_str::<Value>(node_text) {
        Ok(Value::Mapping(map)) => {
            for key in map.keys() {
                if key.as_str() != Some("node") {
                    problems.push(format!(
                        "{node_file}: error: {:?} belongs in the store ({location}) in store \
                         mode; the node's file holds `node:` only",
                        key.as_str().unwrap_or("?")
                    ));
                }
            }
        }
        Ok(_) => problems.push(format!("{node_file}: error: expected a `node:` mapping")),
        Err(e) => problems.push(format!("{node_file}: error: {e}")),
    }
    for (key, text) in &model.objects {
        let full = format!("{}/model/{key}", location.prefix);
        let (section, name) = key.split_once('/').unwrap_or((key.as_str(), ""));
        let field = match section {
            "dns" if name.is_empty() => None,
            "services" => Some("name"),
            "endpoints" => Some("id"),
            _ => {
                problems.push(format!(
                    "{full}: error: not a model key (dns, services/<name>, endpoints/<id>)"
                ));
                continue;
            }
        };
        match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Mapping(map)) => {
                if let Some(field) = field {
                    let named = map.get(field).and_then(Value::as_str);
                    if named != Some(name) {
                        problems.push(format!(
                            "{full}: error: its {field} is {named:?}, not {name:?} as its key says"
                        ));
                    }
                }
            }
            Ok(_) => problems.push(format!("{full}: error: expected a YAML mapping")),
            Err(e) => {
                let at = e
                    .location()
                    .map_or(String::new(), |l| format!("{}:", l.line()));
                problems.push(format!("{full}:{at} error: {e}"));
            }
        }
    }
    if !problems.is_empty() {
        problems.push(format!(
            "{location} at revision {}: {} error(s); nothing was applied",
            model.revision,
            problems.len()
        ));
        return Err(crate::config::Invalid {
            report: problems.join("\n"),
        });
    }
    let mut text = node_text.trim_end().to_string();
    text.push('\n');
    let mut origins = vec![(1, node_file.to_string())];
    text.push_str(&format!("# {location} at revision {}\n", model.revision));
    model.write(
        &mut text,
        &format!("{}/model/", location.prefix),
        &mut origins,
    );
    Ok(Composed {
        text,
        revision: model.revision,
        name: format!("{location} at revision {}", model.revision),
        origins,
    })
}

impl Composed {
    /// `report` (from validating the composed text as `source`) with each line number
    /// turned into the object and line it came from.
    pub fn locate(&self, source: &str, report: &str) -> String {
        let at = format!("{source}:");
        report
            .lines()
            .map(|l| {
                let Some(rest) = l.strip_prefix(&at) else {
                    return l.to_string();
                };
                let (number, tail) = rest.split_once(':').unwrap_or(("", rest));
                let Ok(line) = number.parse::<usize>() else {
                    return format!("{}:{rest}", self.name);
                };
                let (start, origin) = self
                    .origins
                    .iter()
                    .rev()
                    .find(|(start, _)| *start <= line)
                    .unwrap_or(&self.origins[0]);
                format!("{origin}:{}:{tail}", line - start + 1)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The model's objects in a config `text`: key (relative to `PREFIX/model/`) → YAML.
fn split(text: &str) -> Result<BTreeMap<String, String>> {
    let value: Value = serde_yaml::from_str(text).context("parsing the config")?;
    let mut objects = BTreeMap::new();
    if let Some(dns) = value.get("dns")
        && !dns.is_null()
    {
        objects.insert("dns".to_string(), serde_yaml::to_string(dns)?);
    }
    for (section, field) in [("services", "name"), ("endpoints", "id")] {
        for item in value
            .get(section)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = item
                .get(field)
                .and_then(Value::as_str)
                .with_context(|| format!("an item of {section} has no {field}"))?;
            let key = format!("{section}/{name}");
            if objects
                .insert(key.clone(), serde_yaml::to_string(item)?)
                .is_some()
            {
                bail!("{section}: {name:?} appears twice");
            }
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests;
