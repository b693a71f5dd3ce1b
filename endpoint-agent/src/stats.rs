//! Counters: the program's per-CPU `STATS` array, summed over CPUs.

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray};
use endpoint_common::counter::{self, Count};

use crate::apply::Maps;

pub struct Counters {
    /// Indexed like `STATS`: `endpoint * counter::COUNT + counter`.
    counts: Vec<Count>,
}

impl Counters {
    pub fn read(ebpf: &impl Maps) -> Result<Self> {
        let map = ebpf.map("STATS").context("no map STATS")?;
        let stats: PerCpuArray<&MapData, Count> = PerCpuArray::try_from(map)?;
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
