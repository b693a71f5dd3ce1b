//! Names: each consumer network's resolver address (10.0.0.2 in both overlapping
//! networks) answers its own endpoints' names, asked with real `dig`; a real `unbound` in
//! a consumer network forwards the endpoint zones to it, so that a program connects by
//! name (`curl`, through the system resolver); acceptance decides what resolves; a
//! multi-zone endpoint is answered with the asker's zone first.

use std::{
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Instant,
};

use crate::bed::*;

/// The resolver address of both consumer networks (the same, as the networks overlap).
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Their IPv6 resolver address, where a test gives them one (in `addresses::v6`'s
/// consumer prefix).
const RESOLVER6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 2);
/// The endpoint domain: `<endpoint-id>.<service>.<domain>`.
const DOMAIN: &str = "endpoints.internal";
const ORDERS_NAME: &str = "orders.example.internal";
const BILLING_NAME: &str = "billing.example.internal";
/// orders' endpoint in vpc-b: another address than vpc-a's (10.0.0.100), so that the
/// answers tell the networks apart.
const ORDERS_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 120);

/// The configuration a consumer's own `unbound` needs to resolve endpoint names (the
/// README shows it): the endpoint domain and each private DNS name the consumer uses are
/// forwarded to its network's resolver address, everything else goes wherever unbound
/// sends it anyway. The resolver address answers only these zones (REFUSED otherwise),
/// so it cannot be the consumer's only resolver. No DNSSEC for the forwarded zones (they
/// are not signed): `module-config: "iterator"` turns validation off altogether, and
/// `domain-insecure` keeps the zones unvalidated should a validator be configured.
/// `do-not-query-localhost: no` is only needed if a forward address is on loopback.
const UNBOUND_CONF: &str = r#"server:
    interface: 127.0.0.1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    domain-insecure: "endpoints.internal"
    domain-insecure: "orders.example.internal"

forward-zone:
    name: "endpoints.internal"
    forward-addr: 10.0.0.2

forward-zone:
    name: "orders.example.internal"
    forward-addr: 10.0.0.2
"#;

/// What running `unbound` inside a test adds (not for the README): in the foreground
/// (`-d`), as root without chroot or a user switch, its pidfile and log in the test's
/// directory (`{dir}`).
const UNBOUND_TEST_CONF: &str = r#"
server:
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-ip6: no
"#;

/// Two overlapping consumer networks with the resolver at 10.0.0.2 in each, orders
/// (private name orders.example.internal, acceptance required) and billing (private name
/// billing.example.internal, open to anyone); `zones` are the consumer interfaces'
/// `zone:` (vpc-a's, vpc-b's), and `endpoints` the endpoint list.
fn config(zones: [Option<&str>; 2], endpoints: &str) -> String {
    let zone = |z: Option<&str>| z.map(|z| format!(", zone: {z}")).unwrap_or_default();
    format!(
        r#"node:
  interfaces:
    - {{ name: cons-a, role: consumer, consumer_network: vpc-a{} }}
    - {{ name: cons-b, role: consumer, consumer_network: vpc-b{} }}
    - {{ name: prov, role: provider, nat_addresses: [172.16.0.100] }}
  nat_ports: {{ first: 1024, last: 32767 }}
  hash_seed: 7

dns:
  domain: {DOMAIN}
  ttl_seconds: 30
  resolvers:
    - {{ consumer_network: vpc-a, ip: {RESOLVER} }}
    - {{ consumer_network: vpc-b, ip: {RESOLVER} }}

services:
  - name: orders
    acceptance_required: true
    allowed_principals: [team-a, team-b]
    private_dns_name: {ORDERS_NAME}
    load_balancers:
      - name: orders-nlb
        zone: zone-1
        listeners:
          - port: 80
            targets:
              - {{ ip: 172.16.0.10, port: 8080 }}
              - {{ ip: 172.16.0.11, port: 8080 }}
  - name: billing
    acceptance_required: false
    allowed_principals: ["*"]
    private_dns_name: {BILLING_NAME}
    load_balancers:
      - name: billing-nlb
        zone: zone-1
        listeners:
          - port: 80
            targets:
              - {{ ip: 172.16.0.10, port: 9090 }}

endpoints:
{endpoints}"#,
        zone(zones[0]),
        zone(zones[1]),
    )
}

/// orders in both networks (vpc-a 10.0.0.100, vpc-b 10.0.0.120), both with private DNS;
/// billing in both (10.0.0.101), with private DNS in vpc-a only.
fn two_networks() -> String {
    two_networks_with(", state: available, accepted_at: \"2026-12-01T09:00:00Z\"")
}

/// As `two_networks`, with `state` the end of vpce-a-orders' entry (empty: a new
/// request).
fn two_networks_with(state: &str) -> String {
    config(
        [None, None],
        &format!(
            r#"  - {{ id: vpce-a-orders, service: orders, principal: team-a, consumer_network: vpc-a,
      ip: {ORDERS}, zone: zone-1, private_dns: true{state} }}
  - {{ id: vpce-b-orders, service: orders, principal: team-b, consumer_network: vpc-b,
      ip: {ORDERS_B}, zone: zone-1, private_dns: true, state: available,
      accepted_at: "2026-12-01T09:00:00Z" }}
  - {{ id: vpce-a-billing, service: billing, principal: team-a, consumer_network: vpc-a,
      ip: {BILLING}, zone: zone-1, private_dns: true }}
  - {{ id: vpce-b-billing, service: billing, principal: team-b, consumer_network: vpc-b,
      ip: {BILLING}, zone: zone-1 }}
"#
        ),
    )
}

/// What `dig` got: the response code, header flags, and the answer section's records
/// (type, data) in the order given.
#[derive(Debug)]
struct Reply {
    status: String,
    flags: Vec<String>,
    answers: Vec<(String, String)>,
    authority: Vec<String>,
    text: String,
}

impl Reply {
    /// The A records' addresses, in order.
    fn addresses(&self) -> Vec<String> {
        self.records("A")
    }

    /// The data of the answer's records of type `kind`, in order.
    fn records(&self, kind: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, data)| data.clone())
            .collect()
    }
}

/// `dig @server name A` from inside `ns`: one try, at most 2 s.
fn dig(bed: &Bed, ns: &Namespace, server: impl std::fmt::Display, name: &str) -> Reply {
    dig_type(bed, ns, server, name, "A")
}

/// `dig @server name <rtype>` from inside `ns`: one try, at most 2 s.
fn dig_type(
    bed: &Bed,
    ns: &Namespace,
    server: impl std::fmt::Display,
    name: &str,
    rtype: &str,
) -> Reply {
    let output = ns
        .command("dig")
        .args([&format!("@{server}"), name, rtype, "+time=2", "+tries=1"])
        .output()
        .expect("dig (dnsutils)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let fail = |what: &str| -> ! {
        panic!(
            "dig @{server} {name} in {}: {what}\n{text}{}\ncounters: {}\nagent log:\n{}",
            ns.name(),
            String::from_utf8_lossy(&output.stderr),
            counters(bed),
            bed.agent.log()
        )
    };
    if !output.status.success() {
        fail("no answer");
    }
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| fail("no status"))
        .to_string();
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| fail("no flags"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // Records of a section: `name ttl class type data` lines up to the next blank one.
    let section = |title: &str| -> Vec<(String, String)> {
        text.lines()
            .skip_while(|l| !l.starts_with(title))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                assert!(fields.len() >= 5, "a record line {l:?}\n{text}");
                (fields[3].to_string(), fields[4..].join(" "))
            })
            .collect()
    };
    let answers = section(";; ANSWER SECTION:");
    let authority = section(";; AUTHORITY SECTION:")
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    Reply {
        status,
        flags,
        answers,
        authority,
        text,
    }
}

/// The data path's counters that counted something (for failure messages).
fn counters(bed: &Bed) -> String {
    let status = bed.status();
    let mut seen = Vec::new();
    if let Some(all) = status["counters"].as_object() {
        for (name, value) in all {
            if let Some(n) = value["packets"].as_u64().filter(|&n| n > 0) {
                seen.push(format!("{name} {n}"));
            }
        }
    }
    seen.join(", ")
}

/// `dig +short @server name A` from inside `ns`: its lines, in order.
fn dig_short(bed: &Bed, ns: &Namespace, server: Ipv4Addr, name: &str) -> Vec<String> {
    let output = ns
        .command("dig")
        .args([
            "+short",
            &format!("@{server}"),
            name,
            "A",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("dig (dnsutils)");
    assert!(
        output.status.success(),
        "dig +short {name}: {output:?}\ncounters: {}",
        counters(bed)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asserts that `reply` is an authoritative answer with exactly the A records
/// `addresses`, in that order.
fn assert_answers(reply: &Reply, addresses: &[Ipv4Addr], what: &str) {
    let expected: Vec<String> = addresses.iter().map(Ipv4Addr::to_string).collect();
    assert_eq!(reply.status, "NOERROR", "{what}\n{}", reply.text);
    assert!(
        reply.flags.contains(&"aa".to_string()),
        "{what}: not authoritative\n{}",
        reply.text
    );
    assert_eq!(reply.addresses(), expected, "{what}\n{}", reply.text);
    assert_eq!(
        reply.answers.len(),
        expected.len(),
        "{what}: other records\n{}",
        reply.text
    );
}

/// Asserts that `reply` is an authoritative NXDOMAIN carrying the zone's SOA (for
/// negative caching) and no records.
fn assert_nxdomain(reply: &Reply, what: &str) {
    assert_eq!(reply.status, "NXDOMAIN", "{what}\n{}", reply.text);
    assert!(reply.flags.contains(&"aa".to_string()), "{}", reply.text);
    assert!(reply.answers.is_empty(), "{what}\n{}", reply.text);
    assert_eq!(reply.authority, ["SOA"], "{what}\n{}", reply.text);
}

/// Asserts that `reply` is REFUSED, with no records and not authoritative.
fn assert_refused(reply: &Reply, what: &str) {
    assert_eq!(reply.status, "REFUSED", "{what}\n{}", reply.text);
    assert!(!reply.flags.contains(&"aa".to_string()), "{}", reply.text);
    assert!(
        reply.answers.is_empty() && reply.authority.is_empty(),
        "{what}\n{}",
        reply.text
    );
}

fn regional(endpoint: &str, service: &str) -> String {
    format!("{endpoint}.{service}.{DOMAIN}")
}

fn zonal(endpoint: &str, zone: &str, service: &str) -> String {
    format!("{endpoint}-{zone}.{service}.{DOMAIN}")
}

/// An IPv6 resolver address beside the IPv4 one (fd00:a::2 in both networks, which
/// overlap in IPv6 too): `dig` over IPv6 from each network gets its own endpoint's
/// address, and `ns.<domain>` both resolver addresses.
#[test]
fn an_ipv6_resolver_address_answers_each_network_over_ipv6() {
    if !root() {
        return;
    }
    let config = two_networks().replace(
        &format!("    - {{ consumer_network: vpc-b, ip: {RESOLVER} }}\n"),
        &format!(
            "    - {{ consumer_network: vpc-b, ip: {RESOLVER} }}\n    - {{ consumer_network: vpc-a, ip: '{RESOLVER6}' }}\n    - {{ consumer_network: vpc-b, ip: '{RESOLVER6}' }}\n"
        ),
    );
    assert!(config.contains(&RESOLVER6.to_string()));
    let bed = bed_prepared(&config, |t| t.add_ipv6().expect("IPv6 addresses"));
    let (a, b) = (&bed.topology.consumer_a, &bed.topology.consumer_b);
    for (ns, orders, network) in [(a, ORDERS, "vpc-a"), (b, ORDERS_B, "vpc-b")] {
        assert_answers(
            &dig(&bed, ns, RESOLVER6, ORDERS_NAME),
            &[orders],
            &format!("orders' private name over IPv6 in {network}"),
        );
        let ns_name = format!("ns.{DOMAIN}");
        let reply = dig_type(&bed, ns, RESOLVER6, &ns_name, "AAAA");
        assert_eq!(
            reply.records("AAAA"),
            [RESOLVER6.to_string()],
            "{ns_name} AAAA in {network}\n{}",
            reply.text
        );
        assert_answers(
            &dig(&bed, ns, RESOLVER6, &ns_name),
            &[RESOLVER],
            &format!("{ns_name} A in {network}"),
        );
    }
    let status = bed.status();
    let networks = &status["dns"]["networks"];
    assert_eq!(
        networks[0]["resolvers"],
        serde_json::json!([RESOLVER.to_string(), RESOLVER6.to_string()]),
        "{networks}"
    );
    assert_eq!(networks[0]["queries"]["answer"], 3, "{networks}");
}

#[test]
fn two_overlapping_networks_asking_the_same_name_of_the_same_resolver_get_their_own_endpoint() {
    if !root() {
        return;
    }
    let bed = bed_with(&two_networks());
    let (a, b) = (&bed.topology.consumer_a, &bed.topology.consumer_b);
    let started = Instant::now();

    // The same client address (10.0.0.10) asks the same resolver address the same name:
    // each network gets its own endpoint.
    assert_answers(
        &dig(&bed, a, RESOLVER, ORDERS_NAME),
        &[ORDERS],
        "orders' private name in vpc-a",
    );
    assert_answers(
        &dig(&bed, b, RESOLVER, ORDERS_NAME),
        &[ORDERS_B],
        "orders' private name in vpc-b",
    );
    // Regional names: each network has its own endpoint's, and not the other's (whose
    // name lies in the endpoint domain, which the network's resolver holds).
    assert_answers(
        &dig(&bed, a, RESOLVER, &regional("vpce-a-orders", "orders")),
        &[ORDERS],
        "vpce-a-orders' regional name in vpc-a",
    );
    assert_answers(
        &dig(&bed, b, RESOLVER, &regional("vpce-b-orders", "orders")),
        &[ORDERS_B],
        "vpce-b-orders' regional name in vpc-b",
    );
    assert_nxdomain(
        &dig(&bed, b, RESOLVER, &regional("vpce-a-orders", "orders")),
        "vpc-a's endpoint asked in vpc-b",
    );
    // billing's private name: vpc-a's endpoint enables private DNS, vpc-b's does not, so
    // vpc-b's resolver does not hold that zone at all.
    assert_answers(
        &dig(&bed, a, RESOLVER, BILLING_NAME),
        &[BILLING],
        "billing's private name in vpc-a (private_dns: true)",
    );
    assert_refused(
        &dig(&bed, b, RESOLVER, BILLING_NAME),
        "billing's private name in vpc-b (no private_dns)",
    );
    // vpc-b's endpoint still has its own regional name.
    assert_answers(
        &dig(&bed, b, RESOLVER, &regional("vpce-b-billing", "billing")),
        &[BILLING],
        "vpce-b-billing's regional name in vpc-b",
    );

    // Every one of those was answered by the data path, once.
    let status = bed.status();
    assert_eq!(counted(&status, "dns_answer"), 6, "{status:#}");
    assert_eq!(counted(&status, "dns_nxdomain"), 1, "{status:#}");
    assert_eq!(counted(&status, "dns_refused"), 1, "{status:#}");
    eprintln!("eight queries answered in {:?}", started.elapsed());
}

/// A real `unbound` listening on 127.0.0.1:53 inside a namespace, configured with
/// `UNBOUND_CONF`; stopped by its pid (SIGTERM) at `stop` or on drop.
struct Unbound {
    child: Child,
    dir: TempDir,
}

impl Unbound {
    fn start(ns: &Namespace) -> Self {
        let dir = TempDir::new("unbound");
        let config = dir.0.join("unbound.conf");
        let text = format!(
            "{UNBOUND_CONF}{}",
            UNBOUND_TEST_CONF.replace("{dir}", dir.0.to_str().unwrap())
        );
        std::fs::write(&config, text).unwrap();
        let checked = Command::new("unbound-checkconf")
            .arg(&config)
            .output()
            .expect("unbound-checkconf");
        assert!(
            checked.status.success(),
            "unbound-checkconf: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
        let log = std::fs::File::create(dir.0.join("unbound.log")).unwrap();
        let child = ns
            .command("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("unbound (the Debian package)");
        let mut unbound = Self { child, dir };
        // Ready once it answers on 127.0.0.1 (whatever it answers).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = unbound.child.try_wait() {
                panic!("unbound exited ({status}):\n{}", unbound.log());
            }
            let probe = ns
                .command("dig")
                .args(["@127.0.0.1", "localhost", "A", "+time=1", "+tries=1"])
                .output()
                .expect("dig");
            if probe.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "unbound did not answer within 10 s:\n{}",
                unbound.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // In the foreground (-d): the pid it wrote is the one this test stops.
        let pidfile = unbound.dir.0.join("unbound.pid");
        let written = std::fs::read_to_string(&pidfile).unwrap_or_default();
        assert_eq!(
            written.trim(),
            unbound.child.id().to_string(),
            "{}",
            pidfile.display()
        );
        unbound
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("unbound.log")).unwrap_or_default()
    }

    /// SIGTERM to this unbound's pid, and its exit status (SIGKILL after 5 s).
    fn stop(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        // SAFETY: a signal to the process this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asserts that `said` (curl's output) is an orders target's answer over a connection to
/// `address` port 80, the one connection vpce-a-orders opened.
fn assert_curl_reached_orders(bed: &Bed, said: &str, address: &str) {
    assert!(
        said.starts_with("HTTP/1.0 200 orders-1") || said.starts_with("HTTP/1.0 200 orders-2"),
        "not an orders target: {said}"
    );
    assert!(
        said.contains(&format!("connected to {address}:80")),
        "curl did not connect to the endpoint at {address}: {said}"
    );
    let status = bed.status();
    assert_eq!(
        counted_for(&status, "vpce-a-orders", "forward_new"),
        1,
        "curl's one connection through the endpoint\n{status:#}"
    );
}

/// Runs `curl <args>` in `ns` with the system resolver pointed at `resolv_conf`: in a
/// mount namespace of its own, where that file is bind-mounted over /etc/resolv.conf
/// (nothing of the host's changes; the mount goes with the process). The testbed enters
/// namespaces with setns, which leaves mounts alone, so /etc/netns/<name>/resolv.conf
/// (what `ip netns exec` would bind) does not apply.
fn curl_with_resolver(ns: &Namespace, resolv_conf: &Path, args: &[&str]) -> Output {
    ns.command("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/resolv.conf && shift && exec curl "$@""#)
        .arg("sh")
        .arg(resolv_conf)
        .args(args)
        .output()
        .expect("unshare, curl")
}

#[test]
fn a_consumers_unbound_forwards_endpoint_names_and_curl_connects_by_name_through_the_endpoint() {
    if !root() {
        return;
    }
    let bed = bed_with(&two_networks());
    let a = &bed.topology.consumer_a;
    let started = Instant::now();
    let mut unbound = Unbound::start(a);
    let fail = |what: &str, unbound: &Unbound| -> ! {
        panic!(
            "{what}\nunbound log:\n{}\nagent log:\n{}",
            unbound.log(),
            bed.agent.log()
        )
    };

    // Through unbound: the private name and the regional name, as the resolver address
    // answers them in vpc-a.
    let private = dig(&bed, a, Ipv4Addr::LOCALHOST, ORDERS_NAME);
    if private.status != "NOERROR" {
        fail(&private.text, &unbound);
    }
    assert_eq!(
        private.addresses(),
        [ORDERS.to_string()],
        "{}",
        private.text
    );
    let name = regional("vpce-a-orders", "orders");
    let by_region = dig(&bed, a, Ipv4Addr::LOCALHOST, &name);
    assert_eq!(
        by_region.addresses(),
        [ORDERS.to_string()],
        "{}",
        by_region.text
    );

    // A program connects by name: curl asks the system resolver (glibc, nsswitch
    // `files dns`), which asks unbound, which asks 10.0.0.2; the connection goes to the
    // endpoint and on to a target, whose name is the reason phrase of its answer.
    let dir = TempDir::new("resolv");
    let resolv_conf = dir.0.join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n",
    )
    .unwrap();
    let url = format!("http://{ORDERS_NAME}/");
    let curl_args = [
        "-sS",
        "-i",
        "--max-time",
        "10",
        "-w",
        "\nconnected to %{remote_ip}:%{remote_port}\n",
        url.as_str(),
    ];
    let by_name = curl_with_resolver(a, &resolv_conf, &curl_args);
    let said = String::from_utf8_lossy(&by_name.stdout).into_owned();
    if !by_name.status.success() {
        fail(
            &format!(
                "curl {url}: {}\n{said}{}",
                by_name.status,
                String::from_utf8_lossy(&by_name.stderr)
            ),
            &unbound,
        );
    }
    assert_curl_reached_orders(&bed, &said, &ORDERS.to_string());
    let status = bed.status();
    assert!(
        counted(&status, "dns_answer") >= 2,
        "unbound's queries were answered by the resolver address\n{status:#}"
    );

    // Stopped by its pid: the same curl no longer resolves the name (exit 6), so it was
    // unbound that did.
    let stopped = unbound.stop();
    assert!(
        stopped.success(),
        "unbound on SIGTERM: {stopped}\n{}",
        unbound.log()
    );
    let unresolved = curl_with_resolver(a, &resolv_conf, &curl_args);
    assert_eq!(
        unresolved.status.code(),
        Some(6),
        "curl with unbound stopped: {}{}",
        String::from_utf8_lossy(&unresolved.stdout),
        String::from_utf8_lossy(&unresolved.stderr)
    );
    eprintln!("resolved and connected by name in {:?}", started.elapsed());
}

#[test]
fn rejecting_an_endpoint_makes_its_names_nxdomain_and_accepting_it_makes_them_resolve() {
    if !root() {
        return;
    }
    // vpce-a-orders is a new request: orders needs acceptance, so it is pending.
    let mut bed = bed_with(&two_networks_with(""));
    let config = bed.config.0.to_str().unwrap().to_string();
    let region = regional("vpce-a-orders", "orders");
    let zone = zonal("vpce-a-orders", "zone-1", "orders");
    let started = Instant::now();

    let unavailable = |bed: &Bed, when: &str| {
        let a = &bed.topology.consumer_a;
        // Names in the endpoint domain: the network's zone has them no more.
        assert_nxdomain(&dig(bed, a, RESOLVER, &region), &format!("{region} {when}"));
        assert_nxdomain(&dig(bed, a, RESOLVER, &zone), &format!("{zone} {when}"));
        // The private name is a zone of its own, which the network no longer holds.
        assert_refused(
            &dig(bed, a, RESOLVER, ORDERS_NAME),
            &format!("{ORDERS_NAME} {when}"),
        );
    };
    let available = |bed: &Bed, when: &str| {
        let a = &bed.topology.consumer_a;
        for name in [region.as_str(), zone.as_str(), ORDERS_NAME] {
            assert_answers(
                &dig(bed, a, RESOLVER, name),
                &[ORDERS],
                &format!("{name} {when}"),
            );
        }
    };
    unavailable(&bed, "while pending acceptance");

    let before = bed.agent.generation();
    let said = bed.agent_command(&["accept", "vpce-a-orders", "--config", &config]);
    assert!(said.contains("pendingAcceptance -> available"), "{said}");
    bed.wait_applied(before);
    available(&bed, "once accepted");

    let before = bed.agent.generation();
    let said = bed.agent_command(&["reject", "vpce-a-orders", "--config", &config]);
    assert!(said.contains("available -> rejected"), "{said}");
    bed.wait_applied(before);
    unavailable(&bed, "once rejected");

    // vpc-b's endpoint of the same service was never touched.
    assert_answers(
        &dig(&bed, &bed.topology.consumer_b, RESOLVER, ORDERS_NAME),
        &[ORDERS_B],
        "vpc-b throughout",
    );
    eprintln!("pending, accepted, rejected in {:?}", started.elapsed());
}

#[test]
fn a_multi_zone_endpoint_is_answered_with_the_askers_zone_first() {
    if !root() {
        return;
    }
    const ZONE_1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    const ZONE_2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 110);
    // vpc-a's clients are in zone-1, vpc-b's in zone-2; each network's endpoint has an
    // address in both zones, listed with the asker's zone last, so that only the data
    // path's ordering puts it first.
    let text = config(
        [Some("zone-1"), Some("zone-2")],
        &format!(
            r#"  - id: vpce-a-orders
    service: orders
    principal: team-a
    consumer_network: vpc-a
    addresses: [{{ zone: zone-2, ip: {ZONE_2} }}, {{ zone: zone-1, ip: {ZONE_1} }}]
    private_dns: true
    state: available
    accepted_at: "2026-12-01T09:00:00Z"
  - id: vpce-b-orders
    service: orders
    principal: team-b
    consumer_network: vpc-b
    addresses: [{{ zone: zone-1, ip: {ZONE_1} }}, {{ zone: zone-2, ip: {ZONE_2} }}]
    private_dns: true
    state: available
    accepted_at: "2026-12-01T09:00:00Z"
"#
        ),
    );
    let bed = bed_with(&text);
    let (a, b) = (&bed.topology.consumer_a, &bed.topology.consumer_b);
    let started = Instant::now();
    let (one, two) = (ZONE_1.to_string(), ZONE_2.to_string());

    for (ns, id, first, second) in [
        (a, "vpce-a-orders", &one, &two),
        (b, "vpce-b-orders", &two, &one),
    ] {
        let network = if id == "vpce-a-orders" {
            "vpc-a (zone-1)"
        } else {
            "vpc-b (zone-2)"
        };
        for name in [regional(id, "orders"), ORDERS_NAME.to_string()] {
            assert_eq!(
                dig_short(&bed, ns, RESOLVER, &name),
                [first.as_str(), second.as_str()],
                "{name} asked in {network}\nagent log:\n{}",
                bed.agent.log()
            );
        }
        // A zonal name has its zone's address only.
        assert_eq!(
            dig_short(&bed, ns, RESOLVER, &zonal(id, "zone-1", "orders")),
            [one.as_str()]
        );
        assert_eq!(
            dig_short(&bed, ns, RESOLVER, &zonal(id, "zone-2", "orders")),
            [two.as_str()]
        );
    }
    // Both addresses carry connections (the answer is usable whichever comes first).
    for ip in [ZONE_1, ZONE_2] {
        for ns in [a, b] {
            let answer = ask(ns, at(ip, 80), "by zone", WAIT).unwrap_or_else(|e| bed.fail(e));
            assert!(answer.target.starts_with("orders-"), "{answer:?}");
        }
    }
    eprintln!("zone order checked in {:?}", started.elapsed());
}

#[test]
fn a_dual_stack_endpoints_names_answer_aaaa_and_curl_connects_by_name_over_ipv6() {
    if !root() {
        return;
    }
    // vpce-a-orders is dual-stack: its IPv6 address reaches orders' IPv4 targets (6→4).
    const ORDERS6: &str = "fd00:a::100";
    let text = two_networks().replace(
        &format!("ip: {ORDERS}, zone: zone-1, private_dns: true,"),
        &format!(
            "addresses: [{{ zone: zone-1, ip: {ORDERS} }}, {{ zone: zone-1, ip: '{ORDERS6}' }}], private_dns: true,"
        ),
    );
    assert!(text.contains(ORDERS6));
    let bed = bed_prepared(&text, |t| t.add_ipv6().expect("IPv6 addresses"));
    let (a, b) = (&bed.topology.consumer_a, &bed.topology.consumer_b);
    let started = Instant::now();

    // Both names of the endpoint answer both families; vpc-b's endpoint of orders has
    // no IPv6 address: NODATA there (the name is, the type is not).
    for name in [ORDERS_NAME.to_string(), regional("vpce-a-orders", "orders")] {
        let aaaa = dig_type(&bed, a, RESOLVER, &name, "AAAA");
        assert_eq!(aaaa.status, "NOERROR", "{}", aaaa.text);
        assert!(aaaa.flags.contains(&"aa".to_string()), "{}", aaaa.text);
        assert_eq!(aaaa.records("AAAA"), [ORDERS6], "{}", aaaa.text);
        assert_eq!(aaaa.answers.len(), 1, "{}", aaaa.text);
        assert_answers(&dig(&bed, a, RESOLVER, &name), &[ORDERS], &name);
    }
    let nodata = dig_type(&bed, b, RESOLVER, ORDERS_NAME, "AAAA");
    assert_eq!(nodata.status, "NOERROR", "{}", nodata.text);
    assert!(nodata.answers.is_empty(), "{}", nodata.text);
    assert_eq!(nodata.authority, ["SOA"], "{}", nodata.text);

    // curl -6 by name, the resolver address as the system's name server: glibc asks for
    // AAAA, and the connection goes to the endpoint's IPv6 address and on to a target.
    let dir = TempDir::new("resolv6");
    let resolv_conf = dir.0.join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        format!("nameserver {RESOLVER}\noptions timeout:2 attempts:1\n"),
    )
    .unwrap();
    let url = format!("http://{ORDERS_NAME}/");
    let by_name = curl_with_resolver(
        a,
        &resolv_conf,
        &[
            "-6",
            "-sS",
            "-i",
            "--max-time",
            "10",
            "-w",
            "\nconnected to %{remote_ip}:%{remote_port}\n",
            url.as_str(),
        ],
    );
    let said = String::from_utf8_lossy(&by_name.stdout).into_owned();
    assert!(
        by_name.status.success(),
        "curl -6 {url}: {}\n{said}{}\ncounters: {}\nagent log:\n{}",
        by_name.status,
        String::from_utf8_lossy(&by_name.stderr),
        counters(&bed),
        bed.agent.log()
    );
    assert_curl_reached_orders(&bed, &said, ORDERS6);
    eprintln!(
        "AAAA resolved and connected by name in {:?}",
        started.elapsed()
    );
}
