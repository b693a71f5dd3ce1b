//! Facts: what validation needs to know about the node a config is for, read from the
//! network namespace of the calling thread. Tests write their own.

use std::{collections::BTreeSet, net::IpAddr, process::Command};

use anyhow::{Context as _, Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The node's own addresses, on any interface.
    pub local_addresses: BTreeSet<IpAddr>,
    /// The ports the kernel picks for the node's own outgoing connections
    /// (`net.ipv4.ip_local_port_range`).
    pub ephemeral_ports: (u16, u16),
}

impl Default for Facts {
    /// A node with no addresses and Linux's default ephemeral range.
    fn default() -> Self {
        Self {
            local_addresses: BTreeSet::new(),
            ephemeral_ports: (32768, 60999),
        }
    }
}

impl Facts {
    /// The facts of the node this runs on.
    pub fn of_this_node() -> Result<Self> {
        const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
        let range = std::fs::read_to_string(RANGE).with_context(|| format!("reading {RANGE}"))?;
        let ports: Vec<u16> = range
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{RANGE}: {range:?}"))?;
        let [first, last] = ports[..] else {
            bail!("{RANGE}: expected two ports, read {range:?}");
        };
        let output = Command::new("ip")
            .args(["-o", "addr", "show"])
            .output()
            .context("running `ip addr` (iproute2)")?;
        if !output.status.success() {
            bail!(
                "ip -o addr show: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let local_addresses = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                words.find(|w| *w == "inet" || *w == "inet6")?;
                words.next()?.split('/').next()?.parse().ok()
            })
            .collect();
        Ok(Self {
            local_addresses,
            ephemeral_ports: (first, last),
        })
    }
}
