//! Reconcile: one pass of the pipeline on a config text — validate → ids → desired
//! state → plan against what the maps hold → apply — and what goes with it: attaching
//! and detaching interfaces, the host's sysctls and neighbours, events, and cutting the
//! flows of endpoints revoked with `reset`. A config that fails anywhere before the maps
//! change changes nothing; one whose map update fails is rolled back.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::Ebpf;

use crate::{
    apply,
    config::{self, Config, Revoke, State as EndpointState},
    desired::{self, State},
    events::{self, Events},
    expiry,
    facts::Facts,
    host::{self, Host},
    ids::Ids,
    instance::Instance,
    keys::TargetKey,
    loader::{self, Modes},
    plan::{Names, Plan, Shown},
    validate,
};

/// What is in effect: the config text last applied, and what it made of the maps.
#[derive(Default)]
pub struct Applied {
    pub text: String,
    /// None: nothing applied yet.
    pub config: Option<Config>,
    pub ids: Ids,
    pub state: State,
}

/// The running agent's world.
pub struct Agent {
    pub ebpf: Ebpf,
    pub instance: Instance,
    pub applied: Applied,
    pub host: Host,
    pub modes: Modes,
    pub events: Option<Events>,
    /// Name of the config file, for messages.
    pub source: String,
    /// Targets the health checks found unhealthy (left out of the rings).
    pub unhealthy: BTreeSet<TargetKey>,
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
        let ebpf = loader::load(config, &instance)?;
        let ids: Ids = instance.read("ids.json")?.unwrap_or_default();
        let text = std::fs::read_to_string(instance.state.join("applied.yaml")).unwrap_or_default();
        let old = config::parse("applied.yaml", &text).ok();
        let state = if adopting {
            apply::read(&ebpf, &ids).context("reading the maps left by an earlier agent")?
        } else {
            State::default()
        };
        if adopting {
            log::info!(
                "adopting the data path of instance {:?} ({} endpoint ports in the maps)",
                instance.name,
                state.endpoints.len()
            );
        }
        Ok(Self {
            ebpf,
            host: Host::adopt(&instance)?,
            modes: instance.read("modes.json")?.unwrap_or_default(),
            applied: Applied {
                text,
                config: old,
                ids,
                state,
            },
            unhealthy: instance.read("unhealthy.json")?.unwrap_or_default(),
            instance,
            events,
            source,
        })
    }

    /// Applies `text`. `attach_all`: (re)attach every interface, as after loading a new
    /// program; otherwise only interfaces new to the config.
    pub fn reconcile(&mut self, text: &str, attach_all: bool) -> Result<()> {
        let loaded = validate::load(&self.source, text, &Facts::of_this_node()?)?;
        for warning in &loaded.warnings {
            log::warn!("{warning}");
        }
        let config = loaded.config;
        if let Some(old) = &self.applied.config
            && old.node.tables != config.node.tables
        {
            anyhow::bail!(
                "node.tables changed: map sizes are fixed while the data path runs; \
                     restart after `endpoint-agent cleanup` (cuts connections) to resize"
            );
        }
        let ids = self.applied.ids.assign(&config);
        let state = desired::build(&config, &ids, &self.unhealthy, host::link)?;
        let plan = Plan::between(&self.applied.state, &state);

        let old_interfaces: Vec<String> = self
            .applied
            .config
            .iter()
            .flat_map(|c| c.node.interfaces.iter().map(|i| i.name.clone()))
            .collect();
        let mut attached = Vec::new();
        for interface in &config.node.interfaces {
            if attach_all || !old_interfaces.contains(&interface.name) {
                let mode = match loader::attach(
                    &mut self.ebpf,
                    &self.instance,
                    &interface.name,
                    &self.modes,
                ) {
                    Ok(mode) => mode,
                    Err(e) => {
                        for name in attached {
                            let _ = loader::detach(&self.instance, name);
                        }
                        return Err(e);
                    }
                };
                log::info!(
                    "{}: attached in {mode} mode as {:?}{}",
                    interface.name,
                    interface.role,
                    interface
                        .consumer_network
                        .as_deref()
                        .map_or(String::new(), |n| format!(" for consumer network {n:?}"))
                );
                self.modes.insert(interface.name.clone(), mode);
                // Only links this pass made are undone if it fails (not adopted ones).
                if !old_interfaces.contains(&interface.name) {
                    attached.push(interface.name.as_str());
                }
            }
        }

        self.apply_or_roll_back(&plan, &ids)?;
        // The maps now hold the new state: record it before anything else can fail, so
        // the next pass diffs against the truth.
        self.instance.write("ids.json", &ids)?;
        crate::instance::write_atomically(
            &self.instance.state.join("applied.yaml"),
            text.as_bytes(),
        )?;
        let old = std::mem::replace(
            &mut self.applied,
            Applied {
                text: text.to_string(),
                config: Some(config.clone()),
                ids: ids.clone(),
                state,
            },
        );
        if !plan.is_empty() {
            let names = Names::merge(
                self.names(&ids, &config),
                self.names(&old.ids, old.config.as_ref().unwrap_or(&config)),
            );
            log::info!(
                "applied:\n{}",
                Shown {
                    plan: &plan,
                    names: &names
                }
            );
        }

        for name in &old_interfaces {
            if !config.node.interfaces.iter().any(|i| &i.name == name) {
                loader::detach(&self.instance, name)?;
                self.modes.remove(name);
                log::info!("{name}: detached (no longer in the config)");
            }
        }
        self.instance.write("modes.json", &self.modes)?;
        self.host.reconcile(&config, &self.instance)?;
        if let Some(events) = &mut self.events {
            events.changes(old.config.as_ref(), &config);
        }
        let revoked = revoked_with_reset(old.config.as_ref(), &config, &ids);
        let cut = expiry::cut(&mut self.ebpf, &revoked)?;
        if cut > 0 {
            log::info!("reset: removed {cut} flow entries of revoked endpoints");
        }
        Ok(())
    }

    /// Applies `plan`; if that fails half-way, puts the maps back as they were.
    fn apply_or_roll_back(&mut self, plan: &Plan, ids: &Ids) -> Result<()> {
        if let Err(e) = apply::apply(&mut self.ebpf, plan) {
            log::error!("applying the plan failed ({e:#}); rolling back");
            let actual = apply::read(&self.ebpf, ids)?;
            apply::apply(&mut self.ebpf, &Plan::between(&actual, &self.applied.state))
                .context("rolling back")?;
            return Err(e);
        }
        Ok(())
    }

    /// Rebuilds the rings after health changed (`unhealthy`), applying the difference.
    pub fn set_unhealthy(&mut self, unhealthy: BTreeSet<TargetKey>) -> Result<()> {
        self.unhealthy = unhealthy;
        self.instance.write("unhealthy.json", &self.unhealthy)?;
        let Some(config) = self.applied.config.clone() else {
            return Ok(());
        };
        let ids = self.applied.ids.clone();
        let state = desired::build(&config, &ids, &self.unhealthy, host::link)?;
        let plan = Plan::between(&self.applied.state, &state);
        self.apply_or_roll_back(&plan, &ids)?;
        if !plan.is_empty() {
            let names = self.names(&ids, &config);
            log::info!(
                "applied:\n{}",
                Shown {
                    plan: &plan,
                    names: &names
                }
            );
        }
        self.applied.state = state;
        Ok(())
    }

    fn names(&self, ids: &Ids, config: &Config) -> Names {
        let interfaces: BTreeMap<String, u32> = config
            .node
            .interfaces
            .iter()
            .filter_map(|i| Some((i.name.clone(), host::link(&i.name).ok()?.ifindex)))
            .collect();
        Names::new(ids, &interfaces)
    }

    /// Takes the data path down and puts the node back as it was.
    pub fn remove(mut self) -> Result<()> {
        for interface in self.modes.keys() {
            loader::detach(&self.instance, interface)?;
        }
        drop(self.ebpf);
        loader::remove_pins(&self.instance)?;
        self.host.restore(&self.instance)?;
        self.instance.remove()
    }
}

/// Ids of endpoints that were available, are not any more, and whose service resets.
fn revoked_with_reset(old: Option<&Config>, config: &Config, ids: &Ids) -> Vec<u32> {
    let Some(old) = old else {
        return Vec::new();
    };
    let before = events::effective_states(old);
    let after = events::effective_states(config);
    config
        .endpoints
        .iter()
        .filter(|e| before.get(e.id.as_str()) == Some(&EndpointState::Available))
        .filter(|e| after.get(e.id.as_str()) != Some(&EndpointState::Available))
        .filter(|e| {
            config
                .services
                .iter()
                .any(|s| s.name == e.service && s.on_revoke == Revoke::Reset)
        })
        .filter_map(|e| ids.endpoints.get(&e.id).copied())
        .collect()
}
