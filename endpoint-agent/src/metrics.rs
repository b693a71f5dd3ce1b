//! Metrics: Prometheus/OpenMetrics text on `/metrics` (and `/healthz` for liveness),
//! read afresh at each scrape from the running data path's maps and the agent's own
//! state — AWS PrivateLink's CloudWatch set per endpoint and per service (active and
//! new connections, bytes and packets each way, drops by reason, RSTs sent and
//! received), and what it does not show: NAT ports and flow-table fill against their
//! capacity, target health and check durations, the applied config generation and
//! reconciles, connection records lost.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use axum::{Router, http::header, response::IntoResponse, routing::get};
use endpoint_common::{
    counter,
    maps::{Usage, name},
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    config::Config,
    expiry::{Census, read_all},
    ids::Ids,
    instance::Instance,
    keys::TargetKey,
    maps::Maps,
    stats::Counters,
};

/// What the agent knows that the maps do not, as of its last change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub config: Option<Config>,
    pub ids: Ids,
    pub generation: u64,
    pub unhealthy: BTreeSet<TargetKey>,
    pub reconciles: Reconciles,
    /// The flow table as the expiry scan's last whole pass found it.
    pub census: Census,
    /// In a fleet: how following the store goes.
    pub store: Option<StoreState>,
}

/// A fleet node's view of its store, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreState {
    pub connected: bool,
    pub applied_revision: i64,
    /// The latest change was refused (the node runs an older one).
    pub refused: bool,
}

/// How applying configs went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reconciles {
    pub applied: u64,
    pub failed: u64,
    /// How long the last one took.
    pub last_seconds: f64,
}

/// What the agent shares with the metrics server: its snapshot (replaced when it
/// changes) and each target's last health-check duration (as checks come in).
#[derive(Clone, Default)]
pub struct Shared {
    pub snapshot: Arc<Mutex<Snapshot>>,
    pub latencies: Arc<Mutex<BTreeMap<TargetKey, f64>>>,
}

/// A series' labels: name and value pairs.
type Labels = Vec<(&'static str, String)>;

/// `labels` and one more.
fn with(labels: &Labels, name: &'static str, value: &str) -> Labels {
    let mut more = labels.clone();
    more.push((name, value.to_string()));
    more
}

/// One scope's metrics (endpoints, services): what PrivateLink shows.
struct Set {
    active: Family<Labels, Gauge>,
    new: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    packets: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    resets: Family<Labels, Counter>,
    resets_received: Family<Labels, Counter>,
}

impl Set {
    fn register(registry: &mut Registry, scope: &str) -> Self {
        let set = Self {
            active: Family::default(),
            new: Family::default(),
            bytes: Family::default(),
            packets: Family::default(),
            dropped: Family::default(),
            resets: Family::default(),
            resets_received: Family::default(),
        };
        let what = |m: &str| format!("{m}, per {scope}");
        registry.register(
            format!("{scope}_active_connections"),
            what("Open connections and UDP flows"),
            set.active.clone(),
        );
        registry.register(
            format!("{scope}_new_connections"),
            what("Connections and UDP flows opened"),
            set.new.clone(),
        );
        registry.register(
            format!("{scope}_bytes"),
            what("Bytes forwarded (whole frames), by direction"),
            set.bytes.clone(),
        );
        registry.register(
            format!("{scope}_packets"),
            what("Packets forwarded, by direction"),
            set.packets.clone(),
        );
        registry.register(
            format!("{scope}_packets_dropped"),
            what("Packets dropped, by reason (the data path's drop counters)"),
            set.dropped.clone(),
        );
        registry.register(
            format!("{scope}_resets_sent"),
            what("TCP RSTs sent for cut connections"),
            set.resets.clone(),
        );
        registry.register(
            format!("{scope}_resets_received"),
            what("TCP RSTs received in their connection's window, from either end"),
            set.resets_received.clone(),
        );
        set
    }

    /// Adds endpoint `slot`'s counts under `labels`.
    fn add(&self, labels: &Labels, counters: &Counters, slot: u32, usage: &Usage) {
        self.active
            .get_or_create(labels)
            .inc_by(usage.connections as i64);
        self.new
            .get_or_create(labels)
            .inc_by(counters.get(slot, counter::FORWARD_NEW).packets);
        let ways = [
            (
                "consumer_to_target",
                &[counter::FORWARD_NEW, counter::FORWARD][..],
            ),
            (
                "target_to_consumer",
                &[counter::REPLY, counter::ICMP_ERROR][..],
            ),
        ];
        for (direction, kinds) in ways {
            let of = with(labels, "direction", direction);
            for &kind in kinds {
                let count = counters.get(slot, kind);
                self.bytes.get_or_create(&of).inc_by(count.bytes);
                self.packets.get_or_create(&of).inc_by(count.packets);
            }
        }
        for &(kind, name) in counter::ALL {
            let packets = counters.get(slot, kind).packets;
            if counter::is_drop(kind) && packets != 0 {
                let of = with(labels, "reason", name.trim_start_matches("drop_"));
                self.dropped.get_or_create(&of).inc_by(packets);
            }
        }
        self.resets
            .get_or_create(labels)
            .inc_by(counters.get(slot, counter::RESET_SENT).packets);
        self.resets_received
            .get_or_create(labels)
            .inc_by(counters.get(slot, counter::RESET_RECEIVED).packets);
    }
}

/// The exposition of the instance whose maps are `maps`, as of `snapshot`, with the
/// health checks' last durations `latencies`.
pub fn render(
    maps: &Maps,
    snapshot: &Snapshot,
    latencies: &BTreeMap<TargetKey, f64>,
) -> Result<String> {
    let mut registry = Registry::with_prefix("endpoint_agent");
    let endpoints = Set::register(&mut registry, "endpoint");
    let services = Set::register(&mut registry, "service");
    let node_dropped = Family::<Labels, Counter>::default();
    registry.register(
        "node_packets_dropped",
        "Packets dropped that no endpoint is blamed for (not endpoint traffic, malformed), by reason",
        node_dropped.clone(),
    );
    let healthy = Family::<Labels, Gauge>::default();
    registry.register(
        "target_healthy",
        "Whether a target passes its health checks (1) or gets no new flows (0)",
        healthy.clone(),
    );
    let checked = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "health_check_seconds",
        "How long a target's last health check took (a failed one: until it failed)",
        checked.clone(),
    );
    let records_dropped = Counter::<u64>::default();
    registry.register(
        "flow_records_dropped",
        "Connection records (--flow-log) lost for want of room in the ring",
        records_dropped.clone(),
    );
    let generation = Gauge::<i64>::default();
    registry.register(
        "config_generation",
        "Configs applied to this instance's maps",
        generation.clone(),
    );
    let reconciles = Family::<Labels, Counter>::default();
    registry.register(
        "reconciles",
        "Config changes the agent tried to apply, by result",
        reconciles.clone(),
    );
    let reconcile_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    registry.register(
        "last_reconcile_seconds",
        "How long the last config change took to apply",
        reconcile_seconds.clone(),
    );

    let dns = Family::<Labels, Counter>::default();
    registry.register(
        "dns_queries",
        "DNS queries each consumer network's resolver address answered, by result (answer, nxdomain, refused, malformed)",
        dns.clone(),
    );
    if let Some(config) = &snapshot.config {
        for network in crate::status::resolvers(config, &snapshot.ids, maps)? {
            for (result, n) in network.queries {
                dns.get_or_create(&vec![
                    ("consumer_network", network.consumer_network.clone()),
                    ("result", result.to_string()),
                ])
                .inc_by(n);
            }
        }
    }

    let entries = Gauge::<i64>::default();
    registry.register(
        "flow_table_entries",
        "Flow table entries (two per connection, one per NAT port reservation), as the expiry scan's last whole pass (about 30 s) counted them",
        entries.clone(),
    );
    let capacity = Gauge::<i64>::default();
    registry.register(
        "flow_table_capacity",
        "Flow table entries the map holds",
        capacity.clone(),
    );
    let nat_used = Family::<Labels, Gauge>::default();
    registry.register(
        "nat_ports_used",
        "NAT ports held towards a target (connections and TIME_WAIT reservations), by NAT address, target and protocol, as of the last whole pass",
        nat_used.clone(),
    );
    let nat_capacity = Gauge::<i64>::default();
    registry.register(
        "nat_ports_capacity",
        "NAT ports each (NAT address, target, protocol) may hold: node.nat_ports",
        nat_capacity.clone(),
    );
    entries.set(snapshot.census.entries as i64);
    capacity.set(i64::from(maps.data(name::FLOWS)?.info()?.max_entries()));
    for ((nat, target, proto), used) in &snapshot.census.nat_ports {
        let protocol = if *proto == endpoint_common::maps::PROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        let labels = vec![
            ("nat_address", nat.to_string()),
            ("target", target.to_string()),
            ("protocol", protocol.to_string()),
        ];
        nat_used.get_or_create(&labels).set(*used as i64);
    }
    generation.set(snapshot.generation as i64);
    for (result, n) in [
        ("applied", snapshot.reconciles.applied),
        ("failed", snapshot.reconciles.failed),
    ] {
        reconciles
            .get_or_create(&vec![("result", result.to_string())])
            .inc_by(n);
    }
    reconcile_seconds.set(snapshot.reconciles.last_seconds);
    if let Some(store) = snapshot.store {
        for (name, help, value) in [
            (
                "store_connected",
                "1 while the fleet's store (etcd) can be reached; the node forwards either way",
                i64::from(store.connected),
            ),
            (
                "store_applied_revision",
                "The store revision whose model this node applied",
                store.applied_revision,
            ),
            (
                "store_change_refused",
                "1 while the store's latest change is refused here (invalid): the node runs the one before",
                i64::from(store.refused),
            ),
        ] {
            let gauge = Gauge::<i64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
    }

    let slots = snapshot.ids.endpoints.values().max().map_or(1, |&s| s + 1);
    let counters = Counters::read_slots(maps, slots)?;
    records_dropped.inc_by(counters.packets(counter::FLOW_RECORD_DROPPED));
    // Every reason, zeros included: few series, and a rate that starts from 0.
    for &(kind, name) in counter::ALL {
        let packets = counters.get(0, kind).packets;
        if counter::is_drop(kind) {
            node_dropped
                .get_or_create(&vec![(
                    "reason",
                    name.trim_start_matches("drop_").to_string(),
                )])
                .inc_by(packets);
        }
    }
    if let Some(config) = &snapshot.config {
        let ports = &config.node.nat_ports;
        nat_capacity.set(i64::from(ports.last) - i64::from(ports.first) + 1);
        // Every endpoint's usage, a thousand a system call.
        let usage: BTreeMap<u32, Usage> = read_all(maps.data(name::USAGE)?)?
            .into_iter()
            .filter(|(slot, _)| *slot < slots)
            .collect();
        for endpoint in &config.endpoints {
            let Some(&slot) = snapshot.ids.endpoints.get(&endpoint.id) else {
                continue;
            };
            let used = usage.get(&slot).copied().unwrap_or_default();
            let labels = vec![
                ("endpoint", endpoint.id.clone()),
                ("service", endpoint.service.clone()),
                ("consumer_network", endpoint.consumer_network.clone()),
                ("zone", endpoint.zones()),
            ];
            endpoints.add(&labels, &counters, slot, &used);
            services.add(
                &vec![("service", endpoint.service.clone())],
                &counters,
                slot,
                &used,
            );
        }
        for (key, _) in crate::ids::targets(config) {
            let labels = vec![
                ("service", key.listener.service.clone()),
                ("load_balancer", key.listener.load_balancer.clone()),
                (
                    "listener",
                    format!("{}/{}", key.listener.port, key.listener.protocol),
                ),
                ("target", key.addr().to_string()),
            ];
            let up = !snapshot.unhealthy.contains(&key);
            healthy.get_or_create(&labels).set(i64::from(up));
            if let Some(seconds) = latencies.get(&key) {
                checked.get_or_create(&labels).set(*seconds);
            }
        }
    }
    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(text)
}

/// Serves `/metrics` and `/healthz` on `addr` until the runtime stops.
pub async fn serve(addr: SocketAddr, instance: Instance, shared: Shared) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: listening on {addr}"))?;
    log::info!("metrics on http://{addr}/metrics");
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (instance, shared) = (instance.clone(), shared.clone());
                async move { scrape(&instance, &shared) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).await.context("metrics: serving")
}

fn scrape(instance: &Instance, shared: &Shared) -> axum::response::Response {
    let rendered = Maps::open_pinned(&instance.pins).and_then(|maps| {
        match (shared.snapshot.lock(), shared.latencies.lock()) {
            (Ok(snapshot), Ok(latencies)) => render(&maps, &snapshot, &latencies),
            _ => anyhow::bail!("metrics: the agent's state is poisoned"),
        }
    });
    match rendered {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            log::warn!("metrics: {e:#}");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e:#}\n"),
            )
                .into_response()
        }
    }
}
