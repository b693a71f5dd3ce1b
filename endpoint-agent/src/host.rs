//! Host: what the agent changes on the node besides the maps, all undone on exit.
//!
//! - `forwarding` sysctls: on for provider interfaces (the route lookup towards targets is
//!   made from there and the kernel refuses it otherwise), off for consumer-only ones (so
//!   the kernel never routes a consumer's packet anywhere an endpoint would not).
//! - Managed neighbour entries (Linux 5.16+) for each target's next hop: the kernel keeps
//!   them resolved without traffic, so the XDP route lookup finds the MAC from the first
//!   SYN on (it cannot trigger ARP itself).

use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{config::Config, desired::Link};

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

#[derive(Default)]
pub struct Host {
    /// Sysctl files and the values to put back.
    sysctls: Vec<(PathBuf, String)>,
    /// Neighbour entries we made: (address, device).
    neighbours: Vec<(Ipv4Addr, String)>,
}

impl Host {
    /// Prepares the node for `config`. On error, whatever was done is undone.
    pub fn prepare(config: &Config) -> Result<Self> {
        let mut host = Self::default();
        for interface in &config.node.interfaces {
            let forwarding = if interface.role.provider() { "1" } else { "0" };
            host.set_sysctl(
                format!("/proc/sys/net/ipv4/conf/{}/forwarding", interface.name).into(),
                forwarding,
            )?;
        }
        let mut targets: Vec<Ipv4Addr> = config
            .services
            .iter()
            .flat_map(|s| &s.load_balancers)
            .flat_map(|lb| &lb.listeners)
            .flat_map(|l| &l.targets)
            .map(|t| t.ip)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        for target in targets {
            host.keep_resolved(target)?;
        }
        Ok(host)
    }

    fn set_sysctl(&mut self, path: PathBuf, value: &str) -> Result<()> {
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if old.trim() != value {
            std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
            self.sysctls.push((path, old.trim().to_string()));
        }
        Ok(())
    }

    /// Makes the kernel keep the next hop towards `target` resolved.
    fn keep_resolved(&mut self, target: Ipv4Addr) -> Result<()> {
        let route = ip(&["-o", "route", "get", &target.to_string()]);
        let Ok(route) = route else {
            log::warn!("target {target}: no route from this node; its flows will be dropped");
            return Ok(());
        };
        let words: Vec<&str> = route.split_whitespace().collect();
        let after = |word| {
            words
                .iter()
                .position(|w| *w == word)
                .and_then(|i| words.get(i + 1))
        };
        let (Some(dev), next_hop) = (after("dev"), after("via")) else {
            return Ok(());
        };
        if *dev == "lo" || words.first() == Some(&"local") {
            return Ok(());
        }
        let next_hop: Ipv4Addr = next_hop.map_or(Ok(target), |hop| hop.parse())?;
        if self
            .neighbours
            .iter()
            .any(|(a, d)| *a == next_hop && d == dev)
        {
            return Ok(());
        }
        let existing = ip(&["neigh", "show", &next_hop.to_string(), "dev", dev])?;
        if existing.contains("PERMANENT") {
            return Ok(());
        }
        ip(&[
            "neigh",
            "replace",
            &next_hop.to_string(),
            "dev",
            dev,
            "managed",
        ])
        .with_context(|| format!("keeping the neighbour {next_hop} on {dev} resolved"))?;
        self.neighbours.push((next_hop, dev.to_string()));
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for (address, dev) in self.neighbours.drain(..).rev() {
            if let Err(e) = ip(&["neigh", "del", &address.to_string(), "dev", &dev]) {
                log::warn!("removing neighbour {address} on {dev}: {e:#}");
            }
        }
        for (path, value) in self.sysctls.drain(..).rev() {
            if let Err(e) = std::fs::write(&path, &value) {
                log::warn!("restoring {}: {e}", path.display());
            }
        }
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
