//! Loader: the embedded XDP object, loaded with map sizes from the config and its maps
//! pinned for the instance (reused if an earlier agent left them); attached natively
//! where the driver allows it, generically where it does not, through pinned links
//! that a restarted agent takes over with an atomic program replacement.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use endpoint_common::counter;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, MAX_LISTENERS, MAX_NAT_ADDRESSES, Tables},
    instance::Instance,
    validate::MAX_SECURITY_GROUP_RULES,
};

/// The XDP object built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/endpoint"));

/// The program's name in the object.
pub const PROGRAM: &str = "endpoint";

/// How an interface got the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// Map sizes for `config`. Ids stay below twice the number of objects (see
/// `Ids::assign`) and a plan adds entries before it removes others, so tables that the
/// config fills hold twice its limits: any valid config can replace any other.
pub fn map_sizes(config: &Config) -> [(&'static str, u32); 7] {
    let t = &config.node.tables;
    let consumer_interfaces = config
        .node
        .interfaces
        .iter()
        .filter(|i| i.role.consumer())
        .count() as u32;
    [
        ("FLOWS", t.flows),
        ("ENDPOINTS", 2 * t.endpoints * MAX_LISTENERS),
        (
            "ADDRESSES",
            2 * t.endpoints * consumer_interfaces.max(1) + 2 * MAX_NAT_ADDRESSES,
        ),
        (
            "SECURITY_GROUPS",
            2 * t.endpoints * MAX_SECURITY_GROUP_RULES as u32,
        ),
        // Index 0 is never used (see `ids`).
        ("TARGETS", 2 * t.targets + 1),
        ("RINGS", 2 * t.rings * t.ring_size),
        ("STATS", (2 * t.endpoints + 1) * counter::COUNT),
    ]
}

/// Every map the agent pins (and a `cleanup` removes).
pub const PINNED: [&str; 10] = [
    "INTERFACES",
    "ENDPOINTS",
    "ADDRESSES",
    "SECURITY_GROUPS",
    "NAT",
    "CONFIG",
    "TARGETS",
    "RINGS",
    "FLOWS",
    "STATS",
];

/// Loads the program into the kernel (verified, not yet attached). The maps are the
/// instance's pinned ones if they exist, else new ones, pinned.
pub fn load(config: &Config, instance: &Instance) -> Result<Ebpf> {
    let mut ebpf = open(OBJECT, config, Some(instance))?;
    program(&mut ebpf)?
        .load()
        .context("the kernel verifier rejected the XDP program")?;
    Ok(ebpf)
}

/// Creates (or, with `pins`, reuses) the maps of `object` sized for `config`; its
/// programs are not loaded yet. The benchmarks open their own object this way.
pub fn open(object: &[u8], config: &Config, pins: Option<&Instance>) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (map, size) in map_sizes(config) {
        loader.map_max_entries(map, size);
    }
    if let Some(instance) = pins {
        for map in PINNED {
            loader.map_pin_path(map, instance.pins.join(map));
        }
    }
    // The program logs rare events only (new flows at debug, NAT exhaustion at warn);
    // below the agent's own level they cost one comparison.
    let level = log_level();
    loader.override_global("AYA_LOG_LEVEL", &level, false);
    loader.load(object).context("loading the XDP object")
}

/// Map sizes cannot change under a running data path: a config whose tables differ
/// from the pinned maps' needs `cleanup` first.
pub fn check_tables(instance: &Instance, tables: &Tables) -> Result<()> {
    if let Some(pinned) = instance.read::<Tables>("tables.json")?
        && pinned != *tables
    {
        bail!(
            "node.tables changed ({pinned:?} -> {tables:?}): map sizes are fixed while \
                 the data path runs; run `endpoint-agent cleanup` (cuts connections) to resize"
        );
    }
    instance.write("tables.json", tables)
}

pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("no program {PROGRAM:?} in the object"))?;
    Ok(program.try_into()?)
}

/// Attach modes by interface, as recorded in the state directory.
pub type Modes = BTreeMap<String, Mode>;

/// Puts the loaded program on `interface`: takes over the instance's pinned link if
/// there is one (the old program is replaced atomically, no packet sees neither),
/// else attaches natively if the driver supports it, generically if not, and pins the
/// link.
pub fn attach(
    ebpf: &mut Ebpf,
    instance: &Instance,
    interface: &str,
    modes: &Modes,
) -> Result<Mode> {
    let pin = instance.link_pin(interface);
    let program = program(ebpf)?;
    if pin.exists() {
        let link =
            PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let link =
            XdpLink::try_from(FdLink::from(link)).map_err(|e: LinkError| anyhow::anyhow!(e))?;
        program
            .attach_to_link(link)
            .with_context(|| format!("replacing the program on {interface}"))?;
        return Ok(modes.get(interface).copied().unwrap_or(Mode::Native));
    }
    let (link, mode) = match program.attach(interface, XdpMode::Driver) {
        Ok(link) => (link, Mode::Native),
        Err(ProgramError::UnknownInterface { name }) => {
            bail!("no interface named {name:?} on this node")
        }
        Err(native) => {
            let link = program
                .attach(interface, XdpMode::Skb)
                .with_context(|| format!("attaching to {interface:?} (native failed: {native})"))?;
            log::warn!("{interface}: native XDP not supported ({native}); using generic mode");
            (link, Mode::Generic)
        }
    };
    let link = FdLink::try_from(program.take_link(link)?)?;
    link.pin(&pin)
        .with_context(|| format!("pinning the link of {interface}"))?;
    Ok(mode)
}

/// Takes the program off `interface` (once this process closes its own handles).
pub fn detach(instance: &Instance, interface: &str) -> Result<()> {
    let pin = instance.link_pin(interface);
    if pin.exists() {
        PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening {}", pin.display()))?
            .unpin()
            .with_context(|| format!("unpinning {}", pin.display()))?;
    }
    Ok(())
}

/// Detaches every pinned link of the instance and removes its pinned maps.
pub fn remove_pins(instance: &Instance) -> Result<()> {
    let links = instance.pins.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            detach(instance, &entry.file_name().to_string_lossy())?;
        }
    }
    for map in PINNED {
        let _ = std::fs::remove_file(instance.pins.join(map));
    }
    Ok(())
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
