//! The rig every packet test runs on: a namespace with the node's interfaces (veth
//! pairs), routes and neighbours that make route lookups real, the real XDP object
//! loaded and attached, and its maps filled by the agent's own pipeline from a YAML
//! config. Frames are built independently (etherparse) with checksums computed from
//! scratch, and run through the program with BPF_PROG_RUN as if they arrived on an
//! interface.

use std::collections::BTreeSet;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, XdpMode},
};
use endpoint_agent::{
    expiry::Expiry,
    facts::{Facts, Link},
    instance::Instance,
    loader,
    pipeline::{Applied, Failover, Inputs, Pipeline},
    stats::Counters,
};
use endpoint_common::{
    hash,
    maps::{Addr, EndpointKey, FAMILY_IPV4, Flow, FlowKey, NO_TARGET, PROTO_TCP, PROTO_UDP, name},
};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use testbed::{Namespace, veth};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const CLIENT: [u8; 4] = [10, 0, 0, 10];
pub const ENDPOINT: [u8; 4] = [10, 0, 0, 100];
pub const PENDING: [u8; 4] = [10, 0, 0, 101];
pub const NO_NEIGHBOUR: [u8; 4] = [10, 0, 0, 102];
pub const NO_ROUTE: [u8; 4] = [10, 0, 0, 103];
pub const GUARDED: [u8; 4] = [10, 0, 0, 104];
pub const STRICT: [u8; 4] = [10, 0, 0, 105];
/// The `dns` endpoints (in both consumer networks): UDP and TCP on port 53.
pub const DNS: [u8; 4] = [10, 0, 0, 106];
pub const NAT: [u8; 4] = [172, 16, 0, 100];
pub const NODE: [u8; 4] = [172, 16, 0, 1];
pub const TARGETS: [([u8; 4], [u8; 6]); 2] = [
    ([172, 16, 0, 10], [2, 0, 0, 0, 0, 0x0a]),
    ([172, 16, 0, 11], [2, 0, 0, 0, 0, 0x0b]),
];
/// The consumer's and the target's first sequence numbers in the frames built here.
pub const CLIENT_ISN: u32 = 1000;
pub const TARGET_ISN: u32 = 5000;

pub const CONFIG: &str = "
node:
  interfaces:
    - { name: cons-a, role: consumer, consumer_network: vpc-a }
    - { name: cons-b, role: consumer, consumer_network: vpc-b }
    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }
    - { name: prov2, role: provider }
  nat_ports: { first: 20000, last: 20999 }
  hash_seed: 11
services:
  - name: orders
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - name: nlb
        zone: z1
        listeners:
          - port: 80
            targets:
              - { ip: 172.16.0.10, port: 8080 }
              - { ip: 172.16.0.11, port: 8080 }
  - name: unresolved
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - name: nlb
        zone: z1
        listeners:
          - port: 80
            targets: [{ ip: 172.16.0.20, port: 8080 }]
  - name: unrouted
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - name: nlb
        zone: z1
        listeners:
          - port: 80
            targets: [{ ip: 192.168.99.1, port: 8080 }]
  - name: strict
    acceptance_required: false
    allowed_principals: ['*']
    on_revoke: reset
    load_balancers:
      - name: nlb
        zone: z1
        listeners:
          - port: 80
            targets: [{ ip: 172.16.0.10, port: 8080 }]
          - port: 443
            targets: [{ ip: 172.16.0.10, port: 8443 }]
  - name: dns
    acceptance_required: false
    allowed_principals: ['*']
    udp_idle_timeout_seconds: 30
    load_balancers:
      - name: nlb
        zone: z1
        health_check: { protocol: none }
        listeners:
          - port: 53
            protocol: udp
            targets: [{ ip: 172.16.0.11, port: 5353 }]
          - port: 53
            targets: [{ ip: 172.16.0.10, port: 5300 }]
endpoints:
  - { id: dns-a, service: dns, principal: p, consumer_network: vpc-a, ip: 10.0.0.106, zone: z1, state: available }
  - { id: dns-b, service: dns, principal: p, consumer_network: vpc-b, ip: 10.0.0.106, zone: z1, state: available }
  - { id: a, service: orders, principal: p, consumer_network: vpc-a, ip: 10.0.0.100, zone: z1, state: available }
  - { id: b, service: orders, principal: p, consumer_network: vpc-b, ip: 10.0.0.100, zone: z1, state: available }
  - { id: pending, service: orders, principal: p, consumer_network: vpc-a, ip: 10.0.0.101, zone: z1, state: pendingAcceptance }
  - { id: rejected, service: orders, principal: p, consumer_network: vpc-b, ip: 10.0.0.101, zone: z1, state: rejected }
  - { id: unresolved, service: unresolved, principal: p, consumer_network: vpc-a, ip: 10.0.0.102, zone: z1, state: available }
  - { id: unrouted, service: unrouted, principal: p, consumer_network: vpc-a, ip: 10.0.0.103, zone: z1, state: available }
  - id: guarded
    service: strict
    principal: p
    consumer_network: vpc-b
    ip: 10.0.0.104
    zone: z1
    security_groups:
      - { cidr: 10.0.0.0/28, ports: [80] }
      - { cidr: 10.0.0.0/24, ports: [443] }
  - { id: strict, service: strict, principal: p, consumer_network: vpc-a, ip: 10.0.0.105, zone: z1, state: available, accepted_at: '2026-01-01T00:00:00Z' }
";

/// A namespace with the node's interfaces, the program loaded, attached and its maps
/// filled by the pipeline from a config.
pub struct Rig {
    pub ebpf: Ebpf,
    pub pipeline: Pipeline,
    pub facts: Facts,
    pub expiry: Expiry,
}

/// The program's verdict and output frame.
pub struct Out {
    pub action: u32,
    pub frame: Vec<u8>,
}

fn root() -> bool {
    // SAFETY: a plain libc call.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `test` on a thread inside a fresh namespace set up for CONFIG. Without root
/// (BPF and network namespaces need it) the test says so and passes: a plain `cargo
/// test` then runs what it can.
pub fn with_rig(test: impl FnOnce(&mut Rig) + Send) {
    with_rig_for(CONFIG, test)
}

/// As [`with_rig`], with the maps filled from `config`.
pub fn with_rig_for(config: &str, test: impl FnOnce(&mut Rig) + Send) {
    if !root() {
        eprintln!("skipped: packet tests need root (BPF_PROG_RUN, network namespaces)");
        return;
    }
    let ns = Namespace::new("packets").expect("namespace");
    // No IPv6 neighbour discovery chatter hitting the program between test frames.
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    for (link, peer) in [
        ("cons-a", "cons-a-peer"),
        ("cons-b", "cons-b-peer"),
        ("prov", "prov-peer"),
        ("prov2", "prov2-peer"),
    ] {
        veth(&ns, link, &ns, peer).expect("veth");
    }
    ns.ip(&["addr", "add", "172.16.0.1/24", "dev", "prov"])
        .unwrap();
    for (ip, mac) in TARGETS {
        ns.neighbour(ip.into(), mac, "prov").unwrap();
    }
    ns.sysctl("net.ipv4.conf.prov.forwarding", "1").unwrap();
    // The maps are pinned under an instance of the test's own, removed at the end.
    let instance = Instance::new(ns.name()).unwrap();
    instance.prepare().unwrap();
    let _unpin = Unpin(instance.clone());
    ns.enter(|| {
        let facts = Facts::of_this_node().expect("facts");
        let parsed = endpoint_agent::config::parse("test.yaml", config).expect("YAML");
        let (mut ebpf, maps) = loader::load(&parsed, &instance).expect("load");
        let mut rig = Rig {
            pipeline: Pipeline::new(maps, Applied::default()),
            facts,
            expiry: Expiry::default(),
            ebpf: {
                for name in ["cons-a", "cons-b", "prov", "prov2"] {
                    loader::program(&mut ebpf)
                        .unwrap()
                        .attach(name, XdpMode::Driver)
                        .expect("attach");
                }
                ebpf
            },
        };
        rig.reconfigure(config);
        test(&mut rig);
    })
    .expect("namespace thread");
}

/// Removes a test instance's pins and state, even when the test fails.
struct Unpin(Instance);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = loader::remove_pins(&self.0);
        let _ = self.0.remove();
    }
}

impl Rig {
    /// Applies a config the way the agent does: through the pipeline, a plan from what
    /// the maps hold.
    pub fn reconfigure(&mut self, text: &str) {
        self.reconfigure_failover(text, &Failover::default());
    }

    /// As `reconfigure`, as a node of a zoned fleet that holds what `failover` says.
    pub fn reconfigure_failover(&mut self, text: &str, failover: &Failover) {
        let unhealthy = BTreeSet::new();
        let inputs = Inputs {
            facts: &self.facts,
            seed: 1,
            unhealthy: &unhealthy,
            flow_records: false,
            verified: &Default::default(),
            failover,
        };
        let proposal = self
            .pipeline
            .propose("test.yaml", text, &inputs)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.pipeline.apply(proposal).expect("apply");
    }

    /// The slot of the endpoint named `name`.
    pub fn endpoint(&self, name: &str) -> u32 {
        self.pipeline.applied().ids.endpoints[name]
    }

    /// Every flow entry (both directions).
    pub fn flows(&self) -> Vec<(FlowKey, Flow)> {
        endpoint_agent::expiry::read_all(self.pipeline.maps().data(name::FLOWS).unwrap()).unwrap()
    }

    /// The consumer-to-target entries.
    pub fn connections(&self) -> Vec<(FlowKey, Flow)> {
        self.flows()
            .into_iter()
            .filter(|(k, _)| k.network() != 0)
            .collect()
    }

    pub fn link(&self, name: &str) -> Link {
        Facts::of_this_node().unwrap().links[name]
    }

    /// Runs `frame` through the program as if it arrived on `interface`.
    pub fn run(&mut self, interface: &str, frame: &[u8]) -> Out {
        let ifindex = self.link(interface).ifindex;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 256];
        let result = loader::program(&mut self.ebpf)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_RUN");
        out.truncate(result.data_size_out as usize);
        Out {
            action: result.return_value,
            frame: out,
        }
    }

    pub fn counters(&self) -> Counters {
        Counters::read(self.pipeline.maps()).unwrap()
    }

    /// The counters that are not zero, by name (for failure messages).
    pub fn counted(&self) -> Vec<(&'static str, u64)> {
        let counters = self.counters();
        endpoint_common::counter::ALL
            .iter()
            .map(|(c, name)| (*name, counters.packets(*c)))
            .filter(|(_, n)| *n != 0)
            .collect()
    }

    /// Packets counted for endpoint `name` under `counter`.
    pub fn count(&self, name: &str, counter: u32) -> u64 {
        self.counters().get(self.endpoint(name), counter).packets
    }

    /// One round of expiry as the agent runs it, `ahead` seconds after now.
    pub fn expire(&mut self, ahead: u32) -> usize {
        let now = endpoint_agent::expiry::now_ns() + u64::from(ahead) * 1_000_000_000;
        // A full pass: the scan goes on from where it stopped.
        let mut removed = 0;
        for _ in 0..2 {
            removed += self
                .expiry
                .round(
                    loader::expire_program(&mut self.ebpf).unwrap(),
                    self.pipeline.maps(),
                    &self.pipeline.applied().contents,
                    now,
                )
                .unwrap();
        }
        removed
    }

    /// Runs the expire program with `keys` as the scan's candidates, `ahead` seconds
    /// after now; returns how many connections it removed.
    pub fn expire_keys(&mut self, keys: &[FlowKey], ahead: u32) -> usize {
        let now = endpoint_agent::expiry::now_ns() + u64::from(ahead) * 1_000_000_000;
        endpoint_agent::expiry::run(loader::expire_program(&mut self.ebpf).unwrap(), keys, now)
            .unwrap()
    }

    /// The target the agent's ring for `endpoint`'s port 80 sends this flow to.
    pub fn predicted_target(&self, network: u32, endpoint: [u8; 4], flow: &FlowKey) -> [u8; 4] {
        let key = EndpointKey {
            network,
            addr: Addr::ipv4(endpoint),
            port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
        };
        let contents = &self.pipeline.applied().contents;
        let ring = contents.endpoints[&key].ring;
        let size = contents.settings.ring_size;
        let slot = hash::flow(flow, contents.settings.hash_seed) % size;
        let target = contents.rings[&ring][slot as usize];
        assert_ne!(target, NO_TARGET);
        contents.targets[&target].addr.ipv4_be().to_ne_bytes()
    }

    /// Opens a connection from `sport` to `endpoint`:80 on `interface` with a full
    /// handshake (SYN, the target's SYN-ACK, the ACK); returns how it was translated.
    pub fn connect(&mut self, interface: &str, endpoint: [u8; 4], sport: u16) -> Connection {
        let syn = syn_to(self.link(interface).mac, endpoint, sport);
        let out = self.run(interface, &syn.frame(b""));
        assert_eq!(
            out.action,
            XDP_REDIRECT,
            "the SYN from {sport} was not forwarded: {:?}",
            self.counted()
        );
        let (ip, tcp) = parse(&out.frame);
        let connection = Connection {
            interface: interface.to_string(),
            client: syn,
            target: ip.destination,
            target_port: tcp.destination_port,
            nat_port: tcp.source_port,
        };
        let out = self.run(
            "prov",
            &connection.by_target(SYN | ACK, TARGET_ISN).frame(b""),
        );
        assert_eq!(out.action, XDP_REDIRECT, "the SYN-ACK was not forwarded");
        let out = self.run(
            interface,
            &connection.by_client(ACK, CLIENT_ISN + 1).frame(b""),
        );
        assert_eq!(out.action, XDP_REDIRECT, "the ACK was not forwarded");
        connection
    }
}

/// TCP flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A TCP segment's fields.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub mac_src: [u8; 6],
    pub mac_dst: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub seq: u32,
    /// Acknowledgement number, with ACK set when present.
    pub ack: Option<u32>,
    /// SYN, FIN and RST bits.
    pub flags: u8,
    pub window: u16,
}

impl Segment {
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut builder = PacketBuilder::ethernet2(self.mac_src, self.mac_dst)
            .ipv4(self.src, self.dst, self.ttl)
            .tcp(self.sport, self.dport, self.seq, self.window);
        if self.flags & SYN != 0 {
            builder = builder.syn();
        }
        if self.flags & FIN != 0 {
            builder = builder.fin();
        }
        if self.flags & RST != 0 {
            builder = builder.rst();
        }
        if let Some(ack) = self.ack {
            builder = builder.ack(ack);
        }
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    /// The same segment with other flags (`ACK` in `flags` takes `ack`).
    pub fn with(&self, flags: u8, seq: u32, ack: u32) -> Segment {
        Segment {
            seq,
            ack: (flags & ACK != 0).then_some(ack),
            flags: flags & !ACK,
            ..*self
        }
    }
}

/// A consumer's SYN from `sport` to `dst`:80 arriving on an interface with `mac`.
pub fn syn_to(mac: [u8; 6], dst: [u8; 4], sport: u16) -> Segment {
    Segment {
        mac_src: CLIENT_MAC,
        mac_dst: mac,
        src: CLIENT,
        dst,
        sport,
        dport: 80,
        ttl: 64,
        seq: CLIENT_ISN,
        ack: None,
        flags: SYN,
        window: 4096,
    }
}

/// A connection opened through the program, and how it was translated.
pub struct Connection {
    pub interface: String,
    /// The client's SYN.
    pub client: Segment,
    pub target: [u8; 4],
    pub target_port: u16,
    pub nat_port: u16,
}

impl Connection {
    /// A segment from the client with `flags` (`ACK` acknowledges the target's ISN +
    /// 1), sequence number `seq`.
    pub fn by_client(&self, flags: u8, seq: u32) -> Segment {
        self.client.with(flags, seq, TARGET_ISN + 1)
    }

    /// A segment from the target to the NAT address and port, sequence number `seq`
    /// (`ACK` acknowledges the client's ISN + 1).
    pub fn by_target(&self, flags: u8, seq: u32) -> Segment {
        let mac = TARGETS.iter().find(|(ip, _)| *ip == self.target).unwrap().1;
        Segment {
            mac_src: mac,
            mac_dst: [0; 6],
            src: self.target,
            dst: NAT,
            sport: self.target_port,
            dport: self.nat_port,
            ttl: 64,
            seq,
            ack: None,
            flags: 0,
            window: 4096,
        }
        .with(flags, seq, CLIENT_ISN + 1)
        .addressed_to_prov()
    }
}

impl Segment {
    /// Sent to the node's provider interface (its MAC is the rig's `prov`).
    fn addressed_to_prov(self) -> Segment {
        Segment {
            mac_dst: Facts::of_this_node().unwrap().links["prov"].mac,
            ..self
        }
    }
}

/// The key a consumer segment arrives with, in `network`.
pub fn flow_key(network: u32, s: &Segment) -> FlowKey {
    FlowKey {
        src: Addr::ipv4(s.src),
        dst: Addr::ipv4(s.dst),
        src_port_be: s.sport.to_be(),
        dst_port_be: s.dport.to_be(),
        scope: FlowKey::scope(network, FAMILY_IPV4, PROTO_TCP),
    }
}

/// Parses a TCP/IPv4 frame, checking both checksums from scratch.
pub fn parse(frame: &[u8]) -> (etherparse::Ipv4Header, etherparse::TcpHeader) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("a TCP/IPv4 frame");
    let Some(NetHeaders::Ipv4(ip, _)) = headers.net else {
        panic!("not IPv4")
    };
    let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
        panic!("not TCP")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 checksum"
    );
    let payload = headers.payload.slice();
    assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv4(&ip, payload).unwrap(),
        "TCP checksum"
    );
    (ip, tcp)
}

/// A UDP datagram's fields.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    pub mac_src: [u8; 6],
    pub mac_dst: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
}

impl Datagram {
    /// The frame, with its checksum computed from scratch.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(self.mac_src, self.mac_dst)
            .ipv4(self.src, self.dst, self.ttl)
            .udp(self.sport, self.dport)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    /// The frame with no checksum (0: the sender computed none).
    pub fn frame_without_checksum(&self, payload: &[u8]) -> Vec<u8> {
        let mut frame = self.frame(payload);
        frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        frame
    }

    /// The datagram the other way, from `dst` to `src`.
    pub fn answer(&self, mac_src: [u8; 6], mac_dst: [u8; 6]) -> Datagram {
        Datagram {
            mac_src,
            mac_dst,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ttl: 64,
        }
    }

    /// The key it arrives with, in `network`.
    pub fn key(&self, network: u32) -> FlowKey {
        FlowKey {
            src: Addr::ipv4(self.src),
            dst: Addr::ipv4(self.dst),
            src_port_be: self.sport.to_be(),
            dst_port_be: self.dport.to_be(),
            scope: FlowKey::scope(network, FAMILY_IPV4, PROTO_UDP),
        }
    }
}

/// A consumer's datagram from `sport` to `dst`:53 arriving on an interface with `mac`.
pub fn datagram_to(mac: [u8; 6], dst: [u8; 4], sport: u16) -> Datagram {
    Datagram {
        mac_src: CLIENT_MAC,
        mac_dst: mac,
        src: CLIENT,
        dst,
        sport,
        dport: 53,
        ttl: 64,
    }
}

/// Parses a UDP/IPv4 frame, checking the IPv4 checksum from scratch; returns the
/// headers and the payload (the UDP checksum is the caller's to check: 0 may be right).
pub fn parse_udp(frame: &[u8]) -> (etherparse::Ipv4Header, etherparse::UdpHeader, Vec<u8>) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("a UDP/IPv4 frame");
    let Some(NetHeaders::Ipv4(ip, _)) = headers.net else {
        panic!("not IPv4")
    };
    let Some(TransportHeader::Udp(udp)) = headers.transport else {
        panic!("not UDP")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 checksum"
    );
    (ip, udp, headers.payload.slice().to_vec())
}

/// `frame` (IPv4) with DF cleared, its IPv4 checksum computed again.
pub fn without_df(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 6] &= !0x40;
    with_ip_checksum(frame)
}

/// `frame` (IPv4, 20-byte header) with its IPv4 checksum computed again.
pub fn with_ip_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[14..34]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame
}

/// A broadcast ARP request: who has `wanted`? tell `asker`.
pub fn arp_request(asker_mac: [u8; 6], asker_ip: [u8; 4], wanted: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend(asker_mac);
    frame.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend(asker_mac);
    frame.extend(asker_ip);
    frame.extend([0; 6]);
    frame.extend(wanted);
    frame
}
