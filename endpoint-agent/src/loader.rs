//! Loader: the embedded XDP object, loaded with map sizes from the config and its maps
//! pinned for the instance (reused if an earlier agent of the same layout left them);
//! attached natively where the driver allows it, generically where it does not, through
//! pinned links that a restarted agent takes over with an atomic program replacement.

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
use endpoint_common::{
    counter,
    maps::{LAYOUT, MAPS, MAX_NAT_ADDRESSES, PROTO_UDP, dns_counter, name, ports_index, program},
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, MAX_LISTENERS, Tables},
    instance::Instance,
    maps::Maps,
    validate::MAX_SECURITY_GROUP_RULES,
};

/// The XDP object built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/endpoint"));

/// The programs' names in the object: the one attached, the one it hands DNS queries
/// to, and the one the agent runs to remove what ran out.
pub const PROGRAM: &str = "endpoint";
pub const DNS: &str = "dns";
pub const EXPIRE: &str = "expire";

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
pub fn map_sizes(config: &Config) -> Vec<(&'static str, u32)> {
    let t = &config.node.tables;
    let slots = 2 * t.endpoints + 1;
    vec![
        (name::FLOWS, t.flows),
        (name::HANDSHAKES, t.handshakes),
        // At most one closing per connection.
        (name::CLOSINGS, (t.flows / 2).max(1)),
        (name::ENDPOINTS, 2 * t.endpoints * MAX_LISTENERS),
        (name::POLICIES, slots),
        (name::LIMITS, slots),
        (name::USAGE, slots),
        (name::STATS, slots * counter::COUNT),
        (
            name::SECURITY_GROUPS,
            2 * t.endpoints * MAX_SECURITY_GROUP_RULES as u32,
        ),
        // Endpoint addresses (validated to fit `tables.endpoints`), NAT addresses and
        // resolver addresses.
        (
            name::ADDRESSES,
            2 * (t.endpoints + MAX_NAT_ADDRESSES as u32 + t.networks),
        ),
        // Per network: the apex and ns; per endpoint address a zonal name, per endpoint a
        // regional and a private name and its service's.
        (name::NAMES, 2 * (4 * t.endpoints + 2 * t.networks)),
        (name::DNS_STATS, (2 * t.networks + 1) * dns_counter::COUNT),
        // Network ids go up to twice the networks; each has a TCP and a UDP bitmap.
        (name::PORTS, ports_index(2 * t.networks, PROTO_UDP) + 1),
        (name::NETWORK_USAGE, 2 * t.networks + 1),
        // Index 0 is never used (see `ids`).
        (name::TARGETS, 2 * t.targets + 1),
        (name::RINGS, 2 * t.rings * t.ring_size),
    ]
}

/// Loads the programs for `config` into the kernel (verified, not yet attached), with
/// the instance's pinned maps if it has them — after checking that they are what this
/// agent's layout expects — else new ones, pinned.
pub fn load(config: &Config, instance: &Instance) -> Result<(Ebpf, Maps)> {
    check_layout(instance)?;
    let mut loader = loader(config);
    for map in MAPS {
        loader.map_pin_path(map.name, instance.pins.join(map.name));
    }
    let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
    for name in [PROGRAM, DNS, EXPIRE] {
        // The verifier gives up with EAGAIN when it is interrupted (a pending signal);
        // try again, as libbpf and cilium/ebpf do. Twenty immediate attempts were seen
        // to run out under parallel tests: back off a little more each time (at most
        // about two seconds in all).
        let mut attempts = 20;
        loop {
            match xdp(&mut ebpf, name)?.load() {
                Err(ProgramError::LoadError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts > 1 =>
                {
                    attempts -= 1;
                    std::thread::sleep(std::time::Duration::from_millis(10 * (20 - attempts)));
                }
                result => {
                    result.with_context(|| {
                        format!("the kernel verifier rejected the program {name:?}")
                    })?;
                    break;
                }
            }
        }
        if let Some(count) = verified_instructions(xdp(&mut ebpf, name)?) {
            log::info!(
                "program {name:?}: the verifier walked {count} instructions (of the kernel's \
                 1,000,000)"
            );
        }
    }
    instance.write(LAYOUT_FILE, &LAYOUT)?;
    let mut maps = Maps::take(&mut ebpf)?;
    hand_dns(&ebpf, &mut maps)?;
    Ok((ebpf, maps))
}

/// Puts the loaded `dns` program where the attached one hands DNS queries to it. A
/// pinned slot is replaced at once: an earlier agent's program, still attached until
/// this one's replaces it, hands its queries to this `dns` (the same layout).
pub fn hand_dns(ebpf: &Ebpf, maps: &mut Maps) -> Result<()> {
    let dns: &Xdp = ebpf
        .program(DNS)
        .with_context(|| format!("no program {DNS:?} in the object"))?
        .try_into()?;
    maps.program_array_mut(name::PROGRAMS)?
        .set(program::DNS, dns.fd()?, 0)
        .context("handing DNS queries to the dns program")
}

/// Where an instance records the layout of the maps it pinned (in its state
/// directory: bpffs holds pins only).
const LAYOUT_FILE: &str = "layout.json";

/// An instance's pinned maps are adopted only by an agent of the same layout, and only
/// if each map is what that layout says (see `Maps::open_pinned`): never guessed at.
pub fn check_layout(instance: &Instance) -> Result<()> {
    if !instance.exists() {
        return Ok(());
    }
    let recorded: Option<u32> = instance.read(LAYOUT_FILE).unwrap_or_default();
    let refuse = |why: String| {
        anyhow::anyhow!(
            "instance {:?}: {why}; this agent cannot adopt its data path. Remove it with \
             `endpoint-agent --instance {} cleanup` (its connections are cut) and start again",
            instance.name,
            instance.name
        )
    };
    match recorded {
        Some(version) if version == LAYOUT => {}
        Some(version) => {
            return Err(refuse(format!(
                "its maps have layout {version}, this agent's is {LAYOUT}"
            )));
        }
        None => {
            return Err(refuse(format!(
                "its maps were pinned by an agent older than layout {LAYOUT}"
            )));
        }
    }
    Maps::open_pinned(&instance.pins).map_err(|e| refuse(format!("{e:#}")))?;
    Ok(())
}

/// A loader for an object whose maps are sized for `config`. The benchmarks load their
/// own object with it.
pub fn loader(config: &Config) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    if std::env::var_os("ENDPOINT_VERIFIER_LOG").is_some() {
        loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
    }
    for (map, size) in map_sizes(config) {
        loader.map_max_entries(map, size);
    }
    // The program logs rare events only (NAT ports or the flow table running out);
    // below the agent's own level they cost one comparison.
    loader.override_global("AYA_LOG_LEVEL", &*LOG_LEVEL, false);
    loader
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

/// The attached program.
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    xdp(ebpf, PROGRAM)
}

/// How many instructions the verifier walked to accept `program` (none before Linux
/// 5.16): the data path must stay well within the kernel's limit of a million.
pub fn verified_instructions(program: &Xdp) -> Option<u32> {
    program.info().ok()?.verified_instruction_count()
}

/// The program that removes what ran out (see the data path's `expire`).
pub fn expire_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    xdp(ebpf, EXPIRE)
}

/// The loaded program `name` ([`PROGRAM`], [`DNS`] or [`EXPIRE`]).
pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name:?} in the object"))?;
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
    for map in MAPS {
        let _ = std::fs::remove_file(instance.pins.join(map.name));
    }
    Ok(())
}

/// aya-log's level numbering (error = 1 … trace = 5) for the agent's log level.
static LOG_LEVEL: std::sync::LazyLock<u8> = std::sync::LazyLock::new(|| match log::max_level() {
    log::LevelFilter::Off => 0,
    log::LevelFilter::Error => 1,
    log::LevelFilter::Warn => 2,
    log::LevelFilter::Info => 3,
    log::LevelFilter::Debug => 4,
    log::LevelFilter::Trace => 5,
});
