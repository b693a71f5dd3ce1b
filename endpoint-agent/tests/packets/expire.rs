//! Expire: what runs out leaves the table, both directions at once, decided in the
//! kernel with the stamps as they are then (the rig runs the agent's round ahead of
//! the clock).

use endpoint_common::{
    counter,
    maps::{Usage, name},
};

use crate::rig::*;

fn held(rig: &Rig) -> (u64, u64) {
    let usage: Usage = rig
        .pipeline
        .maps()
        .array::<Usage>(name::USAGE)
        .unwrap()
        .get(&rig.endpoint("a"), 0)
        .unwrap();
    (usage.connections, usage.half_open)
}

#[test]
fn idle_connections_expire_after_their_timeout_and_not_before() {
    with_rig(|rig| {
        rig.connect("cons-a", ENDPOINT, 40000);
        assert_eq!(rig.flows().len(), 2);
        assert_eq!(rig.expire(0), 0);
        // The service's idle timeout is 350 s by default.
        assert_eq!(rig.expire(340), 0);
        assert_eq!(rig.expire(352), 1);
        assert!(rig.flows().is_empty());
        assert_eq!(held(rig), (0, 0), "what it held is given back");
    });
}

#[test]
fn a_connection_used_after_the_scan_chose_it_stays() {
    with_rig(|rig| {
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        // The agent's scan sees an idle flow (it reads the table 352 s ahead) ...
        let key = flow_key(1, &connection.client);
        // ... but a packet uses it before the kernel decides: the kernel decides with
        // the stamp as it is then, at the same time, and keeps it.
        let data = connection.by_client(ACK, CLIENT_ISN + 1).frame(b"x");
        assert_eq!(rig.run("cons-a", &data).action, XDP_REDIRECT);
        assert_eq!(rig.expire_keys(&[key], 0), 0);
        assert_eq!(rig.flows().len(), 2);
    });
}

#[test]
fn a_handshake_that_never_completes_goes_after_its_timeout() {
    let quick = CONFIG.replace(
        "  hash_seed: 11",
        "  hash_seed: 11\n  timeouts: { handshake_seconds: 3 }",
    );
    with_rig_for(&quick, |rig| {
        let mac = rig.link("cons-a").mac;
        rig.run("cons-a", &syn_to(mac, ENDPOINT, 40000).frame(b""));
        assert_eq!(held(rig), (1, 1));
        assert_eq!(rig.expire(1), 0);
        assert_eq!(rig.expire(5), 1);
        assert!(rig.flows().is_empty());
        assert_eq!(held(rig), (0, 0));
    });
}

/// A flood's handshakes all go in the round after their time is up, not a batch a
/// second (one run of the program looks at 128).
#[test]
fn a_floods_handshakes_all_go_once_their_time_is_up() {
    let roomy = CONFIG.replace(
        "  hash_seed: 11",
        "  hash_seed: 11\n  timeouts: { handshake_seconds: 3 }",
    );
    with_rig_for(&roomy, |rig| {
        let mac = rig.link("cons-a").mac;
        for port in 0..1000u16 {
            rig.run("cons-a", &syn_to(mac, ENDPOINT, 20000 + port).frame(b""));
        }
        assert_eq!(held(rig), (1000, 1000));
        assert_eq!(rig.expire(5), 1000);
        assert_eq!(held(rig), (0, 0));
    });
}

#[test]
fn a_closed_connection_lingers_longer_when_the_target_closed_first() {
    with_rig(|rig| {
        // Closed by the client first: 10 s.
        let first = rig.connect("cons-a", ENDPOINT, 40000);
        rig.run(
            "cons-a",
            &first.by_client(FIN | ACK, CLIENT_ISN + 1).frame(b""),
        );
        rig.run(
            "prov",
            &first.by_target(FIN | ACK, TARGET_ISN + 1).frame(b""),
        );
        // Closed by the target first: 60 s (it holds the tuple in TIME_WAIT).
        let second = rig.connect("cons-a", ENDPOINT, 40001);
        rig.run(
            "prov",
            &second.by_target(FIN | ACK, TARGET_ISN + 1).frame(b""),
        );
        rig.run(
            "cons-a",
            &second.by_client(FIN | ACK, CLIENT_ISN + 1).frame(b""),
        );
        assert_eq!(rig.flows().len(), 4);
        assert_eq!(rig.expire(12), 1, "the one the client closed");
        assert_eq!(rig.flows().len(), 2);
        assert_eq!(rig.expire(30), 0, "not yet: TIME_WAIT");
        assert_eq!(rig.expire(62), 1);
        assert!(rig.flows().is_empty());
        assert_eq!(rig.counters().packets(counter::FORWARD_NEW), 2);
    });
}

#[test]
fn a_new_connection_on_a_closed_tuple_does_not_reuse_a_port_in_time_wait() {
    with_rig(|rig| {
        let old = rig.connect("cons-a", ENDPOINT, 40000);
        rig.run("prov", &old.by_target(FIN | ACK, TARGET_ISN + 1).frame(b""));
        rig.run(
            "cons-a",
            &old.by_client(FIN | ACK, CLIENT_ISN + 1).frame(b""),
        );
        // The client reuses its port at once: a new connection, a new NAT port (the old
        // one stays reserved while the target holds it in TIME_WAIT).
        let new = rig.connect("cons-a", ENDPOINT, 40000);
        assert!(
            (new.target, new.nat_port) != (old.target, old.nat_port),
            "the NAT port {} was reused during TIME_WAIT",
            old.nat_port
        );
        assert_eq!(
            rig.flows().len(),
            3,
            "the new connection and the reservation"
        );
        // The reservation goes after TIME_WAIT.
        assert_eq!(rig.expire(62), 1);
        assert_eq!(rig.flows().len(), 2);
    });
}
