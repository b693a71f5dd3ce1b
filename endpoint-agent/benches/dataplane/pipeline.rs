//! Layer B: packets per second through the namespaces, consumer → node → provider.
//! A live-frames generator (BPF_PROG_RUN in live mode: a new source port per frame over
//! 256 flows, 64-byte SYNs) injects on the consumer's link of each way through the node;
//! a counting XDP sink on the provider host counts what arrives. The ways are
//! interleaved round by round: this forwarder, nftables DNAT + masquerade, plain
//! kernel routing, and a trivial XDP redirect — the ceiling of this pipeline.

use std::time::Instant;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;

use crate::{
    bed::{self, Bed},
    report::{PipelineVariant, Report, median},
};

const FLOWS: u32 = 256;

struct Way {
    name: &'static str,
    /// The consumer's link into the node for this way, and the frame to send on it.
    link: &'static str,
    node_link: &'static str,
    src: [u8; 4],
    dst: ([u8; 4], u16),
}

const WAYS: [Way; 4] = [
    Way {
        name: "this forwarder (XDP DNAT + SNAT)",
        link: "eth0",
        node_link: "cons-a",
        src: [10, 0, 0, 10],
        dst: ([10, 0, 0, 100], 80),
    },
    Way {
        name: "nftables dnat + masquerade",
        link: "eth2",
        node_link: "cons-k",
        src: [10, 1, 0, 10],
        dst: ([10, 1, 0, 100], 80),
    },
    Way {
        name: "kernel routing (no NAT)",
        link: "eth2",
        node_link: "cons-k",
        src: [10, 1, 0, 10],
        dst: ([172, 16, 0, 10], 8080),
    },
    Way {
        name: "trivial XDP redirect (ceiling)",
        link: "eth1",
        node_link: "cons-r",
        src: [10, 2, 0, 10],
        dst: ([172, 16, 0, 10], 8080),
    },
];

fn sunk(object: &Ebpf) -> Result<u64> {
    let sink: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(object.map("SINK").context("SINK")?)?;
    Ok(sink.get(&0, 0)?.iter().sum())
}

pub fn run(report: &mut Report, object: &mut Ebpf, smoke: bool) -> Result<()> {
    let (rounds, frames) = if smoke { (1, 20_000) } else { (5, 2_000_000) };
    for name in ["generate", "sink", "redirect", "empty"] {
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
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(mac, node_mac)
                .ipv4(way.src, way.dst.0, 64)
                .tcp(1024, way.dst.1, 1, 65535)
                .syn()
                .write(&mut frame, b"benchmark!")?;
            let mut pristine = [0u8; 64];
            pristine.copy_from_slice(&frame);
            Array::<_, [u8; 64]>::try_from(object.map_mut("FRAME").context("FRAME")?)?
                .set(0, pristine, 0)?;
            let before = sunk(object)?;
            let generate: &Xdp = object.program("generate").context("generate")?.try_into()?;
            let elapsed = bed.consumer.enter(|| -> Result<f64> {
                pin_to_cpu(0);
                let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|w| w.to_ne_bytes())
                    .collect();
                let start = Instant::now();
                generate.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&ctx),
                    repeat: frames,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..TestRunOptions::default()
                })?;
                Ok(start.elapsed().as_secs_f64())
            })??;
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
            ratio_to_nft: per_round(i, 1),
            share_of_redirect_ceiling: per_round(i, 3),
        });
    }
    let sink_program: &mut Xdp = object.program_mut("sink").context("sink")?.try_into()?;
    sink_program.detach(sink)?;
    crate::tcp::run(report, &bed, smoke)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a plain libc call on this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}
