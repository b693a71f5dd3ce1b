//! Reset: connections of an endpoint revoked (or deleted) with `on_revoke: reset` are
//! cut — each end gets a RST on its next segment — within a per-CPU budget, and only
//! segments of an existing flow are answered.

use endpoint_common::counter;
use etherparse::PacketBuilder;

use crate::rig::*;

/// CONFIG with endpoint `strict` (service `strict`, `on_revoke: reset`) rejected.
fn strict_rejected() -> String {
    CONFIG.replace(
        "ip: 10.0.0.105, zone: z1, state: available,",
        "ip: 10.0.0.105, zone: z1, state: rejected,",
    )
}

/// The RST answering a segment that acknowledged `ack`: from `from` to `to`.
fn rst(
    mac_src: [u8; 6],
    mac_dst: [u8; 6],
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    seq: u32,
) -> Vec<u8> {
    let mut ip =
        etherparse::Ipv4Header::new(20, 64, etherparse::IpNumber::TCP, from.0, to.0).unwrap();
    ip.dont_fragment = true;
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac_src, mac_dst)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(from.1, to.1, seq, 0)
        .rst()
        .write(&mut frame, b"")
        .unwrap();
    frame
}

#[test]
fn a_revoked_endpoint_with_reset_answers_both_ends_with_a_rst() {
    with_rig(|rig| {
        let client_side = rig.connect("cons-a", STRICT, 40000);
        let target_side = rig.connect("cons-a", STRICT, 40001);
        rig.reconfigure(&strict_rejected());
        // The client's next segment: a RST from the endpoint, seq = its ack.
        let data = client_side
            .by_client(ACK, CLIENT_ISN + 1)
            .frame(b"more data");
        let out = rig.run("cons-a", &data);
        assert_eq!(out.action, XDP_REDIRECT, "sent back out cons-a");
        let cons = rig.link("cons-a").mac;
        assert_eq!(
            out.frame,
            rst(
                cons,
                CLIENT_MAC,
                (STRICT, 80),
                (CLIENT, 40000),
                TARGET_ISN + 1
            )
        );
        parse(&out.frame);
        // The target's next segment: a RST from the NAT address and port.
        let data = target_side.by_target(ACK, TARGET_ISN + 1).frame(b"more");
        let out = rig.run("prov", &data);
        assert_eq!(out.action, XDP_REDIRECT, "sent back out prov");
        let target_mac = TARGETS
            .iter()
            .find(|(ip, _)| *ip == target_side.target)
            .unwrap()
            .1;
        assert_eq!(
            out.frame,
            rst(
                rig.link("prov").mac,
                target_mac,
                (NAT, target_side.nat_port),
                (target_side.target, 8080),
                CLIENT_ISN + 1
            )
        );
        assert_eq!(rig.count("strict", counter::RESET_SENT), 2);
        assert!(rig.flows().is_empty(), "both connections were cut");
        // A SYN is refused like any non-available endpoint's.
        let syn = syn_to(rig.link("cons-a").mac, STRICT, 40002).frame(b"");
        assert_eq!(rig.run("cons-a", &syn).action, XDP_DROP);
        assert_eq!(rig.count("strict", counter::DROP_STATE_REJECTED), 1);
        // A segment with no flow gets no RST: the node answers only its own connections.
        assert_eq!(rig.run("cons-a", &data).action, XDP_DROP);
        assert_eq!(rig.count("strict", counter::RESET_SENT), 2);
    });
}

#[test]
fn resets_are_sent_within_a_budget() {
    let stingy = strict_rejected().replace(
        "  hash_seed: 11",
        "  hash_seed: 11\n  limits: { resets_per_second: 1 }",
    );
    with_rig_for(
        &CONFIG.replace(
            "  hash_seed: 11",
            "  hash_seed: 11\n  limits: { resets_per_second: 1 }",
        ),
        |rig| {
            let cut: Vec<Connection> = (0..4)
                .map(|i| rig.connect("cons-a", STRICT, 40000 + i))
                .collect();
            rig.reconfigure(&stingy);
            // Four segments of cut connections at once: one RST a second, so at most
            // two (the runs may straddle a second), and the rest counted.
            let sent = cut
                .iter()
                .filter(|c| {
                    let data = c.by_client(ACK, CLIENT_ISN + 1).frame(b"x");
                    rig.run("cons-a", &data).action == XDP_REDIRECT
                })
                .count() as u64;
            assert!((1..=2).contains(&sent), "{sent} RSTs sent");
            assert_eq!(rig.count("strict", counter::RESET_SENT), sent);
            assert_eq!(rig.count("strict", counter::DROP_RESET_BUDGET), 4 - sent);
        },
    );
}
