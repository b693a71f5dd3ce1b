//! Builds the XDP program (endpoint-ebpf) for the BPF target with the nightly toolchain
//! and bpf-linker, into OUT_DIR, where `loader` embeds it.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../endpoint-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    // aya-build watches the eBPF crate; the program is built from the common one too.
    println!("cargo:rerun-if-changed={manifest_dir}/../endpoint-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "endpoint-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP program needs the nightly toolchain with rust-src and bpf-linker: run `cargo xtask setup`")
}
