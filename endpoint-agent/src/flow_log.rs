//! Connection records (`run --flow-log FILE`): the data path writes one to its `RECORDS`
//! ring buffer as a connection opens and as it ends; the agent appends each to the
//! file as a JSON line — what VPC Flow Logs give PrivateLink users. A record the ring
//! has no room for is lost and counted (`flow_record_dropped`), never the packet.

use std::{io::Write, net::SocketAddr, path::Path, time::SystemTime};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use endpoint_common::maps::{FlowRecord, PROTO_UDP, name, record};
use serde::Serialize;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{ids::Ids, instance::Instance};

pub struct FlowLog {
    ring: AsyncFd<RingBuf<MapData>>,
    out: std::fs::File,
}

/// Packets or bytes, each way.
#[derive(Serialize)]
struct Ways {
    consumer_to_target: u64,
    target_to_consumer: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'static str,
    network: &'a str,
    protocol: &'static str,
    client: SocketAddr,
    endpoint: &'a str,
    endpoint_address: SocketAddr,
    target: SocketAddr,
    nat: SocketAddr,
    /// Ended connections: how long they lived.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<f64>,
    packets: Ways,
    bytes: Ways,
}

impl FlowLog {
    /// Reads the records of `instance`'s data path into `path` (appended to).
    pub fn open(instance: &Instance, path: &Path) -> Result<Self> {
        let map = MapData::from_pin(instance.pins.join(name::RECORDS))
            .context("the data path's connection records")?;
        let ring = RingBuf::try_from(aya::maps::Map::RingBuf(map))?;
        // SAFETY: the ring owns its map's descriptor, which stays open as long as the
        // `AsyncFd` holds the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { ring, out })
    }

    /// Waits until records are there.
    pub async fn ready(&self) -> Result<()> {
        let _ = self.ring.readable().await?;
        Ok(())
    }

    /// Writes every record waiting, named by `ids`.
    pub async fn drain(&mut self, ids: &Ids) -> Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut text = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<FlowRecord>() {
                continue;
            }
            // SAFETY: the data path writes whole `FlowRecord`s (plain data).
            let record = unsafe { item.as_ptr().cast::<FlowRecord>().read_unaligned() };
            serde_json::to_writer(&mut text, &line(&record, ids))?;
            text.push(b'\n');
        }
        guard.clear_ready();
        self.out.write_all(&text)?;
        Ok(())
    }
}

fn line<'a>(record: &FlowRecord, ids: &'a Ids) -> Line<'a> {
    let named = |id: u32, names: &'a std::collections::BTreeMap<String, u32>| {
        names
            .iter()
            .find(|(_, v)| **v == id)
            .map_or("?", |(n, _)| n.as_str())
    };
    let key = &record.key;
    let ended = record.kind == record::ENDED;
    Line {
        time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        event: if ended { "ended" } else { "opened" },
        network: named(record.network, &ids.networks),
        protocol: if key.proto() == PROTO_UDP {
            "udp"
        } else {
            "tcp"
        },
        client: key.src.socket(key.family(), key.src_port_be),
        endpoint: named(record.slot, &ids.endpoints),
        endpoint_address: key.dst.socket(key.family(), key.dst_port_be),
        target: record.target.socket(record.family, record.target_port_be),
        nat: record.nat.socket(record.family, record.nat_port_be),
        duration_seconds: ended.then(|| record.at_ns.saturating_sub(record.opened_ns) as f64 / 1e9),
        packets: Ways {
            consumer_to_target: record.forward_packets,
            target_to_consumer: record.reply_packets,
        },
        bytes: Ways {
            consumer_to_target: record.forward_bytes,
            target_to_consumer: record.reply_bytes,
        },
    }
}
