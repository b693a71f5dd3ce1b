//! Loader: the embedded XDP object, loaded with map sizes from the config, and attached
//! natively where the driver allows it, generically where it does not.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use endpoint_common::counter;

use crate::config::{Config, MAX_LISTENERS, MAX_NAT_ADDRESSES};

/// The XDP object built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/endpoint"));

/// The program's name in the object.
pub const PROGRAM: &str = "endpoint";

/// How an interface got the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the driver: the fast path.
    Native,
    /// In the kernel's generic hook, after an skb is built: works everywhere, slower.
    Generic,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        })
    }
}

/// Map sizes for `config`.
pub fn map_sizes(config: &Config) -> [(&'static str, u32); 6] {
    let t = &config.node.tables;
    let consumer_interfaces = config
        .node
        .interfaces
        .iter()
        .filter(|i| i.role.consumer())
        .count() as u32;
    [
        ("FLOWS", t.flows),
        ("ENDPOINTS", t.endpoints * MAX_LISTENERS),
        (
            "ADDRESSES",
            t.endpoints * consumer_interfaces.max(1) + MAX_NAT_ADDRESSES,
        ),
        ("TARGETS", t.targets),
        ("RINGS", t.rings * t.ring_size),
        ("STATS", (t.endpoints + 1) * counter::COUNT),
    ]
}

/// Loads the program into the kernel (verified, not yet attached).
pub fn load(config: &Config) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (map, size) in map_sizes(config) {
        loader.map_max_entries(map, size);
    }
    // The program logs rare events only (new flows at debug, NAT exhaustion at warn);
    // below the agent's own level they cost one comparison.
    let level = log_level();
    loader.override_global("AYA_LOG_LEVEL", &level, false);
    let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
    program(&mut ebpf)?
        .load()
        .context("the kernel verifier rejected the XDP program")?;
    Ok(ebpf)
}

pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("no program {PROGRAM:?} in the object"))?;
    Ok(program.try_into()?)
}

/// Attaches to `interface`: natively if the driver supports it, else generically.
pub fn attach(ebpf: &mut Ebpf, interface: &str) -> Result<(XdpLinkId, Mode)> {
    let program = program(ebpf)?;
    match program.attach(interface, XdpMode::Driver) {
        Ok(link) => Ok((link, Mode::Native)),
        Err(ProgramError::UnknownInterface { name }) => {
            anyhow::bail!("no interface named {name:?} on this node")
        }
        Err(native) => {
            let link = program
                .attach(interface, XdpMode::Skb)
                .with_context(|| format!("attaching to {interface:?} (native failed: {native})"))?;
            log::warn!("{interface}: native XDP not supported ({native}); using generic mode");
            Ok((link, Mode::Generic))
        }
    }
}

/// aya-log's level numbering (error = 1 … trace = 5) for the agent's log level.
fn log_level() -> u8 {
    match log::max_level() {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => 1,
        log::LevelFilter::Warn => 2,
        log::LevelFilter::Info => 3,
        log::LevelFilter::Debug => 4,
        log::LevelFilter::Trace => 5,
    }
}
