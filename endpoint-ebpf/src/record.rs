//! Record: when the agent asked for connection records (`--flow-log`), one goes to the
//! `RECORDS` ring buffer as a connection opens and as it ends, with what each direction
//! carried. A full ring loses the record (counted), never the packet.

use endpoint_common::{
    counter,
    maps::{Flow, FlowKey, FlowRecord, Settings, record},
};

use crate::{classify, conntrack, maps::RECORDS, stats};

/// The connection of the consumer-to-target entry `forward` (at `key`) opened, under
/// `settings` (the opening already holds them: no second lookup on the new-flow path).
#[inline(always)]
pub fn opened(key: &FlowKey, forward: &Flow, settings: &Settings) {
    if settings.flow_records != 0 {
        write(record::OPENED, key, forward, None);
    }
}

/// The connection of `forward` (at `key`) ends; `reply` is its other direction.
#[inline(always)]
pub fn ended(key: &FlowKey, forward: &Flow, reply: Option<&Flow>) {
    if classify::settings().is_some_and(|s| s.flow_records != 0) {
        write(record::ENDED, key, forward, reply);
    }
}

// Its own BPF function: the callers' frames stay as they were.
#[inline(never)]
fn write(kind: u32, key: &FlowKey, forward: &Flow, reply: Option<&Flow>) {
    let Some(mut entry) = RECORDS.reserve::<FlowRecord>(0) else {
        stats::note(counter::FLOW_RECORD_DROPPED, forward.slot);
        return;
    };
    let at = entry.as_mut_ptr();
    // SAFETY: the reserved record, written whole before it is submitted.
    unsafe {
        (*at).kind = kind;
        (*at).network = forward.network;
        (*at).key = *key;
        (*at).nat = forward.src;
        (*at).target = forward.dst;
        (*at).nat_port_be = forward.src_port_be;
        (*at).target_port_be = forward.dst_port_be;
        (*at).slot = forward.slot;
        (*at).family = forward.family;
        (*at)._pad = [0; 7];
        (*at).opened_ns = forward.opened_ns;
        (*at).at_ns = conntrack::now_ns();
        (*at).forward_packets = forward.packets;
        (*at).forward_bytes = forward.bytes;
        let (packets, bytes) = reply.map_or((0, 0), |r| (r.packets, r.bytes));
        (*at).reply_packets = packets;
        (*at).reply_bytes = bytes;
    }
    entry.submit(0);
}
