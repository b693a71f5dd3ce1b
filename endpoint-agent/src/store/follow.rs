//! A node following the store, in two tasks beside the agent's loop:
//!
//! - [`model`]: reads the model, then watches it from the next revision; each change is
//!   sent once the watch has been quiet for [`QUIET`] (an import larger than one
//!   transaction arrives in parts). A lost connection or a compacted watch is followed
//!   by a full read (the model is small next to what a read costs etcd), with backoff.
//! - [`presence`]: the node's status key on a lease kept alive every second, and the
//!   fleet's events lock: the node holding `PREFIX/events` emits endpoint events, so
//!   the fleet emits each once.
//!
//! Neither touches the data path: while etcd is away the node forwards with what it last
//! applied.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::{
    sync::{mpsc, watch},
    time::{sleep, timeout},
};

use super::{Location, Model, Store};

/// How long the watch stays quiet before a change is applied.
const QUIET: Duration = Duration::from_millis(50);
/// The longest wait between attempts to reach etcd.
const BACKOFF: Duration = Duration::from_secs(5);
/// A node's lease: its status key (and the events lock) go this long after it dies.
pub const LEASE_SECONDS: i64 = 5;

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
        let error = follow(&location, &updates, &mut sent).await.unwrap_err();
        if updates.send(Update::Lost(format!("{error:#}"))).is_err() {
            return;
        }
        // A connection that worked for a while starts the backoff again.
        backoff = if sent {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(BACKOFF)
        };
        sleep(backoff).await;
    }
}

/// One connection's worth of following; returns why it ended.
async fn follow(
    location: &Location,
    updates: &mpsc::UnboundedSender<Update>,
    sent: &mut bool,
) -> Result<()> {
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
                let key = kv.key_str()?.trim_start_matches(&prefix).to_string();
                match event.event_type() {
                    etcd_client::EventType::Put => {
                        model.objects.insert(key, kv.value_str()?.to_string());
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

/// Keeps `node`'s status key (the latest of `status`) on a lease, and tells `leader`
/// whether this node holds the events lock, for as long as the agent runs.
pub async fn presence(
    location: Location,
    node: String,
    mut status: watch::Receiver<String>,
    leader: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = present(&location, &node, &mut status, &leader)
            .await
            .unwrap_err();
        leader.send_replace(false);
        if leader.is_closed() {
            return;
        }
        log::warn!("store {location}: node status: {error:#}; trying again in {backoff:?}");
        sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF);
    }
}

async fn present(
    location: &Location,
    node: &str,
    status: &mut watch::Receiver<String>,
    leader: &watch::Sender<bool>,
) -> Result<()> {
    let mut store = Store::connect(location).await?;
    let lease = store
        .client
        .lease_grant(LEASE_SECONDS, None)
        .await
        .context("granting the node's lease")?
        .id();
    let (mut keeper, mut kept) = store
        .client
        .lease_keep_alive(lease)
        .await
        .context("keeping the lease")?;
    let status_key = store.key(&format!("nodes/{node}/status"));
    let events_key = store.key("events");
    // A node once seen stays listed (as gone once its status expires).
    store
        .client
        .put(store.key(&format!("nodes/{node}/seen")), "", None)
        .await
        .context("registering the node")?;
    let with_lease = || Some(PutOptions::new().with_lease(lease));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    status.mark_changed();
    loop {
        tokio::select! {
            _ = every.tick() => {
                keeper.keep_alive().await.context("keeping the lease")?;
                match kept.message().await.context("keeping the lease")? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => bail!("the node's lease expired"),
                }
                // The events lock: taken when free, kept while the lease lives.
                let txn = Txn::new()
                    .when([Compare::create_revision(events_key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(events_key.as_str(), node, with_lease())])
                    .or_else([TxnOp::get(events_key.as_str(), None)]);
                let response = store.client.txn(txn).await.context("the events lock")?;
                let holds = response.succeeded()
                    || response.op_responses().into_iter().any(|op| match op {
                        etcd_client::TxnOpResponse::Get(get) => get
                            .kvs()
                            .first()
                            .is_some_and(|kv| kv.lease() == lease),
                        _ => false,
                    });
                if *leader.borrow() != holds {
                    log::info!(
                        "store {location}: this node {} the fleet's endpoint events",
                        if holds { "now emits" } else { "no longer emits" }
                    );
                    leader.send_replace(holds);
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    // The agent is stopping: its status goes now, not at the lease's end.
                    let _ = store.client.lease_revoke(lease).await;
                    bail!("stopping");
                }
                let json = status.borrow_and_update().clone();
                store
                    .client
                    .put(status_key.as_str(), json, with_lease())
                    .await
                    .context("writing the node's status")?;
            }
        }
    }
}
