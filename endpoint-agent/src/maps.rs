//! Maps: the one owner of the data path's maps in the agent — taken from a loaded
//! program or opened from an instance's pins, each checked against the registry
//! (`endpoint_common::maps::MAPS`: kind, key and value size) — with typed access to
//! them. Arrays the data path reads while the agent changes them are written through an
//! mmap, a word at a time with single aligned stores, never torn.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, ProgramArray},
};
use endpoint_common::maps::{self as layout, MAPS};

/// The data path's maps.
pub struct Maps {
    maps: BTreeMap<&'static str, Map>,
    mmaps: BTreeMap<&'static str, Mmap>,
}

impl Maps {
    /// Takes the registry's maps out of a loaded object (the program keeps using them).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut maps = BTreeMap::new();
        for spec in MAPS {
            let map = ebpf
                .take_map(spec.name)
                .with_context(|| format!("the object has no map {}", spec.name))?;
            maps.insert(spec.name, map);
        }
        Self::checked(maps)
    }

    /// Opens the maps pinned in `dir`, refusing any that is not what this agent's layout
    /// expects.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let mut maps = BTreeMap::new();
        for spec in MAPS {
            let path = dir.join(spec.name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            maps.insert(spec.name, Map::from_map_data(data)?);
        }
        Self::checked(maps)
    }

    fn checked(maps: BTreeMap<&'static str, Map>) -> Result<Self> {
        let mut mmaps = BTreeMap::new();
        for spec in MAPS {
            let data = data(&maps[spec.name]);
            check(spec, data)?;
            if spec.mmapped {
                mmaps.insert(spec.name, Mmap::new(data, spec)?);
            }
        }
        Ok(Self { maps, mmaps })
    }

    pub fn map(&self, name: &str) -> Result<&Map> {
        self.maps
            .get(name)
            .with_context(|| format!("no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.maps
            .get_mut(name)
            .with_context(|| format!("no map {name}"))
    }

    /// The kernel's handle on map `name`.
    pub fn data(&self, name: &str) -> Result<&MapData> {
        Ok(data(self.map(name)?))
    }

    pub fn hash<K: Pod, V: Pod>(&self, name: &str) -> Result<HashMap<&MapData, K, V>> {
        Ok(HashMap::try_from(self.map(name)?)?)
    }

    pub fn hash_mut<K: Pod, V: Pod>(&mut self, name: &str) -> Result<HashMap<&mut MapData, K, V>> {
        Ok(HashMap::try_from(self.map_mut(name)?)?)
    }

    pub fn array<V: Pod>(&self, name: &str) -> Result<Array<&MapData, V>> {
        Ok(Array::try_from(self.map(name)?)?)
    }

    pub fn array_mut<V: Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, V>> {
        Ok(Array::try_from(self.map_mut(name)?)?)
    }

    pub fn per_cpu_array<V: Pod>(&self, name: &str) -> Result<PerCpuArray<&MapData, V>> {
        Ok(PerCpuArray::try_from(self.map(name)?)?)
    }

    pub fn per_cpu_array_mut<V: Pod>(
        &mut self,
        name: &str,
    ) -> Result<PerCpuArray<&mut MapData, V>> {
        Ok(PerCpuArray::try_from(self.map_mut(name)?)?)
    }

    pub fn trie<K: Pod, V: Pod>(&self, name: &str) -> Result<LpmTrie<&MapData, K, V>> {
        Ok(LpmTrie::try_from(self.map(name)?)?)
    }

    pub fn trie_mut<K: Pod, V: Pod>(&mut self, name: &str) -> Result<LpmTrie<&mut MapData, K, V>> {
        Ok(LpmTrie::try_from(self.map_mut(name)?)?)
    }

    pub fn program_array_mut(&mut self, name: &str) -> Result<ProgramArray<&mut MapData>> {
        Ok(ProgramArray::try_from(self.map_mut(name)?)?)
    }

    /// The mmapped array `name`.
    pub fn mmap(&self, name: &str) -> Result<&Mmap> {
        self.mmaps
            .get(name)
            .with_context(|| format!("map {name} is not mmapped"))
    }

    /// Pins every map in `dir`.
    pub fn pin(&self, dir: &Path) -> Result<()> {
        for (name, map) in &self.maps {
            let path = dir.join(name);
            if !path.exists() {
                data(map)
                    .pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// The `MapData` inside any of the kinds of map the data path uses.
fn data(map: &Map) -> &MapData {
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LpmTrie(data)
        | Map::PerCpuArray(data)
        | Map::Queue(data)
        | Map::RingBuf(data)
        | Map::LruHashMap(data)
        | Map::ProgramArray(data) => data,
        other => unreachable!("the registry has no map like {other:?}"),
    }
}

/// Refuses a map that is not what the registry says: an agent of another layout made it.
fn check(spec: &layout::Map, data: &MapData) -> Result<()> {
    let info = data.info()?;
    let kind = info.map_type()? as u32;
    let found = (kind, info.key_size(), info.value_size());
    let expected = (spec.kind, spec.key_size, spec.value_size);
    if found != expected {
        bail!(
            "map {} is (kind, key size, value size) {found:?}, this agent's layout {} needs \
             {expected:?}",
            spec.name,
            layout::LAYOUT
        );
    }
    // BPF_F_MMAPABLE
    let mmappable = info.map_flags() & (1 << 10) != 0;
    if spec.mmapped && !mmappable {
        bail!("map {} cannot be mmapped", spec.name);
    }
    Ok(())
}

/// An array map mapped into the agent: elements of the value size rounded up to 8
/// bytes, one after another, shared with the data path.
pub struct Mmap {
    base: *mut AtomicU64,
    len: usize,
    /// 8-byte words per element.
    words: usize,
    entries: u32,
}

// SAFETY: the memory is shared with the kernel anyway; every access is an atomic word.
unsafe impl Send for Mmap {}
unsafe impl Sync for Mmap {}

impl Mmap {
    fn new(data: &MapData, spec: &layout::Map) -> Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let info = data.info()?;
        let words = (spec.value_size as usize).div_ceil(8);
        let page = 4096;
        let len = (info.max_entries() as usize * words * 8).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's fd, as BPF_F_MMAPABLE arrays allow.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmapping map {}", spec.name));
        }
        Ok(Self {
            base: base.cast(),
            len,
            words,
            entries: info.max_entries(),
        })
    }

    fn word(&self, index: u32, word: usize) -> Result<&AtomicU64> {
        if index >= self.entries || word >= self.words {
            bail!(
                "index {index} is beyond the array ({} entries)",
                self.entries
            );
        }
        // SAFETY: within the mapping (checked above), 8-byte aligned.
        Ok(unsafe { &*self.base.add(index as usize * self.words + word) })
    }

    /// Writes element `index`, a word at a time, the first word last: a value whose
    /// first word decides (an interface's network, a policy) is never seen half new.
    pub fn write<V: Pod>(&self, index: u32, value: &V) -> Result<()> {
        let mut words = vec![0u64; self.words];
        // SAFETY: `V` is plain data no larger than the element (checked against the
        // registry when the map was opened).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (value as *const V).cast::<u8>(),
                words.as_mut_ptr().cast::<u8>(),
                size_of::<V>().min(self.words * 8),
            );
        }
        for (i, word) in words.iter().enumerate().rev() {
            self.word(index, i)?.store(*word, Ordering::Release);
        }
        Ok(())
    }

    /// Reads element `index`.
    pub fn read<V: Pod + Default>(&self, index: u32) -> Result<V> {
        let words = (0..self.words)
            .map(|i| Ok(self.word(index, i)?.load(Ordering::Acquire)))
            .collect::<Result<Vec<u64>>>()?;
        let mut value = V::default();
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                words.as_ptr().cast::<u8>(),
                (&mut value as *mut V).cast::<u8>(),
                size_of::<V>().min(self.words * 8),
            );
        }
        Ok(value)
    }

    /// Sets or clears bit `bit` of element `index` (bitmaps: one word changes).
    pub fn set_bit(&self, index: u32, bit: usize, on: bool) -> Result<()> {
        let word = self.word(index, bit / 64)?;
        let mask = 1u64 << (bit % 64);
        if on {
            word.fetch_or(mask, Ordering::AcqRel);
        } else {
            word.fetch_and(!mask, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether bit `bit` of element `index` is set.
    pub fn bit(&self, index: u32, bit: usize) -> Result<bool> {
        Ok(self.word(index, bit / 64)?.load(Ordering::Acquire) & (1 << (bit % 64)) != 0)
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
