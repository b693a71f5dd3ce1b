//! Layer B: packets per second through the namespaces, consumer → node → provider.
//! A live-frames generator (BPF_PROG_RUN in live mode: a new source port per frame over
//! 256 flows, SYNs or UDP datagrams of 64 bytes, 80 in IPv6) injects on the consumer's
//! link of each way through the node; a counting XDP sink on the provider host counts
//! what arrives. The ways are interleaved round by round: this forwarder, nftables DNAT +
//! masquerade, plain kernel routing, and a trivial XDP redirect — the ceiling of this
//! pipeline — then this forwarder and nftables with UDP, then with IPv6 (and this
//! forwarder from IPv6 to IPv4 targets, 6→4, which nftables does not do).
//!
//! Then new connections per second, this forwarder against nftables (conntrack), round
//! by round: SYNs each with a tuple never used before, generated the same way; on the
//! provider host a reflector answers every SYN with a SYN-ACK, which the node must
//! translate back; on the consumer host a counter counts the SYN-ACKs that arrive as
//! expected. Every handshake stays half-open (the consumer never acknowledges).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use etherparse::{PacketBuilder, TcpOptionElement};

use crate::{
    bed::{self, Bed, v4, v6},
    report::{ConnectionVariant, PipelineVariant, Report, median},
};

const FLOWS: u32 = 256;

struct Way {
    name: &'static str,
    /// The consumer's link into the node for this way, and the frame to send on it.
    link: &'static str,
    node_link: &'static str,
    src: IpAddr,
    dst: (IpAddr, u16),
    /// UDP datagrams (IPv4 ones without a checksum: the generator keeps TCP's right) or
    /// TCP SYNs.
    udp: bool,
    /// The way its ratio to nftables is taken against (of the same family).
    nft: usize,
}

const WAYS: [Way; 9] = [
    Way {
        name: "this forwarder (XDP DNAT + SNAT)",
        link: "eth0",
        node_link: "cons-a",
        src: v4(10, 0, 0, 10),
        dst: (v4(10, 0, 0, 100), 80),
        udp: false,
        nft: 1,
    },
    Way {
        name: "nftables dnat + masquerade",
        link: "eth2",
        node_link: "cons-k",
        src: v4(10, 1, 0, 10),
        dst: (v4(10, 1, 0, 100), 80),
        udp: false,
        nft: 1,
    },
    Way {
        name: "kernel routing (no NAT)",
        link: "eth2",
        node_link: "cons-k",
        src: v4(10, 1, 0, 10),
        dst: (v4(172, 16, 0, 10), 8080),
        udp: false,
        nft: 1,
    },
    Way {
        name: "trivial XDP redirect (ceiling)",
        link: "eth1",
        node_link: "cons-r",
        src: v4(10, 2, 0, 10),
        dst: (v4(172, 16, 0, 10), 8080),
        udp: false,
        nft: 1,
    },
    Way {
        name: "this forwarder, UDP",
        link: "eth0",
        node_link: "cons-a",
        src: v4(10, 0, 0, 10),
        dst: (v4(10, 0, 0, 100), 53),
        udp: true,
        nft: 5,
    },
    Way {
        name: "nftables dnat + masquerade, UDP",
        link: "eth2",
        node_link: "cons-k",
        src: v4(10, 1, 0, 10),
        dst: (v4(10, 1, 0, 100), 53),
        udp: true,
        nft: 5,
    },
    Way {
        name: "this forwarder, IPv6",
        link: "eth0",
        node_link: "cons-a",
        src: v6(0xa, 0x10),
        dst: (v6(0xa, 0x100), 80),
        udp: false,
        nft: 7,
    },
    Way {
        name: "nftables dnat + masquerade, IPv6",
        link: "eth2",
        node_link: "cons-k",
        src: v6(1, 0x10),
        dst: (v6(1, 0x100), 80),
        udp: false,
        nft: 7,
    },
    Way {
        name: "this forwarder, IPv6 → IPv4 targets (6→4)",
        link: "eth0",
        node_link: "cons-a",
        src: v6(0xa, 0x10),
        dst: (v6(0xa, 0x100), 8000),
        udp: false,
        nft: 7,
    },
];

fn sunk(object: &Ebpf) -> Result<u64> {
    let sink: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(object.map("SINK").context("SINK")?)?;
    Ok(sink.get(&0, 0)?.iter().sum())
}

pub fn run(report: &mut Report, object: &mut Ebpf, smoke: bool) -> Result<()> {
    let (rounds, frames) = if smoke { (1, 20_000) } else { (5, 2_000_000) };
    for name in ["generate", "generate6", "sink", "redirect", "empty"] {
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
    .set(0, FLOWS, 0)?;
    let bed = Bed::build(object)?;
    let sink = bed::attach(object, "sink", &bed.provider, "eth0")?;

    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); WAYS.len()];
    for _ in 0..rounds {
        for (i, way) in WAYS.iter().enumerate() {
            let (ifindex, mac) = bed::link(&bed.consumer, way.link)?;
            let (_, node_mac) = bed::link(&bed.node, way.node_link)?;
            let (frame, generator) = way_frame(object, way, mac, node_mac)?;
            let before = sunk(object)?;
            let elapsed = inject(&bed, object, generator, &frame, ifindex, frames)?;
            bed::settle();
            let delivered = (sunk(object)? - before) as f64;
            samples[i].0.push(delivered / elapsed / 1e6);
            samples[i].1.push(1.0 - delivered / frames as f64);
        }
    }
    let mpps: Vec<f64> = samples.iter().map(|(m, _)| median(m)).collect();
    anyhow::ensure!(
        mpps[0] > 0.0,
        "nothing crossed the forwarder:\n{}",
        bed.agent.log()
    );
    // Ratios are taken round by round (the ways ran back to back), then the median.
    let per_round = |i: usize, base: usize| -> f64 {
        let ratios: Vec<f64> = (0..rounds)
            .map(|r| samples[i].0[r] / samples[base].0[r])
            .collect();
        median(&ratios)
    };
    for (i, way) in WAYS.iter().enumerate() {
        report.pipeline.push(PipelineVariant {
            variant: way.name.to_string(),
            mpps: mpps[i],
            loss: median(&samples[i].1),
            ratio_to_nft: per_round(i, way.nft),
            share_of_redirect_ceiling: per_round(i, 3),
        });
    }
    let sink_program: &mut Xdp = object.program_mut("sink").context("sink")?.try_into()?;
    sink_program.detach(sink)?;
    connections(report, object, &bed, smoke)?;
    crate::tcp::run(report, &bed, smoke)
}

/// The frame a way sends, made the generator's pristine frame, and the generator.
fn way_frame(
    object: &mut Ebpf,
    way: &Way,
    mac: [u8; 6],
    node_mac: [u8; 6],
) -> Result<(Vec<u8>, &'static str)> {
    let mut frame = Vec::new();
    let builder = PacketBuilder::ethernet2(mac, node_mac);
    let builder = match (way.src, way.dst.0) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => builder.ipv4(src.octets(), dst.octets(), 64),
        (IpAddr::V6(src), IpAddr::V6(dst)) => builder.ipv6(src.octets(), dst.octets(), 64),
        _ => anyhow::bail!("{}: addresses of two families", way.name),
    };
    // IPv4 frames are 64 bytes, IPv6 ones 80 (the generators' frame lengths).
    let ipv6 = way.src.is_ipv6();
    if way.udp {
        let payload: &[u8] = if ipv6 {
            b"benchmark, bench!!"
        } else {
            b"benchmark, benchmark!!"
        };
        builder.udp(1024, way.dst.1).write(&mut frame, payload)?;
        if !ipv6 {
            frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        }
    } else {
        let payload: &[u8] = if ipv6 { b"bench!" } else { b"benchmark!" };
        builder
            .tcp(1024, way.dst.1, 1, 65535)
            .syn()
            .write(&mut frame, payload)?;
    }
    if ipv6 {
        let pristine: [u8; 80] = frame.as_slice().try_into()?;
        Array::<_, [u8; 80]>::try_from(object.map_mut("FRAME6").context("FRAME6")?)?
            .set(0, pristine, 0)?;
        Ok((frame, "generate6"))
    } else {
        let pristine: [u8; 64] = frame.as_slice().try_into()?;
        Array::<_, [u8; 64]>::try_from(object.map_mut("FRAME").context("FRAME")?)?
            .set(0, pristine, 0)?;
        Ok((frame, "generate"))
    }
}

/// One way through the node for new connections.
struct Opening {
    name: &'static str,
    link: &'static str,
    node_link: &'static str,
    /// The first SYN's source address; every 64512 SYNs the next one.
    src: [u8; 4],
    endpoint: ([u8; 4], u16),
}

/// The consumer addresses lie outside the consumer links' /24s: the kernel path then
/// needs no neighbour per address (bed.rs routes them through the consumer host).
const OPENINGS: [Opening; 2] = [
    Opening {
        name: WAYS[0].name,
        link: "eth0",
        node_link: "cons-a",
        src: [10, 0, 1, 0],
        endpoint: ([10, 0, 0, 100], 80),
    },
    Opening {
        name: WAYS[1].name,
        link: "eth2",
        node_link: "cons-k",
        src: [10, 1, 1, 0],
        endpoint: ([10, 1, 0, 100], 80),
    },
];

/// The generated SYNs' sequence number (`SYN_SEQ` in the bench programs).
const SYN_SEQ: u32 = 0x5eed_0001;

/// Sum of a per-CPU counter of the bench programs.
fn counted(object: &Ebpf, map: &str, index: u32) -> Result<u64> {
    let counts: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(object.map(map).context(map.to_string())?)?;
    Ok(counts.get(&index, 0)?.iter().sum())
}

/// What the forwarder's agent reports: half-open connections and the counters.
struct Forwarder {
    half_open: u64,
    counters: BTreeMap<String, u64>,
}

impl Forwarder {
    fn read(bed: &Bed) -> Result<Self> {
        let output = bed.agent.command(&["status", "--json"])?;
        anyhow::ensure!(
            output.status.success(),
            "status: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let half_open = status["endpoints"]
            .as_array()
            .context("status endpoints")?
            .iter()
            .filter_map(|e| e["half_open"].as_u64())
            .sum();
        let counters = status["counters"]
            .as_object()
            .context("status counters")?
            .iter()
            .filter_map(|(name, c)| Some((name.clone(), c["packets"].as_u64()?)))
            .collect();
        Ok(Self {
            half_open,
            counters,
        })
    }

    /// How many more packets `name` counted than in `before`.
    fn since(&self, before: &Self, name: &str) -> u64 {
        let at = |f: &Self| f.counters.get(name).copied().unwrap_or(0);
        at(self) - at(before)
    }
}

fn conntrack_count(node: &testbed::Namespace) -> Result<u64> {
    Ok(node
        .exec("sysctl", &["-n", "net.netfilter.nf_conntrack_count"])?
        .trim()
        .parse()?)
}

/// Empties the node's conntrack table (ctnetlink: a delete without a tuple flushes the
/// namespace's table), so that each nftables round starts from an empty one: expired
/// entries wait for the kernel's conntrack garbage collection, which here took longer
/// than 20 s to collect a round's.
fn flush_conntrack(node: &testbed::Namespace) -> Result<()> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    const NLMSG_ERROR: u16 = 2;
    node.enter(|| -> Result<()> {
        let socket = Socket::new(NETLINK_NETFILTER)?;
        // nlmsghdr (length, type, flags, sequence, port), then nfgenmsg (family,
        // version, resource id).
        let mut message = Vec::with_capacity(20);
        message.extend(20u32.to_ne_bytes());
        message.extend((NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        message.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        message.extend(1u32.to_ne_bytes());
        message.extend(0u32.to_ne_bytes());
        message.extend([libc::AF_INET as u8, 0, 0, 0]);
        socket.send_to(&message, &SocketAddr::new(0, 0), 0)?;
        let (answer, _) = socket.recv_from_full()?;
        anyhow::ensure!(
            answer.len() >= 20 && u16::from_ne_bytes([answer[4], answer[5]]) == NLMSG_ERROR,
            "conntrack flush: unexpected answer {answer:?}"
        );
        let error = i32::from_ne_bytes(answer[16..20].try_into()?);
        anyhow::ensure!(
            error == 0,
            "conntrack flush: {}",
            std::io::Error::from_raw_os_error(-error)
        );
        Ok(())
    })?
}

/// Empties the node's conntrack table and waits (bounded) until it is.
fn drain(bed: &Bed) -> Result<()> {
    let start = Instant::now();
    loop {
        flush_conntrack(&bed.node)?;
        let entries = conntrack_count(&bed.node)?;
        if entries == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(5),
            "conntrack flushed, but {entries} entries are left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One measurement of one way: `syns` SYNs, new tuples each.
struct Opened {
    per_second: f64,
    syns: u64,
    reflected: u64,
    syn_acks: u64,
    /// Frames at the reflector or the counter that were not what they should be.
    stray: u64,
    /// The forwarder's counters over the measurement (its way only): half-open
    /// connections before, forward_new, reply and drops.
    forwarder: Option<(u64, u64, u64, BTreeMap<String, u64>)>,
}

fn measure(object: &mut Ebpf, bed: &Bed, opening: &Opening, syns: u32) -> Result<Opened> {
    let (ifindex, mac) = bed::link(&bed.consumer, opening.link)?;
    let (_, node_mac) = bed::link(&bed.node, opening.node_link)?;
    // A SYN as a client sends it (MSS, window scale), 62 bytes padded to 64.
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac, node_mac)
        .ipv4(opening.src, opening.endpoint.0, 64)
        .tcp(1024, opening.endpoint.1, SYN_SEQ, 64240)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(7),
        ])?
        .write(&mut frame, &[])?;
    frame.resize(64, 0);
    let mut pristine = [0u8; 64];
    pristine.copy_from_slice(&frame);
    Array::<_, [u8; 64]>::try_from(object.map_mut("FRAME").context("FRAME")?)?
        .set(0, pristine, 0)?;
    let from = [
        u32::from_ne_bytes(opening.endpoint.0),
        u16::from_ne_bytes(opening.endpoint.1.to_be_bytes()) as u32,
    ];
    Array::<_, [u32; 2]>::try_from(object.map_mut("SYN_ACK_FROM").context("SYN_ACK_FROM")?)?
        .set(0, from, 0)?;

    let forwarder = opening.node_link == "cons-a";
    let read = |object: &Ebpf| -> Result<[u64; 5]> {
        let generated: Array<&MapData, u32> = Array::try_from(object.map("SYNS").context("SYNS")?)?;
        Ok([
            generated.get(&0, 0)? as u64,
            counted(object, "REFLECTED", 0)?,
            counted(object, "REFLECTED", 1)?,
            counted(object, "SYN_ACKS", 0)?,
            counted(object, "SYN_ACKS", 1)?,
        ])
    };
    let agent_before = if forwarder {
        Some(Forwarder::read(bed)?)
    } else {
        None
    };
    let before = read(object)?;
    let elapsed = inject(bed, object, "generate_syn", &frame, ifindex, syns)?;
    bed::settle();
    let after = read(object)?;
    let [generated, reflected, reflected_other, syn_acks, other] =
        std::array::from_fn(|i| after[i] - before[i]);
    let forwarder = match agent_before {
        Some(before) => {
            let after = Forwarder::read(bed)?;
            let drops = after
                .counters
                .keys()
                .filter(|name| name.starts_with("drop_"))
                .map(|name| (name.clone(), after.since(&before, name)))
                .filter(|(_, n)| *n > 0)
                .collect();
            Some((
                before.half_open,
                after.since(&before, "forward_new"),
                after.since(&before, "reply"),
                drops,
            ))
        }
        None => None,
    };
    Ok(Opened {
        per_second: syn_acks as f64 / elapsed,
        syns: generated,
        reflected,
        syn_acks,
        stray: reflected_other + other,
        forwarder,
    })
}

/// New connections per second through the forwarder and through nftables, round by
/// round. The reflector replaces the sink on the provider host, and counters sit on the
/// consumer's links (where the generator injects: XDP there sees only what arrives).
fn connections(report: &mut Report, object: &mut Ebpf, bed: &Bed, smoke: bool) -> Result<()> {
    // 32768 new tuples a round: far from the node's conntrack limit (nf_conntrack_max,
    // 262144 here, cannot be written from inside a namespace on this kernel: EINVAL;
    // the host's is left alone), within the ports masquerade keeps, and within the
    // forwarder's tables over all rounds (bed.rs).
    let (rounds, syns) = if smoke { (1, 4096) } else { (5, 32_768) };
    for name in ["generate_syn", "reflect", "count_syn_ack"] {
        let program: &mut Xdp = object.program_mut(name).context(name)?.try_into()?;
        program
            .load()
            .with_context(|| format!("verifying {name}"))?;
    }
    let reflector = bed::attach(object, "reflect", &bed.provider, "eth0")?;
    let counters = [
        bed::attach(object, "count_syn_ack", &bed.consumer, "eth0")?,
        bed::attach(object, "count_syn_ack", &bed.consumer, "eth2")?,
    ];
    let measured = (|| -> Result<Vec<Vec<Opened>>> {
        let mut samples: Vec<Vec<Opened>> = OPENINGS.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, opening) in OPENINGS.iter().enumerate() {
                drain(bed)?;
                samples[i].push(measure(object, bed, opening, syns)?);
            }
        }
        Ok(samples)
    })();
    // Back as Layer C expects the namespaces, whatever happened.
    let reflect: &mut Xdp = object
        .program_mut("reflect")
        .context("reflect")?
        .try_into()?;
    reflect.detach(reflector)?;
    let count: &mut Xdp = object
        .program_mut("count_syn_ack")
        .context("count_syn_ack")?
        .try_into()?;
    for link in counters {
        count.detach(link)?;
    }
    // Layer C's nftables connections all go to one target from one masquerade
    // address: the last round's 32768 handshakes would hold half its ports.
    let drained = drain(bed);
    let samples = measured?;
    drained?;

    for (opening, rounds) in OPENINGS.iter().zip(&samples) {
        for (r, o) in rounds.iter().enumerate() {
            if smoke {
                print!(
                    "  new connections, {} (round {r}): {:.0}/s; {} SYNs, {} reflected, \
                     {} SYN-ACKs back, {} stray",
                    opening.name, o.per_second, o.syns, o.reflected, o.syn_acks, o.stray
                );
                match &o.forwarder {
                    Some((half_open, new, reply, drops)) => println!(
                        "; forwarder: {half_open} half-open before, forward_new {new}, \
                         reply {reply}, drops {drops:?}"
                    ),
                    None => println!(),
                }
            }
            // The packets must be the ones meant: every SYN generated, every SYN-ACK
            // from the endpoint acknowledging a SYN, nothing else on the way back, and
            // for the forwarder each SYN-ACK counted one it translated for a flow it
            // opened.
            anyhow::ensure!(
                o.syns == syns as u64,
                "{}: {} of {syns} SYNs generated",
                opening.name,
                o.syns
            );
            anyhow::ensure!(
                o.syn_acks > 0 && o.syn_acks <= o.reflected && o.stray * 100 <= o.syns,
                "{}: {} SYNs, {} reflected, {} SYN-ACKs back, {} stray frames:\n{}",
                opening.name,
                o.syns,
                o.reflected,
                o.syn_acks,
                o.stray,
                bed.agent.log()
            );
            if let Some((_, new, reply, _)) = &o.forwarder {
                anyhow::ensure!(
                    o.syn_acks <= *reply && reply <= new && *new <= o.syns,
                    "{}: {} SYNs, forward_new {new}, reply {reply}, {} SYN-ACKs back",
                    opening.name,
                    o.syns,
                    o.syn_acks
                );
            }
        }
    }
    let per_second: Vec<Vec<f64>> = samples
        .iter()
        .map(|rounds| rounds.iter().map(|o| o.per_second).collect())
        .collect();
    for (i, opening) in OPENINGS.iter().enumerate() {
        // Ratios round by round (the ways ran back to back), then the median.
        let ratios: Vec<f64> = (0..rounds)
            .map(|r| per_second[i][r] / per_second[1][r])
            .collect();
        let losses: Vec<f64> = samples[i]
            .iter()
            .map(|o| 1.0 - o.syn_acks as f64 / o.syns as f64)
            .collect();
        report.connections.push(ConnectionVariant {
            variant: opening.name.to_string(),
            per_second: median(&per_second[i]),
            loss: median(&losses),
            ratio_to_nft: median(&ratios),
            syns_per_round: syns,
            per_round: per_second[i].clone(),
        });
    }
    Ok(())
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a plain libc call on this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Injects `count` live frames made by the generator `program` from `frame` on the
/// consumer's interface `ifindex`, pinned to CPU 0; returns the seconds it took.
fn inject(
    bed: &Bed,
    object: &Ebpf,
    program: &str,
    frame: &[u8],
    ifindex: u32,
    count: u32,
) -> Result<f64> {
    let generate: &Xdp = object.program(program).context("generator")?.try_into()?;
    bed.consumer.enter(|| -> Result<f64> {
        pin_to_cpu(0);
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let start = Instant::now();
        generate.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })?;
        Ok(start.elapsed().as_secs_f64())
    })?
}
