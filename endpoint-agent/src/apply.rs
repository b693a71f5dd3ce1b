//! Apply: write a desired state into the maps, in an order that never exposes a
//! half-configured endpoint — targets and rings first, then settings and addresses,
//! endpoints, and interfaces last (until its interface entry exists, the program passes
//! every packet of an interface untouched).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData},
};

use crate::desired::Desired;

/// Fills freshly loaded (empty) maps with `desired`.
pub fn fill(ebpf: &mut Ebpf, desired: &Desired) -> Result<()> {
    set_array(ebpf, "TARGETS", &desired.targets)?;
    set_array(ebpf, "RINGS", &desired.rings)?;
    set_array(ebpf, "NAT", &desired.nat)?;
    set_array(ebpf, "CONFIG", &[desired.config])?;
    insert_all(ebpf, "ADDRESSES", &desired.addresses)?;
    insert_all(ebpf, "ENDPOINTS", &desired.endpoints)?;
    insert_all(ebpf, "INTERFACES", &desired.interfaces)?;
    Ok(())
}

fn set_array<V: Pod>(ebpf: &mut Ebpf, name: &str, values: &[V]) -> Result<()> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("no map {name}"))?;
    let mut array: Array<&mut MapData, V> = Array::try_from(map)?;
    for (i, value) in values.iter().enumerate() {
        array
            .set(i as u32, value, 0)
            .with_context(|| format!("{name}[{i}]"))?;
    }
    Ok(())
}

fn insert_all<K: Pod + Ord, V: Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: &BTreeMap<K, V>,
) -> Result<()> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("no map {name}"))?;
    let mut hash: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
    for (key, value) in entries {
        hash.insert(key, value, 0)
            .with_context(|| format!("{name}: inserting"))?;
    }
    Ok(())
}
