//! Expiry: what leaves the flow table on its own. The decision is the kernel's (the
//! data path's `expire` program, where packets cannot race it); the agent runs it every
//! second, and feeds it the connections its scan of the table found idle: a slice of
//! the table per round, so that a pass over a full table is spread over [`PASS`] rounds
//! instead of copying it all at once.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::MapData,
    programs::{TestRun, TestRunOptions, Xdp},
};
use endpoint_common::maps::{
    EXPIRE_KEYS, Flow, FlowKey, PROTO_UDP, PROVIDER_NETWORK, Policy, name, tcp,
};

use crate::{desired::Contents, maps::Maps};

/// Rounds a full pass over the table takes (about as many seconds).
pub const PASS: u32 = 30;
/// Keys one run of the program takes.
const KEYS_PER_RUN: usize = EXPIRE_KEYS as usize;
/// The program's frame header (see the data path's `expire::Header`).
const HEADER: usize = 16;
/// Runs over the queues in one round, at most (a thousand runs remove up to 256,000
/// connections, in tens of milliseconds).
const MAX_QUEUE_RUNS: usize = 1000;

/// Nanoseconds on the monotonic clock, as `bpf_ktime_get_coarse_ns` counts them.
pub fn now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain libc call filling `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Seconds on the same clock.
pub fn now_s() -> u32 {
    (now_ns() / 1_000_000_000) as u32
}

/// Where the scan is in the table, and what it counted on its way.
#[derive(Default)]
pub struct Expiry {
    cursor: Option<u32>,
    counting: Census,
    /// What the last whole pass counted.
    counted: Census,
}

/// What a whole pass over the table found: its fill, and the NAT ports in use towards
/// each target, counted as the scan goes (no read of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Whole passes so far (this one's number).
    pub pass: u64,
    pub entries: u64,
    /// (NAT address, target, protocol) → NAT ports held (connections and TIME_WAIT
    /// reservations).
    pub nat_ports: BTreeMap<(IpAddr, SocketAddr, u8), u64>,
}

impl Census {
    fn count(&mut self, entries: &[(FlowKey, Flow)]) {
        self.entries += entries.len() as u64;
        for (key, _) in entries
            .iter()
            .filter(|(k, _)| k.network() == PROVIDER_NETWORK)
        {
            let nat = key.dst.ip(key.family());
            let target = key.src.socket(key.family(), key.src_port_be);
            *self
                .nat_ports
                .entry((nat, target, key.proto()))
                .or_default() += 1;
        }
    }
}

impl Expiry {
    /// One round at `now_ns` (the monotonic clock; tests run ahead of it): the program
    /// looks at its queues (handshakes that never completed, closed connections that
    /// have lingered) and at what the next slice of the table holds that may have run
    /// out. Returns how many connections went.
    pub fn round(
        &mut self,
        program: &Xdp,
        maps: &Maps,
        contents: &Contents,
        now_ns: u64,
    ) -> Result<usize> {
        let flows = maps.data(name::FLOWS)?;
        let per_round = (flows.info()?.max_entries() / PASS).max(1024) as usize;
        let (entries, cursor) = read_batch::<FlowKey, Flow>(flows, self.cursor, per_round)?;
        self.cursor = cursor;
        self.counting.count(&entries);
        if cursor.is_none() {
            let pass = self.counting.pass + 1;
            self.counted = std::mem::take(&mut self.counting);
            self.counted.pass = pass;
            self.counting.pass = pass;
        }
        let now = (now_ns / 1_000_000_000) as u32;
        let candidates: Vec<FlowKey> = entries
            .iter()
            .filter(|(key, flow)| idle(key, flow, contents, now))
            .map(|(key, _)| *key)
            .collect();
        // The queues first, as long as runs find due entries there (one run looks at
        // 128 of each): a flood's handshakes all go once their time is up.
        let mut removed = 0;
        for _ in 0..MAX_QUEUE_RUNS {
            let now_removed = run(program, &[], now_ns)?;
            removed += now_removed;
            if now_removed == 0 {
                break;
            }
        }
        for chunk in candidates.chunks(KEYS_PER_RUN) {
            removed += run(program, chunk, now_ns)?;
        }
        Ok(removed)
    }

    /// What the last whole pass counted (empty before the first).
    pub fn census(&self) -> &Census {
        &self.counted
    }
}

/// Whether an entry may have run out (the program decides).
fn idle(key: &FlowKey, flow: &Flow, contents: &Contents, now: u32) -> bool {
    let idle_for = u64::from(now).wrapping_sub(flow.last_seen_s);
    let time_wait = contents.settings.time_wait_s;
    // Both directions' keys carry the protocol: a UDP flow has its own idle limit.
    let timeout = contents.limits.get(&flow.slot).map_or(time_wait, |l| {
        if key.proto() == PROTO_UDP {
            l.udp_idle_timeout_s
        } else {
            l.idle_timeout_s
        }
    });
    if key.network() == PROVIDER_NETWORK {
        // A NAT port reservation, or a reply entry whose connection may be missing.
        let limit = if flow.tcp & tcp::RESERVED != 0 {
            time_wait
        } else {
            timeout
        };
        return idle_for > u64::from(limit);
    }
    let current = contents.policies.get(&flow.slot).copied().unwrap_or(0);
    let gone = Policy::of(current).uid != Policy::of(flow.policy).uid;
    gone || idle_for > u64::from(timeout)
}

/// Runs the program with `keys` at `now_ns`; returns how many connections it removed.
pub fn run(program: &Xdp, keys: &[FlowKey], now_ns: u64) -> Result<usize> {
    let mut frame = vec![0u8; HEADER + size_of_val(keys)];
    frame[..8].copy_from_slice(&now_ns.to_ne_bytes());
    frame[8..12].copy_from_slice(&(keys.len() as u32).to_ne_bytes());
    for (i, key) in keys.iter().enumerate() {
        let at = HEADER + i * size_of::<FlowKey>();
        // SAFETY: `FlowKey` is plain data.
        let bytes = unsafe {
            std::slice::from_raw_parts((key as *const FlowKey).cast::<u8>(), size_of::<FlowKey>())
        };
        frame[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let mut out = vec![0u8; frame.len()];
    program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .context("running the expire program")?;
    Ok(u32::from_ne_bytes(out[12..16].try_into().expect("4 bytes")) as usize)
}

/// Entries read, and where the next read goes on from (None: the end was reached, the
/// next read starts over).
pub type Batch<K, V> = (Vec<(K, V)>, Option<u32>);

/// At least `limit` entries of a map (all that are left if fewer) from `cursor` (None:
/// the start) on, a thousand per system call ([`lookup_batch`]).
pub fn read_batch<K: Pod, V: Pod>(
    map: &MapData,
    cursor: Option<u32>,
    limit: usize,
) -> Result<Batch<K, V>> {
    const CHUNK: usize = 1024;
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    let mut entries = Vec::new();
    let mut cursor = cursor;
    loop {
        let (count, next) = lookup_batch(map, cursor, &mut keys, &mut values, CHUNK as u32)?;
        for i in 0..count {
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
        match next {
            None => return Ok((entries, None)),
            Some(next) if entries.len() >= limit => return Ok((entries, Some(next))),
            Some(next) => cursor = Some(next),
        }
    }
}

/// One BPF_MAP_LOOKUP_BATCH (aya 0.14 has no batch API): up to `count` entries from
/// `cursor` (None: the start; a hash map's cursor is a bucket, an array's an index)
/// into `keys` and `values`, which hold `count` each (a per-CPU map's value: one per
/// possible CPU). Returns how many it wrote, and where to go on from (None: the end).
pub fn lookup_batch(
    map: &MapData,
    cursor: Option<u32>,
    keys: &mut [u8],
    values: &mut [u8],
    count: u32,
) -> Result<(usize, Option<u32>)> {
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct Attr {
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
    let info = map.info()?;
    anyhow::ensure!(
        keys.len() >= count as usize * info.key_size() as usize,
        "lookup_batch: keys buffer too small"
    );
    let (start, mut next) = (cursor.unwrap_or(0), 0u32);
    let mut attr = Attr {
        in_batch: match cursor {
            Some(_) => &start as *const u32 as u64,
            None => 0,
        },
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the buffers hold `count` keys and values (the values' size is the
    // caller's to get right for per-CPU maps); the kernel writes `attr.count` of each.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut Attr,
            size_of::<Attr>() as libc::c_uint,
        )
    };
    let error = std::io::Error::last_os_error();
    if result < 0 {
        // ENOENT: the whole map has been read.
        if error.raw_os_error() == Some(libc::ENOENT) {
            return Ok((attr.count as usize, None));
        }
        return Err(error).context("reading a map (BPF_MAP_LOOKUP_BATCH)");
    }
    Ok((attr.count as usize, Some(next)))
}

/// Every entry of a hash map.
pub fn read_all<K: Pod, V: Pod>(map: &MapData) -> Result<Vec<(K, V)>> {
    Ok(read_batch(map, None, usize::MAX)?.0)
}

#[cfg(test)]
mod tests {
    use endpoint_common::maps::{FAMILY_IPV4, Limits, PROTO_TCP};

    use super::*;

    /// A UDP flow may run out after its endpoint's UDP idle timeout, a TCP connection
    /// only after the TCP one, in both directions.
    #[test]
    fn udp_flows_use_the_udp_idle_timeout() {
        let mut contents = Contents::default();
        let limits = Limits {
            idle_timeout_s: 350,
            udp_idle_timeout_s: 120,
            ..Limits::default()
        };
        let policy = Policy {
            uid: 9,
            ..Policy::default()
        }
        .word();
        contents.limits.insert(1, limits);
        contents.policies.insert(1, policy);
        let flow = Flow {
            slot: 1,
            policy,
            last_seen_s: 1000,
            ..Flow::default()
        };
        for network in [1, PROVIDER_NETWORK] {
            let idle_at = |proto, now| {
                let key = FlowKey {
                    scope: FlowKey::scope(network, FAMILY_IPV4, proto),
                    ..FlowKey::default()
                };
                idle(&key, &flow, &contents, now)
            };
            assert!(!idle_at(PROTO_UDP, 1120));
            assert!(idle_at(PROTO_UDP, 1121));
            assert!(!idle_at(PROTO_TCP, 1121));
            assert!(idle_at(PROTO_TCP, 1351));
        }
    }
}
