//! MSS clamping: a SYN (consumer to target) and a SYN-ACK (target to consumer) announce
//! no larger MSS than both sides' MTUs allow, or the service's `mss`; the TCP checksum
//! stays right wherever the option sits. The MTU-driven case runs end to end (e2e
//! `mtu`): here every link has 1500, and the service's `mss` is what lowers it.

use endpoint_common::counter;
use etherparse::{PacketBuilder, TcpHeader};

use crate::rig::*;

/// `orders` with `mss: 1000`.
fn config() -> String {
    CONFIG.replacen("  - name: orders\n", "  - name: orders\n    mss: 1000\n", 1)
}

/// The frame of `s` with these raw TCP options.
fn with_options(s: &Segment, options: &[u8]) -> Vec<u8> {
    let mut tcp = TcpHeader::new(s.sport, s.dport, s.seq, s.window);
    tcp.syn = s.flags & SYN != 0;
    if let Some(ack) = s.ack {
        tcp.ack = true;
        tcp.acknowledgment_number = ack;
    }
    tcp.set_options_raw(options).unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(s.mac_src, s.mac_dst)
        .ipv4(s.src, s.dst, s.ttl)
        .tcp_header(tcp)
        .write(&mut frame, b"")
        .unwrap();
    frame
}

/// MSS 1460, SACK permitted, timestamps, NOP, window scale 7 (as Linux sends them).
fn linux_options(mss: u16) -> Vec<u8> {
    let mut options = vec![2, 4];
    options.extend(mss.to_be_bytes());
    options.extend([4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);
    options
}

#[test]
fn the_mss_of_a_syn_and_of_its_syn_ack_is_lowered_to_the_services() {
    with_rig_for(&config(), |rig| {
        let cons = rig.link("cons-a");
        let syn = syn_to(cons.mac, ENDPOINT, 40000);
        let out = rig.run("cons-a", &with_options(&syn, &linux_options(1460)));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (ip, tcp) = parse(&out.frame);
        let translated = Segment {
            mac_src: rig.link("prov").mac,
            mac_dst: TARGETS
                .iter()
                .find(|(t, _)| *t == ip.destination)
                .unwrap()
                .1,
            src: NAT,
            dst: ip.destination,
            sport: tcp.source_port,
            dport: 8080,
            ttl: 63,
            ..syn
        };
        assert_eq!(out.frame, with_options(&translated, &linux_options(1000)));

        let connection = Connection {
            interface: "cons-a".into(),
            client: syn,
            target: ip.destination,
            target_port: 8080,
            nat_port: tcp.source_port,
        };
        let syn_ack = connection.by_target(SYN | ACK, TARGET_ISN);
        let out = rig.run("prov", &with_options(&syn_ack, &linux_options(8960)));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
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
        assert_eq!(out.frame, with_options(&back, &linux_options(1000)));
        assert_eq!(rig.count("a", counter::MSS_CLAMPED), 2);
    });
}

#[test]
fn an_mss_at_an_odd_offset_keeps_the_checksum_right_and_a_small_one_is_left_alone() {
    with_rig_for(&config(), |rig| {
        let cons = rig.link("cons-a");
        // One NOP first: the MSS value starts at an odd offset of the header.
        let syn = syn_to(cons.mac, ENDPOINT, 40001);
        let out = rig.run("cons-a", &with_options(&syn, &[1, 2, 4, 5, 0xb4, 0, 0, 0]));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (_, tcp) = parse(&out.frame);
        assert_eq!(tcp.options.as_slice(), &[1, 2, 4, 3, 0xe8, 0, 0, 0]);

        // Already small enough, or no option at all: untouched.
        for (sport, options) in [(40002, linux_options(536)), (40003, vec![])] {
            let syn = syn_to(cons.mac, ENDPOINT, sport);
            let out = rig.run("cons-a", &with_options(&syn, &options));
            assert_eq!(out.action, XDP_REDIRECT);
            let (_, tcp) = parse(&out.frame);
            assert_eq!(tcp.options.as_slice(), options.as_slice());
        }
        assert_eq!(rig.count("a", counter::MSS_CLAMPED), 1);
    });
}

#[test]
fn without_a_service_mss_the_1500_byte_links_allow_1460() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let syn = syn_to(cons.mac, ENDPOINT, 40000);
        let out = rig.run("cons-a", &with_options(&syn, &linux_options(8960)));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (_, tcp) = parse(&out.frame);
        assert_eq!(&tcp.options.as_slice()[..4], &[2, 4, 0x05, 0xb4]);
        assert_eq!(rig.count("a", counter::MSS_CLAMPED), 1);
    });
}
