//! Operating it: `flows` lists exactly the live connections (and filters them), and
//! not once they closed and lingered; a real Prometheus scrapes the agent's metrics.

use std::{
    collections::BTreeSet,
    net::{Shutdown, SocketAddrV4},
};

use testbed::{UdpServer, udp_socket};

use crate::bed::*;

/// The example with billing available in vpc-b and closed connections gone after 1 s.
fn config() -> String {
    let mut config = example().replace(
        "  hash_seed: 7",
        "  hash_seed: 7\n  timeouts: { closed_seconds: 1 }",
    );
    config.push_str("    state: available\n    accepted_at: \"2026-11-28T09:10:00Z\"\n");
    config
}

/// `flows --json` with `filter`: one JSON object per connection.
fn flows(bed: &Bed, filter: &[&str]) -> Vec<serde_json::Value> {
    let args: Vec<&str> = ["flows", "--json"].iter().chain(filter).copied().collect();
    bed.agent_command(&args)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn field<'a>(flow: &'a serde_json::Value, name: &str) -> &'a str {
    flow[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {flow}"))
}

#[test]
fn flows_lists_exactly_the_live_connections_and_filters_them() {
    if !root() {
        return;
    }
    let bed = bed_with(&config());
    let _echo = UdpServer::start(&bed.topology.provider, "echo", at(addresses::TARGETS[0], 7))
        .unwrap_or_else(|e| bed.fail(e));
    let t = &bed.topology;
    let mut streams: Vec<_> = (0..3)
        .map(|i| {
            let mut stream =
                connect(&t.consumer_a, at(ORDERS, 80), WAIT).unwrap_or_else(|e| bed.fail(e));
            exchange(&mut stream, &format!("hello {i}")).unwrap_or_else(|e| bed.fail(e));
            stream
        })
        .collect();
    let datagrams = udp_socket(&t.consumer_b, at(BILLING, 7), WAIT).unwrap_or_else(|e| bed.fail(e));
    datagrams.send(b"hello").unwrap();
    datagrams.recv(&mut [0; 64]).unwrap();

    let all = flows(&bed, &[]);
    let seen: BTreeSet<(String, String, String, String)> = all
        .iter()
        .map(|f| {
            (
                field(f, "network").to_string(),
                field(f, "protocol").to_string(),
                field(f, "client").to_string(),
                field(f, "state").to_string(),
            )
        })
        .collect();
    let mut expected: BTreeSet<_> = streams
        .iter()
        .map(|s| {
            let client = SocketAddrV4::new(addresses::CLIENT, s.local_addr().unwrap().port());
            (
                "vpc-a".into(),
                "tcp".into(),
                client.to_string(),
                "established".into(),
            )
        })
        .collect();
    let udp_client = SocketAddrV4::new(addresses::CLIENT, datagrams.local_addr().unwrap().port());
    expected.insert((
        "vpc-b".into(),
        "udp".into(),
        udp_client.to_string(),
        "open".into(),
    ));
    assert_eq!(seen, expected, "{all:#?}");
    for flow in &all {
        assert_eq!(field(flow, "nat").split(':').next(), Some("172.16.0.100"));
        assert!(flow["idle_seconds"].as_u64().unwrap() <= 2, "{flow}");
    }
    let udp = all.iter().find(|f| field(f, "protocol") == "udp").unwrap();
    assert_eq!(
        (
            field(udp, "endpoint"),
            field(udp, "endpoint_address"),
            field(udp, "target")
        ),
        ("vpce-b-billing", "10.0.0.101:7", "172.16.0.10:7")
    );

    // Filters.
    assert_eq!(flows(&bed, &["--endpoint", "vpce-a-orders"]).len(), 3);
    assert_eq!(flows(&bed, &["--network", "vpc-b"]).len(), 1);
    assert_eq!(flows(&bed, &["--target", "172.16.0.10:7"]).len(), 1);
    let table = bed.agent_command(&["flows"]);
    assert_eq!(table.lines().count(), 1 + 4, "{table}");
    assert!(table.lines().next().unwrap().starts_with("NETWORK"));

    // Closed: closing at once, gone once they lingered (1 s here).
    for stream in &mut streams {
        stream.shutdown(Shutdown::Both).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let closing = flows(&bed, &["--endpoint", "vpce-a-orders"]);
    assert!(
        closing.iter().all(|f| field(f, "state") == "closing"),
        "{closing:#?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let left = flows(&bed, &["--endpoint", "vpce-a-orders"]);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still listed: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(flows(&bed, &[]).len(), 1, "the UDP flow stays");
}

/// Where the agent serves metrics inside the node's namespace, and Prometheus its API.
const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9490";

/// A GET inside `ns` (HTTP/1.0: the answer ends with the connection): the body, if
/// the answer was 200 OK.
fn try_get(ns: &Namespace, addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut stream = ns
        .enter(move || std::net::TcpStream::connect_timeout(&addr, WAIT))
        .unwrap()
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or(response.clone())?;
    if head.starts_with("HTTP/1.") && head.contains(" 200 ") {
        Ok(body.to_string())
    } else {
        Err(head.to_string())
    }
}

pub fn get(ns: &Namespace, addr: &str, path: &str) -> String {
    try_get(ns, addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// `text` percent-encoded for a URL's query.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a Prometheus instant query (the first series), if it has one.
fn query(ns: &Namespace, promql: &str) -> Option<f64> {
    // Nothing while Prometheus is still starting (503).
    let path = format!("/api/v1/query?query={}", encode(promql));
    let body = try_get(ns, PROMETHEUS, &path).ok()?;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .map(|v| v.parse().unwrap())
}

/// Waits (bounded) until `promql` has a value that `done` accepts; returns it.
fn wait_for(ns: &Namespace, promql: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = query(ns, promql).filter(|v| done(*v)) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{promql}: {:?}",
            query(ns, promql)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A Prometheus server in `ns`, scraping the agent every second; stopped on drop.
struct Prometheus {
    child: std::process::Child,
    _dir: TempDir,
}

impl Prometheus {
    fn start(ns: &Namespace) -> Self {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "endpoint-e2e-prometheus-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\n\
                 scrape_configs:\n  - job_name: endpoint-agent\n    static_configs: [{{ targets: ['{METRICS}'] }}]\n"
            ),
        )
        .unwrap();
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (the Debian package; `cargo xtask setup` installs it)");
        Self { child, _dir: dir }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: a plain libc call on the process this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_agents_metrics() {
    if !root() {
        return;
    }
    let topology = Topology::build().expect("topology");
    let _server = Server::start(
        &topology.provider,
        "orders-1",
        at(addresses::TARGETS[0], 8080),
    )
    .unwrap();
    let _server2 = Server::start(
        &topology.provider,
        "orders-2",
        at(addresses::TARGETS[1], 8080),
    )
    .unwrap();
    let config = TempFile::new("config.yaml", &example());
    let agent = Agent::start(
        &topology.node,
        Path::new(AGENT),
        topology.node.name(),
        &config.0,
        &["--metrics", METRICS],
    )
    .expect("agent");
    let _prometheus = Prometheus::start(&topology.node);
    let node = &topology.node;

    // promtool accepts the exposition.
    let exposition = get(node, METRICS, "/metrics");
    let mut check = node
        .command("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), exposition.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    // Debian's promtool (2.42) lints with the classic text parser, which does not know
    // that OpenMetrics gives a counter's HELP under its family name, without `_total`
    // (prometheus/client_rust#194): that, and nothing else, is allowed.
    let report = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let family = line
            .strip_suffix("_total no help text")
            .unwrap_or_else(|| panic!("promtool: {line}\n{report}\n{exposition}"));
        assert!(
            exposition.contains(&format!("# HELP {family} ")),
            "{family} has no help\n{exposition}"
        );
    }
    assert!(get(node, METRICS, "/healthz").starts_with("ok"));

    let new = "endpoint_agent_endpoint_new_connections_total{endpoint=\"vpce-a-orders\"}";
    let before = wait_for(node, new, |_| true);
    for i in 0..5 {
        ask(
            &topology.consumer_a,
            at(ORDERS, 80),
            &format!("hello {i}"),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    }
    let after = wait_for(node, new, |v| v >= before + 5.0);
    assert_eq!(after, before + 5.0, "five connections, five new ones");
    wait_for(
        node,
        "endpoint_agent_endpoint_bytes_total{endpoint=\"vpce-a-orders\",direction=\"target_to_consumer\"}",
        |v| v > 0.0,
    );
    wait_for(node, "endpoint_agent_config_generation", |v| v >= 1.0);
    // The table as the expiry scan counted it (a small table: a whole pass a second).
    wait_for(node, "endpoint_agent_flow_table_entries", |v| v >= 10.0);
    wait_for(node, "endpoint_agent_flow_table_capacity", |v| v > 0.0);
    wait_for(
        node,
        "sum(endpoint_agent_nat_ports_used{nat_address=\"172.16.0.100\",protocol=\"tcp\"})",
        |v| v >= 5.0,
    );
    wait_for(
        node,
        "endpoint_agent_health_check_seconds{target=\"172.16.0.10:8080\",listener=\"80/tcp\"}",
        |v| v > 0.0 && v < 2.0,
    );
    let range = wait_for(node, "endpoint_agent_nat_ports_capacity", |_| true);
    assert_eq!(range, 32767.0 - 1024.0 + 1.0, "the example's nat_ports");
    wait_for(
        node,
        "endpoint_agent_target_healthy{target=\"172.16.0.10:8080\"}",
        |v| v == 1.0,
    );

    // A segment that opens nothing (a RST out of nowhere) grows its reason's series.
    let dropped = "endpoint_agent_endpoint_packets_dropped_total{endpoint=\"vpce-a-orders\",reason=\"no_flow\"}";
    let before = query(node, dropped).unwrap_or(0.0);
    let raw = testbed::flood::RawSocket::open(&topology.consumer_a).unwrap();
    for seq in 0..3 {
        raw.send(&testbed::flood::Segment::rst(
            std::net::SocketAddrV4::new(addresses::CLIENT, 40000),
            at(ORDERS, 80),
            seq,
        ))
        .unwrap();
    }
    let grown = wait_for(node, dropped, |v| v >= before + 3.0);
    assert_eq!(grown, before + 3.0);

    // What the resolver address answered, per network and result: two answers and an
    // NXDOMAIN asked in vpc-a.
    for name in [
        "orders.example.internal",
        "vpce-a-orders.orders.endpoints.internal",
        "nothing.orders.endpoints.internal",
    ] {
        topology
            .consumer_a
            .exec("dig", &["+time=2", "+tries=1", "@10.0.0.2", name, "A"])
            .unwrap();
    }
    let answers = "endpoint_agent_dns_queries_total{consumer_network=\"vpc-a\",result=\"answer\"}";
    assert_eq!(wait_for(node, answers, |v| v >= 2.0), 2.0);
    let nxdomain =
        "endpoint_agent_dns_queries_total{consumer_network=\"vpc-a\",result=\"nxdomain\"}";
    assert_eq!(wait_for(node, nxdomain, |v| v >= 1.0), 1.0);
    assert_eq!(
        query(
            node,
            "endpoint_agent_dns_queries_total{consumer_network=\"vpc-b\",result=\"answer\"}"
        ),
        Some(0.0),
        "vpc-b asked nothing"
    );

    // The shipped Grafana dashboard asks Prometheus only valid questions about metrics
    // the agent has (every family has series by now).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/endpoint-agent.json")).unwrap(),
    )
    .unwrap();
    let exposition = get(node, METRICS, "/metrics");
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("endpoint_agent_") {
                    let family = format!("endpoint_agent_{}", name.trim_end_matches("_total"));
                    assert!(
                        exposition.contains(&format!("# TYPE {family} ")),
                        "{panel}: {word} is not a metric of the agent"
                    );
                }
            }
            let promql = expr
                .replace("$service", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            let body = get(
                node,
                PROMETHEUS,
                &format!("/api/v1/query?query={}", encode(&promql)),
            );
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["status"], "success", "{promql}: {body}");
        }
    }
}

/// Points the kubelet-style `..data` link of `dir` at `version` atomically (a new link
/// renamed over the old one, as kubelet updates a mounted ConfigMap).
fn swap_data(dir: &Path, version: &str) {
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(version, &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
}

#[test]
fn a_config_map_swapped_behind_its_symlink_is_applied_within_a_second_and_a_bad_one_refused() {
    if !root() {
        return;
    }
    // config.yaml -> ..data/config.yaml, ..data -> v1: a ConfigMap as kubelet mounts it.
    let dir = TempDir(std::env::temp_dir().join(format!(
        "endpoint-e2e-configmap-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )));
    let accepted = format!(
        "{}    state: available\n    accepted_at: \"2026-11-28T09:10:00Z\"\n",
        example()
    );
    for (version, text) in [
        ("v1", example()),
        ("v2", accepted),
        ("v3", "services: [oops".into()),
    ] {
        std::fs::create_dir_all(dir.0.join(version)).unwrap();
        std::fs::write(dir.0.join(version).join("config.yaml"), text).unwrap();
    }
    swap_data(&dir.0, "v1");
    std::os::unix::fs::symlink("..data/config.yaml", dir.0.join("config.yaml")).unwrap();
    let topology = Topology::build().expect("topology");
    let mut agent = Agent::start(
        &topology.node,
        Path::new(AGENT),
        topology.node.name(),
        &dir.0.join("config.yaml"),
        &[],
    )
    .expect("agent");
    let billing_state = |agent: &Agent| -> String {
        let output = agent.command(&["status", "--json"]).unwrap();
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "vpce-b-billing")
            .map(|e| e["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(billing_state(&agent), "pendingAcceptance");

    let next = agent.generation() + 1;
    let swapped = std::time::Instant::now();
    swap_data(&dir.0, "v2");
    agent
        .wait_generation(next, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("not applied within a second: {e:#}"));
    eprintln!("applied {:?} after the swap", swapped.elapsed());
    assert_eq!(billing_state(&agent), "available");

    // A broken one is refused; what runs stays.
    swap_data(&dir.0, "v3");
    agent
        .wait_for("keeping the running config", Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(agent.generation(), next, "nothing applied");
    assert_eq!(billing_state(&agent), "available");
}

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn the_systemd_unit_verifies_and_runs_the_agent_as_documented() {
    let unit = std::fs::read_to_string(deploy("systemd/endpoint-agent.service")).unwrap();
    // Verified with this build's binary in place of the installed one.
    let dir =
        TempDir(std::env::temp_dir().join(format!("endpoint-e2e-unit-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let copy = dir.0.join("endpoint-agent.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/endpoint-agent", AGENT)).unwrap();
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (systemd; `cargo xtask setup` installs it)");
    let said = String::from_utf8_lossy(&verified.stdout).to_string()
        + &String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    for wanted in [
        "Restart=always",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "--on-exit keep",
        "RuntimeDirectoryPreserve=yes",
    ] {
        assert!(unit.contains(wanted), "the unit lacks {wanted}");
    }
    assert!(!unit.contains("CAP_SYS_MODULE") && unit.contains("CapabilityBoundingSet="));
}

#[test]
fn the_daemonset_mounts_what_its_arguments_name_and_probes_the_metrics_port() {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(deploy("kubernetes/endpoint-agent.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .collect();
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let daemon_set = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &daemon_set["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "XDP attaches to the node's interfaces"
    );
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    // The config file is the ConfigMap's key, where the ConfigMap is mounted.
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| {
        mounts.iter().find(|m| m["name"] == volume).unwrap()["mountPath"]
            .as_str()
            .unwrap()
    };
    let config = Path::new(after("--config"));
    assert_eq!(config.parent().unwrap(), Path::new(mount_of("config")));
    let key = config.file_name().unwrap().to_str().unwrap();
    let shipped = config_map["data"][key]
        .as_str()
        .expect("the ConfigMap holds the file");
    // The shipped config is one the agent takes.
    let file = TempFile::new("configmap.yaml", shipped);
    let validated = std::process::Command::new(AGENT)
        .args(["validate", "--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );
    // Pins and state are the host's: a restarted pod adopts the running data path.
    assert_eq!(mount_of("bpffs"), "/sys/fs/bpf");
    assert_eq!(mount_of("state"), "/run/endpoint-agent");
    let host_path = |volume: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap()["hostPath"]["path"]
            .clone()
    };
    assert_eq!(host_path("bpffs"), "/sys/fs/bpf");
    assert_eq!(host_path("state"), "/run/endpoint-agent");
    assert!(args.contains(&"keep"), "--on-exit keep across pod restarts");
    // Probes ask the metrics server on the port the agent serves.
    let port: u64 = after("--metrics")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports = container["ports"].as_array().unwrap();
    let named = ports.iter().find(|p| p["name"] == "metrics").unwrap();
    assert_eq!(named["containerPort"], port);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let added = &container["securityContext"]["capabilities"]["add"];
    for capability in ["BPF", "NET_ADMIN", "NET_RAW"] {
        assert!(
            added.as_array().unwrap().iter().any(|c| c == capability),
            "{capability}"
        );
    }
}

#[test]
fn logs_can_be_json_lines_for_log_shippers() {
    if !root() {
        return;
    }
    let topology = Topology::build().expect("topology");
    let config = TempFile::new("config.yaml", &example());
    let mut agent = Agent::start(
        &topology.node,
        Path::new(AGENT),
        topology.node.name(),
        &config.0,
        &["--log-format", "json"],
    )
    .expect("agent");
    agent.stop().unwrap();
    let log = agent.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let said = |text: &str| {
        lines.iter().any(|l| {
            l["level"] == "INFO" && l["message"].as_str().is_some_and(|m| m.starts_with(text))
        })
    };
    assert!(said("ready:") && said("SIGTERM"), "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["target"].is_string()),
        "{log}"
    );
}

#[test]
fn connection_records_match_the_connections_made() {
    if !root() {
        return;
    }
    let topology = Topology::build().expect("topology");
    let _servers = [0, 1].map(|i| {
        Server::start(
            &topology.provider,
            &format!("orders-{}", i + 1),
            at(addresses::TARGETS[i], 8080),
        )
        .unwrap()
    });
    let config = TempFile::new("config.yaml", &config());
    let records = TempFile::new("flows.jsonl", "");
    let records_path = records.0.to_str().unwrap().to_string();
    let agent = Agent::start(
        &topology.node,
        Path::new(AGENT),
        topology.node.name(),
        &config.0,
        &["--flow-log", &records_path],
    )
    .expect("agent");
    let line = "r".repeat(1000);
    let clients: Vec<u16> = (0..3)
        .map(|_| {
            let mut stream = connect(&topology.consumer_a, at(ORDERS, 80), WAIT)
                .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
            let answer = exchange(&mut stream, &line).unwrap();
            assert_eq!(answer.echo, line);
            let port = stream.local_addr().unwrap().port();
            stream.shutdown(Shutdown::Both).unwrap();
            port
        })
        .collect();
    // Ended once they lingered (1 s here) and the expiry took them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&records.0).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.iter().filter(|l| l["event"] == "ended").count() >= 3 {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records so far:\n{text}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for event in ["opened", "ended"] {
        let mut seen: Vec<u16> = lines
            .iter()
            .filter(|l| l["event"] == event)
            .map(|l| {
                field(l, "client")
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        seen.sort();
        let mut made = clients.clone();
        made.sort();
        assert_eq!(seen, made, "{event} records: {lines:#?}");
    }
    for record in lines.iter().filter(|l| l["event"] == "ended") {
        assert_eq!(field(record, "endpoint"), "vpce-a-orders");
        assert_eq!(field(record, "network"), "vpc-a");
        assert_eq!(field(record, "protocol"), "tcp");
        assert_eq!(field(record, "endpoint_address"), "10.0.0.100:80");
        assert!(field(record, "nat").starts_with("172.16.0.100:"));
        assert!(field(record, "target").ends_with(":8080"));
        // Whole frames: the 1,001 bytes of the line each way, plus at most a frame's
        // headers (Ethernet, IPv4, TCP with options) per packet.
        for (way, at_least) in [("consumer_to_target", 1001), ("target_to_consumer", 1001)] {
            let packets = record["packets"][way].as_u64().unwrap();
            let bytes = record["bytes"][way].as_u64().unwrap();
            assert!(packets >= 3, "{way}: {record}");
            assert!(
                bytes >= at_least && bytes <= at_least + 100 + packets * (14 + 20 + 60),
                "{way}: {record}"
            );
        }
        assert!(record["duration_seconds"].as_f64().unwrap() > 0.0);
    }
}
