//! `cargo xtask <command>`: everything around the product — set up the toolchain, build,
//! run the demo (or the agent on this machine), test, fuzz.

mod demo;
mod setup;

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run, test and benchmark the endpoint forwarder")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src for the nightly, LLVM 22, bpf-linker, iproute2,
    /// ethtool, nftables. Skips what is already there.
    Setup,
    /// Set up and build the agent (with the XDP program inside), release profile.
    Build,
    /// Without arguments: the demo on namespaces. With `-- --config FILE`: the agent on
    /// this machine's real interfaces, as a node agent (everything after `--` goes to
    /// `endpoint-agent run`).
    Run {
        /// Demo only: keep the topology up until Ctrl-C to look around.
        #[arg(long)]
        keep: bool,
        /// Arguments for `endpoint-agent run`, e.g. `--config node.yaml`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Set up, then run every check and test: formatting, lints, host unit tests,
    /// packet tests through BPF_PROG_RUN (a packet fuzz of 100,000 frames among them),
    /// end-to-end tests in namespaces, a minute of YAML config fuzzing, and a smoke run
    /// of the benchmarks (correctness checks only).
    Test,
    /// Set up, then fuzz for longer than `test` does: random and mutated frames through
    /// the XDP program against the packet tests' model, then the YAML config's parse and
    /// validation under libFuzzer. Prints what each did.
    Fuzz {
        /// Frames through the program.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// The frames' seed, to replay a run (default: from the clock; it is printed).
        #[arg(long)]
        seed: Option<String>,
        /// Seconds of YAML fuzzing.
        #[arg(long, default_value_t = 600)]
        yaml_seconds: u64,
        /// Fuzz the YAML with the address sanitizer (memory errors in the parser's
        /// unsafe code; about six times fewer inputs a second, and a rebuild).
        #[arg(long)]
        asan: bool,
    },
    /// Set up, then benchmark: the data path against its baselines and the kernel's NAT
    /// (three layers), the control plane and the fleet's store; writes
    /// docs/bench.{json,svg}.
    Bench {
        /// One short round of each, checking only that everything works.
        #[arg(long)]
        smoke: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    setup::cargo_bin_on_path();
    let result = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build => setup::run().and_then(|()| build()).map(drop),
        Cmd::Run { keep, agent_args } => run(&agent_args, keep),
        Cmd::Test => test(),
        Cmd::Fuzz {
            frames,
            seed,
            yaml_seconds,
            asan,
        } => fuzz(frames, seed, yaml_seconds, asan),
        Cmd::Bench { smoke } => bench(smoke),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `command`, echoing it first; fails if it fails.
fn sh(command: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(command));
    let status = command
        .status()
        .with_context(|| format!("running {}", show(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(command));
    }
    Ok(())
}

fn show(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Builds the agent (release) and returns its path.
fn build() -> Result<PathBuf> {
    sh(cargo().args(["build", "--release", "--package", "endpoint-agent"]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    Ok(target.join("release/endpoint-agent"))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: a plain libc call.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (BPF, namespaces): run it as root or with `sudo -E`");
    }
    Ok(())
}

fn run(agent_args: &[String], keep: bool) -> Result<()> {
    require_root("cargo xtask run")?;
    setup::run()?;
    let agent = build()?;
    if agent_args.is_empty() {
        demo::run(&agent, &root().join("examples/demo.yaml"), keep)
    } else {
        sh(Command::new(agent).arg("run").args(agent_args))
    }
}

fn test() -> Result<()> {
    require_root("cargo xtask test")?;
    setup::run()?;
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate is linted on the host with the nightly it is built with; its own
    // panic handler needs panic=abort there.
    sh(Command::new("rustup")
        .current_dir(root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "endpoint-ebpf",
        ])
        .args(["--all-targets", "--", "-D", "warnings", "-C", "panic=abort"])
        .arg("-Zpanic_abort_tests"))?;
    sh(cargo().args(["test", "--workspace", "--exclude", "endpoint-ebpf"]))?;
    eprintln!("xtask: {}", yaml_fuzz(YAML_FUZZ_SECONDS, false)?);
    bench(true)
}

/// How long `test` fuzzes the YAML config (CI runs it).
const YAML_FUZZ_SECONDS: u64 = 60;

fn fuzz(frames: u64, seed: Option<String>, yaml_seconds: u64, asan: bool) -> Result<()> {
    require_root("cargo xtask fuzz")?;
    setup::run()?;
    // A fresh seed each run explores further; a failure prints the one to replay.
    let seed = seed.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!("{:#x}", now.as_nanos() as u64)
    });
    let start = Instant::now();
    let packets = tee(
        cargo()
            .args(["test", "--package", "endpoint-agent", "--test", "packets"])
            .args(["fuzz", "--", "--nocapture"])
            .env("ENDPOINT_FUZZ_FRAMES", frames.to_string())
            .env("ENDPOINT_FUZZ_SEED", &seed),
        |line| line.starts_with("packet fuzz: seed") && line.contains(" forwarded "),
    )?;
    let packets_took = start.elapsed().as_secs_f64();
    let yaml = yaml_fuzz(yaml_seconds, asan)?;
    eprintln!("xtask: fuzz: {packets} ({packets_took:.0} s with the build)");
    eprintln!("xtask: fuzz: {yaml}");
    Ok(())
}

/// Fuzzes parse + validate of the YAML config for `seconds` (cargo-fuzz, nightly; the
/// corpus starts from the examples and fuzz/seeds, and grows in fuzz/corpus), with the
/// address sanitizer if `asan`. Fails on any panic or crash, leaving the input in
/// fuzz/artifacts. Returns what it did.
fn yaml_fuzz(seconds: u64, asan: bool) -> Result<String> {
    let fuzz = root().join("fuzz");
    let corpus = fuzz.join("corpus/validate");
    std::fs::create_dir_all(&corpus).context("creating the fuzz corpus")?;
    let mut command = Command::new("rustup");
    command
        .current_dir(root())
        .args(["run", "nightly", "cargo", "fuzz", "run", "--fuzz-dir"])
        .arg(&fuzz)
        // Without a sanitizer the parser's panics (and overflows: debug assertions) are
        // found six times faster; ASan looks into unsafe-libyaml, serde_yaml's parser.
        .args(["--sanitizer", if asan { "address" } else { "none" }])
        .args(["--debug-assertions", "validate"])
        .arg(&corpus)
        .arg(root().join("examples"))
        .arg(fuzz.join("seeds/validate"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-max_len=8192", "-timeout=20"])
        .arg(format!("-dict={}", fuzz.join("validate.dict").display()));
    let done = tee(&mut command, |line| line.starts_with("Done "))?;
    Ok(format!(
        "YAML fuzz (parse + validate): {}, no crash",
        done.trim_start_matches("Done ")
    ))
}

/// Runs `command` as [`sh`] does, its output shown as it comes; returns the last line
/// that `wanted` picks (it must print one).
fn tee(command: &mut Command, wanted: fn(&str) -> bool) -> Result<String> {
    eprintln!("xtask: $ {}", show(command));
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", show(command)))?;
    let echo = |stream: Box<dyn Read + Send>, out: bool| {
        std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if out {
                    println!("{line}");
                } else {
                    eprintln!("{line}");
                }
                if wanted(&line) {
                    last = Some(line);
                }
            }
            last
        })
    };
    let stdout = echo(Box::new(child.stdout.take().expect("piped")), true);
    let stderr = echo(Box::new(child.stderr.take().expect("piped")), false);
    let status = child.wait()?;
    let last = [stdout, stderr]
        .map(|thread| thread.join().ok().flatten())
        .into_iter()
        .flatten()
        .next_back();
    if !status.success() {
        bail!("`{}` failed ({status})", show(command));
    }
    last.with_context(|| format!("`{}` printed no summary", show(command)))
}

fn bench(smoke: bool) -> Result<()> {
    require_root("cargo xtask bench")?;
    setup::run()?;
    let docs = root().join("docs");
    let mut dataplane = cargo();
    dataplane.args([
        "bench",
        "--package",
        "endpoint-agent",
        "--bench",
        "dataplane",
        "--",
    ]);
    let mut control = cargo();
    control.args([
        "bench",
        "--package",
        "endpoint-agent",
        "--bench",
        "control_plane",
        "--",
    ]);
    let mut fleet = cargo();
    fleet.args([
        "bench",
        "--package",
        "endpoint-agent",
        "--bench",
        "fleet",
        "--",
    ]);
    if smoke {
        dataplane.arg("--smoke");
        control.arg("--smoke");
        fleet.arg("--smoke");
    } else {
        std::fs::create_dir_all(&docs)?;
        dataplane
            .arg("--json")
            .arg(docs.join("bench.json"))
            .arg("--svg")
            .arg(docs.join("bench.svg"));
    }
    sh(&mut dataplane)?;
    sh(&mut control)?;
    sh(&mut fleet)
}
