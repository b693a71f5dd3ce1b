//! IPv6: endpoints with IPv6 addresses in real consumer networks, forwarded to IPv6
//! targets from an IPv6 NAT address — two overlapping networks at once, a dual-stack
//! endpoint from one client, IPv6 security groups changed live, nothing in from the
//! provider side, and neighbour discovery answered for what the node owns and nothing
//! else. And IPv6 endpoints of IPv4-only services (6→4, RFC 7915): an IPv6-only client
//! with no IPv6 on the provider side at all, a dual-stack endpoint, a smaller provider
//! MTU, a closed target port refusing its client, and a router beyond the node whose
//! ICMPv4 errors reach the consumer as ICMPv6.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};

use testbed::{
    UdpServer, addresses::v6, ask_any, connect_any, exchange_any, link, udp_ask_any, udp_socket_any,
};

use crate::bed::*;

/// The endpoint address both consumer networks use.
const ENDPOINT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x100);
/// An address in the consumer networks that no endpoint has.
const NOBODY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x99);
/// The node's IPv6 NAT address on the provider link.
const NAT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x16, 0, 0, 0, 0, 0, 0x100);

fn at6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddrV6::new(ip, port, 0, 0).into()
}

/// A config on the standard topology: both consumer links, NAT addresses `nat`, one
/// service `orders` (port 80, no acceptance needed) with `targets` (YAML flow lines),
/// and `endpoints` (YAML list items).
fn config(nat: &str, targets: &[&str], endpoints: &str) -> String {
    config_with(nat, &tcp_80(targets), endpoints)
}

/// A TCP listener on port 80 with `targets`, as YAML list items.
fn tcp_80(targets: &[&str]) -> String {
    let targets: String = targets
        .iter()
        .map(|t| format!("              - {t}\n"))
        .collect();
    format!("          - port: 80\n            targets:\n{targets}")
}

/// As `config`, with `listeners` given as YAML list items.
fn config_with(nat: &str, listeners: &str, endpoints: &str) -> String {
    format!(
        "node:
  interfaces:
    - {{ name: cons-a, role: consumer, consumer_network: vpc-a, zone: zone-1 }}
    - {{ name: cons-b, role: consumer, consumer_network: vpc-b, zone: zone-1 }}
    - {{ name: prov, role: provider, nat_addresses: [{nat}] }}
  hash_seed: 7
services:
  - name: orders
    acceptance_required: false
    allowed_principals: [team-a, team-b]
    load_balancers:
      - name: orders-nlb
        zone: zone-1
        listeners:
{listeners}endpoints:
{endpoints}"
    )
}

const V6_TARGETS: [&str; 2] = [
    "{ ip: 'fd00:16::10', port: 8080 }",
    "{ ip: 'fd00:16::11', port: 8080 }",
];
const V4_TARGETS: [&str; 2] = [
    "{ ip: 172.16.0.10, port: 8080 }",
    "{ ip: 172.16.0.11, port: 8080 }",
];

/// An IPv6-only endpoint at `ENDPOINT` in `network`, with `extra` YAML lines.
fn endpoint(id: &str, principal: &str, network: &str, extra: &str) -> String {
    format!(
        "  - id: {id}
    service: orders
    principal: {principal}
    consumer_network: {network}
    addresses:
      - {{ zone: zone-1, ip: 'fd00:a::100' }}
{extra}"
    )
}

/// The IPv6 targets, serving on the provider host (named `orders6-1`, `orders6-2`).
fn v6_servers(topology: &Topology) -> Vec<Server<SocketAddr>> {
    v6::TARGETS
        .iter()
        .enumerate()
        .map(|(i, &ip)| {
            Server::start_any(
                &topology.provider,
                &format!("orders6-{}", i + 1),
                at6(ip, 8080),
            )
            .unwrap()
        })
        .collect()
}

/// The standard topology with IPv6 addresses, the example's IPv4 targets and the IPv6
/// ones serving, and the agent running `config`.
fn bed6(config: &str) -> (Bed, Vec<Server<SocketAddr>>) {
    let mut servers = None;
    let bed = bed_prepared(config, |t| {
        t.add_ipv6().expect("IPv6 addresses");
        servers = Some(v6_servers(t));
    });
    // The agent has the kernel resolve each target's neighbour (the program cannot):
    // until it has, a first datagram is dropped (`drop_fib_no_neighbour`), and a UDP
    // test has no retransmission to wait for.
    let deadline = std::time::Instant::now() + WAIT;
    for target in v6::TARGETS
        .iter()
        .filter(|t| config.contains(&format!("'{t}'")))
    {
        while !neighbour(&bed.topology.node, *target, Topology::PROVIDER_LINK).contains("lladdr") {
            assert!(
                std::time::Instant::now() < deadline,
                "the node never resolved {target}\n{}",
                evidence(&bed)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (bed, servers.unwrap())
}

/// `ip -6 neigh show <ip> dev <dev>` in `ns`, trimmed.
fn neighbour(ns: &Namespace, ip: Ipv6Addr, dev: &str) -> String {
    ns.ip(&["-6", "neigh", "show", &ip.to_string(), "dev", dev])
        .unwrap()
        .trim()
        .to_string()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Everything a failed IPv6 test needs to say where the packets went: the agent's
/// log and status, and each namespace's IPv6 neighbours and routes.
fn evidence(bed: &Bed) -> String {
    let t = &bed.topology;
    let mut out = String::new();
    for (name, ns) in [
        ("consumer-a", &t.consumer_a),
        ("consumer-b", &t.consumer_b),
        ("node", &t.node),
        ("provider", &t.provider),
    ] {
        let neigh = ns.ip(&["-6", "neigh", "show"]).unwrap_or_default();
        let route = ns.ip(&["-6", "route", "show"]).unwrap_or_default();
        out.push_str(&format!(
            "== {name}: ip -6 neigh\n{neigh}== {name}: ip -6 route\n{route}"
        ));
    }
    let status = bed
        .agent
        .command(&["status"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.push_str(&format!(
        "== status\n{status}== agent log\n{}",
        bed.agent.log()
    ));
    out
}

fn fail6(bed: &Bed, e: anyhow::Error) -> ! {
    panic!("{e:#}\n{}", evidence(bed))
}

#[test]
fn two_overlapping_ipv6_networks_reach_their_own_endpoints_at_once_without_crossing() {
    if !root() {
        return;
    }
    let endpoints =
        endpoint("vpce-a", "team-a", "vpc-a", "") + &endpoint("vpce-b", "team-b", "vpc-b", "");
    let (bed, servers) = bed6(&config("'fd00:16::100'", &V6_TARGETS, &endpoints));
    let t = &bed.topology;
    // Same client address, same source port, same endpoint address — in two networks,
    // opened at once.
    let [mut a, mut b] = std::thread::scope(|scope| {
        [&t.consumer_a, &t.consumer_b]
            .map(|ns| scope.spawn(move || connect_any(ns, 40000, at6(ENDPOINT, 80), WAIT)))
            .map(|c| c.join().unwrap().unwrap_or_else(|e| fail6(&bed, e)))
    });
    let (mut seen_a, mut seen_b) = (None, None);
    for i in 0..20 {
        for (name, stream, seen) in [("a", &mut a, &mut seen_a), ("b", &mut b, &mut seen_b)] {
            let line = format!("{name}{i}");
            let answer = exchange_any(stream, &line).unwrap_or_else(|e| fail6(&bed, e));
            assert_eq!(answer.echo, line, "consumer {name} got another's answer");
            assert!(answer.target.starts_with("orders6-"), "{answer:?}");
            assert_eq!(
                answer.seen_from.ip(),
                IpAddr::V6(NAT6),
                "the target must see the NAT address"
            );
            // Each connection stays on its target and NAT port for its lifetime.
            let now = (answer.target, answer.seen_from);
            assert_eq!(
                *seen.get_or_insert(now.clone()),
                now,
                "consumer {name} moved"
            );
        }
    }
    // A megabyte each way on each: full-sized segments, their checksums updated.
    let big = "x".repeat(1 << 20);
    for (name, stream) in [("a", &mut a), ("b", &mut b)] {
        let answer = exchange_any(stream, &big).unwrap_or_else(|e| fail6(&bed, e));
        assert!(
            answer.echo == big,
            "consumer {name}: the megabyte came back changed"
        );
    }
    let (seen_a, seen_b) = (seen_a.unwrap(), seen_b.unwrap());
    assert_ne!(
        seen_a, seen_b,
        "both consumers were given the same target and NAT port"
    );
    // `flows` shows both, each in its own network, as the target sees it.
    let listed: Vec<serde_json::Value> = bed
        .agent_command(&["flows", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let mut rows: Vec<[String; 5]> = listed
        .iter()
        .map(|f| {
            ["network", "client", "endpoint_address", "target", "nat"]
                .map(|k| f[k].as_str().unwrap_or_default().to_string())
        })
        .collect();
    rows.sort();
    let row = |network: &str, (target, nat): &(String, SocketAddr)| {
        let server = servers.iter().find(|s| &s.name == target).unwrap();
        [
            network.to_string(),
            at6(v6::CLIENT, 40000).to_string(),
            at6(ENDPOINT, 80).to_string(),
            server.addr.to_string(),
            nat.to_string(),
        ]
    };
    assert_eq!(
        rows,
        [row("vpc-a", &seen_a), row("vpc-b", &seen_b)],
        "{listed:#?}"
    );
    let peers: Vec<SocketAddr> = servers.iter().flat_map(Server::peers).collect();
    assert_eq!(peers.len(), 2, "two connections: {peers:?}");
    assert!(
        peers.iter().all(|p| p.ip() == IpAddr::V6(NAT6)),
        "targets saw {peers:?}"
    );
    // Each network's connection was its own endpoint's.
    let status = bed.status();
    for id in ["vpce-a", "vpce-b"] {
        assert_eq!(counted_for(&status, id, "forward_new"), 1, "{status:#}");
    }
    assert_eq!(status["flow_entries"].as_u64(), Some(4), "{status:#}");
}

#[test]
fn one_client_reaches_a_dual_stack_endpoint_over_both_families() {
    if !root() {
        return;
    }
    let targets = [V4_TARGETS, V6_TARGETS].concat();
    let endpoints = "  - id: vpce-dual
    service: orders
    principal: team-a
    consumer_network: vpc-a
    addresses:
      - { zone: zone-1, ip: 10.0.0.100 }
      - { zone: zone-1, ip: 'fd00:a::100' }
";
    let (bed, servers) = bed6(&config("172.16.0.100, 'fd00:16::100'", &targets, endpoints));
    let client = &bed.topology.consumer_a;
    let mut v4_targets = std::collections::BTreeSet::new();
    let mut v6_targets = std::collections::BTreeSet::new();
    // Several connections each way (the same client, by turns): each family goes to
    // targets of its own, from the NAT address of its own.
    for i in 0..6 {
        let line = format!("v4 {i}");
        let answer = ask(client, at(ORDERS, 80), &line, WAIT).unwrap_or_else(|e| fail6(&bed, e));
        assert_eq!(answer.echo, line);
        assert!(
            ["orders-1", "orders-2"].contains(&answer.target.as_str()),
            "IPv4 went to {answer:?}"
        );
        assert_eq!(*answer.seen_from.ip(), NAT, "{answer:?}");
        v4_targets.insert(answer.target);

        let line = format!("v6 {i}");
        let answer =
            ask_any(client, at6(ENDPOINT, 80), &line, WAIT).unwrap_or_else(|e| fail6(&bed, e));
        assert_eq!(answer.echo, line);
        assert!(
            ["orders6-1", "orders6-2"].contains(&answer.target.as_str()),
            "IPv6 went to {answer:?}"
        );
        assert_eq!(answer.seen_from.ip(), IpAddr::V6(NAT6), "{answer:?}");
        v6_targets.insert(answer.target);
    }
    eprintln!("IPv4 targets used: {v4_targets:?}; IPv6 targets used: {v6_targets:?}");
    let v6_peers: Vec<SocketAddr> = servers.iter().flat_map(Server::peers).collect();
    assert_eq!(v6_peers.len(), 6, "{v6_peers:?}");
    assert!(v6_peers.iter().all(|p| p.ip() == IpAddr::V6(NAT6)));
    assert!(bed.all_peers().iter().all(|p| p.ip() == IpAddr::V4(NAT)));
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-dual", "forward_new"),
        12,
        "{status:#}"
    );
}

#[test]
fn ipv6_security_groups_admit_their_sources_and_follow_config_changes_live() {
    if !root() {
        return;
    }
    let with_group = |cidr: &str| {
        let group = format!("    security_groups:\n      - {{ cidr: '{cidr}' }}\n");
        config(
            "'fd00:16::100'",
            &V6_TARGETS,
            &endpoint("vpce-a", "team-a", "vpc-a", &group),
        )
    };
    let admitting = with_group("fd00:a::10/128");
    let (mut bed, _servers) = bed6(&admitting);
    let client = &bed.topology.consumer_a;
    let mut established =
        connect_any(client, 0, at6(ENDPOINT, 80), WAIT).unwrap_or_else(|e| fail6(&bed, e));
    let first = exchange_any(&mut established, "admitted").unwrap_or_else(|e| fail6(&bed, e));
    assert_eq!(first.echo, "admitted");
    assert_eq!(bed.status()["flow_entries"].as_u64(), Some(2));

    // Another source only: the client is no longer admitted.
    bed.reconfigure(&with_group("fd00:a::20/128"));
    let client = &bed.topology.consumer_a;
    let before = bed.status();
    let new = ask_any(client, at6(ENDPOINT, 80), "new", Duration::from_secs(1));
    assert!(
        new.is_err(),
        "a source outside the group connected: {new:?}"
    );
    // As for IPv4 (tests/packets/policy.rs): the established connection's next segment
    // is dropped, and its flow goes.
    established
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let cut = exchange_any(&mut established, "still?");
    assert!(cut.is_err(), "the established connection went on: {cut:?}");
    let after = bed.status();
    let dropped = counted_for(&after, "vpce-a", "drop_security_group")
        - counted_for(&before, "vpce-a", "drop_security_group");
    assert!(dropped >= 2, "{dropped} dropped by the group: {after:#}");
    assert_eq!(after["flow_entries"].as_u64(), Some(0), "{after:#}");
    drop(established);

    // Back again: admitted.
    bed.reconfigure(&admitting);
    let again = ask_any(&bed.topology.consumer_a, at6(ENDPOINT, 80), "again", WAIT)
        .unwrap_or_else(|e| fail6(&bed, e));
    assert_eq!(again.echo, "again");
    assert_eq!(again.seen_from.ip(), IpAddr::V6(NAT6));
}

#[test]
fn a_provider_host_reaches_no_consumer_network_over_ipv6() {
    if !root() {
        return;
    }
    let endpoints = endpoint("vpce-a", "team-a", "vpc-a", "");
    let (bed, _servers) = bed6(&config("'fd00:16::100'", &V6_TARGETS, &endpoints));
    let t = &bed.topology;
    // The endpoint works, so the provider host knows the NAT address's MAC.
    ask_any(&t.consumer_a, at6(ENDPOINT, 80), "fine", WAIT).unwrap_or_else(|e| fail6(&bed, e));
    let inside = Server::start_any(&t.consumer_a, "consumer-host", at6(v6::CLIENT, 22)).unwrap();
    // Even with a route through the node, and IPv6 forwarding turned on for the whole
    // node behind the agent's back, a provider host reaches neither the client nor the
    // endpoint address ...
    t.provider
        .ip(&[
            "-6",
            "route",
            "add",
            "fd00:a::/64",
            "via",
            &v6::NODE_PROVIDER.to_string(),
        ])
        .unwrap();
    t.node.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let short = Duration::from_secs(1);
    for to in [at6(v6::CLIENT, 22), at6(ENDPOINT, 80)] {
        match ask_any(&t.provider, to, "in?", short) {
            Ok(answer) => panic!("reached {to} from the provider side: {answer:?}"),
            Err(e) => eprintln!("from the provider side, {to}: {e:#}"),
        }
    }
    // ... nor opens anything through the NAT address: inside the NAT port range, a
    // packet that is no flow's reply is dropped and counted; outside it the kernel
    // has nothing there either.
    let before = bed.status();
    let flows = |status: &serde_json::Value| status["flow_entries"].as_u64().unwrap();
    let in_range = [1024, 20000, 32767];
    for port in in_range.into_iter().chain([40000, 65535]) {
        let result = ask_any(&t.provider, at6(NAT6, port), "in?", short);
        assert!(
            result.is_err(),
            "NAT port {port} let a provider connection in: {result:?}"
        );
    }
    let after = bed.status();
    let dropped = counted(&after, "drop_reply_no_flow") - counted(&before, "drop_reply_no_flow");
    assert!(
        dropped >= in_range.len() as u64,
        "{dropped} dropped as replies without a flow: {after:#}"
    );
    assert!(
        inside.peers().is_empty(),
        "the consumer host saw {:?}",
        inside.peers()
    );
    // No flow opened (the test's own closed connection may have left meanwhile).
    assert!(flows(&after) <= flows(&before), "{before:#}\n{after:#}");
    // Forwarding turned on for all took the consumer links too: the agent puts them
    // back (nothing could be routed there anyway: they have no IPv6).
    for link in [Topology::CONSUMER_A_LINK, Topology::CONSUMER_B_LINK] {
        let key = format!("net.ipv6.conf.{link}.forwarding");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sysctl(&t.node, &key) != "0" {
            assert!(
                std::time::Instant::now() < deadline,
                "{key} not set back within 5 s:\n{}",
                bed.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            sysctl(&t.node, &format!("net.ipv6.conf.{link}.disable_ipv6")),
            "1"
        );
    }
    bed.agent
        .wait_for(
            "ipv6/conf/cons-a/forwarding was changed to 1 behind the agent's back",
            Duration::from_secs(1),
        )
        .unwrap_or_else(|e| fail6(&bed, e));
}

#[test]
fn the_node_answers_neighbour_solicitations_for_its_addresses_and_no_others() {
    if !root() {
        return;
    }
    let endpoints = endpoint("vpce-a", "team-a", "vpc-a", "");
    let (bed, _servers) = bed6(&config("'fd00:16::100'", &V6_TARGETS, &endpoints));
    let t = &bed.topology;
    let cons_a = link::mac(&t.node, Topology::CONSUMER_A_LINK).unwrap();
    let prov = link::mac(&t.node, Topology::PROVIDER_LINK).unwrap();
    // Solicitations go to groups the kernel never joined for these addresses: the
    // agent has the links take in all multicast (a real NIC would filter them out).
    for dev in [Topology::CONSUMER_A_LINK, Topology::PROVIDER_LINK] {
        let flags = t.node.ip(&["link", "show", "dev", dev]).unwrap();
        assert!(flags.contains("ALLMULTI"), "{dev}: {flags}");
    }

    // The client resolves the endpoint address by itself, to the node's consumer link.
    ask_any(&t.consumer_a, at6(ENDPOINT, 80), "hello", WAIT).unwrap_or_else(|e| fail6(&bed, e));
    let entry = neighbour(&t.consumer_a, ENDPOINT, "eth0");
    assert!(
        entry.contains(&format!("lladdr {}", mac_text(cons_a))),
        "the client's entry for {ENDPOINT}: {entry:?}"
    );
    assert!(
        ["REACHABLE", "STALE", "DELAY", "PROBE"]
            .iter()
            .any(|s| entry.contains(s)),
        "{entry:?}"
    );
    // So does the provider host its replies' destination, the NAT address.
    let entry = neighbour(&t.provider, NAT6, "eth0");
    assert!(
        entry.contains(&format!("lladdr {}", mac_text(prov))),
        "the provider's entry for {NAT6}: {entry:?}"
    );

    // An address nobody owns: the connection fails for want of a neighbour.
    let before = bed.status();
    let nobody = connect_any(&t.consumer_a, 0, at6(NOBODY, 80), Duration::from_secs(2));
    assert!(nobody.is_err(), "connected to {NOBODY}");
    let entry = neighbour(&t.consumer_a, NOBODY, "eth0");
    assert!(
        entry.contains("FAILED") || entry.contains("INCOMPLETE"),
        "the client's entry for {NOBODY}: {entry:?}"
    );

    // Asked one by one: answered for the endpoint on the consumer link and for the NAT
    // address on the provider link, with that link's MAC; not for an address nobody
    // has, nor for either address on the other side.
    let wait = Duration::from_millis(500);
    let ask = |ns: &Namespace, from: Ipv6Addr, ip: Ipv6Addr| {
        link::solicit(ns, "eth0", from, ip, wait).unwrap()
    };
    assert_eq!(ask(&t.consumer_a, v6::CLIENT, ENDPOINT), Some(cons_a));
    assert_eq!(ask(&t.consumer_a, v6::CLIENT, NOBODY), None);
    assert_eq!(ask(&t.consumer_a, v6::CLIENT, NAT6), None);
    // vpc-b has no endpoint.
    assert_eq!(ask(&t.consumer_b, v6::CLIENT, ENDPOINT), None);
    let target = v6::TARGETS[0];
    assert_eq!(ask(&t.provider, target, NAT6), Some(prov));
    assert_eq!(ask(&t.provider, target, ENDPOINT), None);
    let after = bed.status();
    let answered = counted(&after, "neighbour_advert") - counted(&before, "neighbour_advert");
    assert!(answered >= 2, "{answered} advertisements: {after:#}");
    // The agent puts the links back as it found them when it stops.
    let mut bed = bed;
    bed.agent.stop().unwrap();
    for dev in [Topology::CONSUMER_A_LINK, Topology::PROVIDER_LINK] {
        let flags = bed.topology.node.ip(&["link", "show", "dev", dev]).unwrap();
        assert!(!flags.contains("ALLMULTI"), "{dev}: {flags}");
    }
}

#[test]
fn ipv6_datagrams_from_both_networks_at_once_never_cross_and_a_zero_checksum_is_refused() {
    if !root() {
        return;
    }
    // UDP echo on port 7 (its targets checked over TCP 8080, as an NLB does).
    let listeners = tcp_80(&V6_TARGETS)
        + "          - port: 7\n            protocol: udp\n            targets:\n\
           \x20             - { ip: 'fd00:16::10', port: 7 }\n";
    let endpoints =
        endpoint("vpce-a", "team-a", "vpc-a", "") + &endpoint("vpce-b", "team-b", "vpc-b", "");
    let config = config_with("'fd00:16::100'", &listeners, &endpoints).replace(
        "        listeners:\n",
        "        health_check: { protocol: tcp, port: 8080 }\n        listeners:\n",
    );
    let (bed, _servers) = bed6(&config);
    let t = &bed.topology;
    let _echo = UdpServer::start_any(&t.provider, "echo6", at6(v6::TARGETS[0], 7))
        .unwrap_or_else(|e| fail6(&bed, e));
    std::thread::scope(|scope| {
        let asks = [("a", &t.consumer_a), ("b", &t.consumer_b)].map(|(name, ns)| {
            let bed = &bed;
            scope.spawn(move || {
                let mut ports = Vec::new();
                for i in 0..30 {
                    let line = format!("{name}{i}");
                    let answer = udp_ask_any(ns, at6(ENDPOINT, 7), &line, WAIT)
                        .unwrap_or_else(|e| fail6(bed, e));
                    assert_eq!(answer.echo, line, "consumer {name} got another's answer");
                    assert_eq!(answer.target, "echo6");
                    assert_eq!(answer.seen_from.ip(), IpAddr::V6(NAT6));
                    ports.push(answer.seen_from.port());
                }
                ports
            })
        });
        let [a, b] = asks.map(|ask| ask.join().unwrap());
        assert!(
            a.iter().all(|port| !b.contains(port)),
            "a NAT port served both networks"
        );
    });
    let status = bed.status();
    for id in ["vpce-a", "vpce-b"] {
        assert!(counted_for(&status, id, "forward_new") >= 1, "{status:#}");
        assert!(counted_for(&status, id, "reply") >= 30, "{status:#}");
    }

    // IPv6 UDP must have a checksum (RFC 8200): one sent without is refused.
    let socket = udp_socket_any(&t.consumer_a, at6(ENDPOINT, 7), Duration::from_secs(1)).unwrap();
    set_no_udp6_checksum(&socket);
    let before = counted_for(&bed.status(), "vpce-a", "drop_bad_checksum");
    socket.send(b"no checksum").unwrap();
    let answer = socket.recv(&mut [0; 128]);
    assert!(answer.is_err(), "a datagram without checksum was answered");
    let after = bed.status();
    assert_eq!(
        counted_for(&after, "vpce-a", "drop_bad_checksum") - before,
        1,
        "{after:#}"
    );
}

/// Sends datagrams with a UDP checksum of 0 (what IPv4 allows and IPv6 does not).
fn set_no_udp6_checksum(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt with an int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_UDP,
            libc::UDP_NO_CHECK6_TX,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_NO_CHECK6_TX");
}

#[test]
fn rejecting_an_ipv6_endpoint_with_drain_keeps_the_connection_and_with_reset_cuts_it() {
    if !root() {
        return;
    }
    for on_revoke in ["drain", "reset"] {
        let accepted = "    state: available\n    accepted_at: \"2026-11-28T09:00:00Z\"\n";
        let config = config(
            "'fd00:16::100'",
            &V6_TARGETS,
            &endpoint("vpce-a", "team-a", "vpc-a", accepted),
        )
        .replace(
            "    acceptance_required: false\n",
            &format!("    acceptance_required: true\n    on_revoke: {on_revoke}\n"),
        );
        let (mut bed, _servers) = bed6(&config);
        let client = &bed.topology.consumer_a;
        let mut stream =
            connect_any(client, 0, at6(ENDPOINT, 80), WAIT).unwrap_or_else(|e| fail6(&bed, e));
        let first = exchange_any(&mut stream, "hello").unwrap_or_else(|e| fail6(&bed, e));
        let before = bed.agent.generation();
        let path = bed.config.0.to_str().unwrap().to_string();
        let said = bed.agent_command(&["reject", "vpce-a", "--config", &path]);
        assert!(said.contains("available -> rejected"), "{said}");
        bed.wait_applied(before);

        let new = ask_any(
            &bed.topology.consumer_a,
            at6(ENDPOINT, 80),
            "new",
            Duration::from_secs(1),
        );
        assert!(
            new.is_err(),
            "{on_revoke}: a rejected endpoint took a new connection"
        );
        let result = exchange_any(&mut stream, "after");
        match on_revoke {
            "drain" => {
                let answer = result.unwrap_or_else(|e| fail6(&bed, e));
                assert_eq!(answer.echo, "after");
                assert_eq!(
                    (answer.target, answer.seen_from),
                    (first.target, first.seen_from),
                    "the drained connection moved"
                );
            }
            _ => {
                // The node's RST must carry a checksum the client's kernel accepts.
                let error = result.expect_err("a reset revocation must cut the connection");
                let reset = error
                    .chain()
                    .filter_map(|c| c.downcast_ref::<std::io::Error>())
                    .any(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
                assert!(
                    reset,
                    "cut, but not by a reset: {error:#}\n{}",
                    evidence(&bed)
                );
                assert!(counted_for(&bed.status(), "vpce-a", "reset_sent") >= 1);
            }
        }
    }
}

#[test]
fn a_jumbo_ipv6_consumer_and_a_1500_provider_side_carry_10_mib_both_ways_and_learn_the_path_mtu() {
    if !root() {
        return;
    }
    let listeners = tcp_80(&V6_TARGETS)
        + "          - port: 7\n            protocol: udp\n            targets:\n\
           \x20             - { ip: 'fd00:16::10', port: 7 }\n";
    let config = config_with(
        "'fd00:16::100'",
        &listeners,
        &endpoint("vpce-a", "team-a", "vpc-a", ""),
    )
    .replace(
        "        listeners:\n",
        "        health_check: { protocol: tcp, port: 8080 }\n        listeners:\n",
    );
    let mut servers = None;
    let bed = bed_prepared(&config, |t| {
        t.add_ipv6().expect("IPv6 addresses");
        t.consumer_a
            .ip(&["link", "set", "eth0", "mtu", "9000"])
            .unwrap();
        t.node
            .ip(&["link", "set", Topology::CONSUMER_A_LINK, "mtu", "9000"])
            .unwrap();
        servers = Some(v6_servers(t));
    });
    let t = &bed.topology;
    let _echo = UdpServer::start_any(&t.provider, "echo6", at6(v6::TARGETS[0], 7))
        .unwrap_or_else(|e| fail6(&bed, e));

    // TCP: the MSS is clamped to fit 1500 bytes less 60 of IPv6 and TCP headers.
    let mut stream =
        connect_any(&t.consumer_a, 0, at6(ENDPOINT, 80), WAIT).unwrap_or_else(|e| fail6(&bed, e));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let line = "m".repeat(10 << 20);
    let answer = exchange_any(&mut stream, &line).unwrap_or_else(|e| fail6(&bed, e));
    assert!(answer.echo == line, "the 10 MiB came back changed");
    let status = bed.status();
    assert!(
        counted_for(&status, "vpce-a", "mss_clamped") >= 1,
        "{status:#}"
    );
    assert_eq!(
        counted_for(&status, "vpce-a", "drop_fib_frag_needed"),
        0,
        "a segment did not fit: {status:#}"
    );

    // UDP: a datagram that fits goes through; one with DF over the provider side's MTU
    // is answered with packet too big, and the consumer's kernel learns the path MTU
    // and refuses the next one itself.
    udp_ask_any(&t.consumer_a, at6(ENDPOINT, 7), "fits", WAIT).unwrap_or_else(|e| fail6(&bed, e));
    learns_path_mtu(&bed, &t.consumer_a, 3000, 1500);
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-a", "icmp_frag_needed_sent"),
        1,
        "{status:#}"
    );

    // Without "don't fragment" (a socket's default) the client's kernel fragments the
    // datagram to the path MTU it learned: IPv6 fragments carry a fragment extension
    // header, which the node does not take — every fragment dropped and counted (3008
    // bytes of UDP in pieces of at most 1448 are three), nothing answered.
    let fragmented =
        udp_socket_any(&t.consumer_a, at6(ENDPOINT, 7), Duration::from_secs(1)).unwrap();
    let before = counted(&bed.status(), "drop_ipv6_extension");
    fragmented.send(&[b'f'; 3000]).unwrap();
    let answer = fragmented.recv(&mut [0; 4096]);
    assert!(answer.is_err(), "a fragmented datagram was answered");
    let after = bed.status();
    assert_eq!(
        counted(&after, "drop_ipv6_extension") - before,
        3,
        "{after:#}"
    );
}

/// A datagram of `payload` bytes from `ns` to `ENDPOINT`:7 that must not be fragmented
/// (path MTU discovery on: not by the sender's own kernel either) gets no answer; the
/// packet too big teaches the sender's kernel `mtu`, and it then refuses the next one
/// itself.
fn learns_path_mtu(bed: &Bed, ns: &Namespace, payload: usize, mtu: u32) {
    let socket = udp_socket_any(ns, at6(ENDPOINT, 7), Duration::from_secs(1)).unwrap();
    set_ipv6_option(&socket, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO);
    let datagram = vec![b'm'; payload];
    socket.send(&datagram).unwrap();
    assert!(
        socket.recv(&mut [0; 4096]).is_err(),
        "{payload} bytes crossed a link narrower than they are"
    );
    wait_path_mtu(bed, ns, mtu);
    let refused = socket
        .send(&datagram)
        .expect_err("a datagram over the path MTU");
    assert_eq!(refused.raw_os_error(), Some(libc::EMSGSIZE), "{refused}");
}

/// Waits until `ns` has learned a path MTU of `mtu` towards `ENDPOINT` (from a packet
/// too big), or fails with the evidence.
fn wait_path_mtu(bed: &Bed, ns: &Namespace, mtu: u32) {
    let deadline = std::time::Instant::now() + WAIT;
    let wanted = format!("mtu {mtu}");
    let learned = loop {
        let route = ns
            .ip(&["-6", "-o", "route", "get", &ENDPOINT.to_string()])
            .unwrap();
        if route.contains(&wanted) || std::time::Instant::now() > deadline {
            break route;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        learned.contains(&wanted),
        "no path MTU of {mtu} learned: {learned}\n{}",
        evidence(bed)
    );
}

#[test]
fn icmpv6_echo_is_answered_within_security_groups_and_errors_reach_the_consumers_socket() {
    if !root() {
        return;
    }
    // UDP port 7 with no server behind it: the provider's kernel answers port
    // unreachable, to the NAT address.
    let listeners = tcp_80(&V6_TARGETS)
        + "          - port: 7\n            protocol: udp\n            targets:\n\
           \x20             - { ip: 'fd00:16::10', port: 7 }\n";
    let endpoints = endpoint("vpce-a", "team-a", "vpc-a", "")
        + &endpoint(
            "vpce-b",
            "team-b",
            "vpc-b",
            "    security_groups:\n      - { cidr: 'fd00:a::20/128' }\n",
        );
    let config = config_with("'fd00:16::100'", &listeners, &endpoints).replace(
        "        listeners:\n",
        "        health_check: { protocol: tcp, port: 8080 }\n        listeners:\n",
    );
    let (bed, _servers) = bed6(&config);
    let t = &bed.topology;

    // A consumer pings its endpoint; one its security groups do not admit gets nothing.
    let ping = |ns: &Namespace| {
        ns.command("ping")
            .args([
                "-6",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                &ENDPOINT.to_string(),
            ])
            .output()
            .unwrap()
    };
    let answered = ping(&t.consumer_a);
    assert!(
        answered.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&answered.stdout),
        String::from_utf8_lossy(&answered.stderr),
        evidence(&bed)
    );
    assert!(
        !ping(&t.consumer_b).status.success(),
        "vpce-b answered a ping"
    );
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-a", "icmp_echo_reply"),
        2,
        "{status:#}"
    );
    assert_eq!(
        counted_for(&status, "vpce-b", "icmp_echo_reply"),
        0,
        "{status:#}"
    );
    assert!(
        counted_for(&status, "vpce-b", "drop_security_group") >= 2,
        "{status:#}"
    );

    // The target's port unreachable, translated back: the consumer's connected socket
    // sees the refusal.
    let socket = udp_socket_any(&t.consumer_a, at6(ENDPOINT, 7), WAIT).unwrap();
    socket.send(b"anyone?").unwrap();
    let error = socket
        .recv(&mut [0; 64])
        .expect_err("an answer from a closed port");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error}\n{}",
        evidence(&bed)
    );
    assert_eq!(counted_for(&bed.status(), "vpce-a", "icmp_error"), 1);

    // A datagram whose hop limit runs out at the node: time exceeded, from the
    // endpoint's address, to a socket that asked to hear of such errors.
    let socket = udp_socket_any(&t.consumer_a, at6(ENDPOINT, 7), WAIT).unwrap();
    set_ipv6_option(&socket, libc::IPV6_UNICAST_HOPS, 1);
    set_ipv6_option(&socket, libc::IPV6_RECVERR, 1);
    socket.send(b"far?").unwrap();
    let error = socket
        .recv(&mut [0; 64])
        .expect_err("an answer with hop limit 1");
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EHOSTUNREACH),
        "{error}\n{}",
        evidence(&bed)
    );
    assert_eq!(
        counted_for(&bed.status(), "vpce-a", "icmp_time_exceeded_sent"),
        1
    );
}

/// An integer IPv6 socket option.
fn set_ipv6_option(socket: &std::net::UdpSocket, option: libc::c_int, value: libc::c_int) {
    set_socket_option(socket, libc::IPPROTO_IPV6, option, value);
}

// ---- IPv6 endpoints of IPv4 services (6→4, RFC 7915, stateful) ----

/// An IPv4 NAT address only: the IPv6 flows of an IPv4-only service leave from it.
const NAT4_ONLY: &str = "172.16.0.100";
/// The IPv4-only service's listeners: TCP 80 to both IPv4 targets, UDP 7 to an echo on
/// the first, UDP 53 to a responder there that sends no UDP checksum (port 5353), and a
/// TCP and a UDP port with nothing behind them (81 to 8181, 9 to 9). Health checked
/// over TCP 8080, as an NLB does.
fn v4_listeners() -> String {
    let udp = |port: u16, to: u16| {
        format!(
            "          - port: {port}\n            protocol: udp\n            targets:\n\
             \x20             - {{ ip: 172.16.0.10, port: {to} }}\n"
        )
    };
    tcp_80(&V4_TARGETS)
        + "          - port: 81\n            targets:\n\
           \x20             - { ip: 172.16.0.10, port: 8181 }\n"
        + &udp(7, 7)
        + &udp(53, 5353)
        + &udp(9, 9)
}

/// A config of the IPv4-only service with `endpoints`, its NAT address IPv4 only.
fn config64(endpoints: &str) -> String {
    config_with(NAT4_ONLY, &v4_listeners(), endpoints).replace(
        "        listeners:\n",
        "        health_check: { protocol: tcp, port: 8080 }\n        listeners:\n",
    )
}

/// The standard topology with IPv6 on the consumer hosts only (`v6::CLIENT`) and none on
/// the provider side at all (turned off on the provider host and the node's provider
/// link), the example's IPv4 targets serving, and the agent running `config`; `prepare`
/// runs on the topology first.
fn bed64(config: &str, prepare: impl FnOnce(&Topology)) -> Bed {
    bed_prepared(config, |t| {
        let client = format!("{}/{}", v6::CLIENT, v6::CONSUMER_PREFIX);
        for consumer in [&t.consumer_a, &t.consumer_b] {
            consumer
                .sysctl("net.ipv6.conf.eth0.disable_ipv6", "0")
                .unwrap();
            consumer
                .ip(&["-6", "addr", "add", &client, "dev", "eth0", "nodad"])
                .unwrap();
        }
        for key in ["all", "default"] {
            t.provider
                .sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "1")
                .unwrap();
        }
        t.node
            .sysctl(
                &format!("net.ipv6.conf.{}.disable_ipv6", Topology::PROVIDER_LINK),
                "1",
            )
            .unwrap();
        prepare(t);
    })
}

/// `flows --json`, one value per connection.
fn flows(bed: &Bed) -> Vec<serde_json::Value> {
    bed.agent_command(&["flows", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// A field of a `flows --json` row, as text.
fn field(flow: &serde_json::Value, key: &str) -> String {
    flow[key].as_str().unwrap_or_default().to_string()
}

#[test]
fn an_ipv6_only_consumer_reaches_an_ipv4_only_service_through_6to4_translation() {
    if !root() {
        return;
    }
    let bed = bed64(
        &config64(&endpoint("vpce-a", "team-a", "vpc-a", "")),
        |_| {},
    );
    let t = &bed.topology;
    let provider_v6 = t.provider.ip(&["-6", "addr", "show"]).unwrap();
    assert!(
        provider_v6.trim().is_empty(),
        "the provider host has IPv6: {provider_v6}"
    );
    let nat = IpAddr::V4(NAT);

    // Several connections, each to an IPv4 target, seen from the IPv4 NAT address. The
    // first one's handshake as it was on either wire: the SYN left as IPv4 (TTL = hop
    // limit - 1, DF, identification 0), the SYN-ACK came back as IPv6 from the
    // endpoint's address; each MSS fits 1500 bytes with the IPv6 side's 60 of headers.
    let provider_wire = Frames::open(&t.provider, "eth0");
    let consumer_wire = Frames::open(&t.consumer_a, "eth0");
    let mut targets = std::collections::BTreeSet::new();
    for i in 0..8 {
        let line = format!("six to four {i}");
        let answer = ask_any(&t.consumer_a, at6(ENDPOINT, 80), &line, WAIT)
            .unwrap_or_else(|e| fail6(&bed, e));
        assert_eq!(answer.echo, line);
        assert!(
            ["orders-1", "orders-2"].contains(&answer.target.as_str()),
            "went to {answer:?}"
        );
        assert_eq!(answer.seen_from.ip(), nat, "{answer:?}");
        targets.insert(answer.target);
    }
    eprintln!("targets used: {targets:?}");
    let syn = provider_wire
        .find(WAIT, |w| (w.from.ip() == nat && w.syn).then_some(*w))
        .unwrap_or_else(|| panic!("no translated SYN on the provider link\n{}", evidence(&bed)));
    eprintln!("the SYN on the provider link: {syn:?}");
    assert!(
        addresses::TARGETS.map(IpAddr::V4).contains(&syn.to.ip()) && syn.to.port() == 8080,
        "{syn:?}"
    );
    assert_eq!(
        (syn.hops, syn.class, syn.dont_fragment, syn.id),
        (63, 0, true, 0),
        "{syn:?}"
    );
    assert_eq!(syn.mss, Some(1440), "{syn:?}");
    let syn_ack = consumer_wire
        .find(WAIT, |w| {
            (w.from == at6(ENDPOINT, 80) && w.syn && w.ack).then_some(*w)
        })
        .unwrap_or_else(|| panic!("no SYN-ACK on the consumer link\n{}", evidence(&bed)));
    eprintln!("the SYN-ACK on the consumer link: {syn_ack:?}");
    assert_eq!(syn_ack.to.ip(), IpAddr::V6(v6::CLIENT));
    assert_eq!(syn_ack.hops, 63, "{syn_ack:?}");
    assert_eq!(
        syn_ack.mss,
        Some(1440),
        "the target's 1460, clamped: {syn_ack:?}"
    );
    drop((provider_wire, consumer_wire));

    // A megabyte each way on one connection: full-sized segments, each translated (the
    // node does not fragment, and DF is set on the IPv4 side).
    let mut stream =
        connect_any(&t.consumer_a, 0, at6(ENDPOINT, 80), WAIT).unwrap_or_else(|e| fail6(&bed, e));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let first = exchange_any(&mut stream, "hello").unwrap_or_else(|e| fail6(&bed, e));
    let big = "x".repeat(1 << 20);
    let answer = exchange_any(&mut stream, &big).unwrap_or_else(|e| fail6(&bed, e));
    assert!(answer.echo == big, "the megabyte came back changed");
    assert_eq!(
        (&answer.target, answer.seen_from),
        (&first.target, first.seen_from),
        "the connection moved"
    );

    // `flows` shows it as both sides see it: an IPv6 client and endpoint address, an
    // IPv4 target and NAT address.
    let client = stream.local_addr().unwrap();
    let listed = flows(&bed);
    let row = listed
        .iter()
        .find(|f| field(f, "client") == client.to_string())
        .unwrap_or_else(|| panic!("no flow of {client}: {listed:#?}"));
    let target = bed.server(&first.target).addr;
    assert_eq!(
        [
            "network",
            "protocol",
            "endpoint",
            "endpoint_address",
            "target",
            "nat",
            "state"
        ]
        .map(|k| field(row, k)),
        [
            "vpc-a".to_string(),
            "tcp".to_string(),
            "vpce-a".to_string(),
            at6(ENDPOINT, 80).to_string(),
            target.to_string(),
            first.seen_from.to_string(),
            "established".to_string(),
        ],
        "{row:#}"
    );
    drop(stream);

    // UDP both ways, its traffic class and hop limit carried into TOS and TTL.
    let _echo = UdpServer::start(&t.provider, "echo", at(addresses::TARGETS[0], 7))
        .unwrap_or_else(|e| fail6(&bed, e));
    for i in 0..5 {
        let line = format!("datagram {i}");
        let answer = udp_ask_any(&t.consumer_a, at6(ENDPOINT, 7), &line, WAIT)
            .unwrap_or_else(|e| fail6(&bed, e));
        assert_eq!(
            (answer.target.as_str(), answer.echo.as_str()),
            ("echo", line.as_str())
        );
        assert_eq!(answer.seen_from.ip(), nat, "{answer:?}");
    }
    let provider_wire = Frames::open(&t.provider, "eth0");
    let consumer_wire = Frames::open(&t.consumer_a, "eth0");
    let socket = udp_socket_any(&t.consumer_a, at6(ENDPOINT, 7), WAIT).unwrap();
    set_ipv6_option(&socket, libc::IPV6_TCLASS, 0xb8);
    set_ipv6_option(&socket, libc::IPV6_UNICAST_HOPS, 20);
    socket.send(b"marked").unwrap();
    let mut buffer = [0; 256];
    let n = socket
        .recv(&mut buffer)
        .unwrap_or_else(|e| fail6(&bed, e.into()));
    assert!(buffer[..n].ends_with(b" marked"), "{:?}", &buffer[..n]);
    let port = socket.local_addr().unwrap().port();
    let out = provider_wire
        .find(WAIT, |w| (w.udp && w.from.ip() == nat).then_some(*w))
        .expect("the datagram on the provider link");
    eprintln!("the datagram on the provider link: {out:?}");
    assert_eq!(out.to, SocketAddr::from(at(addresses::TARGETS[0], 7)));
    assert_eq!(
        (out.hops, out.class, out.dont_fragment, out.id),
        (19, 0xb8, true, 0),
        "TTL from the hop limit, TOS from the class: {out:?}"
    );
    let back = consumer_wire
        .find(WAIT, |w| {
            (w.udp && w.to == at6(v6::CLIENT, port)).then_some(*w)
        })
        .expect("the answer on the consumer link");
    eprintln!("the answer on the consumer link: {back:?}");
    assert_eq!((back.from, back.hops), (at6(ENDPOINT, 7), 63), "{back:?}");

    // An IPv4 answer without a UDP checksum cannot become IPv6 (which must have one):
    // dropped and counted, the client hears nothing.
    let before = counted_for(&bed.status(), "vpce-a", "drop_bad_checksum");
    let responder = NoChecksumResponder::start(&t.provider, at(addresses::TARGETS[0], 5353));
    let answer = udp_ask_any(
        &t.consumer_a,
        at6(ENDPOINT, 53),
        "query",
        Duration::from_secs(1),
    );
    assert!(
        answer.is_err(),
        "an answer without checksum came through: {answer:?}"
    );
    assert_eq!(
        responder.answered(),
        1,
        "the responder never saw the query\n{}",
        evidence(&bed)
    );
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-a", "drop_bad_checksum") - before,
        1,
        "{status:#}"
    );

    // The IPv4 targets saw only the IPv4 NAT address; every flow was vpce-a's: nine
    // connections, six datagrams answered and the one whose answer was dropped.
    let (connections, answered) = (9, 5 + 1);
    let peers = bed.all_peers();
    assert_eq!(peers.len(), connections, "{peers:?}");
    assert!(peers.iter().all(|p| p.ip() == nat), "targets saw {peers:?}");
    assert_eq!(
        counted_for(&status, "vpce-a", "forward_new"),
        (connections + answered + 1) as u64,
        "{status:#}"
    );
    assert!(
        counted_for(&status, "vpce-a", "reply") >= (connections + answered) as u64,
        "{status:#}"
    );
}

#[test]
fn one_client_reaches_a_dual_stack_endpoint_of_an_ipv4_only_service_over_both_families() {
    if !root() {
        return;
    }
    let endpoints = "  - id: vpce-dual
    service: orders
    principal: team-a
    consumer_network: vpc-a
    addresses:
      - { zone: zone-1, ip: 10.0.0.100 }
      - { zone: zone-1, ip: 'fd00:a::100' }
";
    let bed = bed64(&config64(endpoints), |_| {});
    let client = &bed.topology.consumer_a;
    // Connections of both families held open at once, by turns, from the same source
    // port: all end at the IPv4 targets from the one IPv4 NAT address, so no two may
    // share a target and NAT port.
    let mut open = Vec::new();
    for i in 0..4 {
        let port = 41000 + i;
        for to in [SocketAddr::from(at(ORDERS, 80)), at6(ENDPOINT, 80)] {
            let mut stream = connect_any(client, port, to, WAIT).unwrap_or_else(|e| fail6(&bed, e));
            let line = format!("{to} from {port}");
            let answer = exchange_any(&mut stream, &line).unwrap_or_else(|e| fail6(&bed, e));
            assert_eq!(answer.echo, line);
            assert!(
                ["orders-1", "orders-2"].contains(&answer.target.as_str()),
                "{to} went to {answer:?}"
            );
            assert_eq!(answer.seen_from.ip(), IpAddr::V4(NAT), "{answer:?}");
            open.push((to, stream, answer));
        }
    }
    // Each goes on, with its own target and NAT port.
    for (to, stream, first) in &mut open {
        let line = format!("again {to}");
        let answer = exchange_any(stream, &line).unwrap_or_else(|e| fail6(&bed, e));
        assert_eq!(answer.echo, line, "{to} got another's answer");
        assert_eq!(
            (&answer.target, answer.seen_from),
            (&first.target, first.seen_from),
            "{to} moved"
        );
    }
    let seen: std::collections::BTreeSet<_> = open
        .iter()
        .map(|(_, _, a)| (a.target.clone(), a.seen_from))
        .collect();
    assert_eq!(
        seen.len(),
        open.len(),
        "two connections shared a NAT port: {seen:?}"
    );
    // Both families listed, each with its own client and endpoint address, the same
    // kind of target and NAT address.
    let listed = flows(&bed);
    assert_eq!(listed.len(), 8, "{listed:#?}");
    for family_v6 in [false, true] {
        let rows: Vec<_> = listed
            .iter()
            .filter(|f| field(f, "client").starts_with('[') == family_v6)
            .collect();
        assert_eq!(rows.len(), 4, "{listed:#?}");
        for row in rows {
            let endpoint = if family_v6 {
                at6(ENDPOINT, 80)
            } else {
                at(ORDERS, 80).into()
            };
            assert_eq!(
                field(row, "endpoint_address"),
                endpoint.to_string(),
                "{row:#}"
            );
            let nat: SocketAddr = field(row, "nat").parse().unwrap();
            let target: SocketAddr = field(row, "target").parse().unwrap();
            assert_eq!(nat.ip(), IpAddr::V4(NAT), "{row:#}");
            assert!(target.is_ipv4() && target.port() == 8080, "{row:#}");
        }
    }
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-dual", "forward_new"),
        8,
        "{status:#}"
    );
    assert_eq!(status["flow_entries"].as_u64(), Some(16), "{status:#}");
    assert_eq!(bed.all_peers().len(), 8);
}

#[test]
fn a_1400_provider_link_under_6to4_carries_4_mib_both_ways_and_udp_learns_the_path_mtu() {
    if !root() {
        return;
    }
    let bed = bed64(&config64(&endpoint("vpce-a", "team-a", "vpc-a", "")), |t| {
        t.node
            .ip(&["link", "set", Topology::PROVIDER_LINK, "mtu", "1400"])
            .unwrap();
        t.provider
            .ip(&["link", "set", "eth0", "mtu", "1400"])
            .unwrap();
    });
    let t = &bed.topology;
    let _echo = UdpServer::start(&t.provider, "echo", at(addresses::TARGETS[0], 7))
        .unwrap_or_else(|e| fail6(&bed, e));

    // TCP: the SYN's MSS is clamped to the 1400 link less the IPv6 side's 60 bytes of
    // headers; so is the SYN-ACK's, which leaves the client's segments room on the
    // IPv4 side.
    let provider_wire = Frames::open(&t.provider, "eth0");
    let consumer_wire = Frames::open(&t.consumer_a, "eth0");
    let mut stream =
        connect_any(&t.consumer_a, 0, at6(ENDPOINT, 80), WAIT).unwrap_or_else(|e| fail6(&bed, e));
    let nat = IpAddr::V4(NAT);
    let syn = provider_wire
        .find(WAIT, |w| (w.from.ip() == nat && w.syn).then_some(*w))
        .unwrap_or_else(|| panic!("no translated SYN on the provider link\n{}", evidence(&bed)));
    let syn_ack = consumer_wire
        .find(WAIT, |w| {
            (w.from == at6(ENDPOINT, 80) && w.syn && w.ack).then_some(*w)
        })
        .unwrap_or_else(|| panic!("no SYN-ACK on the consumer link\n{}", evidence(&bed)));
    eprintln!("SYN on the provider link: {syn:?}\nSYN-ACK on the consumer link: {syn_ack:?}");
    assert_eq!(syn.mss, Some(1340), "{syn:?}");
    assert!(
        syn_ack.mss.is_some_and(|mss| mss <= 1360),
        "the client's segments would not fit 1400 as IPv4: {syn_ack:?}"
    );
    drop((provider_wire, consumer_wire));

    // 4 MiB each way, while the segments each side sends are watched: the target's (as
    // IPv4) and the client's (as IPv6, 20 bytes longer than they leave the node) within
    // 1400 on the provider side. Neither host offloads segmentation, so what they send
    // is what crosses.
    let provider_wire = Frames::open(&t.provider, "eth0");
    let consumer_wire = Frames::open(&t.consumer_a, "eth0");
    let done = std::sync::atomic::AtomicBool::new(false);
    // The largest IP packet `from` sent, how many TCP segments and payload bytes: until
    // the transfer is over and what it queued is read (a minute at most).
    let watch = |frames: &Frames, from: &[IpAddr]| {
        let mut seen = Sent::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let frame =
                frames.next(deadline.min(std::time::Instant::now() + Duration::from_millis(200)));
            if frame.is_none() && done.load(std::sync::atomic::Ordering::Relaxed)
                || std::time::Instant::now() > deadline
            {
                return seen;
            }
            if let Some(w) = frame.and_then(|frame| Wire::parse(&frame))
                && w.tcp
                && from.contains(&w.from.ip())
            {
                seen.largest = seen.largest.max(w.length);
                seen.segments += 1;
                seen.payload += w.payload;
            }
        }
    };
    let targets = addresses::TARGETS.map(IpAddr::V4);
    let mib = 4 << 20;
    let (target_side, client_side) = std::thread::scope(|scope| {
        let target = scope.spawn(|| watch(&provider_wire, &targets));
        let client = scope.spawn(|| watch(&consumer_wire, &[IpAddr::V6(v6::CLIENT)]));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let line = "m".repeat(mib);
        let answer = exchange_any(&mut stream, &line);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let answer = answer.unwrap_or_else(|e| fail6(&bed, e));
        assert!(answer.echo == line, "the 4 MiB came back changed");
        (target.join().unwrap(), client.join().unwrap())
    });
    eprintln!("sent by the target: {target_side:?}\nsent by the client: {client_side:?}");
    // Every segment was seen (4 MiB of payload each way at least), and none too big.
    assert!(target_side.payload >= mib, "{target_side:?}");
    assert!(client_side.payload >= mib, "{client_side:?}");
    assert!(target_side.largest <= 1400, "a target sent {target_side:?}");
    assert!(
        client_side.largest <= 1420,
        "the client sent {client_side:?}"
    );
    let status = bed.status();
    assert!(
        counted_for(&status, "vpce-a", "mss_clamped") >= 2,
        "{status:#}"
    );
    for counter in ["drop_fib_frag_needed", "icmp_frag_needed_sent"] {
        assert_eq!(
            counted_for(&status, "vpce-a", counter),
            0,
            "{counter}: {status:#}"
        );
    }

    // UDP: a datagram that fits goes through; one with "don't fragment" that fits the
    // consumer's 1500 but not, as IPv4, the provider's 1400 is answered with packet too
    // big of the MTU as the IPv6 side sees it (1420), which the client's kernel learns.
    udp_ask_any(&t.consumer_a, at6(ENDPOINT, 7), &"u".repeat(1200), WAIT)
        .unwrap_or_else(|e| fail6(&bed, e));
    // 40 + 8 + 1392 = 1440 bytes as IPv6, 1420 as IPv4.
    learns_path_mtu(&bed, &t.consumer_a, 1392, 1420);
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-a", "icmp_frag_needed_sent"),
        1,
        "{status:#}"
    );
}

/// A closed IPv4 target port behind an IPv6 endpoint refuses its client as one behind
/// an IPv4 endpoint does: over TCP by the target's RST (translated like any segment),
/// over UDP by the provider's ICMPv4 port unreachable, translated to ICMPv6.
#[test]
fn a_closed_ipv4_port_behind_an_ipv6_endpoint_refuses_its_client_over_tcp_and_udp() {
    if !root() {
        return;
    }
    let endpoints = "  - id: vpce-dual
    service: orders
    principal: team-a
    consumer_network: vpc-a
    addresses:
      - { zone: zone-1, ip: 10.0.0.100 }
      - { zone: zone-1, ip: 'fd00:a::100' }
";
    let bed = bed64(&config64(endpoints), |_| {});
    let t = &bed.topology;
    let short = Duration::from_secs(2);

    // TCP 81 leads to 8181, where nothing listens.
    let refused = connect_any(&t.consumer_a, 0, at6(ENDPOINT, 81), short)
        .map(drop)
        .expect_err("connected to a closed port");
    let io = refused
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert_eq!(
        io,
        Some(std::io::ErrorKind::ConnectionRefused),
        "{refused:#}\n{}",
        evidence(&bed)
    );

    // UDP 9 leads to 9, where nothing listens either: the provider's kernel answers
    // port unreachable (ICMPv4) to the NAT address, whichever family the client's is.
    let errors = |status: &serde_json::Value| {
        (
            counted_for(status, "vpce-dual", "icmp_error"),
            counted_for(status, "vpce-dual", "drop_icmp"),
        )
    };
    for (n, to) in [SocketAddr::from(at(ORDERS, 9)), at6(ENDPOINT, 9)]
        .into_iter()
        .enumerate()
    {
        let before = icmp_out_dest_unreachs(&t.provider);
        let socket = udp_socket_any(&t.consumer_a, to, short).unwrap();
        socket.send(b"anyone?").unwrap();
        let error = socket
            .recv(&mut [0; 64])
            .expect_err("an answer from a closed port");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{to}: {error}\n{}",
            evidence(&bed)
        );
        assert_eq!(
            icmp_out_dest_unreachs(&t.provider) - before,
            1,
            "{to}: the provider sent no port unreachable"
        );
        let status = bed.status();
        assert_eq!(errors(&status), (n as u64 + 1, 0), "{to}: {status:#}");
    }
}

/// A host behind a router on the provider side (the provider host, routing), over a
/// link of a smaller MTU (1300).
const FAR: Ipv4Addr = Ipv4Addr::new(172, 16, 1, 10);

/// A router beyond the node speaks to IPv6 consumers of an IPv4 service through its
/// ICMPv4 errors, translated: fragmentation needed as packet too big 20 bytes larger
/// (TCP finds the path MTU across the translation; a datagram's sender learns it) and
/// time exceeded as time exceeded.
#[test]
fn a_router_beyond_the_node_reaches_ipv6_consumers_with_packet_too_big_and_time_exceeded() {
    if !root() {
        return;
    }
    let listeners = "          - port: 80\n            targets:\n\
                     \x20             - { ip: 172.16.1.10, port: 8080 }\n\
                     \x20         - port: 7\n            protocol: udp\n            targets:\n\
                     \x20             - { ip: 172.16.1.10, port: 7 }\n";
    let endpoints =
        endpoint("vpce-a", "team-a", "vpc-a", "") + &endpoint("vpce-b", "team-b", "vpc-b", "");
    let config = config_with(NAT4_ONLY, listeners, &endpoints).replace(
        "        listeners:\n",
        "        health_check: { protocol: tcp, port: 8080 }\n        listeners:\n",
    );
    let mut far = None;
    let bed = bed64(&config, |t| {
        let ns = Namespace::new("far").unwrap();
        testbed::veth(&t.provider, "eth1", &ns, "eth0").unwrap();
        t.provider
            .ip(&["addr", "add", "172.16.1.1/24", "dev", "eth1"])
            .unwrap();
        t.provider.sysctl("net.ipv4.ip_forward", "1").unwrap();
        ns.ip(&["addr", "add", &format!("{FAR}/24"), "dev", "eth0"])
            .unwrap();
        for (ns, dev) in [(&t.provider, "eth1"), (&ns, "eth0")] {
            ns.ip(&["link", "set", dev, "mtu", "1300"]).unwrap();
        }
        // The far host announces an MSS for 1500 (its own link's MTU kept out of it):
        // the client's segments must find the path's MTU.
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "172.16.1.1",
            "advmss",
            "1460",
        ])
        .unwrap();
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
        t.node
            .ip(&[
                "route",
                "add",
                "172.16.1.0/24",
                "via",
                &addresses::TARGETS[0].to_string(),
                "dev",
                Topology::PROVIDER_LINK,
            ])
            .unwrap();
        let server = Server::start(&ns, "far", at(FAR, 8080)).unwrap();
        let echo = UdpServer::start(&ns, "far-echo", at(FAR, 7)).unwrap();
        far = Some((server, echo, ns));
    });
    let t = &bed.topology;
    let nat = IpAddr::V4(NAT);

    // TCP: the client's full-sized segments (1500 bytes as IPv6, 1480 as IPv4) do not
    // fit the far link; the router's fragmentation needed becomes packet too big of
    // 1320, and the connection carries a megabyte each way once the client's kernel
    // has learned it (without it, the transfer would hang on the first full segment).
    let mut stream =
        connect_any(&t.consumer_a, 0, at6(ENDPOINT, 80), WAIT).unwrap_or_else(|e| fail6(&bed, e));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let first = exchange_any(&mut stream, "hello").unwrap_or_else(|e| fail6(&bed, e));
    assert_eq!(
        (first.target.as_str(), first.seen_from.ip()),
        ("far", nat),
        "{first:?}"
    );
    let big = "r".repeat(1 << 20);
    let answer = exchange_any(&mut stream, &big).unwrap_or_else(|e| fail6(&bed, e));
    assert!(answer.echo == big, "the megabyte came back changed");
    wait_path_mtu(&bed, &t.consumer_a, 1320);
    let status = bed.status();
    assert!(
        counted_for(&status, "vpce-a", "icmp_error") >= 1,
        "{status:#}"
    );
    assert_eq!(
        counted_for(&status, "vpce-a", "icmp_frag_needed_sent"),
        0,
        "the node's own link was never too small: {status:#}"
    );

    // UDP (the other network): a datagram that fits goes through; one with "don't
    // fragment" over the far link's MTU (1348 bytes as IPv6, 1328 as IPv4) comes back
    // as packet too big, and the sender's kernel refuses the next one itself.
    let consumer = &t.consumer_b;
    let answer =
        udp_ask_any(consumer, at6(ENDPOINT, 7), "far?", WAIT).unwrap_or_else(|e| fail6(&bed, e));
    assert_eq!(
        (answer.target.as_str(), answer.seen_from.ip()),
        ("far-echo", nat)
    );
    learns_path_mtu(&bed, consumer, 1300, 1320);
    assert_eq!(counted_for(&bed.status(), "vpce-b", "icmp_error"), 1);

    // Time exceeded: a hop limit of 2 leaves the node as a TTL of 1, which runs out at
    // the router; its error reaches a socket that asked to hear of such errors.
    let socket = udp_socket_any(consumer, at6(ENDPOINT, 7), WAIT).unwrap();
    set_ipv6_option(&socket, libc::IPV6_UNICAST_HOPS, 2);
    set_ipv6_option(&socket, libc::IPV6_RECVERR, 1);
    socket.send(b"far away?").unwrap();
    let error = socket
        .recv(&mut [0; 64])
        .expect_err("an answer with hop limit 2");
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EHOSTUNREACH),
        "{error}\n{}",
        evidence(&bed)
    );
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-b", "icmp_error"),
        2,
        "{status:#}"
    );
    assert_eq!(
        counted_for(&status, "vpce-b", "icmp_time_exceeded_sent"),
        0,
        "the node's own: {status:#}"
    );
    for id in ["vpce-a", "vpce-b"] {
        assert_eq!(counted_for(&status, id, "drop_icmp"), 0, "{status:#}");
    }
    drop(far);
}

/// Port unreachables and other destination unreachables `ns` has sent (ICMPv4,
/// `OutDestUnreachs` of /proc/net/snmp).
fn icmp_out_dest_unreachs(ns: &Namespace) -> u64 {
    let snmp = ns.exec("cat", &["/proc/net/snmp"]).unwrap();
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutDestUnreachs")
        .and_then(|(_, value)| value.parse().ok())
        .expect("OutDestUnreachs")
}

/// A UDP responder on the provider side that answers one datagram without a UDP
/// checksum (SO_NO_CHECK: what IPv4 allows), then stops; waits at most 5 s.
struct NoChecksumResponder {
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl NoChecksumResponder {
    fn start(ns: &Namespace, addr: std::net::SocketAddrV4) -> Self {
        /// SO_NO_CHECK (asm-generic/socket.h).
        const SO_NO_CHECK: libc::c_int = 11;
        let socket = ns
            .enter(move || std::net::UdpSocket::bind(addr))
            .unwrap()
            .unwrap();
        set_socket_option(&socket, libc::SOL_SOCKET, SO_NO_CHECK, 1);
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0; 512];
            let Ok((n, peer)) = socket.recv_from(&mut buffer) else {
                return 0;
            };
            let mut answer = b"answer to ".to_vec();
            answer.extend_from_slice(&buffer[..n]);
            u32::from(socket.send_to(&answer, peer).is_ok())
        });
        Self {
            thread: Some(thread),
        }
    }

    /// How many it answered (0 or 1): waits for it to finish.
    fn answered(mut self) -> u32 {
        self.thread.take().unwrap().join().unwrap()
    }
}

/// What a host was seen to send over a transfer.
#[derive(Debug, Default)]
struct Sent {
    /// The largest IP packet, its header included.
    largest: usize,
    segments: usize,
    /// Transport payload bytes (retransmissions counted again).
    payload: usize,
}

/// What a test looks at in a captured IP packet of either family.
#[derive(Debug, Clone, Copy)]
struct Wire {
    from: SocketAddr,
    to: SocketAddr,
    /// The IP packet's length, its header included.
    length: usize,
    /// The TTL or hop limit.
    hops: u8,
    /// The TOS or traffic class.
    class: u8,
    /// IPv4's "don't fragment" and identification (false and 0 for IPv6).
    dont_fragment: bool,
    id: u16,
    tcp: bool,
    udp: bool,
    syn: bool,
    ack: bool,
    /// A TCP MSS option's value.
    mss: Option<u16>,
    /// The transport payload's length.
    payload: usize,
}

impl Wire {
    /// An Ethernet frame's IP packet, if it is TCP or UDP.
    fn parse(frame: &[u8]) -> Option<Self> {
        use etherparse::{NetHeaders, PacketHeaders, TcpOptionElement, TransportHeader};
        let headers = PacketHeaders::from_ethernet_slice(frame).ok()?;
        let (from, to, length, hops, class, dont_fragment, id) = match headers.net? {
            NetHeaders::Ipv4(ip, _) => (
                IpAddr::from(ip.source),
                IpAddr::from(ip.destination),
                usize::from(ip.total_len),
                ip.time_to_live,
                ip.dscp.value() << 2 | ip.ecn.value(),
                ip.dont_fragment,
                ip.identification,
            ),
            NetHeaders::Ipv6(ip, _) => (
                IpAddr::from(ip.source),
                IpAddr::from(ip.destination),
                usize::from(ip.payload_length) + 40,
                ip.hop_limit,
                ip.traffic_class,
                false,
                0,
            ),
            NetHeaders::Arp(_) => return None,
        };
        let mut wire = Self {
            from: (from, 0).into(),
            to: (to, 0).into(),
            length,
            hops,
            class,
            dont_fragment,
            id,
            tcp: false,
            udp: false,
            syn: false,
            ack: false,
            mss: None,
            payload: headers.payload.slice().len(),
        };
        match headers.transport? {
            TransportHeader::Tcp(tcp) => {
                wire.from.set_port(tcp.source_port);
                wire.to.set_port(tcp.destination_port);
                (wire.tcp, wire.syn, wire.ack) = (true, tcp.syn, tcp.ack);
                wire.mss = tcp.options.elements_iter().find_map(|o| match o {
                    Ok(TcpOptionElement::MaximumSegmentSize(mss)) => Some(mss),
                    _ => None,
                });
            }
            TransportHeader::Udp(udp) => {
                wire.from.set_port(udp.source_port);
                wire.to.set_port(udp.destination_port);
                wire.udp = true;
            }
            _ => return None,
        }
        Some(wire)
    }
}

/// Frames crossing a link of a namespace, both ways, from when it was opened (a packet
/// socket): headers as they were on the wire. What a host sends is seen as sent (the
/// testbed's hosts offload neither checksums nor segmentation); what it receives may be
/// merged by GRO.
struct Frames(std::os::fd::OwnedFd);

impl Frames {
    fn open(ns: &Namespace, dev: &str) -> Self {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let index = testbed::link_index(ns, dev).unwrap();
        let all = (libc::ETH_P_ALL as u16).to_be();
        let fd = ns
            .enter(move || -> std::io::Result<OwnedFd> {
                // SAFETY: plain socket calls on a descriptor we own.
                unsafe {
                    let fd = libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                        i32::from(all),
                    );
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let fd = OwnedFd::from_raw_fd(fd);
                    // Room to queue a bulk transfer's frames while they are looked at.
                    let room: libc::c_int = 64 << 20;
                    if libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&raw const room).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    let mut at: libc::sockaddr_ll = std::mem::zeroed();
                    at.sll_family = libc::AF_PACKET as u16;
                    at.sll_protocol = all;
                    at.sll_ifindex = index as i32;
                    if libc::bind(
                        fd.as_raw_fd(),
                        (&raw const at).cast(),
                        size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(fd)
                }
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("a packet socket on {dev} in {}: {e}", ns.name()));
        Self(fd)
    }

    /// The next frame, if one comes before `deadline`.
    fn next(&self, deadline: std::time::Instant) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let mut poll = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let wait = left.as_millis().clamp(1, 100) as i32;
            // SAFETY: one valid pollfd, bounded wait.
            if unsafe { libc::poll(&mut poll, 1, wait) } <= 0 {
                continue;
            }
            // SAFETY: a valid buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if n > 0 {
                buffer.truncate(n as usize);
                return Some(buffer);
            }
        }
    }

    /// The first packet seen within `wait` that `pick` takes.
    fn find<T>(&self, wait: Duration, mut pick: impl FnMut(&Wire) -> Option<T>) -> Option<T> {
        let deadline = std::time::Instant::now() + wait;
        while let Some(frame) = self.next(deadline) {
            if let Some(found) = Wire::parse(&frame).as_ref().and_then(&mut pick) {
                return Some(found);
            }
        }
        None
    }
}

/// An integer socket option.
fn set_socket_option(
    socket: &std::net::UdpSocket,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt with an int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "socket option {option} at level {level}");
}
