//! End to end: the real agent binary on a real topology of namespaces and veths, real
//! TCP servers and clients (see testbed::Topology). Needs root.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use testbed::{
    Agent, Namespace, Server, Topology, addresses, ask, at, connect, connect_from, exchange,
};

const AGENT: &str = env!("CARGO_BIN_EXE_endpoint-agent");
/// Endpoint IPs of the example config (examples/demo.yaml).
const ORDERS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const BILLING: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
const NAT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 100);
const WAIT: Duration = Duration::from_secs(3);

fn example() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.yaml");
    std::fs::read_to_string(path).unwrap()
}

/// The standard topology with the example's targets serving and the agent running
/// `config` (a file the test may rewrite), with events going to a file.
struct Bed {
    agent: Agent,
    servers: Vec<Server>,
    topology: Topology,
    config: TempFile,
    events: TempFile,
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(kind: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "endpoint-e2e-{}-{:?}-{kind}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bed_with(config: &str) -> Bed {
    bed_prepared(config, |_| {})
}

/// As `bed_with`, with `prepare` run on the topology before the agent starts.
fn bed_prepared(config: &str, prepare: impl FnOnce(&Topology)) -> Bed {
    let topology = Topology::build().expect("topology");
    prepare(&topology);
    let servers = vec![
        Server::start(
            &topology.provider,
            "orders-1",
            at(addresses::TARGETS[0], 8080),
        )
        .unwrap(),
        Server::start(
            &topology.provider,
            "orders-2",
            at(addresses::TARGETS[1], 8080),
        )
        .unwrap(),
        Server::start(
            &topology.provider,
            "billing",
            at(addresses::TARGETS[0], 9090),
        )
        .unwrap(),
    ];
    let config = TempFile::new("config.yaml", config);
    let events = TempFile::new("events.jsonl", "");
    let agent = start_agent(&topology, &config, &events);
    Bed {
        agent,
        servers,
        topology,
        config,
        events,
    }
}

fn start_agent(topology: &Topology, config: &TempFile, events: &TempFile) -> Agent {
    let events = events.0.to_str().unwrap();
    Agent::start(
        &topology.node,
        Path::new(AGENT),
        topology.node.name(),
        &config.0,
        &["--events", events],
    )
    .expect("agent")
}

impl Bed {
    fn server(&self, name: &str) -> &Server {
        self.servers.iter().find(|s| s.name == name).unwrap()
    }

    fn all_peers(&self) -> Vec<SocketAddr> {
        self.servers.iter().flat_map(Server::peers).collect()
    }

    fn fail(&self, e: anyhow::Error) -> ! {
        panic!("{e:#}\nagent log:\n{}", self.agent.log())
    }

    /// Rewrites the config and waits until the agent has applied it (SIGHUP, so as not
    /// to wait for the next look at the file).
    fn reconfigure(&self, text: &str) {
        let before = self.agent.log().matches("reloaded:").count();
        std::fs::write(&self.config.0, text).unwrap();
        self.agent.signal(libc::SIGHUP);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.agent.log().matches("reloaded:").count() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "not reloaded:\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config.0).unwrap()
    }

    fn events(&self) -> String {
        std::fs::read_to_string(&self.events.0).unwrap()
    }

    /// Runs an agent command (status, accept …) for this bed's instance and config.
    fn agent_command(&self, args: &[&str]) -> String {
        let output = self.agent.command(args).unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

#[test]
fn data_round_trips_through_the_endpoint_and_the_target_sees_only_the_nat_address() {
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
fn pending_and_rejected_endpoints_get_no_connection() {
    for state in ["pendingAcceptance", "rejected"] {
        let config = example().replace(
            "    ip: 10.0.0.101\n    zone: zone-1",
            &format!("    ip: 10.0.0.101\n    zone: zone-1\n    state: {state}"),
        );
        assert!(config.contains(&format!("state: {state}")));
        let bed = bed_with(&config);
        let result = ask(
            &bed.topology.consumer_b,
            at(BILLING, 80),
            "hello",
            Duration::from_secs(2),
        );
        assert!(result.is_err(), "a {state} endpoint answered: {result:?}");
        assert!(
            bed.server("billing").peers().is_empty(),
            "the {state} endpoint's target saw a connection"
        );
        // The available endpoint next to it works.
        ask(&bed.topology.consumer_b, at(ORDERS, 80), "hello", WAIT)
            .unwrap_or_else(|e| bed.fail(e));
    }
}

#[test]
fn the_provider_side_cannot_open_a_connection_into_a_consumer_network() {
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
fn the_agent_detaches_and_restores_the_node_on_sigterm_and_on_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut bed = bed_with(&example());
        let node = &bed.topology.node;
        assert!(xdp_attached(node), "the program is attached while running");
        assert!(node.ip(&["neigh", "show"]).unwrap().contains("managed"));
        let status = bed.agent.stop_with(signal).unwrap();
        assert!(
            status.success(),
            "agent exit: {status}\n{}",
            bed.agent.log()
        );
        let node = &bed.topology.node;
        assert!(
            !xdp_attached(node),
            "an XDP program is still attached after exit"
        );
        assert!(
            !node.ip(&["neigh", "show"]).unwrap().contains("managed"),
            "managed neighbours left behind"
        );
        let forwarding = node
            .exec("sysctl", &["-n", "net.ipv4.conf.prov.forwarding"])
            .unwrap();
        assert_eq!(forwarding.trim(), "0", "forwarding not restored");
        let result = ask(
            &bed.topology.consumer_a,
            at(ORDERS, 80),
            "hello",
            Duration::from_secs(1),
        );
        assert!(
            result.is_err(),
            "the endpoint still answers after the agent stopped"
        );
    }
}

#[test]
fn an_interface_without_native_xdp_falls_back_to_generic_and_the_log_says_so() {
    // macvlan has no native XDP support.
    let config = example().replacen(
        "  nat_ports:",
        "    - name: mv0\n      role: provider\n  nat_ports:",
        1,
    );
    let bed = bed_prepared(&config, |t| {
        t.node
            .ip(&[
                "link", "add", "name", "mv0", "link", "prov", "type", "macvlan",
            ])
            .unwrap();
        t.node.ip(&["link", "set", "mv0", "up"]).unwrap();
    });
    let log = bed.agent.log();
    assert!(log.contains("mv0: native XDP not supported"), "{log}");
    assert!(log.contains("mv0: attached in generic mode"), "{log}");
    assert!(log.contains("prov: attached in native mode"), "{log}");
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
}

fn xdp_attached(ns: &Namespace) -> bool {
    ns.ip(&["link", "show"]).unwrap().contains("xdp")
}

#[test]
fn an_invalid_config_names_the_line_exits_non_zero_and_attaches_nothing() {
    let topology = Topology::build().unwrap();
    let config = TempFile::new(
        "config.yaml",
        &example().replacen("service: orders", "service: ordrs", 1),
    );
    let output = topology
        .node
        .command(AGENT)
        .args(["--instance", topology.node.name(), "run", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let line = example()
        .lines()
        .position(|l| l.contains("service: orders"))
        .unwrap()
        + 1;
    let expected = format!(
        ":{line}: error: endpoint \"vpce-a-orders\" (endpoints[0].service): no service named \"ordrs\""
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!xdp_attached(&topology.node));
}

#[test]
fn namespaces_are_removed_even_when_a_test_fails() {
    let names = std::panic::catch_unwind(|| {
        let topology = Topology::build().unwrap();
        let names: Vec<String> = [
            &topology.consumer_a,
            &topology.consumer_b,
            &topology.node,
            &topology.provider,
        ]
        .iter()
        .map(|ns| ns.name().to_string())
        .collect();
        std::panic::panic_any(names);
    })
    .unwrap_err()
    .downcast::<Vec<String>>()
    .unwrap();
    let left = testbed_namespaces();
    for name in names.iter() {
        assert!(!left.contains(name), "{name} survived a failing test");
    }

    // What a killed run left behind (its process is gone) is swept at the next start.
    let stale = "epx-999999999-0-stale";
    std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    let _fresh = Namespace::new("fresh").unwrap();
    assert!(
        !testbed_namespaces().contains(&stale.to_string()),
        "a stale namespace was not swept"
    );
}

fn testbed_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A conversation that must go on: the same target and NAT port every time.
struct Conversation {
    stream: std::net::TcpStream,
    seen: (String, std::net::SocketAddrV4),
    turn: u32,
}

impl Conversation {
    fn open(bed: &Bed) -> Self {
        let mut stream =
            connect(&bed.topology.consumer_a, at(ORDERS, 80), WAIT).unwrap_or_else(|e| bed.fail(e));
        let answer = exchange(&mut stream, "hello").unwrap_or_else(|e| bed.fail(e));
        Self {
            stream,
            seen: (answer.target, answer.seen_from),
            turn: 0,
        }
    }

    /// One more exchange; `log` is shown if it fails.
    fn say(&mut self, when: &str, log: &str) {
        self.turn += 1;
        let line = format!("turn {}", self.turn);
        let answer = exchange(&mut self.stream, &line)
            .unwrap_or_else(|e| panic!("the conversation broke {when}: {e:#}\nagent log:\n{log}"));
        assert_eq!(answer.echo, line, "{when}");
        assert_eq!((answer.target, answer.seen_from), self.seen, "moved {when}");
    }
}

/// An endpoint in vpc-b that has nothing to do with vpc-a's connection.
fn with_extra_endpoint(config: &str, n: u32) -> String {
    format!(
        "{config}\n  - {{ id: extra-{n}, service: billing, principal: team-b, consumer_network: vpc-b, ip: 10.0.0.{}, zone: zone-1 }}\n",
        150 + n % 50
    )
}

#[test]
fn a_long_lived_connection_survives_100_config_changes_and_an_agent_kill_and_restart() {
    let bed = bed_with(&example());
    let mut conversation = Conversation::open(&bed);
    let base = example();
    for n in 0..100 {
        // Endpoints come and go, weights and billing's state change: none concern vpc-a.
        let mut text = if n % 2 == 0 {
            with_extra_endpoint(&base, n)
        } else {
            base.clone()
        };
        if n % 3 == 0 {
            text = text.replace(
                "port: 9090 }",
                &format!("port: 9090, weight: {} }}", 1 + n % 4),
            );
        }
        bed.reconfigure(&text);
        conversation.say(&format!("after config change {n}"), &bed.agent.log());
    }

    let Bed {
        agent,
        servers,
        topology,
        config,
        events,
    } = bed;
    agent.kill().unwrap();
    conversation.say("with the agent killed (kill -9)", "");
    let agent = start_agent(&topology, &config, &events);
    assert!(
        agent.log().contains("adopting the data path"),
        "{}",
        agent.log()
    );
    conversation.say("after the agent restarted", &agent.log());
    drop((agent, servers, topology));
}

/// Waits until the agent has applied what is in the file (after a CLI edited it).
fn wait_applied(bed: &Bed, reloads_before: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bed.agent.log().matches("reloaded:").count() <= reloads_before {
        assert!(
            std::time::Instant::now() < deadline,
            "not reloaded:\n{}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rejecting_with_drain_keeps_the_connection_and_with_reset_cuts_it() {
    for on_revoke in ["drain", "reset"] {
        let bed =
            bed_with(&example().replace("on_revoke: drain", &format!("on_revoke: {on_revoke}")));
        let mut conversation = Conversation::open(&bed);
        let before = bed.agent.log().matches("reloaded:").count();
        let config = bed.config.0.to_str().unwrap().to_string();
        let said = bed.agent_command(&["reject", "vpce-a-orders", "--config", &config]);
        assert!(said.contains("available -> rejected"), "{said}");
        wait_applied(&bed, before);
        assert!(bed.config_text().contains("state: rejected"));

        // New connections fail either way.
        let new = ask(
            &bed.topology.consumer_a,
            at(ORDERS, 80),
            "new",
            Duration::from_secs(1),
        );
        assert!(
            new.is_err(),
            "{on_revoke}: a new connection to a rejected endpoint worked"
        );
        match on_revoke {
            "drain" => conversation.say("after a draining rejection", &bed.agent.log()),
            _ => {
                let line = "after the reset";
                let result = exchange(&mut conversation.stream, line);
                let error = result.expect_err("a reset revocation must cut the connection");
                let reset = error
                    .chain()
                    .filter_map(|c| c.downcast_ref::<std::io::Error>())
                    .any(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
                assert!(reset, "cut, but not by a reset: {error:#}");
            }
        }
        let events = bed.events();
        assert!(
            events.contains("\"event\":\"rejected\",\"endpoint\":\"vpce-a-orders\""),
            "{events}"
        );
    }
}

#[test]
fn an_invalid_file_is_refused_and_changes_nothing() {
    let bed = bed_with(&example());
    let mut conversation = Conversation::open(&bed);
    let status_before = bed.agent_command(&["status"]);
    let broken = with_extra_endpoint(&example(), 1)
        .replace("service: billing, principal", "service: nothing, principal");
    std::fs::write(&bed.config.0, &broken).unwrap();
    bed.agent
        .wait_for("no service named \"nothing\"", Duration::from_secs(5))
        .unwrap();
    bed.agent
        .wait_for("keeping the running config", Duration::from_secs(1))
        .unwrap();
    conversation.say("after an invalid file", &bed.agent.log());
    let status_after = bed.agent_command(&["status"]);
    assert!(
        !status_after.contains("extra-1"),
        "the invalid file's endpoint appeared"
    );
    let endpoints = |s: &str| {
        s.lines()
            .filter(|l| l.contains("vpce-"))
            .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(endpoints(&status_before), endpoints(&status_after));
}

#[test]
fn a_source_outside_the_security_group_gets_no_connection() {
    // 10.0.0.10 is outside 10.0.0.0/30.
    let bed = bed_with(&example().replace(
        "{ cidr: 10.0.0.0/24, ports: [80] }",
        "{ cidr: 10.0.0.0/30, ports: [80] }",
    ));
    let result = ask(
        &bed.topology.consumer_a,
        at(ORDERS, 80),
        "hello",
        Duration::from_secs(1),
    );
    assert!(
        result.is_err(),
        "a source outside the security group connected"
    );
    // vpc-b's endpoint has no security group.
    ask(&bed.topology.consumer_b, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
    let status = bed.agent_command(&["status"]);
    let dropped = status
        .lines()
        .find(|l| l.trim_start().starts_with("drop_security_group"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        dropped
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1,
        "{dropped}"
    );
    // Widening the group lets it in, live.
    bed.reconfigure(&example());
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
}

#[test]
fn accepting_a_request_rewrites_the_file_opens_the_endpoint_and_says_so() {
    let bed = bed_with(&example());
    let config = bed.config.0.to_str().unwrap().to_string();
    let listed = bed.agent_command(&["connections", "--config", &config]);
    assert!(listed.starts_with("pendingAcceptance (1):"), "{listed}");
    assert!(listed.contains("vpce-b-billing") && listed.contains("(new request)"));
    // Traffic while pending is refused, and reported once.
    assert!(
        ask(
            &bed.topology.consumer_b,
            at(BILLING, 80),
            "knock",
            Duration::from_secs(1)
        )
        .is_err()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !bed.events().contains("pending_traffic") {
        assert!(
            std::time::Instant::now() < deadline,
            "no pending_traffic event:\n{}",
            bed.events()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let before = bed.agent.log().matches("reloaded:").count();
    let said = bed.agent_command(&["accept", "vpce-b-billing", "--config", &config]);
    assert!(said.contains("pendingAcceptance -> available"), "{said}");
    let text = bed.config_text();
    assert!(
        text.contains("    zone: zone-1\n    state: available\n    accepted_at: \""),
        "{text}"
    );
    // Everything else is as it was.
    for line in example().lines() {
        assert!(text.contains(line), "accept lost the line {line:?}");
    }
    wait_applied(&bed, before);
    let answer = ask(&bed.topology.consumer_b, at(BILLING, 80), "open", WAIT)
        .unwrap_or_else(|e| bed.fail(e));
    assert_eq!(answer.target, "billing");

    let events: Vec<serde_json::Value> = bed
        .events()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: &str| {
        events
            .iter()
            .filter(|e| e["endpoint"] == id)
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("vpce-b-billing"),
        ["connection_request", "pending_traffic", "accepted"]
    );
    assert_eq!(of("vpce-a-orders"), ["connection_request", "accepted"]);
    // A second accept is refused: the model has no such transition.
    let again = bed
        .agent
        .command(&["accept", "vpce-b-billing", "--config", &config])
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already available"));

    // The consumer deletes the endpoint: it is gone from the data path, and said so.
    let text = bed.config_text();
    let start = text.find("  - id: vpce-b-billing").unwrap();
    bed.reconfigure(&text[..start]);
    assert!(
        ask(
            &bed.topology.consumer_b,
            at(BILLING, 80),
            "gone?",
            Duration::from_secs(1)
        )
        .is_err()
    );
    let last = bed.events().lines().last().unwrap().to_string();
    assert!(
        last.contains("\"event\":\"deleted\",\"endpoint\":\"vpce-b-billing\""),
        "{last}"
    );
}

#[test]
fn closed_connections_leave_the_flow_table_and_their_nat_ports_are_reused() {
    let bed = bed_with(&example());
    let flows = |bed: &Bed| -> usize {
        let status = bed.agent_command(&["status"]);
        let first = status.lines().next().unwrap_or_default();
        first
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{status}"))
    };
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

/// The example with fast health checks on the orders load balancer (every second, one
/// result flips a target), and `extra` added to the load balancer.
fn checked(extra: &str) -> String {
    let shipped = "{ protocol: tcp, interval_seconds: 5, timeout_seconds: 2, healthy_threshold: 2, unhealthy_threshold: 2 }";
    let example = example();
    assert!(
        example.contains(shipped),
        "the example's health check changed"
    );
    example.replacen(
        shipped,
        &format!(
            "{{ interval_seconds: 1, timeout_seconds: 1, healthy_threshold: 1, unhealthy_threshold: 1{extra} }}"
        ),
        1,
    )
}

/// The targets that answered `n` new connections from consumer a.
fn answered_by(bed: &Bed, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            ask(
                &bed.topology.consumer_a,
                at(ORDERS, 80),
                &format!("new {i}"),
                WAIT,
            )
            .unwrap_or_else(|e| bed.fail(e))
            .target
        })
        .collect()
}

#[test]
fn a_stopped_target_gets_no_new_flows_within_the_check_interval_and_returns_when_it_recovers() {
    let config = checked("");
    assert!(config.contains("interval_seconds: 1"));
    let mut bed = bed_with(&config);
    let mut conversation = Conversation::open(&bed);
    let (kept, _) = conversation.seen.clone();
    let stopped = if kept == "orders-1" {
        "orders-2"
    } else {
        "orders-1"
    };
    let index = bed.servers.iter().position(|s| s.name == stopped).unwrap();
    let addr = bed.servers[index].addr;
    bed.servers[index].stop();
    bed.agent
        .wait_for("is unhealthy", Duration::from_secs(5))
        .unwrap();

    assert!(
        answered_by(&bed, 20).iter().all(|t| *t == kept),
        "a new flow went to the stopped target"
    );
    conversation.say("after the other target went down", &bed.agent.log());

    bed.servers[index] = Server::start(&bed.topology.provider, stopped, addr).unwrap();
    bed.agent
        .wait_for("is healthy", Duration::from_secs(5))
        .unwrap();
    assert!(
        answered_by(&bed, 30).iter().any(|t| t == stopped),
        "the recovered target got no new flow"
    );
    let events = bed.events();
    assert!(
        events.contains("\"event\":\"target_unhealthy\""),
        "{events}"
    );
    assert!(events.contains("\"event\":\"target_healthy\""), "{events}");
}

#[test]
fn an_http_check_takes_a_target_out_on_a_bad_status() {
    let bed = bed_with(&checked(
        ", protocol: http, path: /health, expect_status: 200",
    ));
    bed.server("orders-2").set_health(503);
    bed.agent
        .wait_for("is unhealthy", Duration::from_secs(5))
        .unwrap();
    assert!(answered_by(&bed, 10).iter().all(|t| t == "orders-1"));
    bed.server("orders-2").set_health(200);
    bed.agent
        .wait_for("is healthy", Duration::from_secs(5))
        .unwrap();
    assert!(answered_by(&bed, 30).iter().any(|t| t == "orders-2"));
}

#[test]
fn new_flows_prefer_the_endpoint_zone_and_fall_back_across_zones() {
    // orders-2 (172.16.0.11) moves to zone-2; the endpoints are in zone-1.
    let config = checked("").replacen(
        "{ ip: 172.16.0.11, port: 8080, weight: 1 }",
        "{ ip: 172.16.0.11, port: 8080, weight: 1, zone: zone-2 }",
        1,
    );
    let mut bed = bed_with(&config);
    assert!(
        answered_by(&bed, 10).iter().all(|t| t == "orders-1"),
        "a flow left the zone"
    );
    let index = bed
        .servers
        .iter()
        .position(|s| s.name == "orders-1")
        .unwrap();
    bed.servers[index].stop();
    bed.agent
        .wait_for("is unhealthy", Duration::from_secs(5))
        .unwrap();
    assert!(
        answered_by(&bed, 10).iter().all(|t| t == "orders-2"),
        "no fallback to zone-2"
    );
}

#[test]
fn one_interface_can_serve_both_roles() {
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
    let agent = Agent::start(
        &node,
        Path::new(AGENT),
        node.name(),
        &config.0,
        &["--events", "/dev/null"],
    )
    .unwrap();
    let answer = ask(&consumer, at(ORDERS, 80), "over one link", WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
    assert_eq!(answer.echo, "over one link");
    assert_eq!(*answer.seen_from.ip(), NAT);
}

#[test]
fn a_file_caught_half_written_is_never_applied() {
    let bed = bed_with(&example());
    let full = bed.config_text();
    // A writer that truncates and rewrites in place: for a moment the file holds a
    // valid config without the last endpoints.
    let cut = full
        .find("  - id: vpce-b-billing")
        .expect("the example's last endpoint");
    let reloads = bed.agent.log().matches("reloaded:").count();
    for _ in 0..5 {
        std::fs::write(&bed.config.0, &full[..cut]).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(&bed.config.0, &full).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let events = bed.events();
    assert!(
        !events.contains("\"deleted\""),
        "{events}\n{}",
        bed.agent.log()
    );
    assert_eq!(
        bed.agent.log().matches("reloaded:").count(),
        reloads,
        "a half-written file was applied:\n{}",
        bed.agent.log()
    );
    // A change that stays is applied once it has settled.
    std::fs::write(&bed.config.0, &full[..cut]).unwrap();
    wait_applied(&bed, reloads);
    assert!(bed.events().contains("\"deleted\""));
}

#[test]
fn a_second_agent_for_a_running_instance_is_refused() {
    let bed = bed_with(&example());
    let config = bed.config.0.to_str().unwrap().to_string();
    let output = bed.agent.command(&["run", "--config", &config]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by another agent (pid"),
        "{stderr}"
    );
    let output = bed.agent.command(&["cleanup"]).unwrap();
    assert!(!output.status.success(), "cleanup under a running agent");
    // The running agent is untouched.
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
}

/// Agents starting at once on a node whose bpffs is not mounted yet (a fresh
/// machine) all come up: only one mounts it, and none loses its pins.
#[test]
fn agents_starting_at_once_on_a_fresh_node_mount_bpffs_once() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };
    // A mount namespace of its own without bpffs, held open by a sleeping process.
    let mut holder = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("while umount /sys/fs/bpf 2>/dev/null; do :; done; echo unmounted; exec sleep 60")
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "unmounted");
    let mount = format!("--mount=/proc/{}/ns/mnt", holder.id());
    let beds: Vec<(Topology, TempFile)> = (0..4)
        .map(|_| {
            (
                Topology::build().unwrap(),
                TempFile::new("config.yaml", &example()),
            )
        })
        .collect();
    let in_namespaces = |topology: &Topology, args: &[&str]| {
        let mut command = Command::new("nsenter");
        command
            .arg(&mount)
            .arg(format!("--net=/run/netns/{}", topology.node.name()))
            .arg(AGENT)
            .args(["--instance", topology.node.name()])
            .args(args);
        command
    };
    let mut agents: Vec<_> = beds
        .iter()
        .map(|(topology, config)| {
            in_namespaces(topology, &["run", "--config", config.0.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let logs: Vec<String> = agents
        .iter_mut()
        .map(|agent| {
            let mut log = String::new();
            let stderr = BufReader::new(agent.stderr.take().unwrap());
            for line in stderr.lines().map_while(Result::ok) {
                log += &line;
                log.push('\n');
                if line.contains("ready:") || line.starts_with("error") {
                    break;
                }
            }
            log
        })
        .collect();
    for agent in &mut agents {
        // SAFETY: a signal to a child this test started.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let _ = agent.wait();
    }
    for (topology, _) in &beds {
        let _ = in_namespaces(topology, &["cleanup"]).output();
    }
    let _ = holder.kill();
    let _ = holder.wait();
    for log in &logs {
        assert!(log.contains("ready:"), "an agent did not come up:\n{log}");
    }
    let mounted = logs.iter().filter(|l| l.contains("mounting bpffs")).count();
    assert_eq!(mounted, 1, "{logs:?}");
}
