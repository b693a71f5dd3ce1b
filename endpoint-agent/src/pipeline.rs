//! Pipeline: the one way from a config text to the maps — validate (for the node's
//! facts) → ids → desired contents → plan against what the maps hold → apply, rolled
//! back if it fails half-way. The agent, `plan`, the packet tests and the benchmarks all
//! go through it, so a new table or step is added here once.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context as _, Result};
use endpoint_common::maps::address_kind;

use crate::{
    apply,
    config::Config,
    desired::{self, Contents, Desired},
    facts::Facts,
    ids::Ids,
    keys::TargetKey,
    maps::Maps,
    names,
    plan::{Names, Plan},
    validate,
};

/// What the maps hold, and the config it came from.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub text: String,
    /// None: nothing applied yet.
    pub config: Option<Config>,
    pub ids: Ids,
    pub contents: Contents,
    /// Interfaces of the config the node did not have.
    pub missing: Vec<String>,
    /// How many configs were applied to these maps (by this agent and those before).
    pub generation: u64,
}

/// A config turned into the change it would make to the maps.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub text: String,
    pub config: Config,
    pub warnings: Vec<String>,
    pub ids: Ids,
    pub desired: Desired,
    pub plan: Plan,
}

/// What a pass takes besides the config: the node, the flow hash's seed where the
/// config names none, and the targets the health checks found unhealthy.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub facts: &'a Facts,
    pub seed: u32,
    pub unhealthy: &'a BTreeSet<TargetKey>,
    /// Whether the data path writes connection records (`run --flow-log`).
    pub flow_records: bool,
    /// Private DNS names whose verification succeeded.
    pub verified: &'a BTreeSet<String>,
    /// In a zoned fleet: the addresses this node leaves to others.
    pub failover: &'a Failover,
}

/// In a zoned fleet: which endpoint addresses (consumer network, IP of either family)
/// this node answers for, as the elections in the store say. Not zoned (a node alone,
/// or a fleet without zones): it answers for every address.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failover {
    pub zoned: bool,
    /// The addresses this node holds: ARP is answered for these alone; the others are
    /// carried when traffic reaches them, not announced.
    pub mine: BTreeSet<(String, IpAddr)>,
    /// The addresses some live node holds: DNS names these alone.
    pub held: BTreeSet<(String, IpAddr)>,
}

impl Failover {
    /// Another node answers ARP for it (or none does yet).
    pub fn standby(&self, network: &str, ip: IpAddr) -> bool {
        self.zoned && !self.mine.contains(&(network.to_string(), ip))
    }

    /// No live node holds it: left out of DNS answers.
    pub fn unserved(&self, network: &str, ip: IpAddr) -> bool {
        self.zoned && !self.held.contains(&(network.to_string(), ip))
    }
}

/// The maps and what they hold.
pub struct Pipeline {
    maps: Maps,
    applied: Applied,
}

impl Pipeline {
    /// A pipeline over `maps`, which hold `applied` (read back from them, for maps an
    /// earlier agent left).
    pub fn new(maps: Maps, applied: Applied) -> Self {
        Self { maps, applied }
    }

    /// What the maps hold, for `ids`.
    pub fn read(maps: &Maps, ids: &Ids) -> Result<Contents> {
        apply::read(maps, ids).context("reading the maps back")
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The maps, to change directly (the benchmarks fill the flow table).
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    pub fn applied(&self) -> &Applied {
        &self.applied
    }

    /// Validates `text` (named `source` in messages) and plans it; changes nothing.
    /// An invalid text is a [`crate::config::Invalid`] error, every problem with its line.
    pub fn propose(&self, source: &str, text: &str, inputs: &Inputs) -> Result<Proposal> {
        self.applied.propose(source, text, inputs)
    }

    /// The applied config again, for changed facts or health (the text is the same).
    pub fn replan(&self, inputs: &Inputs) -> Option<Proposal> {
        self.applied.replan(inputs)
    }

    /// Carries `proposal` out. If a map update fails half-way, the maps are put back as
    /// they were and the error returned.
    pub fn apply(&mut self, proposal: Proposal) -> Result<&Applied> {
        if let Err(e) = apply::apply(&mut self.maps, &proposal.plan) {
            log::error!("applying the plan failed ({e:#}); rolling back");
            let actual = apply::read(&self.maps, &proposal.ids)?;
            apply::apply(
                &mut self.maps,
                &Plan::between(&actual, &self.applied.contents),
            )
            .context("rolling back")?;
            return Err(e);
        }
        let generation = self.applied.generation
            + u64::from(proposal.text != self.applied.text || self.applied.config.is_none());
        self.applied = Applied {
            text: proposal.text,
            config: Some(proposal.config),
            ids: proposal.ids,
            contents: proposal.desired.contents,
            missing: proposal.desired.missing,
            generation,
        };
        Ok(&self.applied)
    }

    /// Names for what the maps hold by number, old and new.
    pub fn names(&self, proposal: &Proposal, facts: &Facts) -> Names {
        self.applied.names(proposal, facts)
    }
}

impl Applied {
    /// What applying `text` over this would be (see [`Pipeline::propose`]); for `plan`,
    /// which has the maps' contents but does not change them.
    pub fn propose(&self, source: &str, text: &str, inputs: &Inputs) -> Result<Proposal> {
        let loaded = validate::load(source, text, inputs.facts)?;
        Ok(self.plan(text.to_string(), loaded.config, loaded.warnings, inputs))
    }

    /// This config again, for changed facts or health.
    pub fn replan(&self, inputs: &Inputs) -> Option<Proposal> {
        let config = self.config.clone()?;
        Some(self.plan(self.text.clone(), config, Vec::new(), inputs))
    }

    fn plan(
        &self,
        text: String,
        config: Config,
        warnings: Vec<String>,
        inputs: &Inputs,
    ) -> Proposal {
        let ids = self.ids.assign(&config);
        let seed = config.node.hash_seed.unwrap_or(inputs.seed);
        let mut desired = desired::build(&config, &ids, inputs.facts, seed, inputs.unhealthy);
        desired.contents.settings.flow_records = u32::from(inputs.flow_records);
        names::build(&config, &ids, inputs, &mut desired);
        for endpoint in &config.endpoints {
            let Some(&network) = ids.networks.get(&endpoint.consumer_network) else {
                continue;
            };
            for address in endpoint.addresses() {
                if !inputs
                    .failover
                    .standby(&endpoint.consumer_network, address.ip)
                {
                    continue;
                }
                let key = desired::address_key(network, address.ip);
                if let Some(address) = desired.contents.addresses.get_mut(&key)
                    && address.kind == address_kind::ENDPOINT
                {
                    address.kind = address_kind::STANDBY;
                }
            }
        }
        let plan = Plan::between(&self.contents, &desired.contents);
        Proposal {
            text,
            config,
            warnings,
            ids,
            desired,
            plan,
        }
    }

    /// Names for what the maps hold by number, after `proposal` and now.
    pub fn names(&self, proposal: &Proposal, facts: &Facts) -> Names {
        let interfaces = facts
            .links
            .iter()
            .map(|(name, link)| (name.clone(), link.ifindex))
            .collect();
        Names::merge(
            Names::new(&proposal.ids, &interfaces).with_dns(Some(&proposal.config), &proposal.ids),
            Names::new(&self.ids, &interfaces).with_dns(self.config.as_ref(), &self.ids),
        )
    }
}
