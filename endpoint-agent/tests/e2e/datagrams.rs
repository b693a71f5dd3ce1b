//! Datagrams and path MTU: a real UDP service through endpoints in both overlapping
//! networks at once, a closed target port reported back to the consumer's socket, `ping`
//! of an endpoint, and a jumbo-frame consumer talking to a 1500-byte provider side —
//! TCP held to an MSS that fits, a DF datagram that does not fit answered so that the
//! sender's kernel learns the path MTU.

use std::io::ErrorKind;

use testbed::{UdpServer, udp_ask, udp_socket};

use crate::bed::*;

/// The example with billing (TCP 80, UDP echo 7) available in both consumer networks.
fn config() -> String {
    let mut config = example();
    config.push_str(
        "    state: available\n    accepted_at: \"2026-11-28T09:10:00Z\"\n\
         \x20 - { id: vpce-a-billing, service: billing, principal: team-b, consumer_network: vpc-a, \
         ip: 10.0.0.101, zone: zone-1, state: available, accepted_at: \"2026-11-28T09:10:00Z\" }\n",
    );
    config
}

/// The UDP echo target of billing's port 7.
fn echo_target(bed: &Bed) -> UdpServer {
    UdpServer::start(&bed.topology.provider, "echo", at(addresses::TARGETS[0], 7))
        .unwrap_or_else(|e| bed.fail(e))
}

#[test]
fn a_udp_service_answers_both_overlapping_networks_at_once_without_crossing() {
    if !root() {
        return;
    }
    let bed = bed_with(&config());
    let _echo = echo_target(&bed);
    let t = &bed.topology;
    std::thread::scope(|scope| {
        let asks = [("a", &t.consumer_a), ("b", &t.consumer_b)].map(|(name, ns)| {
            let bed = &bed;
            scope.spawn(move || {
                let mut seen = Vec::new();
                for i in 0..50 {
                    let line = format!("{name}{i}");
                    // Connected: the answer can only come from the endpoint's address.
                    let answer =
                        udp_ask(ns, at(BILLING, 7), &line, WAIT).unwrap_or_else(|e| bed.fail(e));
                    assert_eq!(answer.echo, line, "consumer {name} got another's answer");
                    assert_eq!(answer.target, "echo");
                    assert_eq!(
                        *answer.seen_from.ip(),
                        NAT,
                        "the target sees the NAT address"
                    );
                    seen.push(answer.seen_from.port());
                }
                seen
            })
        });
        let [a, b] = asks.map(|ask| ask.join().unwrap());
        assert!(
            a.iter().all(|port| !b.contains(port)),
            "a NAT port served both networks"
        );
    });
    let status = bed.status();
    // Each ask is a socket of its own; one that drew a port an earlier ask used
    // (about 4 % of runs, among 28,000 ephemeral ports) is that flow again.
    let forwarded = counted_for(&status, "vpce-a-billing", "forward_new")
        + counted_for(&status, "vpce-a-billing", "forward");
    assert!(forwarded >= 50, "{forwarded}");
    assert!(counted_for(&status, "vpce-a-billing", "forward_new") >= 1);
    assert!(counted_for(&status, "vpce-b-billing", "reply") >= 50);
}

#[test]
fn a_closed_target_port_reaches_the_consumers_socket_as_port_unreachable() {
    if !root() {
        return;
    }
    // No echo target: the provider's kernel answers port unreachable, to the NAT address.
    let bed = bed_with(&config());
    let socket =
        udp_socket(&bed.topology.consumer_a, at(BILLING, 7), WAIT).unwrap_or_else(|e| bed.fail(e));
    socket.send(b"anyone?").unwrap();
    let mut buffer = [0u8; 64];
    let error = socket
        .recv(&mut buffer)
        .expect_err("an answer from a closed port");
    // The consumer's kernel matched the translated error to this very socket.
    assert_eq!(
        error.kind(),
        ErrorKind::ConnectionRefused,
        "{error}\n{}",
        bed.agent.log()
    );
    assert_eq!(
        counted_for(&bed.status(), "vpce-a-billing", "icmp_error"),
        1
    );
}

#[test]
fn a_consumer_can_ping_its_endpoint_and_only_an_available_one() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let t = &bed.topology;
    let ping = |ns: &Namespace, ip: Ipv4Addr| {
        ns.command("ping")
            .args(["-c", "2", "-i", "0.2", "-W", "2", &ip.to_string()])
            .output()
            .unwrap()
    };
    let answered = ping(&t.consumer_a, ORDERS);
    assert!(
        answered.status.success(),
        "{}{}",
        String::from_utf8_lossy(&answered.stdout),
        String::from_utf8_lossy(&answered.stderr)
    );
    // billing's endpoint in vpc-b waits for acceptance: it does not answer.
    assert!(!ping(&t.consumer_b, BILLING).status.success());
    assert_eq!(
        counted_for(&bed.status(), "vpce-a-orders", "icmp_echo_reply"),
        2
    );
}

/// Jumbo frames on vpc-a's link (consumer and node side), 1500 on the provider side.
fn jumbo_consumer(t: &Topology) {
    t.consumer_a
        .ip(&["link", "set", "eth0", "mtu", "9000"])
        .unwrap();
    t.node
        .ip(&["link", "set", Topology::CONSUMER_A_LINK, "mtu", "9000"])
        .unwrap();
}

#[test]
fn a_jumbo_consumer_and_a_1500_provider_side_carry_10_mib_both_ways_and_learn_the_path_mtu() {
    if !root() {
        return;
    }
    let bed = bed_prepared(&config(), jumbo_consumer);
    let _echo = echo_target(&bed);
    let t = &bed.topology;

    // TCP: 10 MiB to the target and the same back, in segments that fit both sides.
    let mut stream = connect(&t.consumer_a, at(ORDERS, 80), WAIT).unwrap_or_else(|e| bed.fail(e));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let line = "m".repeat(10 << 20);
    let answer = exchange(&mut stream, &line).unwrap_or_else(|e| bed.fail(e));
    assert!(answer.echo == line, "the 10 MiB came back changed");
    let status = bed.status();
    assert!(counted_for(&status, "vpce-a-orders", "mss_clamped") >= 1);
    // The MSS fit: no segment needed the consumer told to send smaller ones.
    assert_eq!(
        counted_for(&status, "vpce-a-orders", "icmp_frag_needed_sent"),
        0
    );

    // UDP: a 3000-byte datagram with DF does not fit the provider side; the consumer's
    // kernel is told, remembers the path MTU, and refuses the next one itself.
    let socket = udp_socket(&t.consumer_a, at(BILLING, 7), WAIT).unwrap_or_else(|e| bed.fail(e));
    set_dont_fragment(&socket);
    assert!(udp_ask(&t.consumer_a, at(BILLING, 7), "fits", WAIT).is_ok());
    socket.send(&[1; 3000]).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let learned = loop {
        let route = t
            .consumer_a
            .ip(&["-o", "route", "get", &BILLING.to_string()])
            .unwrap();
        if route.contains("mtu 1500") || std::time::Instant::now() > deadline {
            break route;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        learned.contains("mtu 1500"),
        "no path MTU learned: {learned}"
    );
    let refused = socket
        .send(&[1; 3000])
        .expect_err("a datagram over the path MTU");
    assert_eq!(refused.raw_os_error(), Some(libc::EMSGSIZE), "{refused}");
    assert_eq!(
        counted_for(&bed.status(), "vpce-a-billing", "icmp_frag_needed_sent"),
        1
    );
}

/// Path MTU discovery on: DF set, never fragmented locally.
fn set_dont_fragment(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: a plain setsockopt with an int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_MTU_DISCOVER");
}
