//! TCP: the handshake is tracked, and a RST or FIN counts only where its receiver
//! expects it (RFC 5961): spoofed ones end nobody's connection.

use endpoint_common::{
    counter,
    maps::{Usage, name, tcp},
};

use crate::rig::*;

fn usage(rig: &Rig, endpoint: &str) -> Usage {
    rig.pipeline
        .maps()
        .array::<Usage>(name::USAGE)
        .unwrap()
        .get(&rig.endpoint(endpoint), 0)
        .unwrap()
}

/// The consumer-to-target entry's TCP bits.
fn bits(rig: &Rig) -> u64 {
    let connections = rig.connections();
    assert_eq!(connections.len(), 1, "{connections:?}");
    connections[0].1.tcp
}

#[test]
fn a_connection_is_half_open_until_the_handshake_completes() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let syn = syn_to(mac, ENDPOINT, 40000);
        rig.run("cons-a", &syn.frame(b""));
        assert_eq!(
            (usage(rig, "a").connections, usage(rig, "a").half_open),
            (1, 1)
        );
        let (ip, tcp_header) = parse(&rig.run("cons-a", &syn.frame(b"")).frame);
        let connection = Connection {
            interface: "cons-a".into(),
            client: syn,
            target: ip.destination,
            target_port: 8080,
            nat_port: tcp_header.source_port,
        };
        // Data before the target answered does not fit.
        let early = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"early");
        assert_eq!(rig.run("cons-a", &early).action, XDP_DROP);
        // A SYN-ACK that does not acknowledge the SYN is not from this connection.
        let wrong = connection
            .by_target(SYN | ACK, TARGET_ISN)
            .with(SYN | ACK, TARGET_ISN, 77);
        assert_eq!(rig.run("prov", &wrong.frame(b"")).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_OUT_OF_STATE), 2);
        let syn_ack = connection.by_target(SYN | ACK, TARGET_ISN).frame(b"");
        assert_eq!(rig.run("prov", &syn_ack).action, XDP_REDIRECT);
        assert_eq!(bits(rig) & tcp::ESTABLISHED, 0);
        let ack = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"");
        assert_eq!(rig.run("cons-a", &ack).action, XDP_REDIRECT);
        assert_ne!(bits(rig) & tcp::ESTABLISHED, 0);
        assert_eq!(
            (usage(rig, "a").connections, usage(rig, "a").half_open),
            (1, 0)
        );
    });
}

#[test]
fn resets_count_only_at_the_receivers_next_number() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        // The client acknowledged TARGET_ISN + 1 with a 4096-byte window.
        let rst = |seq| connection.by_target(RST, seq).frame(b"");
        // Far outside the window: dropped, the connection untouched.
        assert_eq!(
            rig.run("prov", &rst(TARGET_ISN + 1 + 1_000_000)).action,
            XDP_DROP
        );
        assert_eq!(rig.count("a", counter::DROP_OUT_OF_WINDOW), 1);
        assert_eq!(bits(rig) & tcp::RESET, 0);
        // In the window but not exact: the client decides (RFC 5961 challenge ACK).
        assert_eq!(rig.run("prov", &rst(TARGET_ISN + 100)).action, XDP_REDIRECT);
        assert_eq!(bits(rig) & tcp::RESET, 0);
        // Exact: the connection is reset, and closes.
        assert_eq!(rig.run("prov", &rst(TARGET_ISN + 1)).action, XDP_REDIRECT);
        assert_ne!(bits(rig) & tcp::RESET, 0);
        assert_ne!(bits(rig) & tcp::CLOSE_QUEUED, 0);
        // The two in the window were received (and passed on), not the one outside.
        assert_eq!(rig.count("a", counter::RESET_RECEIVED), 2);
    });
}

#[test]
fn fins_are_tracked_per_direction_and_a_half_closed_connection_lives_on() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        // A FIN without ACK, or with RST, is no segment of a connection.
        for flags in [FIN, FIN | RST, FIN | RST | ACK] {
            let odd = connection.by_client(flags, CLIENT_ISN + 1).frame(b"");
            assert_eq!(rig.run("cons-a", &odd).action, XDP_DROP, "{flags:#x}");
            let odd = connection.by_target(flags, TARGET_ISN + 1).frame(b"");
            assert_eq!(rig.run("prov", &odd).action, XDP_DROP, "{flags:#x}");
        }
        assert_eq!(rig.count("a", counter::DROP_BAD_FLAGS), 6);
        assert_eq!(
            bits(rig) & (tcp::FIN_CONSUMER | tcp::FIN_TARGET | tcp::RESET),
            0
        );
        // A FIN far outside the target's window (spoofed) is dropped.
        let spoofed = connection
            .by_client(FIN | ACK, CLIENT_ISN + 1 + 5_000_000)
            .frame(b"");
        assert_eq!(rig.run("cons-a", &spoofed).action, XDP_DROP);
        assert_eq!(bits(rig) & tcp::FIN_CONSUMER, 0);
        // The client closes its side; the target still sends (a slow server answering).
        let fin = connection.by_client(FIN | ACK, CLIENT_ISN + 1).frame(b"");
        assert_eq!(rig.run("cons-a", &fin).action, XDP_REDIRECT);
        assert_ne!(bits(rig) & tcp::FIN_CONSUMER, 0);
        assert!(!tcp::closed(bits(rig)));
        assert_eq!(rig.expire(30), 0, "a half-closed connection is not closed");
        let late = connection
            .by_target(ACK, TARGET_ISN + 1)
            .frame(b"the answer, late");
        assert_eq!(rig.run("prov", &late).action, XDP_REDIRECT);
        let fin = connection.by_target(FIN | ACK, TARGET_ISN + 17).frame(b"");
        assert_eq!(rig.run("prov", &fin).action, XDP_REDIRECT);
        assert!(tcp::closed(bits(rig)));
        assert_eq!(
            bits(rig) & tcp::TARGET_CLOSED_FIRST,
            0,
            "the client closed first"
        );
    });
}
