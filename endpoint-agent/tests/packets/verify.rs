//! Verify: what a frame must be before the node acts on it. Table-driven: each case is
//! a frame, the counter it must be dropped under, and whether it is blamed on the
//! endpoint.

use endpoint_agent::loader;
use endpoint_common::counter;

use crate::rig::*;

/// A frame whose bytes are changed by `edit` after it was built right.
fn edited(frame: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = frame;
    edit(&mut frame);
    frame
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let good = syn_to(mac, ENDPOINT, 40000).frame(b"");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // (BPF_PROG_RUN refuses frames shorter than an Ethernet header.)
            ("Ethernet header only", good[..14].to_vec()),
            (
                "truncated ARP",
                arp_request(CLIENT_MAC, CLIENT, ENDPOINT)[..30].to_vec(),
            ),
            ("truncated IPv4 header", good[..14 + 12].to_vec()),
            ("truncated TCP header", good[..14 + 20 + 8].to_vec()),
            (
                "total length beyond the frame",
                good[..good.len() - 4].to_vec(),
            ),
            ("IHL below 5", edited(good.clone(), |f| f[14] = 0x44)),
            (
                "IP version 6 in an IPv4 frame",
                edited(good.clone(), |f| f[14] = 0x65),
            ),
            (
                "TCP data offset below 5",
                edited(good.clone(), |f| f[14 + 20 + 12] = 0x40),
            ),
        ];
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
fn segments_an_endpoint_would_get_are_checked_before_anything_is_done() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        let syn = syn_to(mac, ENDPOINT, 40000);
        let good = syn.frame(b"");
        let flipped = |at: usize| edited(good.clone(), |f| f[at] ^= 0x40);
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "a wrong IPv4 header checksum",
                flipped(14 + 10),
                counter::DROP_BAD_CHECKSUM,
            ),
            (
                "a wrong TCP checksum on a SYN",
                flipped(14 + 20 + 16),
                counter::DROP_BAD_CHECKSUM,
            ),
            (
                "a SYN with a payload that does not match its checksum",
                edited(syn.frame(b"data!"), |f| {
                    let last = f.len() - 1;
                    f[last] ^= 1
                }),
                counter::DROP_BAD_CHECKSUM,
            ),
            (
                "SYN and FIN",
                syn.with(SYN | FIN, CLIENT_ISN, 0).frame(b""),
                counter::DROP_BAD_FLAGS,
            ),
            (
                "SYN and RST",
                syn.with(SYN | RST, CLIENT_ISN, 0).frame(b""),
                counter::DROP_BAD_FLAGS,
            ),
            (
                "no flags at all",
                syn.with(0, CLIENT_ISN, 0).frame(b""),
                counter::DROP_BAD_FLAGS,
            ),
            (
                "a SYN-ACK from a consumer",
                syn.with(SYN | ACK, CLIENT_ISN, 1).frame(b""),
                counter::DROP_BAD_FLAGS,
            ),
            (
                "to a broadcast MAC",
                Segment {
                    mac_dst: [0xff; 6],
                    ..syn
                }
                .frame(b""),
                counter::DROP_NOT_FOR_US,
            ),
            (
                "to another host's MAC",
                Segment {
                    mac_dst: [2, 9, 9, 9, 9, 9],
                    ..syn
                }
                .frame(b""),
                counter::DROP_NOT_FOR_US,
            ),
            (
                "from a multicast MAC",
                Segment {
                    mac_src: [1, 0, 0x5e, 0, 0, 1],
                    ..syn
                }
                .frame(b""),
                counter::DROP_NOT_FOR_US,
            ),
        ];
        // The last two: the endpoint itself, and another endpoint of the network.
        let martians: Vec<(String, Vec<u8>)> = [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
            ENDPOINT,
            STRICT,
        ]
        .iter()
        .map(|src| {
            (
                format!("from {src:?}"),
                Segment { src: *src, ..syn }.frame(b""),
            )
        })
        .collect();
        for (what, frame, reason) in &cases {
            let before = rig.count("a", *reason);
            assert_eq!(rig.run("cons-a", frame).action, XDP_DROP, "{what}");
            assert_eq!(
                rig.count("a", *reason),
                before + 1,
                "{what}: {:?}",
                rig.counted()
            );
        }
        for (what, frame) in &martians {
            assert_eq!(rig.run("cons-a", frame).action, XDP_DROP, "{what}");
        }
        assert_eq!(rig.count("a", counter::DROP_MARTIAN), martians.len() as u64);
        // Nothing of it opened a flow or took a NAT port.
        assert!(rig.flows().is_empty(), "{:?}", rig.flows());
        // And the good one still does.
        assert_eq!(rig.run("cons-a", &good).action, XDP_REDIRECT);
    });
}

#[test]
fn options_and_fragments_to_an_endpoint_are_dropped_by_policy() {
    with_rig(|rig| {
        let mac = rig.link("cons-a").mac;
        // IPv4 options (a 4-byte NOP/NOP/NOP/EOL): IHL 6.
        let mut options = Vec::new();
        let mut ip =
            etherparse::Ipv4Header::new(20, 64, etherparse::IpNumber::TCP, CLIENT, ENDPOINT)
                .unwrap();
        ip.options = [1u8, 1, 1, 0][..].try_into().unwrap();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, mac)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40000, 80, 1, 1)
            .syn()
            .write(&mut options, b"")
            .unwrap();
        assert_eq!(rig.run("cons-a", &options).action, XDP_DROP);
        let fragment = edited(syn_to(mac, ENDPOINT, 40000).frame(b""), |f| {
            f[14 + 6] = 0x20
        });
        assert_eq!(rig.run("cons-a", &fragment).action, XDP_DROP);
        let counters = rig.counters();
        assert_eq!(counters.packets(counter::DROP_IP_OPTIONS), 1);
        assert_eq!(counters.packets(counter::DROP_FRAGMENT), 1);
        // The same to an address that is not ours is still not endpoint traffic.
        let mut not_ours = options.clone();
        not_ours[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(rig.run("cons-a", &not_ours).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_NOT_ENDPOINT), 1);
    });
}

/// The kernel gives up on a program whose verification walks a million instructions:
/// each program must leave room for what comes next. Each branch it adds can multiply
/// the paths the verifier follows (on 2026-12-02 the data path walked about 650,000, of
/// which DNS answers some 410,000, before DNS became a program of its own). The count
/// depends on the kernel and the compiler: this holds it on the kernel CI runs (6.18).
#[test]
fn the_verifier_accepts_each_program_with_room_to_spare() {
    const BUDGET: u32 = 800_000;
    with_rig(|rig| {
        for name in [loader::PROGRAM, loader::DNS] {
            let program = loader::xdp(&mut rig.ebpf, name).unwrap();
            let Some(walked) = loader::verified_instructions(program) else {
                eprintln!(
                    "this kernel does not report verified instructions (Linux 5.16 and later do)"
                );
                return;
            };
            eprintln!("{name}: the verifier walked {walked} instructions");
            assert!(
                walked < BUDGET,
                "{name}: the verifier walked {walked} instructions, more than {BUDGET} of its \
                 1,000,000: find what multiplied the paths before the limit is reached"
            );
        }
    });
}
