//! Policy: acceptance and security groups on every packet, judged again whenever the
//! endpoint's policy word changes; a flow belongs to its endpoint and network and stops
//! when they are gone.

use endpoint_common::counter;

use crate::rig::*;

#[test]
fn endpoints_that_are_not_available_drop_and_count_by_state() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        assert_eq!(
            rig.run("cons-a", &syn_to(mac, PENDING, 40000).frame(b""))
                .action,
            XDP_DROP
        );
        let mac = rig.link("cons-b").mac;
        assert_eq!(
            rig.run("cons-b", &syn_to(mac, PENDING, 40000).frame(b""))
                .action,
            XDP_DROP
        );
        assert_eq!(
            rig.count("pending", counter::DROP_STATE_PENDING_ACCEPTANCE),
            1
        );
        assert_eq!(rig.count("rejected", counter::DROP_STATE_REJECTED), 1);
        assert_eq!(rig.counters().packets(counter::FORWARD_NEW), 0);
    });
}

#[test]
fn security_groups_admit_only_their_sources_and_ports() {
    with_rig(|rig| {
        let mac = rig.link("cons-b").mac;
        // 10.0.0.10 is in 10.0.0.0/28 (port 80) and 10.0.0.0/24 (port 443): both ports.
        for port in [80, 443] {
            let syn = Segment {
                dport: port,
                ..syn_to(mac, GUARDED, 40000 + port)
            };
            assert_eq!(
                rig.run("cons-b", &syn.frame(b"")).action,
                XDP_REDIRECT,
                "port {port}"
            );
        }
        // 10.0.0.200 is only in the /24: port 443 yes, port 80 no.
        let outsider = |port| Segment {
            src: [10, 0, 0, 200],
            dport: port,
            ..syn_to(mac, GUARDED, 41000)
        };
        assert_eq!(
            rig.run("cons-b", &outsider(443).frame(b"")).action,
            XDP_REDIRECT
        );
        assert_eq!(rig.run("cons-b", &outsider(80).frame(b"")).action, XDP_DROP);
        // 10.0.1.1 is in none.
        let stranger = Segment {
            src: [10, 0, 1, 1],
            ..syn_to(mac, GUARDED, 42000)
        };
        assert_eq!(rig.run("cons-b", &stranger.frame(b"")).action, XDP_DROP);
        assert_eq!(rig.count("guarded", counter::DROP_SECURITY_GROUP), 2);
        assert_eq!(rig.count("guarded", counter::FORWARD_NEW), 3);
    });
}

#[test]
fn a_source_the_groups_no_longer_admit_loses_its_established_flow() {
    with_rig(|rig| {
        let connection = rig.connect("cons-b", GUARDED, 40080);
        let narrowed = CONFIG.replace("      - { cidr: 10.0.0.0/28, ports: [80] }\n", "");
        rig.reconfigure(&narrowed);
        let data = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"more");
        assert_eq!(rig.run("cons-b", &data).action, XDP_DROP);
        assert_eq!(rig.count("guarded", counter::DROP_SECURITY_GROUP), 1);
        assert!(rig.flows().is_empty(), "the flow and its NAT port went");
    });
}

/// CONFIG with endpoint `a` rejected, with `on_revoke` of its service `orders` set.
fn a_rejected(on_revoke: &str) -> String {
    CONFIG
        .replacen(
            "ip: 10.0.0.100, zone: z1, state: available",
            "ip: 10.0.0.100, zone: z1, state: rejected, accepted_at: '2026-01-01T00:00:00Z'",
            1,
        )
        .replacen(
            "  - name: orders\n    acceptance_required: false\n",
            &format!(
                "  - name: orders\n    acceptance_required: false\n    on_revoke: {on_revoke}\n"
            ),
            1,
        )
}

#[test]
fn a_draining_endpoint_keeps_established_flows_and_refuses_new_ones_even_on_an_old_tuple() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        rig.reconfigure(&a_rejected("drain"));
        let data = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"x");
        let out = rig.run("cons-a", &data);
        assert_eq!(
            out.action,
            XDP_REDIRECT,
            "drained, not cut: {:?}",
            rig.counted()
        );
        // A new SYN from the same source port as the established connection is a new
        // connection: refused like any other.
        let again = connection.client.frame(b"");
        assert_eq!(rig.run("cons-a", &again).action, XDP_DROP);
        let fresh = syn_to(rig.link("cons-a").mac, ENDPOINT, 40001).frame(b"");
        assert_eq!(rig.run("cons-a", &fresh).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_STATE_REJECTED), 2);
        // The replies of the established connection still come back.
        let reply = connection.by_target(ACK, TARGET_ISN + 1).frame(b"y");
        assert_eq!(rig.run("prov", &reply).action, XDP_REDIRECT);
    });
}

#[test]
fn deleting_an_endpoint_cuts_its_flows_and_a_new_owner_of_its_slot_inherits_none() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        let slot = rig.endpoint("a");
        let without_a = CONFIG.replace(
            "  - { id: a, service: orders, principal: p, consumer_network: vpc-a, ip: 10.0.0.100, zone: z1, state: available }\n",
            "",
        );
        rig.reconfigure(&without_a);
        // Another endpoint takes the address (and, a change later, the slot).
        let replaced = without_a.replace(
            "endpoints:\n",
            "endpoints:\n  - { id: a2, service: orders, principal: p, consumer_network: vpc-a, ip: 10.0.0.100, zone: z1, state: available }\n",
        );
        rig.reconfigure(&replaced);
        let a2 = rig.endpoint("a2");
        assert_eq!(a2, slot, "the new endpoint has the old one's slot");
        let data = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"x");
        assert_eq!(
            rig.run("cons-a", &data).action,
            XDP_DROP,
            "the old flow went with its endpoint"
        );
        let reply = connection.by_target(ACK, TARGET_ISN + 1).frame(b"y");
        assert_eq!(rig.run("prov", &reply).action, XDP_DROP);
        assert!(rig.flows().is_empty(), "{:?}", rig.flows());
        assert_eq!(rig.counters().get(a2, counter::FORWARD).packets, 0);
        let counters = rig.counters();
        assert_eq!(
            counters.packets(counter::DROP_FLOW_GONE),
            1,
            "the data segment"
        );
        assert_eq!(
            counters.packets(counter::DROP_REPLY_NO_FLOW),
            1,
            "the reply, after"
        );
        // The new endpoint works on its own.
        rig.connect("cons-a", ENDPOINT, 40002);
        assert_eq!(rig.counters().get(a2, counter::FORWARD_NEW).packets, 1);
    });
}

#[test]
fn replies_stop_when_the_consumer_interface_moves_to_another_network() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        let moved = CONFIG.replace(
            "    - { name: cons-a, role: consumer, consumer_network: vpc-a }",
            "    - { name: cons-a, role: consumer, consumer_network: vpc-c }\n    - { name: prov2-peer, role: consumer, consumer_network: vpc-a }",
        );
        rig.reconfigure(&moved);
        let reply = connection.by_target(ACK, TARGET_ISN + 1).frame(b"y");
        assert_eq!(rig.run("prov", &reply).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_FLOW_GONE), 1);
    });
}
