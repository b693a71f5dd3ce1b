//! Apply: carry a plan out on the real maps, change by change in the plan's (safe)
//! order; and read the maps back into [`Contents`], which is what a restarted agent
//! diffs its config against.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{PerCpuValues, lpm_trie::Key},
};
use endpoint_common::counter::{self, Count};
use endpoint_common::maps::{
    Address, AddressKey, DnsSettings, EndpointKey, EndpointRef, Interface, Limits, MAX_IFINDEX,
    Name, NameKey, PROTO_TCP, PROTO_UDP, SecurityGroup, Settings, SourcePrefix, Target, Usage,
    name, ports_index,
};

use crate::{
    desired::Contents,
    ids::Ids,
    maps::Maps,
    plan::{Change, Op, Plan},
};

pub fn apply(maps: &mut Maps, plan: &Plan) -> Result<()> {
    for change in &plan.changes {
        match change {
            Change::Endpoint(op) => hash_op(maps, name::ENDPOINTS, op)?,
            Change::Address(op) => hash_op(maps, name::ADDRESSES, op)?,
            Change::Interface(op) => mmap_op(maps, name::INTERFACES, op)?,
            Change::Name(op) => hash_op(maps, name::NAMES, op)?,
            Change::Dns { new, .. } => {
                let mut dns = maps.hash_mut::<u32, DnsSettings>(name::DNS)?;
                if **new == DnsSettings::default() {
                    dns.remove(&0).context("updating DNS")?
                } else {
                    dns.insert(0, **new, 0).context("updating DNS")?
                }
            }
            Change::Target(op) => array_op(maps, name::TARGETS, op)?,
            Change::Limits(op) => array_op(maps, name::LIMITS, op)?,
            Change::Policy(op) => {
                // A slot given to a new endpoint starts counting afresh (the old one's
                // flows no longer count against it, see the data path's `limits`).
                if let Op::Put { key, old, new } = op
                    && old.is_none_or(|old| old >> 32 != new >> 32)
                {
                    afresh(maps, *key)?;
                }
                mmap_op(maps, name::POLICIES, op)?
            }
            Change::Port { index, port, open } => maps
                .mmap(name::PORTS)?
                .set_bit(*index, *port as usize, *open)
                .with_context(|| format!("PORTS[{index}]"))?,
            Change::Settings { new, .. } => maps
                .hash_mut::<u32, Settings>(name::SETTINGS)?
                .insert(0, **new, 0)
                .context("updating SETTINGS")?,
            Change::Ring {
                ring, size, slots, ..
            } => {
                let rings = maps.mmap(name::RINGS)?;
                for &(slot, target) in slots {
                    rings
                        .write(ring * size + slot, &target)
                        .with_context(|| format!("RINGS[{ring}][{slot}]"))?;
                }
            }
            Change::SecurityGroup(op) => {
                let mut trie =
                    maps.trie_mut::<SourcePrefix, SecurityGroup>(name::SECURITY_GROUPS)?;
                match op {
                    Op::Put {
                        key: (len, prefix),
                        new,
                        ..
                    } => trie.insert(&Key::new(*len, *prefix), new, 0)?,
                    Op::Remove {
                        key: (len, prefix), ..
                    } => trie.remove(&Key::new(*len, *prefix))?,
                }
            }
        }
    }
    Ok(())
}

/// Zeroes slot `slot`'s usage and counters for a new endpoint.
fn afresh(maps: &mut Maps, slot: u32) -> Result<()> {
    maps.array_mut::<Usage>(name::USAGE)?
        .set(slot, Usage::default(), 0)
        .with_context(|| format!("USAGE[{slot}]"))?;
    let mut stats = maps.per_cpu_array_mut::<Count>(name::STATS)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    for counter in 0..counter::COUNT {
        let zero = PerCpuValues::try_from(vec![Count::default(); cpus])?;
        stats
            .set(counter::index(slot, counter), zero, 0)
            .with_context(|| format!("STATS of slot {slot}"))?;
    }
    Ok(())
}

fn hash_op<K: Pod, V: Pod>(maps: &mut Maps, name: &str, op: &Op<K, V>) -> Result<()> {
    let mut hash = maps.hash_mut::<K, V>(name)?;
    match op {
        Op::Put { key, new, .. } => hash.insert(key, new, 0),
        Op::Remove { key, .. } => hash.remove(key),
    }
    .with_context(|| format!("updating {name}"))
}

/// Array entries that go are zeroed.
fn array_op<V: Pod + Default>(maps: &mut Maps, name: &str, op: &Op<u32, V>) -> Result<()> {
    let (index, value) = match op {
        Op::Put { key, new, .. } => (*key, *new),
        Op::Remove { key, .. } => (*key, V::default()),
    };
    maps.array_mut::<V>(name)?
        .set(index, value, 0)
        .with_context(|| format!("{name}[{index}]"))
}

/// The same for an mmapped array: written a word at a time.
fn mmap_op<V: Pod + Default>(maps: &mut Maps, name: &str, op: &Op<u32, V>) -> Result<()> {
    let (index, value) = match op {
        Op::Put { key, new, .. } => (*key, *new),
        Op::Remove { key, .. } => (*key, V::default()),
    };
    maps.mmap(name)?
        .write(index, &value)
        .with_context(|| format!("{name}[{index}]"))
}

/// What the maps hold now. Arrays are read at the indices `ids` knows (and the whole
/// interface and port tables); all-zero entries count as absent.
pub fn read(maps: &Maps, ids: &Ids) -> Result<Contents> {
    let mut contents = Contents {
        endpoints: read_hash::<EndpointKey, EndpointRef>(maps, name::ENDPOINTS)?,
        addresses: read_hash::<AddressKey, Address>(maps, name::ADDRESSES)?,
        settings: maps
            .hash::<u32, Settings>(name::SETTINGS)?
            .get(&0, 0)
            .unwrap_or_default(),
        names: read_hash::<NameKey, Name>(maps, name::NAMES)?,
        dns: maps
            .hash::<u32, DnsSettings>(name::DNS)?
            .get(&0, 0)
            .unwrap_or_default(),
        ..Contents::default()
    };
    for entry in maps
        .trie::<SourcePrefix, SecurityGroup>(name::SECURITY_GROUPS)?
        .iter()
    {
        let (key, value) = entry?;
        contents
            .security_groups
            .insert((key.prefix_len(), key.data()), value);
    }
    let interfaces = maps.mmap(name::INTERFACES)?;
    for ifindex in 0..MAX_IFINDEX.min(interfaces.entries()) {
        let interface: Interface = interfaces.read(ifindex)?;
        if interface != Interface::default() {
            contents.interfaces.insert(ifindex, interface);
        }
    }
    let ports = maps.mmap(name::PORTS)?;
    for &network in ids.networks.values() {
        for index in [PROTO_TCP, PROTO_UDP].map(|proto| ports_index(network, proto)) {
            for port in 0..=u16::MAX {
                if ports.bit(index, port as usize)? {
                    contents.ports.insert((index, port));
                }
            }
        }
    }
    let policies = maps.mmap(name::POLICIES)?;
    let limits = maps.array::<Limits>(name::LIMITS)?;
    for &slot in ids.endpoints.values() {
        let word: u64 = policies.read(slot)?;
        if word != 0 {
            contents.policies.insert(slot, word);
        }
        let limit = limits.get(&slot, 0)?;
        if limit != Limits::default() {
            contents.limits.insert(slot, limit);
        }
    }
    let targets = maps.array::<Target>(name::TARGETS)?;
    for &i in ids.targets.values() {
        let entry = targets.get(&i, 0)?;
        if entry != Target::default() {
            contents.targets.insert(i, entry);
        }
    }
    let size = contents.settings.ring_size;
    if size > 0 {
        let rings = maps.mmap(name::RINGS)?;
        for &ring in ids.rings.values() {
            let slots = (0..size)
                .map(|slot| rings.read::<u32>(ring * size + slot))
                .collect::<Result<Vec<u32>>>()?;
            if slots.iter().any(|&s| s != 0) {
                contents.rings.insert(ring, slots);
            }
        }
    }
    Ok(contents)
}

fn read_hash<K: Pod + Ord, V: Pod>(maps: &Maps, name: &str) -> Result<BTreeMap<K, V>> {
    maps.hash::<K, V>(name)?
        .iter()
        .map(|entry| entry.map_err(Into::into))
        .collect()
}
