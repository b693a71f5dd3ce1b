//! `endpoint-agent run`: the node agent's loop. Start (or take over an earlier agent's
//! data path), apply the config, then keep the maps in sync with it — the file once it
//! settles and on SIGHUP, target health, the node's interfaces — while expiring flows
//! and watching for traffic to endpoints that wait for acceptance; on SIGINT/SIGTERM
//! take everything down (or, with `--on-exit keep`, leave the data path running for the
//! next agent).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use endpoint_common::{
    counter::{self, Count},
    maps::name,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::interval,
};

use crate::{
    acceptance,
    agent::Agent,
    config::State,
    delivery::Delivery,
    events::{Events, Kind},
    facts::Facts,
    flow_log::FlowLog,
    health::{self, Checks},
    host::Host,
    instance::Instance,
    keys::TargetKey,
    loader, metrics, netlink,
    pipeline::Failover,
    store::{self, follow::Update},
    validate,
    verification::{self, Verifications},
};

/// What to do with the data path when the agent is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Detach, unpin and restore the node: nothing is left behind.
    Detach,
    /// Leave the program, maps and flows running: a restarted agent adopts them with no
    /// connection lost (`endpoint-agent cleanup` removes them).
    Keep,
}

pub struct Options {
    pub config: PathBuf,
    pub instance: Instance,
    /// `-` for stdout, a file, or none.
    pub events: Option<String>,
    pub on_exit: OnExit,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where to append connection records, if anywhere.
    pub flow_log: Option<PathBuf>,
    /// In a fleet: the store holding the model (`config` then holds `node:` only).
    pub store: Option<Fleet>,
}

/// A node of a fleet: where the model is, and the node's name in it.
pub struct Fleet {
    pub location: store::Location,
    pub node: String,
}

/// What a fleet's node calls its composed config in messages (they name the object
/// and line a problem came from instead).
const STORE_SOURCE: &str = "store";

/// How often the file is re-read, idle flows are looked for, and due health checks
/// started.
const WATCH: Duration = Duration::from_millis(500);
const EXPIRE: Duration = Duration::from_secs(1);
/// How often the node's interfaces and host settings are looked at again besides when
/// netlink says they changed.
const NODE: Duration = Duration::from_secs(10);
/// How often veths are checked for frames they could not deliver.
const DELIVERY: Duration = Duration::from_secs(2);
const HEALTH: Duration = Duration::from_millis(250);
/// How often due private DNS name verifications are started.
const VERIFY: Duration = Duration::from_secs(1);

pub async fn run(options: Options) -> Result<()> {
    // First: a signal that arrives while the agent starts is handled once it has (the
    // default action would kill it half-way, without a word).
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let (source, text, following) = match &options.store {
        None => (
            options.config.display().to_string(),
            read(&options.config)?,
            None,
        ),
        Some(fleet) => {
            let model = store::Store::connect(&fleet.location)
                .await?
                .model()
                .await?;
            let node = read(&options.config)?;
            let composed = store::compose(
                &options.config.display().to_string(),
                &node,
                &model,
                &fleet.location,
            )?;
            let following = Following {
                location: fleet.location.clone(),
                node,
                digest: model.digest(),
                model: Some(model),
                applied: composed.revision,
                lost: None,
            };
            (
                STORE_SOURCE.to_string(),
                composed.text.clone(),
                Some((following, composed)),
            )
        }
    };
    // Nothing is loaded or attached for a config that is not valid.
    let loaded =
        validate::load(&source, &text, &Facts::of_this_node()?).map_err(|e| match &following {
            Some((_, composed)) => anyhow::anyhow!("{}", composed.locate(STORE_SOURCE, &e.report)),
            None => e.into(),
        })?;
    let mut following = following.map(|(f, _)| f);
    let mut events = options.events.as_deref().map(Events::open).transpose()?;
    if let (Some(events), Some(f)) = (&mut events, &following) {
        // Endpoint events wait for the events lock.
        events.endpoint_events = false;
        events.revision = Some(f.applied);
    }
    // The lease an earlier agent left must outlive this one's start.
    let lease_bridge = options.store.as_ref().map(|fleet| {
        store::follow::LeaseBridge::hold(fleet.location.clone(), options.instance.clone())
    });
    // A first start that fails leaves nothing behind; a restart that fails leaves the
    // running data path alone.
    let instance = options.instance.clone();
    let fresh = !instance.exists();
    let mut agent = Agent::start(&loaded.config, options.instance, events, source.clone())
        .inspect_err(|_| {
            if fresh {
                discard(&instance);
            }
        })?;
    drain_program_logs(agent.ebpf_mut());
    // A zoned fleet node new to the node answers ARP for nothing until it has won an
    // election (never beside the node that holds an address).
    if fresh && options.store.is_some() && loaded.config.node.zone.is_some() {
        agent.set_failover(store::failover(&Default::default()))?;
    }
    if options.flow_log.is_some() {
        agent.record_flows();
    }
    if let Err(e) = agent.reconcile(&text, true) {
        if fresh {
            let _ = agent.remove();
        }
        return Err(e);
    }
    let mut flow_log = match &options.flow_log {
        Some(path) => Some(FlowLog::open(agent.instance(), path)?),
        None => None,
    };
    log::info!("ready: {}", agent.summary());
    let shared = metrics::Shared::default();
    let mut published = (agent.snapshot_version(), None);
    if let Ok(mut snapshot) = shared.snapshot.lock() {
        *snapshot = agent.snapshot();
    }
    if let Some(addr) = options.metrics {
        let server = tokio::spawn(metrics::serve(
            addr,
            agent.instance().clone(),
            shared.clone(),
        ));
        // A port that cannot be had is a start that failed, not a silent gap in metrics.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if server.is_finished() {
            let error = match server.await {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("metrics: the server stopped"),
            };
            if fresh {
                let _ = agent.remove();
            }
            return Err(error);
        }
    }

    let mut watch = interval(WATCH);
    let mut expire = interval(EXPIRE);
    let mut node = interval(NODE);
    let mut changed = netlink::changes()?;
    let mut delivery = Delivery::default();
    let mut delivered = interval(DELIVERY);
    let mut pending = Pending::default();
    let mut health = interval(HEALTH);
    let mut checks = Checks::default();
    let (results, mut checked) = mpsc::unbounded_channel::<(TargetKey, bool, Duration)>();
    let mut file = Watch::new(text, following.take());
    let node_name = options
        .store
        .as_ref()
        .map_or(String::new(), |f| f.node.clone());
    // In a fleet: the model's changes, the node's status and the events lock.
    let (updates_tx, mut updates) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = tokio::sync::watch::channel(String::new());
    let (leader_tx, mut leader) = tokio::sync::watch::channel(false);
    let (wanted_tx, wanted_rx) = tokio::sync::watch::channel(BTreeSet::new());
    let (elections_tx, mut elections) = tokio::sync::watch::channel(store::Elections::default());
    let mut presence = None;
    if let Some(fleet) = &options.store {
        tokio::spawn(store::follow::model(fleet.location.clone(), updates_tx));
        presence = Some(tokio::spawn(store::follow::presence(
            store::follow::Presence {
                location: fleet.location.clone(),
                node: fleet.node.clone(),
                status: status_rx,
                leader: leader_tx,
                wanted: wanted_rx,
                elections: elections_tx,
                instance: agent.instance().clone(),
                keep: options.on_exit == OnExit::Keep,
            },
        )));
        // `presence` keeps the lease from here (its first keep-alive comes as soon as
        // this task waits, well within the lease's life).
        drop(lease_bridge);
    } else {
        drop((updates_tx, status_rx, leader_tx, wanted_rx, elections_tx));
    }
    let mut verify = interval(VERIFY);
    let mut verifications = Verifications::with(agent.verifications().to_vec());
    let (verified, mut verified_rx) = mpsc::unbounded_channel::<(String, Option<bool>)>();
    loop {
        tokio::select! {
            _ = terminate.recv() => { log::info!("SIGTERM: stopping"); break }
            _ = interrupt.recv() => { log::info!("SIGINT: stopping"); break }
            Some(update) = updates.recv() => {
                file.follow(update);
                // Changes that queued while the last one was applied go in together.
                while let Ok(update) = updates.try_recv() {
                    file.follow(update);
                }
                file.reload(&mut agent, &options.config, Trigger::Store);
            }
            Ok(()) = elections.changed() => {
                let now = elections.borrow_and_update().clone();
                let zoned = agent.applied().config.as_ref().is_some_and(|c| c.node.zone.is_some());
                let failover = if zoned { store::failover(&now) } else { Failover::default() };
                if let Err(e) = agent.set_failover(failover) {
                    log::error!("answering for the addresses this node holds: {e:#}");
                }
            }
            Ok(()) = leader.changed() => {
                let holds = *leader.borrow_and_update();
                if let Some(events) = agent.events() {
                    events.endpoint_events = holds;
                }
            }
            _ = hangup.recv() => {
                log::info!("SIGHUP: reloading {source}");
                file.reload(&mut agent, &options.config, Trigger::Now);
            }
            _ = watch.tick() => {
                file.reload(&mut agent, &options.config, Trigger::Tick);
                pending.watch(&mut agent);
            }
            _ = health.tick() => {
                if let Some(config) = &agent.applied().config {
                    checks.sync(config);
                }
                for (target, addr, spec) in checks.due(Instant::now()) {
                    let results = results.clone();
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let passed = health::probe(addr, &spec).await;
                        let _ = results.send((target, passed, started.elapsed()));
                    });
                }
            }
            Some((target, passed, took)) = checked.recv() => {
                if let Ok(mut latencies) = shared.latencies.lock() {
                    latencies.insert(target.clone(), took.as_secs_f64());
                }
                if let Some(transition) = checks.record(&target, passed) {
                    // Logged once the rings say so: "unhealthy" means no new flow goes there.
                    if let Err(e) = agent.set_unhealthy(checks.unhealthy()) {
                        log::error!("updating the rings after a health change: {e:#}");
                    }
                    let state = if transition.healthy { "healthy" } else { "unhealthy" };
                    log::warn!("target {} (checked at {}) is {state}", transition.target, transition.addr);
                    if let Some(events) = agent.events() {
                        events.target(&transition);
                    }
                }
            }
            _ = verify.tick() => {
                if let Some(config) = &agent.applied().config {
                    verifications.sync(config);
                }
                for (name, token, resolver) in verifications.due(Instant::now()) {
                    let verified = verified.clone();
                    tokio::spawn(async move {
                        let found = match verification::check(resolver, &name, &token).await {
                            Ok(found) => Some(found),
                            Err(e) => {
                                log::warn!("verifying private DNS name {name}: {resolver} did not answer ({e})");
                                None
                            }
                        };
                        let _ = verified.send((name, found));
                    });
                }
            }
            Some((name, found)) = verified_rx.recv() => {
                if let Some(transition) = verifications.record(&name, found) {
                    let record = &transition.record;
                    log::warn!(
                        "private DNS name {} of service {} is {} (was {}; TXT {}.{} = {:?})",
                        record.name, record.service, record.status.name(), transition.was.name(),
                        verification::LABEL, record.name, record.token
                    );
                    if let Err(e) = agent.set_verifications(verifications.records()) {
                        log::error!("updating DNS names after a verification: {e:#}");
                    }
                    if let Some(events) = agent.events() {
                        events.verification(&transition);
                    }
                } else if agent.verifications() != verifications.records() {
                    // New names (pending) are kept for `status`.
                    if let Err(e) = agent.set_verifications(verifications.records()) {
                        log::error!("recording verifications: {e:#}");
                    }
                }
            }
            _ = expire.tick() => {
                match agent.expire() {
                    Ok(0) => {}
                    Ok(n) => log::debug!("expired {n} connections"),
                    Err(e) => log::warn!("expiring flows: {e:#}"),
                }
            }
            _ = node.tick() => {
                if let Err(e) = agent.follow_node() {
                    log::error!("following the node's interfaces: {e:#}");
                }
            }
            _ = delivered.tick() => delivery.check(agent.attached()),
            Ok(()) = async {
                match &flow_log {
                    Some(log) => log.ready().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(log) = &mut flow_log
                    && let Err(e) = log.drain(&agent.applied().ids).await
                {
                    log::warn!("connection records: {e:#}");
                }
            }
            Some(()) = changed.recv() => {
                if let Err(e) = agent.follow_node() {
                    log::error!("following the node's interfaces: {e:#}");
                }
            }
        }
        if let Some(following) = &file.store {
            // A zoned node stands for its zone's addresses (as applied); a node whose
            // zone went lets go of them.
            let claims = match &agent.applied().config {
                Some(config) => config
                    .node
                    .zone
                    .as_ref()
                    .map(|zone| store::claims(config, zone))
                    .unwrap_or_default(),
                None => BTreeSet::new(),
            };
            wanted_tx.send_if_modified(|wanted| {
                let changed = *wanted != claims;
                *wanted = claims;
                changed
            });
            let status = following.status(
                &node_name,
                &agent,
                file.refused.as_deref(),
                elections.borrow().mine.clone(),
            );
            status_tx.send_if_modified(|s| {
                let changed = *s != status;
                *s = status;
                changed
            });
        }
        let version = (agent.snapshot_version(), file.store_state());
        if version != published {
            published = version;
            if let Ok(mut snapshot) = shared.snapshot.lock() {
                *snapshot = agent.snapshot();
                snapshot.store = published.1;
            }
        }
    }
    if let Some(presence) = presence {
        if options.on_exit == OnExit::Keep
            && let Some(config) = agent.applied().config.clone()
            && config.node.zone.is_some()
        {
            // The data path stays, but answers ARP for nothing while no agent keeps its
            // claims: the next agent takes them back on the same lease, or, if none comes
            // before it ends, another node does — never two at once.
            let held = elections.borrow().clone();
            let silent = store::Elections {
                mine: BTreeSet::new(),
                ..held
            };
            if let Err(e) = agent.set_failover(store::failover(&silent)) {
                log::error!("leaving the addresses to other nodes: {e:#}");
            }
        }
        // The node's status goes with the agent (with `detach`, its claims too).
        drop(status_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), presence).await;
    }
    match options.on_exit {
        OnExit::Detach => {
            agent.remove()?;
            log::info!("detached and restored the node; bye");
        }
        OnExit::Keep => log::info!(
            "left the data path running for the next agent of instance {:?}; bye",
            agent.instance().name
        ),
    }
    Ok(())
}

/// Removes whatever a failed first start of `instance` made.
fn discard(instance: &Instance) {
    let _ = loader::remove_pins(instance);
    if let Ok(mut host) = Host::adopt(instance) {
        let _ = host.restore(instance);
    }
    let _ = instance.remove();
}

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Follows the config file. A change is applied once it has settled: the file read
/// unchanged — same text, same modification time — for at least [`SETTLE`], so that a
/// writer that does not replace the file atomically is never caught half-way (a
/// truncated endpoint list would delete endpoints). SIGHUP applies the file at once, and
/// so does a file replaced whole — renamed over, or swapped behind a symlink as kubelet
/// updates a mounted ConfigMap (`..data`): it is another file (inode), complete.
struct Watch {
    /// The last text tried, valid or not: an invalid file is reported once.
    tried: String,
    /// In a fleet: the model the file is composed with.
    store: Option<Following>,
    /// Why the last change was not applied (none once one is).
    refused: Option<String>,
    /// In a fleet: the file as last read (composing the model costs a pass over it).
    raw: String,
    /// A changed file (text, modification time) and when it was first read so.
    settling: Option<(String, Option<SystemTime>, Instant)>,
    /// The file (device, inode) the path led to when last read.
    file: Option<(u64, u64)>,
}

/// How long a changed file must stay the same before it is applied.
const SETTLE: Duration = Duration::from_secs(1);

impl Watch {
    fn new(applied: String, store: Option<Following>) -> Self {
        Self {
            tried: applied,
            store,
            refused: None,
            raw: String::new(),
            settling: None,
            file: None,
        }
    }

    /// Takes in what the store follower says.
    fn follow(&mut self, update: Update) {
        let Some(following) = &mut self.store else {
            return;
        };
        match update {
            Update::Model(model) => {
                if following.lost.take().is_some() {
                    log::info!(
                        "store {}: back, at revision {}",
                        following.location,
                        model.revision
                    );
                }
                following.model = Some(model);
            }
            Update::Lost(why) => {
                if following.lost.is_none() {
                    log::error!(
                        "store {}: {why}; forwarding with revision {} until it is back",
                        following.location,
                        following.applied
                    );
                }
                following.lost = Some(why);
            }
        }
    }

    /// Re-applies the file if it changed and settled (or at once, `now`). A config that
    /// fails leaves the running state exactly as it was.
    fn reload(&mut self, agent: &mut Agent, path: &std::path::Path, trigger: Trigger) {
        use std::os::unix::fs::MetadataExt as _;
        let (text, now, modified) = match (trigger, &self.store) {
            // A change of the store: the model with the file as last settled.
            (Trigger::Store, Some(following)) => (following.node.clone(), true, None),
            (Trigger::Store, None) => return,
            _ => {
                let metadata = std::fs::metadata(path).ok();
                let modified = metadata.as_ref().and_then(|m| m.modified().ok());
                let file = metadata.map(|m| (m.dev(), m.ino()));
                // Not the first look, and another file than before: it was replaced whole.
                let replaced = self.file.is_some() && file != self.file;
                self.file = file;
                let text = match read(path) {
                    Ok(text) => text,
                    Err(e) => {
                        log::warn!("{e:#}; keeping the running config");
                        return;
                    }
                };
                (text, trigger == Trigger::Now || replaced, modified)
            }
        };
        if self.store.is_some() && trigger != Trigger::Store {
            if text == self.raw && !now && self.settling.is_none() {
                return;
            }
            self.raw = text.clone();
        }
        let node = text.clone();
        let composed = match &self.store {
            None => None,
            Some(Following { model: None, .. }) => return,
            Some(Following {
                model: Some(model),
                location,
                ..
            }) => match store::compose(&path.display().to_string(), &text, model, location) {
                Ok(composed) => Some(composed),
                Err(invalid) => {
                    self.refuse(invalid.report);
                    return;
                }
            },
        };
        let text = composed.as_ref().map_or(text, |c| c.text.clone());
        if text == self.tried && !now {
            self.settling = None;
            return;
        }
        if !now {
            match &self.settling {
                Some((seen, at, since)) if *seen == text && *at == modified => {
                    if since.elapsed() < SETTLE {
                        return;
                    }
                }
                _ => {
                    self.settling = Some((text, modified, Instant::now()));
                    return;
                }
            }
        }
        self.settling = None;
        self.tried = text.clone();
        if let Some(following) = &mut self.store {
            following.node = node;
        }
        if text == agent.applied().text {
            return;
        }
        let revision = agent.events().and_then(|e| e.revision);
        if let (Some(events), Some(composed)) = (agent.events(), &composed) {
            events.revision = Some(composed.revision);
        }
        let result = agent.reconcile(&text, false);
        if result.is_err()
            && let Some(events) = agent.events()
        {
            // Later `applied` events (health, elections) are of the revision that runs.
            events.revision = revision;
        }
        match result {
            Ok(()) => {
                self.refused = None;
                if let (Some(following), Some(composed)) = (&mut self.store, &composed) {
                    following.applied = composed.revision;
                    following.digest = following
                        .model
                        .as_ref()
                        .map(store::Model::digest)
                        .unwrap_or_default();
                }
                log::info!("reloaded: {}", agent.summary());
            }
            Err(e) => {
                let report = format!("{e:#}");
                self.refuse(match &composed {
                    Some(composed) => composed.locate(STORE_SOURCE, &report),
                    None => report,
                });
            }
        }
    }

    /// In a fleet: how following the store goes.
    fn store_state(&self) -> Option<metrics::StoreState> {
        self.store.as_ref().map(|f| metrics::StoreState {
            connected: f.lost.is_none(),
            applied_revision: f.applied,
            refused: self.refused.is_some(),
        })
    }

    /// Keeps the running config, and says why (once per reason).
    fn refuse(&mut self, report: String) {
        if self.refused.as_ref() != Some(&report) {
            log::error!("{report}\nkeeping the running config");
        }
        self.refused = Some(report);
    }
}

/// What makes the agent look at its config again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The periodic look: a changed file is applied once it settled.
    Tick,
    /// SIGHUP: the file at once.
    Now,
    /// The fleet's model changed: applied at once, with the file as last settled.
    Store,
}

/// A fleet node's view of the store.
struct Following {
    location: store::Location,
    /// The node's file as last settled: what a change of the model is composed with
    /// (a file being written is never caught half-way by a change of the store).
    node: String,
    /// The latest model (none until the store is first read).
    model: Option<store::Model>,
    /// The revision and digest of the model applied last.
    applied: i64,
    digest: String,
    /// Why the store cannot be reached, while it cannot.
    lost: Option<String>,
}

impl Following {
    fn status(
        &self,
        node: &str,
        agent: &Agent,
        refused: Option<&str>,
        answers_for: BTreeSet<String>,
    ) -> String {
        let status = store::NodeStatus {
            node: node.to_string(),
            applied_revision: self.applied,
            model: self.digest.clone(),
            generation: agent.applied().generation,
            refused: refused.map(str::to_string),
            interfaces: agent
                .modes()
                .iter()
                .map(|(name, mode)| (name.clone(), mode.to_string()))
                .collect(),
            summary: agent.summary(),
            flow_entries: agent.flow_entries(),
            unhealthy_targets: agent.unhealthy().len(),
            emits_events: agent.events_emitted(),
            answers_for,
        };
        serde_json::to_string(&status).unwrap_or_default()
    }
}

/// Watches endpoints waiting for acceptance for their first packet.
#[derive(Default)]
struct Pending {
    /// Endpoint → (packets dropped when it started waiting, reported yet).
    seen: BTreeMap<String, (u64, bool)>,
}

impl Pending {
    fn watch(&mut self, agent: &mut Agent) {
        let Some(config) = agent.applied().config.clone() else {
            return;
        };
        let states = acceptance::effective_states(&config);
        let Ok(stats) = agent.pipeline().maps().per_cpu_array::<Count>(name::STATS) else {
            return;
        };
        let mut still = BTreeMap::new();
        let mut first_traffic = Vec::new();
        for endpoint in &config.endpoints {
            if states.get(endpoint.id.as_str()) != Some(&State::PendingAcceptance) {
                continue;
            }
            let Some(&slot) = agent.applied().ids.endpoints.get(&endpoint.id) else {
                continue;
            };
            let index = counter::index(slot, counter::DROP_STATE_PENDING_ACCEPTANCE);
            let Ok(per_cpu) = stats.get(&index, 0) else {
                continue;
            };
            let dropped: u64 = per_cpu.iter().map(|c| c.packets).sum();
            let (baseline, reported) = self
                .seen
                .get(&endpoint.id)
                .copied()
                .unwrap_or((dropped, false));
            let report = !reported && dropped > baseline;
            if report {
                first_traffic.push(endpoint);
            }
            still.insert(endpoint.id.clone(), (baseline, reported || report));
        }
        self.seen = still;
        if let Some(events) = agent.events() {
            for endpoint in first_traffic {
                events.emit(Kind::PendingTraffic, endpoint, State::PendingAcceptance);
            }
        }
    }
}

/// Forwards the program's aya-log records to the agent's log.
fn drain_program_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            log::warn!("no program logs: {e}");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd and keeps it open while it lives.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let Ok(mut logger) = registered else {
        log::warn!("no program logs: cannot poll the log buffer");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
