//! The namespaces of Layers B and C. One consumer host with three links to the node, one
//! per way through it; the node runs the agent on the first:
//!
//! ```text
//!  consumer eth0 10.0.0.10 ── cons-a  the forwarder (agent, XDP)     ┐
//!           eth1 10.2.0.10 ── cons-r  trivial XDP redirect (ceiling) ├ node ── prov ── eth0 provider
//!           eth2 10.1.0.10 ── cons-k  the kernel: routing, nftables  ┘         172.16.0.10, .11
//! ```
//!
//! and the same in IPv6: fd00:a::10 (the forwarder's way), fd00:1::10 (the kernel's),
//! provider hosts fd00:16::10 and ::11.
//!
//! Every node ingress has an XDP program (the kernel path a pass-through one: native XDP
//! on a veth turns TSO off on its peer, so all paths pay that alike) and GRO off.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::Xdp, programs::XdpMode};
use testbed::{Agent, Namespace, veth};

pub const AGENT: &str = env!("CARGO_BIN_EXE_endpoint-agent");

/// The forwarder's config: endpoint 10.0.0.100 and fd00:a::100 (ports 80 and 9000, and
/// 8000, whose targets are IPv4 only: IPv6 reaches them through 6→4) of a service whose
/// targets are the provider's hosts. No health checks: Layer B's sink answers nothing.
/// Room for Layer B's new connections: 5 rounds of 32768, left half-open, which stay
/// for `handshake_seconds` (longer than the rounds take): tables and half-open limits,
/// and NAT addresses and ports enough that a new flow seldom needs a second try for a
/// free port (the NAT addresses are not the node's own, so every port is free).
const CONFIG: &str = "
node:
  interfaces:
    - { name: cons-a, role: consumer, consumer_network: vpc }
    - name: prov
      role: provider
      nat_addresses: [172.16.0.100, 172.16.0.101, 172.16.0.102, 172.16.0.103,
                      172.16.0.104, 172.16.0.105, 172.16.0.106, 172.16.0.107,
                      'fd00:16::100']
  nat_ports: { first: 1024, last: 65535 }
  tables: { flows: 524288, handshakes: 262144 }
  limits: { half_open_per_network: 262144 }
services:
  - name: bench
    acceptance_required: false
    allowed_principals: ['*']
    limits: { half_open: 262144 }
    load_balancers:
      - name: nlb
        zone: z
        health_check: { protocol: none }
        listeners:
          - port: 80
            targets: [{ ip: 172.16.0.10, port: 8080 }, { ip: 172.16.0.11, port: 8080 },
                      { ip: 'fd00:16::10', port: 8080 }, { ip: 'fd00:16::11', port: 8080 }]
          - { port: 8000, targets: [{ ip: 172.16.0.10, port: 8080 }, { ip: 172.16.0.11, port: 8080 }] }
          - { port: 9000, targets: [{ ip: 172.16.0.10, port: 9000 }] }
          - { port: 53, protocol: udp, targets: [{ ip: 172.16.0.10, port: 5353 }, { ip: 172.16.0.11, port: 5353 }] }
endpoints:
  - id: bench
    service: bench
    principal: p
    consumer_network: vpc
    addresses: [{ zone: z, ip: 10.0.0.100 }, { zone: z, ip: 'fd00:a::100' }]
";

/// nftables DNAT + masquerade on the kernel path, for the same service.
const NFT: &str = "
table ip endpoint_bench {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    ip daddr 10.1.0.100 tcp dport 80 dnat to 172.16.0.10:8080
    ip daddr 10.1.0.100 tcp dport 9000 dnat to 172.16.0.10:9000
    ip daddr 10.1.0.100 udp dport 53 dnat to 172.16.0.10:5353
  }
  chain postrouting {
    type nat hook postrouting priority srcnat;
    ct status dnat oifname \"prov\" masquerade
  }
}
table ip6 endpoint_bench6 {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    ip6 daddr fd00:1::100 tcp dport 80 dnat to [fd00:16::10]:8080
  }
  chain postrouting {
    type nat hook postrouting priority srcnat;
    ct status dnat oifname \"prov\" masquerade
  }
}
";

pub const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
}

/// `fd00:<subnet>::<host>`.
pub const fn v6(subnet: u16, host: u16) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, host))
}

pub struct Bed {
    pub agent: Agent,
    pub consumer: Namespace,
    pub node: Namespace,
    pub provider: Namespace,
    config: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

pub fn link(ns: &Namespace, name: &str) -> Result<(u32, [u8; 6])> {
    let facts = ns.enter(endpoint_agent::facts::Facts::of_this_node)??;
    let link = facts
        .links
        .get(name)
        .with_context(|| format!("no link {name}"))?;
    Ok((link.ifindex, link.mac))
}

impl Bed {
    pub fn build(object: &mut Ebpf) -> Result<Self> {
        let consumer = Namespace::new("bench-consumer")?;
        let node = Namespace::new("bench-node")?;
        let provider = Namespace::new("bench-provider")?;
        // Addresses are usable at once (the sink and reflector pass neighbour discovery
        // to the kernel, but nothing need wait for it).
        for ns in [&consumer, &node, &provider] {
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        }
        for (i, (link, addresses)) in [
            ("cons-a", ["10.0.0.10/24", "fd00:a::10/64"]),
            ("cons-r", ["10.2.0.10/24", "fd00:2::10/64"]),
            ("cons-k", ["10.1.0.10/24", "fd00:1::10/64"]),
        ]
        .into_iter()
        .enumerate()
        {
            let eth = format!("eth{i}");
            veth(&consumer, &eth, &node, link)?;
            for address in addresses {
                consumer.ip(&["addr", "add", address, "dev", &eth])?;
            }
            consumer.exec("ethtool", &["-K", &eth, "tx", "off", "gro", "on"])?;
            node.exec("ethtool", &["-K", link, "gro", "off"])?;
        }
        // Thousands of short connections a second, each leaving a port in TIME_WAIT for
        // a minute: give the client every port.
        consumer.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        veth(&node, "prov", &provider, "eth0")?;
        node.ip(&["addr", "add", "172.16.0.1/24", "dev", "prov"])?;
        node.ip(&["addr", "add", "10.1.0.1/24", "dev", "cons-k"])?;
        node.ip(&["addr", "add", "10.1.0.100/32", "dev", "cons-k"])?;
        node.ip(&["addr", "add", "fd00:16::1/64", "dev", "prov"])?;
        node.ip(&["addr", "add", "fd00:1::1/64", "dev", "cons-k"])?;
        node.ip(&["addr", "add", "fd00:1::100/128", "dev", "cons-k"])?;
        for address in [
            "172.16.0.10/24",
            "172.16.0.11/24",
            "fd00:16::10/64",
            "fd00:16::11/64",
        ] {
            provider.ip(&["addr", "add", address, "dev", "eth0"])?;
        }
        provider.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])?;
        // The node knows the provider hosts' MAC for good: the first frames of a round
        // need not wait for a neighbour.
        let (_, provider_mac) = link(&provider, "eth0")?;
        for target in [
            v4(172, 16, 0, 10),
            v4(172, 16, 0, 11),
            v6(0x16, 0x10),
            v6(0x16, 0x11),
        ] {
            node.neighbour(target, provider_mac, "prov")?;
        }
        for key in ["all", "default", "cons-k", "prov"] {
            node.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        node.sysctl("net.ipv4.conf.cons-k.forwarding", "1")?;
        node.sysctl("net.ipv4.conf.prov.forwarding", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        provider.ip(&["route", "add", "10.1.0.0/24", "via", "172.16.0.1"])?;
        provider.ip(&["route", "add", "fd00:1::/64", "via", "fd00:16::1"])?;
        // New connections come from many consumer addresses (10.1.1.0 up): the kernel
        // path reaches them through the consumer host, whose counter eats ARP.
        let (_, consumer_mac) = link(&consumer, "eth2")?;
        node.neighbour(v4(10, 1, 0, 10), consumer_mac, "cons-k")?;
        node.ip(&[
            "route",
            "add",
            "10.1.0.0/16",
            "via",
            "10.1.0.10",
            "dev",
            "cons-k",
        ])?;
        let rules = write_temp("nft", NFT)?;
        let loaded = node.exec("nft", &["-f", &rules.to_string_lossy()]);
        let _ = std::fs::remove_file(&rules);
        loaded?;

        let (prov, prov_mac) = link(&node, "prov")?;
        let mut egress = [0u8; 12];
        egress[..6].copy_from_slice(&provider_mac);
        egress[6..].copy_from_slice(&prov_mac);
        let word = |i: usize| u32::from_ne_bytes(egress[i..i + 4].try_into().unwrap());
        let mut redirect: aya::maps::Array<_, [u32; 4]> =
            aya::maps::Array::try_from(object.map_mut("REDIRECT").context("REDIRECT")?)?;
        redirect.set(0, [prov, word(0), word(4), word(8)], 0)?;
        attach(object, "redirect", &node, "cons-r")?;
        attach(object, "empty", &node, "cons-k")?;

        let config = write_temp("config.yaml", CONFIG)?;
        let instance = node.name().to_string();
        let agent = Agent::start(&node, Path::new(AGENT), &instance, &config, &[])?;
        Ok(Self {
            agent,
            consumer,
            node,
            provider,
            config,
        })
    }
}

/// Attaches `program` of the bench object to `interface` in `ns`, natively.
pub fn attach(
    object: &mut Ebpf,
    program: &str,
    ns: &Namespace,
    interface: &str,
) -> Result<aya::programs::xdp::XdpLinkId> {
    let xdp: &mut Xdp = object
        .program_mut(program)
        .context(program.to_string())?
        .try_into()?;
    ns.enter(|| xdp.attach(interface, XdpMode::Driver))?
        .with_context(|| format!("attaching {program} to {interface}"))
}

fn write_temp(name: &str, text: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("endpoint-bench-{}-{name}", std::process::id()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Lets queued frames drain before counting.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}
