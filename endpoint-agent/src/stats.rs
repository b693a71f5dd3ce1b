//! Counters: the program's per-CPU `STATS` array, summed over CPUs.

use anyhow::Result;
use endpoint_common::{
    counter::{self, Count},
    maps::name,
};

use crate::{expiry::lookup_batch, maps::Maps};

pub struct Counters {
    /// Indexed like `STATS`: `endpoint * counter::COUNT + counter`.
    counts: Vec<Count>,
}

impl Counters {
    /// Every endpoint slot's counters.
    pub fn read(maps: &Maps) -> Result<Self> {
        let stats = maps.per_cpu_array::<Count>(name::STATS)?;
        Self::read_slots(maps, stats.len() / counter::COUNT)
    }

    /// The counters of endpoint slots below `slots`: one system call per thousand
    /// counters ([`lookup_batch`]), where one lookup each would take a second at ten
    /// thousand endpoints.
    pub fn read_slots(maps: &Maps, slots: u32) -> Result<Self> {
        const CHUNK: u32 = 1024;
        let map = maps.data(name::STATS)?;
        let length = maps.per_cpu_array::<Count>(name::STATS)?.len();
        let wanted = (slots * counter::COUNT).min(length);
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut keys = vec![0u8; CHUNK as usize * size_of::<u32>()];
        // Per-CPU values come one per possible CPU, each in 8-byte steps (16 here).
        let mut values = vec![Count::default(); CHUNK as usize * cpus];
        let mut counts = Vec::with_capacity(wanted as usize);
        let mut cursor = None;
        while (counts.len() as u32) < wanted {
            let count = CHUNK.min(wanted - counts.len() as u32);
            // SAFETY: `Count` is plain data; the buffer is viewed as its bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(
                    values.as_mut_ptr().cast::<u8>(),
                    size_of_val(values.as_slice()),
                )
            };
            let (read, next) = lookup_batch(map, cursor, &mut keys, bytes, count)?;
            for per_cpu in values.chunks(cpus).take(read) {
                counts.push(per_cpu.iter().fold(Count::default(), |sum, c| Count {
                    packets: sum.packets + c.packets,
                    bytes: sum.bytes + c.bytes,
                }));
            }
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(Self { counts })
    }

    /// One endpoint's count under one counter (endpoint 0: blamed on none).
    pub fn get(&self, endpoint: u32, counter: u32) -> Count {
        self.counts
            .get(counter::index(endpoint, counter) as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Packets and bytes under `counter`, over all endpoints.
    pub fn total(&self, counter: u32) -> Count {
        self.counts
            .iter()
            .skip(counter as usize)
            .step_by(counter::COUNT as usize)
            .fold(Count::default(), |sum, c| Count {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            })
    }

    /// Packets under `counter`, over all endpoints.
    pub fn packets(&self, counter: u32) -> u64 {
        self.total(counter).packets
    }
}
