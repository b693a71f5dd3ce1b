//! Agent: the running node agent's world — the loaded program, the pipeline over its
//! maps, the instance's state, the host changes, the attach modes, the events — and what
//! it does with them: start (or take over an earlier agent's data path), apply a config
//! text, follow target health and the node's interfaces, expire flows, and take
//! everything down.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use aya::Ebpf;

use crate::{
    acceptance, announce,
    config::{self, Config, State},
    events::Events,
    expiry::Expiry,
    facts::Facts,
    host::Host,
    ids::Ids,
    instance::{Instance, Record, write_atomically},
    keys::TargetKey,
    loader::{self, Modes},
    metrics::{Reconciles, Snapshot},
    pipeline::{Applied, Failover, Inputs, Pipeline, Proposal},
    plan::Shown,
    verification,
};

pub struct Agent {
    ebpf: Ebpf,
    pipeline: Pipeline,
    instance: Instance,
    host: Host,
    modes: Modes,
    events: Option<Events>,
    /// Name of the config file, for messages.
    source: String,
    /// Targets the health checks found unhealthy (left out of the rings).
    unhealthy: BTreeSet<TargetKey>,
    record: Record,
    facts: Facts,
    expiry: Expiry,
    reconciles: Reconciles,
    /// Whether the data path writes connection records (`run --flow-log`).
    flow_records: bool,
    /// Private DNS names whose verification succeeded last.
    verified: BTreeSet<String>,
    /// Every private DNS name's verification (kept in the instance).
    verifications: Vec<verification::Record>,
    /// In a zoned fleet: the addresses this node leaves to others.
    failover: Failover,
}

impl Agent {
    /// Loads the program for `config` (valid) with the instance's pinned maps, and takes
    /// over what an earlier agent of the instance left (maps, ids, applied config, host
    /// changes, attach modes).
    pub fn start(
        config: &Config,
        instance: Instance,
        events: Option<Events>,
        source: String,
    ) -> Result<Self> {
        instance.prepare()?;
        loader::check_tables(&instance, &config.node.tables)?;
        let adopting = instance.exists();
        let (ebpf, maps) = loader::load(config, &instance)?;
        let ids: Ids = instance.read("ids.json")?.unwrap_or_default();
        let text = std::fs::read_to_string(instance.state.join("applied.yaml")).unwrap_or_default();
        let mut record: Record = instance.read("record.json")?.unwrap_or_default();
        if record.seed == 0 {
            record.seed = random_seed()?;
        }
        let applied = if adopting {
            let contents =
                Pipeline::read(&maps, &ids).context("reading the maps left by an earlier agent")?;
            log::info!(
                "adopting the data path of instance {:?} ({} endpoint listeners in the maps)",
                instance.name,
                contents.endpoints.len()
            );
            Applied {
                config: config::parse("applied.yaml", &text).ok(),
                text,
                ids,
                contents,
                missing: Vec::new(),
                generation: record.generation,
            }
        } else {
            Applied::default()
        };
        let verifications: Vec<verification::Record> =
            instance.read(VERIFICATION_FILE)?.unwrap_or_default();
        let failover = instance.read(FAILOVER_FILE)?.unwrap_or_default();
        Ok(Self {
            ebpf,
            pipeline: Pipeline::new(maps, applied),
            host: Host::adopt(&instance)?,
            modes: instance.read("modes.json")?.unwrap_or_default(),
            unhealthy: instance.read("unhealthy.json")?.unwrap_or_default(),
            instance,
            events,
            source,
            record,
            facts: Facts::of_this_node()?,
            expiry: Expiry::default(),
            reconciles: Reconciles::default(),
            flow_records: false,
            verified: verification::verified(&verifications),
            verifications,
            failover,
        })
    }

    pub fn applied(&self) -> &Applied {
        self.pipeline.applied()
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The interfaces the program is attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.modes.keys().map(String::as_str)
    }

    /// The interfaces the program is attached to, and how.
    pub fn modes(&self) -> &Modes {
        &self.modes
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn events(&mut self) -> Option<&mut Events> {
        self.events.as_mut()
    }

    /// Flow entries (two per connection) as the expiry scan's last whole pass found them.
    pub fn flow_entries(&self) -> u64 {
        self.expiry.census().entries
    }

    /// Whether endpoint events are emitted here (see `Events::endpoint_events`).
    pub fn events_emitted(&self) -> bool {
        self.events.as_ref().is_some_and(|e| e.endpoint_events)
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            facts: &self.facts,
            seed: self.record.seed,
            unhealthy: &self.unhealthy,
            flow_records: self.flow_records,
            verified: &self.verified,
            failover: &self.failover,
        }
    }

    /// Applies `text`. `attach_all`: (re)attach every interface, as after loading a new
    /// program; otherwise only interfaces new to the config. Interfaces the node does
    /// not have are left out (and reported); everything else goes on.
    pub fn reconcile(&mut self, text: &str, attach_all: bool) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.apply_text(text, attach_all);
        let reconciles = &mut self.reconciles;
        reconciles.last_seconds = started.elapsed().as_secs_f64();
        if result.is_ok() {
            reconciles.applied += 1;
        } else {
            reconciles.failed += 1;
        }
        result
    }

    /// Has the data path write connection records (applied with the next config).
    pub fn record_flows(&mut self) {
        self.flow_records = true;
    }

    /// What metrics show of the agent, as of now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.applied().config.clone(),
            ids: self.applied().ids.clone(),
            generation: self.applied().generation,
            unhealthy: self.unhealthy.clone(),
            reconciles: self.reconciles,
            census: self.expiry.census().clone(),
            store: None,
        }
    }

    /// What a new snapshot would differ by (cheap to compare).
    pub fn snapshot_version(&self) -> (u64, Reconciles, BTreeSet<TargetKey>, u64) {
        (
            self.applied().generation,
            self.reconciles,
            self.unhealthy.clone(),
            self.expiry.census().pass,
        )
    }

    fn apply_text(&mut self, text: &str, attach_all: bool) -> Result<()> {
        self.facts = Facts::of_this_node()?;
        let proposal = self.pipeline.propose(&self.source, text, &self.inputs())?;
        for warning in &proposal.warnings {
            log::warn!("{warning}");
        }
        if let Some(old) = &self.applied().config
            && old.node.tables != proposal.config.node.tables
        {
            anyhow::bail!(
                "node.tables changed: map sizes are fixed while the data path runs; \
                 restart after `endpoint-agent cleanup` (cuts connections) to resize"
            );
        }
        let old_interfaces: Vec<String> = self
            .applied()
            .config
            .iter()
            .flat_map(|c| c.node.interfaces.iter().map(|i| i.name.clone()))
            .collect();
        let wanted: Vec<String> = proposal
            .config
            .node
            .interfaces
            .iter()
            .filter(|i| {
                attach_all || !old_interfaces.contains(&i.name) || !self.modes.contains_key(&i.name)
            })
            .map(|i| i.name.clone())
            .collect();
        // The host's part first, so the consumer side is closed and the targets' next
        // hops are resolving by the time traffic flows; a failure there is reported,
        // and tried again next time.
        if let Err(e) = self.host.reconcile(&proposal.config, &self.instance) {
            log::error!("changing the host: {e:#}");
        }
        let attached = self.attach(&wanted, &proposal)?;
        if let Err(e) = self.apply(proposal) {
            // Only links this pass made are undone (not adopted ones).
            for name in attached {
                let _ = loader::detach(&self.instance, &name);
                self.modes.remove(&name);
            }
            return Err(e);
        }
        let config = self.applied().config.clone().expect("just applied");
        for name in &old_interfaces {
            if !config.node.interfaces.iter().any(|i| &i.name == name) {
                loader::detach(&self.instance, name)?;
                self.modes.remove(name);
                log::info!("{name}: detached (no longer in the config)");
            }
        }
        self.instance.write("modes.json", &self.modes)?;
        Ok(())
    }

    /// Attaches the program to `names` where the node has them.
    fn attach(&mut self, names: &[String], proposal: &Proposal) -> Result<Vec<String>> {
        let mut attached: Vec<String> = Vec::new();
        for name in names {
            if proposal.desired.missing.contains(name) {
                log::warn!("{name}: no such interface on this node (yet): left out");
                continue;
            }
            let fresh = !self.instance.link_pin(name).exists();
            let mode = match loader::attach(&mut self.ebpf, &self.instance, name, &self.modes) {
                Ok(mode) => mode,
                Err(e) => {
                    for name in &attached {
                        let _ = loader::detach(&self.instance, name);
                    }
                    return Err(e);
                }
            };
            let interface = proposal
                .config
                .node
                .interfaces
                .iter()
                .find(|i| &i.name == name)
                .expect("a configured interface");
            log::info!(
                "{name}: attached in {mode} mode as {:?}{}",
                interface.role,
                interface
                    .consumer_network
                    .as_deref()
                    .map_or(String::new(), |n| format!(" for consumer network {n:?}"))
            );
            self.modes.insert(name.clone(), mode);
            if fresh {
                attached.push(name.clone());
            }
        }
        Ok(attached)
    }

    /// Applies `proposal` and records it; logs what changed and says so in an event.
    fn apply(&mut self, proposal: Proposal) -> Result<()> {
        let names = self.pipeline.names(&proposal, &self.facts);
        let plan = proposal.plan.clone();
        let counts = plan.counts();
        let old_config = self.applied().config.clone();
        let applied = self.pipeline.apply(proposal)?;
        // The maps now hold the new state: record it before anything else can fail, so
        // the next pass diffs against the truth.
        self.instance.write("ids.json", &applied.ids)?;
        write_atomically(
            &self.instance.state.join("applied.yaml"),
            applied.text.as_bytes(),
        )?;
        self.record.generation = applied.generation;
        self.instance.write("record.json", &self.record)?;
        if !plan.is_empty() {
            log::info!(
                "applied:\n{}",
                Shown {
                    plan: &plan,
                    names: &names
                }
            );
        }
        for (ifindex, interface, address) in announce::newly_answered(&plan, &applied.contents) {
            if let Err(e) = announce::announce(ifindex, interface.mac, address) {
                log::warn!("announcing {address} on interface {ifindex}: {e}");
            }
        }
        let (generation, missing) = (applied.generation, applied.missing.clone());
        let config = applied.config.clone().expect("just applied");
        if let Some(events) = &mut self.events {
            // What changed for endpoints first: `applied` says all of it is done.
            events.changes(old_config.as_ref(), &config);
            events.applied(generation, counts, &missing);
        }
        Ok(())
    }

    /// Rebuilds the rings after health changed (`unhealthy`), applying the difference.
    pub fn set_unhealthy(&mut self, unhealthy: BTreeSet<TargetKey>) -> Result<()> {
        self.unhealthy = unhealthy;
        self.instance.write("unhealthy.json", &self.unhealthy)?;
        self.replan()
    }

    /// A fleet's elections changed: the node answers ARP only for the addresses it
    /// holds, and DNS leaves out those no live node holds.
    pub fn set_failover(&mut self, failover: Failover) -> Result<()> {
        if failover == self.failover {
            return Ok(());
        }
        self.failover = failover;
        self.instance.write(FAILOVER_FILE, &self.failover)?;
        self.replan()
    }

    /// Private DNS name verification changed: verified names are served, others not.
    pub fn set_verifications(&mut self, records: Vec<verification::Record>) -> Result<()> {
        self.instance.write(VERIFICATION_FILE, &records)?;
        let now = verification::verified(&records);
        self.verifications = records;
        if now != self.verified {
            self.verified = now;
            self.replan()?;
        }
        Ok(())
    }

    pub fn verifications(&self) -> &[verification::Record] {
        &self.verifications
    }

    pub fn unhealthy(&self) -> &BTreeSet<TargetKey> {
        &self.unhealthy
    }

    /// Looks at the node's interfaces again: one that appeared is attached, one that is
    /// gone is left out, one re-created or with a new MAC is written anew.
    pub fn follow_node(&mut self) -> Result<()> {
        let facts = Facts::of_this_node()?;
        if facts.links == self.facts.links {
            // Nothing moved: only the host settings are checked (someone may have
            // turned forwarding on).
            if let Some(config) = &self.pipeline.applied().config {
                self.host.reconcile(config, &self.instance)?;
            }
            return Ok(());
        }
        let moved: Vec<String> = self
            .modes
            .keys()
            .filter(|name| {
                facts.links.get(*name).map(|l| l.ifindex)
                    != self.facts.links.get(*name).map(|l| l.ifindex)
            })
            .cloned()
            .collect();
        self.facts = facts;
        for name in &moved {
            // Re-created: the old link went with the old device.
            let _ = loader::detach(&self.instance, name);
            self.modes.remove(name);
        }
        let Some(text) = self
            .applied()
            .config
            .as_ref()
            .map(|_| self.applied().text.clone())
        else {
            return Ok(());
        };
        self.reconcile(&text, false)
    }

    fn replan(&mut self) -> Result<()> {
        let Some(proposal) = self.pipeline.replan(&self.inputs()) else {
            return Ok(());
        };
        if proposal.plan.is_empty() {
            return Ok(());
        }
        self.apply(proposal)
    }

    /// One round of expiry; returns how many connections went.
    pub fn expire(&mut self) -> Result<usize> {
        let program = loader::expire_program(&mut self.ebpf)?;
        self.expiry.round(
            program,
            self.pipeline.maps(),
            &self.pipeline.applied().contents,
            crate::expiry::now_ns(),
        )
    }

    /// A one-line summary of what is applied.
    pub fn summary(&self) -> String {
        let config = self.applied().config.as_ref();
        let states = config.map(acceptance::effective_states).unwrap_or_default();
        format!(
            "{} services, {} endpoints ({} available)",
            config.map_or(0, |c| c.services.len()),
            states.len(),
            states.values().filter(|s| **s == State::Available).count()
        )
    }

    /// Takes the data path down and puts the node back as it was.
    pub fn remove(mut self) -> Result<()> {
        for interface in self.modes.keys() {
            loader::detach(&self.instance, interface)?;
        }
        drop(self.pipeline);
        drop(self.ebpf);
        loader::remove_pins(&self.instance)?;
        self.host.restore(&self.instance)?;
        self.instance.remove()
    }
}

/// A random seed for the flow hash, so that target choice and NAT ports cannot be
/// predicted from outside.
fn random_seed() -> Result<u32> {
    let mut bytes = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut bytes,
    )?;
    Ok(u32::from_ne_bytes(bytes).max(1))
}

/// Where the instance keeps the addresses it leaves to other nodes (`plan` reads it).
pub const FAILOVER_FILE: &str = "failover.json";

/// Where the instance keeps private DNS name verification (`status` reads it).
pub const VERIFICATION_FILE: &str = "verification.json";
