//! Counters: the program's per-CPU `STATS` array, summed over CPUs.

use anyhow::Result;
use endpoint_common::{
    counter::{self, Count},
    maps::name,
};

use crate::maps::Maps;

pub struct Counters {
    /// Indexed like `STATS`: `endpoint * counter::COUNT + counter`.
    counts: Vec<Count>,
}

impl Counters {
    pub fn read(maps: &Maps) -> Result<Self> {
        let stats = maps.per_cpu_array::<Count>(name::STATS)?;
        let counts = (0..stats.len())
            .map(|i| {
                let per_cpu = stats.get(&i, 0)?;
                Ok(per_cpu.iter().fold(Count::default(), |sum, c| Count {
                    packets: sum.packets + c.packets,
                    bytes: sum.bytes + c.bytes,
                }))
            })
            .collect::<Result<_>>()?;
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
