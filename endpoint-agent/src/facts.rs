//! Facts: what the pipeline needs to know about the node a config is for — its
//! interfaces, its own addresses, the ports it picks for itself — read from the network
//! namespace of the calling thread. Tests write their own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
};

use anyhow::{Context as _, Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The node's interfaces, by name.
    pub links: BTreeMap<String, Link>,
    /// The node's own addresses, on any interface.
    pub local_addresses: BTreeSet<IpAddr>,
    /// The ports the kernel picks for the node's own outgoing connections
    /// (`net.ipv4.ip_local_port_range`).
    pub ephemeral_ports: (u16, u16),
}

/// What the node knows about one of its interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// A veth device (frames sent back out it are redirected, see `maps::bounce`).
    pub veth: bool,
    pub mtu: u32,
}

impl Default for Facts {
    /// A node with no interfaces, no addresses and Linux's default ephemeral range.
    fn default() -> Self {
        Self {
            links: BTreeMap::new(),
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
            links: links()?,
            local_addresses,
            ephemeral_ports: (first, last),
        })
    }
}

/// Every interface of the node, from `ip -d -o link` (one line each).
fn links() -> Result<BTreeMap<String, Link>> {
    let output = Command::new("ip")
        .args(["-d", "-o", "link", "show"])
        .output()
        .context("running `ip link` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip -d -o link show: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(link)
        .collect())
}

/// `12: name@peer: <...> ... link/ether 02:..:01 ... veth ...`
fn link(line: &str) -> Option<(String, Link)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let ifindex = words.first()?.trim_end_matches(':').parse().ok()?;
    let name = words.get(1)?.trim_end_matches(':');
    let name = name.split('@').next()?.to_string();
    let ether = words
        .iter()
        .position(|w| *w == "link/ether")
        .and_then(|i| words.get(i + 1))?;
    let octets: Vec<u8> = ether
        .split(':')
        .map(|o| u8::from_str_radix(o, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let mac: [u8; 6] = octets.try_into().ok()?;
    let veth = words.contains(&"veth");
    let mtu = words
        .iter()
        .position(|w| *w == "mtu")
        .and_then(|i| words.get(i + 1))
        .and_then(|mtu| mtu.parse().ok())
        .unwrap_or(0);
    Some((
        name,
        Link {
            ifindex,
            mac,
            veth,
            mtu,
        },
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_link_lines_give_index_name_mac_and_kind() {
        let line = "7: cons-a@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 02:aa:bb:cc:dd:0e brd ff:ff:ff:ff:ff:ff link-netns epx-1-0-consumer-a promiscuity 0 allmulti 0 minmtu 68 maxmtu 65535 \\    veth addrgenmode eui64";
        let (name, link) = super::link(line).unwrap();
        assert_eq!(name, "cons-a");
        assert_eq!(link.ifindex, 7);
        assert_eq!(link.mac, [2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e]);
        assert!(link.veth);
        assert_eq!(link.mtu, 1500);
        assert!(
            super::link("1: lo: <LOOPBACK,UP> mtu 65536 link/loopback 00:00:00:00:00:00").is_none()
        );
    }
}
