//! The demo: two consumer networks whose clients have the same address each reach the
//! `orders` service through their own endpoint; the targets see only the NAT address;
//! one endpoint is dual-stack, resolved by name (AAAA) and reached over IPv6, its IPv6
//! address reaching the IPv4 targets translated;
//! each network resolves the same private DNS name to its own endpoint (answered in XDP
//! on its resolver address) and connects by name; a `pendingAcceptance` endpoint gets no
//! connection until the provider accepts it, then carries TCP and a UDP exchange.
//! Everything is removed on exit or Ctrl-C.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Result, bail};
use testbed::{
    Agent, Namespace, Server, Topology, UdpServer, addresses, ask, ask_any, at, udp_ask,
};

/// The endpoint IPs of the example config (examples/demo.yaml).
const ORDERS_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// vpce-a-orders' IPv6 address (orders' targets are IPv4: translated).
const ORDERS_ENDPOINT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x100);
const BILLING_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
/// Each consumer network's resolver address, and the names the demo asks it.
const RESOLVER: &str = "10.0.0.2";
const PRIVATE_NAME: &str = "orders.example.internal";
const REGIONAL_NAME: &str = "vpce-b-orders.orders.endpoints.internal";
const TIMEOUT: Duration = Duration::from_secs(2);
/// Where the demo's agent serves metrics, inside the node's namespace.
const METRICS: &str = "127.0.0.1:9464";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

pub fn run(agent: &Path, example: &Path, keep: bool) -> Result<()> {
    // Ctrl-C ends the demo between steps (each bounded by a timeout), so that every
    // namespace, link and process it made is removed on the way out.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    println!("\n== Building the topology (network namespaces and veth links)");
    let topology = Topology::build()?;
    topology.add_ipv6()?;
    println!(
        "   consumer-a ({}) and consumer-b ({}): clients at {} in BOTH\n   node ({}): the agent and the XDP program\n   provider ({}): targets at {}:8080 and {}:8080, billing at {}:9090 (TCP) and :7 (UDP echo)",
        topology.consumer_a.name(),
        topology.consumer_b.name(),
        addresses::CLIENT,
        topology.node.name(),
        topology.provider.name(),
        addresses::TARGETS[0],
        addresses::TARGETS[1],
        addresses::TARGETS[0],
    );
    let _servers = [
        Server::start(
            &topology.provider,
            "orders-target-1",
            at(addresses::TARGETS[0], 8080),
        )?,
        Server::start(
            &topology.provider,
            "orders-target-2",
            at(addresses::TARGETS[1], 8080),
        )?,
        Server::start(
            &topology.provider,
            "billing-target",
            at(addresses::TARGETS[0], 9090),
        )?,
    ];
    let _echo = UdpServer::start(
        &topology.provider,
        "billing-udp-echo",
        at(addresses::TARGETS[0], 7),
    )?;
    check_interrupt()?;

    // The agent runs on a copy: the demo accepts an endpoint, which edits the file.
    let config = std::env::temp_dir().join(format!("endpoint-demo-{}.yaml", std::process::id()));
    std::fs::copy(example, &config)?;
    let _remove = Remove(config.clone());
    let config = config.as_path();
    println!(
        "\n== Starting the agent with {} (a copy of {})",
        config.display(),
        example.display()
    );
    let records = std::env::temp_dir().join(format!("endpoint-demo-{}.flows", std::process::id()));
    let records_arg = records.display().to_string();
    let mut agent = Agent::start(
        &topology.node,
        agent,
        topology.node.name(),
        config,
        &["--metrics", METRICS, "--flow-log", &records_arg],
    )?;
    for line in agent.log().lines() {
        println!("   agent: {line}");
    }
    check_interrupt()?;

    for (consumer, network, endpoint) in [
        (&topology.consumer_a, "vpc-a", "vpce-a-orders"),
        (&topology.consumer_b, "vpc-b", "vpce-b-orders"),
    ] {
        println!(
            "\n== {network}: client {} connects to endpoint {endpoint} at {ORDERS_ENDPOINT}:80 (service `orders`)",
            addresses::CLIENT
        );
        for i in 1..=4 {
            check_interrupt()?;
            converse(consumer, network, i)?;
        }
    }

    check_interrupt()?;
    println!(
        "\n== vpc-a: the same client over IPv6, by name: dig @{RESOLVER} {PRIVATE_NAME} AAAA (vpce-a-orders is dual-stack; orders' targets are IPv4: translated 6 to 4)"
    );
    let aaaa = dig(&topology.consumer_a, PRIVATE_NAME, "AAAA")?;
    println!("   {PRIVATE_NAME} AAAA -> {}", aaaa.join(", "));
    if aaaa != [ORDERS_ENDPOINT_V6.to_string()] {
        bail!("{PRIVATE_NAME} AAAA is not {ORDERS_ENDPOINT_V6}");
    }
    let to = SocketAddr::new(ORDERS_ENDPOINT_V6.into(), 80);
    println!("   {} connects to {to}", addresses::v6::CLIENT);
    let line = "hello over IPv6 from vpc-a";
    let answer = ask_any(&topology.consumer_a, to, line, TIMEOUT)?;
    if answer.echo != line {
        bail!("the target echoed {:?}, not {line:?}", answer.echo);
    }
    println!(
        "   answered by {}; it saw the connection come from {} (IPv4: the NAT address)",
        answer.target, answer.seen_from
    );

    for (consumer, network) in [
        (&topology.consumer_a, "vpc-a"),
        (&topology.consumer_b, "vpc-b"),
    ] {
        check_interrupt()?;
        println!(
            "\n== {network}: dig @{RESOLVER} {PRIVATE_NAME} (the service's private DNS name, answered by the node in XDP)"
        );
        let addresses = dig(consumer, PRIVATE_NAME, "A")?;
        println!("   {PRIVATE_NAME} -> {}", addresses.join(", "));
        let Some(address) = addresses.first() else {
            bail!("{network}: {PRIVATE_NAME} did not resolve");
        };
        let line = format!("hello by name from {network}");
        let answer = ask(consumer, at(address.parse()?, 80), &line, TIMEOUT)?;
        println!(
            "   connected by name to {address}:80: answered by {}, which saw {}",
            answer.target, answer.seen_from
        );
    }
    check_interrupt()?;
    println!(
        "\n== vpc-b: dig @{RESOLVER} {REGIONAL_NAME} (one address per zone; cons-b's clients are in zone-2, so it comes first)"
    );
    println!(
        "   {REGIONAL_NAME} -> {}",
        dig(&topology.consumer_b, REGIONAL_NAME, "A")?.join(", ")
    );
    println!(
        "   the same name from vpc-a (not its endpoint): {}",
        dig_status(&topology.consumer_a, REGIONAL_NAME)?
    );

    check_interrupt()?;
    println!(
        "\n== vpc-b: client connects to endpoint vpce-b-billing at {BILLING_ENDPOINT}:80 (state: pendingAcceptance)"
    );
    match ask(
        &topology.consumer_b,
        at(BILLING_ENDPOINT, 80),
        "hello",
        TIMEOUT,
    ) {
        Ok(answer) => bail!("a pendingAcceptance endpoint answered: {answer:?}"),
        Err(e) => println!("   no connection, as it should be: {e:#}"),
    }

    check_interrupt()?;
    println!("\n== The provider accepts it: endpoint-agent accept vpce-b-billing");
    let config_arg = config.to_string_lossy().to_string();
    let generation = agent.generation();
    let accepted = agent.command(&["accept", "vpce-b-billing", "--config", &config_arg])?;
    println!("   {}", String::from_utf8_lossy(&accepted.stdout).trim());
    agent.wait_generation(generation + 1, Duration::from_secs(10))?;
    println!("   the running agent saw the file change and applied only the difference:");
    let log = agent.log();
    let applied = log.rsplit("applied:").next().unwrap_or_default();
    for line in applied
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    "))
    {
        println!("   {}", line.trim());
    }
    let answer = ask(
        &topology.consumer_b,
        at(BILLING_ENDPOINT, 80),
        "hello billing",
        TIMEOUT,
    )?;
    println!(
        "   vpc-b -> vpce-b-billing: answered by {}, which saw {}",
        answer.target, answer.seen_from
    );
    println!("\n== vpc-b: a UDP datagram to {BILLING_ENDPOINT}:7 (billing's UDP listener)");
    let answer = udp_ask(
        &topology.consumer_b,
        at(BILLING_ENDPOINT, 7),
        "hello over UDP",
        TIMEOUT,
    )?;
    println!(
        "   vpc-b -> vpce-b-billing (udp): answered by {} from the endpoint's address, which saw {}: {:?}",
        answer.target, answer.seen_from, answer.echo
    );

    if keep {
        println!(
            "\n== Keeping everything up: try `ip netns exec {} curl -v http://{ORDERS_ENDPOINT}/` style commands (no HTTP server here: `nc {ORDERS_ENDPOINT} 80` and type a line). Ctrl-C to stop.",
            topology.consumer_a.name()
        );
        while !INTERRUPTED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    println!("\n== Events the agent emitted (JSON lines, for a provider to automate acceptance)");
    std::thread::sleep(Duration::from_millis(600));
    for line in agent.events().lines() {
        println!("   {line}");
    }

    println!("\n== Live connections (endpoint-agent flows)");
    let flows = agent.command(&["flows"])?;
    for line in String::from_utf8_lossy(&flows.stdout).lines() {
        println!("   {line}");
    }

    println!(
        "\n== Connection records (--flow-log: a JSON line as each opens and ends), the first two"
    );
    let logged = std::fs::read_to_string(&records).unwrap_or_default();
    let _ = std::fs::remove_file(&records);
    for line in logged.lines().take(2) {
        println!("   {line}");
    }

    println!("\n== Metrics (GET http://{METRICS}/metrics in the node's namespace, a few lines)");
    let exposition = scrape(&topology.node)?;
    for line in exposition
        .lines()
        .filter(|l| {
            l.contains("endpoint=\"vpce-b-billing\"")
                || l.starts_with("endpoint_agent_config_generation")
                || l.starts_with("endpoint_agent_target_healthy")
        })
        .take(14)
    {
        println!("   {line}");
    }

    println!("\n== Status (endpoint-agent status)");
    let status = agent.command(&["status"])?;
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        println!("   {line}");
    }

    println!("\n== Stopping the agent (SIGTERM): it detaches and restores the node");
    agent.stop()?;
    for line in agent
        .log()
        .lines()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        println!("   agent: {line}");
    }
    println!("\n== Removing the namespaces and links\n");
    Ok(())
}

/// Removes a file when dropped.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn converse(consumer: &Namespace, network: &str, i: u32) -> Result<()> {
    let line = format!("hello from {network} #{i}");
    let answer = ask(consumer, at(ORDERS_ENDPOINT, 80), &line, TIMEOUT)?;
    if answer.echo != line {
        bail!("the target echoed {:?}, not {line:?}", answer.echo);
    }
    println!(
        "   #{i}: answered by {}; it saw the connection come from {} (the NAT address, not {})",
        answer.target,
        answer.seen_from,
        addresses::CLIENT
    );
    Ok(())
}

/// The `rtype` records `name` has for a client of `consumer`, in the order given (dig,
/// bounded by its own timeout and tries).
fn dig(consumer: &Namespace, name: &str, rtype: &str) -> Result<Vec<String>> {
    let out = consumer.exec(
        "dig",
        &[
            "+short",
            "+time=2",
            "+tries=2",
            &format!("@{RESOLVER}"),
            name,
            rtype,
        ],
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// The status (NOERROR, NXDOMAIN, ...) of the answer to `name`.
fn dig_status(consumer: &Namespace, name: &str) -> Result<String> {
    let out = consumer.exec(
        "dig",
        &["+time=2", "+tries=2", &format!("@{RESOLVER}"), name, "A"],
    )?;
    Ok(out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("no answer")
        .to_string())
}

/// The agent's `/metrics`, fetched from inside the node's namespace (a bare HTTP/1.0 GET:
/// the demo has no HTTP client to spare).
fn scrape(node: &Namespace) -> Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = METRICS.parse()?;
    let mut stream = node.enter(move || std::net::TcpStream::connect_timeout(&addr, TIMEOUT))??;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {METRICS}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_string()),
        None => bail!("no HTTP answer from {METRICS}"),
    }
}
