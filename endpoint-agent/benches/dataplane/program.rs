//! Layer A: the program alone, through BPF_PROG_RUN on the real object, beside an empty
//! XDP_PASS program and a swap-MACs + XDP_TX program in the same rounds.
//!
//! BPF_PROG_RUN does not restore the frame between repeats, so the data-path cases run
//! behind a wrapper that first copies the pristine frame back; the wrapper's own cost
//! (`restore_pass` − `empty`, measured in the same rounds) is subtracted.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use endpoint_agent::{
    config, expiry,
    facts::Facts,
    loader,
    maps::Maps,
    pipeline::{Applied, Inputs, Pipeline},
};
use endpoint_common::{
    counter::{self, Count},
    maps::{Addr, FAMILY_IPV4, Flow, FlowKey, PROTO_TCP, name, tcp},
};
use etherparse::{PacketBuilder, PacketHeaders};
use testbed::{Namespace, veth};

use crate::report::{ProgramCase, Report, median, percentile};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const TARGETS: [([u8; 4], [u8; 6]); 2] = [
    ([172, 16, 0, 10], [2, 0, 0, 0, 0, 0x0a]),
    ([172, 16, 0, 11], [2, 0, 0, 0, 0, 0x0b]),
];
const CLIENT: [u8; 4] = [10, 0, 0, 10];
const ENDPOINT: [u8; 4] = [10, 0, 0, 100];
const NAT: [u8; 4] = [172, 16, 0, 100];
/// The same in IPv6: the measured endpoint is dual-stack.
const CLIENT6: [u8; 16] = fd00(0xa, 0x10);
const ENDPOINT6: [u8; 16] = fd00(0xa, 0x100);
const NAT6: [u8; 16] = fd00(0x16, 0x100);
const TARGETS6: [([u8; 16], [u8; 6]); 2] = [
    (fd00(0x16, 0x10), [2, 0, 0, 0, 0, 0x10]),
    (fd00(0x16, 0x11), [2, 0, 0, 0, 0, 0x11]),
];

/// `fd00:<subnet>::<host>`.
const fn fd00(subnet: u16, host: u16) -> [u8; 16] {
    Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, host).octets()
}
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const PROGRAMS: [&str; 6] = [
    "empty",
    "swap_tx",
    "restore_pass",
    "restore_endpoint",
    "restore_new_flow",
    "expire",
];
/// New flows per round: each one genuinely opened (the limits below leave room for all
/// of them, and the table is emptied between rounds).
const NEW_FLOWS_PER_ROUND: u32 = 10_000;

/// A config with `endpoints` endpoints (the first is the measured one) and room for
/// `flows` flow entries.
fn config_text(endpoints: usize, flows: u32) -> String {
    let mut y = format!(
        "node:
  interfaces:
    - {{ name: cons-a, role: consumer, consumer_network: vpc-a }}
    - {{ name: prov, role: provider, nat_addresses: [172.16.0.100, 'fd00:16::100'] }}
  tables: {{ endpoints: {}, flows: {flows}, handshakes: 65536 }}
  limits: {{ half_open_per_network: 1000000 }}
services:
  - name: s
    acceptance_required: false
    limits: {{ half_open: 1000000 }}
    allowed_principals: ['*']
    load_balancers:
      - name: nlb
        zone: z
        health_check: {{ protocol: none }}
        listeners:
          - port: 80
            targets:
              - {{ ip: 172.16.0.10, port: 8080 }}
              - {{ ip: 172.16.0.11, port: 8080 }}
              - {{ ip: 'fd00:16::10', port: 8080 }}
              - {{ ip: 'fd00:16::11', port: 8080 }}
          - port: 53
            protocol: udp
            targets:
              - {{ ip: 172.16.0.10, port: 5353 }}
              - {{ ip: 172.16.0.11, port: 5353 }}
              - {{ ip: 'fd00:16::10', port: 5353 }}
endpoints:
",
        endpoints.next_power_of_two().max(4096)
    );
    let (ip, ip6) = (Ipv4Addr::from(ENDPOINT), Ipv6Addr::from(ENDPOINT6));
    let _ = writeln!(
        y,
        "  - {{ id: e0, service: s, principal: p, consumer_network: vpc-a, \
         addresses: [{{ zone: z, ip: {ip} }}, {{ zone: z, ip: '{ip6}' }}] }}"
    );
    for e in 1..endpoints {
        let ip = Ipv4Addr::from(0x0b00_0000 + e as u32);
        let _ = writeln!(
            y,
            "  - {{ id: e{e}, service: s, principal: p, consumer_network: vpc-a, ip: {ip}, zone: z }}"
        );
    }
    y
}

/// The bench object, loaded for a config, its maps filled by the agent's pipeline.
struct Rig {
    ebpf: Ebpf,
    pipeline: Pipeline,
    cons: (u32, [u8; 6]),
    prov: (u32, [u8; 6]),
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
        let mut pipeline = Pipeline::new(Maps::take(&mut ebpf)?, Applied::default());
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
        // Any XDP program on the interfaces registers their receive queues, which test
        // runs with an ingress interface need.
        let empty: &mut Xdp = ebpf.program_mut("empty").context("empty")?.try_into()?;
        for interface in ["cons-a", "prov"] {
            empty.attach(interface, XdpMode::Driver)?;
        }
        let link = |name: &str| (facts.links[name].ifindex, facts.links[name].mac);
        Ok(Self {
            ebpf,
            pipeline,
            cons: link("cons-a"),
            prov: link("prov"),
        })
    }

    /// One test run of `program` on `frame` arriving on `ifindex`: (verdict, output,
    /// ns per run).
    fn run(
        &mut self,
        program: &str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, f64)> {
        let mut restore: Array<&mut MapData, [u8; 64]> =
            Array::try_from(self.ebpf.map_mut("FRAME").context("FRAME")?)?;
        let mut pristine = [0u8; 64];
        pristine.copy_from_slice(&frame[..64]);
        restore.set(0, pristine, 0)?;
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 64];
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

    /// ns per new flow over `n` SYNs with new source ports, each of which must open a
    /// flow, from an empty table (the half-open flows of the round before expire).
    fn new_flows(&mut self, syn: &[u8], ifindex: u32, n: u32) -> Result<f64> {
        let program: &Xdp = self.ebpf.program("expire").context("expire")?.try_into()?;
        let later = expiry::now_ns() + 3600 * 1_000_000_000;
        while expiry::run(program, &[], later)? > 0 {}
        let opened = |rig: &Self| -> Result<u64> {
            let stats = rig.pipeline.maps().per_cpu_array::<Count>(name::STATS)?;
            let slot = rig.pipeline.applied().ids.endpoints["e0"];
            let index = counter::index(slot, counter::FORWARD_NEW);
            Ok(stats.get(&index, 0)?.iter().map(|c| c.packets).sum())
        };
        let before = opened(self)?;
        let ns = self.run("restore_new_flow", syn, ifindex, n)?.2;
        let after = opened(self)?;
        ensure!(
            after - before == u64::from(n),
            "new flows: {} of {n} SYNs opened a flow",
            after - before
        );
        Ok(ns)
    }

    /// Fills the flow table with `n` unrelated established entries.
    fn prefill(&mut self, n: u32) -> Result<()> {
        let mut flows = self
            .pipeline
            .maps_mut()
            .hash_mut::<FlowKey, Flow>(name::FLOWS)?;
        for i in 0..n {
            let key = FlowKey {
                src: Addr::ipv4((0x0c00_0000 + i).to_be_bytes()),
                dst: Addr::ipv4(ENDPOINT),
                src_port_be: (i as u16).to_be(),
                dst_port_be: 80u16.to_be(),
                scope: FlowKey::scope(7, FAMILY_IPV4, PROTO_TCP),
            };
            let flow = Flow {
                tcp: tcp::ESTABLISHED,
                ..Flow::default()
            };
            flows.insert(key, flow, 0)?;
        }
        Ok(())
    }
}

/// The client's and the target's first sequence numbers in these frames.
const CLIENT_ISN: u32 = 1000;
const TARGET_ISN: u32 = 5000;
/// Bytes of payload in every frame (so that all are 64 bytes).
const PAYLOAD: u32 = 10;

/// A 64-byte TCP frame (10 bytes of payload) with sequence number `seq` and, if
/// given, acknowledgement `ack`.
fn frame(
    mac: ([u8; 6], [u8; 6]),
    ip: ([u8; 4], [u8; 4]),
    ports: (u16, u16),
    ttl: u8,
    syn: bool,
    (seq, ack): (u32, Option<u32>),
) -> Vec<u8> {
    let mut builder = PacketBuilder::ethernet2(mac.0, mac.1)
        .ipv4(ip.0, ip.1, ttl)
        .tcp(ports.0, ports.1, seq, 4096);
    if syn {
        builder = builder.syn();
    }
    if let Some(ack) = ack {
        builder = builder.ack(ack);
    }
    let mut out = Vec::new();
    builder.write(&mut out, b"benchmark!").expect("frame");
    assert_eq!(out.len(), 64);
    out
}

/// A 64-byte UDP datagram (22 bytes of payload), its checksum computed.
fn datagram(
    mac: ([u8; 6], [u8; 6]),
    ip: ([u8; 4], [u8; 4]),
    ports: (u16, u16),
    ttl: u8,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac.0, mac.1)
        .ipv4(ip.0, ip.1, ttl)
        .udp(ports.0, ports.1)
        .write(&mut out, b"benchmark, benchmark!!")
        .expect("datagram");
    assert_eq!(out.len(), 64);
    out
}

/// The frames of the cases, checked once for verdict and exact output.
struct Frames {
    forward: Vec<u8>,
    reply: Vec<u8>,
    /// IPv6 (74 bytes: the wrapper restores the first 64; only the TCP checksum
    /// beyond is rewritten, and an established flow's path does not read it).
    forward6: Vec<u8>,
    reply6: Vec<u8>,
    udp_forward: Vec<u8>,
    udp_reply: Vec<u8>,
    new_flow: Vec<u8>,
    pass_through: Vec<u8>,
    malformed: Vec<u8>,
}

fn check(rig: &mut Rig) -> Result<Frames> {
    let (cons, prov) = (rig.cons, rig.prov);
    // The handshake, checked frame by frame: the SYN (with data) ...
    let syn = frame(
        (CLIENT_MAC, cons.1),
        (CLIENT, ENDPOINT),
        (40000, 80),
        64,
        true,
        (CLIENT_ISN, None),
    );
    let (verdict, out, _) = rig.run("restore_endpoint", &syn, cons.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "SYN: verdict {verdict}");
    let headers = PacketHeaders::from_ethernet_slice(&out)?;
    let Some(etherparse::NetHeaders::Ipv4(ip, _)) = headers.net else {
        anyhow::bail!("SYN: not IPv4")
    };
    let Some(etherparse::TransportHeader::Tcp(tcp_header)) = headers.transport else {
        anyhow::bail!("SYN: not TCP")
    };
    let (target, target_mac) = *TARGETS
        .iter()
        .find(|(t, _)| *t == ip.destination)
        .context("SYN: not a target")?;
    let nat_port = tcp_header.source_port;
    let expected = frame(
        (prov.1, target_mac),
        (NAT, target),
        (nat_port, 8080),
        63,
        true,
        (CLIENT_ISN, None),
    );
    ensure!(
        out == expected,
        "SYN: output differs from the expected frame"
    );
    // ... the target's SYN-ACK ...
    let client_next = CLIENT_ISN + 1 + PAYLOAD;
    let syn_ack = frame(
        (target_mac, prov.1),
        (target, NAT),
        (8080, nat_port),
        64,
        true,
        (TARGET_ISN, Some(client_next)),
    );
    let (verdict, out, _) = rig.run("restore_endpoint", &syn_ack, prov.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "SYN-ACK: verdict {verdict}");
    let expected = frame(
        (cons.1, CLIENT_MAC),
        (ENDPOINT, CLIENT),
        (80, 40000),
        63,
        true,
        (TARGET_ISN, Some(client_next)),
    );
    ensure!(
        out == expected,
        "SYN-ACK: output differs from the expected frame"
    );
    // ... and data from the client that acknowledges it: the connection is established.
    let target_next = TARGET_ISN + 1;
    let forward = frame(
        (CLIENT_MAC, cons.1),
        (CLIENT, ENDPOINT),
        (40000, 80),
        64,
        false,
        (client_next, Some(target_next)),
    );
    let (verdict, _, _) = rig.run("restore_endpoint", &forward, cons.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "established: verdict {verdict}");
    let reply = frame(
        (target_mac, prov.1),
        (target, NAT),
        (8080, nat_port),
        64,
        false,
        (target_next, Some(client_next)),
    );
    let (verdict, _, _) = rig.run("restore_endpoint", &reply, prov.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "reply: verdict {verdict}");

    // A UDP flow, opened by its first datagram and checked both ways.
    let udp_forward = datagram((CLIENT_MAC, cons.1), (CLIENT, ENDPOINT), (40000, 53), 64);
    let (verdict, out, _) = rig.run("restore_endpoint", &udp_forward, cons.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "datagram: verdict {verdict}");
    let headers = PacketHeaders::from_ethernet_slice(&out)?;
    let (Some(etherparse::NetHeaders::Ipv4(ip, _)), Some(etherparse::TransportHeader::Udp(udp))) =
        (headers.net, headers.transport)
    else {
        anyhow::bail!("datagram: not UDP/IPv4")
    };
    let (target, target_mac) = *TARGETS
        .iter()
        .find(|(t, _)| *t == ip.destination)
        .context("datagram: not a target")?;
    let udp_nat_port = udp.source_port;
    ensure!(
        out == datagram(
            (prov.1, target_mac),
            (NAT, target),
            (udp_nat_port, 5353),
            63
        ),
        "datagram: output differs from the expected frame"
    );
    let udp_reply = datagram(
        (target_mac, prov.1),
        (target, NAT),
        (5353, udp_nat_port),
        64,
    );
    let (verdict, out, _) = rig.run("restore_endpoint", &udp_reply, prov.0, 1)?;
    ensure!(
        verdict == XDP_REDIRECT
            && out == datagram((cons.1, CLIENT_MAC), (ENDPOINT, CLIENT), (53, 40000), 63),
        "UDP reply: verdict {verdict} or output differs from the expected frame"
    );

    let (verdict, out, _) = rig.run("restore_new_flow", &syn, cons.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "new flow: verdict {verdict}");
    let headers = PacketHeaders::from_ethernet_slice(&out)?;
    let Some(etherparse::NetHeaders::Ipv4(ip, _)) = headers.net else {
        anyhow::bail!("new flow: not IPv4")
    };
    ensure!(
        ip.source == NAT && ip.header_checksum == ip.calc_header_checksum(),
        "new flow: bad header"
    );

    // The node's own traffic on its provider link (a reply to its own connection, to
    // a port outside the NAT range): decided with array reads only.
    let pass_through = frame(
        (target_mac, prov.1),
        (target, [172, 16, 0, 1]),
        (8080, 45000),
        64,
        false,
        (1, Some(1)),
    );
    let (verdict, out, _) = rig.run("restore_endpoint", &pass_through, prov.0, 1)?;
    ensure!(
        verdict == XDP_PASS && out == pass_through,
        "pass-through: verdict {verdict} or changed"
    );

    let mut malformed = forward.clone();
    malformed[14] = 0x44;
    let (verdict, _, _) = rig.run("restore_endpoint", &malformed, cons.0, 1)?;
    ensure!(verdict == XDP_DROP, "malformed: verdict {verdict}");

    let (verdict, out, _) = rig.run("swap_tx", &forward, cons.0, 1)?;
    ensure!(
        verdict == XDP_TX && out[..6] == forward[6..12],
        "swap-MAC-TX baseline"
    );
    let (forward6, reply6) = check_ipv6(rig)?;
    Ok(Frames {
        forward,
        reply,
        forward6,
        reply6,
        udp_forward,
        udp_reply,
        new_flow: syn,
        pass_through,
        malformed,
    })
}

/// A TCP/IPv6 frame without payload.
fn frame6(
    mac: ([u8; 6], [u8; 6]),
    ip: ([u8; 16], [u8; 16]),
    ports: (u16, u16),
    syn: bool,
    (seq, ack): (u32, Option<u32>),
) -> Vec<u8> {
    let mut builder = PacketBuilder::ethernet2(mac.0, mac.1)
        .ipv6(ip.0, ip.1, 64)
        .tcp(ports.0, ports.1, seq, 4096);
    if syn {
        builder = builder.syn();
    }
    if let Some(ack) = ack {
        builder = builder.ack(ack);
    }
    let mut out = Vec::new();
    builder.write(&mut out, b"").expect("frame");
    out
}

/// An IPv6 connection's handshake, each output checked (addresses, checksum); returns
/// its established frames both ways.
fn check_ipv6(rig: &mut Rig) -> Result<(Vec<u8>, Vec<u8>)> {
    let (cons, prov) = (rig.cons, rig.prov);
    let tcp_of = |out: &[u8]| -> Result<(etherparse::Ipv6Header, etherparse::TcpHeader)> {
        let headers = PacketHeaders::from_ethernet_slice(out)?;
        let (
            Some(etherparse::NetHeaders::Ipv6(ip, _)),
            Some(etherparse::TransportHeader::Tcp(tcp)),
        ) = (headers.net, headers.transport)
        else {
            anyhow::bail!("not TCP/IPv6")
        };
        ensure!(
            tcp.checksum == tcp.calc_checksum_ipv6(&ip, headers.payload.slice())?,
            "TCP/IPv6 checksum"
        );
        Ok((ip, tcp))
    };
    let syn = frame6(
        (CLIENT_MAC, cons.1),
        (CLIENT6, ENDPOINT6),
        (40000, 80),
        true,
        (CLIENT_ISN, None),
    );
    let (verdict, out, _) = rig.run("restore_endpoint", &syn, cons.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "IPv6 SYN: verdict {verdict}");
    let (ip, tcp) = tcp_of(&out)?;
    let (target, target_mac) = *TARGETS6
        .iter()
        .find(|(t, _)| *t == ip.destination)
        .context("IPv6 SYN: not an IPv6 target")?;
    ensure!(ip.source == NAT6, "IPv6 SYN: not from the NAT address");
    let nat_port = tcp.source_port;
    let syn_ack = frame6(
        (target_mac, prov.1),
        (target, NAT6),
        (8080, nat_port),
        true,
        (TARGET_ISN, Some(CLIENT_ISN + 1)),
    );
    let (verdict, out, _) = rig.run("restore_endpoint", &syn_ack, prov.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "IPv6 SYN-ACK: verdict {verdict}");
    let (ip, _) = tcp_of(&out)?;
    ensure!(
        (ip.source, ip.destination) == (ENDPOINT6, CLIENT6),
        "IPv6 SYN-ACK: addresses"
    );
    let forward = frame6(
        (CLIENT_MAC, cons.1),
        (CLIENT6, ENDPOINT6),
        (40000, 80),
        false,
        (CLIENT_ISN + 1, Some(TARGET_ISN + 1)),
    );
    let (verdict, out, _) = rig.run("restore_endpoint", &forward, cons.0, 1)?;
    ensure!(
        verdict == XDP_REDIRECT,
        "IPv6 established: verdict {verdict}"
    );
    tcp_of(&out)?;
    let reply = frame6(
        (target_mac, prov.1),
        (target, NAT6),
        (8080, nat_port),
        false,
        (TARGET_ISN + 1, Some(CLIENT_ISN + 1)),
    );
    let (verdict, _, _) = rig.run("restore_endpoint", &reply, prov.0, 1)?;
    ensure!(verdict == XDP_REDIRECT, "IPv6 reply: verdict {verdict}");
    Ok((forward, reply))
}

/// Medians over interleaved rounds of each (name, program, frame, ifindex).
fn measure(
    rig: &mut Rig,
    cases: &[(&str, &str, &[u8], u32)],
    rounds: usize,
    repeat: u32,
) -> Result<Vec<f64>> {
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, (_, program, frame, ifindex)) in cases.iter().enumerate() {
            let sample = if *program == "restore_new_flow" {
                rig.new_flows(frame, *ifindex, repeat.min(NEW_FLOWS_PER_ROUND))?
            } else {
                rig.run(program, frame, *ifindex, repeat)?.2
            };
            samples[i].push(sample);
        }
    }
    Ok(samples.iter().map(|s| median(s)).collect())
}

/// A namespace with the two interfaces a rig attaches to and the targets' neighbours.
fn program_namespace(label: &str) -> Result<Namespace> {
    let ns = Namespace::new(label)?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    for (link, peer) in [("cons-a", "cons-a-peer"), ("prov", "prov-peer")] {
        veth(&ns, link, &ns, peer)?;
    }
    ns.ip(&["addr", "add", "172.16.0.1/24", "dev", "prov"])?;
    for (ip, mac) in TARGETS {
        ns.neighbour(ip.into(), mac, "prov")?;
    }
    ns.sysctl("net.ipv4.conf.prov.forwarding", "1")?;
    ns.sysctl("net.ipv6.conf.prov.disable_ipv6", "0")?;
    ns.sysctl("net.ipv6.conf.prov.forwarding", "1")?;
    ns.ip(&["-6", "addr", "add", "fd00:16::1/64", "dev", "prov", "nodad"])?;
    for (ip, mac) in TARGETS6 {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        let ip = Ipv6Addr::from(ip).to_string();
        ns.ip(&[
            "-6",
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &mac,
            "dev",
            "prov",
            "nud",
            "permanent",
        ])?;
    }
    Ok(ns)
}

pub fn run(report: &mut Report, object: &[u8], smoke: bool) -> Result<()> {
    let (rounds, repeat) = if smoke { (1, 1000) } else { (15, 200_000) };
    report.rounds = rounds;
    let ns = program_namespace("bench-program")?;
    ns.enter(|| -> Result<()> {
        let mut rig = Rig::load(object, &config_text(1, 1 << 17))?;
        let f = check(&mut rig)?;
        let (cons, prov) = (rig.cons.0, rig.prov.0);
        let cases: [(&str, &str, &[u8], u32); 12] = [
            ("baseline: empty XDP_PASS", "empty", &f.forward, cons),
            ("baseline: swap MACs + XDP_TX", "swap_tx", &f.forward, cons),
            (
                "(frame restore, subtracted)",
                "restore_pass",
                &f.forward,
                cons,
            ),
            (
                "established flow, consumer to target",
                "restore_endpoint",
                &f.forward,
                cons,
            ),
            (
                "reply, target to consumer",
                "restore_endpoint",
                &f.reply,
                prov,
            ),
            (
                "established IPv6 flow, consumer to target",
                "restore_endpoint",
                &f.forward6,
                cons,
            ),
            (
                "IPv6 reply, target to consumer",
                "restore_endpoint",
                &f.reply6,
                prov,
            ),
            (
                "established UDP flow, consumer to target",
                "restore_endpoint",
                &f.udp_forward,
                cons,
            ),
            (
                "UDP reply, target to consumer",
                "restore_endpoint",
                &f.udp_reply,
                prov,
            ),
            (
                "new flow (SYN, NAT port claimed)",
                "restore_new_flow",
                &f.new_flow,
                cons,
            ),
            (
                "pass-through (the node's own traffic)",
                "restore_endpoint",
                &f.pass_through,
                prov,
            ),
            (
                "malformed frame (IHL 4)",
                "restore_endpoint",
                &f.malformed,
                cons,
            ),
        ];
        let medians = measure(&mut rig, &cases, rounds, repeat)?;
        let (empty, swap, restore) = (medians[0], medians[1], medians[2] - medians[0]);
        for (i, (name, program, _, _)) in cases.iter().enumerate() {
            if i == 2 {
                continue;
            }
            let ns = if program.starts_with("restore") {
                medians[i] - restore
            } else {
                medians[i]
            };
            report.program.push(ProgramCase {
                case: name.to_string(),
                ns,
                over_empty: ns - empty,
                ratio_to_swap_mac_tx: ns / swap,
                spread: None,
            });
        }

        Ok(())
    })??;
    drop(ns);
    scaling(report, object, smoke, rounds, repeat)
}

/// The established path with more endpoints, and with a fuller flow table: every
/// configuration loaded at once (each in its own namespace), measured in interleaved
/// rounds with its own baselines, so that the rows compare.
fn scaling(
    report: &mut Report,
    object: &[u8],
    smoke: bool,
    rounds: usize,
    repeat: u32,
) -> Result<()> {
    let (endpoint_counts, flow_counts): (&[usize], &[u32]) = if smoke {
        (&[1, 100, 1000], &[1000, 10_000])
    } else {
        (&[1, 1000, 100_000], &[1000, 100_000, 1_000_000])
    };
    let configurations = endpoint_counts
        .iter()
        .map(|&n| (format!("established flow, {n} endpoints"), n, 1000))
        .chain(
            flow_counts
                .iter()
                .map(|&n| (format!("established flow, {n} flows in the table"), 1, n)),
        );
    let mut rigs = Vec::new();
    for (i, (label, endpoints, flows)) in configurations.enumerate() {
        let ns = program_namespace(&format!("bench-scale-{i}"))?;
        let loaded = ns.enter(|| -> Result<(Rig, Frames)> {
            let table = (flows * 2).max(1 << 17);
            let mut rig = Rig::load(object, &config_text(endpoints, table))?;
            let frames = check(&mut rig)?;
            rig.prefill(flows.saturating_sub(2))?;
            Ok((rig, frames))
        })??;
        rigs.push((label, ns, loaded, Vec::new()));
    }
    // Several rounds per row even in a smoke run: the spread needs them.
    for _ in 0..rounds.max(3) {
        for (_, ns, (rig, frames), samples) in &mut rigs {
            let sample = ns.enter(|| -> Result<[f64; 4]> {
                let cons = rig.cons.0;
                let mut one = |program: &str| -> Result<f64> {
                    Ok(rig.run(program, &frames.forward, cons, repeat)?.2)
                };
                Ok([
                    one("empty")?,
                    one("swap_tx")?,
                    one("restore_pass")?,
                    one("restore_endpoint")?,
                ])
            })??;
            samples.push(sample);
        }
    }
    for (label, _, _, samples) in rigs {
        // Per round: the established path (restore cost subtracted) and its ratio.
        let ns: Vec<f64> = samples.iter().map(|[e, _, r, d]| d - (r - e)).collect();
        let ratios: Vec<f64> = samples
            .iter()
            .zip(&ns)
            .map(|([_, swap, _, _], ns)| ns / swap)
            .collect();
        let ratio = median(&ratios);
        let empty = median(&samples.iter().map(|s| s[0]).collect::<Vec<_>>());
        report.scaling.push(ProgramCase {
            case: label,
            ns: median(&ns),
            over_empty: median(&ns) - empty,
            ratio_to_swap_mac_tx: ratio,
            spread: Some((percentile(&ratios, 0.9) - percentile(&ratios, 0.1)) / 2.0 / ratio),
        });
    }
    Ok(())
}
