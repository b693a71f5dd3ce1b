//! ICMP: the node's own errors (fragmentation needed with the next-hop MTU, time
//! exceeded) from the address the packet was sent to, echo replies from endpoints, all
//! within a per-CPU budget; provider-side errors about a flow translated back to its
//! consumer (RFC 5508). Expected frames are built here byte by byte, every checksum
//! computed from scratch.

use endpoint_common::counter;

use crate::rig::*;

/// The RFC 1071 checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header as the node writes its own errors: tos 0xc0, id 0, no DF, TTL 64.
fn error_ip_header(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let len = (20 + payload) as u16;
    let mut ip = vec![0x45, 0xc0];
    ip.extend(len.to_be_bytes());
    ip.extend([0, 0, 0, 0, 64, 1, 0, 0]);
    ip.extend(src);
    ip.extend(dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// The ICMP error frame the node sends about `frame`: from `mac_src` to the frame's
/// sender, from the address the frame was sent to, quoting its IPv4 header and 8 bytes.
fn error_about(frame: &[u8], mac_src: [u8; 6], kind: u8, code: u8, mtu: u16) -> Vec<u8> {
    let quote = &frame[14..42];
    let mut icmp = vec![kind, code, 0, 0, 0, 0];
    icmp.extend(mtu.to_be_bytes());
    icmp.extend(quote);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut out = frame[6..12].to_vec();
    out.extend(mac_src);
    out.extend([0x08, 0x00]);
    out.extend(error_ip_header(
        frame[30..34].try_into().unwrap(),
        frame[26..30].try_into().unwrap(),
        icmp.len(),
    ));
    out.extend(icmp);
    out
}

/// An echo request from `src` to `dst`, sent to `mac`.
fn ping(mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut frame, b"are you there")
        .unwrap();
    frame
}

#[test]
fn a_packet_with_df_too_big_for_the_way_out_is_answered_with_fragmentation_needed() {
    with_rig(|rig| {
        let (cons, prov) = (rig.link("cons-a"), rig.link("prov"));
        let connection = rig.connect("cons-a", ENDPOINT, 40000);
        // Consumer to target: from the endpoint's address, the provider link's MTU.
        let long = connection.by_client(ACK, CLIENT_ISN + 1).frame(&[7; 1461]);
        let out = rig.run("cons-a", &long);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame, error_about(&long, cons.mac, 3, 4, 1500));
        assert_eq!(&out.frame[26..30], &ENDPOINT, "from the endpoint");

        // Target to consumer: from the NAT address, the consumer link's MTU.
        let long = connection.by_target(ACK, TARGET_ISN + 1).frame(&[7; 1900]);
        let out = rig.run("prov", &long);
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(out.frame, error_about(&long, prov.mac, 3, 4, 1500));
        assert_eq!(rig.count("a", counter::ICMP_FRAG_NEEDED_SENT), 2);

        // A first datagram too big for the route: the route lookup's MTU.
        let query = datagram_to(cons.mac, DNS, 40001).frame(&[1; 1600]);
        let out = rig.run("cons-a", &query);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame, error_about(&query, cons.mac, 3, 4, 1500));
        assert_eq!(rig.count("dns-a", counter::ICMP_FRAG_NEEDED_SENT), 1);
        assert!(
            rig.connections().iter().all(|(k, _)| k.proto() == 6),
            "the datagram opened no flow"
        );
        // The connection is not harmed.
        let fits = connection.by_client(ACK, CLIENT_ISN + 1).frame(&[7; 1460]);
        assert_eq!(rig.run("cons-a", &fits).action, XDP_REDIRECT);
    });
}

#[test]
fn a_ttl_that_runs_out_here_is_answered_with_time_exceeded_but_only_where_admitted() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let syn = Segment {
            ttl: 1,
            ..syn_to(cons.mac, ENDPOINT, 40000)
        }
        .frame(b"");
        let out = rig.run("cons-a", &syn);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame, error_about(&syn, cons.mac, 11, 0, 0));
        assert_eq!(rig.count("a", counter::ICMP_TIME_EXCEEDED_SENT), 1);
        assert!(rig.flows().is_empty(), "the SYN opened nothing");

        // An endpoint that is not available says nothing: a traceroute learns nothing.
        let to_pending = Segment {
            ttl: 1,
            ..syn_to(cons.mac, PENDING, 40000)
        }
        .frame(b"");
        assert_eq!(rig.run("cons-a", &to_pending).action, XDP_DROP);
        assert_eq!(
            rig.count("pending", counter::DROP_STATE_PENDING_ACCEPTANCE),
            1
        );
    });
}

#[test]
fn a_consumer_can_ping_an_available_endpoint_its_security_groups_admit() {
    with_rig(|rig| {
        let (cons_a, cons_b) = (rig.link("cons-a"), rig.link("cons-b"));
        let request = ping(cons_a.mac, CLIENT, ENDPOINT);
        let out = rig.run("cons-a", &request);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let mut reply = Vec::new();
        etherparse::PacketBuilder::ethernet2(cons_a.mac, CLIENT_MAC)
            .ipv4(ENDPOINT, CLIENT, 64)
            .icmpv4_echo_reply(7, 1)
            .write(&mut reply, b"are you there")
            .unwrap();
        assert_eq!(out.frame, reply);
        assert_eq!(rig.count("a", counter::ICMP_ECHO_REPLY), 1);

        // Not available: dropped as anything else to it.
        let out = rig.run("cons-a", &ping(cons_a.mac, CLIENT, PENDING));
        assert_eq!(out.action, XDP_DROP);
        assert_eq!(
            rig.count("pending", counter::DROP_STATE_PENDING_ACCEPTANCE),
            1
        );
        // Security groups: a source under any rule may ping; one outside may not.
        for (source, answered) in [
            ([10, 0, 0, 10], true),
            ([10, 0, 0, 20], true),
            ([10, 0, 1, 5], false),
        ] {
            let out = rig.run("cons-b", &ping(cons_b.mac, source, GUARDED));
            assert_eq!(out.action == XDP_REDIRECT, answered, "ping from {source:?}");
        }
        assert_eq!(rig.count("guarded", counter::ICMP_ECHO_REPLY), 2);
        assert_eq!(rig.count("guarded", counter::DROP_SECURITY_GROUP), 1);

        // Other ICMP to an endpoint is dropped: an echo reply, say.
        let mut reply_to_nobody = ping(cons_a.mac, CLIENT, ENDPOINT);
        reply_to_nobody[34] = 0;
        reply_to_nobody[36..38].copy_from_slice(&[0, 0]);
        let sum = checksum(&reply_to_nobody[34..]);
        reply_to_nobody[36..38].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(rig.run("cons-a", &reply_to_nobody).action, XDP_DROP);
        assert_eq!(rig.count("a", counter::DROP_ICMP), 1);
    });
}

#[test]
fn what_the_node_sends_of_its_own_is_held_to_its_budget() {
    let config = CONFIG.replace(
        "  hash_seed: 11",
        "  hash_seed: 11\n  limits: { icmp_per_second: 3 }",
    );
    with_rig_for(&config, |rig| {
        let cons = rig.link("cons-a");
        let request = ping(cons.mac, CLIENT, ENDPOINT);
        // The budget is per CPU: every run on one.
        // SAFETY: plain libc calls on this thread's affinity.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        // The budget is per second of the monotonic clock: six requests well inside one
        // second (starting just after one begins) get three answers, and three are held.
        // (Not in the first 20 ms either: the data path's coarse clock lags a tick.)
        let within = endpoint_agent::expiry::now_ns() % 1_000_000_000;
        if !(20_000_000..200_000_000).contains(&within) {
            let wait = (1_020_000_000 - within) % 1_000_000_000;
            std::thread::sleep(std::time::Duration::from_nanos(wait));
        }
        let second = endpoint_agent::expiry::now_s();
        let answered = (0..6)
            .filter(|_| rig.run("cons-a", &request).action == XDP_REDIRECT)
            .count();
        assert_eq!(
            endpoint_agent::expiry::now_s(),
            second,
            "the test took a second"
        );
        assert_eq!(answered, 3);
        assert_eq!(rig.count("a", counter::DROP_ICMP_BUDGET), 3);
    });
}

/// A provider-side ICMP error frame from `router` to the NAT address, quoting
/// `quoted` (an IPv4 frame the node sent towards a target).
fn provider_error(rig: &Rig, router: [u8; 4], kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let prov = rig.link("prov");
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend(&quoted[14..42]);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, (20 + icmp.len()) as u8, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend(router);
    ip.extend(NAT);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = prov.mac.to_vec();
    frame.extend(TARGETS[0].1);
    frame.extend([0x08, 0x00]);
    frame.extend(ip);
    frame.extend(icmp);
    frame
}

/// What the consumer must get for a provider error about `sent` (the frame the
/// consumer sent, and `forwarded`, what the node made of it): from the endpoint, its own
/// packet quoted (TTL as forwarded), every checksum right.
fn translated_error(rig: &Rig, kind: u8, code: u8, sent: &[u8], forwarded: &[u8]) -> Vec<u8> {
    let cons = rig.link("cons-a");
    let mut quote = sent[14..42].to_vec();
    quote[8] = forwarded[22]; // the TTL it left with
    quote[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&quote[..20]);
    quote[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend(quote);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, (20 + icmp.len()) as u8, 0, 0, 0, 0, 63, 1, 0, 0];
    ip.extend(&sent[30..34]);
    ip.extend(&sent[26..30]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = CLIENT_MAC.to_vec();
    frame.extend(cons.mac);
    frame.extend([0x08, 0x00]);
    frame.extend(ip);
    frame.extend(icmp);
    frame
}

#[test]
fn a_provider_side_error_about_a_flow_reaches_its_consumer_translated() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        // UDP: the target's port is closed.
        let query = datagram_to(cons.mac, DNS, 40000);
        let sent = query.frame(b"query");
        let forwarded = rig.run("cons-a", &sent).frame;
        let error = provider_error(rig, [172, 16, 0, 11], 3, 3, &forwarded);
        let out = rig.run("prov", &error);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame, translated_error(rig, 3, 3, &sent, &forwarded));
        assert_eq!(rig.count("dns-a", counter::ICMP_ERROR), 1);

        // TCP: a router on the way says the path is narrower.
        let connection = rig.connect("cons-a", ENDPOINT, 40001);
        let sent = connection.by_client(ACK, CLIENT_ISN + 1).frame(&[7; 1000]);
        let forwarded = rig.run("cons-a", &sent).frame;
        let mut error = provider_error(rig, [172, 16, 0, 1], 3, 4, &forwarded);
        // Next-hop MTU 1400, in the header (the checksum follows).
        error[34 + 6..34 + 8].copy_from_slice(&1400u16.to_be_bytes());
        error[34 + 2..34 + 4].copy_from_slice(&[0, 0]);
        let sum = checksum(&error[34..]);
        error[34 + 2..34 + 4].copy_from_slice(&sum.to_be_bytes());
        let out = rig.run("prov", &error);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let mut expected = translated_error(rig, 3, 4, &sent, &forwarded);
        expected[34 + 6..34 + 8].copy_from_slice(&1400u16.to_be_bytes());
        expected[34 + 2..34 + 4].copy_from_slice(&[0, 0]);
        let sum = checksum(&expected[34..]);
        expected[34 + 2..34 + 4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(out.frame, expected);
        assert_eq!(rig.count("a", counter::ICMP_ERROR), 1);
    });
}

#[test]
fn icmp_to_a_nat_address_that_is_not_an_error_about_a_flow_is_dropped() {
    with_rig(|rig| {
        let prov = rig.link("prov");
        let cons = rig.link("cons-a");
        let mut echo = ping(prov.mac, [172, 16, 0, 10], NAT);
        echo[6..12].copy_from_slice(&TARGETS[0].1);
        assert_eq!(rig.run("prov", &echo).action, XDP_DROP);
        // An error quoting a flow that does not exist.
        let query = datagram_to(cons.mac, DNS, 40000);
        let forwarded = rig.run("cons-a", &query.frame(b"query")).frame;
        let mut stranger = forwarded.clone();
        let port = u16::from_be_bytes([forwarded[34], forwarded[35]]);
        let other = if port == 20999 { 20998u16 } else { 20999 };
        stranger[34..36].copy_from_slice(&other.to_be_bytes());
        let error = provider_error(rig, [172, 16, 0, 11], 3, 3, &stranger);
        assert_eq!(rig.run("prov", &error).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_ICMP), 2);
        // The node's own address is the kernel's.
        let mut to_node = ping(prov.mac, [172, 16, 0, 10], NODE);
        to_node[6..12].copy_from_slice(&TARGETS[0].1);
        assert_eq!(rig.run("prov", &to_node).action, XDP_PASS);
    });
}
