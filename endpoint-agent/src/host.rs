//! Host: what the agent changes on the node besides the maps, recorded in the state
//! directory so that it is undone even after the agent was killed (`cleanup`).
//!
//! - `forwarding` sysctls: on for provider interfaces (the route lookup towards targets is
//!   made from there and the kernel refuses it otherwise), off for consumer-only ones (so
//!   the kernel never routes a consumer's packet anywhere an endpoint would not).
//! - Managed neighbour entries (Linux 5.16+) for each target's next hop: the kernel keeps
//!   them resolved without traffic, so the XDP route lookup finds the MAC from the first
//!   SYN on (it cannot trigger ARP itself).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{config::Config, desired::Link, instance::Instance};

/// What the node knows about a local interface, asked over netlink (`ip`), so that it
/// answers for the network namespace of the calling thread.
pub fn link(name: &str) -> Result<Link> {
    let details = ip(&["-d", "-o", "link", "show", "dev", name])
        .map_err(|_| anyhow::anyhow!("no interface named {name:?} on this node"))?;
    let words: Vec<&str> = details.split_whitespace().collect();
    let ifindex = words
        .first()
        .and_then(|w| w.trim_end_matches(':').parse().ok())
        .with_context(|| format!("unexpected `ip link` output for {name}: {details}"))?;
    let ether = words
        .iter()
        .position(|w| *w == "link/ether")
        .and_then(|i| words.get(i + 1))
        .with_context(|| format!("{name} has no Ethernet address"))?;
    let mut mac = [0u8; 6];
    let octets: Vec<&str> = ether.split(':').collect();
    if octets.len() != 6 {
        bail!("{name}: unexpected Ethernet address {ether}");
    }
    for (byte, octet) in mac.iter_mut().zip(octets) {
        *byte = u8::from_str_radix(octet, 16)?;
    }
    let veth = words.contains(&"veth");
    Ok(Link { ifindex, mac, veth })
}

/// The host changes in effect, and what to put back.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Host {
    /// Sysctl file → the value it had before the agent changed it.
    sysctls: BTreeMap<String, String>,
    /// Managed neighbour entries the agent made: (address, device).
    neighbours: BTreeSet<(Ipv4Addr, String)>,
}

const FILE: &str = "host.json";

impl Host {
    /// What an earlier agent of `instance` left in effect.
    pub fn adopt(instance: &Instance) -> Result<Self> {
        Ok(instance.read(FILE)?.unwrap_or_default())
    }

    /// Brings the host in line with `config` and records it.
    pub fn reconcile(&mut self, config: &Config, instance: &Instance) -> Result<()> {
        for interface in &config.node.interfaces {
            let forwarding = if interface.role.provider() { "1" } else { "0" };
            let path = format!("/proc/sys/net/ipv4/conf/{}/forwarding", interface.name);
            self.set_sysctl(path, forwarding)?;
        }
        let wanted: BTreeSet<(Ipv4Addr, String)> =
            targets(config).into_iter().filter_map(next_hop).collect();
        for (address, dev) in wanted.difference(&self.neighbours.clone()) {
            self.keep_resolved(*address, dev)?;
        }
        for (address, dev) in self
            .neighbours
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            forget(address, &dev);
            self.neighbours.remove(&(address, dev));
        }
        instance.write(FILE, self)
    }

    /// Puts everything back as it was.
    pub fn restore(&mut self, instance: &Instance) -> Result<()> {
        for (address, dev) in std::mem::take(&mut self.neighbours) {
            forget(address, &dev);
        }
        for (path, value) in std::mem::take(&mut self.sysctls) {
            if let Err(e) = std::fs::write(&path, &value) {
                log::warn!("restoring {path}: {e}");
            }
        }
        instance.write(FILE, self)
    }

    fn set_sysctl(&mut self, path: String, value: &str) -> Result<()> {
        let old = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        if old.trim() != value {
            std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
            self.sysctls
                .entry(path)
                .or_insert_with(|| old.trim().to_string());
        }
        Ok(())
    }

    /// Makes the kernel keep the neighbour `address` on `dev` resolved.
    fn keep_resolved(&mut self, address: Ipv4Addr, dev: &str) -> Result<()> {
        let existing = ip(&["neigh", "show", &address.to_string(), "dev", dev])?;
        if existing.contains("PERMANENT") {
            return Ok(());
        }
        ip(&[
            "neigh",
            "replace",
            &address.to_string(),
            "dev",
            dev,
            "managed",
        ])
        .with_context(|| format!("keeping the neighbour {address} on {dev} resolved"))?;
        self.neighbours.insert((address, dev.to_string()));
        Ok(())
    }
}

fn targets(config: &Config) -> BTreeSet<Ipv4Addr> {
    config
        .services
        .iter()
        .flat_map(|s| &s.load_balancers)
        .flat_map(|lb| &lb.listeners)
        .flat_map(|l| &l.targets)
        .map(|t| t.ip)
        .collect()
}

/// The next hop (and device) towards `target`, if the node has a route there.
fn next_hop(target: Ipv4Addr) -> Option<(Ipv4Addr, String)> {
    let Ok(route) = ip(&["-o", "route", "get", &target.to_string()]) else {
        log::warn!("target {target}: no route from this node; its flows will be dropped");
        return None;
    };
    let words: Vec<&str> = route.split_whitespace().collect();
    let after = |word| {
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|i| words.get(i + 1))
    };
    let dev = after("dev")?;
    if *dev == "lo" || words.first() == Some(&"local") {
        return None;
    }
    let hop = after("via").map_or(Some(target), |hop| hop.parse().ok())?;
    Some((hop, dev.to_string()))
}

fn forget(address: Ipv4Addr, dev: &str) {
    if let Err(e) = ip(&["neigh", "del", &address.to_string(), "dev", dev]) {
        log::warn!("removing neighbour {address} on {dev}: {e:#}");
    }
}

/// Runs iproute2's `ip` and returns its output.
fn ip(args: &[&str]) -> Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
