//! IPv6: endpoints with IPv6 addresses in real consumer networks, forwarded to IPv6
//! targets from an IPv6 NAT address — two overlapping networks at once, a dual-stack
//! endpoint from one client, IPv6 security groups changed live, nothing in from the
//! provider side, and neighbour discovery answered for what the node owns and nothing
//! else.

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
    let socket = udp_socket_any(&t.consumer_a, at6(ENDPOINT, 7), Duration::from_secs(1)).unwrap();
    // Path MTU discovery on: never fragmented by its own kernel either.
    set_ipv6_option(&socket, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO);
    socket.send(&[b'j'; 3000]).unwrap();
    assert!(
        socket.recv(&mut [0; 4096]).is_err(),
        "3000 bytes crossed a 1500 link"
    );
    wait_path_mtu(&bed, &t.consumer_a, 1500);
    let refused = socket
        .send(&[b'j'; 3000])
        .expect_err("a datagram over the path MTU");
    assert_eq!(refused.raw_os_error(), Some(libc::EMSGSIZE), "{refused}");
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
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt with an int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IPv6 socket option {option}");
}
