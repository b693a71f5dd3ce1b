//! Expiry: connections idle longer than their service's `idle_timeout_seconds` (or
//! 10 s after a FIN or RST) leave the flow table, both directions at once, and their
//! NAT ports become free. The program stamps each direction with the monotonic second
//! it was last used; the agent compares with the same clock.

use std::collections::BTreeMap;

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
};
use endpoint_common::maps::{Flow, FlowKey, PROVIDER_NETWORK, flow_flag};

use crate::{apply::Maps, config::Config, ids::Ids};

/// How long a connection that saw a FIN or RST lingers (for the last ACKs).
pub const CLOSING_SECONDS: u32 = 10;

/// Seconds on the monotonic clock, as `bpf_ktime_get_coarse_ns` counts them.
pub fn now_s() -> u32 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain libc call filling `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u32
}

/// The reply-direction key of a consumer-to-target entry.
pub fn reply_key(key: &FlowKey, flow: &Flow) -> FlowKey {
    FlowKey {
        network: PROVIDER_NETWORK,
        src: flow.dst,
        dst: flow.src,
        src_port_be: flow.dst_port_be,
        dst_port_be: flow.src_port_be,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// Removes expired connections; returns how many.
pub fn expire(maps: &mut impl Maps, config: &Config, ids: &Ids, now: u32) -> Result<usize> {
    // Endpoint id → its service's idle timeout.
    let timeouts: BTreeMap<u32, u32> = config
        .endpoints
        .iter()
        .filter_map(|e| {
            let service = config.services.iter().find(|s| s.name == e.service)?;
            Some((*ids.endpoints.get(&e.id)?, service.idle_timeout_seconds))
        })
        .collect();
    let default = config
        .services
        .iter()
        .map(|s| s.idle_timeout_seconds)
        .max()
        .unwrap_or(350);
    let map = maps.map_mut("FLOWS").context("no map FLOWS")?;
    let entries: BTreeMap<FlowKey, Flow> = read_all(map)?.into_iter().collect();
    let mut flows: HashMap<&mut MapData, FlowKey, Flow> = HashMap::try_from(map)?;
    let mut doomed = Vec::new();
    for (key, flow) in &entries {
        let timeout = timeouts.get(&flow.endpoint).copied().unwrap_or(default);
        let pair = if key.network == PROVIDER_NETWORK {
            // A reply entry whose forward entry is gone (evicted) lives on its own.
            None
        } else {
            let reply = reply_key(key, flow);
            Some((reply, entries.get(&reply)))
        };
        let (last, closing) = match pair {
            Some((_, Some(back))) => (
                flow.last_seen_s.max(back.last_seen_s),
                (flow.flags | back.flags) & flow_flag::CLOSING != 0,
            ),
            _ => (flow.last_seen_s, flow.flags & flow_flag::CLOSING != 0),
        };
        let limit = if closing { CLOSING_SECONDS } else { timeout };
        if now.saturating_sub(last) > limit {
            doomed.push(*key);
            if let Some((reply, _)) = pair {
                doomed.push(reply);
            }
        }
    }
    doomed.sort_unstable();
    doomed.dedup();
    for key in &doomed {
        let _ = flows.remove(key);
    }
    Ok(doomed.len() / 2 + doomed.len() % 2)
}

/// Removes every flow of the given endpoints (those revoked with `reset`): the target
/// side's packets then find no flow and are dropped.
pub fn cut(maps: &mut impl Maps, endpoints: &[u32]) -> Result<usize> {
    if endpoints.is_empty() {
        return Ok(0);
    }
    let map = maps.map_mut("FLOWS").context("no map FLOWS")?;
    let doomed: Vec<FlowKey> = read_all::<FlowKey, Flow>(map)?
        .into_iter()
        .filter(|(_, flow)| endpoints.contains(&flow.endpoint))
        .map(|(key, _)| key)
        .collect();
    let mut flows: HashMap<&mut MapData, FlowKey, Flow> = HashMap::try_from(map)?;
    for key in &doomed {
        let _ = flows.remove(key);
    }
    Ok(doomed.len())
}

/// Every entry of a hash map, read with BPF_MAP_LOOKUP_BATCH: one system call per
/// thousand entries, where iterating takes two per entry (aya 0.14 has no batch API).
fn read_all<K: Pod, V: Pod>(map: &Map) -> Result<Vec<(K, V)>> {
    let (Map::HashMap(map) | Map::LruHashMap(map)) = map else {
        anyhow::bail!("not a hash map");
    };
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
    const CHUNK: usize = 1024;
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    let mut entries = Vec::new();
    // The hash map's cursor is a bucket number.
    let (mut cursor, mut next, mut first) = (0u32, 0u32, true);
    loop {
        let mut attr = Batch {
            in_batch: if first {
                0
            } else {
                &cursor as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the buffers hold CHUNK keys and values; the kernel writes `count`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut Batch,
                size_of::<Batch>() as libc::c_uint,
            )
        };
        let error = std::io::Error::last_os_error();
        for i in 0..attr.count as usize {
            // SAFETY: the kernel filled `count` whole keys and values.
            unsafe {
                let key = keys.as_ptr().add(i * key_size).cast::<K>().read_unaligned();
                let value = values
                    .as_ptr()
                    .add(i * value_size)
                    .cast::<V>()
                    .read_unaligned();
                entries.push((key, value));
            }
        }
        if result < 0 {
            // ENOENT: the whole map has been read.
            if error.raw_os_error() == Some(libc::ENOENT) {
                return Ok(entries);
            }
            return Err(error).context("reading the flow table (BPF_MAP_LOOKUP_BATCH)");
        }
        (cursor, first) = (next, false);
    }
}
