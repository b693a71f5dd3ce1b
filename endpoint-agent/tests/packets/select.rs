//! Select: new flows go to the target the agent's Maglev ring says (the agent predicts
//! it), established ones stay on theirs, and the route follows the network.

use std::net::Ipv4Addr;

use endpoint_common::maps::{Addr, EndpointKey, FAMILY_IPV4, PROTO_TCP};

use crate::rig::*;

#[test]
fn the_kernel_picks_the_target_the_agent_predicts_for_every_flow() {
    with_rig(|rig| {
        let weighted = CONFIG.replacen(
            "              - { ip: 172.16.0.11, port: 8080 }",
            "              - { ip: 172.16.0.11, port: 8080, weight: 3 }",
            1,
        );
        rig.reconfigure(&weighted);
        let mac = rig.link("cons-a").mac;
        let mut on_second = 0;
        for port in 0..400u16 {
            let syn = syn_to(mac, ENDPOINT, 20000 + port);
            let out = rig.run("cons-a", &syn.frame(b""));
            assert_eq!(out.action, XDP_REDIRECT);
            let (ip, _) = parse(&out.frame);
            let predicted = rig.predicted_target(1, ENDPOINT, &flow_key(1, &syn));
            assert_eq!(ip.destination, predicted, "flow from port {}", 20000 + port);
            if ip.destination == TARGETS[1].0 {
                on_second += 1;
            }
        }
        // Weight 3 of 4: about 300 of 400.
        assert!(
            (250..350).contains(&on_second),
            "{on_second} of 400 on the weight-3 target"
        );
    });
}

#[test]
fn established_flows_keep_their_target_when_it_is_drained_or_removed() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        // Open connections until one lands on the first target.
        let first = (0..50u16)
            .map(|port| rig.connect("cons-a", ENDPOINT, 30000 + port))
            .find(|c| c.target == TARGETS[0].0)
            .expect("a connection on the first target");
        let follow_up = |c: &Connection| c.by_client(ACK, CLIENT_ISN + 1).frame(b"x");
        for (round, (change, text)) in [
            (
                "drained",
                CONFIG.replacen(
                    "{ ip: 172.16.0.10, port: 8080 }",
                    "{ ip: 172.16.0.10, port: 8080, weight: 0 }",
                    1,
                ),
            ),
            (
                "removed",
                CONFIG.replacen("              - { ip: 172.16.0.10, port: 8080 }\n", "", 1),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            rig.reconfigure(&text);
            let (ip, _) = parse(&rig.run("cons-a", &follow_up(&first)).frame);
            assert_eq!(
                ip.destination, TARGETS[0].0,
                "an established flow moved when its target was {change}"
            );
            for port in 0..50u16 {
                // Fresh tuples: new flows, not the ones opened before.
                let syn = syn_to(mac, ENDPOINT, 40000 + 100 * round as u16 + port);
                let (ip, _) = parse(&rig.run("cons-a", &syn.frame(b"")).frame);
                assert_eq!(
                    ip.destination, TARGETS[1].0,
                    "a new flow went to the {change} target"
                );
            }
            rig.reconfigure(CONFIG);
        }
    });
}

#[test]
fn an_established_flow_follows_a_neighbour_change_within_a_second() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        let target = Ipv4Addr::from(connection.target).to_string();
        let data = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"x");
        let moved = [2, 0, 0, 0, 0, 0x77];
        std::process::Command::new("ip")
            .args([
                "neigh",
                "replace",
                &target,
                "lladdr",
                "02:00:00:00:00:77",
                "dev",
                "prov",
                "nud",
                "permanent",
            ])
            .status()
            .unwrap();
        // Within the second the kept route may still be used; after it, never.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out = rig.run("cons-a", &data);
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(out.frame[..6], moved, "the flow still goes to the old MAC");
    });
}

#[test]
fn names_that_would_join_alike_are_separate_services_with_their_own_targets() {
    with_rig(|rig| {
        // Service `a/b` with load balancer `c` and service `a` with load balancer `b/c`:
        // joined with slashes both would be `a/b/c/80`.
        let colliding = CONFIG.replacen(
            "endpoints:\n",
            "  - name: a/b
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - { name: c, zone: z1, listeners: [{ port: 80, targets: [{ ip: 172.16.0.10, port: 8001 }] }] }
  - name: a
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - { name: b/c, zone: z1, listeners: [{ port: 80, targets: [{ ip: 172.16.0.11, port: 8002 }] }] }
endpoints:
  - { id: to-ab, service: a/b, principal: p, consumer_network: vpc-a, ip: 10.0.0.110, zone: z1 }
  - { id: to-a, service: a, principal: p, consumer_network: vpc-a, ip: 10.0.0.111, zone: z1 }
",
            1,
        );
        rig.reconfigure(&colliding);
        let rings: std::collections::BTreeSet<u32> = ["to-ab", "to-a"]
            .iter()
            .map(|id| {
                let key = EndpointKey {
                    network: 1,
                    addr: Addr::ipv4(if *id == "to-ab" {
                        [10, 0, 0, 110]
                    } else {
                        [10, 0, 0, 111]
                    }),
                    port_be: 80u16.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_IPV4,
                };
                rig.pipeline.applied().contents.endpoints[&key].ring
            })
            .collect();
        assert_eq!(rings.len(), 2, "the two services share a ring");
        let mac = rig.link("cons-a").mac;
        for (endpoint, target) in [
            ([10, 0, 0, 110], ([172, 16, 0, 10], 8001)),
            ([10, 0, 0, 111], ([172, 16, 0, 11], 8002)),
        ] {
            for port in 0..20u16 {
                let out = rig.run("cons-a", &syn_to(mac, endpoint, 41000 + port).frame(b""));
                assert_eq!(out.action, XDP_REDIRECT);
                let (ip, tcp) = parse(&out.frame);
                assert_eq!(
                    (ip.destination, tcp.destination_port),
                    target,
                    "endpoint {endpoint:?} reached another service's target"
                );
            }
        }
    });
}
