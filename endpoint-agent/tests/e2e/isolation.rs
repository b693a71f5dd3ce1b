//! Isolation: a consumer reaches endpoints and nothing else of the node — none of its
//! own addresses (IPv4 or IPv6), no ARP answer for them, no route through it even when
//! someone turns forwarding on — and hosts on the provider segment cannot end a
//! consumer's connection with RSTs they guess.

use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

use testbed::{
    Knock, connect_to,
    flood::{Pace, RawSocket, Segment},
    link::{self, Capture},
    link_index,
};

use crate::bed::*;

/// An address the node has in vpc-a's subnet on its consumer link (as an operator
/// might give it): the kernel would answer ARP for it and accept connections to it.
const NODE_IN_VPC_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Ports the node's own services listen on, the endpoints' port among them.
const NODE_PORTS: [u16; 2] = [22, 80];

/// The IPv6 link-local address of `dev` in `ns`, once duplicate address detection let
/// it be used.
fn link_local(ns: &Namespace, dev: &str) -> Ipv6Addr {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns
            .ip(&["-6", "-o", "addr", "show", "dev", dev, "scope", "link"])
            .unwrap();
        let ready = out
            .lines()
            .filter(|l| !l.contains("tentative"))
            .find_map(|l| l.split_whitespace().skip_while(|w| *w != "inet6").nth(1))
            .and_then(|a| a.split('/').next()?.parse().ok());
        if let Some(address) = ready {
            return address;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{dev} in {} has no usable link-local address: {out}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Gives the node `NODE_IN_VPC_A` on its vpc-a link and routes the consumer's traffic
/// for the provider subnet through it: what an operator might set up by mistake.
fn route_through_node(t: &Topology) {
    let own = format!("{NODE_IN_VPC_A}/24");
    t.node
        .ip(&["addr", "add", &own, "dev", Topology::CONSUMER_A_LINK])
        .unwrap();
    t.consumer_a
        .ip(&[
            "route",
            "add",
            "172.16.0.0/24",
            "via",
            &NODE_IN_VPC_A.to_string(),
        ])
        .unwrap();
}

/// Tries to connect to each of `to` from `ns` at once; the results in order.
fn try_all(ns: &Namespace, to: &[SocketAddr], timeout: Duration) -> Vec<Result<(), String>> {
    std::thread::scope(|scope| {
        let tries: Vec<_> = to
            .iter()
            .map(|&to| {
                scope.spawn(move || {
                    connect_to(ns, to, timeout)
                        .map(drop)
                        .map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        tries.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

#[test]
fn a_consumer_reaches_no_address_of_the_node_itself() {
    if !root() {
        return;
    }
    let mut prepared = None;
    let bed = bed_prepared(&example(), |t| {
        let (node, consumer) = (&t.node, &t.consumer_a);
        route_through_node(t);
        let node_v6 = link_local(node, Topology::CONSUMER_A_LINK);
        link_local(consumer, "eth0");
        let scope = link_index(consumer, "eth0").unwrap();
        let knock = Knock::start(node, &NODE_PORTS).unwrap();
        let targets: Vec<SocketAddr> = NODE_PORTS
            .iter()
            .flat_map(|&port| {
                [
                    SocketAddrV6::new(node_v6, port, 0, scope).into(),
                    at(NODE_IN_VPC_A, port).into(),
                    at(addresses::NODE_PROVIDER, port).into(),
                ]
            })
            .collect();
        // Without the agent, all of it is reachable: what follows is no accident of
        // the bed.
        let cons_a = link::mac(node, Topology::CONSUMER_A_LINK).unwrap();
        for own in [NODE_IN_VPC_A, addresses::NODE_PROVIDER] {
            let answer = link::who_has(consumer, "eth0", addresses::CLIENT, own, WAIT).unwrap();
            assert_eq!(answer, Some(cons_a), "before the agent, ARP for {own}");
        }
        for (to, result) in targets.iter().zip(try_all(consumer, &targets, WAIT)) {
            result.unwrap_or_else(|e| panic!("before the agent, {to}: {e}"));
        }
        // From now on the consumer sends to the node without asking first, so that
        // its segments reach the node whatever ARP and neighbour discovery say.
        consumer
            .neighbour(NODE_IN_VPC_A.into(), cons_a, "eth0")
            .unwrap();
        let mac = cons_a.map(|b| format!("{b:02x}")).join(":");
        consumer
            .ip(&[
                "-6",
                "neigh",
                "replace",
                &node_v6.to_string(),
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
            .unwrap();
        prepared = Some((knock, targets, cons_a));
    });
    let (knock, targets, cons_a) = prepared.unwrap();
    let reached_before = knock.accepted().len();
    let node = &bed.topology.node;

    // The kernel is kept out of the consumer link (each setting alone would do) ...
    for (key, value) in [
        ("net.ipv6.conf.cons-a.disable_ipv6", "1"),
        ("net.ipv4.conf.cons-a.forwarding", "0"),
        ("net.ipv4.conf.cons-a.arp_ignore", "8"),
    ] {
        assert_eq!(sysctl(node, key), value, "{key}");
    }
    let v6 = node
        .ip(&["-6", "addr", "show", "dev", Topology::CONSUMER_A_LINK])
        .unwrap();
    assert!(v6.trim().is_empty(), "cons-a kept IPv6 addresses: {v6}");

    // ... and the program drops what is not for an endpoint before the kernel sees it.
    let before = bed.status();
    let consumer = &bed.topology.consumer_a;
    for own in [NODE_IN_VPC_A, addresses::NODE_PROVIDER] {
        let wait = Duration::from_millis(500);
        let answer = link::who_has(consumer, "eth0", addresses::CLIENT, own, wait).unwrap();
        assert_eq!(answer, None, "the node answered ARP for its own {own}");
    }
    let endpoint = link::who_has(consumer, "eth0", addresses::CLIENT, ORDERS, WAIT).unwrap();
    assert_eq!(endpoint, Some(cons_a), "ARP for the endpoint");
    let results = try_all(consumer, &targets, Duration::from_secs(1));
    for (to, result) in targets.iter().zip(&results) {
        assert!(result.is_err(), "a consumer connected to the node's {to}");
    }
    assert_eq!(
        knock.accepted().len(),
        reached_before,
        "the node's listeners accepted {:?}",
        knock.accepted()
    );
    let after = bed.status();
    let dropped = counted(&after, "drop_not_endpoint") - counted(&before, "drop_not_endpoint");
    let sent = (targets.len() + 2) as u64;
    assert!(
        dropped >= sent,
        "{dropped} dropped as not endpoint traffic, at least {sent} sent: {after:#}"
    );
    // The endpoint itself still answers.
    ask(consumer, at(ORDERS, 80), "still here", WAIT).unwrap_or_else(|e| bed.fail(e));
}

#[test]
fn ip_forward_turned_on_behind_the_agent_lets_no_consumer_through_and_is_undone() {
    if !root() {
        return;
    }
    // A provider host that is no target: a consumer must never reach it.
    let beyond = at(addresses::TARGETS[0], 7070);
    let mut prepared = None;
    let bed = bed_prepared(&example(), |t| {
        // Routes both ways through the node.
        route_through_node(t);
        let node = addresses::NODE_PROVIDER.to_string();
        t.provider
            .ip(&["route", "add", "10.0.0.0/24", "via", &node])
            .unwrap();
        let server = Server::start(&t.provider, "beyond", beyond).unwrap();
        // Without the agent, forwarding on, the route works.
        t.node.sysctl("net.ipv4.ip_forward", "1").unwrap();
        ask(&t.consumer_a, beyond, "routed", WAIT)
            .unwrap_or_else(|e| panic!("before the agent, through the node: {e:#}"));
        t.node.sysctl("net.ipv4.ip_forward", "0").unwrap();
        // Send to the node without asking: its ARP silence must not be what stops us.
        let mac = link::mac(&t.node, Topology::CONSUMER_A_LINK).unwrap();
        t.consumer_a
            .neighbour(NODE_IN_VPC_A.into(), mac, "eth0")
            .unwrap();
        prepared = Some(server);
    });
    let server = prepared.unwrap();
    let reached_before = server.peers().len();
    let (node, consumer) = (&bed.topology.node, &bed.topology.consumer_a);
    let before = bed.status();

    // Someone turns forwarding on for the whole node: every interface gets it.
    node.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let through = ask(consumer, beyond, "through?", Duration::from_secs(1));
    assert!(through.is_err(), "routed through the node: {through:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sysctl(node, "net.ipv4.conf.cons-a.forwarding") != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "cons-a forwarding not set back within 5 s:\n{}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whoever turned it on is told it did not stick.
    bed.agent
        .wait_for(
            "cons-a/forwarding was changed to 1 behind the agent's back",
            Duration::from_secs(1),
        )
        .unwrap_or_else(|e| bed.fail(e));
    assert_eq!(sysctl(node, "net.ipv4.conf.cons-b.forwarding"), "0");
    let through = ask(consumer, beyond, "through?", Duration::from_secs(1));
    assert!(through.is_err(), "routed through the node: {through:?}");
    assert_eq!(
        server.peers().len(),
        reached_before,
        "the provider host saw a consumer: {:?}",
        server.peers()
    );
    let after = bed.status();
    let dropped = counted(&after, "drop_not_endpoint") - counted(&before, "drop_not_endpoint");
    assert!(dropped >= 2, "{dropped} dropped as not endpoint traffic");
    ask(consumer, at(ORDERS, 80), "still here", WAIT).unwrap_or_else(|e| bed.fail(e));
}

/// One more exchange on `conversation`, watched on the provider's link: the sequence
/// number its client expects from the target next, once the client acknowledged
/// everything the target sent (so the node's view of the connection is the same).
fn next_from_target(bed: &Bed, conversation: &mut Conversation, target: SocketAddrV4) -> u32 {
    let nat = conversation.seen.1;
    let capture = Capture::open(&bed.topology.provider, "eth0").unwrap();
    conversation.say("watched", &bed.agent.log());
    let mut next = None;
    let acknowledged = capture.until(WAIT, |s| {
        if s.from == target && s.to == nat {
            next = Some(s.next_seq());
        }
        s.from == nat && s.to == target && next == Some(s.ack)
    });
    assert!(acknowledged, "the client's acknowledgement was not seen");
    next.unwrap()
}

#[test]
fn resets_guessed_from_the_provider_segment_end_no_idle_connection() {
    if !root() {
        return;
    }
    // A connection the node took for closed would leave the table a second later.
    let config = example().replace(
        "  nat_ports:",
        "  timeouts: { closed_seconds: 1 }\n  nat_ports:",
    );
    assert_ne!(config, example());
    let bed = bed_with(&config);
    let mut conversation = Conversation::open(&bed);
    let target = bed.server(&conversation.seen.0).addr;
    let nat = conversation.seen.1;
    let expected = next_from_target(&bed, &mut conversation, target);

    // Far outside any window the client offers here (tens of KiB), behind and ahead,
    // then pseudo-random numbers kept as far out.
    let mut outside: Vec<u32> = [1 << 24, 1 << 28, 1 << 31, (1 << 31) + 12345]
        .into_iter()
        .chain([1 << 17, 1 << 24].map(|behind: u32| behind.wrapping_neg()))
        .collect();
    let mut x: u32 = 0x9e37_79b9;
    while outside.len() < 200 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (1 << 24..=u32::MAX - (1 << 24)).contains(&x) {
            outside.push(x);
        }
    }
    // In the window but not at the client's next number: passed on, and the client
    // answers with a challenge ACK (RFC 5961) instead of closing.
    let inside = [1u32, 1000, 30000];
    let others: Vec<u16> = (nat.port().saturating_sub(100)..=nat.port() + 100)
        .filter(|&p| p != nat.port() && (1024..=32767).contains(&p))
        .collect();
    let mut resets: Vec<Segment> = outside
        .iter()
        .chain(&inside)
        .map(|offset| Segment::rst(target, nat, expected.wrapping_add(*offset)))
        .collect();
    // The same guesses at the other NAT ports (as a spoofer who does not know it).
    resets.extend(
        others
            .iter()
            .zip(outside.iter().cycle())
            .map(|(&port, offset)| {
                Segment::rst(target, at(NAT, port), expected.wrapping_add(*offset))
            }),
    );

    let before = bed.status();
    let raw = RawSocket::open(&bed.topology.provider).unwrap();
    let pace = Pace {
        rate: 2000,
        frames: resets.len() as u64,
        time: Duration::from_secs(5),
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = testbed::flood::paced(&raw, pace, &stop, |i| resets[i as usize]).unwrap();
    assert_eq!(sent.frames, resets.len() as u64, "{sent:?}");
    // Expiry runs every second: a connection taken for closed would be gone by now.
    std::thread::sleep(Duration::from_millis(2500));

    let log = bed.agent.log();
    conversation.say(&format!("after {} guessed resets", resets.len()), &log);
    let after = bed.status();
    assert_eq!(
        (
            before["flow_entries"].as_u64(),
            after["flow_entries"].as_u64()
        ),
        (Some(2), Some(2)),
        "the connection's flow entries"
    );
    let delta = |name: &str| counted(&after, name) - counted(&before, name);
    assert_eq!(
        delta("drop_out_of_window"),
        outside.len() as u64,
        "every reset outside the window dropped, and nothing else: {after:#}"
    );
    assert_eq!(
        delta("drop_reply_no_flow"),
        others.len() as u64,
        "every reset to another NAT port dropped: {after:#}"
    );
    assert!(delta("reply") >= inside.len() as u64, "{after:#}");

    // The right number does end it: the guesses reached the connection, and missed.
    let expected = next_from_target(&bed, &mut conversation, target);
    raw.send(&Segment::rst(target, nat, expected)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let error = exchange(&mut conversation.stream, "after the right guess")
        .expect_err("a reset at the client's next number must end the connection");
    let reset = error
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(reset, "ended, but not by the reset: {error:#}");
}
