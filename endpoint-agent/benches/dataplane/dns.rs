//! DNS: a consumer network's resolver address, answered in XDP.
//!
//! Layer A: ns per query through the real program (BPF_PROG_RUN on the bench object,
//! its maps filled by the agent's pipeline for a config with a `dns` section) — an A
//! query for an endpoint's regional name, answered, and a query for a name that does
//! not exist (NXDOMAIN, the zone's SOA in the authority section) — in interleaved rounds
//! with the empty and swap-MAC-TX baselines. The answer is built in place and is longer
//! than the query, so a wrapper restores the query, frame length included, before each
//! run (`restore_dns`); its cost (`restore_dns_pass` − `empty`, same rounds) is taken
//! off.
//!
//! Layer B: queries answered per second. One client namespace, one node namespace, a
//! veth between them for each way:
//!
//! ```text
//!  client eth0 10.0.0.10 ── cons-a  the agent: resolver address 10.0.0.2 answered in XDP
//!         eth1 10.3.0.10 ── cons-n  the kernel: nsd on 10.3.0.2:53 (XDP_PASS on the veth)
//!         eth2 10.4.0.10 ── cons-e  swap MACs + XDP_TX: the ceiling of this path
//! ```
//!
//! The same queries (byte for byte but for the addresses; a new source port over 256 and
//! a new DNS id each, UDP checksum kept right) come from one live-frames generator
//! (BPF_PROG_RUN) on the client's end of each way: first as a flood (as fast as it
//! makes them), then slowed down (a spin per query) to 1.25 times what that server
//! answered under the flood, which is the measurement (see `measure`); a counting XDP
//! program on the client's ends counts the answers that come back (rcode, answer
//! count) and drops them. Before any measuring, one query of each kind goes
//! through real UDP sockets to both servers, and their answers must hold the same
//! records. nsd gets the same zone (SOA with the serial the data path announces, NS, the
//! same A records), minimal responses and no rate limiting.
//!
//! Where the work runs (2 CPUs): the generator on CPU 0; each server on CPU 1 — the
//! data path in the NAPI thread of its veth, pinned there (the echo likewise), nsd as one
//! server process (`cpu-affinity: 1`). nsd's receive path (veth, IP, UDP, its socket's
//! queue) runs with the generator on CPU 0, for free; the data path does all its work on
//! CPU 1. The counters run where each server sends (CPU 1), right after each batch or
//! datagram, so that no answer is lost on the way back (counted: `answers_lost`); for
//! nsd's datagrams that includes the veth's copy of each into an XDP frame. Rates are
//! read by a second thread while the generator runs (one long run: each run has a fixed
//! cost of an RCU grace period or two, the CPU idle), between a reading 150 ms in and
//! the last one before it stops.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use endpoint_agent::{
    config,
    facts::Facts,
    loader,
    maps::Maps,
    pipeline::{Applied, Inputs, Pipeline},
};
use etherparse::{PacketBuilder, PacketHeaders};
use hickory_resolver::proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use testbed::{Agent, Namespace, veth};

use crate::{
    bed,
    report::{DnsVariant, ProgramCase, Report, median, percentile},
};

const DOMAIN: &str = "endpoints.internal";
const TTL: u32 = 60;
/// An endpoint's regional name (answered: one A record) and one that does not exist
/// (NXDOMAIN), of the same length.
const ANSWERED: &str = "e0.s.endpoints.internal";
const MISSING: &str = "e1.s.endpoints.internal";
const ENDPOINT: [u8; 4] = [10, 0, 0, 100];
const CLIENT: [u8; 4] = [10, 0, 0, 10];
const RESOLVER: [u8; 4] = [10, 0, 0, 2];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const CLIENT_PORT: u16 = 40000;
/// nsd's address and its client's, and the echo's.
const NSD: [u8; 4] = [10, 3, 0, 2];
const NSD_CLIENT: [u8; 4] = [10, 3, 0, 10];
const ECHO: [u8; 4] = [10, 4, 0, 2];
const ECHO_CLIENT: [u8; 4] = [10, 4, 0, 10];
/// `DNS_FRAME` in the bench object: the length, then up to this many bytes.
const DNS_FRAME_LEN: usize = 128;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const PROGRAMS: [&str; 5] = ["empty", "swap_tx", "restore_dns_pass", "restore_dns", "dns"];
/// Source ports the generated queries cycle through.
const PORTS: u32 = 256;
const NSD_BINARY: &str = "/usr/sbin/nsd";

/// The node's config (both layers): one endpoint, one resolver address.
fn config_text() -> String {
    format!(
        "node:
  interfaces:
    - {{ name: cons-a, role: consumer, consumer_network: vpc }}
    - {{ name: prov, role: provider, nat_addresses: [172.16.0.100] }}
services:
  - name: s
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - name: nlb
        zone: z
        health_check: {{ protocol: none }}
        listeners:
          - {{ port: 80, targets: [{{ ip: 172.16.0.10, port: 8080 }}] }}
endpoints:
  - {{ id: e0, service: s, principal: p, consumer_network: vpc, ip: {}, zone: z }}
dns:
  domain: {DOMAIN}
  ttl_seconds: {TTL}
  resolvers: [{{ consumer_network: vpc, ip: {} }}]
",
        Ipv4Addr::from(ENDPOINT),
        Ipv4Addr::from(RESOLVER)
    )
}

pub fn run(report: &mut Report, object: &[u8], smoke: bool) -> Result<()> {
    program(report, object, smoke)?;
    queries(report, object, smoke)
}

/// A standard query for `name`'s A records, as a stub resolver sends it (RD set).
fn query(name: &str, id: u16) -> Result<Vec<u8>> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(message.to_vec()?)
}

/// The query for `name` in a frame from `mac.0`/`ip.0` to `mac.1`/`ip.1`, port 53, its
/// UDP checksum computed.
fn query_frame(
    mac: ([u8; 6], [u8; 6]),
    ip: ([u8; 4], [u8; 4]),
    port: u16,
    name: &str,
) -> Result<Vec<u8>> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac.0, mac.1)
        .ipv4(ip.0, ip.1, 64)
        .udp(port, 53)
        .write(&mut frame, &query(name, 0x5eed)?)?;
    ensure!(frame.len() < DNS_FRAME_LEN, "query frame too long");
    Ok(frame)
}

/// What an answer says, in a form two servers' answers compare in: the code, the AA
/// flag and the records of each section (the id aside).
fn summary(message: &Message) -> String {
    let records = |records: &[hickory_resolver::proto::rr::Record]| {
        records
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!(
        "{} aa={} answer [{}] authority [{}] additional {}",
        message.response_code(),
        message.authoritative(),
        records(message.answers()),
        records(message.name_servers()),
        message.additionals().len()
    )
}

/// Checks the answer to the query for `name` (id `id`): an authoritative answer with
/// one A record, the endpoint's address with the TTL, or NXDOMAIN with the zone's SOA.
fn check_answer(name: &str, id: u16, answer: &[u8]) -> Result<Message> {
    let message = Message::from_vec(answer)?;
    let ok = message.id() == id
        && message.message_type() == MessageType::Response
        && message.authoritative()
        && message.queries().len() == 1
        && message.queries()[0].name() == &Name::from_ascii(format!("{name}."))?;
    let records = if name == ANSWERED {
        message.response_code() == ResponseCode::NoError
            && message.answers().len() == 1
            && message.answers()[0].ttl() == TTL
            && matches!(message.answers()[0].data(), RData::A(a) if a.0 == Ipv4Addr::from(ENDPOINT))
            && message.name_servers().is_empty()
    } else {
        message.response_code() == ResponseCode::NXDomain
            && message.answers().is_empty()
            && message.name_servers().len() == 1
            && matches!(message.name_servers()[0].data(), RData::SOA(_))
    };
    ensure!(
        ok && records,
        "{name}: unexpected answer (id {}, {:?}): {}",
        message.id(),
        message.queries(),
        summary(&message)
    );
    Ok(message)
}

// ------------------------------------------------------------------------------------
// Layer A

struct Rig {
    ebpf: Ebpf,
    _pipeline: Pipeline,
    cons: (u32, [u8; 6]),
}

impl Rig {
    fn load(object: &[u8], text: &str) -> Result<Self> {
        let config = config::parse("bench.yaml", text)?;
        let mut ebpf = loader::loader(&config).load(object)?;
        for name in PROGRAMS {
            let program: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
            program
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        let facts = Facts::of_this_node()?;
        let mut maps = Maps::take(&mut ebpf)?;
        loader::hand_dns(&ebpf, &mut maps)?;
        let mut pipeline = Pipeline::new(maps, Applied::default());
        let inputs = Inputs {
            facts: &facts,
            seed: 1,
            unhealthy: &Default::default(),
            flow_records: false,
            verified: &Default::default(),
            failover: &Default::default(),
        };
        let proposal = pipeline.propose("bench.yaml", text, &inputs)?;
        pipeline.apply(proposal)?;
        // An XDP program on the interfaces registers the receive queues that test runs
        // with an ingress interface need.
        let empty: &mut Xdp = ebpf.program_mut("empty").context("empty")?.try_into()?;
        for interface in ["cons-a", "prov"] {
            empty.attach(interface, XdpMode::Driver)?;
        }
        let link = &facts.links["cons-a"];
        Ok(Self {
            ebpf,
            _pipeline: pipeline,
            cons: (link.ifindex, link.mac),
        })
    }

    /// `repeat` test runs of `program` on `frame` arriving on the consumer link
    /// (`restore_dns*` start each from `frame`): verdict, output, ns per run.
    fn run(&mut self, program: &str, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, f64)> {
        let mut restore: Array<&mut MapData, [u8; 4 + DNS_FRAME_LEN]> =
            Array::try_from(self.ebpf.map_mut("DNS_FRAME").context("DNS_FRAME")?)?;
        restore.set(0, dns_frame(frame), 0)?;
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, self.cons.0, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; 1024];
        let program: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .context("program")?
            .try_into()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration.as_nanos() as f64))
    }
}

/// `DNS_FRAME`'s value for `frame`: its length, then the frame.
fn dns_frame(frame: &[u8]) -> [u8; 4 + DNS_FRAME_LEN] {
    let mut value = [0u8; 4 + DNS_FRAME_LEN];
    value[..4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    value[4..4 + frame.len()].copy_from_slice(frame);
    value
}

/// Runs the query for `name` once and checks the frame that comes out: sent back out
/// the consumer link to the client, from the resolver address, checksums right, the
/// answer as it should be.
fn check_program(rig: &mut Rig, frame: &[u8], name: &str) -> Result<()> {
    let (verdict, out, _) = rig.run("restore_dns", frame, 1)?;
    ensure!(
        verdict == XDP_REDIRECT || verdict == XDP_TX,
        "{name}: verdict {verdict}"
    );
    let headers = PacketHeaders::from_ethernet_slice(&out)?;
    let (
        Some(etherparse::LinkHeader::Ethernet2(eth)),
        Some(etherparse::NetHeaders::Ipv4(ip, _)),
        Some(etherparse::TransportHeader::Udp(udp)),
    ) = (headers.link, headers.net, headers.transport)
    else {
        bail!("{name}: the answer is not UDP/IPv4 in Ethernet")
    };
    let payload = headers.payload.slice();
    ensure!(
        eth.source == rig.cons.1
            && eth.destination == CLIENT_MAC
            && ip.source == RESOLVER
            && ip.destination == CLIENT
            && ip.header_checksum == ip.calc_header_checksum()
            && udp.source_port == 53
            && udp.destination_port == CLIENT_PORT
            && usize::from(udp.length) == 8 + payload.len()
            && udp.checksum == udp.calc_checksum_ipv4(&ip, payload)?,
        "{name}: the answer's headers are wrong: {eth:?} {ip:?} {udp:?}"
    );
    check_answer(name, 0x5eed, payload)?;
    // The baselines do what they should with the same frame.
    let (verdict, out, _) = rig.run("swap_tx", frame, 1)?;
    ensure!(
        verdict == XDP_TX && out[..6] == frame[6..12],
        "swap-MAC-TX baseline"
    );
    let (verdict, _, _) = rig.run("restore_dns_pass", frame, 1)?;
    ensure!(verdict == XDP_PASS, "restore_dns_pass: verdict {verdict}");
    Ok(())
}

fn program(report: &mut Report, object: &[u8], smoke: bool) -> Result<()> {
    // Several rounds even in a smoke run: the spread needs them.
    let (rounds, repeat) = if smoke { (3, 1000) } else { (15, 200_000) };
    let ns = Namespace::new("bench-dns-program")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    for (link, peer) in [("cons-a", "cons-a-peer"), ("prov", "prov-peer")] {
        veth(&ns, link, &ns, peer)?;
    }
    ns.ip(&["addr", "add", "172.16.0.1/24", "dev", "prov"])?;
    let samples = ns.enter(|| -> Result<Vec<[f64; 5]>> {
        let mut rig = Rig::load(object, &config_text())?;
        let frame = |name: &str| {
            query_frame(
                (CLIENT_MAC, rig.cons.1),
                (CLIENT, RESOLVER),
                CLIENT_PORT,
                name,
            )
        };
        let (answered, missing) = (frame(ANSWERED)?, frame(MISSING)?);
        check_program(&mut rig, &answered, ANSWERED)?;
        check_program(&mut rig, &missing, MISSING)?;
        // A malformed query (a compression pointer in the question, no UDP checksum)
        // is answered FORMERR.
        let mut pointer = answered.clone();
        pointer[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        pointer[14 + 20 + 8 + 12] = 0xc0;
        let (verdict, out, _) = rig.run("restore_dns", &pointer, 1)?;
        ensure!(
            (verdict == XDP_REDIRECT || verdict == XDP_TX)
                && out.len() == 14 + 20 + 8 + 12
                && out[14 + 20 + 8 + 3] & 0x0f == 1,
            "malformed query: verdict {verdict}, answer {out:02x?}"
        );
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let mut one = |program: &str, frame: &[u8]| -> Result<f64> {
                Ok(rig.run(program, frame, repeat)?.2)
            };
            samples.push([
                one("empty", &answered)?,
                one("swap_tx", &answered)?,
                one("restore_dns_pass", &answered)?,
                one("restore_dns", &answered)?,
                one("restore_dns", &missing)?,
            ]);
        }
        Ok(samples)
    })??;
    drop(ns);
    let column = |i: usize| -> Vec<f64> { samples.iter().map(|s| s[i]).collect() };
    let empty = median(&column(0));
    let swap = median(&column(1));
    let row = |case: &str, ns: Vec<f64>| -> ProgramCase {
        let ratios: Vec<f64> = samples.iter().zip(&ns).map(|(s, ns)| ns / s[1]).collect();
        let ratio = median(&ratios);
        ProgramCase {
            case: case.to_string(),
            ns: median(&ns),
            over_empty: median(&ns) - empty,
            ratio_to_swap_mac_tx: ratio,
            spread: Some((percentile(&ratios, 0.9) - percentile(&ratios, 0.1)) / 2.0 / ratio),
        }
    };
    // Per round: the data path's cost, the restore's (same round) taken off.
    let through = |i: usize| -> Vec<f64> { samples.iter().map(|s| s[i] - (s[2] - s[0])).collect() };
    report.dns_program = vec![
        ProgramCase {
            case: "baseline: empty XDP_PASS (DNS rounds)".into(),
            ns: empty,
            over_empty: 0.0,
            ratio_to_swap_mac_tx: empty / swap,
            spread: None,
        },
        ProgramCase {
            case: "baseline: swap MACs + XDP_TX (DNS rounds)".into(),
            ns: swap,
            over_empty: swap - empty,
            ratio_to_swap_mac_tx: 1.0,
            spread: None,
        },
        row("DNS query, regional name: 1 A record", through(3)),
        row("DNS query, NXDOMAIN (SOA in authority)", through(4)),
    ];
    report.dns_rounds = rounds;
    Ok(())
}

// ------------------------------------------------------------------------------------
// Layer B

/// The namespaces and the agent of Layer B; namespaces and the config file go on drop.
struct Bed {
    agent: Agent,
    client: Namespace,
    node: Namespace,
    config: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The client's links, the node's, and their addresses (client, server).
const LINKS: [(&str, &str, [u8; 4], [u8; 4]); 3] = [
    ("eth0", "cons-a", CLIENT, RESOLVER),
    ("eth1", "cons-n", NSD_CLIENT, NSD),
    ("eth2", "cons-e", ECHO_CLIENT, ECHO),
];

impl Bed {
    fn build() -> Result<Self> {
        let client = Namespace::new("bench-dns-client")?;
        let node = Namespace::new("bench-dns-node")?;
        for ns in [&client, &node] {
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        }
        for (link, node_link, client_ip, server_ip) in LINKS {
            veth(&client, link, &node, node_link)?;
            let address = format!("{}/24", Ipv4Addr::from(client_ip));
            client.ip(&["addr", "add", &address, "dev", link])?;
            // Checksums in software (the data path checks them), GRO on the client's
            // ends (a veth takes XDP frames only with NAPI), off on the node's (as in the
            // other Layer B ways).
            client.exec("ethtool", &["-K", link, "tx", "off", "gro", "on"])?;
            node.exec("ethtool", &["-K", node_link, "gro", "off"])?;
            // No ARP on the way: the counters eat what comes back.
            let (_, client_mac) = bed::link(&client, link)?;
            let (_, node_mac) = bed::link(&node, node_link)?;
            client.neighbour(server_ip.into(), node_mac, link)?;
            node.neighbour(client_ip.into(), client_mac, node_link)?;
        }
        let nsd = format!("{}/24", Ipv4Addr::from(NSD));
        node.ip(&["addr", "add", &nsd, "dev", "cons-n"])?;
        veth(&node, "prov", &node, "prov-peer")?;
        node.ip(&["addr", "add", "172.16.0.1/24", "dev", "prov"])?;
        let config =
            std::env::temp_dir().join(format!("endpoint-bench-{}-dns.yaml", std::process::id()));
        std::fs::write(&config, config_text())?;
        let instance = node.name().to_string();
        let agent = Agent::start(&node, Path::new(bed::AGENT), &instance, &config, &[]);
        let agent = match agent {
            Ok(agent) => agent,
            Err(e) => {
                let _ = std::fs::remove_file(&config);
                return Err(e);
            }
        };
        Ok(Self {
            agent,
            client,
            node,
            config,
        })
    }
}

/// Asks `server` (from the client namespace, with a real socket) for `name`'s A records
/// and checks the answer.
fn ask(client: &Namespace, server: [u8; 4], name: &str, id: u16) -> Result<Message> {
    let question = query(name, id)?;
    let answer = client.enter(move || -> Result<Vec<u8>> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect(SocketAddrV4::new(server.into(), 53))?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        socket.send(&question)?;
        let mut buffer = [0u8; 1500];
        let n = socket.recv(&mut buffer)?;
        Ok(buffer[..n].to_vec())
    })??;
    check_answer(name, id, &answer)
}

/// nsd in the node namespace, in the foreground, with its own config and zone in a
/// directory of its own; stopped (by pid: it, then any server process of its left)
/// and the directory removed on drop.
struct Nsd {
    child: Child,
    dir: PathBuf,
    version: String,
}

impl Nsd {
    fn start(node: &Namespace, serial: u32) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("endpoint-bench-{}-nsd", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        // One server process on CPU 1 (the generator runs on CPU 0), no rate limiting,
        // answers without extra records (as the data path's).
        let affinity = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            "  cpu-affinity: 1\n"
        } else {
            ""
        };
        let conf = format!(
            "server:
  ip-address: {nsd}
  port: 53
  do-ip6: no
  username: \"\"
  chroot: \"\"
  zonesdir: \"{d}\"
  pidfile: \"{d}/nsd.pid\"
  database: \"\"
  zonelistfile: \"{d}/zone.list\"
  xfrdfile: \"{d}/xfrd.state\"
  xfrdir: \"{d}\"
  logfile: \"{d}/nsd.log\"
  verbosity: 0
  server-count: 1
{affinity}  tcp-count: 10
  minimal-responses: yes
  refuse-any: yes
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: {DOMAIN}
  zonefile: {DOMAIN}.zone
",
            nsd = Ipv4Addr::from(NSD)
        );
        // The records the data path answers: SOA and NS at the apex, ns (the resolver
        // address), the endpoint's regional and zonal names.
        let zone = format!(
            "$ORIGIN {DOMAIN}.
$TTL {TTL}
@ IN SOA ns.{DOMAIN}. hostmaster.{DOMAIN}. {serial} 3600 600 86400 {TTL}
@ IN NS ns.{DOMAIN}.
ns IN A {resolver}
e0.s IN A {endpoint}
e0-z.s IN A {endpoint}
",
            resolver = Ipv4Addr::from(RESOLVER),
            endpoint = Ipv4Addr::from(ENDPOINT)
        );
        std::fs::write(dir.join("nsd.conf"), conf)?;
        std::fs::write(dir.join(format!("{DOMAIN}.zone")), zone)?;
        let version = std::process::Command::new(NSD_BINARY)
            .arg("-v")
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stderr).to_string()
                    + &String::from_utf8_lossy(&o.stdout);
                text.lines()
                    .next()
                    .unwrap_or("")
                    .replace("NSD version ", "")
            })
            .unwrap_or_default();
        let mut command = node.command(NSD_BINARY);
        // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
        unsafe {
            command.pre_exec(|| {
                // Stopped (as on drop) if this bench dies first.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .arg("-d")
            .arg("-c")
            .arg(dir.join("nsd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr"))?)
            .spawn()
            .context("starting nsd")?;
        Ok(Self {
            child,
            dir,
            version,
        })
    }

    fn log(&self) -> String {
        ["nsd.log", "stderr"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Its processes: the one started (which becomes xfrd) and its descendants (the
    /// main process, the server).
    fn pids(&self) -> Vec<u32> {
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .filter_map(|pid| Some((pid, parent(pid)?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while i < pids.len() {
            let of = pids[i];
            pids.extend(
                parents
                    .iter()
                    .filter(|(_, p)| *p == of)
                    .map(|(pid, _)| *pid),
            );
            i += 1;
        }
        pids
    }

    /// CPU time of its processes so far, in clock ticks.
    fn ticks(&self) -> u64 {
        self.pids().into_iter().filter_map(cpu_ticks).sum()
    }
}

/// The parent of process `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command (in parentheses, which may hold spaces): state, then ppid.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User and system time of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here, after the command, 12 and 13.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let pids = self.pids();
        let main = self.child.id() as i32;
        // SAFETY: signals to the process this bench started, by its pid.
        unsafe { libc::kill(main, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            // SAFETY: as above.
            unsafe { libc::kill(main, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        // Its other processes end with it; any left (it was killed) are ended by their
        // pids, if they are still nsd's.
        std::thread::sleep(Duration::from_millis(100));
        for pid in pids.into_iter().skip(1) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("nsd") {
                // SAFETY: a process nsd (which this bench started) started, by its pid.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks `server` for `name` until it answers (at most 10 s, every 100 ms), while
/// `alive` says the server runs: the answer, and how many queries it took.
fn first_answer(
    client: &Namespace,
    server: [u8; 4],
    name: &str,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<(Message, u32)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut queries = 0;
    loop {
        alive()?;
        queries += 1;
        match ask(client, server, name, 1) {
            Ok(answer) => return Ok((answer, queries)),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!(
                    "no answer from {} within 10 s",
                    Ipv4Addr::from(server)
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Busy and total jiffies of each CPU (/proc/stat).
fn cpu_times() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Answers the node's link `dev` could not pass on to the client so far: frames its
/// XDP program sent back that the peer's ring had no room for, and datagrams it
/// dropped.
fn answers_lost(node: &Namespace, dev: &str) -> Result<u64> {
    let stats = node.exec("ethtool", &["-S", dev])?;
    let xdp: u64 = stats
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(name, _)| name.ends_with("xdp_xmit_errors") || name.ends_with("xdp_tx_errors"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum();
    let link: serde_json::Value =
        serde_json::from_str(&node.exec("ip", &["-s", "-j", "link", "show", "dev", dev])?)?;
    let dropped = link[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0);
    Ok(xdp + dropped)
}

/// UDP datagrams the node's kernel dropped for a full socket buffer, so far.
fn socket_drops(node: &Namespace) -> Result<u64> {
    let snmp = node.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .context("RcvbufErrors")?;
    Ok(values
        .split_whitespace()
        .nth(at)
        .context("RcvbufErrors value")?
        .parse()?)
}

/// One way through the node for queries.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    Xdp,
    Nsd,
    Echo,
}

struct Way {
    server: Server,
    name: &'static str,
    /// Which of `LINKS`.
    link: usize,
    /// The query's name, and the `DNS_ANSWERS` slot its answers count in.
    query: &'static str,
    slot: u32,
}

const WAYS: [Way; 5] = [
    Way {
        server: Server::Xdp,
        name: "XDP (this forwarder), A answered",
        link: 0,
        query: ANSWERED,
        slot: 0,
    },
    Way {
        server: Server::Nsd,
        name: "nsd, A answered",
        link: 1,
        query: ANSWERED,
        slot: 0,
    },
    Way {
        server: Server::Xdp,
        name: "XDP (this forwarder), NXDOMAIN",
        link: 0,
        query: MISSING,
        slot: 1,
    },
    Way {
        server: Server::Nsd,
        name: "nsd, NXDOMAIN",
        link: 1,
        query: MISSING,
        slot: 1,
    },
    Way {
        server: Server::Echo,
        name: "swap MACs + XDP_TX echo (ceiling)",
        link: 2,
        query: ANSWERED,
        slot: 2,
    },
];

/// One measurement of one way, over the part of a generator run in which it sent.
struct Measured {
    /// Answers counted per second, and queries sent per second.
    qps: f64,
    offered: f64,
    sent: u64,
    answers: u64,
    /// Frames counted in the other slots (answers of another kind, stray frames).
    other: u64,
    /// Each CPU's busy share over the window.
    cpu: Vec<f64>,
    /// nsd only: its processes' CPU share over the window, and the datagrams its
    /// socket dropped over the whole run.
    nsd_cpu: Option<f64>,
    socket_drops: u64,
    /// Answers lost on the way back over the whole run (`answers_lost`).
    lost: u64,
}

/// Counters read at one moment.
struct Sample {
    at: Instant,
    /// The generator's per-CPU sequences (`SEQUENCE`: frames made so far).
    generated: Vec<u32>,
    answers: [u64; 3],
    cpu: Vec<(u64, u64)>,
    nsd: Option<u64>,
}

impl Sample {
    fn take(object: &Ebpf, nsd: Option<&Nsd>) -> Result<Self> {
        let sequence: PerCpuArray<&MapData, u32> =
            PerCpuArray::try_from(object.map("SEQUENCE").context("SEQUENCE")?)?;
        Ok(Self {
            at: Instant::now(),
            generated: sequence.get(&0, 0)?.iter().copied().collect(),
            answers: answers(object)?,
            cpu: cpu_times(),
            nsd: nsd.map(Nsd::ticks),
        })
    }

    /// Frames generated since `before`.
    fn generated_since(&self, before: &Self) -> u64 {
        self.generated
            .iter()
            .zip(&before.generated)
            .map(|(a, b)| u64::from(a.wrapping_sub(*b)))
            .sum()
    }
}

/// Sums of the `DNS_ANSWERS` slots.
fn answers(object: &Ebpf) -> Result<[u64; 3]> {
    let counts: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(object.map("DNS_ANSWERS").context("DNS_ANSWERS")?)?;
    let mut out = [0; 3];
    for (slot, count) in out.iter_mut().enumerate() {
        *count = counts.get(&(slot as u32), 0)?.iter().sum();
    }
    Ok(out)
}

fn pin_to_cpus(cpus: &[usize]) {
    // SAFETY: a plain libc call on this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The kernel threads that run the NAPI of links named `dev` (`napi/<dev>-<id>`).
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the NAPI of link `dev` of `ns` in kernel threads of its own (`threaded`), on
/// `cpu`: the threads that appear when it is switched on (links of the same name in
/// other namespaces have theirs already) are pinned.
fn napi_thread(ns: &Namespace, dev: &str, cpu: usize) -> Result<()> {
    let before = napi_threads(dev);
    ns.exec(
        "sh",
        &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
    )?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let new = loop {
        let new: Vec<u32> = napi_threads(dev)
            .into_iter()
            .filter(|pid| !before.contains(pid))
            .collect();
        if !new.is_empty() {
            break new;
        }
        ensure!(
            Instant::now() < deadline,
            "no NAPI thread for {dev} in {}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    for pid in new {
        // SAFETY: a plain libc call on a kernel thread of a link this bench made.
        let set = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(pid as i32, size_of::<libc::cpu_set_t>(), &set)
        };
        ensure!(
            set == 0,
            "pinning NAPI thread {pid} of {dev}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// How long the counters are read after a generator run starts, and how often.
const SETTLE: Duration = Duration::from_millis(150);
const EVERY: Duration = Duration::from_millis(20);
/// The load offered to a server: this many times what it answered under a flood.
const OVERLOAD: f64 = 1.25;

/// The readings at the ends of a measured window.
struct Window {
    first: Sample,
    last: Sample,
}

impl Window {
    fn seconds(&self) -> f64 {
        (self.last.at - self.first.at).as_secs_f64()
    }

    fn sent(&self) -> u64 {
        self.last.generated_since(&self.first)
    }

    fn counted(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.last.answers[i] - self.first.answers[i])
    }

    /// What was measured in it, for answers in `slot`.
    fn measured(&self, slot: u32) -> Measured {
        let elapsed = self.seconds();
        let counted = self.counted();
        let answers = counted[slot as usize];
        let sent = self.sent();
        let cpu = self
            .first
            .cpu
            .iter()
            .zip(&self.last.cpu)
            .map(|((b0, t0), (b1, t1))| (b1 - b0) as f64 / (t1 - t0).max(1) as f64)
            .collect();
        // SAFETY: a plain libc call.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let nsd_cpu = self
            .first
            .nsd
            .zip(self.last.nsd)
            .map(|(b, a)| a.saturating_sub(b) as f64 / hz / elapsed);
        Measured {
            qps: answers as f64 / elapsed,
            offered: sent as f64 / elapsed,
            sent,
            answers,
            other: counted.iter().sum::<u64>() - answers,
            cpu,
            nsd_cpu,
            socket_drops: 0,
            lost: 0,
        }
    }
}

/// Sends queries on way `way` for about `window` (at most `cap` in a run) and counts
/// the answers that come back meanwhile: at `pace` (the generator's spin, and the rate
/// it gave), or, the first time, under a flood first, then at `OVERLOAD` times what the
/// server answered under it (the spin found from one more run), which is kept in
/// `pace`. Returns the measurement, and the flood's the first time.
///
/// Why not the flood alone: it sends several times what a server answers, and a veth
/// drops what its ring has no room for only after taking the ring's lock and reading
/// the slot the server empties — the server's cache lines, millions of times a second
/// — where nsd's excess is dropped at its socket on the generator's CPU. Near its
/// capacity each server gets the same excess to drop, as a NIC would drop a flood's.
///
/// Each generator run (BPF_PROG_RUN) costs fixed time around its frames (an RCU grace
/// period or two, ~10–20 ms here, the CPU idle), so one run makes the window's frames,
/// sized from the rate expected; a second thread reads the counters every 20 ms while
/// it runs, and the window goes from the first reading 150 ms in to the last one at
/// which the generator was still sending.
fn measure(
    object: &mut Ebpf,
    spin: &mut Array<MapData, u32>,
    bed: &Bed,
    nsd: Option<&Nsd>,
    way: &Way,
    pace: &mut Option<(u32, f64)>,
    (window, cap, warm_up): (Duration, u64, u32),
) -> Result<(Measured, Option<Measured>)> {
    let (link, node_link, src, dst) = LINKS[way.link];
    let (ifindex, mac) = bed::link(&bed.client, link)?;
    let (_, node_mac) = bed::link(&bed.node, node_link)?;
    let frame = query_frame((mac, node_mac), (src, dst), 1024, way.query)?;
    Array::<_, [u8; 4 + DNS_FRAME_LEN]>::try_from(
        object.map_mut("DNS_FRAME").context("DNS_FRAME")?,
    )?
    .set(0, dns_frame(&frame), 0)?;
    // The frames given are longer than the query: the generator's resize makes the
    // kernel take each frame's length from it (see `generate_dns`).
    let mut data = frame.clone();
    data.resize(DNS_FRAME_LEN - 1, 0);
    let generate: &Xdp = object
        .program("generate_dns")
        .context("generate_dns")?
        .try_into()?;
    let object = &*object;
    let drops_before = socket_drops(&bed.node)?;
    let lost_before = answers_lost(&bed.node, node_link)?;
    let (measured, flood) = bed.client.enter(|| -> Result<(Window, Option<Window>)> {
        let ctx: Vec<u8> = [0, data.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let inject = |count: u32| -> Result<()> {
            generate.test_run(TestRunOptions {
                data_in: Some(&data),
                ctx_in: Some(&ctx),
                repeat: count,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..TestRunOptions::default()
            })?;
            Ok(())
        };
        // One run of `frames`, read meanwhile: the first and the last reading taken
        // while the generator was still sending, if two were.
        let run = |frames: u32| -> Result<Option<Window>> {
            let done = &std::sync::atomic::AtomicBool::new(false);
            let before = Sample::take(object, nsd)?;
            std::thread::scope(|scope| {
                let start = Instant::now();
                let sampler = scope.spawn(move || -> Result<Vec<Sample>> {
                    pin_to_cpus(&[0, 1]);
                    let mut samples = Vec::new();
                    std::thread::sleep(SETTLE);
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        samples.push(Sample::take(object, nsd)?);
                        std::thread::sleep(EVERY);
                        // Bounded, whatever the generator does.
                        if start.elapsed() > window * 20 + Duration::from_secs(10) {
                            break;
                        }
                    }
                    Ok(samples)
                });
                let sent = inject(frames);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                let samples = sampler.join().expect("sampler")?;
                sent?;
                let mut sending = samples
                    .into_iter()
                    .filter(|s| s.generated_since(&before) < u64::from(frames));
                let first = sending.next();
                Ok(first
                    .zip(sending.next_back())
                    .map(|(first, last)| Window { first, last }))
            })
        };
        pin_to_cpus(&[0]);
        // The first time, a warm-up: queues filled, the server busy; and a first guess
        // of the flood's rate (low: the run's fixed cost is in it).
        let mut warm_rate = 0.0;
        if pace.is_none() {
            spin.set(0, 0, 0)?;
            let start = Instant::now();
            inject(warm_up)?;
            warm_rate = f64::from(warm_up) / start.elapsed().as_secs_f64();
        }
        // A run at spin `s` that lasts the window, sized from the rate guessed (made
        // again, sized from the rate read in it, if it falls short).
        let mut window_at = |s: u32, mut rate: f64| -> Result<Window> {
            spin.set(0, s, 0)?;
            let wanted = (window + 2 * SETTLE).as_secs_f64() * 1.2;
            for _ in 0..4 {
                let frames = (rate * wanted).clamp(f64::from(warm_up), cap as f64) as u32;
                match run(frames)? {
                    Some(w)
                        if w.seconds() >= window.as_secs_f64() * 0.75
                            || u64::from(frames) == cap =>
                    {
                        return Ok(w);
                    }
                    Some(w) if w.seconds() > 0.0 => rate = w.sent() as f64 / w.seconds(),
                    _ => rate *= 4.0,
                }
            }
            bail!("{}: no generator run lasted the window", way.name)
        };
        if let Some((s, rate)) = *pace {
            return Ok((window_at(s, rate)?, None));
        }
        let flood = window_at(0, warm_rate)?;
        let flooded = flood.measured(way.slot);
        let target = OVERLOAD * flooded.qps;
        if target >= 0.85 * flooded.offered {
            // The server keeps up with the flood (nearly): that is its measurement.
            *pace = Some((0, flooded.offered));
            return Ok((flood, None));
        }
        // The generator's time per query grows with its spin: one run at a guess
        // tells by how much a round.
        const PROBE: u32 = 100;
        let probe = window_at(PROBE, flooded.offered / 2.0)?.measured(way.slot);
        let per_round = (1.0 / probe.offered - 1.0 / flooded.offered) / f64::from(PROBE);
        ensure!(
            per_round > 0.0,
            "{}: the generator's spin did not slow it ({:.0}/s, then {:.0}/s)",
            way.name,
            flooded.offered,
            probe.offered
        );
        let s = ((1.0 / target - 1.0 / flooded.offered) / per_round).round() as u32;
        let paced = window_at(s, target)?;
        *pace = Some((s, paced.measured(way.slot).offered));
        Ok((paced, Some(flood)))
    })??;
    // What is still queued drains before the next way counts.
    std::thread::sleep(Duration::from_millis(200));
    let socket_drops = socket_drops(&bed.node)? - drops_before;
    let lost = answers_lost(&bed.node, node_link)? - lost_before;
    ensure!(
        measured.seconds() >= window.as_secs_f64() / 4.0,
        "{}: the generator ran for only {:.3} s of readings",
        way.name,
        measured.seconds()
    );
    Ok((
        Measured {
            socket_drops,
            lost,
            ..measured.measured(way.slot)
        },
        flood.map(|f| f.measured(way.slot)),
    ))
}

/// Per way: each round's measurement, the flood's, and the generator's spin.
type Rounds = (Vec<Vec<Measured>>, Vec<Option<Measured>>, Vec<u32>);

fn queries(report: &mut Report, object_bytes: &[u8], smoke: bool) -> Result<()> {
    // Rounds, the window per way and round, most queries in one run (enough for the
    // window and its margins at 5 million a second), and the warm-up's queries.
    let (rounds, window, cap, warm_up) = if smoke {
        (1, Duration::from_millis(150), 4_000_000, 16_384)
    } else {
        (5, Duration::from_secs(2), 20_000_000, 262_144)
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let have_nsd = Path::new(NSD_BINARY).exists();
    if !have_nsd {
        ensure!(
            smoke,
            "{NSD_BINARY} is missing: the DNS comparison needs nsd (apt-get install nsd)"
        );
        println!("  DNS: {NSD_BINARY} is missing; the nsd ways are skipped in this smoke run");
    }
    let mut object = Ebpf::load(object_bytes)?;
    for name in ["generate_dns", "count_dns", "swap_tx", "empty"] {
        let program: &mut Xdp = object.program_mut(name).context(name)?.try_into()?;
        program
            .load()
            .with_context(|| format!("verifying {name}"))?;
    }
    Array::<_, u32>::try_from(
        object
            .map_mut("FLOWS_GENERATED")
            .context("FLOWS_GENERATED")?,
    )?
    .set(0, PORTS, 0)?;
    let mut spin: Array<MapData, u32> =
        Array::try_from(object.take_map("DNS_SPIN").context("DNS_SPIN")?)?;
    let bed = Bed::build()?;
    // Through real sockets first: the data path's answers, and the serial its SOA
    // carries, which nsd's zone then gets.
    let (_, queries) =
        first_answer(&bed.client, RESOLVER, ANSWERED, || Ok(())).with_context(|| {
            let status = bed
                .agent
                .command(&["status", "--json"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            format!(
                "asking the data path; agent status:\n{status}\nagent log:\n{}",
                bed.agent.log()
            )
        })?;
    if queries > 1 {
        // The agent is ready once its config is applied: its first query should do.
        println!("  DNS: the data path answered only query {queries} (100 ms apart)");
    }
    let negative = ask(&bed.client, RESOLVER, MISSING, 2)?;
    let Some(RData::SOA(soa)) = negative.name_servers().first().map(|r| r.data()) else {
        bail!("no SOA in the NXDOMAIN answer");
    };
    let mut nsd = if have_nsd {
        let mut nsd = Nsd::start(&bed.node, soa.serial())?;
        first_answer(&bed.client, NSD, ANSWERED, || {
            match nsd.child.try_wait()? {
                Some(status) => bail!("nsd exited ({status})"),
                None => Ok(()),
            }
        })
        .with_context(|| format!("nsd's log:\n{}", nsd.log()))?;
        // Both answer alike: the same codes and records.
        for (name, id) in [(ANSWERED, 3), (MISSING, 4)] {
            let (ours, theirs) = (
                summary(&ask(&bed.client, RESOLVER, name, id)?),
                summary(&ask(&bed.client, NSD, name, id)?),
            );
            ensure!(
                ours == theirs,
                "{name}: the data path and nsd answer differently:\n  XDP: {ours}\n  nsd: {theirs}"
            );
            if smoke {
                println!("  DNS {name}: XDP and nsd both answer {ours}");
            }
        }
        Some(nsd)
    } else {
        None
    };
    let ways: Vec<&Way> = WAYS
        .iter()
        .filter(|w| have_nsd || w.server != Server::Nsd)
        .collect();

    let links = [
        bed::attach(&mut object, "empty", &bed.node, "cons-n")?,
        bed::attach(&mut object, "swap_tx", &bed.node, "cons-e")?,
    ];
    let mut counters = Vec::new();
    for (link, _, _, _) in LINKS {
        counters.push(bed::attach(&mut object, "count_dns", &bed.client, link)?);
    }
    let measured = (|| -> Result<Rounds> {
        // The generator on CPU 0, the server on CPU 1: the NAPI of the node's XDP links
        // (the data path, the echo) in a kernel thread each, pinned there. nsd's link
        // keeps its NAPI where the generator sends (CPU 0): nsd's receive path (veth,
        // IP, UDP, its socket's queue) costs it nothing of its CPU, where the data path
        // does all its work on its own. The counters run where the answers are sent
        // (CPU 1), right after each batch (XDP) or datagram (nsd), so that none is lost
        // on the way back; for nsd's datagrams that includes the veth's copy of each
        // into an XDP frame.
        if cpus > 1 {
            for node_link in ["cons-a", "cons-e"] {
                napi_thread(&bed.node, node_link, 1)?;
            }
        }
        let mut samples: Vec<Vec<Measured>> = ways.iter().map(|_| Vec::new()).collect();
        let mut floods: Vec<Option<Measured>> = ways.iter().map(|_| None).collect();
        let mut paces: Vec<Option<(u32, f64)>> = ways.iter().map(|_| None).collect();
        for _ in 0..rounds {
            for (i, way) in ways.iter().enumerate() {
                let nsd = nsd.as_ref().filter(|_| way.server == Server::Nsd);
                let (measured, flood) = measure(
                    &mut object,
                    &mut spin,
                    &bed,
                    nsd,
                    way,
                    &mut paces[i],
                    (window, cap, warm_up),
                )?;
                samples[i].push(measured);
                if flood.is_some() {
                    floods[i] = flood;
                }
            }
        }
        let spins = paces.iter().map(|p| p.map_or(0, |(s, _)| s)).collect();
        Ok((samples, floods, spins))
    })();
    // nsd first (it must not outlive the namespace), then the programs.
    let nsd_version = nsd.as_ref().map(|n| n.version.clone());
    if let Some(n) = nsd.as_mut()
        && let Ok(Some(status)) = n.child.try_wait()
    {
        println!("  DNS: nsd exited early ({status}):\n{}", n.log());
    }
    drop(nsd);
    for (program, link) in ["empty", "swap_tx"].into_iter().zip(links) {
        let xdp: &mut Xdp = object.program_mut(program).context(program)?.try_into()?;
        xdp.detach(link)?;
    }
    let count: &mut Xdp = object
        .program_mut("count_dns")
        .context("count_dns")?
        .try_into()?;
    for link in counters {
        count.detach(link)?;
    }
    let (samples, floods, spins) = measured?;

    for ((way, rounds), flood) in ways.iter().zip(&samples).zip(&floods) {
        if let (true, Some(f)) = (smoke, flood) {
            println!(
                "  DNS {} (flood): {:.0} answers/s of {:.0} queries/s",
                way.name, f.qps, f.offered
            );
        }
        for (r, m) in rounds.iter().enumerate() {
            if smoke {
                println!(
                    "  DNS {} (round {r}): {:.0} answers/s of {:.0} queries/s; {} sent, {} \
                     answered, {} other; CPU busy {:?}; nsd CPU {:?}; socket drops {}; \
                     answers lost {}",
                    way.name,
                    m.qps,
                    m.offered,
                    m.sent,
                    m.answers,
                    m.other,
                    m.cpu
                        .iter()
                        .map(|c| (c * 100.0).round())
                        .collect::<Vec<_>>(),
                    m.nsd_cpu.map(|c| (c * 100.0).round()),
                    m.socket_drops,
                    m.lost
                );
            }
            // The answers must be the ones meant: for every way some, and nothing of
            // another kind.
            ensure!(
                m.answers > 0 && m.other * 100 <= m.sent,
                "DNS {}: {} queries, {} answers, {} other frames:\n{}",
                way.name,
                m.sent,
                m.answers,
                m.other,
                bed.agent.log()
            );
        }
    }
    let qps: Vec<Vec<f64>> = samples
        .iter()
        .map(|rounds| rounds.iter().map(|m| m.qps).collect())
        .collect();
    let echo = ways.iter().position(|w| w.server == Server::Echo);
    for (i, way) in ways.iter().enumerate() {
        // Ratios round by round (the ways ran back to back), then the median: to nsd
        // for the same query, to the echo.
        let nsd_way = ways
            .iter()
            .position(|w| w.server == Server::Nsd && w.query == way.query);
        let ratio = |base: Option<usize>| {
            base.map(|b| {
                median(
                    &(0..rounds)
                        .map(|r| qps[i][r] / qps[b][r])
                        .collect::<Vec<_>>(),
                )
            })
        };
        let column = |f: &dyn Fn(&Measured) -> f64| -> f64 {
            median(&samples[i].iter().map(f).collect::<Vec<_>>())
        };
        let cpus = samples[i][0].cpu.len();
        let variant = match (way.server, &nsd_version) {
            (Server::Nsd, Some(version)) if !version.is_empty() => {
                way.name.replace("nsd", &format!("nsd {version}"))
            }
            _ => way.name.to_string(),
        };
        report.dns.push(DnsVariant {
            variant,
            query: if way.query == ANSWERED {
                "A"
            } else {
                "NXDOMAIN"
            }
            .into(),
            qps: median(&qps[i]),
            offered: column(&|m| m.offered),
            answered: column(&|m| m.answers as f64 / m.sent as f64),
            ratio_to_nsd: if way.server == Server::Xdp {
                ratio(nsd_way)
            } else {
                None
            },
            share_of_ceiling: ratio(echo).unwrap_or(0.0),
            cpu_busy: (0..cpus).map(|c| column(&|m| m.cpu[c])).collect(),
            server_cpu: samples[i][0]
                .nsd_cpu
                .map(|_| column(&|m| m.nsd_cpu.unwrap_or(0.0))),
            flood: floods[i]
                .as_ref()
                .map(|f| (f.qps, f.offered))
                .unwrap_or((median(&qps[i]), column(&|m| m.offered))),
            flood_ratio_to_nsd: match (way.server, nsd_way) {
                (Server::Xdp, Some(b)) => {
                    let flood = |i: usize| floods[i].as_ref().map_or(samples[i][0].qps, |f| f.qps);
                    Some(flood(i) / flood(b))
                }
                _ => None,
            },
            spin: spins[i],
            socket_drops: samples[i].iter().map(|m| m.socket_drops).sum(),
            answers_lost: samples[i].iter().map(|m| m.lost).sum(),
            per_round: qps[i].clone(),
        });
    }
    Ok(())
}
