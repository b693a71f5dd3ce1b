//! The standard topology of the demo and the end-to-end tests:
//!
//! ```text
//!  consumer-a  eth0 10.0.0.10 ──── cons-a ┐
//!                                         ├ node (agent, XDP) prov 172.16.0.1 ──── eth0 provider
//!  consumer-b  eth0 10.0.0.10 ──── cons-b ┘                          172.16.0.10, .11 (targets)
//! ```
//!
//! Both consumers use the same address; the node's consumer-side interfaces have none
//! (the program answers ARP for endpoint IPs), so nothing is routed into a consumer
//! network.

use anyhow::Result;

use crate::{Namespace, netns::veth};

/// The addresses of the standard topology (the shipped example config uses them).
pub mod addresses {
    use std::net::Ipv4Addr;

    /// The client host in each consumer network (the same in both).
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    /// The consumer networks' subnet, as a prefix length.
    pub const CONSUMER_PREFIX: u8 = 24;
    /// The node's own address on the provider network.
    pub const NODE_PROVIDER: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
    /// The provider hosts' addresses: one target server each.
    pub const TARGETS: [Ipv4Addr; 2] =
        [Ipv4Addr::new(172, 16, 0, 10), Ipv4Addr::new(172, 16, 0, 11)];
    pub const PROVIDER_PREFIX: u8 = 24;

    /// The same hosts' IPv6 addresses, given by [`Topology::add_ipv6`](crate::Topology::add_ipv6).
    pub mod v6 {
        use std::net::Ipv6Addr;

        /// The client host in each consumer network (the same in both).
        pub const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x10);
        pub const CONSUMER_PREFIX: u8 = 64;
        /// The node's own address on the provider network.
        pub const NODE_PROVIDER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x16, 0, 0, 0, 0, 0, 1);
        /// The provider hosts' addresses: one target server each.
        pub const TARGETS: [Ipv6Addr; 2] = [
            Ipv6Addr::new(0xfd00, 0x16, 0, 0, 0, 0, 0, 0x10),
            Ipv6Addr::new(0xfd00, 0x16, 0, 0, 0, 0, 0, 0x11),
        ];
        pub const PROVIDER_PREFIX: u8 = 64;
    }
}

pub struct Topology {
    pub consumer_a: Namespace,
    pub consumer_b: Namespace,
    pub node: Namespace,
    pub provider: Namespace,
}

impl Topology {
    /// Node interface names, as the config refers to them.
    pub const CONSUMER_A_LINK: &str = "cons-a";
    pub const CONSUMER_B_LINK: &str = "cons-b";
    pub const PROVIDER_LINK: &str = "prov";

    pub fn build() -> Result<Self> {
        use addresses::*;
        let topology = Self {
            consumer_a: Namespace::new("consumer-a")?,
            consumer_b: Namespace::new("consumer-b")?,
            node: Namespace::new("node")?,
            provider: Namespace::new("provider")?,
        };
        let t = &topology;
        for (consumer, link) in [
            (&t.consumer_a, Self::CONSUMER_A_LINK),
            (&t.consumer_b, Self::CONSUMER_B_LINK),
        ] {
            veth(consumer, "eth0", &t.node, link)?;
            consumer.ip(&[
                "addr",
                "add",
                &format!("{CLIENT}/{CONSUMER_PREFIX}"),
                "dev",
                "eth0",
            ])?;
            host_side(consumer)?;
        }
        veth(&t.node, Self::PROVIDER_LINK, &t.provider, "eth0")?;
        t.node.ip(&[
            "addr",
            "add",
            &format!("{NODE_PROVIDER}/{PROVIDER_PREFIX}"),
            "dev",
            Self::PROVIDER_LINK,
        ])?;
        for target in TARGETS {
            t.provider.ip(&[
                "addr",
                "add",
                &format!("{target}/{PROVIDER_PREFIX}"),
                "dev",
                "eth0",
            ])?;
        }
        host_side(&t.provider)?;
        Ok(topology)
    }

    /// Gives the hosts their IPv6 addresses too ([`addresses::v6`]): the clients, the
    /// node on the provider link, the provider hosts. Each is usable at once (`nodad`:
    /// no duplicate address detection to wait for). The node's consumer links get none
    /// (the agent turns IPv6 off there; the program answers for endpoint addresses).
    pub fn add_ipv6(&self) -> Result<()> {
        use addresses::v6::*;
        let add = |ns: &Namespace, address: String, dev: &str| {
            ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")?;
            ns.ip(&["-6", "addr", "add", &address, "dev", dev, "nodad"])
                .map(drop)
        };
        for consumer in [&self.consumer_a, &self.consumer_b] {
            add(consumer, format!("{CLIENT}/{CONSUMER_PREFIX}"), "eth0")?;
        }
        add(
            &self.node,
            format!("{NODE_PROVIDER}/{PROVIDER_PREFIX}"),
            Self::PROVIDER_LINK,
        )?;
        for target in TARGETS {
            add(
                &self.provider,
                format!("{target}/{PROVIDER_PREFIX}"),
                "eth0",
            )?;
        }
        Ok(())
    }
}

/// A host's end of a veth to the node: full checksums from its stack (incremental
/// updates on partial ones would be garbage) and NAPI on (veth drops XDP_TX/redirected
/// frames towards a peer without it).
fn host_side(ns: &Namespace) -> Result<()> {
    ns.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])?;
    Ok(())
}
