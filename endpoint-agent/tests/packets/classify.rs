//! Classify: on a consumer interface only endpoint traffic (and ARP for the node's
//! addresses there) gets in — everything else is dropped and counted, the node itself
//! unreachable; on a provider interface what is not a reply is the kernel's, untouched.

use std::{collections::BTreeSet, net::Ipv4Addr};

use endpoint_agent::pipeline::Failover;
use endpoint_common::counter;
use etherparse::PacketBuilder;

use crate::rig::*;

/// Frames a consumer host could send that are not endpoint traffic.
fn not_endpoint_traffic(mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv4(CLIENT, [10, 0, 0, 1], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .tcp(1, 22, 1, 1)
        .syn()
        .write(&mut v6, b"")
        .unwrap();
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv4(CLIENT, ENDPOINT, 64)
        .udp(5000, 53)
        .write(&mut udp, b"query")
        .unwrap();
    vec![
        (
            "another port of the endpoint",
            Segment {
                dport: 22,
                ..syn_to(mac, ENDPOINT, 40000)
            }
            .frame(b""),
        ),
        (
            "the node's own address",
            syn_to(mac, NODE, 40000).frame(b""),
        ),
        (
            "an address nobody has, on an endpoint port",
            syn_to(mac, [10, 0, 0, 1], 40000).frame(b""),
        ),
        ("ICMP to an address nobody has", icmp),
        ("IPv6 to a link-local address", v6),
        ("UDP", udp),
        (
            "ARP for the node's own address",
            arp_request(CLIENT_MAC, CLIENT, NODE),
        ),
        (
            "ARP for an address that is not ours",
            arp_request(CLIENT_MAC, CLIENT, [10, 0, 0, 1]),
        ),
    ]
}

#[test]
fn a_consumer_interface_lets_nothing_but_endpoint_traffic_through() {
    with_rig(|rig| {
        let frames = not_endpoint_traffic(rig.link("cons-a").mac);
        for (what, frame) in &frames {
            assert_eq!(rig.run("cons-a", frame).action, XDP_DROP, "{what}");
        }
        let counters = rig.counters();
        assert_eq!(
            counters.packets(counter::DROP_NOT_ENDPOINT),
            frames.len() as u64,
            "{:?}",
            rig.counted()
        );
        assert_eq!(counters.packets(counter::PASS), 0);
    });
}

#[test]
fn on_a_provider_interface_what_is_not_a_reply_is_the_kernels_untouched() {
    with_rig(|rig| {
        let prov = rig.link("prov").mac;
        let to_node = |dport| Segment {
            mac_src: TARGETS[0].1,
            mac_dst: prov,
            src: TARGETS[0].0,
            dst: NODE,
            sport: 40000,
            dport,
            ttl: 64,
            seq: 1,
            ack: None,
            flags: SYN,
            window: 1024,
        };
        let mut frames = vec![
            // The node's own services, and replies to its own connections (ports
            // outside the NAT range).
            to_node(22).frame(b""),
            to_node(45000).frame(b""),
            // A NAT-range port of an address that is not a NAT address.
            to_node(20500).frame(b""),
        ];
        let mut v6 = Vec::new();
        PacketBuilder::ethernet2(TARGETS[0].1, prov)
            .ipv6(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(1, 22, 1, 1)
            .write(&mut v6, b"")
            .unwrap();
        frames.push(v6);
        frames.push(arp_request(TARGETS[0].1, TARGETS[0].0, NODE));
        for frame in &frames {
            let out = rig.run("prov", frame);
            assert_eq!(out.action, XDP_PASS);
            assert_eq!(&out.frame, frame, "a passed frame must be untouched");
        }
        assert_eq!(rig.counters().packets(counter::PASS), frames.len() as u64);
    });
}

#[test]
fn an_interface_of_both_roles_passes_the_nodes_own_traffic() {
    let config = CONFIG
        .replace(
            "    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }\n",
            "    - { name: prov, role: both, consumer_network: vpc-c, nat_addresses: [172.16.0.100] }\n",
        );
    with_rig_for(&config, |rig| {
        let prov = rig.link("prov").mac;
        let ssh = Segment {
            mac_src: TARGETS[0].1,
            mac_dst: prov,
            src: TARGETS[0].0,
            dst: NODE,
            sport: 40000,
            dport: 22,
            ttl: 64,
            seq: 1,
            ack: None,
            flags: SYN,
            window: 1024,
        }
        .frame(b"");
        assert_eq!(rig.run("prov", &ssh).action, XDP_PASS);
    });
}

#[test]
fn a_standby_address_is_carried_but_its_arp_left_to_the_node_that_holds_it() {
    with_rig(|rig| {
        // A zoned fleet's node that holds vpc-a's 10.0.0.100 elsewhere, not here.
        let elsewhere = BTreeSet::from([("vpc-a".to_string(), Ipv4Addr::from(ENDPOINT).into())]);
        let standby = Failover {
            zoned: true,
            mine: BTreeSet::new(),
            held: elsewhere.clone(),
        };
        rig.reconfigure_failover(CONFIG, &standby);
        let mac = rig.link("cons-a").mac;
        let arp = rig.run("cons-a", &arp_request(CLIENT_MAC, CLIENT, ENDPOINT));
        assert_eq!(arp.action, XDP_DROP, "another node answers ARP for it");
        assert_eq!(rig.counters().packets(counter::ARP_REPLY), 0);
        // A client that still has this node's MAC for it is carried on.
        let out = rig.run("cons-a", &syn_to(mac, ENDPOINT, 40000).frame(b""));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(rig.connections().len(), 1);
        // Holding it, the node answers.
        let held = Failover {
            mine: elsewhere,
            ..standby
        };
        rig.reconfigure_failover(CONFIG, &held);
        let arp = rig.run("cons-a", &arp_request(CLIENT_MAC, CLIENT, ENDPOINT));
        assert_eq!(arp.action, XDP_REDIRECT);
    });
}

#[test]
fn arp_is_answered_for_endpoints_that_carry_traffic_and_nat_addresses_where_they_live() {
    with_rig(|rig| {
        for (interface, asker_mac, asker_ip, wanted) in [
            ("cons-a", CLIENT_MAC, CLIENT, ENDPOINT),
            ("prov", TARGETS[0].1, TARGETS[0].0, NAT),
        ] {
            let own = rig.link(interface).mac;
            let out = rig.run(interface, &arp_request(asker_mac, asker_ip, wanted));
            // veth: sent back with a redirect to the same interface (see maps::bounce).
            assert_eq!(out.action, XDP_REDIRECT, "{interface}");
            let mut reply = asker_mac.to_vec();
            reply.extend(own);
            reply.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
            reply.extend(own);
            reply.extend(wanted);
            reply.extend(asker_mac);
            reply.extend(asker_ip);
            assert_eq!(out.frame, reply, "{interface}");
        }
        // Not the NAT address on a consumer link; not an endpoint that was never
        // accepted (a request cannot claim an address, a gateway's say).
        for wanted in [NAT, PENDING] {
            let out = rig.run("cons-a", &arp_request(CLIENT_MAC, CLIENT, wanted));
            assert_eq!(out.action, XDP_DROP, "{wanted:?}");
        }
        assert_eq!(rig.counters().packets(counter::ARP_REPLY), 2);
    });
}
