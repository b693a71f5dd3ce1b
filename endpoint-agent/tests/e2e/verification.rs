//! Private DNS name verification against a real authoritative server (nsd) in the node's
//! namespace: the name is served only while `_endpoint-verification.<name>` holds the
//! service's token — failed without the record, verified once it is published, failed
//! again when it goes — and each change is an event.

use std::{
    process::{Child, Stdio},
    time::Instant,
};

use crate::bed::*;

const NAME: &str = "orders.example.internal";
/// Where nsd listens, inside the node's namespace (the agent asks it from there).
const NSD: &str = "127.0.0.1:5399";

/// nsd serving `example.internal` from a temporary directory, stopped (by its pid) and
/// removed on drop.
struct Nsd {
    child: Child,
    dir: PathBuf,
}

impl Nsd {
    /// Starts nsd in `ns` with the zone holding `token` under the verification label
    /// (none: no such record), and waits until it answers.
    fn start(ns: &Namespace, token: Option<&str>) -> Nsd {
        let dir = std::env::temp_dir().join(format!(
            "endpoint-e2e-nsd-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ip, port) = NSD.split_once(':').unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("nsd.conf"),
            format!(
                "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\nremote-control:\n  control-enable: no\nzone:\n  name: example.internal\n  zonefile: example.internal.zone\n"
            ),
        )
        .unwrap();
        let mut zone = String::from(
            "$ORIGIN example.internal.\n$TTL 1\n@ IN SOA ns hostmaster 1 60 60 60 1\n@ IN NS ns\nns IN A 127.0.0.1\n",
        );
        if let Some(token) = token {
            zone.push_str(&format!(
                "_endpoint-verification.orders IN TXT \"{token}\"\n"
            ));
        }
        std::fs::write(dir.join("example.internal.zone"), zone).unwrap();
        let child = ns
            .command("nsd")
            .args(["-d", "-c"])
            .arg(dir.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nsd");
        let nsd = Nsd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = ns
                .exec(
                    "dig",
                    &[
                        "+short",
                        "+time=1",
                        "+tries=1",
                        "-p",
                        port,
                        &format!("@{ip}"),
                        "example.internal",
                        "SOA",
                    ],
                )
                .unwrap_or_default();
            if !answer.trim().is_empty() {
                return nsd;
            }
            assert!(
                Instant::now() < deadline,
                "nsd did not start: {}",
                nsd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nsd.log")).unwrap_or_default()
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The example with a DNS section that verifies private names against nsd every second.
fn config() -> String {
    let resolvers = "    - { consumer_network: vpc-b, ip: 10.0.0.2 }\n";
    let example = example();
    assert!(example.contains(resolvers), "the example's resolvers moved");
    example.replacen(
        resolvers,
        &format!("{resolvers}  verification: {{ resolver: \"{NSD}\", interval_seconds: 1 }}\n"),
        1,
    )
}

/// The private name's verification as `status --json` shows it: (status, token).
fn verification(bed: &Bed) -> Option<(String, String)> {
    let status = bed.status();
    let names = status["dns"]["private_names"].as_array()?;
    let name = names.iter().find(|n| n["name"] == NAME)?;
    Some((
        name["status"].as_str()?.to_string(),
        name["token"].as_str()?.to_string(),
    ))
}

/// Waits (bounded) until the name's verification is `wanted`; returns its token.
fn wait_for(bed: &Bed, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((status, token)) = verification(bed)
            && status == wanted
        {
            return token;
        }
        if Instant::now() > deadline {
            panic!(
                "{NAME} never became {wanted} (now {:?})\nagent log:\n{}",
                verification(bed),
                bed.agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) until vpc-a's answer for the name is `wanted` (the agent applies a
/// verification change right after recording it).
fn wait_resolves(bed: &Bed, wanted: (&str, &[Ipv4Addr])) {
    let wanted = (
        wanted.0.to_string(),
        wanted.1.iter().map(ToString::to_string).collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = resolve(bed);
        if now == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{NAME} answers {now:?}, not {wanted:?}\nagent log:\n{}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `dig` from vpc-a at its resolver address: the status and the addresses.
fn resolve(bed: &Bed) -> (String, Vec<String>) {
    let out = bed
        .topology
        .consumer_a
        .exec("dig", &["+time=2", "+tries=2", "@10.0.0.2", NAME, "A"])
        .unwrap();
    let status = out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
        .to_string();
    let addresses = out
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    (status, addresses)
}

#[test]
fn a_private_name_is_served_only_while_its_txt_record_holds_the_token() {
    if !root() {
        return;
    }
    let nsd_slot = std::sync::Mutex::new(None);
    let bed = bed_prepared(&config(), |topology| {
        *nsd_slot.lock().unwrap() = Some(Nsd::start(&topology.node, None));
    });
    let mut nsd = nsd_slot.into_inner().unwrap();

    // No record: failed, and the name is not ours in vpc-a (REFUSED: its resolver would
    // go on to public DNS).
    let token = wait_for(&bed, "failed");
    assert!(token.starts_with("endpoint-verification="), "{token}");
    wait_resolves(&bed, ("REFUSED", &[]));

    // The owner publishes the token: verified, and the name resolves to vpc-a's endpoint.
    drop(nsd.take());
    nsd = Some(Nsd::start(&bed.topology.node, Some(&token)));
    wait_for(&bed, "verified");
    wait_resolves(&bed, ("NOERROR", &[ORDERS]));

    // The record goes: failed again, and the name is withdrawn.
    drop(nsd.take());
    nsd = Some(Nsd::start(&bed.topology.node, None));
    wait_for(&bed, "failed");
    wait_resolves(&bed, ("REFUSED", &[]));

    let events: Vec<serde_json::Value> = bed
        .events()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["event"] == "private_dns_verification")
        .collect();
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["was"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("pendingVerification", "failed"),
            ("failed", "verified"),
            ("verified", "failed")
        ],
        "{events:#?}"
    );
    drop(nsd);
}
