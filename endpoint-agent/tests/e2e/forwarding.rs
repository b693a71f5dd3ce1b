//! Forwarding: real TCP through the endpoint, both ways, two consumer networks with the
//! same addresses at once, one interface for both roles, nothing in from the provider
//! side, closed connections leaving the table.

use crate::bed::*;

#[test]
fn data_round_trips_through_the_endpoint_and_the_target_sees_only_the_nat_address() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let mut stream =
        connect(&bed.topology.consumer_a, at(ORDERS, 80), WAIT).unwrap_or_else(|e| bed.fail(e));
    for line in ["hello", "second line", &"x".repeat(1 << 20)] {
        let answer = exchange(&mut stream, line).unwrap_or_else(|e| bed.fail(e));
        assert_eq!(answer.echo, line, "echo through the endpoint");
        assert!(answer.target.starts_with("orders-"), "{answer:?}");
        assert_eq!(
            *answer.seen_from.ip(),
            NAT,
            "the target must see the NAT address"
        );
    }
    let peers = bed.all_peers();
    assert_eq!(peers.len(), 1, "one connection: {peers:?}");
    assert!(peers.iter().all(|p| p.ip() == NAT), "{peers:?}");
    assert!(!peers.iter().any(|p| p.ip() == addresses::CLIENT));
}

#[test]
fn two_consumers_with_the_same_address_and_port_work_at_once_without_crossing() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let t = &bed.topology;
    // Same client IP, same source port, same endpoint IP — in two consumer networks.
    let mut a =
        connect_from(&t.consumer_a, 40000, at(ORDERS, 80), WAIT).unwrap_or_else(|e| bed.fail(e));
    let mut b =
        connect_from(&t.consumer_b, 40000, at(ORDERS, 80), WAIT).unwrap_or_else(|e| bed.fail(e));
    let (mut seen_a, mut seen_b) = (None, None);
    for i in 0..20 {
        let line_a = format!("a{i}");
        let line_b = format!("b{i}");
        let answer_a = exchange(&mut a, &line_a).unwrap_or_else(|e| bed.fail(e));
        let answer_b = exchange(&mut b, &line_b).unwrap_or_else(|e| bed.fail(e));
        assert_eq!(answer_a.echo, line_a, "consumer a got another's answer");
        assert_eq!(answer_b.echo, line_b, "consumer b got another's answer");
        // Each connection stays on its target and NAT port for its lifetime.
        assert_eq!(
            *seen_a.get_or_insert((answer_a.target.clone(), answer_a.seen_from)),
            (answer_a.target, answer_a.seen_from)
        );
        assert_eq!(
            *seen_b.get_or_insert((answer_b.target.clone(), answer_b.seen_from)),
            (answer_b.target, answer_b.seen_from)
        );
    }
    let (a, b) = (seen_a.unwrap(), seen_b.unwrap());
    assert!(
        a != b,
        "both consumers were given the same target and NAT port: {a:?}"
    );
}

#[test]
fn the_provider_side_cannot_open_a_connection_into_a_consumer_network() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let t = &bed.topology;
    let inside = Server::start(&t.consumer_a, "consumer-host", at(addresses::CLIENT, 22)).unwrap();
    // Even with a route through the node, a provider host cannot reach the consumer...
    t.provider
        .ip(&[
            "route",
            "add",
            "10.0.0.0/24",
            "via",
            &addresses::NODE_PROVIDER.to_string(),
        ])
        .unwrap();
    let via_node = ask(
        &t.provider,
        at(addresses::CLIENT, 22),
        "in?",
        Duration::from_secs(2),
    );
    assert!(
        via_node.is_err(),
        "reached a consumer host through the node: {via_node:?}"
    );
    // ...nor open anything through a NAT address and port.
    for port in [1024, 40000, 65535] {
        let via_nat = ask(&t.provider, at(NAT, port), "in?", Duration::from_secs(1));
        assert!(
            via_nat.is_err(),
            "NAT port {port} let a provider connection in: {via_nat:?}"
        );
    }
    assert!(
        inside.peers().is_empty(),
        "the consumer host saw {:?}",
        inside.peers()
    );
}

#[test]
fn one_interface_can_serve_both_roles() {
    if !root() {
        return;
    }
    // Consumer, provider and node on one switched segment (a bridge in its own
    // namespace); the node's only interface is both consumer- and provider-facing, so
    // every packet it forwards leaves the way it came.
    let switch = Namespace::new("switch").unwrap();
    switch
        .ip(&["link", "add", "name", "br0", "type", "bridge"])
        .unwrap();
    switch.ip(&["link", "set", "br0", "up"]).unwrap();
    let consumer = Namespace::new("consumer").unwrap();
    let provider = Namespace::new("provider").unwrap();
    let node = Namespace::new("node").unwrap();
    for (ns, link, port, address) in [
        (&consumer, "eth0", "sw-c", Some("10.0.0.10/24")),
        (&provider, "eth0", "sw-p", Some("172.16.0.10/24")),
        (&node, "lan", "sw-n", Some("172.16.0.1/24")),
    ] {
        testbed::veth(ns, link, &switch, port).unwrap();
        switch.ip(&["link", "set", port, "master", "br0"]).unwrap();
        // The switch side receives frames the node bounces with XDP: it needs NAPI.
        switch.exec("ethtool", &["-K", port, "gro", "on"]).unwrap();
        if let Some(address) = address {
            ns.ip(&["addr", "add", address, "dev", link]).unwrap();
        }
    }
    for ns in [&consumer, &provider] {
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
    }
    let _server = Server::start(&provider, "target", at(addresses::TARGETS[0], 8080)).unwrap();
    let config = TempFile::new(
        "config.yaml",
        "
node:
  interfaces:
    - { name: lan, role: both, consumer_network: vpc, nat_addresses: [172.16.0.100] }
services:
  - name: s
    acceptance_required: false
    allowed_principals: [p]
    load_balancers:
      - name: nlb
        zone: z
        listeners: [{ port: 80, targets: [{ ip: 172.16.0.10, port: 8080 }] }]
endpoints:
  - { id: e, service: s, principal: p, consumer_network: vpc, ip: 10.0.0.100, zone: z }
",
    );
    let agent = Agent::start(&node, Path::new(AGENT), node.name(), &config.0, &[]).unwrap();
    let answer = ask(&consumer, at(ORDERS, 80), "over one link", WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
    assert_eq!(answer.echo, "over one link");
    assert_eq!(*answer.seen_from.ip(), NAT);
}

#[test]
fn closed_connections_leave_the_flow_table_and_their_nat_ports_are_reused() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let flows = |bed: &Bed| bed.status()["flow_entries"].as_u64().unwrap();
    // Always the same source port: the same tuple, so the same NAT port once the first
    // connection's entries are gone.
    let mut stream = connect_from(&bed.topology.consumer_a, 45000, at(ORDERS, 80), WAIT)
        .unwrap_or_else(|e| bed.fail(e));
    let first = exchange(&mut stream, "one").unwrap_or_else(|e| bed.fail(e));
    assert_eq!(flows(&bed), 2);
    drop(stream); // FIN
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while flows(&bed) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection's flows stayed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut stream = connect_from(&bed.topology.consumer_a, 45000, at(ORDERS, 80), WAIT)
        .unwrap_or_else(|e| bed.fail(e));
    let second = exchange(&mut stream, "two").unwrap_or_else(|e| bed.fail(e));
    assert_eq!(
        second.seen_from, first.seen_from,
        "the NAT port is free again and chosen again"
    );
}

/// A veth whose peer has neither an XDP program nor GRO drops what the program sends
/// out it; the kernel counts it, and the agent warns and shows it in `status`.
#[test]
fn frames_a_veth_cannot_deliver_are_reported() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let undelivered = |bed: &Bed| {
        bed.status()["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["undelivered"].as_u64())
            .sum::<u64>()
    };
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "fine", WAIT).unwrap_or_else(|e| bed.fail(e));
    assert_eq!(undelivered(&bed), 0);
    bed.topology
        .consumer_a
        .exec("ethtool", &["-K", "eth0", "gro", "off"])
        .unwrap();
    // The SYN goes through; the SYN-ACK redirected to cons-a is lost.
    assert!(
        ask(
            &bed.topology.consumer_a,
            at(ORDERS, 80),
            "lost",
            Duration::from_secs(1)
        )
        .is_err()
    );
    assert!(undelivered(&bed) > 0);
    // The replies came in on prov and went nowhere.
    bed.agent
        .wait_for("prov: the kernel dropped", Duration::from_secs(5))
        .unwrap_or_else(|e| bed.fail(e));
}
