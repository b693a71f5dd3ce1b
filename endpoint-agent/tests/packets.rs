//! Packet tests: frames through the real XDP object with BPF_PROG_RUN, maps filled by
//! the agent's own pipeline from a YAML config, in a namespace whose routes and
//! neighbours make the route lookups real. Each case checks the verdict, the exact
//! output bytes (built independently, with checksums computed from scratch) and the
//! counter the packet was counted under. Needs root.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use endpoint_agent::{
    apply, config, desired, facts::Facts, host, ids::Ids, instance::Instance, loader, plan::Plan,
    stats::Counters, validate,
};
use endpoint_common::{
    counter, hash,
    maps::{Addr, EndpointKey, FAMILY_IPV4, FlowKey, NO_TARGET, PROTO_TCP},
};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use testbed::{Namespace, veth};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const CLIENT: [u8; 4] = [10, 0, 0, 10];
const ENDPOINT: [u8; 4] = [10, 0, 0, 100];
const PENDING: [u8; 4] = [10, 0, 0, 101];
const NO_NEIGHBOUR: [u8; 4] = [10, 0, 0, 102];
const NO_ROUTE: [u8; 4] = [10, 0, 0, 103];
const NAT: [u8; 4] = [172, 16, 0, 100];
const TARGETS: [([u8; 4], [u8; 6]); 2] = [
    ([172, 16, 0, 10], [2, 0, 0, 0, 0, 0x0a]),
    ([172, 16, 0, 11], [2, 0, 0, 0, 0, 0x0b]),
];

const CONFIG: &str = "
node:
  interfaces:
    - { name: cons-a, role: consumer, consumer_network: vpc-a }
    - { name: cons-b, role: consumer, consumer_network: vpc-b }
    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }
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
endpoints:
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
  - { id: revoked, service: strict, principal: p, consumer_network: vpc-a, ip: 10.0.0.105, zone: z1, state: rejected }
";

/// A namespace with the node's interfaces, the program loaded, attached and its maps
/// filled from CONFIG.
struct Rig {
    ebpf: Ebpf,
    desired: desired::State,
    config: config::Config,
    ids: Ids,
}

struct Link {
    ifindex: u32,
    mac: [u8; 6],
}

/// The program's verdict and output frame.
struct Out {
    action: u32,
    frame: Vec<u8>,
}

/// Runs `test` on a thread inside a fresh namespace set up for CONFIG.
fn with_rig(test: impl FnOnce(&mut Rig) + Send) {
    let ns = Namespace::new("packets").expect("namespace");
    // No IPv6 neighbour discovery chatter hitting the program between test frames.
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    for (link, peer) in [
        ("cons-a", "cons-a-peer"),
        ("cons-b", "cons-b-peer"),
        ("prov", "prov-peer"),
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
        let config = validate::load("test.yaml", CONFIG, &Facts::default())
            .expect("valid config")
            .config;
        let ids = Ids::default().assign(&config);
        let desired =
            desired::build(&config, &ids, &Default::default(), host::link).expect("desired state");
        let mut ebpf = loader::load(&config, &instance).expect("load");
        let plan = Plan::between(&desired::State::default(), &desired);
        apply::apply(&mut ebpf, &plan).expect("apply");
        for interface in &config.node.interfaces {
            program(&mut ebpf)
                .attach(&interface.name, XdpMode::Driver)
                .expect("attach");
        }
        test(&mut Rig {
            ebpf,
            desired,
            config,
            ids,
        });
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

fn program(ebpf: &mut Ebpf) -> &mut Xdp {
    loader::program(ebpf).unwrap()
}

impl Rig {
    /// The id (counter slot) of the endpoint named `name` in CONFIG.
    fn endpoint(&self, name: &str) -> u32 {
        self.ids.endpoints[name]
    }

    /// Applies another config the way the agent does: a plan from what the maps hold.
    fn reconfigure(&mut self, text: &str) {
        let config = validate::load("test.yaml", text, &Facts::default())
            .expect("valid config")
            .config;
        let ids = self.ids.assign(&config);
        let desired =
            desired::build(&config, &ids, &Default::default(), host::link).expect("desired state");
        apply::apply(&mut self.ebpf, &Plan::between(&self.desired, &desired)).expect("apply");
        (self.config, self.ids, self.desired) = (config, ids, desired);
    }

    fn flows(&self) -> Vec<(FlowKey, endpoint_common::maps::Flow)> {
        let flows = self.ebpf.map("FLOWS").unwrap();
        let flows: aya::maps::HashMap<_, FlowKey, endpoint_common::maps::Flow> =
            aya::maps::HashMap::try_from(flows).unwrap();
        flows.iter().map(Result::unwrap).collect()
    }

    fn link(&self, name: &str) -> Link {
        let link = host::link(name).unwrap();
        Link {
            ifindex: link.ifindex,
            mac: link.mac,
        }
    }

    /// Runs `frame` through the program as if it arrived on `interface`.
    fn run(&mut self, interface: &str, frame: &[u8]) -> Out {
        let ifindex = self.link(interface).ifindex;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 256];
        let result = program(&mut self.ebpf)
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

    fn counters(&self) -> Counters {
        Counters::read(&self.ebpf).unwrap()
    }

    /// The target the agent's ring for `endpoint`'s port 80 sends this flow to.
    fn predicted_target(&self, network: u32, endpoint: [u8; 4], flow: &FlowKey) -> [u8; 4] {
        let key = EndpointKey {
            network,
            addr: Addr::ipv4(endpoint),
            port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
        };
        let ring = self.desired.endpoints[&key].ring;
        let size = self.desired.config.ring_size;
        let slot = hash::flow(flow, self.config.node.hash_seed) % size;
        let target = self.desired.rings[&ring][slot as usize];
        assert_ne!(target, NO_TARGET);
        self.desired.targets[&target].addr.ipv4_be().to_ne_bytes()
    }
}

/// A TCP segment's fields.
#[derive(Clone, Copy)]
struct Segment {
    mac_src: [u8; 6],
    mac_dst: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ttl: u8,
    syn: bool,
    ack: bool,
}

impl Segment {
    fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut builder = PacketBuilder::ethernet2(self.mac_src, self.mac_dst)
            .ipv4(self.src, self.dst, self.ttl)
            .tcp(self.sport, self.dport, 1000, 4096);
        if self.syn {
            builder = builder.syn();
        }
        if self.ack {
            builder = builder.ack(2000);
        }
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }
}

/// A consumer's SYN from `sport` to `dst`:80 arriving on an interface with `mac`.
fn syn_to(mac: [u8; 6], dst: [u8; 4], sport: u16) -> Segment {
    Segment {
        mac_src: CLIENT_MAC,
        mac_dst: mac,
        src: CLIENT,
        dst,
        sport,
        dport: 80,
        ttl: 64,
        syn: true,
        ack: false,
    }
}

fn flow_key(network: u32, s: &Segment) -> FlowKey {
    FlowKey {
        network,
        src: Addr::ipv4(s.src),
        dst: Addr::ipv4(s.dst),
        src_port_be: s.sport.to_be(),
        dst_port_be: s.dport.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

/// Parses a TCP/IPv4 frame, checking both checksums from scratch.
fn parse(frame: &[u8]) -> (etherparse::Ipv4Header, etherparse::TcpHeader) {
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

#[test]
fn syn_is_translated_to_a_target_and_the_reply_back_to_the_consumer() {
    with_rig(|rig| {
        let (cons, prov) = (rig.link("cons-a"), rig.link("prov"));
        let syn = syn_to(cons.mac, ENDPOINT, 40000);
        let out = rig.run("cons-a", &syn.frame(b""));
        assert_eq!(out.action, XDP_REDIRECT);

        let (ip, tcp) = parse(&out.frame);
        let target = rig.predicted_target(1, ENDPOINT, &flow_key(1, &syn));
        let target_mac = TARGETS.iter().find(|(ip, _)| *ip == target).unwrap().1;
        let nat_port = tcp.source_port;
        assert!(
            (20000..=20999).contains(&nat_port),
            "NAT port {nat_port} out of range"
        );
        let translated = Segment {
            mac_src: prov.mac,
            mac_dst: target_mac,
            src: NAT,
            dst: target,
            sport: nat_port,
            dport: 8080,
            ttl: 63,
            ..syn
        };
        assert_eq!(out.frame, translated.frame(b""), "forward frame");
        assert_eq!((ip.source, ip.destination), (NAT, target));

        // The target answers the NAT address: back to the client, from the endpoint.
        let syn_ack = Segment {
            mac_src: target_mac,
            mac_dst: prov.mac,
            src: target,
            dst: NAT,
            sport: 8080,
            dport: nat_port,
            ttl: 64,
            syn: true,
            ack: true,
        };
        let out = rig.run("prov", &syn_ack.frame(b""));
        assert_eq!(out.action, XDP_REDIRECT);
        let back = Segment {
            mac_src: cons.mac,
            mac_dst: CLIENT_MAC,
            src: ENDPOINT,
            dst: CLIENT,
            sport: 80,
            dport: 40000,
            ttl: 63,
            ..syn_ack
        };
        assert_eq!(out.frame, back.frame(b""), "reply frame");
        parse(&out.frame);

        // The client's next segment, with data, follows the same flow.
        let data = Segment {
            syn: false,
            ack: true,
            ..syn
        };
        let out = rig.run("cons-a", &data.frame(b"GET / HTTP/1.0\r\n\r\n"));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(
            out.frame,
            Segment {
                syn: false,
                ack: true,
                ..translated
            }
            .frame(b"GET / HTTP/1.0\r\n\r\n")
        );

        let counters = rig.counters();
        assert_eq!(
            counters
                .get(rig.endpoint("a"), counter::FORWARD_NEW)
                .packets,
            1
        );
        assert_eq!(counters.get(rig.endpoint("a"), counter::REPLY).packets, 1);
        assert_eq!(counters.get(rig.endpoint("a"), counter::FORWARD).packets, 1);
    });
}

#[test]
fn two_consumer_networks_with_the_same_tuple_get_separate_flows_and_ports() {
    with_rig(|rig| {
        let a = rig.run(
            "cons-a",
            &syn_to(rig.link("cons-a").mac, ENDPOINT, 40000).frame(b""),
        );
        let b = rig.run(
            "cons-b",
            &syn_to(rig.link("cons-b").mac, ENDPOINT, 40000).frame(b""),
        );
        assert_eq!((a.action, b.action), (XDP_REDIRECT, XDP_REDIRECT));
        let (ip_a, tcp_a) = parse(&a.frame);
        let (ip_b, tcp_b) = parse(&b.frame);
        assert!(
            (ip_a.destination, tcp_a.source_port) != (ip_b.destination, tcp_b.source_port),
            "both consumers got the same target and NAT port {}",
            tcp_a.source_port
        );
        let counters = rig.counters();
        assert_eq!(
            counters
                .get(rig.endpoint("a"), counter::FORWARD_NEW)
                .packets,
            1
        );
        assert_eq!(
            counters
                .get(rig.endpoint("b"), counter::FORWARD_NEW)
                .packets,
            1
        );

        // Each reply goes back out the interface its flow came in on.
        for (ip, tcp, link) in [(&ip_a, &tcp_a, "cons-a"), (&ip_b, &tcp_b, "cons-b")] {
            let reply = Segment {
                mac_src: TARGETS[0].1,
                mac_dst: rig.link("prov").mac,
                src: ip.destination,
                dst: NAT,
                sport: 8080,
                dport: tcp.source_port,
                ttl: 64,
                syn: true,
                ack: true,
            };
            let back = rig.run("prov", &reply.frame(b""));
            assert_eq!(back.action, XDP_REDIRECT);
            let (ip, tcp) = parse(&back.frame);
            assert_eq!((ip.destination, tcp.destination_port), (CLIENT, 40000));
            assert_eq!(
                back.frame[6..12],
                rig.link(link).mac,
                "the reply must leave through {link}"
            );
        }
    });
}

#[test]
fn endpoints_that_are_not_available_drop_and_count_by_state() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let out = rig.run("cons-a", &syn_to(mac, PENDING, 40000).frame(b""));
        assert_eq!(out.action, XDP_DROP);
        let mac = rig.link("cons-b").mac;
        let out = rig.run("cons-b", &syn_to(mac, PENDING, 40000).frame(b""));
        assert_eq!(out.action, XDP_DROP);
        let counters = rig.counters();
        assert_eq!(
            counters
                .get(
                    rig.endpoint("pending"),
                    counter::DROP_STATE_PENDING_ACCEPTANCE
                )
                .packets,
            1
        );
        assert_eq!(
            counters
                .get(rig.endpoint("rejected"), counter::DROP_STATE_REJECTED)
                .packets,
            1
        );
        assert_eq!(counters.packets(counter::FORWARD_NEW), 0);
    });
}

#[test]
fn provider_side_packets_that_match_no_flow_are_dropped() {
    with_rig(|rig| {
        let prov = rig.link("prov");
        let stray = Segment {
            mac_src: TARGETS[0].1,
            mac_dst: prov.mac,
            src: TARGETS[0].0,
            dst: NAT,
            sport: 8080,
            dport: 20500,
            ttl: 64,
            syn: true,
            ack: false,
        };
        assert_eq!(rig.run("prov", &stray.frame(b"")).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_REPLY_NO_FLOW), 1);

        // Outside the NAT port range it is not ours: the kernel decides.
        let frame = Segment { dport: 22, ..stray }.frame(b"");
        let out = rig.run("prov", &frame);
        assert_eq!((out.action, out.frame), (XDP_PASS, frame));
    });
}

#[test]
fn a_segment_without_syn_and_without_flow_is_dropped() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let ack = Segment {
            syn: false,
            ack: true,
            ..syn_to(mac, ENDPOINT, 41000)
        };
        assert_eq!(rig.run("cons-a", &ack.frame(b"x")).action, XDP_DROP);
        assert_eq!(
            rig.counters()
                .get(rig.endpoint("a"), counter::DROP_NO_FLOW)
                .packets,
            1
        );
    });
}

#[test]
fn traffic_that_is_not_for_an_endpoint_passes_untouched() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let mut frames = vec![
            // Another port of the endpoint IP, another IP.
            Segment {
                dport: 22,
                ..syn_to(mac, ENDPOINT, 40000)
            }
            .frame(b""),
            syn_to(mac, [10, 0, 0, 1], 40000).frame(b""),
        ];
        // ICMP echo to the endpoint IP.
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, mac)
            .ipv4(CLIENT, ENDPOINT, 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"ping")
            .unwrap();
        frames.push(icmp);
        // IPv6.
        let mut v6 = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, mac)
            .ipv6(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(1, 80, 1, 1)
            .syn()
            .write(&mut v6, b"")
            .unwrap();
        frames.push(v6);
        // ARP for an address that is not ours.
        frames.push(arp_request(CLIENT_MAC, CLIENT, [10, 0, 0, 1]));
        for frame in &frames {
            let out = rig.run("cons-a", frame);
            assert_eq!(out.action, XDP_PASS);
            assert_eq!(&out.frame, frame, "a passed frame must be untouched");
        }
        assert_eq!(rig.counters().packets(counter::PASS), frames.len() as u64);
    });
}

/// A broadcast ARP request: who has `wanted`? tell `asker`.
fn arp_request(asker_mac: [u8; 6], asker_ip: [u8; 4], wanted: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend(asker_mac);
    frame.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend(asker_mac);
    frame.extend(asker_ip);
    frame.extend([0; 6]);
    frame.extend(wanted);
    frame
}

#[test]
fn arp_requests_for_endpoint_and_nat_addresses_are_answered() {
    with_rig(|rig| {
        for (interface, asker_mac, asker_ip, wanted) in [
            ("cons-a", CLIENT_MAC, CLIENT, ENDPOINT),
            ("prov", TARGETS[0].1, TARGETS[0].0, NAT),
        ] {
            let own = rig.link(interface).mac;
            let out = rig.run(interface, &arp_request(asker_mac, asker_ip, wanted));
            // veth: sent back with a redirect to the same interface (see maps::bounce).
            assert_eq!(out.action, XDP_REDIRECT, "{interface}");
            let mut reply = asker_mac.to_vec();
            reply.extend(own);
            reply.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
            reply.extend(own);
            reply.extend(wanted);
            reply.extend(asker_mac);
            reply.extend(asker_ip);
            assert_eq!(out.frame, reply, "{interface}");
        }
        // Addresses are answered only where they live: not the NAT address on a consumer
        // link.
        let out = rig.run("cons-a", &arp_request(CLIENT_MAC, CLIENT, NAT));
        assert_eq!(
            out.action, XDP_PASS,
            "the NAT address is not answered on a consumer link"
        );
        assert_eq!(rig.counters().packets(counter::ARP_REPLY), 2);
    });
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let good = syn_to(mac, ENDPOINT, 40000).frame(b"");
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            // (BPF_PROG_RUN refuses frames shorter than an Ethernet header.)
            ("Ethernet header only", good[..14].to_vec()),
            (
                "truncated ARP",
                arp_request(CLIENT_MAC, CLIENT, ENDPOINT)[..30].to_vec(),
            ),
            ("truncated IPv4 header", good[..14 + 12].to_vec()),
            ("truncated TCP header", good[..14 + 20 + 8].to_vec()),
        ];
        let mut short_total = good.clone();
        short_total.truncate(good.len() - 4); // tot_len now exceeds the frame
        cases.push(("total length beyond the frame", short_total));
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44; // IHL 4 (16 bytes)
        cases.push(("IHL below 5", bad_ihl));
        let mut bad_version = good.clone();
        bad_version[14] = 0x65;
        cases.push(("IP version 6 in an IPv4 frame", bad_version));
        let mut bad_doff = good.clone();
        bad_doff[14 + 20 + 12] = 0x40; // data offset 4 (16 bytes)
        cases.push(("TCP data offset below 5", bad_doff));
        for (what, frame) in &cases {
            assert_eq!(rig.run("cons-a", frame).action, XDP_DROP, "{what}");
        }
        assert_eq!(
            rig.counters().packets(counter::DROP_MALFORMED),
            cases.len() as u64
        );
        assert_eq!(rig.counters().packets(counter::FORWARD_NEW), 0);
    });
}

#[test]
fn options_fragments_and_expiring_ttl_to_an_endpoint_are_dropped_by_policy() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        // IPv4 options (a 4-byte NOP/NOP/NOP/EOL): IHL 6.
        let mut options = Vec::new();
        let mut ip =
            etherparse::Ipv4Header::new(20, 64, etherparse::IpNumber::TCP, CLIENT, ENDPOINT)
                .unwrap();
        ip.options = [1u8, 1, 1, 0][..].try_into().unwrap();
        PacketBuilder::ethernet2(CLIENT_MAC, mac)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40000, 80, 1, 1)
            .syn()
            .write(&mut options, b"")
            .unwrap();
        assert_eq!(rig.run("cons-a", &options).action, XDP_DROP);
        // The same to an address that is not ours is the kernel's.
        let mut not_ours = options.clone();
        not_ours[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(rig.run("cons-a", &not_ours).action, XDP_PASS);

        let mut fragment = syn_to(mac, ENDPOINT, 40000).frame(b"");
        fragment[14 + 6] = 0x20; // more fragments
        assert_eq!(rig.run("cons-a", &fragment).action, XDP_DROP);

        let expiring = Segment {
            ttl: 1,
            ..syn_to(mac, ENDPOINT, 40000)
        };
        assert_eq!(rig.run("cons-a", &expiring.frame(b"")).action, XDP_DROP);

        let counters = rig.counters();
        assert_eq!(counters.packets(counter::DROP_IP_OPTIONS), 1);
        assert_eq!(counters.packets(counter::DROP_FRAGMENT), 1);
        assert_eq!(
            counters
                .get(rig.endpoint("a"), counter::DROP_TTL_EXPIRED)
                .packets,
            1
        );
        assert_eq!(counters.packets(counter::FORWARD_NEW), 0);
    });
}

#[test]
fn route_lookup_failures_drop_before_any_flow_exists() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let unresolved = syn_to(mac, NO_NEIGHBOUR, 40000).frame(b"");
        assert_eq!(rig.run("cons-a", &unresolved).action, XDP_DROP);
        let unrouted = syn_to(mac, NO_ROUTE, 40000).frame(b"");
        assert_eq!(rig.run("cons-a", &unrouted).action, XDP_DROP);
        let counters = rig.counters();
        assert_eq!(counters.packets(counter::DROP_FIB_NO_NEIGHBOUR), 1);
        assert_eq!(counters.packets(counter::DROP_FIB_UNREACHABLE), 1);
        // No state was created: the flow table is empty.
        let flows = rig.ebpf.map("FLOWS").unwrap();
        let flows: aya::maps::HashMap<_, FlowKey, endpoint_common::maps::Flow> =
            aya::maps::HashMap::try_from(flows).unwrap();
        assert_eq!(flows.keys().count(), 0);
    });
}

const GUARDED: [u8; 4] = [10, 0, 0, 104];
const REVOKED: [u8; 4] = [10, 0, 0, 105];

#[test]
fn security_groups_admit_only_their_sources_and_ports() {
    with_rig(|rig| {
        let mac = rig.link("cons-b").mac;
        let guarded = rig.endpoint("guarded");
        // 10.0.0.10 is in 10.0.0.0/28 (port 80) and 10.0.0.0/24 (port 443): both ports.
        for port in [80, 443] {
            let syn = Segment {
                dport: port,
                ..syn_to(mac, GUARDED, 40000 + port)
            };
            assert_eq!(
                rig.run("cons-b", &syn.frame(b"")).action,
                XDP_REDIRECT,
                "port {port}"
            );
        }
        // 10.0.0.200 is only in the /24: port 443 yes, port 80 no.
        let outsider = |port| Segment {
            src: [10, 0, 0, 200],
            dport: port,
            ..syn_to(mac, GUARDED, 41000)
        };
        assert_eq!(
            rig.run("cons-b", &outsider(443).frame(b"")).action,
            XDP_REDIRECT
        );
        assert_eq!(rig.run("cons-b", &outsider(80).frame(b"")).action, XDP_DROP);
        // 10.0.1.1 is in none.
        let stranger = Segment {
            src: [10, 0, 1, 1],
            ..syn_to(mac, GUARDED, 42000)
        };
        assert_eq!(rig.run("cons-b", &stranger.frame(b"")).action, XDP_DROP);
        let counters = rig.counters();
        assert_eq!(
            counters.get(guarded, counter::DROP_SECURITY_GROUP).packets,
            2
        );
        assert_eq!(counters.get(guarded, counter::FORWARD_NEW).packets, 3);
    });
}

#[test]
fn a_revoked_endpoint_with_reset_answers_segments_with_a_rst() {
    with_rig(|rig| {
        let cons = rig.link("cons-a");
        let revoked = rig.endpoint("revoked");
        // A data segment of a connection the consumer still thinks is open.
        let data = Segment {
            syn: false,
            ack: true,
            ..syn_to(cons.mac, REVOKED, 40000)
        };
        let out = rig.run("cons-a", &data.frame(b"more data"));
        assert_eq!(out.action, XDP_REDIRECT, "sent back out cons-a");
        // RST from the endpoint, seq = the segment's ack (2000), no ACK, no payload.
        let mut ip =
            etherparse::Ipv4Header::new(20, 64, etherparse::IpNumber::TCP, REVOKED, CLIENT)
                .unwrap();
        ip.dont_fragment = true;
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(cons.mac, CLIENT_MAC)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(80, 40000, 2000, 0)
            .rst()
            .write(&mut expected, b"")
            .unwrap();
        assert_eq!(out.frame, expected);
        parse(&out.frame);

        // A SYN is refused like any non-available endpoint's; a RST is never answered.
        let syn = syn_to(cons.mac, REVOKED, 40001);
        assert_eq!(rig.run("cons-a", &syn.frame(b"")).action, XDP_DROP);
        let mut rst = data.frame(b"");
        rst[14 + 20 + 13] |= 0x04;
        assert_eq!(rig.run("cons-a", &rst).action, XDP_DROP);
        let counters = rig.counters();
        assert_eq!(
            counters.get(revoked, counter::RESET_REVOKED).packets,
            2,
            "the RST and the dropped RST"
        );
        assert_eq!(
            counters.get(revoked, counter::DROP_STATE_REJECTED).packets,
            1,
            "the SYN"
        );
    });
}

#[test]
fn a_revoked_endpoint_that_drains_keeps_established_flows_and_refuses_new_ones() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let syn = syn_to(mac, ENDPOINT, 40000);
        assert_eq!(rig.run("cons-a", &syn.frame(b"")).action, XDP_REDIRECT);
        let rejected = CONFIG.replacen(
            "ip: 10.0.0.100, zone: z1, state: available",
            "ip: 10.0.0.100, zone: z1, state: rejected",
            1,
        );
        rig.reconfigure(&rejected);
        let established = Segment {
            syn: false,
            ack: true,
            ..syn
        };
        assert_eq!(
            rig.run("cons-a", &established.frame(b"x")).action,
            XDP_REDIRECT
        );
        let new = syn_to(mac, ENDPOINT, 40001);
        assert_eq!(rig.run("cons-a", &new.frame(b"")).action, XDP_DROP);
        let a = rig.endpoint("a");
        let counters = rig.counters();
        assert_eq!(counters.get(a, counter::FORWARD).packets, 1);
        assert_eq!(counters.get(a, counter::DROP_STATE_REJECTED).packets, 1);
    });
}

#[test]
fn flows_are_stamped_when_used_and_marked_closing_on_fin() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let syn = syn_to(mac, ENDPOINT, 40000);
        rig.run("cons-a", &syn.frame(b""));
        let now = endpoint_agent::expiry::now_s();
        let flows = rig.flows();
        assert_eq!(flows.len(), 2, "both directions");
        for (_, flow) in &flows {
            assert!(
                flow.last_seen_s.abs_diff(now) <= 1,
                "{} vs {now}",
                flow.last_seen_s
            );
            assert_eq!(flow.flags, 0);
        }
        let mut fin = Segment {
            syn: false,
            ack: true,
            ..syn
        }
        .frame(b"");
        fin[14 + 20 + 13] |= 0x01;
        assert_eq!(rig.run("cons-a", &fin).action, XDP_REDIRECT);
        let closing = rig
            .flows()
            .iter()
            .filter(|(_, f)| f.flags & endpoint_common::maps::flow_flag::CLOSING != 0)
            .count();
        assert_eq!(closing, 1, "the direction that saw the FIN");
    });
}

#[test]
fn what_the_agent_reads_back_from_the_maps_is_what_it_applied() {
    with_rig(|rig| {
        assert_eq!(apply::read(&rig.ebpf, &rig.ids).unwrap(), rig.desired);
        // Another target, another NAT address, an endpoint gone and one rejected.
        let changed = CONFIG
            .replace(
                "              - { ip: 172.16.0.11, port: 8080 }",
                "              - { ip: 172.16.0.11, port: 8080 }\n              - { ip: 172.16.0.12, port: 8080 }",
            )
            .replace("nat_addresses: [172.16.0.100]", "nat_addresses: [172.16.0.100, 172.16.0.101]")
            .replace("ip: 10.0.0.100, zone: z1, state: available }", "ip: 10.0.0.100, zone: z1, state: rejected }")
            .replace("  - { id: unrouted,", "  - { id: unrouted-gone,");
        rig.reconfigure(&changed);
        assert_eq!(apply::read(&rig.ebpf, &rig.ids).unwrap(), rig.desired);
    });
}

#[test]
fn idle_and_closing_connections_expire_both_directions() {
    use endpoint_agent::expiry;
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let idle = syn_to(mac, ENDPOINT, 40000);
        rig.run("cons-a", &idle.frame(b""));
        let closing = syn_to(mac, ENDPOINT, 40001);
        rig.run("cons-a", &closing.frame(b""));
        let mut fin = Segment {
            syn: false,
            ack: true,
            ..closing
        }
        .frame(b"");
        fin[14 + 20 + 13] |= 0x01;
        rig.run("cons-a", &fin);
        assert_eq!(rig.flows().len(), 4);

        let now = expiry::now_s();
        let (config, ids) = (rig.config.clone(), rig.ids.clone());
        assert_eq!(
            expiry::expire(&mut rig.ebpf, &config, &ids, now).unwrap(),
            0
        );
        // Past the closing grace, not past the idle timeout (350 s by default).
        let later = now + expiry::CLOSING_SECONDS + 2;
        assert_eq!(
            expiry::expire(&mut rig.ebpf, &config, &ids, later).unwrap(),
            1
        );
        let left = rig.flows();
        assert_eq!(left.len(), 2);
        assert!(
            left.iter().all(
                |(k, f)| k.src_port_be == 40000u16.to_be() || f.dst_port_be == 40000u16.to_be()
            )
        );
        assert_eq!(
            expiry::expire(&mut rig.ebpf, &config, &ids, now + 352).unwrap(),
            1
        );
        assert!(rig.flows().is_empty());
    });
}

#[test]
fn the_kernel_picks_the_target_the_agent_predicts_for_every_flow() {
    with_rig(|rig| {
        let weighted = CONFIG.replacen(
            "              - { ip: 172.16.0.11, port: 8080 }",
            "              - { ip: 172.16.0.11, port: 8080, weight: 3 }",
            1,
        );
        rig.reconfigure(&weighted);
        let mac = rig.link("cons-a").mac;
        let mut on_second = 0;
        for port in 0..400u16 {
            let syn = syn_to(mac, ENDPOINT, 20000 + port);
            let out = rig.run("cons-a", &syn.frame(b""));
            assert_eq!(out.action, XDP_REDIRECT);
            let (ip, _) = parse(&out.frame);
            let predicted = rig.predicted_target(1, ENDPOINT, &flow_key(1, &syn));
            assert_eq!(ip.destination, predicted, "flow from port {}", 20000 + port);
            if ip.destination == TARGETS[1].0 {
                on_second += 1;
            }
        }
        // Weight 3 of 4: about 300 of 400.
        assert!(
            (250..350).contains(&on_second),
            "{on_second} of 400 on the weight-3 target"
        );
    });
}

#[test]
fn established_flows_keep_their_target_when_it_is_drained_or_removed() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        // Open flows until one lands on each target.
        let mut on = std::collections::BTreeMap::new();
        for port in 0..50u16 {
            let syn = syn_to(mac, ENDPOINT, 30000 + port);
            let (ip, _) = parse(&rig.run("cons-a", &syn.frame(b"")).frame);
            on.entry(ip.destination).or_insert(syn);
        }
        let first = on[&TARGETS[0].0];
        let follow_up = |s: Segment| {
            Segment {
                syn: false,
                ack: true,
                ..s
            }
            .frame(b"x")
        };
        for (round, (change, text)) in [
            (
                "drained",
                CONFIG.replacen(
                    "{ ip: 172.16.0.10, port: 8080 }",
                    "{ ip: 172.16.0.10, port: 8080, weight: 0 }",
                    1,
                ),
            ),
            (
                "removed",
                CONFIG.replacen("              - { ip: 172.16.0.10, port: 8080 }\n", "", 1),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            rig.reconfigure(&text);
            let (ip, _) = parse(&rig.run("cons-a", &follow_up(first)).frame);
            assert_eq!(
                ip.destination, TARGETS[0].0,
                "an established flow moved when its target was {change}"
            );
            for port in 0..50u16 {
                // Fresh tuples: new flows, not the ones opened before.
                let syn = syn_to(mac, ENDPOINT, 40000 + 100 * round as u16 + port);
                let (ip, _) = parse(&rig.run("cons-a", &syn.frame(b"")).frame);
                assert_eq!(
                    ip.destination, TARGETS[1].0,
                    "a new flow went to the {change} target"
                );
            }
            rig.reconfigure(CONFIG);
        }
    });
}

#[test]
fn an_established_flow_follows_a_neighbour_change_within_a_second() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let syn = syn_to(mac, ENDPOINT, 40000);
        let (ip, _) = parse(&rig.run("cons-a", &syn.frame(b"")).frame);
        let target = Ipv4Addr::from(ip.destination).to_string();
        let data = Segment {
            syn: false,
            ack: true,
            ..syn
        }
        .frame(b"x");
        let moved = [2, 0, 0, 0, 0, 0x77];
        std::process::Command::new("ip")
            .args([
                "neigh",
                "replace",
                &target,
                "lladdr",
                "02:00:00:00:00:77",
                "dev",
                "prov",
                "nud",
                "permanent",
            ])
            .status()
            .unwrap();
        // Within the second the kept route may still be used; after it, never.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out = rig.run("cons-a", &data);
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(out.frame[..6], moved, "the flow still goes to the old MAC");
    });
}

#[test]
fn names_that_would_join_alike_are_separate_services_with_their_own_targets() {
    with_rig(|rig| {
        // Service `a/b` with load balancer `c` and service `a` with load balancer `b/c`:
        // joined with slashes both would be `a/b/c/80`.
        let colliding = CONFIG.replacen(
            "endpoints:\n",
            "  - name: a/b
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - { name: c, zone: z1, listeners: [{ port: 80, targets: [{ ip: 172.16.0.10, port: 8001 }] }] }
  - name: a
    acceptance_required: false
    allowed_principals: ['*']
    load_balancers:
      - { name: b/c, zone: z1, listeners: [{ port: 80, targets: [{ ip: 172.16.0.11, port: 8002 }] }] }
endpoints:
  - { id: to-ab, service: a/b, principal: p, consumer_network: vpc-a, ip: 10.0.0.110, zone: z1 }
  - { id: to-a, service: a, principal: p, consumer_network: vpc-a, ip: 10.0.0.111, zone: z1 }
",
            1,
        );
        rig.reconfigure(&colliding);
        let rings: std::collections::BTreeSet<u32> = ["to-ab", "to-a"]
            .iter()
            .map(|id| {
                let key = EndpointKey {
                    network: 1,
                    addr: Addr::ipv4(if *id == "to-ab" {
                        [10, 0, 0, 110]
                    } else {
                        [10, 0, 0, 111]
                    }),
                    port_be: 80u16.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_IPV4,
                };
                rig.desired.endpoints[&key].ring
            })
            .collect();
        assert_eq!(rings.len(), 2, "the two services share a ring");
        let mac = rig.link("cons-a").mac;
        for (endpoint, target) in [
            ([10, 0, 0, 110], ([172, 16, 0, 10], 8001)),
            ([10, 0, 0, 111], ([172, 16, 0, 11], 8002)),
        ] {
            for port in 0..20u16 {
                let out = rig.run("cons-a", &syn_to(mac, endpoint, 41000 + port).frame(b""));
                assert_eq!(out.action, XDP_REDIRECT);
                let (ip, tcp) = parse(&out.frame);
                assert_eq!(
                    (ip.destination, tcp.destination_port),
                    target,
                    "endpoint {endpoint:?} reached another service's target"
                );
            }
        }
    });
}
