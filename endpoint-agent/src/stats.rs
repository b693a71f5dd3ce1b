//! Counters: the program's per-CPU `STATS` array, summed over CPUs.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result};
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
    /// Every endpoint slot's counters.
    pub fn read(maps: &Maps) -> Result<Self> {
        let stats = maps.per_cpu_array::<Count>(name::STATS)?;
        Self::read_slots(maps, stats.len() / counter::COUNT)
    }

    /// The counters of endpoint slots below `slots`: one system call per thousand
    /// counters (BPF_MAP_LOOKUP_BATCH), where one lookup each would take a second at
    /// ten thousand endpoints.
    pub fn read_slots(maps: &Maps, slots: u32) -> Result<Self> {
        /// The `batch` member of `union bpf_attr`.
        #[repr(C)]
        struct Batch {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
        const CHUNK: u32 = 1024;
        let map = maps.data(name::STATS)?;
        let length = maps.per_cpu_array::<Count>(name::STATS)?.len();
        let wanted = (slots * counter::COUNT).min(length);
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut keys = vec![0u32; CHUNK as usize];
        // Per-CPU values come one per possible CPU, each in 8-byte steps (16 here).
        let mut values = vec![Count::default(); CHUNK as usize * cpus];
        let mut counts = Vec::with_capacity(wanted as usize);
        let (mut cursor, mut next) = (0u32, 0u32);
        while (counts.len() as u32) < wanted {
            let count = CHUNK.min(wanted - counts.len() as u32);
            let mut attr = Batch {
                in_batch: if counts.is_empty() {
                    0
                } else {
                    &cursor as *const u32 as u64
                },
                out_batch: &mut next as *mut u32 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count,
                map_fd: map.fd().as_fd().as_raw_fd() as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: the buffers hold CHUNK keys and CHUNK values of every CPU; the
            // kernel writes `count` of each.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut Batch,
                    size_of::<Batch>() as libc::c_uint,
                )
            };
            let error = std::io::Error::last_os_error();
            for per_cpu in values.chunks(cpus).take(attr.count as usize) {
                counts.push(per_cpu.iter().fold(Count::default(), |sum, c| Count {
                    packets: sum.packets + c.packets,
                    bytes: sum.bytes + c.bytes,
                }));
            }
            if result < 0 {
                // ENOENT: the end of the array.
                if error.raw_os_error() == Some(libc::ENOENT) {
                    break;
                }
                return Err(error).context("reading the counters (BPF_MAP_LOOKUP_BATCH)");
            }
            cursor = next;
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
