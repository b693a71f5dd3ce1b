//! A fleet on etcd: a real etcd in a namespace of its own, three nodes (each a standard
//! topology with its own consumers and targets) whose agents follow it, reached over a
//! veth each. Changes are written with the agent's own commands (`store import`,
//! `accept`) or the store module, inside the store's namespace.

use std::{
    process::{Child, Command, Stdio},
    time::Instant,
};

use endpoint_agent::store::{Location, Store};
use testbed::{link, veth};

use crate::bed::*;

const PORT: u16 = 2379;

/// etcd in a namespace of its own, killed (only it) and its data removed on drop.
struct Etcd {
    ns: Namespace,
    child: Option<Child>,
    data: TempDir,
}

impl Etcd {
    fn start() -> Self {
        let ns = Namespace::new("etcd").unwrap();
        let data = TempDir(std::env::temp_dir().join(format!(
            "endpoint-e2e-etcd-{}-{}",
            std::process::id(),
            ns.name()
        )));
        let mut etcd = Self {
            ns,
            child: None,
            data,
        };
        etcd.run();
        etcd
    }

    /// Starts etcd (again, on the same data) and waits until it answers.
    fn run(&mut self) {
        let client = format!("http://0.0.0.0:{PORT}");
        let child = self
            .ns
            .command("etcd")
            .args(["--name", "fleet", "--data-dir"])
            .arg(&self.data.0)
            .args(["--listen-client-urls", &client])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{PORT}"),
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "fleet=http://127.0.0.1:2380"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server; `cargo xtask test` installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .store(|mut s| async move { s.model().await.map(drop) })
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd did not start within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `f` with a store connection made inside etcd's namespace.
    fn store<T: Send, F: Future<Output = anyhow::Result<T>>>(
        &self,
        f: impl FnOnce(Store) -> F + Send,
    ) -> anyhow::Result<T> {
        self.ns
            .enter(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async {
                        let location: Location =
                            format!("etcd://127.0.0.1:{PORT}/fleet").parse()?;
                        f(Store::connect(&location).await?).await
                    })
            })
            .unwrap()
    }

    /// Runs an agent command inside etcd's namespace, against the store.
    fn command(&self, args: &[&str]) -> std::process::Output {
        let mut command: Command = self.ns.command(AGENT);
        command
            .args(args)
            .args(["--store", &format!("etcd://127.0.0.1:{PORT}/fleet")]);
        command.output().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node of the fleet: a standard topology, its targets serving, its agent following
/// the store at 198.18.N.1.
struct Node {
    topology: Topology,
    _servers: Vec<Server>,
    agent: Option<Agent>,
    file: TempFile,
    /// More arguments for its agent.
    extra: Vec<String>,
}

/// The example's `node:` part: what each node keeps in its own file.
fn node_file() -> String {
    let example: serde_yaml::Value = serde_yaml::from_str(&example()).unwrap();
    let mut node = serde_yaml::Mapping::new();
    node.insert("node".into(), example["node"].clone());
    serde_yaml::to_string(&node).unwrap()
}

fn start_node(etcd: &Etcd, n: usize) -> Node {
    start_node_with(etcd, n, &node_file(), &[], |_| {})
}

/// A node with `file` for its own part, `prepare` run on its topology first.
fn start_node_with(
    etcd: &Etcd,
    n: usize,
    file: &str,
    extra: &[&str],
    prepare: impl FnOnce(&Topology),
) -> Node {
    let topology = Topology::build().unwrap();
    prepare(&topology);
    veth(&etcd.ns, &format!("node{n}"), &topology.node, "store").unwrap();
    etcd.ns
        .ip(&[
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            &format!("node{n}"),
        ])
        .unwrap();
    topology
        .node
        .ip(&["addr", "add", &format!("198.18.{n}.2/24"), "dev", "store"])
        .unwrap();
    let servers = example_servers(&topology);
    let file = TempFile::new(&format!("node{n}.yaml"), file);
    let mut node = Node {
        topology,
        _servers: servers,
        agent: None,
        file,
        extra: extra.iter().map(|a| a.to_string()).collect(),
    };
    node.start(n);
    node
}

impl Node {
    fn start(&mut self, n: usize) {
        let store = format!("etcd://198.18.{n}.1:{PORT}/fleet");
        let name = format!("node-{n}");
        let mut args = vec![
            "--store",
            &store,
            "--node",
            &name,
            "--metrics",
            "127.0.0.1:9464",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        self.agent = Some(
            Agent::start(
                &self.topology.node,
                Path::new(AGENT),
                self.topology.node.name(),
                &self.file.0,
                &args,
            )
            .expect("agent"),
        );
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    /// The highest store revision an `applied` event named.
    fn applied_revision(&self) -> i64 {
        self.agent()
            .events()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "applied")
            .filter_map(|e| e["revision"].as_i64())
            .max()
            .unwrap_or(0)
    }

    fn wait_revision(&self, revision: i64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.applied_revision() < revision {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Asks orders (10.0.0.100) from consumer network a.
    fn reaches_orders(&self) -> anyhow::Result<()> {
        ask(&self.topology.consumer_a, at(ORDERS, 80), "hi", WAIT).map(drop)
    }
}

fn put(etcd: &Etcd, key: &str, value: String) -> i64 {
    let key = key.to_string();
    etcd.store(|mut store| async move {
        let response = store.client.put(store.key(&key), value, None).await?;
        Ok(response.header().map_or(0, |h| h.revision()))
    })
    .unwrap()
}

fn import(etcd: &Etcd, text: &str) {
    let file = TempFile::new("import.yaml", text);
    let output = etcd.command(&["store", "import", "--config", file.0.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "import: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn fleet_status(etcd: &Etcd) -> serde_json::Value {
    let output = etcd.command(&["status", "--fleet", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// orders' endpoint in vpc-a with its security group opened to `cidr`.
fn endpoint_a(cidr: &str) -> String {
    format!(
        "id: vpce-a-orders\nservice: orders\nprincipal: team-a\nconsumer_network: vpc-a\n\
         ip: 10.0.0.100\nzone: zone-1\nprivate_dns: true\nsecurity_groups:\n  \
         - {{ cidr: {cidr}, ports: [80] }}\nstate: available\naccepted_at: \"2026-11-28T09:00:00Z\"\n"
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_fleet_applies_one_model_refuses_bad_changes_everywhere_and_decides_once() {
    if !root() {
        return;
    }
    let etcd = Etcd::start();
    import(&etcd, &example());
    // What `store export` prints imports again as it is (a model with no `node:`).
    let exported = etcd.command(&["store", "export"]);
    assert!(exported.status.success());
    let exported = String::from_utf8(exported.stdout).unwrap();
    assert!(exported.contains("vpce-b-billing") && !exported.contains("node:"));
    import(&etcd, &exported);
    let nodes: Vec<Node> = (1..=3).map(|n| start_node(&etcd, n)).collect();
    for node in &nodes {
        node.reaches_orders()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", node.agent().log()));
    }

    // Each change written to etcd is applied by all three: timed to the last node's
    // `applied` event.
    let mut took = Vec::new();
    for round in 0..20 {
        let cidr = if round % 2 == 0 {
            "10.0.0.0/25"
        } else {
            "10.0.0.0/24"
        };
        let started = Instant::now();
        let revision = put(&etcd, "model/endpoints/vpce-a-orders", endpoint_a(cidr));
        for node in &nodes {
            assert!(
                node.wait_revision(revision, Duration::from_secs(10)),
                "revision {revision} not applied:\n{}",
                node.agent().log()
            );
        }
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "fleet: a change to the last of 3 nodes' applied event: p50 {:?}, p99 {:?} (20 changes)",
        percentile(&took, 0.5),
        percentile(&took, 0.99)
    );

    // A change one node would refuse, all refuse: the old state is kept and said so.
    let revision = put(
        &etcd,
        "model/endpoints/vpce-a-orders",
        endpoint_a("10.0.0.0/24").replace("service: orders", "service: nowhere"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fleet = fleet_status(&etcd);
        let refused: Vec<String> = (1..=3)
            .filter_map(|n| fleet["nodes"][format!("node-{n}")]["refused"].as_str())
            .map(str::to_string)
            .collect();
        if refused.len() == 3 {
            for why in &refused {
                assert!(
                    why.contains("/fleet/model/endpoints/vpce-a-orders:2:")
                        && why.contains("nowhere"),
                    "{why}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not refused everywhere: {fleet:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in &nodes {
        assert!(node.applied_revision() < revision);
        node.reaches_orders()
            .unwrap_or_else(|e| panic!("the old state was not kept: {e:#}"));
        assert!(node.agent().log().contains("keeping the running config"));
    }
    let text = String::from_utf8(etcd.command(&["status", "--fleet"]).stdout).unwrap();
    assert!(
        text.contains("refused: /fleet/model/endpoints/vpce-a-orders:2:"),
        "{text}"
    );
    let fixed = put(
        &etcd,
        "model/endpoints/vpce-a-orders",
        endpoint_a("10.0.0.0/24"),
    );
    for node in &nodes {
        assert!(node.wait_revision(fixed, Duration::from_secs(10)));
    }

    // Two operators accept at once: one wins, the other is told.
    let accepts: Vec<_> = (0..4)
        .map(|_| {
            let mut command = etcd.ns.command(AGENT);
            command
                .args(["accept", "vpce-b-billing", "--store"])
                .arg(format!("etcd://127.0.0.1:{PORT}/fleet"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    let outputs: Vec<_> = accepts
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won: Vec<_> = outputs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "{outputs:?}");
    let said = String::from_utf8_lossy(&won[0].stdout);
    let accepted_at: i64 = said
        .rsplit_once("(revision ")
        .and_then(|(_, r)| r.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no revision in {said:?}"));
    for lost in outputs.iter().filter(|o| !o.status.success()) {
        let why = String::from_utf8_lossy(&lost.stderr);
        assert!(
            why.contains("conflict") || why.contains("already available"),
            "{why}"
        );
    }
    // Every node applies it; exactly one (the events lock's holder) says `accepted`.
    for node in &nodes {
        assert!(node.wait_revision(accepted_at, Duration::from_secs(10)));
        ask(&node.topology.consumer_b, at(BILLING, 80), "paid?", WAIT)
            .unwrap_or_else(|e| panic!("billing after accept: {e:#}"));
    }
    let accepted: usize = nodes
        .iter()
        .map(|n| {
            n.agent()
                .events()
                .lines()
                .filter(|l| l.contains("\"accepted\"") && l.contains("vpce-b-billing"))
                .count()
        })
        .sum();
    assert_eq!(accepted, 1, "`accepted` once for the fleet");
    let fleet = fleet_status(&etcd);
    let emitters = (1..=3)
        .filter(|n| fleet["nodes"][format!("node-{n}")]["emits_events"] == true)
        .count();
    assert_eq!(emitters, 1, "{fleet:#}");
}

#[test]
fn a_node_that_dies_goes_from_the_fleet_and_etcd_away_stops_no_traffic() {
    if !root() {
        return;
    }
    let mut etcd = Etcd::start();
    import(&etcd, &example());
    let mut nodes: Vec<Node> = (1..=2).map(|n| start_node(&etcd, n)).collect();
    let live = |fleet: &serde_json::Value, n: usize| !fleet["nodes"][format!("node-{n}")].is_null();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(live(&fleet_status(&etcd), 1) && live(&fleet_status(&etcd), 2)) {
        assert!(
            Instant::now() < deadline,
            "nodes never listed:\n{}",
            nodes[0].agent().log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // kill -9: forwarding goes on (the data path is the kernel's) and the node's status
    // expires with its lease; the fleet lists it as gone.
    // (Its instance is cleaned up when the test drops it.)
    nodes[1].agent().signal(libc::SIGKILL);
    let killed = Instant::now();
    nodes[1]
        .reaches_orders()
        .expect("forwarding after the agent died");
    loop {
        let fleet = fleet_status(&etcd);
        if fleet["nodes"]["node-2"].is_null() && fleet["nodes"].get("node-2").is_some() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "node-2's status did not expire: {fleet:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "fleet: a killed node's status went after {:?}",
        killed.elapsed()
    );
    let text = String::from_utf8(etcd.command(&["status", "--fleet"]).stdout).unwrap();
    assert!(text.contains("node-2") && text.contains("gone"), "{text}");
    drop(nodes.pop());

    // etcd stopped for 10 s: forwarding never stops; the node says so, and applies a
    // change made after etcd is back.
    let node = &nodes[0];
    etcd.stop();
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(10) {
        node.reaches_orders()
            .unwrap_or_else(|e| panic!("forwarding stopped with etcd away: {e:#}"));
        std::thread::sleep(Duration::from_millis(500));
    }
    node.agent()
        .wait_for("forwarding with revision", Duration::from_secs(5))
        .unwrap();
    let metrics = || crate::operating::get(&node.topology.node, "127.0.0.1:9464", "/metrics");
    assert!(
        metrics().contains("endpoint_agent_store_connected 0"),
        "{}",
        metrics()
    );
    etcd.run();
    node.agent()
        .wait_for("back, at revision", Duration::from_secs(30))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !metrics().contains("endpoint_agent_store_connected 1") {
        assert!(Instant::now() < deadline, "{}", metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    let revision = put(
        &etcd,
        "model/endpoints/vpce-a-orders",
        endpoint_a("10.0.0.0/25"),
    );
    assert!(
        node.wait_revision(revision, Duration::from_secs(10)),
        "{}",
        node.agent().log()
    );
    // 10.0.0.10 is outside 10.0.0.0/29: closed, through the change applied after.
    put(
        &etcd,
        "model/endpoints/vpce-a-orders",
        endpoint_a("10.0.0.0/29"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.reaches_orders().is_ok() {
        assert!(
            Instant::now() < deadline,
            "the change after the outage was not applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The client on the shared consumer LAN of the failover test.
const LAN_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);

/// Two zone-1 nodes whose `lan` links (of vpc-a) share one consumer LAN, a bridge with
/// the client on it; `extra`: more arguments for their agents.
fn zone_on_a_lan(etcd: &Etcd, extra: &[&str]) -> (Namespace, Vec<Node>) {
    let lan = Namespace::new("lan").unwrap();
    lan.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    lan.ip(&["link", "set", "br0", "up"]).unwrap();
    lan.ip(&["addr", "add", &format!("{LAN_CLIENT}/24"), "dev", "br0"])
        .unwrap();
    let mut file: serde_yaml::Value = serde_yaml::from_str(&node_file()).unwrap();
    file["node"]["zone"] = "zone-1".into();
    let lan_link: serde_yaml::Value = serde_yaml::from_str(
        "{ name: lan, role: consumer, consumer_network: vpc-a, zone: zone-1 }",
    )
    .unwrap();
    file["node"]["interfaces"]
        .as_sequence_mut()
        .unwrap()
        .push(lan_link);
    let file = serde_yaml::to_string(&file).unwrap();
    let nodes = (1..=2)
        .map(|n| {
            start_node_with(etcd, n, &file, extra, |topology| {
                let port = format!("n{n}");
                veth(&topology.node, "lan", &lan, &port).unwrap();
                lan.ip(&["link", "set", &port, "master", "br0"]).unwrap();
                // NAPI on the LAN side, as for the topology's hosts (veth drops
                // XDP_TX frames towards a peer without it).
                lan.exec("ethtool", &["-K", &port, "tx", "off", "gro", "on"])
                    .unwrap();
            })
        })
        .collect();
    (lan, nodes)
}

/// The node (1 or 2) the fleet says answers for `address`.
fn holder(fleet: &serde_json::Value, address: &str) -> Option<usize> {
    (1..=2).find(|n| {
        fleet["nodes"][format!("node-{n}")]["answers_for"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == address))
    })
}

/// Waits (10 s) until a node — node `which` if given — says it answers for `address`
/// (its status is written just after it took the address); returns which.
fn holder_of(etcd: &Etcd, address: &str, which: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fleet = fleet_status(etcd);
        if let Some(n) = holder(&fleet, address)
            && which.is_none_or(|w| w == n)
        {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{address} not held as expected: {fleet:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_nodes_of_a_zone_one_answers_for_an_address_and_the_other_takes_it_when_it_dies() {
    if !root() {
        return;
    }
    let etcd = Etcd::start();
    // Besides the example, an endpoint of vpc-a in zone-1 and zone-2, where no node is.
    let multi = "\n  - { id: vpce-a-multi, service: orders, principal: team-a, \
                 consumer_network: vpc-a, state: available, accepted_at: '2026-11-28T09:00:00Z', \
                 addresses: [{ zone: zone-1, ip: 10.0.0.120 }, { zone: zone-2, ip: 10.0.0.121 }] }\n";
    import(&etcd, &format!("{}{multi}", example()));
    let (lan, nodes) = zone_on_a_lan(&etcd, &[]);
    // Exactly one node answers ARP for the zone's address; the fleet says which.
    let address = "zone-1/vpc-a/10.0.0.100";
    let first = holder_of(&etcd, address, None);
    let other = 3 - first;
    let lan_mac = |n: usize| link::mac(&nodes[n - 1].topology.node, "lan").unwrap();
    let answers =
        || link::who_has(&lan, "br0", LAN_CLIENT, ORDERS, Duration::from_millis(500)).unwrap();
    let arp_replies = |n: usize| {
        let output = nodes[n - 1].agent().command(&["status", "--json"]).unwrap();
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        counted(&status, "arp_reply")
    };
    assert_eq!(answers(), Some(lan_mac(first)), "the holder answers ARP");
    assert_eq!(
        arp_replies(other),
        0,
        "the other node of the zone stays silent"
    );
    // An address added later in a zone without nodes: nobody answers for it.
    let revision = put(
        &etcd,
        "model/endpoints/vpce-a-late",
        "{ id: vpce-a-late, service: orders, principal: team-a, consumer_network: vpc-a, \
         ip: 10.0.0.122, zone: zone-2, state: available, accepted_at: '2026-11-28T09:00:00Z' }"
            .to_string(),
    );
    for node in &nodes {
        assert!(node.wait_revision(revision, Duration::from_secs(10)));
    }
    let late = Ipv4Addr::new(10, 0, 0, 122);
    assert_eq!(
        link::who_has(&lan, "br0", LAN_CLIENT, late, Duration::from_millis(500)).unwrap(),
        None,
        "an address of a zone without nodes is nobody's"
    );
    assert_eq!(arp_replies(other), 0);
    let lan_connect = || connect(&lan, at(ORDERS, 80), Duration::from_millis(500));
    lan_connect().expect("a connection through the holder");
    // DNS leaves out the zone no live node is in.
    let dig = |name: &str| {
        lan.exec("dig", &["+short", "+tries=2", "+time=1", "@10.0.0.2", name])
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig("vpce-a-multi.orders.endpoints.internal").trim() != "10.0.0.120" {
        assert!(
            Instant::now() < deadline,
            "regional name: {:?}",
            dig("vpce-a-multi.orders.endpoints.internal")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        dig("vpce-a-multi-zone-1.orders.endpoints.internal").trim(),
        "10.0.0.120"
    );
    assert_eq!(
        dig("vpce-a-multi-zone-2.orders.endpoints.internal").trim(),
        ""
    );

    // The holder's node dies: its agent is killed and its link to the LAN goes down.
    let dead = &nodes[first - 1];
    let died = Instant::now();
    dead.agent().signal(libc::SIGKILL);
    dead.topology
        .node
        .ip(&["link", "set", "lan", "down"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lan_connect().is_err() {
        assert!(
            Instant::now() < deadline,
            "no new connection within 20 s:\n{}",
            nodes[other - 1].agent().log()
        );
    }
    let gap = died.elapsed();
    eprintln!("fleet: failover, node death to the first new connection through the other: {gap:?}");
    assert_eq!(
        answers(),
        Some(lan_mac(other)),
        "the survivor answers ARP now"
    );
    holder_of(&etcd, address, Some(other));
}

#[test]
fn an_upgrade_of_a_zone_nodes_agent_keeps_its_addresses_and_connections() {
    if !root() {
        return;
    }
    let etcd = Etcd::start();
    import(&etcd, &example());
    let (lan, mut nodes) = zone_on_a_lan(&etcd, &["--on-exit", "keep"]);
    let address = "zone-1/vpc-a/10.0.0.100";
    let first = holder_of(&etcd, address, None);
    let mut stream = connect(&lan, at(ORDERS, 80), WAIT).unwrap();
    let before = exchange(&mut stream, "before").unwrap();

    // The holder's agent stops, leaving the data path (`keep`), and a new one starts: it
    // takes the same lease back, and with it the address, before the other node can.
    let n = first;
    nodes[n - 1].agent.take().unwrap().stop_keeping().unwrap();
    nodes[n - 1].start(n);
    let after = exchange(&mut stream, "after").unwrap();
    assert_eq!(
        (after.target, after.seen_from),
        (before.target, before.seen_from),
        "the connection went on through the same node"
    );
    // The new agent holds the address, on the lease it took back.
    holder_of(&etcd, address, Some(first));
    let mac = link::mac(&nodes[first - 1].topology.node, "lan").unwrap();
    assert_eq!(
        link::who_has(&lan, "br0", LAN_CLIENT, ORDERS, Duration::from_millis(500)).unwrap(),
        Some(mac)
    );
    // The other node never answered for it.
    let output = nodes[2 - first]
        .agent()
        .command(&["status", "--json"])
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(counted(&status, "arp_reply"), 0);
}
