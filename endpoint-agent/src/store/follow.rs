//! A node following the store, in two tasks beside the agent's loop:
//!
//! - [`model`]: reads the model, then watches it from the next revision; each change is
//!   sent once the watch has been quiet for [`QUIET`] (an import larger than one
//!   transaction arrives in parts). A lost connection or a compacted watch is followed
//!   by a full read (the model is small next to what a read costs etcd), with backoff.
//! - [`presence`]: the node's status key on a lease kept alive every second; the
//!   fleet's events lock (the node holding `PREFIX/events` emits endpoint events, so
//!   the fleet emits each once); and the zone elections: the claims are read once and
//!   then watched, so a node claims a free address as soon as its holder's lease ends.
//!
//! Neither touches the data path: while etcd is away the node forwards with what it last
//! applied.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use etcd_client::{
    Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::{
    sync::{mpsc, watch},
    time::{sleep, timeout},
};

use super::{Location, Model, Store};
use crate::instance::Instance;

/// How long the watch stays quiet before a change is applied.
const QUIET: Duration = Duration::from_millis(50);
/// The longest wait between attempts to reach etcd.
const BACKOFF: Duration = Duration::from_secs(5);
/// A node's lease: its status key (and the events lock) go this long after it dies.
pub const LEASE_SECONDS: i64 = 5;

/// Between half and all of `wait`, at random: a fleet that lost etcd together does not
/// come back to it all at once (each node reads the model whole on its return).
fn jittered(wait: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    wait / 2 + wait.mul_f64((random % 1000) as f64 / 2000.0)
}

/// What the model follower tells the agent's loop.
#[derive(Debug)]
pub enum Update {
    /// The model changed (or was read again).
    Model(Model),
    /// The store was lost, with why.
    Lost(String),
}

/// Follows the model at `location` forever, sending what changes.
pub async fn model(location: Location, updates: mpsc::UnboundedSender<Update>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut sent = false;
        let Err(error) = follow(&location, &updates, &mut sent).await;
        if updates.send(Update::Lost(format!("{error:#}"))).is_err() {
            return;
        }
        // A connection that worked for a while starts the backoff again.
        backoff = if sent {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(BACKOFF)
        };
        sleep(jittered(backoff)).await;
    }
}

/// One connection's worth of following; returns why it ended.
async fn follow(
    location: &Location,
    updates: &mpsc::UnboundedSender<Update>,
    sent: &mut bool,
) -> Result<Infallible> {
    let mut store = Store::connect(location).await?;
    let mut model = store.model().await?;
    let prefix = store.model_prefix();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(model.revision + 1);
    let mut stream = store
        .client
        .watch(prefix.as_str(), Some(options))
        .await
        .context("watching the model")?;
    updates.send(Update::Model(model.clone()))?;
    *sent = true;
    loop {
        // The first response of a batch waits as long as it takes; the rest only while
        // they keep coming.
        let mut quiet = None;
        loop {
            let next = match quiet {
                None => stream.message().await,
                Some(wait) => match timeout(wait, stream.message()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some(response) = next.context("the watch failed")? else {
                bail!("the watch ended");
            };
            if response.canceled() {
                bail!(
                    "the watch was cancelled ({}; compacted at revision {}): reading it all again",
                    response.cancel_reason(),
                    response.compact_revision()
                );
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key())
                    .trim_start_matches(&prefix)
                    .to_string();
                match event.event_type() {
                    etcd_client::EventType::Put => {
                        let value = String::from_utf8_lossy(kv.value()).into_owned();
                        model.objects.insert(key, value);
                    }
                    etcd_client::EventType::Delete => {
                        model.objects.remove(&key);
                    }
                }
                model.revision = model.revision.max(kv.mod_revision());
            }
            if let Some(header) = response.header() {
                model.revision = model.revision.max(header.revision());
            }
            quiet = Some(QUIET);
        }
        updates.send(Update::Model(model.clone()))?;
    }
}

/// A node's part in the fleet, beside its model.
pub struct Presence {
    pub location: Location,
    pub node: String,
    /// The node's status (JSON), kept in `PREFIX/nodes/<node>/status`.
    pub status: watch::Receiver<String>,
    /// Whether this node holds the events lock.
    pub leader: watch::Sender<bool>,
    /// The failover addresses (`zone/network/ip`) this node stands for ...
    pub wanted: watch::Receiver<BTreeSet<String>>,
    /// ... and what the elections say. Kept as they are while etcd is away: the node
    /// goes on answering for what it held (a node cut off alone may then answer beside
    /// the one that took over, until it is back and sees it lost).
    pub elections: watch::Sender<Elections>,
    /// Where the lease's id is kept: a new connection, or the next agent of the
    /// instance, keeps the lease (and with it the claims) while it lives.
    pub instance: Instance,
    /// On stop, leave the lease to run out (`--on-exit keep`: the next agent takes it
    /// back) instead of revoking it.
    pub keep: bool,
}

/// What the elections say, as this node last read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elections {
    /// The claims (`zone/network/ip`) this node holds.
    pub mine: BTreeSet<String>,
    /// Every claim a live node holds.
    pub held: BTreeSet<String>,
}

/// Keeps the node's status key on a lease, the events lock and the node's elections,
/// for as long as the agent runs.
pub async fn presence(mut presence: Presence) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut connected = false;
        let Err(error) = present(&mut presence, &mut connected).await else {
            return;
        };
        presence.leader.send_replace(false);
        if presence.status.has_changed().is_err() {
            return;
        }
        // A connection that worked for a while starts the backoff again.
        backoff = if connected {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(BACKOFF)
        };
        log::warn!(
            "store {}: node status: {error:#}; trying again within {backoff:?}",
            presence.location
        );
        sleep(jittered(backoff)).await;
    }
}

/// Where an instance keeps its lease's id.
const LEASE_FILE: &str = "lease.json";

/// Keeps the lease an earlier agent of the instance left (`--on-exit keep`) alive while
/// this one starts, until dropped once `presence` has it: loading and verifying the
/// data path blocks the agent's one thread for seconds, longer than the lease lives,
/// and a lease that ends gives the node's addresses to another node of its zone.
pub struct LeaseBridge {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseBridge {
    pub fn hold(location: Location, instance: Instance) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let Some(id) = instance.read::<i64>(LEASE_FILE).ok().flatten() else {
                return;
            };
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(mut store) = Store::connect(&location).await else {
                    return;
                };
                // An ended lease is refused: nothing to keep.
                let Ok((mut keeper, mut kept)) = store.client.lease_keep_alive(id).await else {
                    return;
                };
                while !stopped.load(Ordering::Relaxed) {
                    let answered = async {
                        keeper.keep_alive().await.ok()?;
                        kept.message().await.ok()?
                    };
                    if !matches!(timeout(Duration::from_secs(3), answered).await, Ok(Some(answer)) if answer.ttl() > 0)
                    {
                        return;
                    }
                    // Every second, in short sleeps: a drop is answered at once.
                    for _ in 0..10 {
                        if stopped.load(Ordering::Relaxed) {
                            return;
                        }
                        sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        });
        Self { stop }
    }
}

impl Drop for LeaseBridge {
    /// Stops the thread (within 0.1 s, or its bounded wait for etcd), without waiting.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The lease of an earlier connection (or agent) if it still lives, else a new one;
/// and its keeper (whose first answer, the lease's TTL, the client has read).
async fn lease(
    store: &mut Store,
    earlier: Option<i64>,
) -> Result<(i64, LeaseKeeper, LeaseKeepAliveStream)> {
    // An ended lease is refused ("lease not found").
    if let Some(id) = earlier
        && let Ok((keeper, kept)) = store.client.lease_keep_alive(id).await
    {
        return Ok((id, keeper, kept));
    }
    let id = store
        .client
        .lease_grant(LEASE_SECONDS, None)
        .await
        .context("granting the node's lease")?
        .id();
    let (keeper, kept) = store
        .client
        .lease_keep_alive(id)
        .await
        .context("keeping the lease")?;
    Ok((id, keeper, kept))
}

/// One connection's worth of presence; Ok when the agent stops.
async fn present(presence: &mut Presence, connected: &mut bool) -> Result<()> {
    let Presence {
        location,
        node,
        status,
        leader,
        wanted,
        elections,
        instance,
        keep,
    } = presence;
    let node = node.as_str();
    let mut store = Store::connect(location).await?;
    let earlier = instance.read::<i64>(LEASE_FILE).ok().flatten();
    let (lease, mut keeper, mut kept) = lease(&mut store, earlier).await?;
    if Some(lease) != earlier {
        instance.write(LEASE_FILE, &lease)?;
    }
    let status_key = store.key(&format!("nodes/{node}/status"));
    let events_key = store.key("events");
    // A node once seen stays listed (as gone once its status expires).
    store
        .client
        .put(store.key(&format!("nodes/{node}/seen")), "", None)
        .await
        .context("registering the node")?;
    // The elections' claims: read once, then followed (a claim's end is seen at once).
    let zones = store.key("zones/");
    let claims = store
        .client
        .get(zones.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .context("reading the elections")?;
    let mut holders = BTreeMap::new();
    for kv in claims.kvs() {
        holders.insert(
            kv.key_str()?.trim_start_matches(&zones).to_string(),
            kv.lease(),
        );
    }
    let from = claims.header().map_or(0, |h| h.revision()) + 1;
    let mut claims = store
        .client
        .watch(
            zones.as_str(),
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .context("watching the elections")?;
    let with_lease = || Some(PutOptions::new().with_lease(lease));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    status.mark_changed();
    *connected = true;
    loop {
        tokio::select! {
            _ = every.tick() => {
                keeper.keep_alive().await.context("keeping the lease")?;
                match kept.message().await.context("keeping the lease")? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => bail!("the node's lease expired"),
                }
                // The events lock: taken when free; held, it lasts as long as the lease.
                // (Held already on this lease: kept from an earlier connection or agent.)
                if !*leader.borrow() {
                    let txn = Txn::new()
                        .when([Compare::create_revision(events_key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(events_key.as_str(), node, with_lease())])
                        .or_else([TxnOp::get(events_key.as_str(), None)]);
                    let response = store.client.txn(txn).await.context("the events lock")?;
                    let holds = response.succeeded()
                        || response.op_responses().into_iter().any(|op| match op {
                            etcd_client::TxnOpResponse::Get(get) => {
                                get.kvs().first().is_some_and(|kv| kv.lease() == lease)
                            }
                            _ => false,
                        });
                    if holds {
                        log::info!("store {location}: this node now emits the fleet's endpoint events");
                        leader.send_replace(true);
                    }
                }
            }
            response = claims.message() => {
                let Some(response) = response.context("watching the elections")? else {
                    bail!("the elections' watch ended");
                };
                if response.canceled() {
                    bail!("the elections' watch was cancelled ({})", response.cancel_reason());
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = kv.key_str()?.trim_start_matches(&zones).to_string();
                    match event.event_type() {
                        etcd_client::EventType::Put => holders.insert(key, kv.lease()),
                        etcd_client::EventType::Delete => holders.remove(&key),
                    };
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    // The agent is stopping: its status (and its claims) go now, not at
                    // the lease's end — unless the data path stays for the next agent.
                    if *keep {
                        let _ = store.client.delete(status_key.as_str(), None).await;
                    } else {
                        let _ = store.client.lease_revoke(lease).await;
                        let _ = instance.write(LEASE_FILE, &0i64);
                    }
                    return Ok(());
                }
                let json = status.borrow_and_update().clone();
                store
                    .client
                    .put(status_key.as_str(), json, with_lease())
                    .await
                    .context("writing the node's status")?;
            }
            Ok(()) = wanted.changed() => {}
        }
        // After anything: claim what is wanted and free, let go of what is not.
        let wanted = wanted.borrow_and_update().clone();
        let now = elect(&mut store, node, lease, &wanted, &mut holders).await?;
        elections.send_if_modified(|elections| {
            if elections.mine != now.mine {
                log::info!(
                    "store {location}: this node answers for {} of its zone's addresses: {}",
                    now.mine.len(),
                    now.mine.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let changed = *elections != now;
            *elections = now;
            changed
        });
    }
}

/// One round of elections over the claims as followed (`holders`: claim → lease):
/// claims the wanted addresses nobody holds (on this node's lease, so that they go with
/// it) and lets go of those no longer wanted.
async fn elect(
    store: &mut Store,
    node: &str,
    lease: i64,
    wanted: &BTreeSet<String>,
    holders: &mut BTreeMap<String, i64>,
) -> Result<Elections> {
    let prefix = store.key("zones/");
    for address in wanted {
        if holders.contains_key(address) {
            continue;
        }
        let key = format!("{prefix}{address}");
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                node,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        if store.client.txn(txn).await.context("claiming")?.succeeded() {
            holders.insert(address.clone(), lease);
        }
    }
    let freed: Vec<String> = holders
        .iter()
        .filter(|(address, holder)| **holder == lease && !wanted.contains(*address))
        .map(|(address, _)| address.clone())
        .collect();
    for address in freed {
        // Only while it is still this lease's: never another node's claim.
        let key = format!("{prefix}{address}");
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        store.client.txn(txn).await.context("letting go")?;
        holders.remove(&address);
    }
    let mine = holders
        .iter()
        .filter(|(_, holder)| **holder == lease)
        .map(|(address, _)| address.clone())
        .collect();
    Ok(Elections {
        mine,
        held: holders.keys().cloned().collect(),
    })
}
