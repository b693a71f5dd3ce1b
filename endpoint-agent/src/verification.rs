//! Private DNS name verification: as with PrivateLink, a service's `private_dns_name` is
//! served only while its owner has proved the domain — a TXT record
//! `_endpoint-verification.<name>` holding the service's token, asked of the configured
//! resolver (`dns.verification`) when the name appears and every `interval_seconds`
//! after. A name is `pendingVerification` until the first answer, `verified` while the
//! record is there, `failed` once it is not (NXDOMAIN, no such TXT); a resolver that
//! does not answer leaves the state as it was (a verified name is not withdrawn because
//! the resolver is briefly away).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use hickory_resolver::{
    Resolver,
    config::{NameServerConfig, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where a name's token is published, under the name.
pub const LABEL: &str = "_endpoint-verification";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    PendingVerification,
    Verified,
    Failed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::PendingVerification => "pendingVerification",
            Status::Verified => "verified",
            Status::Failed => "failed",
        }
    }
}

/// One private DNS name's verification, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub service: String,
    pub name: String,
    /// The TXT record's value the owner publishes.
    pub token: String,
    pub status: Status,
}

struct Entry {
    record: Record,
    next: Instant,
    in_flight: bool,
}

/// The verification of every private DNS name, when `dns.verification` is configured.
#[derive(Default)]
pub struct Verifications {
    names: BTreeMap<String, Entry>,
    resolver: Option<SocketAddr>,
    interval: Duration,
}

/// The token of `service`'s `name`: the same on every node, different for every service,
/// so one provider's record cannot verify another's service.
pub fn token(service: &str, name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain([0]).chain(name.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("endpoint-verification={hash:016x}")
}

/// A name's verification changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub record: Record,
    pub was: Status,
}

impl Verifications {
    /// Verifications kept from before (a restart does not withdraw a verified name).
    pub fn with(records: Vec<Record>) -> Self {
        let now = Instant::now();
        Self {
            names: records
                .into_iter()
                .map(|record| {
                    let entry = Entry {
                        record,
                        next: now,
                        in_flight: false,
                    };
                    (entry.record.name.clone(), entry)
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Follows the config: new names are checked at once, gone ones forgotten.
    pub fn sync(&mut self, config: &Config) {
        let verification = config.dns.as_ref().and_then(|d| d.verification.as_ref());
        self.resolver = verification.map(|v| v.resolver);
        self.interval = Duration::from_secs(verification.map_or(60, |v| v.interval_seconds.into()));
        let wanted: BTreeMap<String, String> = if verification.is_some() {
            config
                .services
                .iter()
                .filter_map(|s| Some((s.private_dns_name.clone()?, s.name.clone())))
                .collect()
        } else {
            BTreeMap::new()
        };
        self.names
            .retain(|name, entry| wanted.get(name) == Some(&entry.record.service));
        let now = Instant::now();
        for (name, service) in wanted {
            self.names.entry(name.clone()).or_insert_with(|| Entry {
                record: Record {
                    token: token(&service, &name),
                    service,
                    name,
                    status: Status::PendingVerification,
                },
                next: now,
                in_flight: false,
            });
        }
    }

    /// Names due for a check (marked in flight): name, token and the resolver to ask.
    pub fn due(&mut self, now: Instant) -> Vec<(String, String, SocketAddr)> {
        let Some(resolver) = self.resolver else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (name, entry) in &mut self.names {
            if !entry.in_flight && entry.next <= now {
                entry.in_flight = true;
                due.push((name.clone(), entry.record.token.clone(), resolver));
            }
        }
        due
    }

    /// A check's result: `Some(found)`, or `None` if the resolver did not answer.
    pub fn record(&mut self, name: &str, found: Option<bool>) -> Option<Transition> {
        let entry = self.names.get_mut(name)?;
        entry.in_flight = false;
        entry.next = Instant::now() + self.interval;
        let was = entry.record.status;
        let now = match found {
            Some(true) => Status::Verified,
            Some(false) => Status::Failed,
            None => was,
        };
        entry.record.status = now;
        (now != was).then(|| Transition {
            record: entry.record.clone(),
            was,
        })
    }

    /// The names verified now.
    pub fn verified(&self) -> BTreeSet<String> {
        verified(&self.records())
    }

    pub fn records(&self) -> Vec<Record> {
        self.names.values().map(|e| e.record.clone()).collect()
    }
}

/// The names `records` say are verified.
pub fn verified(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.status == Status::Verified)
        .map(|r| r.name.clone())
        .collect()
}

/// Whether `resolver` says `_endpoint-verification.<name>` holds `token`: `Ok(false)`
/// for NXDOMAIN, no TXT record or other TXT values; an error if it did not answer.
pub async fn check(resolver: SocketAddr, name: &str, token: &str) -> Result<bool> {
    let mut config = ResolverConfig::new();
    config.add_name_server(NameServerConfig::new(resolver, Protocol::Udp));
    let mut options = ResolverOpts::default();
    // Every check asks again: a record that went must be seen gone.
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    let lookup = Resolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(options)
        .build();
    let fqdn = format!("{LABEL}.{}.", name.trim_end_matches('.'));
    match lookup.txt_lookup(fqdn).await {
        Ok(records) => Ok(records.iter().any(|txt| {
            let value: Vec<u8> = txt
                .txt_data()
                .iter()
                .flat_map(|part| part.iter())
                .copied()
                .collect();
            value == token.as_bytes()
        })),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_by_service_and_name() {
        assert_ne!(token("a", "x.example.com"), token("b", "x.example.com"));
        assert_ne!(token("a", "x.example.com"), token("a", "y.example.com"));
        assert_eq!(token("a", "x.example.com"), token("a", "x.example.com"));
        assert!(token("a", "x").starts_with("endpoint-verification="));
    }

    #[test]
    fn a_name_is_pending_until_answered_then_follows_the_record_but_not_silence() {
        let mut v = Verifications::default();
        v.names.insert(
            "x.example.com".into(),
            Entry {
                record: Record {
                    service: "s".into(),
                    name: "x.example.com".into(),
                    token: token("s", "x.example.com"),
                    status: Status::PendingVerification,
                },
                next: Instant::now(),
                in_flight: false,
            },
        );
        assert_eq!(
            v.record("x.example.com", None),
            None,
            "no answer: still pending"
        );
        let t = v.record("x.example.com", Some(true)).expect("verified");
        assert_eq!(
            (t.was, t.record.status),
            (Status::PendingVerification, Status::Verified)
        );
        assert_eq!(v.verified(), BTreeSet::from(["x.example.com".to_string()]));
        assert_eq!(
            v.record("x.example.com", None),
            None,
            "silence keeps it verified"
        );
        let t = v.record("x.example.com", Some(false)).expect("failed");
        assert_eq!(t.record.status, Status::Failed);
        assert!(v.verified().is_empty());
    }
}
