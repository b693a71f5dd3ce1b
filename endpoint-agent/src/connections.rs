//! `connections`, `accept`, `reject`: the provider's side of acceptance, on the YAML
//! file itself. A decision rewrites only the endpoint's `state` (and, on accept,
//! `accepted_at`) in place — comments, order and layout of the rest stay as they were —
//! and only if the model allows the transition and the result is a valid config. A
//! running agent picks the change up from the file.

use std::{fmt::Write as _, path::Path, time::SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::{
    acceptance::{self, Decision},
    config::{self, Config, State},
    facts::Facts,
    instance::write_atomically,
    validate,
};

/// The endpoints of `config`, grouped by effective state.
pub fn list(config: &Config) -> String {
    let states = acceptance::effective_states(config);
    let mut out = String::new();
    for state in State::ALL {
        let endpoints: Vec<_> = config
            .endpoints
            .iter()
            .filter(|e| states.get(e.id.as_str()) == Some(&state))
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{state} ({}):", endpoints.len());
        for e in endpoints {
            let requested = if e.state.is_none() {
                "  (new request)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<20} service {:<16} principal {:<14} {} {}{requested}",
                e.id,
                e.service,
                e.principal,
                e.consumer_network,
                e.ips()
            );
        }
    }
    if out.is_empty() {
        out.push_str("no endpoints\n");
    }
    out
}

/// Accepts or rejects endpoint `id` in the config file at `path`; returns what changed.
///
/// Decisions on one file take turns (a lock beside it), and the file is replaced only
/// if it still holds the text the decision was made on: an editor that saved in between
/// makes the decision fail instead of being overwritten.
pub fn decide(path: &Path, id: &str, decision: Decision) -> Result<String> {
    let name = path.display().to_string();
    let file_name = path.file_name().context("a config file path")?;
    let lock_path = path.with_file_name(format!(".{}.lock", file_name.to_string_lossy()));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let (edited, said) = edited(&name, &text, id, decision)?;
    replace_if_unchanged(path, &text, &edited)?;
    Ok(said)
}

/// Replaces the file at `path` with `edited` if it still holds `read`.
fn replace_if_unchanged(path: &Path, read: &str, edited: &str) -> Result<()> {
    let name = path.display();
    let now = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    if now != read {
        bail!("{name} changed while deciding; nothing was written: try again");
    }
    write_atomically(path, edited.as_bytes())
}

/// The text after `decision` on endpoint `id`, and what changed.
fn edited(name: &str, text: &str, id: &str, decision: Decision) -> Result<(String, String)> {
    let facts = Facts::of_this_node()?;
    let config = validate::load(name, text, &facts)
        .map_err(|e| anyhow::anyhow!("{e}\nfix the file before deciding on endpoints"))?
        .config;
    let Some(index) = config.endpoints.iter().position(|e| e.id == id) else {
        let known: Vec<&str> = config.endpoints.iter().map(|e| e.id.as_str()).collect();
        bail!(
            "no endpoint {id:?} in {name}; endpoints: {}",
            known.join(", ")
        );
    };
    let endpoint = &config.endpoints[index];
    let service = config
        .services
        .iter()
        .find(|s| s.name == endpoint.service)
        .context("validated configs name existing services")?;
    let current = acceptance::effective(endpoint, service);
    let verb = match decision {
        Decision::Accept => "accept",
        Decision::Reject => "reject",
    };
    let next = acceptance::decide(current, decision)
        .map_err(|why| anyhow::anyhow!("cannot {verb} endpoint {id:?}: {why}"))?;

    let mut edited = text.to_string();
    if decision == Decision::Accept {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        edited = set(&edited, index, "accepted_at", &format!("\"{now}\""))?;
    }
    // Added fields go right after the id line: set the state last so it comes first.
    edited = set(&edited, index, "state", next.name())?;
    let check = validate::load(name, &edited, &facts)
        .map_err(|e| anyhow::anyhow!("{verb}ing {id:?} would make the config invalid:\n{e}"))?;
    let after = &check.config.endpoints[index];
    if after.id != id || after.state != Some(next) {
        bail!("internal error: editing {name} did not set {id:?} to {next}");
    }
    Ok((edited, format!("endpoint {id:?}: {current} -> {next}")))
}

/// `text` with field `field` of `endpoints[index]` set to `value` (replaced where it
/// is, or added after the endpoint's `id`).
fn set(text: &str, index: usize, field: &str, value: &str) -> Result<String> {
    let lines = config::Lines::index(text);
    let item = format!("endpoints[{index}]");
    if let Some(span) = lines.span(&format!("{item}.{field}")) {
        return Ok(format!(
            "{}{value}{}",
            &text[..span.start],
            &text[span.end..]
        ));
    }
    let id = lines
        .span(&format!("{item}.id"))
        .context("an endpoint without an id")?;
    let mapping = lines
        .span(&item)
        .context("an endpoint that is not a mapping")?;
    let (at, insert) = if mapping.flow {
        (id.end, format!(", {field}: {value}"))
    } else {
        // On a line of its own after the id's line (and any comment on it).
        let column = lines
            .find(&format!("{item}.id"))
            .map_or(1, |position| position.column);
        let line_end = text[id.end..].find('\n').map_or(text.len(), |i| id.end + i);
        (
            line_end,
            format!("\n{}{field}: {value}", " ".repeat(column - 1)),
        )
    };
    Ok(format!("{}{insert}{}", &text[..at], &text[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# providers accept here
node:
  interfaces:
    - { name: c, role: consumer, consumer_network: vpc }
    - { name: p, role: provider, nat_addresses: [172.16.0.100] }
services:
  - name: s
    allowed_principals: [alice, bob]
    load_balancers:
      - name: nlb
        zone: z
        listeners: [{ port: 80, targets: [{ ip: 172.16.0.10, port: 80 }] }]
endpoints:
  - id: e1            # a request: no state yet
    service: s
    principal: alice
    consumer_network: vpc
    ip: 10.0.0.1
    zone: z
  - { id: e2, service: s, principal: bob, consumer_network: vpc, ip: 10.0.0.2, zone: z, state: pendingAcceptance }
  - id: e3
    service: s
    principal: bob
    consumer_network: vpc
    ip: 10.0.0.3
    zone: z
    state: available
    accepted_at: \"2026-01-01T00:00:00Z\"
";

    fn decide_on(text: &str, id: &str, decision: Decision) -> Result<String> {
        let dir = std::env::temp_dir().join(format!(
            "connections-{}-{id}-{decision:?}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("config.yaml");
        std::fs::write(&path, text)?;
        let result = decide(&path, id, decision);
        let written = std::fs::read_to_string(&path)?;
        std::fs::remove_dir_all(&dir)?;
        result.map(|_| written)
    }

    #[test]
    fn accepting_a_block_style_request_adds_state_and_keeps_the_rest() {
        let written = decide_on(FILE, "e1", Decision::Accept).unwrap();
        assert!(
            written.contains("  - id: e1            # a request: no state yet\n    state: available\n    accepted_at: \""),
            "{written}"
        );
        assert!(written.contains("Z\"\n    service: s"), "{written}");
        assert!(written.starts_with("# providers accept here\n"));
        let untouched: Vec<&str> = FILE.lines().filter(|l| !l.contains("e1")).collect();
        for line in untouched {
            assert!(written.contains(line), "lost {line:?}");
        }
        let config = config::parse("x", &written).unwrap();
        assert_eq!(config.endpoints[0].state, Some(State::Available));
        assert!(config.endpoints[0].accepted_at.is_some());
    }

    #[test]
    fn deciding_in_flow_style_replaces_the_value() {
        let written = decide_on(FILE, "e2", Decision::Reject).unwrap();
        assert!(written.contains("zone: z, state: rejected }"), "{written}");
        assert_eq!(
            written.len(),
            FILE.len() - "pendingAcceptance".len() + "rejected".len()
        );
    }

    #[test]
    fn rejecting_an_available_endpoint_is_a_revocation() {
        let written = decide_on(FILE, "e3", Decision::Reject).unwrap();
        assert!(
            written.contains("    state: rejected\n    accepted_at"),
            "{written}"
        );
    }

    #[test]
    fn transitions_outside_the_model_are_refused_and_the_file_is_untouched() {
        let error = decide_on(FILE, "e3", Decision::Accept)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot accept endpoint \"e3\": it is already available"),
            "{error}"
        );
        let rejected = FILE.replace("state: pendingAcceptance", "state: rejected");
        let error = decide_on(&rejected, "e2", Decision::Accept)
            .unwrap_err()
            .to_string();
        assert!(error.contains("it is rejected; only pendingAcceptance endpoints can be accepted"));
        let error = decide_on(FILE, "nope", Decision::Accept)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no endpoint \"nope\""), "{error}");
    }

    #[test]
    fn an_accept_that_would_make_the_file_invalid_is_refused() {
        // The principal is no longer allowed: an explicit pendingAcceptance stays valid,
        // but available would not be.
        let text = FILE
            .replace("[alice, bob]", "[alice]")
            .replace("    principal: bob\n", "    principal: alice\n");
        let error = decide_on(&text, "e2", Decision::Accept)
            .unwrap_err()
            .to_string();
        assert!(error.contains("would make the config invalid"), "{error}");
        assert!(
            error.contains("principal \"bob\" is not allowed"),
            "{error}"
        );
    }

    /// Decisions made at once on one file all land (each reads what the one before
    /// wrote), and none reports success without its change in the file.
    #[test]
    fn concurrent_decisions_are_never_lost() {
        let mut text = FILE.to_string();
        for n in 0..8 {
            text += &format!(
                "  - {{ id: r{n}, service: s, principal: alice, consumer_network: vpc, ip: 10.0.1.{n}, zone: z }}\n"
            );
        }
        let dir = std::env::temp_dir().join(format!("connections-{}-race", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, &text).unwrap();
        std::thread::scope(|scope| {
            for n in 0..8 {
                let path = &path;
                scope.spawn(move || {
                    let decision = if n % 2 == 0 {
                        Decision::Accept
                    } else {
                        Decision::Reject
                    };
                    decide(path, &format!("r{n}"), decision).unwrap();
                });
            }
        });
        let written = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let config = config::parse("x", &written).unwrap();
        for n in 0..8 {
            let endpoint = config
                .endpoints
                .iter()
                .find(|e| e.id == format!("r{n}"))
                .unwrap();
            let expected = if n % 2 == 0 {
                State::Available
            } else {
                State::Rejected
            };
            assert_eq!(endpoint.state, Some(expected), "r{n}'s decision was lost");
        }
    }

    #[test]
    fn a_file_edited_while_deciding_is_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("connections-{}-edit", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, FILE).unwrap();
        // Stand-in for an editor saving between the read and the write: the decision
        // is made on FILE, the file meanwhile holds something else.
        let (edited, _) = edited("x", FILE, "e1", Decision::Accept).unwrap();
        assert_ne!(edited, FILE);
        std::fs::write(&path, FILE.replace("alice, bob", "alice, bob, carol")).unwrap();
        let error = replace_if_unchanged(&path, FILE, &edited)
            .unwrap_err()
            .to_string();
        assert!(error.contains("changed while deciding"), "{error}");
        assert!(std::fs::read_to_string(&path).unwrap().contains("carol"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn list_groups_by_effective_state() {
        let config = config::parse("x", FILE).unwrap();
        let listed = list(&config);
        let pending = listed.find("pendingAcceptance (2)").unwrap();
        let available = listed.find("available (1)").unwrap();
        assert!(pending < available, "{listed}");
        assert!(listed.contains("e1") && listed.contains("(new request)"));
    }
}
