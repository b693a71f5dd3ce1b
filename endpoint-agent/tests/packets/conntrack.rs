//! Conntrack: a SYN opens a flow (both directions, a NAT port claimed), replies find it,
//! the maps hold what the pipeline applied, nothing is left behind by what fails.

use endpoint_common::counter;

use crate::rig::*;

#[test]
fn syn_is_translated_to_a_target_and_the_reply_back_to_the_consumer() {
    with_rig(|rig| {
        let (cons, prov) = (rig.link("cons-a"), rig.link("prov"));
        let syn = syn_to(cons.mac, ENDPOINT, 40000);
        let out = rig.run("cons-a", &syn.frame(b""));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());

        let (_, tcp) = parse(&out.frame);
        let target = rig.predicted_target(1, ENDPOINT, &flow_key(1, &syn));
        let target_mac = TARGETS.iter().find(|(ip, _)| *ip == target).unwrap().1;
        let nat_port = tcp.source_port;
        assert!(
            (20000..=20999).contains(&nat_port),
            "NAT port {nat_port} out of range"
        );
        let translated = Segment {
            mac_src: prov.mac,
            mac_dst: target_mac,
            src: NAT,
            dst: target,
            sport: nat_port,
            dport: 8080,
            ttl: 63,
            ..syn
        };
        assert_eq!(out.frame, translated.frame(b""), "forward frame");

        // The target answers the NAT address: back to the client, from the endpoint,
        // from the consumer interface's own MAC.
        let connection = Connection {
            interface: "cons-a".into(),
            client: syn,
            target,
            target_port: 8080,
            nat_port,
        };
        let syn_ack = connection.by_target(SYN | ACK, TARGET_ISN);
        let out = rig.run("prov", &syn_ack.frame(b""));
        assert_eq!(out.action, XDP_REDIRECT);
        let back = Segment {
            mac_src: cons.mac,
            mac_dst: CLIENT_MAC,
            src: ENDPOINT,
            dst: CLIENT,
            sport: 80,
            dport: 40000,
            ttl: 63,
            ..syn_ack
        };
        assert_eq!(out.frame, back.frame(b""), "reply frame");
        parse(&out.frame);

        // The client's next segment, with data, follows the same flow.
        let data = connection.by_client(ACK, CLIENT_ISN + 1);
        let out = rig.run("cons-a", &data.frame(b"GET / HTTP/1.0\r\n\r\n"));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(
            out.frame,
            Segment {
                ttl: 63,
                ..translated.with(ACK, CLIENT_ISN + 1, TARGET_ISN + 1)
            }
            .frame(b"GET / HTTP/1.0\r\n\r\n")
        );

        assert_eq!(rig.count("a", counter::FORWARD_NEW), 1);
        assert_eq!(rig.count("a", counter::REPLY), 1);
        assert_eq!(rig.count("a", counter::FORWARD), 1);
    });
}

#[test]
fn two_consumer_networks_with_the_same_tuple_get_separate_flows_and_ports() {
    with_rig(|rig| {
        let a = rig.connect("cons-a", ENDPOINT, 40000);
        let b = rig.connect("cons-b", ENDPOINT, 40000);
        assert!(
            (a.target, a.nat_port) != (b.target, b.nat_port),
            "both consumers got the same target and NAT port {}",
            a.nat_port
        );
        assert_eq!(rig.count("a", counter::FORWARD_NEW), 1);
        assert_eq!(rig.count("b", counter::FORWARD_NEW), 1);
        // Each reply goes back out the interface its flow came in on.
        for connection in [&a, &b] {
            let reply = connection.by_target(ACK, TARGET_ISN + 1).frame(b"data");
            let back = rig.run("prov", &reply);
            assert_eq!(back.action, XDP_REDIRECT);
            let (ip, tcp) = parse(&back.frame);
            assert_eq!((ip.destination, tcp.destination_port), (CLIENT, 40000));
            assert_eq!(
                back.frame[6..12],
                rig.link(&connection.interface).mac,
                "the reply must leave through {}",
                connection.interface
            );
        }
    });
}

#[test]
fn what_matches_no_flow_is_dropped_and_opens_nothing() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let ack = syn_to(mac, ENDPOINT, 41000).with(ACK, CLIENT_ISN + 1, 1);
        assert_eq!(rig.run("cons-a", &ack.frame(b"x")).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_NO_FLOW), 1);
        let stray = Connection {
            interface: "cons-a".into(),
            client: syn_to(mac, ENDPOINT, 41000),
            target: TARGETS[0].0,
            target_port: 8080,
            nat_port: 20500,
        }
        .by_target(SYN | ACK, TARGET_ISN);
        assert_eq!(rig.run("prov", &stray.frame(b"")).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_REPLY_NO_FLOW), 1);
        assert!(rig.flows().is_empty());
    });
}

#[test]
fn replies_are_taken_only_on_the_flows_provider_interface() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        // A host on another provider segment speaking for the target.
        let mut spoofed = connection.by_target(ACK | RST, TARGET_ISN + 1);
        spoofed.mac_dst = rig.link("prov2").mac;
        assert_eq!(rig.run("prov2", &spoofed.frame(b"")).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_WRONG_INTERFACE), 1);
        let data = connection
            .by_client(ACK, CLIENT_ISN + 1)
            .frame(b"still here");
        assert_eq!(rig.run("cons-a", &data).action, XDP_REDIRECT);
    });
}

#[test]
fn route_lookup_failures_drop_before_any_flow_exists() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let unresolved = syn_to(mac, NO_NEIGHBOUR, 40000).frame(b"");
        assert_eq!(rig.run("cons-a", &unresolved).action, XDP_DROP);
        let unrouted = syn_to(mac, NO_ROUTE, 40000).frame(b"");
        assert_eq!(rig.run("cons-a", &unrouted).action, XDP_DROP);
        let counters = rig.counters();
        assert_eq!(counters.packets(counter::DROP_FIB_NO_NEIGHBOUR), 1);
        assert_eq!(counters.packets(counter::DROP_FIB_UNREACHABLE), 1);
        assert!(rig.flows().is_empty(), "no state was created");
        // Nor anything counted as held.
        let usage = rig
            .pipeline
            .maps()
            .array::<endpoint_common::maps::Usage>(endpoint_common::maps::name::USAGE)
            .unwrap()
            .get(&rig.endpoint("unresolved"), 0)
            .unwrap();
        assert_eq!((usage.connections, usage.half_open), (0, 0));
    });
}

/// A flow keeps its route for a second and replies never look one up: every packet is
/// still held to its egress interface's MTU (the links here have 1500). Without DF it
/// is dropped (the node does not fragment; with DF its sender is told: see `icmp`).
#[test]
fn packets_longer_than_the_egress_mtu_without_df_are_dropped_both_ways() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        let fits = connection.by_client(ACK, CLIENT_ISN + 1).frame(&[7; 1460]);
        assert_eq!(rig.run("cons-a", &fits).action, XDP_REDIRECT);
        let long = connection.by_client(ACK, CLIENT_ISN + 1).frame(&[7; 1461]);
        assert_eq!(rig.run("cons-a", &without_df(long)).action, XDP_DROP);
        let reply = connection.by_target(ACK, TARGET_ISN + 1);
        assert_eq!(
            rig.run("prov", &reply.frame(&[7; 1460])).action,
            XDP_REDIRECT
        );
        let long_reply = without_df(reply.frame(&[7; 1900]));
        assert_eq!(rig.run("prov", &long_reply).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_FIB_FRAG_NEEDED), 2);
        // The connection is not harmed.
        assert_eq!(rig.run("cons-a", &fits).action, XDP_REDIRECT);
    });
}

#[test]
fn a_full_flow_table_refuses_new_connections_and_keeps_the_ones_it_has() {
    let small = CONFIG.replace("  hash_seed: 11", "  hash_seed: 11\n  tables: { flows: 8 }");
    with_rig_for(&small, |rig| {
        let open: Vec<Connection> = (0..4)
            .map(|i| rig.connect("cons-a", ENDPOINT, 40000 + i))
            .collect();
        let mac = rig.link("cons-a").mac;
        let fifth = syn_to(mac, ENDPOINT, 40010).frame(b"");
        assert_eq!(rig.run("cons-a", &fifth).action, XDP_DROP);
        assert_eq!(
            rig.count("a", counter::DROP_FLOW_TABLE_FULL),
            1,
            "{:?}",
            rig.counted()
        );
        for connection in &open {
            let data = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"x");
            assert_eq!(
                rig.run("cons-a", &data).action,
                XDP_REDIRECT,
                "nothing was evicted"
            );
        }
    });
}

#[test]
fn what_the_agent_reads_back_from_the_maps_is_what_it_applied() {
    use endpoint_agent::pipeline::Pipeline;
    with_rig(|rig| {
        let read =
            |rig: &Rig| Pipeline::read(rig.pipeline.maps(), &rig.pipeline.applied().ids).unwrap();
        assert_eq!(read(rig), rig.pipeline.applied().contents);
        // Another target, another NAT address, an endpoint gone and one rejected.
        let changed = CONFIG
            .replace(
                "              - { ip: 172.16.0.11, port: 8080 }",
                "              - { ip: 172.16.0.11, port: 8080 }\n              - { ip: 172.16.0.12, port: 8080 }",
            )
            .replace("nat_addresses: [172.16.0.100]", "nat_addresses: [172.16.0.100, 172.16.0.101]")
            .replace("ip: 10.0.0.100, zone: z1, state: available }", "ip: 10.0.0.100, zone: z1, state: rejected }")
            .replace("  - { id: unrouted,", "  - { id: unrouted-gone,");
        rig.reconfigure(&changed);
        assert_eq!(read(rig), rig.pipeline.applied().contents);
    });
}
