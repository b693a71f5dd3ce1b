//! Installs what building and testing need, skipping what is already there:
//! Debian packages (LLVM 22 for bpf-linker, iproute2, ethtool, nftables, procps for
//! sysctl, iputils-ping, prometheus, systemd, g++ for libFuzzer, dnsutils, unbound, nsd),
//! rust-src for
//! the nightly toolchain (`-Z build-std=core` for the BPF target), bpf-linker 0.13.0
//! linked against LLVM 22 (the LLVM of the nightly's rustc, 22.1.4, must not be newer),
//! and cargo-fuzz 0.13.2 (the YAML config fuzzer; it builds with the nightly).

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::sh;

const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "procps",
    // `ping`, which the tests use to ping an endpoint.
    "iputils-ping",
    // A real Prometheus (and promtool) scrapes the agent in the tests.
    "prometheus",
    // systemd-analyze verifies the shipped unit.
    "systemd",
    // libfuzzer-sys compiles libFuzzer (C++).
    "g++",
    // DNS: `dig` asks the resolver addresses, a real unbound forwards to them, nsd
    // serves verification records and is what XDP answers are benchmarked against.
    "dnsutils",
    "unbound",
    // The fleet: a real etcd for the store tests; etcd-client compiles its gRPC
    // definitions with protoc, which needs the well-known types (descriptor.proto), a
    // recommendation of protobuf-compiler that a machine may have gone without.
    "etcd-server",
    "protobuf-compiler",
    "libprotobuf-dev",
    "nsd",
];
const BPF_LINKER: &str = "0.13.0";
const CARGO_FUZZ: &str = "0.13.2";

/// Puts cargo's bin directory (where bpf-linker is installed) on PATH for everything the
/// xtask starts, as a fresh root shell may not have it.
pub fn cargo_bin_on_path() {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let (Some(home), Some(path)) = (home, std::env::var_os("PATH")) else {
        return;
    };
    let bin = home.join("bin");
    let mut paths: Vec<_> = std::env::split_paths(&path).collect();
    if !paths.contains(&bin) {
        paths.insert(0, bin);
        if let Ok(joined) = std::env::join_paths(paths) {
            // SAFETY: called first thing in main, before any other thread exists.
            unsafe { std::env::set_var("PATH", joined) };
        }
    }
}

pub fn run() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    eprintln!("xtask: setup: everything is in place");
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: setup: packages present ({})", PACKAGES.join(", "));
        return Ok(());
    }
    eprintln!("xtask: setup: installing {}", missing.join(", "));
    if output("apt-get", &["--version"]).is_none() {
        bail!(
            "missing {} and no apt-get to install them with",
            missing.join(", ")
        );
    }
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("rustup with a `nightly` toolchain is needed to build the XDP program")?;
    if installed.lines().any(|c| c.starts_with("rust-src")) {
        eprintln!("xtask: setup: nightly has rust-src");
        return Ok(());
    }
    eprintln!("xtask: setup: adding rust-src to the nightly toolchain");
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if let Some(version) = output("bpf-linker", &["--version"])
        && version.split_whitespace().nth(1) == Some(BPF_LINKER)
    {
        eprintln!("xtask: setup: bpf-linker {BPF_LINKER} present");
        return Ok(());
    }
    eprintln!("xtask: setup: building bpf-linker {BPF_LINKER} against LLVM 22 (a few minutes)");
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

fn cargo_fuzz() -> Result<()> {
    if let Some(version) = output("cargo-fuzz", &["--version"])
        && version.split_whitespace().nth(1) == Some(CARGO_FUZZ)
    {
        eprintln!("xtask: setup: cargo-fuzz {CARGO_FUZZ} present");
        return Ok(());
    }
    eprintln!("xtask: setup: building cargo-fuzz {CARGO_FUZZ} (about a minute)");
    sh(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--force",
        "--version",
        CARGO_FUZZ,
    ]))
}
