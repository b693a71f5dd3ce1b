//! Events: what a provider automating acceptance (or a consumer) wants to hear about,
//! as JSON lines on stdout or appended to a file: `connection_request`, `accepted`,
//! `rejected`, `deleted`, and `pending_traffic` (the first packet an endpoint gets while
//! it waits for acceptance).

use std::{collections::BTreeMap, fs::OpenOptions, io::Write, time::SystemTime};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    acceptance,
    config::{Config, Endpoint, State},
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
    target: String,
}

pub struct Events {
    sink: Box<dyn Write + Send>,
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
        Ok(Self { sink })
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
            target: format!("{}:{}", transition.target.ip, transition.target.port),
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

/// Endpoint id → effective state.
pub fn effective_states(config: &Config) -> BTreeMap<&str, State> {
    config
        .endpoints
        .iter()
        .filter_map(|e| {
            let service = config.services.iter().find(|s| s.name == e.service)?;
            Some((e.id.as_str(), acceptance::effective(e, service)))
        })
        .collect()
}
