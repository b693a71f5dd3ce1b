//! Apply: carry a plan out on the real maps, change by change in the plan's (safe)
//! order; and read the maps back into a [`State`], which is what a restarted agent
//! diffs its config against.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key},
};
use endpoint_common::maps::{
    Address, AddressKey, Config, Endpoint, EndpointKey, Interface, NatAddress, SecurityGroup,
    SourcePrefix, Target,
};

use crate::{
    desired::State,
    ids::Ids,
    plan::{Change, Op, Plan},
};

/// Where the maps come from: the loaded program, or the pins of a running instance.
pub trait Maps {
    fn map(&self, name: &str) -> Option<&Map>;
    fn map_mut(&mut self, name: &str) -> Option<&mut Map>;
}

impl Maps for Ebpf {
    fn map(&self, name: &str) -> Option<&Map> {
        Ebpf::map(self, name)
    }

    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        Ebpf::map_mut(self, name)
    }
}

/// An instance's maps, opened from their pins (for `plan` and `status`).
pub struct Pinned(BTreeMap<String, Map>);

impl Pinned {
    pub fn open(dir: &Path, names: &[&str]) -> Result<Self> {
        let mut maps = BTreeMap::new();
        for name in names {
            let path = dir.join(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            maps.insert(name.to_string(), Map::from_map_data(data)?);
        }
        Ok(Self(maps))
    }
}

impl Maps for Pinned {
    fn map(&self, name: &str) -> Option<&Map> {
        self.0.get(name)
    }

    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.0.get_mut(name)
    }
}

pub fn apply(ebpf: &mut impl Maps, plan: &Plan) -> Result<()> {
    for change in &plan.changes {
        match change {
            Change::Endpoint(op) => hash_op(ebpf, "ENDPOINTS", op)?,
            Change::Address(op) => hash_op(ebpf, "ADDRESSES", op)?,
            Change::Interface(op) => hash_op(ebpf, "INTERFACES", op)?,
            Change::Target(op) => array_op(ebpf, "TARGETS", op)?,
            Change::Nat(op) => array_op(ebpf, "NAT", op)?,
            Change::Config { new, .. } => array::<Config>(ebpf, "CONFIG")?.set(0, new, 0)?,
            Change::Ring {
                ring, size, slots, ..
            } => {
                let mut rings = array::<u32>(ebpf, "RINGS")?;
                for &(slot, target) in slots {
                    rings
                        .set(ring * size + slot, target, 0)
                        .with_context(|| format!("RINGS[{ring}][{slot}]"))?;
                }
            }
            Change::SecurityGroup(op) => {
                let map = ebpf
                    .map_mut("SECURITY_GROUPS")
                    .context("no map SECURITY_GROUPS")?;
                let mut trie: LpmTrie<&mut MapData, SourcePrefix, SecurityGroup> =
                    LpmTrie::try_from(map)?;
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

fn array<'a, V: Pod>(ebpf: &'a mut impl Maps, name: &str) -> Result<Array<&'a mut MapData, V>> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("no map {name}"))?;
    Ok(Array::try_from(map)?)
}

fn hash_op<K: Pod, V: Pod>(ebpf: &mut impl Maps, name: &str, op: &Op<K, V>) -> Result<()> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("no map {name}"))?;
    let mut hash: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
    match op {
        Op::Put { key, new, .. } => hash.insert(key, new, 0),
        Op::Remove { key, .. } => hash.remove(key),
    }
    .with_context(|| format!("updating {name}"))
}

/// Array entries that go are zeroed.
fn array_op<V: Pod + Default>(ebpf: &mut impl Maps, name: &str, op: &Op<u32, V>) -> Result<()> {
    let (index, value) = match op {
        Op::Put { key, new, .. } => (*key, *new),
        Op::Remove { key, .. } => (*key, V::default()),
    };
    array::<V>(ebpf, name)?
        .set(index, value, 0)
        .with_context(|| format!("{name}[{index}]"))
}

/// What the maps hold now. Arrays are read at the indices `ids` knows (and NAT in
/// full); all-zero entries count as absent.
pub fn read(ebpf: &impl Maps, ids: &Ids) -> Result<State> {
    let mut state = State {
        interfaces: read_hash::<u32, Interface>(ebpf, "INTERFACES")?,
        endpoints: read_hash::<EndpointKey, Endpoint>(ebpf, "ENDPOINTS")?,
        addresses: read_hash::<AddressKey, Address>(ebpf, "ADDRESSES")?,
        ..State::default()
    };
    let map = ebpf
        .map("SECURITY_GROUPS")
        .context("no map SECURITY_GROUPS")?;
    let trie: LpmTrie<&MapData, SourcePrefix, SecurityGroup> = LpmTrie::try_from(map)?;
    for entry in trie.iter() {
        let (key, value) = entry?;
        state
            .security_groups
            .insert((key.prefix_len(), key.data()), value);
    }
    let map = ebpf.map("CONFIG").context("no map CONFIG")?;
    let config: Array<&MapData, Config> = Array::try_from(map)?;
    state.config = config.get(&0, 0)?;

    let map = ebpf.map("NAT").context("no map NAT")?;
    let nat: Array<&MapData, NatAddress> = Array::try_from(map)?;
    for i in 0..nat.len() {
        let entry = nat.get(&i, 0)?;
        if entry != NatAddress::default() {
            state.nat.insert(i, entry);
        }
    }
    let map = ebpf.map("TARGETS").context("no map TARGETS")?;
    let targets: Array<&MapData, Target> = Array::try_from(map)?;
    for &i in ids.targets.values() {
        let entry = targets.get(&i, 0)?;
        if entry != Target::default() {
            state.targets.insert(i, entry);
        }
    }
    let size = state.config.ring_size;
    if size > 0 {
        let map = ebpf.map("RINGS").context("no map RINGS")?;
        let rings: Array<&MapData, u32> = Array::try_from(map)?;
        for &ring in ids.rings.values() {
            let slots = (0..size)
                .map(|slot| rings.get(&(ring * size + slot), 0))
                .collect::<Result<Vec<u32>, _>>()?;
            if slots.iter().any(|&s| s != 0) {
                state.rings.insert(ring, slots);
            }
        }
    }
    Ok(state)
}

fn read_hash<K: Pod + Ord, V: Pod>(ebpf: &impl Maps, name: &str) -> Result<BTreeMap<K, V>> {
    let map = ebpf.map(name).with_context(|| format!("no map {name}"))?;
    let hash: HashMap<&MapData, K, V> = HashMap::try_from(map)?;
    hash.iter().map(|entry| entry.map_err(Into::into)).collect()
}
