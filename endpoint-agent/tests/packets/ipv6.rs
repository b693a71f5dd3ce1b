//! IPv6: neighbour solicitations answered like ARP, and TCP and UDP through the same
//! journey as IPv4 — checksums over the pseudo-header, hop limits, family-scoped flows
//! — with every output checked against checksums computed from scratch here.

use std::{net::Ipv6Addr, process::Command};

use endpoint_common::{
    counter,
    maps::{FAMILY_IPV6, PROTO_TCP},
};
use etherparse::{IpNumber, NetHeaders, PacketBuilder, PacketHeaders, TcpHeader, TransportHeader};

use crate::rig::*;

const CLIENT6: [u8; 16] = fd00(0xa, 0x10);
const ENDPOINT6: [u8; 16] = fd00(0xa, 0x100);
const GUARDED6: [u8; 16] = fd00(0xa, 0x104);
/// An IPv6 endpoint address of a service with IPv4 targets only.
const LEGACY6: [u8; 16] = fd00(0xa, 0x105);
const NAT6: [u8; 16] = fd00(0x16, 0x100);
const TARGETS6: [([u8; 16], [u8; 6]); 2] = [
    (fd00(0x16, 0x10), [2, 0, 0, 0, 0, 0x10]),
    (fd00(0x16, 0x11), [2, 0, 0, 0, 0, 0x11]),
];

/// `fd00:<subnet>::<host>`.
const fn fd00(subnet: u16, host: u16) -> [u8; 16] {
    Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, host).octets()
}

pub(crate) fn octets(text: &str) -> [u8; 16] {
    text.parse::<Ipv6Addr>().unwrap().octets()
}

const CONFIG6: &str = "
node:
  interfaces:
    - { name: cons-a, role: consumer, consumer_network: vpc-a }
    - { name: cons-b, role: consumer, consumer_network: vpc-b }
    - { name: prov, role: provider, nat_addresses: [172.16.0.100, 'fd00:16::100'] }
    - { name: prov2, role: provider }
  nat_ports: { first: 20000, last: 20999 }
  hash_seed: 11
services:
  - name: orders
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - name: nlb
        zone: z1
        health_check: { protocol: none }
        listeners:
          - port: 80
            targets:
              - { ip: 172.16.0.10, port: 8080 }
              - { ip: 'fd00:16::10', port: 8080 }
              - { ip: 'fd00:16::11', port: 8080 }
          - port: 53
            protocol: udp
            targets:
              - { ip: 172.16.0.10, port: 5353 }
              - { ip: 'fd00:16::10', port: 5353 }
  - name: legacy
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - name: nlb
        zone: z1
        health_check: { protocol: none }
        listeners:
          - port: 80
            targets: [{ ip: 172.16.0.10, port: 8080 }]
          - port: 53
            protocol: udp
            targets: [{ ip: 172.16.0.10, port: 5353 }]
endpoints:
  - id: a
    service: orders
    principal: p
    consumer_network: vpc-a
    addresses: [{ zone: z1, ip: 10.0.0.100 }, { zone: z1, ip: 'fd00:a::100' }]
    state: available
  - { id: b, service: orders, principal: p, consumer_network: vpc-b, ip: 'fd00:a::100', zone: z1, state: available }
  - { id: legacy, service: legacy, principal: p, consumer_network: vpc-a, ip: 'fd00:a::105', zone: z1, state: available }
  - id: guarded
    service: orders
    principal: p
    consumer_network: vpc-a
    ip: 'fd00:a::104'
    zone: z1
    state: available
    security_groups: [{ cidr: 'fd00:a::/120' }]
";

/// The rig's provider side with IPv6: the node's address, its targets' neighbours and
/// forwarding (a route lookup for IPv6 needs it on the interface it starts from).
fn with_rig6(test: impl FnOnce(&mut Rig) + Send) {
    with_rig_for(CONFIG6, |rig| {
        for command in [
            "sysctl -qw net.ipv6.conf.prov.disable_ipv6=0",
            "sysctl -qw net.ipv6.conf.prov.forwarding=1",
            "ip -6 addr add fd00:16::1/64 dev prov nodad",
        ] {
            run(command);
        }
        for (ip, mac) in TARGETS6 {
            let mac = mac.map(|b| format!("{b:02x}")).join(":");
            let ip = Ipv6Addr::from(ip);
            run(&format!(
                "ip -6 neigh replace {ip} lladdr {mac} dev prov nud permanent"
            ));
        }
        test(rig)
    })
}

/// Runs `command` in the rig's namespace (the test's thread is in it).
fn run(command: &str) {
    let mut words = command.split_whitespace();
    let status = Command::new(words.next().unwrap())
        .args(words)
        .status()
        .unwrap();
    assert!(status.success(), "{command}");
}

/// The one's complement sum of `bytes` folded, not complemented.
pub(crate) fn sum(bytes: &[u8]) -> u32 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The sum of an ICMPv6 message from `src` to `dst` over its pseudo-header.
pub(crate) fn icmpv6_sum(src: &[u8], dst: &[u8], message: &[u8]) -> u32 {
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst);
    pseudo.extend((message.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, 58]);
    pseudo.extend(message);
    sum(&pseudo)
}

/// Whether an ICMPv6 message's checksum over its pseudo-header is right.
pub(crate) fn icmpv6_checksum_ok(src: &[u8], dst: &[u8], message: &[u8]) -> bool {
    icmpv6_sum(src, dst, message) == 0xffff
}

/// The frame of an ICMPv6 message from `src` to `dst`, sent with `hop_limit` from MAC
/// `macs.0` to `macs.1`, its checksum computed here.
pub(crate) fn icmpv6(
    macs: ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    hop_limit: u8,
    mut message: Vec<u8>,
) -> Vec<u8> {
    let check = !(icmpv6_sum(&src, &dst, &message) as u16);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let mut frame = macs.1.to_vec();
    frame.extend(macs.0);
    frame.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend((message.len() as u16).to_be_bytes());
    frame.extend([58, hop_limit]);
    frame.extend(src);
    frame.extend(dst);
    frame.extend(message);
    frame
}

/// A neighbour solicitation for `target` from `src` (with its link-layer address
/// option, unless from `::`), to the target's solicited-node multicast address.
pub(crate) fn solicitation(src: [u8; 16], target: [u8; 16], hop_limit: u8) -> Vec<u8> {
    let mut group = octets("ff02::1:ff00:0");
    group[13..].copy_from_slice(&target[13..]);
    let mut message = vec![135, 0, 0, 0, 0, 0, 0, 0];
    message.extend(target);
    if src != [0; 16] {
        message.extend([1, 1]);
        message.extend(CLIENT_MAC);
    }
    let group_mac = [0x33, 0x33, 0xff, group[13], group[14], group[15]];
    icmpv6((CLIENT_MAC, group_mac), (src, group), hop_limit, message)
}

/// The ICMPv6 error a node sends about `frame` (IPv6) arriving from the client on an
/// interface with `mac`: `kind`, `info` (the MTU), from the address `frame` went to,
/// quoting its IPv6 header and 8 bytes.
fn icmpv6_error_about(frame: &[u8], mac: [u8; 6], kind: u8, info: u32) -> Vec<u8> {
    let mut message = vec![kind, 0, 0, 0];
    message.extend(info.to_be_bytes());
    message.extend(&frame[14..14 + 48]);
    let addresses = (
        frame[38..54].try_into().unwrap(),
        frame[22..38].try_into().unwrap(),
    );
    icmpv6(
        (mac, frame[6..12].try_into().unwrap()),
        addresses,
        64,
        message,
    )
}

#[test]
fn a_solicitation_for_an_endpoint_or_nat_address_is_answered_with_an_advertisement() {
    with_rig6(|rig| {
        let cons_a = rig.link("cons-a").mac;
        let out = rig.run("cons-a", &solicitation(CLIENT6, ENDPOINT6, 255));
        assert_ne!(out.action, XDP_DROP);
        assert_ne!(out.action, XDP_PASS);
        let f = &out.frame;
        assert_eq!(f.len(), 14 + 40 + 32, "bare advertisement: {f:02x?}");
        assert_eq!(f[0..6], CLIENT_MAC, "back to the asker");
        assert_eq!(f[6..12], cons_a, "from the interface's own MAC");
        assert_eq!(f[12..14], [0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32, "payload length");
        assert_eq!((f[20], f[21]), (58, 255), "ICMPv6, hop limit 255");
        assert_eq!(f[22..38], ENDPOINT6, "from the target address");
        assert_eq!(f[38..54], CLIENT6, "to the asker");
        let message = &f[54..];
        assert_eq!((message[0], message[1]), (136, 0), "an advertisement");
        assert_eq!(message[4], 0x60, "solicited and override, not a router");
        assert_eq!(message[8..24], ENDPOINT6);
        assert_eq!(message[24..26], [2, 1], "target link-layer address option");
        assert_eq!(message[26..32], cons_a);
        assert!(icmpv6_checksum_ok(&f[22..38], &f[38..54], message));
        assert_eq!(rig.counters().packets(counter::NEIGHBOUR_ADVERT), 1);

        // The NAT address on its provider interface.
        let prov = rig.link("prov").mac;
        let out = rig.run("prov", &solicitation(TARGETS6[0].0, NAT6, 255));
        assert_eq!(out.frame[6..12], prov);
        assert_eq!(out.frame[22..38], NAT6);
        assert!(icmpv6_checksum_ok(
            &out.frame[22..38],
            &out.frame[38..54],
            &out.frame[54..]
        ));
        assert_eq!(rig.counters().packets(counter::NEIGHBOUR_ADVERT), 2);
    });
}

#[test]
fn duplicate_address_detection_is_answered_to_all_nodes_and_the_rest_is_not_ours() {
    with_rig6(|rig| {
        // From `::`: to all nodes, not solicited; grown to carry our MAC.
        let out = rig.run("cons-a", &solicitation([0; 16], ENDPOINT6, 255));
        let f = &out.frame;
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(f[38..54], octets("ff02::1"));
        assert_eq!(f[54 + 4], 0x20, "override only");
        assert!(icmpv6_checksum_ok(&f[22..38], &f[38..54], &f[54..]));
        // Off-link (hop limit below 255), or an address that is not ours: not
        // answered; a consumer-only interface lets nothing else through.
        for frame in [
            solicitation(CLIENT6, ENDPOINT6, 64),
            solicitation(CLIENT6, octets("fd00:a::99"), 255),
            // The endpoint's address in the other network is vpc-b's, not vpc-a's...
            solicitation(CLIENT6, NAT6, 255),
        ] {
            assert_eq!(rig.run("cons-a", &frame).action, XDP_DROP);
        }
        // ... and on the provider side what is not ours goes to the kernel.
        let other = solicitation(TARGETS6[0].0, octets("fd00:16::1"), 255);
        assert_eq!(rig.run("prov", &other).action, XDP_PASS);
        assert_eq!(rig.counters().packets(counter::NEIGHBOUR_ADVERT), 1);
    });
}

/// A TCP/IPv6 segment's frame.
#[allow(clippy::too_many_arguments)]
fn tcp6(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    ports: (u16, u16),
    seq: u32,
    ack: Option<u32>,
    syn: bool,
) -> Vec<u8> {
    let mut builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, 64)
        .tcp(ports.0, ports.1, seq, 4096);
    if syn {
        builder = builder.syn();
    }
    if let Some(ack) = ack {
        builder = builder.ack(ack);
    }
    let mut frame = Vec::new();
    builder.write(&mut frame, b"").unwrap();
    frame
}

/// Parses a TCP/IPv6 frame, checking the TCP checksum from scratch.
fn parse6(frame: &[u8]) -> (etherparse::Ipv6Header, etherparse::TcpHeader) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("a TCP/IPv6 frame");
    let Some(NetHeaders::Ipv6(ip, _)) = headers.net else {
        panic!("not IPv6")
    };
    let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
        panic!("not TCP")
    };
    let payload = headers.payload.slice();
    assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv6(&ip, payload).unwrap(),
        "TCP checksum"
    );
    (ip, tcp)
}

#[test]
fn an_ipv6_syn_goes_to_an_ipv6_target_from_the_ipv6_nat_address_and_the_answer_comes_back() {
    with_rig6(|rig| {
        let (cons_a, prov) = (rig.link("cons-a").mac, rig.link("prov").mac);
        let syn = tcp6(
            (CLIENT_MAC, cons_a),
            CLIENT6,
            ENDPOINT6,
            (40000, 80),
            CLIENT_ISN,
            None,
            true,
        );
        let out = rig.run("cons-a", &syn);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (ip, tcp) = parse6(&out.frame);
        assert_eq!(ip.source, NAT6, "from the IPv6 NAT address");
        let target = TARGETS6
            .iter()
            .find(|(addr, _)| *addr == ip.destination)
            .expect("to an IPv6 target");
        assert_eq!(out.frame[0..6], target.1, "to the target's MAC");
        assert_eq!(out.frame[6..12], prov);
        assert_eq!(ip.hop_limit, 63);
        assert_eq!(tcp.destination_port, 8080);
        assert!((20000..=20999).contains(&tcp.source_port));
        assert_eq!(rig.counters().packets(counter::FORWARD_NEW), 1);
        let flows = rig.connections();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].0.family(), FAMILY_IPV6);
        assert_eq!(flows[0].0.proto(), PROTO_TCP);

        // The SYN-ACK, back through the endpoint address to the client.
        let syn_ack = tcp6(
            (target.1, prov),
            target.0,
            NAT6,
            (8080, tcp.source_port),
            TARGET_ISN,
            Some(CLIENT_ISN + 1),
            true,
        );
        let back = rig.run("prov", &syn_ack);
        assert_eq!(back.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (ip, tcp) = parse6(&back.frame);
        assert_eq!((ip.source, ip.destination), (ENDPOINT6, CLIENT6));
        assert_eq!((tcp.source_port, tcp.destination_port), (80, 40000));
        assert_eq!(back.frame[0..6], CLIENT_MAC);
        assert_eq!(back.frame[6..12], cons_a);
        assert_eq!(rig.counters().packets(counter::REPLY), 1);
        let ack = tcp6(
            (CLIENT_MAC, cons_a),
            CLIENT6,
            ENDPOINT6,
            (40000, 80),
            CLIENT_ISN + 1,
            Some(TARGET_ISN + 1),
            false,
        );
        assert_eq!(rig.run("cons-a", &ack).action, XDP_REDIRECT);
        assert_eq!(rig.counters().packets(counter::FORWARD), 1);
    });
}

#[test]
fn the_same_ipv6_tuple_in_two_networks_gets_two_flows_and_ipv4_and_ipv6_stay_apart() {
    with_rig6(|rig| {
        let syn_on = |rig: &Rig, link: &str| {
            tcp6(
                (CLIENT_MAC, rig.link(link).mac),
                CLIENT6,
                ENDPOINT6,
                (40000, 80),
                CLIENT_ISN,
                None,
                true,
            )
        };
        let a = syn_on(rig, "cons-a");
        let b = syn_on(rig, "cons-b");
        let (out_a, out_b) = (rig.run("cons-a", &a), rig.run("cons-b", &b));
        assert_eq!((out_a.action, out_b.action), (XDP_REDIRECT, XDP_REDIRECT));
        let (port_a, port_b) = (
            parse6(&out_a.frame).1.source_port,
            parse6(&out_b.frame).1.source_port,
        );
        assert_ne!(port_a, port_b, "two NAT ports");
        // The endpoint's IPv4 address from a client whose address is the IPv6 one's
        // first word: a flow of its own, to the IPv4 target.
        let v4 = syn_to(rig.link("cons-a").mac, ENDPOINT, 40000).frame(b"");
        let out = rig.run("cons-a", &v4);
        assert_eq!(out.action, XDP_REDIRECT);
        let (ip, _) = parse(&out.frame);
        assert_eq!(ip.destination, [172, 16, 0, 10]);
        assert_eq!(rig.connections().len(), 3);
    });
}

#[test]
fn ipv6_security_groups_admit_only_their_sources() {
    with_rig6(|rig| {
        let mac = rig.link("cons-a").mac;
        let from =
            |src: [u8; 16]| tcp6((CLIENT_MAC, mac), src, GUARDED6, (40001, 80), 1, None, true);
        let outsider = octets("fd00:a::1:10");
        assert_eq!(rig.run("cons-a", &from(outsider)).action, XDP_DROP);
        let slot = rig.endpoint("guarded");
        assert_eq!(
            rig.count("guarded", counter::DROP_SECURITY_GROUP),
            1,
            "slot {slot}"
        );
        assert_eq!(rig.run("cons-a", &from(CLIENT6)).action, XDP_REDIRECT);
    });
}

#[test]
fn ipv6_martians_extension_headers_and_udp_without_a_checksum_are_dropped() {
    with_rig6(|rig| {
        let mac = rig.link("cons-a").mac;
        for (src, why) in [
            (octets("::1"), "loopback"),
            (octets("fe80::1"), "link-local"),
            (octets("ff02::1"), "multicast"),
            (octets("::ffff:10.0.0.10"), "IPv4-mapped"),
            (ENDPOINT6, "the endpoint itself"),
        ] {
            let frame = tcp6(
                (CLIENT_MAC, mac),
                src,
                ENDPOINT6,
                (40000, 80),
                1,
                None,
                true,
            );
            assert_eq!(rig.run("cons-a", &frame).action, XDP_DROP, "{why}");
        }
        assert_eq!(rig.count("a", counter::DROP_MARTIAN), 5);

        // A hop-by-hop options header before TCP.
        let mut frame = tcp6(
            (CLIENT_MAC, mac),
            CLIENT6,
            ENDPOINT6,
            (40000, 80),
            1,
            None,
            true,
        );
        frame[20] = 0;
        frame.splice(54..54, [6, 0, 1, 4, 0, 0, 0, 0]);
        let length = u16::from_be_bytes([frame[18], frame[19]]) + 8;
        frame[18..20].copy_from_slice(&length.to_be_bytes());
        assert_eq!(rig.run("cons-a", &frame).action, XDP_DROP);
        assert_eq!(
            rig.counters().packets(counter::DROP_IPV6_EXTENSION),
            1,
            "{:?}",
            rig.counted()
        );

        // UDP over IPv6 must carry a checksum: one without opens nothing.
        let mut datagram = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, mac)
            .ipv6(CLIENT6, ENDPOINT6, 64)
            .udp(40000, 53)
            .write(&mut datagram, b"query")
            .unwrap();
        let mut unchecked = datagram.clone();
        unchecked[54 + 6..54 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(rig.run("cons-a", &unchecked).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_BAD_CHECKSUM), 1);
        assert!(rig.connections().is_empty());

        // With its checksum, it goes to the IPv6 UDP target, the checksum kept right.
        let out = rig.run("cons-a", &datagram);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let headers = PacketHeaders::from_ethernet_slice(&out.frame).unwrap();
        let (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Udp(udp))) =
            (headers.net, headers.transport)
        else {
            panic!("not UDP/IPv6")
        };
        assert_eq!((ip.source, ip.destination), (NAT6, TARGETS6[0].0));
        assert_eq!(ip.next_header, IpNumber::UDP);
        assert_eq!(udp.destination_port, 5353);
        assert_eq!(
            udp.checksum,
            udp.calc_checksum_ipv6(&ip, headers.payload.slice())
                .unwrap()
        );
    });
}

#[test]
fn a_hop_limit_that_runs_out_or_a_packet_too_big_is_told_to_its_ipv6_sender() {
    with_rig6(|rig| {
        let cons_a = rig.link("cons-a").mac;
        let mut syn = tcp6(
            (CLIENT_MAC, cons_a),
            CLIENT6,
            ENDPOINT6,
            (40000, 80),
            CLIENT_ISN,
            None,
            true,
        );
        syn[21] = 1;
        let out = rig.run("cons-a", &syn);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame, icmpv6_error_about(&syn, cons_a, 3, 0));
        assert_eq!(rig.count("a", counter::ICMP_TIME_EXCEEDED_SENT), 1);
        assert!(rig.flows().is_empty(), "the SYN opened nothing");

        // An established connection's segment longer than the provider link's 1500.
        syn[21] = 64;
        let out = rig.run("cons-a", &syn);
        let (ip, tcp) = parse6(&out.frame);
        let target = TARGETS6.iter().find(|(a, _)| *a == ip.destination).unwrap();
        let prov = rig.link("prov").mac;
        let syn_ack = tcp6(
            (target.1, prov),
            target.0,
            NAT6,
            (8080, tcp.source_port),
            TARGET_ISN,
            Some(CLIENT_ISN + 1),
            true,
        );
        assert_eq!(rig.run("prov", &syn_ack).action, XDP_REDIRECT);
        let data = |length: usize| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(CLIENT_MAC, cons_a)
                .ipv6(CLIENT6, ENDPOINT6, 64)
                .tcp(40000, 80, CLIENT_ISN + 1, 4096)
                .ack(TARGET_ISN + 1)
                .write(&mut frame, &vec![7; length])
                .unwrap();
            frame
        };
        assert_eq!(rig.run("cons-a", &data(1440)).action, XDP_REDIRECT);
        let long = data(1441);
        let out = rig.run("cons-a", &long);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame, icmpv6_error_about(&long, cons_a, 2, 1500));
        assert_eq!(rig.count("a", counter::ICMP_FRAG_NEEDED_SENT), 1);
    });
}

#[test]
fn a_consumer_can_ping_an_ipv6_endpoint_its_security_groups_admit() {
    with_rig6(|rig| {
        let cons_a = rig.link("cons-a").mac;
        let request = |src, dst| {
            let message = [128, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'].to_vec();
            icmpv6((CLIENT_MAC, cons_a), (src, dst), 64, message)
        };
        let out = rig.run("cons-a", &request(CLIENT6, ENDPOINT6));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let f = &out.frame;
        assert_eq!((&f[0..6], &f[6..12]), (&CLIENT_MAC[..], &cons_a[..]));
        assert_eq!((&f[22..38], &f[38..54]), (&ENDPOINT6[..], &CLIENT6[..]));
        assert_eq!(f[21], 64, "hop limit");
        assert_eq!(f[54], 129, "echo reply");
        assert_eq!(
            f[58..],
            [0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'],
            "id, sequence, data"
        );
        assert!(icmpv6_checksum_ok(&f[22..38], &f[38..54], &f[54..]));
        assert_eq!(rig.count("a", counter::ICMP_ECHO_REPLY), 1);
        // Outside the endpoint's security groups: not answered.
        let outsider = octets("fd00:a::1:10");
        assert_eq!(
            rig.run("cons-a", &request(outsider, GUARDED6)).action,
            XDP_DROP
        );
        assert_eq!(rig.count("guarded", counter::DROP_SECURITY_GROUP), 1);
    });
}

#[test]
fn a_provider_side_icmpv6_error_about_a_flow_reaches_its_consumer_translated() {
    with_rig6(|rig| {
        let (cons_a, prov) = (rig.link("cons-a").mac, rig.link("prov").mac);
        let mut datagram = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, cons_a)
            .ipv6(CLIENT6, ENDPOINT6, 64)
            .udp(40000, 53)
            .write(&mut datagram, b"query")
            .unwrap();
        let out = rig.run("cons-a", &datagram);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let target = TARGETS6[0];
        assert_eq!(out.frame[38..54], target.0);
        // The target's port is closed: destination unreachable, quoting what it got.
        let mut message = vec![1, 4, 0, 0, 0, 0, 0, 0];
        message.extend(&out.frame[14..14 + 48]);
        let error = icmpv6((target.1, prov), (target.0, NAT6), 64, message);
        let back = rig.run("prov", &error);
        assert_eq!(back.action, XDP_REDIRECT, "{:?}", rig.counted());
        let f = &back.frame;
        assert_eq!((&f[0..6], &f[6..12]), (&CLIENT_MAC[..], &cons_a[..]));
        assert_eq!((&f[22..38], &f[38..54]), (&ENDPOINT6[..], &CLIENT6[..]));
        assert_eq!(f[21], 63, "hop limit");
        assert_eq!((f[54], f[55]), (1, 4));
        // The quote is the datagram as the client sent it (its checksum too), but for
        // the hop it took.
        let mut sent = datagram[14..14 + 48].to_vec();
        sent[7] = 63;
        assert_eq!(f[62..], sent[..]);
        assert!(icmpv6_checksum_ok(&f[22..38], &f[38..54], &f[54..]));
        assert_eq!(rig.count("a", counter::ICMP_ERROR), 1);

        // Other ICMPv6 to the NAT address, or an error about no flow: dropped.
        let echo = icmpv6(
            (target.1, prov),
            (target.0, NAT6),
            64,
            vec![128, 0, 0, 0, 0, 1, 0, 1],
        );
        assert_eq!(rig.run("prov", &echo).action, XDP_DROP);
        let mut stray = vec![1, 4, 0, 0, 0, 0, 0, 0];
        let mut quote = out.frame[14..14 + 48].to_vec();
        quote[40..42].copy_from_slice(&20999u16.to_be_bytes());
        stray.extend(quote);
        let stray = icmpv6((target.1, prov), (target.0, NAT6), 64, stray);
        assert_eq!(rig.run("prov", &stray).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_ICMP), 2);
    });
}

#[test]
fn an_ipv6_endpoint_of_an_ipv4_service_translates_both_ways() {
    with_rig6(|rig| {
        let (cons_a, prov) = (rig.link("cons-a").mac, rig.link("prov").mac);
        let (target, target_mac) = TARGETS[0];
        let mut syn = tcp6(
            (CLIENT_MAC, cons_a),
            CLIENT6,
            LEGACY6,
            (40000, 80),
            CLIENT_ISN,
            None,
            true,
        );
        // Traffic class 0xb8 (EF), across the first two bytes.
        syn[14] = 0x60 | 0xb8 >> 4;
        syn[15] = 0x80;
        let out = rig.run("cons-a", &syn);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame.len(), syn.len() - 20, "an IPv4 header instead");
        // `parse` checks the IPv4 and TCP checksums from scratch.
        let (ip, tcp) = parse(&out.frame);
        assert_eq!((ip.source, ip.destination), (NAT, target));
        assert_eq!(ip.time_to_live, 63);
        assert!(ip.dont_fragment);
        assert_eq!(ip.identification, 0);
        assert_eq!(
            ip.dscp.value() << 2 | ip.ecn.value(),
            0xb8,
            "TOS from the class"
        );
        assert_eq!(tcp.destination_port, 8080);
        assert_eq!(out.frame[0..6], target_mac);
        assert_eq!(out.frame[6..12], prov);
        let nat_port = tcp.source_port;

        // The SYN-ACK comes back as IPv6, its MSS held to the IPv6 side (1500 - 60).
        let mut header = TcpHeader::new(8080, nat_port, TARGET_ISN, 4096);
        header.syn = true;
        header.ack = true;
        header.acknowledgment_number = CLIENT_ISN + 1;
        header.set_options_raw(&[2, 4, 0x05, 0xb4]).unwrap();
        let mut syn_ack = Vec::new();
        PacketBuilder::ethernet2(target_mac, prov)
            .ipv4(target, NAT, 64)
            .tcp_header(header)
            .write(&mut syn_ack, b"")
            .unwrap();
        let back = rig.run("prov", &syn_ack);
        assert_eq!(back.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(back.frame.len(), syn_ack.len() + 20);
        let (ip, tcp) = parse6(&back.frame);
        assert_eq!((ip.source, ip.destination), (LEGACY6, CLIENT6));
        assert_eq!(ip.hop_limit, 63);
        assert_eq!((tcp.source_port, tcp.destination_port), (80, 40000));
        assert_eq!(tcp.options.as_slice(), [2, 4, 0x05, 0xa0], "MSS 1440");
        assert_eq!(back.frame[0..6], CLIENT_MAC);
        assert_eq!(back.frame[6..12], cons_a);

        // UDP both ways; an IPv4 answer without a checksum cannot become IPv6.
        let mut datagram = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, cons_a)
            .ipv6(CLIENT6, LEGACY6, 64)
            .udp(40001, 53)
            .write(&mut datagram, b"query")
            .unwrap();
        let out = rig.run("cons-a", &datagram);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (ip, udp, payload) = parse_udp(&out.frame);
        assert_eq!((ip.source, ip.destination), (NAT, target));
        assert_eq!(udp.checksum, udp.calc_checksum_ipv4(&ip, &payload).unwrap());
        let answer = |checksum: bool| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(target_mac, prov)
                .ipv4(target, NAT, 64)
                .udp(5353, udp.source_port)
                .write(&mut frame, b"answer")
                .unwrap();
            if !checksum {
                frame[34 + 6..34 + 8].copy_from_slice(&[0, 0]);
            }
            frame
        };
        assert_eq!(rig.run("prov", &answer(false)).action, XDP_DROP);
        assert_eq!(rig.count("legacy", counter::DROP_BAD_CHECKSUM), 1);
        let back = rig.run("prov", &answer(true));
        assert_eq!(back.action, XDP_REDIRECT);
        let headers = PacketHeaders::from_ethernet_slice(&back.frame).unwrap();
        let (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Udp(udp))) =
            (headers.net, headers.transport)
        else {
            panic!("not UDP/IPv6")
        };
        assert_eq!((ip.source, ip.destination), (LEGACY6, CLIENT6));
        assert_eq!((udp.source_port, udp.destination_port), (53, 40001));
        assert_eq!(
            udp.checksum,
            udp.calc_checksum_ipv6(&ip, headers.payload.slice())
                .unwrap()
        );
        assert_eq!(headers.payload.slice(), b"answer");
    });
}

/// An ICMPv4 error (`kind`, `code`, next-hop `mtu`) from a target to the NAT address,
/// quoting the IPv4 header and 8 bytes of `forwarded` (what the node sent it).
fn icmpv4_error(rig: &Rig, kind: u8, code: u8, mtu: u16, forwarded: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0];
    icmp.extend(mtu.to_be_bytes());
    icmp.extend(&forwarded[14..14 + 28]);
    let check = !(sum(&icmp) as u16);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, (20 + icmp.len()) as u8, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend(TARGETS[0].0);
    ip.extend(NAT);
    let check = !(sum(&ip) as u16);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut frame = rig.link("prov").mac.to_vec();
    frame.extend(TARGETS[0].1);
    frame.extend([0x08, 0x00]);
    frame.extend(ip);
    frame.extend(icmp);
    frame
}

#[test]
fn an_icmpv4_error_about_a_translated_flow_reaches_its_ipv6_consumer_as_icmpv6() {
    with_rig6(|rig| {
        let cons_a = rig.link("cons-a").mac;
        // UDP to a closed port: port unreachable.
        let mut datagram = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, cons_a)
            .ipv6(CLIENT6, LEGACY6, 64)
            .udp(40001, 53)
            .write(&mut datagram, b"query")
            .unwrap();
        let forwarded = rig.run("cons-a", &datagram).frame;
        let out = rig.run("prov", &icmpv4_error(rig, 3, 3, 0, &forwarded));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let f = &out.frame;
        assert_eq!(f.len(), 14 + 40 + 8 + 48);
        assert_eq!((&f[0..6], &f[6..12]), (&CLIENT_MAC[..], &cons_a[..]));
        assert_eq!((&f[22..38], &f[38..54]), (&LEGACY6[..], &CLIENT6[..]));
        assert_eq!((f[20], f[21]), (58, 63), "ICMPv6, one hop on");
        assert_eq!(
            f[54..62],
            [1, 4, f[56], f[57], 0, 0, 0, 0],
            "port unreachable"
        );
        // The quote is the datagram as the client sent it, one hop on (its checksum
        // too, carried back across the families).
        let mut sent = datagram[14..14 + 48].to_vec();
        sent[7] = 63;
        assert_eq!(f[62..], sent[..]);
        assert!(icmpv6_checksum_ok(&f[22..38], &f[38..54], &f[54..]));
        assert_eq!(rig.count("legacy", counter::ICMP_ERROR), 1);

        // TCP: a router on the IPv4 side says the path is 1400: 1420 on the IPv6 side.
        let syn = tcp6(
            (CLIENT_MAC, cons_a),
            CLIENT6,
            LEGACY6,
            (40002, 80),
            CLIENT_ISN,
            None,
            true,
        );
        let forwarded = rig.run("cons-a", &syn).frame;
        let out = rig.run("prov", &icmpv4_error(rig, 3, 4, 1400, &forwarded));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let f = &out.frame;
        assert_eq!((f[54], f[55]), (2, 0), "packet too big");
        assert_eq!(f[58..62], 1420u32.to_be_bytes());
        let mut sent = syn[14..14 + 48].to_vec();
        sent[7] = 63;
        assert_eq!(f[62..], sent[..]);
        assert!(icmpv6_checksum_ok(&f[22..38], &f[38..54], &f[54..]));

        // What means nothing in ICMPv6 (a parameter problem) is dropped.
        let out = rig.run("prov", &icmpv4_error(rig, 12, 0, 0, &forwarded));
        assert_eq!(out.action, XDP_DROP);
        assert_eq!(rig.count("legacy", counter::DROP_ICMP), 1);
    });
}
