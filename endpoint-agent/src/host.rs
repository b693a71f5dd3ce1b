//! Host: what the agent changes on the node besides the maps, recorded in the state
//! directory so that it is undone even after the agent was killed (`cleanup`), and
//! checked again every few seconds (other software may change it back).
//!
//! - `forwarding`: on for provider interfaces, IPv4 and IPv6 (the route lookup towards
//!   targets is made from there and the kernel refuses it otherwise), with IPv6 router
//!   advertisements still taken where they were.
//! - Consumer-only interfaces keep the kernel out, behind the program (which already
//!   drops whatever is not endpoint traffic): no forwarding (IPv4 or IPv6, whatever
//!   `net.ipv4.ip_forward` says), no IPv6 at all (no link-local address a consumer
//!   could reach the node's own services on, no router advertisements taken; the
//!   program answers neighbour solicitations for IPv6 endpoints itself), and no ARP
//!   answers from the kernel for the node's own addresses.
//! - Managed neighbour entries (Linux 5.16+) for each target's next hop, IPv4 or IPv6:
//!   the kernel keeps them resolved without traffic, so the XDP route lookup finds the
//!   MAC from the first SYN on (it cannot trigger ARP or neighbour discovery itself).
//! - `allmulticast` on attached interfaces while the node answers for an IPv6 address:
//!   neighbour solicitations for it go to a multicast group only the program knows of.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{config::Config, instance::Instance};

/// The host changes in effect, and what to put back.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Host {
    /// Sysctl file the agent keeps → the value it had when the agent first looked.
    sysctls: BTreeMap<String, String>,
    /// Managed neighbour entries the agent made: (address, device).
    neighbours: BTreeSet<(IpAddr, String)>,
    /// Interfaces the agent turned `allmulticast` on for.
    #[serde(default)]
    allmulticast: BTreeSet<String>,
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
            let name = &interface.name;
            if !Path::new(&format!("/proc/sys/net/ipv4/conf/{name}")).exists() {
                // Not on the node (yet): nothing to set.
                continue;
            }
            if interface.role.provider() {
                // IPv6 forwarding makes the kernel drop the router advertisements
                // `accept_ra` 1 takes (the interface's own IPv6 addresses and default
                // route would run out): 2 keeps taking them.
                let ra = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
                if self.sysctls.contains_key(&ra)
                    || std::fs::read_to_string(&ra).is_ok_and(|v| v.trim() == "1")
                {
                    self.set_sysctl(ra, "2")?;
                }
            }
            let settings: &[(&str, &str)] = if interface.role.provider() {
                &[
                    ("net/ipv4/conf/{}/forwarding", "1"),
                    ("net/ipv6/conf/{}/forwarding", "1"),
                ]
            } else {
                &[
                    ("net/ipv4/conf/{}/forwarding", "0"),
                    ("net/ipv6/conf/{}/forwarding", "0"),
                    ("net/ipv6/conf/{}/accept_ra", "0"),
                    ("net/ipv6/conf/{}/disable_ipv6", "1"),
                    // 8: answer no ARP request; 2: announce only addresses of the
                    // interface itself.
                    ("net/ipv4/conf/{}/arp_ignore", "8"),
                    ("net/ipv4/conf/{}/arp_announce", "2"),
                ]
            };
            for (path, value) in settings {
                let path = format!("/proc/sys/{}", path.replace("{}", name));
                self.set_sysctl(path, value)?;
            }
            if answers_ipv6(config) {
                self.receive_all_multicast(name)?;
            }
        }
        let wanted: BTreeSet<(IpAddr, String)> =
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
        for dev in std::mem::take(&mut self.allmulticast) {
            if let Err(e) = ip(&["link", "set", "dev", &dev, "allmulticast", "off"]) {
                log::warn!("restoring allmulticast on {dev}: {e:#}");
            }
        }
        instance.write(FILE, self)
    }

    /// Makes `dev` take in every multicast frame. Neighbour solicitations go to an
    /// address's solicited-node group (33:33:ff:…), which the kernel joins only for
    /// addresses of its own: a real NIC's filter would drop those for the endpoint and
    /// NAT addresses the program answers for, before XDP sees them.
    fn receive_all_multicast(&mut self, dev: &str) -> Result<()> {
        if self.allmulticast.contains(dev)
            || ip(&["link", "show", "dev", dev])?.contains("ALLMULTI")
        {
            return Ok(());
        }
        ip(&["link", "set", "dev", dev, "allmulticast", "on"])
            .with_context(|| format!("taking in all multicast on {dev}"))?;
        self.allmulticast.insert(dev.to_string());
        Ok(())
    }

    fn set_sysctl(&mut self, path: String, value: &str) -> Result<()> {
        if !Path::new(&path).exists() {
            // IPv6 turned off on the whole node: nothing to keep out.
            return Ok(());
        }
        let old = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let old = old.trim();
        // What it was before the agent first looked is what goes back on exit, whoever
        // changes it in between.
        let seen = self.sysctls.contains_key(&path);
        if !seen {
            self.sysctls.insert(path.clone(), old.to_string());
        }
        if old != value {
            if seen {
                log::warn!(
                    "{path} was changed to {old} behind the agent's back: set back to {value}"
                );
            }
            std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
        }
        Ok(())
    }

    /// Makes the kernel keep the neighbour `address` on `dev` resolved.
    fn keep_resolved(&mut self, address: IpAddr, dev: &str) -> Result<()> {
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

/// Whether the node answers for any IPv6 address: an endpoint's or a NAT address.
fn answers_ipv6(config: &Config) -> bool {
    let endpoints = config
        .endpoints
        .iter()
        .flat_map(|e| e.addresses())
        .any(|a| a.ip.is_ipv6());
    let nat = config
        .node
        .interfaces
        .iter()
        .flat_map(|i| &i.nat_addresses)
        .any(IpAddr::is_ipv6);
    endpoints || nat
}

fn targets(config: &Config) -> BTreeSet<IpAddr> {
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
fn next_hop(target: IpAddr) -> Option<(IpAddr, String)> {
    let Ok(route) = ip(&["-o", "route", "get", &target.to_string()]) else {
        log::warn!("target {target}: no route from this node; its flows will be dropped");
        return None;
    };
    hop(target, &route)
}

/// The next hop in `ip route get`'s answer for `target` (either family: an IPv6 next
/// hop is often a link-local address).
fn hop(target: IpAddr, route: &str) -> Option<(IpAddr, String)> {
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

fn forget(address: IpAddr, dev: &str) {
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

#[cfg(test)]
mod tests {
    use super::hop;

    #[test]
    fn next_hops_of_either_family_come_from_route_get() {
        let hop = |target: &str, route: &str| {
            hop(target.parse().unwrap(), route).map(|(ip, dev)| format!("{ip} {dev}"))
        };
        assert_eq!(
            hop(
                "172.16.0.10",
                "172.16.0.10 dev prov src 172.16.0.1 uid 0 \\    cache "
            ),
            Some("172.16.0.10 prov".into())
        );
        assert_eq!(
            hop(
                "2001:db8:16::10",
                "2001:db8:16::10 from :: via fe80::1 dev prov proto ra src 2001:db8:16::1 metric 1024 pref medium"
            ),
            Some("fe80::1 prov".into())
        );
        assert_eq!(
            hop(
                "2001:db8:16::10",
                "2001:db8:16::10 from :: dev prov proto kernel src 2001:db8:16::1 metric 256 pref medium"
            ),
            Some("2001:db8:16::10 prov".into())
        );
        assert_eq!(
            hop(
                "2001:db8:16::1",
                "local 2001:db8:16::1 dev lo table local proto kernel src 2001:db8:16::1 metric 0 pref medium"
            ),
            None
        );
    }
}
