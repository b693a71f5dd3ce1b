//! `cargo bench -p endpoint-agent --bench dataplane [-- --smoke] [--dns] [--json FILE] [--svg FILE]`
//!
//! The forwarder measured against its floor and against what a user would use instead,
//! side by side in one run: Layer A, the program alone (BPF_PROG_RUN); Layer B, packets
//! per second through namespaces; Layer C, real TCP; and DNS answered in XDP against nsd
//! (Layers A and B, `dns`; `--dns`: that alone). `--smoke`: one short round of each, with
//! every correctness check, so the harness cannot rot. Needs root.

mod bed;
mod dns;
mod pipeline;
mod program;
mod report;
mod tcp;

use std::path::PathBuf;

use anyhow::Result;

/// The bench object built by the agent's build script, beside the data path itself.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let path = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let mut report = report::Report {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?
            .trim()
            .to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..report::Report::default()
    };
    // `--dns`: the DNS benchmarks alone.
    if !args.iter().any(|a| a == "--dns") {
        program::run(&mut report, OBJECT, smoke)?;
        // Layers B and C share one topology (and one load of the object's helpers).
        let mut object = aya::Ebpf::load(OBJECT)?;
        pipeline::run(&mut report, &mut object, smoke)?;
    }
    // DNS, both layers: its own namespaces, agent and object.
    dns::run(&mut report, OBJECT, smoke)?;
    print!("{}", report.table());
    if let Some(path) = path("--json") {
        report.write_json(&path)?;
        println!("\nresults: {}", path.display());
    }
    if let Some(path) = path("--svg") {
        report.write_svg(&path)?;
        println!("chart: {}", path.display());
    }
    Ok(())
}
