//! Limits: a consumer network's handshakes, an endpoint's connections and its rate of
//! new ones are held to their limits, and only that consumer is.

use endpoint_common::counter;

use crate::rig::*;

#[test]
fn a_flood_from_one_network_fills_only_that_networks_handshakes() {
    let capped = CONFIG.replace(
        "  hash_seed: 11",
        "  hash_seed: 11\n  limits: { half_open_per_network: 3 }",
    );
    with_rig_for(&capped, |rig| {
        let mac = rig.link("cons-a").mac;
        // Handshakes that never complete: three get room.
        for port in 0..5u16 {
            rig.run("cons-a", &syn_to(mac, ENDPOINT, 30000 + port).frame(b""));
        }
        assert_eq!(rig.count("a", counter::FORWARD_NEW), 3);
        assert_eq!(rig.count("a", counter::DROP_HALF_OPEN_LIMIT), 2);
        // The other network is not held back.
        rig.connect("cons-b", ENDPOINT, 40000);
        rig.connect("cons-b", ENDPOINT, 40001);
        // Completed handshakes give their room back.
        assert_eq!(rig.expire(12), 3);
        rig.connect("cons-a", ENDPOINT, 40002);
    });
}

#[test]
fn an_endpoint_is_held_to_its_connections() {
    let limited = CONFIG.replace(
        "ip: 10.0.0.100, zone: z1, state: available }\n  - { id: b,",
        "ip: 10.0.0.100, zone: z1, state: available, limits: { connections: 2 } }\n  - { id: b,",
    );
    assert_ne!(limited, CONFIG);
    with_rig_for(&limited, |rig| {
        let first = rig.connect("cons-a", ENDPOINT, 40000);
        rig.connect("cons-a", ENDPOINT, 40001);
        let third = syn_to(rig.link("cons-a").mac, ENDPOINT, 40002).frame(b"");
        assert_eq!(rig.run("cons-a", &third).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_CONNECTION_LIMIT), 1);
        // Endpoint b (same service, another network) is not.
        for port in 0..3 {
            rig.connect("cons-b", ENDPOINT, 40000 + port);
        }
        // One closes: room again at once, while it lingers in the table.
        rig.run("cons-a", &first.by_client(RST, CLIENT_ISN + 1).frame(b""));
        assert_eq!(rig.run("cons-a", &third).action, XDP_REDIRECT);
        assert_eq!(rig.count("a", counter::DROP_CONNECTION_LIMIT), 1);
        // The closed one, and the third's handshake that never completed.
        assert_eq!(rig.expire(12), 2);
    });
}

#[test]
fn an_endpoint_is_held_to_its_rate_of_new_connections() {
    let limited = CONFIG.replace(
        "ip: 10.0.0.100, zone: z1, state: available }\n  - { id: b,",
        "ip: 10.0.0.100, zone: z1, state: available, limits: { new_connections_per_second: 2, burst: 3 } }\n  - { id: b,",
    );
    with_rig_for(&limited, |rig| {
        let mac = rig.link("cons-a").mac;
        // Back to back: the burst, then nothing until the pace allows.
        let opened = (0..6u16)
            .filter(|port| {
                rig.run("cons-a", &syn_to(mac, ENDPOINT, 30000 + port).frame(b""))
                    .action
                    == XDP_REDIRECT
            })
            .count();
        assert_eq!(opened, 3);
        assert_eq!(rig.count("a", counter::DROP_RATE_LIMIT), 3);
        std::thread::sleep(std::time::Duration::from_millis(600));
        let later = syn_to(mac, ENDPOINT, 31000).frame(b"");
        assert_eq!(
            rig.run("cons-a", &later).action,
            XDP_REDIRECT,
            "half a second later: one more"
        );
    });
}
