//! `cargo xtask <command>`: everything around the product — set up the toolchain, build,
//! run the demo (or the agent on this machine), test.

mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
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
    /// packet tests through BPF_PROG_RUN, end-to-end tests in namespaces, and a smoke run
    /// of the benchmarks (correctness checks only).
    Test,
    /// Set up, then benchmark: the data path against its baselines and the kernel's NAT
    /// (three layers), and the control plane; writes docs/bench.{json,svg}.
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
    bench(true)
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
    if smoke {
        dataplane.arg("--smoke");
        control.arg("--smoke");
    } else {
        std::fs::create_dir_all(&docs)?;
        dataplane
            .arg("--json")
            .arg(docs.join("bench.json"))
            .arg("--svg")
            .arg(docs.join("bench.svg"));
    }
    sh(&mut dataplane)?;
    sh(&mut control)
}
