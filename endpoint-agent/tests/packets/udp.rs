//! UDP: the first datagram to an available endpoint opens a flow, translated like a TCP
//! connection's (its own NAT port space: keys carry the protocol); replies come back;
//! the checksum is updated, stays absent when absent, and is never written as 0.

use endpoint_common::counter;

use crate::rig::*;

/// The `dns` service's UDP target.
const UDP_TARGET: ([u8; 4], u16) = ([172, 16, 0, 11], 5353);
const UDP_TARGET_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

/// Sends `datagram` from the client on `interface`; returns the NAT port it was given,
/// after checking the translated frame byte for byte.
fn open(rig: &mut Rig, interface: &str, datagram: &Datagram, payload: &[u8]) -> u16 {
    let out = rig.run(interface, &datagram.frame(payload));
    assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
    let (_, udp, _) = parse_udp(&out.frame);
    let nat_port = udp.source_port;
    assert!(
        (20000..=20999).contains(&nat_port),
        "NAT port {nat_port} out of range"
    );
    let translated = Datagram {
        mac_src: rig.link("prov").mac,
        mac_dst: UDP_TARGET_MAC,
        src: NAT,
        dst: UDP_TARGET.0,
        sport: nat_port,
        dport: UDP_TARGET.1,
        ttl: 63,
    };
    assert_eq!(out.frame, translated.frame(payload), "forward frame");
    nat_port
}

/// The target's answer to the NAT address and port.
fn answer(rig: &Rig, nat_port: u16) -> Datagram {
    Datagram {
        mac_src: UDP_TARGET_MAC,
        mac_dst: rig.link("prov").mac,
        src: UDP_TARGET.0,
        dst: NAT,
        sport: UDP_TARGET.1,
        dport: nat_port,
        ttl: 64,
    }
}

#[test]
fn a_datagram_opens_a_flow_and_the_answer_comes_back_from_the_endpoint() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let query = datagram_to(cons.mac, DNS, 40000);
        let nat_port = open(rig, "cons-a", &query, b"query");
        let flows = rig.connections();
        let (_, flow) = flows
            .iter()
            .find(|(key, _)| *key == query.key(1))
            .expect("a UDP flow under the datagram's key");
        assert_eq!(flow.proto, endpoint_common::maps::PROTO_UDP);

        let out = rig.run("prov", &answer(rig, nat_port).frame(b"answer"));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let back = Datagram {
            ttl: 63,
            ..query.answer(cons.mac, CLIENT_MAC)
        };
        assert_eq!(out.frame, back.frame(b"answer"), "reply frame");

        // The next datagram follows the same flow.
        let out = rig.run("cons-a", &query.frame(b"again"));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(parse_udp(&out.frame).1.source_port, nat_port);

        assert_eq!(rig.count("dns-a", counter::FORWARD_NEW), 1);
        assert_eq!(rig.count("dns-a", counter::FORWARD), 1);
        assert_eq!(rig.count("dns-a", counter::REPLY), 1);
    });
}

#[test]
fn a_datagram_without_a_checksum_keeps_none_both_ways() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let query = datagram_to(cons.mac, DNS, 40001);
        let out = rig.run("cons-a", &query.frame_without_checksum(b"query"));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (_, udp, _) = parse_udp(&out.frame);
        assert_eq!(udp.checksum, 0, "no checksum must stay none");
        let nat_port = udp.source_port;

        let out = rig.run(
            "prov",
            &answer(rig, nat_port).frame_without_checksum(b"answer"),
        );
        assert_eq!(out.action, XDP_REDIRECT);
        let back = Datagram {
            ttl: 63,
            ..query.answer(cons.mac, CLIENT_MAC)
        };
        assert_eq!(out.frame, back.frame_without_checksum(b"answer"));
    });
}

#[test]
fn a_checksum_that_comes_out_zero_is_written_as_ffff() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let query = datagram_to(cons.mac, DNS, 40002);
        let nat_port = open(rig, "cons-a", &query, b"open");
        // A payload whose last word makes the translated datagram's sum all ones: its
        // checksum computes to 0, which UDP must send as 0xFFFF (RFC 768).
        let translated = Datagram {
            mac_src: rig.link("prov").mac,
            mac_dst: UDP_TARGET_MAC,
            src: NAT,
            dst: UDP_TARGET.0,
            sport: nat_port,
            dport: UDP_TARGET.1,
            ttl: 63,
        };
        let mut payload = b"zero".to_vec();
        let sum =
            ones_sum(&translated.frame_without_checksum(&[payload.clone(), vec![0, 0]].concat()));
        payload.extend((!sum).to_be_bytes());
        let out = rig.run("cons-a", &query.frame(&payload));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (ip, udp, data) = parse_udp(&out.frame);
        assert_eq!(udp.checksum, 0xffff);
        assert_eq!(udp.calc_checksum_ipv4(&ip, &data).unwrap(), 0xffff);
        assert_eq!(out.frame, translated.frame(&payload));
    });
}

/// The one's complement sum (folded) of a UDP/IPv4 frame's pseudo-header, header and
/// payload.
fn ones_sum(frame: &[u8]) -> u16 {
    let udp = &frame[14 + 20..];
    let mut words: Vec<u16> = Vec::new();
    let mut push = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            words.push(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    push(&frame[14 + 12..14 + 20]);
    push(&[0, 17]);
    push(&(udp.len() as u16).to_be_bytes());
    push(udp);
    let mut sum: u32 = words.iter().map(|&w| w as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn tcp_and_udp_on_one_port_are_separate_listeners_and_flows() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let query = datagram_to(cons.mac, DNS, 40003);
        open(rig, "cons-a", &query, b"query");
        let syn = Segment {
            dport: 53,
            ..syn_to(cons.mac, DNS, 40003)
        };
        let out = rig.run("cons-a", &syn.frame(b""));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (ip, tcp) = parse(&out.frame);
        assert_eq!(
            (ip.destination, tcp.destination_port),
            ([172, 16, 0, 10], 5300),
            "the TCP listener's target"
        );
        let mut keys: Vec<_> = rig.connections().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, {
            let mut both = vec![query.key(1), flow_key(1, &syn)];
            both.sort();
            both
        });
    });
}

#[test]
fn the_same_client_in_two_overlapping_networks_gets_two_flows_that_never_cross() {
    with_rig(|rig| {
        let (cons_a, cons_b) = (rig.link("cons-a"), rig.link("cons-b"));
        let from_a = datagram_to(cons_a.mac, DNS, 40004);
        let from_b = datagram_to(cons_b.mac, DNS, 40004);
        let port_a = open(rig, "cons-a", &from_a, b"a");
        let port_b = open(rig, "cons-b", &from_b, b"b");
        assert_ne!(port_a, port_b, "one NAT port for two flows");
        for (nat_port, interface, mac) in [
            (port_b, "cons-b", cons_b.mac),
            (port_a, "cons-a", cons_a.mac),
        ] {
            let out = rig.run("prov", &answer(rig, nat_port).frame(b"answer"));
            assert_eq!(out.action, XDP_REDIRECT);
            let back = Datagram {
                ttl: 63,
                ..from_a.answer(mac, CLIENT_MAC)
            };
            assert_eq!(out.frame, back.frame(b"answer"), "answer for {interface}");
            let ifindex = rig.link(interface).ifindex;
            let flows = rig.flows();
            let (_, reply) = flows
                .iter()
                .find(|(k, _)| k.network() == 0 && u16::from_be(k.dst_port_be) == nat_port)
                .unwrap();
            assert_eq!(reply.ifindex, ifindex, "the answer's way out");
        }
        assert_eq!(rig.count("dns-a", counter::REPLY), 1);
        assert_eq!(rig.count("dns-b", counter::REPLY), 1);
    });
}

#[test]
fn a_security_group_rule_may_name_a_protocol() {
    let config = CONFIG.replace(
        "consumer_network: vpc-b, ip: 10.0.0.106, zone: z1, state: available }",
        "consumer_network: vpc-b, ip: 10.0.0.106, zone: z1, state: available, \
         security_groups: [{ cidr: 10.0.0.0/24, ports: [53], protocol: udp }] }",
    );
    assert_ne!(config, CONFIG);
    with_rig_for(&config, |rig| {
        // dns-b admits 10.0.0.0/24 to port 53 over UDP only.
        let cons = rig.link("cons-b");
        open(rig, "cons-b", &datagram_to(cons.mac, DNS, 40008), b"query");
        let syn = Segment {
            dport: 53,
            ..syn_to(cons.mac, DNS, 40008)
        };
        assert_eq!(rig.run("cons-b", &syn.frame(b"")).action, XDP_DROP);
        assert_eq!(rig.count("dns-b", counter::DROP_SECURITY_GROUP), 1);
    });
}

#[test]
fn a_udp_flow_goes_once_idle_for_its_services_udp_timeout() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let query = datagram_to(cons.mac, DNS, 40005);
        open(rig, "cons-a", &query, b"query");
        // The service's udp_idle_timeout_seconds is 30 (its TCP timeout is 350).
        rig.expire(20);
        assert_eq!(rig.flows().len(), 2, "gone before its timeout");
        rig.expire(40);
        assert!(rig.flows().is_empty(), "{:?}", rig.flows());
    });
}

#[test]
fn a_bad_checksum_or_length_opens_nothing() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let query = datagram_to(cons.mac, DNS, 40006);
        let mut frame = query.frame(b"query");
        frame[14 + 20 + 6] ^= 0x55;
        let out = rig.run("cons-a", &frame);
        assert_eq!(out.action, XDP_DROP);
        assert_eq!(rig.count("dns-a", counter::DROP_BAD_CHECKSUM), 1);

        // A UDP length that does not fill the IPv4 payload.
        let mut frame = query.frame(b"query");
        frame[14 + 20 + 5] -= 1;
        let out = rig.run("cons-a", &frame);
        assert_eq!(out.action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_MALFORMED), 1);

        // A header cut short, its length agreeing with the IPv4 one (7 and 27 bytes): the
        // rest lies in what follows the packet, and is no header.
        let mut frame = query.frame(b"");
        frame[14 + 3] = 27;
        frame[14 + 20 + 5] = 7;
        let frame = with_ip_checksum(frame);
        assert_eq!(rig.run("cons-a", &frame).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_MALFORMED), 2);
        assert!(rig.connections().is_empty());
    });
}

#[test]
fn udp_to_a_port_only_tcp_listens_on_is_not_endpoint_traffic() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let datagram = Datagram {
            dport: 80,
            ..datagram_to(cons.mac, ENDPOINT, 40007)
        };
        let out = rig.run("cons-a", &datagram.frame(b"x"));
        assert_eq!(out.action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_NOT_ENDPOINT), 1);
        assert!(rig.connections().is_empty());
    });
}
