//! The bed every end-to-end test runs on (see testbed::Topology), and what tests share.
//! The agent's events tell when a config generation is applied; tests wait on that.

pub use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

pub use testbed::{
    Agent, Namespace, Server, Topology, addresses, ask, at, connect, connect_from, exchange,
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_endpoint-agent");

/// Endpoint IPs of the example config (examples/demo.yaml).
pub const ORDERS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const BILLING: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
pub const NAT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 100);
pub const WAIT: Duration = Duration::from_secs(3);

pub fn example() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.yaml");
    std::fs::read_to_string(path).unwrap()
}

/// Whether this runs as root: the end-to-end tests need it (BPF, namespaces). Without
/// it a test says it was skipped and passes, so that a plain `cargo test` runs.
pub fn root() -> bool {
    // SAFETY: a plain libc call.
    let root = unsafe { libc::geteuid() == 0 };
    if !root {
        eprintln!("skipped: end-to-end tests need root (BPF, network namespaces)");
    }
    root
}

/// The standard topology with the example's targets serving and the agent running
/// `config` (a file the test may rewrite).
pub struct Bed {
    pub agent: Agent,
    pub servers: Vec<Server>,
    pub topology: Topology,
    pub config: TempFile,
}

/// A directory removed (with what is in it) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory of this test's, named after `kind`.
    pub fn new(kind: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "endpoint-e2e-{kind}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(kind: &str, text: &str) -> Self {
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

pub fn bed_with(config: &str) -> Bed {
    bed_prepared(config, |_| {})
}

/// As `bed_with`, with `prepare` run on the topology before the agent starts.
pub fn bed_prepared(config: &str, prepare: impl FnOnce(&Topology)) -> Bed {
    let topology = Topology::build().expect("topology");
    prepare(&topology);
    let servers = example_servers(&topology);
    let config = TempFile::new("config.yaml", config);
    let agent = start_agent(&topology, &config);
    Bed {
        agent,
        servers,
        topology,
        config,
    }
}

/// The example's targets, serving on the topology's provider host.
pub fn example_servers(topology: &Topology) -> Vec<Server> {
    [
        ("orders-1", at(addresses::TARGETS[0], 8080)),
        ("orders-2", at(addresses::TARGETS[1], 8080)),
        ("billing", at(addresses::TARGETS[0], 9090)),
    ]
    .into_iter()
    .map(|(name, addr)| Server::start(&topology.provider, name, addr).unwrap())
    .collect()
}

pub fn start_agent(topology: &Topology, config: &TempFile) -> Agent {
    Agent::start(
        &topology.node,
        Path::new(AGENT),
        topology.node.name(),
        &config.0,
        &[],
    )
    .expect("agent")
}

impl Bed {
    pub fn server(&self, name: &str) -> &Server {
        self.servers.iter().find(|s| s.name == name).unwrap()
    }

    pub fn all_peers(&self) -> Vec<SocketAddr> {
        self.servers.iter().flat_map(Server::peers).collect()
    }

    pub fn fail(&self, e: anyhow::Error) -> ! {
        panic!("{e:#}\nagent log:\n{}", self.agent.log())
    }

    /// Rewrites the config and waits until the agent has applied it (SIGHUP, so as not
    /// to wait for the file to settle).
    pub fn reconfigure(&mut self, text: &str) {
        let next = self.agent.generation() + 1;
        std::fs::write(&self.config.0, text).unwrap();
        self.agent.signal(libc::SIGHUP);
        self.agent
            .wait_generation(next, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until the agent applied a generation after `generation` (after a command
    /// changed the file).
    pub fn wait_applied(&mut self, generation: u64) {
        self.agent
            .wait_generation(generation + 1, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config.0).unwrap()
    }

    pub fn events(&self) -> String {
        self.agent.events()
    }

    /// Runs an agent command (status, accept …) for this bed's instance and config.
    pub fn agent_command(&self, args: &[&str]) -> String {
        let output = self.agent.command(args).unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.agent_command(&["status", "--json"])).expect("status JSON")
    }
}

/// A conversation that must go on: the same target and NAT port every time.
pub struct Conversation {
    pub stream: std::net::TcpStream,
    pub seen: (String, std::net::SocketAddrV4),
    pub turn: u32,
}

impl Conversation {
    pub fn open(bed: &Bed) -> Self {
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
    pub fn say(&mut self, when: &str, log: &str) {
        self.turn += 1;
        let line = format!("turn {}", self.turn);
        let answer = exchange(&mut self.stream, &line)
            .unwrap_or_else(|e| panic!("the conversation broke {when}: {e:#}\nagent log:\n{log}"));
        assert_eq!(answer.echo, line, "{when}");
        assert_eq!((answer.target, answer.seen_from), self.seen, "moved {when}");
    }
}

/// Packets counted under counter `name` over all endpoints, in a `status --json`.
pub fn counted(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]["packets"].as_u64().unwrap_or(0)
}

/// Packets counted under counter `name` for endpoint `id`, in a `status --json`.
pub fn counted_for(status: &serde_json::Value, id: &str, name: &str) -> u64 {
    status["endpoints"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["id"] == id))
        .unwrap_or_else(|| panic!("no endpoint {id} in {status:#}"))["counters"][name]["packets"]
        .as_u64()
        .unwrap_or(0)
}

/// A sysctl's value inside `ns` (`key` in dotted form; interface names may hold dashes).
pub fn sysctl(ns: &Namespace, key: &str) -> String {
    ns.exec("sysctl", &["-n", key]).unwrap().trim().to_string()
}
