//! Events: what a provider automating acceptance (or a consumer) wants to hear about,
//! as JSON lines on stdout or appended to a file: `connection_request`, `accepted`,
//! `rejected`, `deleted`, `pending_traffic` (the first packet an endpoint gets while it
//! waits for acceptance), `target_healthy` / `target_unhealthy`,
//! `private_dns_verification` (a private DNS name verified or failed), and `applied` (a config
//! generation is in the maps: what waits for a change to take effect waits for this).

use std::{fs::OpenOptions, io::Write, time::SystemTime};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    acceptance::effective_states,
    config::{Config, Endpoint, State},
    plan::Counts,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ConnectionRequest,
    Accepted,
    Rejected,
    Deleted,
    PendingTraffic,
    TargetHealthy,
    TargetUnhealthy,
    Applied,
    /// A private DNS name's verification changed (`pendingVerification`, `verified`,
    /// `failed`).
    PrivateDnsVerification,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: Kind,
    endpoint: &'a str,
    service: &'a str,
    principal: &'a str,
    consumer_network: &'a str,
    state: &'a str,
}

#[derive(Serialize)]
struct TargetLine<'a> {
    time: String,
    event: Kind,
    service: &'a str,
    load_balancer: &'a str,
    port: u16,
    protocol: &'a str,
    target: String,
}

#[derive(Serialize)]
struct AppliedLine<'a> {
    time: String,
    event: Kind,
    generation: u64,
    /// In a fleet: the store's revision this generation applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    #[serde(flatten)]
    plan: Counts,
    missing_interfaces: &'a [String],
}

#[derive(Serialize)]
struct VerificationLine<'a> {
    time: String,
    event: Kind,
    service: &'a str,
    name: &'a str,
    status: &'a str,
    was: &'a str,
    token: &'a str,
}

pub struct Events {
    sink: Box<dyn Write + Send>,
    /// Whether endpoint events (`connection_request`, `accepted`, `rejected`,
    /// `deleted`) are emitted here: always by a lone node; in a fleet only by the node
    /// holding the events lock, so that the fleet emits each once.
    pub endpoint_events: bool,
    /// In a fleet: the store's revision being applied.
    pub revision: Option<i64>,
}

impl Events {
    /// `-` for stdout, else a file to append to.
    pub fn open(target: &str) -> Result<Self> {
        let sink: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .with_context(|| format!("opening the event file {target}"))?,
            )
        };
        Ok(Self {
            sink,
            endpoint_events: true,
            revision: None,
        })
    }

    pub fn emit(&mut self, event: Kind, endpoint: &Endpoint, state: State) {
        self.write(&Line {
            time: now(),
            event,
            endpoint: &endpoint.id,
            service: &endpoint.service,
            principal: &endpoint.principal,
            consumer_network: &endpoint.consumer_network,
            state: state.name(),
        });
    }

    /// A target became healthy or unhealthy.
    pub fn target(&mut self, transition: &crate::health::Transition) {
        self.write(&TargetLine {
            time: now(),
            event: if transition.healthy {
                Kind::TargetHealthy
            } else {
                Kind::TargetUnhealthy
            },
            service: &transition.target.listener.service,
            load_balancer: &transition.target.listener.load_balancer,
            port: transition.target.listener.port,
            protocol: transition.target.listener.protocol.name(),
            target: transition.target.addr().to_string(),
        });
    }

    /// A private DNS name's verification changed.
    pub fn verification(&mut self, transition: &crate::verification::Transition) {
        let record = &transition.record;
        self.write(&VerificationLine {
            time: now(),
            event: Kind::PrivateDnsVerification,
            service: &record.service,
            name: &record.name,
            status: record.status.name(),
            was: transition.was.name(),
            token: &record.token,
        });
    }

    /// Config generation `generation` is in the maps, by a plan of `plan`'s size.
    pub fn applied(&mut self, generation: u64, plan: Counts, missing_interfaces: &[String]) {
        self.write(&AppliedLine {
            time: now(),
            event: Kind::Applied,
            generation,
            revision: self.revision,
            plan,
            missing_interfaces,
        });
    }

    fn write(&mut self, line: &impl Serialize) {
        let written = serde_json::to_string(line)
            .map_err(std::io::Error::other)
            .and_then(|json| writeln!(self.sink, "{json}"))
            .and_then(|()| self.sink.flush());
        if let Err(e) = written {
            log::warn!("writing an event: {e}");
        }
    }

    /// The events of going from `old` (none: nothing was applied before) to `new`.
    pub fn changes(&mut self, old: Option<&Config>, new: &Config) {
        if !self.endpoint_events {
            return;
        }
        let before = old.map(effective_states).unwrap_or_default();
        let after = effective_states(new);
        for endpoint in &new.endpoints {
            let Some(&state) = after.get(endpoint.id.as_str()) else {
                continue;
            };
            let previous = before.get(endpoint.id.as_str()).copied();
            if previous == Some(state) {
                continue;
            }
            if previous.is_none() {
                self.emit(Kind::ConnectionRequest, endpoint, state);
            }
            match state {
                State::Available => self.emit(Kind::Accepted, endpoint, state),
                State::Rejected => self.emit(Kind::Rejected, endpoint, state),
                State::Deleting | State::Deleted => self.emit(Kind::Deleted, endpoint, state),
                _ => {}
            }
        }
        for endpoint in old.iter().flat_map(|c| &c.endpoints) {
            if !after.contains_key(endpoint.id.as_str()) {
                self.emit(Kind::Deleted, endpoint, State::Deleted);
            }
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
