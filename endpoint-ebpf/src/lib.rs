//! The data path. Every packet on an attached interface makes the same journey:
//!
//! classify (the interface's role; on the consumer side, does an endpoint of its
//! network listen on the port; on the provider side, is it a NAT port — array reads
//! only) → verify (addressed to us, checksums, flags, source) → conntrack (the flow, or
//! a new one) → policy (acceptance and security groups, judged again only when the
//! endpoint's policy word changed) → tcp (handshake, RST and FIN where they belong) →
//! limits and select (for a new flow: room for it, its target and NAT address) →
//! forward (route lookup — decided before anything is rewritten, then kept by the flow
//! and checked again once a second) → nat (rewrite addresses, ports, TTL and checksums)
//! → send; and every outcome is counted. The `expire` program removes what runs out.
//! Beside the journey: ARP for the node's addresses, ICMP, and DNS queries to a consumer
//! network's resolver address, handed to the `dns` program (a tail call), which answers
//! them in place.
#![no_std]
// BPF has atomic instructions, but the target's `core::sync::atomic` offers no 32-bit
// atomics and no compare-and-swap: the intrinsics do (see `atomic`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Unaligned 8-byte loads and stores (see `mem`): the compiler has no other way to them.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// `?` in steps that return an `Outcome` (see `outcome`).
#![feature(try_trait_v2)]
// Map helpers take `impl Borrow<K>`: pass keys by reference, not by (copied) value, on
// a 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod arp;
mod atomic;
mod budget;
mod classify;
mod conntrack;
pub mod dns;
pub mod expire;
mod forward;
mod icmp;
mod icmpv6;
mod limits;
mod maps;
mod mem;
mod nat;
mod neighbour;
mod outcome;
mod parse;
mod policy;
mod record;
mod reset;
mod select;
mod stats;
mod tcp;
mod translate;
mod verify;

use aya_ebpf::programs::XdpContext;
use endpoint_common::{
    counter,
    maps::{FlowKey, Interface, PROVIDER_NETWORK, Policy, Scratch, nat_scope, tcp as bits},
};

use crate::{
    conntrack::{Entry, Touch},
    forward::{Hop, Route},
    maps::SCRATCH,
    outcome::Outcome,
    parse::{Frame, Packet},
    policy::{Admission, Refusal},
    verify::{ACK, FIN, RST, SYN},
};

/// Handles one packet: its journey, counted; returns the XDP action.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    let outcome = journey(ctx);
    stats::count(ctx, &outcome);
    outcome.action()
}

/// Each step either hands the packet on or ends the journey with an [`Outcome`] (`?`).
#[inline(always)]
fn journey(ctx: &XdpContext) -> Outcome {
    let interface = classify::interface(ctx)?;
    match parse::frame(ctx)? {
        Frame::Arp { eth, arp } => arp::answer(ctx, &interface, eth, arp),
        Frame::Flow(packet) => {
            if dns::for_resolver(&interface, &packet) {
                return dns::hand_over(ctx);
            }
            if classify::endpoint_port(&interface, &packet) {
                return consumer_to_target(ctx, &interface, &packet);
            }
            if classify::to_nat_port(&interface, &packet) {
                return target_to_consumer(ctx, &interface, &packet);
            }
            classify::not_ours(&interface)
        }
        Frame::Icmp(packet) => icmp::arrived(ctx, &interface, &packet),
        Frame::Solicitation(packet) => neighbour::advertise(ctx, &interface, &packet),
        Frame::Unsupported {
            dst,
            family,
            counter,
        } => classify::unsupported(ctx, &interface, family, dst, counter),
        Frame::Other => classify::not_ours(&interface),
    }
}

/// A packet from a consumer to a port an endpoint of its network listens on (its own
/// BPF function, as are the heavier steps: the whole call chain's stack must fit in 512
/// bytes).
#[inline(always)]
fn consumer_to_target(ctx: &XdpContext, interface: &Interface, packet: &Packet) -> Outcome {
    let Some(key) = conntrack::forward_key(interface.network, packet) else {
        return Outcome::drop(counter::DROP_NO_FLOW);
    };
    let Some(flow) = conntrack::lookup(key) else {
        return open(ctx, interface, packet, key);
    };
    // A new connection on the tuple of a closed one: that one goes (its NAT port stays
    // reserved while the target may hold it in TIME_WAIT).
    let state = flow.tcp();
    if packet.is_tcp() && verify::flags(packet) & (SYN | ACK) == SYN && bits::closed(state) {
        conntrack::remove(key, &flow, state & bits::TARGET_CLOSED_FIRST != 0);
        return open(ctx, interface, packet, key);
    }
    forward(ctx, interface, packet, &flow)
}

/// A consumer's packet on an existing flow.
#[inline(never)]
fn forward(ctx: &XdpContext, interface: &Interface, packet: &Packet, flow: &Entry) -> Outcome {
    let slot = flow.slot;
    // Not passed: with the result pointer, a fifth argument would not fit in the five
    // registers a BPF call has.
    let Some(key) = conntrack::packet_key() else {
        return Outcome::drop_for(counter::DROP_NO_FLOW, slot);
    };
    verify::addressed_to(interface, packet, slot)?;
    verify::ip_checksum(packet, slot)?;
    let flags = verify::tcp_flags(packet, slot)?;
    let syn = flags & SYN != 0;
    if syn && flags & ACK != 0 {
        return Outcome::drop_for(counter::DROP_BAD_FLAGS, slot);
    }
    // Judged again when the endpoint's policy changed, and for every SYN: a SYN on an
    // existing flow must be admitted like a new one.
    if syn || policy::word(slot) != flow.policy {
        match policy::recheck(flow, packet, syn) {
            Ok(word) => flow.admitted(word),
            Err(refusal) => {
                if refusal.removes() {
                    conntrack::remove(key, flow, false);
                }
                return refuse(ctx, interface, packet, &refusal);
            }
        }
    }
    // Only what the endpoint admits learns that its TTL ran out here.
    forward::check_ttl(ctx, packet, slot)?;
    let route = match flow.touch() {
        Touch::Gone => return Outcome::drop_for(counter::DROP_NO_FLOW, slot),
        Touch::Same => {
            let route = Route::kept(flow);
            route.takes(ctx, packet, flow.family, slot)?;
            route
        }
        // The route is looked up again once a second (the neighbour or route may have
        // changed); in between, the flow's kept result is used.
        Touch::Fresh => {
            let mut hop = Hop {
                src: &flow.src,
                dst: &flow.dst,
                family: flow.family,
                via: flow.via,
                slot,
                mtu: 0,
            };
            let route = forward::route(ctx, packet, &mut hop)
                .map_err(|outcome| forward::unroutable(ctx, packet, &hop, outcome))?;
            keep_route(flow, &route);
            route
        }
    };
    if syn {
        // A retransmitted SYN is held to what the first one was.
        clamp_syn(ctx, interface, packet, route.ifindex, slot);
    } else if packet.is_tcp() {
        tcp::track(flow, packet, flags);
        if flags & (RST | FIN) != 0 || flow.tcp() & bits::ESTABLISHED == 0 {
            tcp::from_consumer(key, flow, packet, flags)?;
        }
    }
    flow.carried((ctx.data_end() - ctx.data()) as u64);
    if flow.family != packet.family() {
        return translate::to_ipv4(ctx, interface, flow, &route, counter::FORWARD);
    }
    nat::rewrite(packet, flow);
    forward::send(ctx, interface, packet, &route, counter::FORWARD, slot)
}

/// Holds a consumer's SYN to the MSS that fits its interface and the way out,
/// `egress`.
#[inline(never)]
fn clamp_syn(ctx: &XdpContext, interface: &Interface, packet: &Packet, egress: u32, slot: u32) {
    let egress_mtu = maps::INTERFACES.get(egress).map_or(0, |egress| egress.mtu);
    let limit = tcp::mss_limit(packet, packet.family(), [interface.mtu, egress_mtu], slot);
    tcp::clamp(ctx, packet, limit, slot);
}

/// Keeps `route` as the flow's way out, if it changed.
#[inline(always)]
fn keep_route(flow: &Entry, route: &Route) {
    let at = flow.ptr();
    // SAFETY: fields of the entry; only this direction's packets write them.
    unsafe {
        if (*at).ifindex != route.ifindex
            || (*at).mac_src != route.mac_src
            || (*at).mac_dst != route.mac_dst
        {
            (*at).ifindex = route.ifindex;
            (*at).mac_src = route.mac_src;
            (*at).mac_dst = route.mac_dst;
        }
    }
}

/// A packet its flow's endpoint no longer admits (the flow is gone if it must go):
/// dropped, or answered with a RST.
#[inline(never)]
fn refuse(ctx: &XdpContext, interface: &Interface, packet: &Packet, refusal: &Refusal) -> Outcome {
    match *refusal {
        Refusal::Drop(outcome) | Refusal::Cut(outcome) => outcome,
        Refusal::Reset(slot) if packet.is_tcp() => reset::answer(ctx, interface, packet, slot),
        // UDP has nothing to reset: its flow is simply gone.
        Refusal::Reset(slot) => Outcome::drop_for(counter::DROP_FLOW_GONE, slot),
    }
}

/// A consumer's packet with no flow: a SYN (or any UDP datagram) to an available
/// endpoint opens one.
#[inline(never)]
fn open(ctx: &XdpContext, interface: &Interface, packet: &Packet, key: &FlowKey) -> Outcome {
    let Some(endpoint) = classify::endpoint(interface.network, packet) else {
        return Outcome::drop(counter::DROP_NOT_ENDPOINT);
    };
    let slot = endpoint.slot;
    verify::addressed_to(interface, packet, slot)?;
    verify::ip_checksum(packet, slot)?;
    let flags = verify::tcp_flags(packet, slot)?;
    let word = policy::word(slot);
    let policy = Policy::of(word);
    match policy::of(policy) {
        Admission::Open if packet.is_tcp() && flags & SYN == 0 => {
            return Outcome::drop_for(counter::DROP_NO_FLOW, slot);
        }
        Admission::Open => {}
        _ => return policy::refused(policy, slot),
    }
    if flags & ACK != 0 {
        return Outcome::drop_for(counter::DROP_BAD_FLAGS, slot);
    }
    policy::security_groups(word, slot, endpoint.listener as u8, packet)?;
    verify::source(interface.network, packet, slot)?;
    verify::transport_checksum(ctx, packet, slot)?;
    forward::check_ttl(ctx, packet, slot)?;
    let Some(settings) = classify::settings() else {
        return Outcome::drop_for(counter::DROP_NO_TARGET, slot);
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Outcome::drop_for(counter::DROP_NO_TARGET, slot);
    };
    // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
    let scratch = unsafe { &mut *scratch };
    begin(ctx, interface, packet, key, scratch);
    scratch.forward.slot = slot;
    scratch.forward.policy = word;
    scratch.forward.listener = endpoint.listener as u8;
    limits::reserve(&raw mut scratch.forward, settings)?;
    // A ring holds targets of its endpoint address's family, or IPv4 ones for an IPv6
    // address (translated): the agent builds them so.
    if let Err(outcome) = select::choose(endpoint.ring, key, settings, scratch)
        .and_then(|()| select::reachable_from(scratch, packet.family()))
    {
        limits::release(&raw mut scratch.forward);
        return outcome;
    }
    // The route is decided before any state exists: a SYN that cannot be forwarded
    // leaves nothing behind, and its retransmission tries again.
    let mut hop = Hop {
        src: &scratch.nat.addr,
        dst: &scratch.target.addr,
        family: scratch.target.family,
        via: scratch.nat.ifindex,
        slot,
        mtu: 0,
    };
    let route = match forward::route(ctx, packet, &mut hop) {
        Ok(route) => route,
        Err(outcome) => {
            limits::release(&raw mut scratch.forward);
            return forward::unroutable(ctx, packet, &hop, outcome);
        }
    };
    translate(scratch, &route);
    conntrack::open(key, settings)?;
    if packet.is_tcp() {
        clamp_syn(ctx, interface, packet, route.ifindex, slot);
    }
    // What was inserted is in the scratch: no need to look it up again.
    if scratch.forward.family != packet.family() {
        return translate::to_ipv4(
            ctx,
            interface,
            &scratch.forward,
            &route,
            counter::FORWARD_NEW,
        );
    }
    nat::rewrite(packet, &scratch.forward);
    forward::send(ctx, interface, packet, &route, counter::FORWARD_NEW, slot)
}

/// Starts both entries of a new flow in the scratch: the reply entry (back to the
/// client, from the endpoint, through the interface it came in on) and what the
/// forward entry knows of the consumer's SYN.
#[inline(never)]
fn begin(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Packet,
    key: &FlowKey,
    scratch: &mut Scratch,
) {
    let now = conntrack::opening_ns();
    let forward = &mut scratch.forward;
    forward.opened_ns = now;
    forward.last_seen_s = now / 1_000_000_000;
    forward.network = interface.network;
    forward.proto = packet.proto();
    forward.family = packet.family();
    forward.tcp = 0;
    forward.ack = 0;
    forward.window = 0;
    // The packet that opens the flow is its first.
    forward.packets = 1;
    forward.bytes = (ctx.data_end() - ctx.data()) as u64;
    (forward.isn_next, forward.wscale) = if packet.is_tcp() {
        let seq = u32::from_be_bytes(packet.tcp().seq);
        let next = seq
            .wrapping_add(1)
            .wrapping_add(verify::payload_len(packet));
        (next, tcp::window_scale(ctx, packet))
    } else {
        (0, 0)
    };
    mem::clear(&mut forward._pad);
    let reply = &mut scratch.reply;
    reply.opened_ns = now;
    reply.last_seen_s = forward.last_seen_s;
    reply.network = interface.network;
    reply.proto = packet.proto();
    reply.family = packet.family();
    reply.src = key.dst;
    reply.dst = key.src;
    reply.src_port_be = key.dst_port_be;
    reply.dst_port_be = key.src_port_be;
    reply.ifindex = ctx.ingress_ifindex() as u32;
    // Replies go from the interface's own MAC (taken when sent) to whoever sent this.
    mem::clear(&mut reply.mac_src);
    reply.mac_dst = packet.eth().src_addr;
    reply.tcp = 0;
    reply.ack = 0;
    reply.window = 0;
    reply.isn_next = 0;
    reply.wscale = 0;
    reply.packets = 0;
    reply.bytes = 0;
    mem::clear(&mut reply._pad);
}

/// Completes both entries with the chosen target, NAT address and route.
#[inline(never)]
fn translate(scratch: &mut Scratch, route: &Route) {
    let Scratch {
        forward,
        reply,
        reply_key,
        target,
        nat,
        target_index,
        ..
    } = scratch;
    forward.src = nat.addr;
    forward.dst = target.addr;
    forward.family = target.family;
    forward.dst_port_be = target.port_be;
    forward.ifindex = route.ifindex;
    forward.mac_src = route.mac_src;
    forward.mac_dst = route.mac_dst;
    forward.via = nat.ifindex;
    forward.target = *target_index;
    reply.slot = forward.slot;
    reply.policy = forward.policy;
    reply.listener = forward.listener;
    reply.target = *target_index;
    // Replies must come back the way the flow leaves.
    reply.via = route.ifindex;
    reply_key.src = forward.dst;
    reply_key.dst = forward.src;
    reply_key.src_port_be = target.port_be;
    reply_key.dst_port_be = 0;
    reply_key.scope = FlowKey::scope(PROVIDER_NETWORK, forward.family, forward.proto);
}

/// A provider-side packet to a NAT port: a reply of a flow, or nothing of ours to
/// open.
#[inline(never)]
fn target_to_consumer(ctx: &XdpContext, interface: &Interface, packet: &Packet) -> Outcome {
    let Some(key) = conntrack::forward_key(PROVIDER_NETWORK, packet) else {
        return Outcome::drop(counter::DROP_REPLY_NO_FLOW);
    };
    let Some(reply) = conntrack::lookup(key) else {
        // To a NAT address and port but no flow: the provider side can never open
        // anything towards a consumer.
        let scope = nat_scope(ctx.ingress_ifindex() as u32);
        if classify::owned(scope, packet.family(), packet.dst()).is_some() {
            return Outcome::drop(counter::DROP_REPLY_NO_FLOW);
        }
        return classify::not_ours(interface);
    };
    let slot = reply.slot;
    if reply.tcp() & bits::RESERVED != 0 {
        return Outcome::drop_for(counter::DROP_REPLY_NO_FLOW, slot);
    }
    // Replies are taken only where the flow leaves: a host on another provider segment
    // cannot speak for the target.
    if ctx.ingress_ifindex() as u32 != reply.via {
        return Outcome::drop_for(counter::DROP_WRONG_INTERFACE, slot);
    }
    verify::addressed_to(interface, packet, slot)?;
    verify::ip_checksum(packet, slot)?;
    let flags = verify::tcp_flags(packet, slot)?;
    if flags & SYN != 0 && flags & ACK == 0 {
        return Outcome::drop_for(counter::DROP_BAD_FLAGS, slot);
    }
    forward::check_ttl(ctx, packet, slot)?;
    if policy::word(slot) != reply.policy {
        match policy::recheck_reply(&reply) {
            Ok(word) => reply.admitted(word),
            Err(refusal) => {
                remove_by_reply(&reply);
                return refuse(ctx, interface, packet, &refusal);
            }
        }
    }
    if let Touch::Gone = reply.touch() {
        return Outcome::drop_for(counter::DROP_REPLY_NO_FLOW, slot);
    }
    if packet.is_tcp() {
        if flags & SYN == 0 {
            tcp::track(&reply, packet, flags);
        }
        if flags & (SYN | RST | FIN) != 0 {
            tcp::from_target(&reply, packet, flags, ctx)?;
        }
    }
    let (route, mtu) = Route::back(&reply).inspect_err(|_| remove_by_reply(&reply))?;
    forward::fits(
        ctx,
        packet,
        forward::mtu_for(packet, reply.family, mtu),
        slot,
    )?;
    if flags & SYN != 0 {
        tcp::clamp(
            ctx,
            packet,
            tcp::mss_limit(packet, reply.family, [interface.mtu, mtu], slot),
            slot,
        );
    }
    reply.carried((ctx.data_end() - ctx.data()) as u64);
    if reply.family != packet.family() {
        return translate::to_ipv6(ctx, interface, &reply, &route, counter::REPLY);
    }
    nat::rewrite(packet, &reply);
    forward::send(ctx, interface, packet, &route, counter::REPLY, slot)
}

/// Removes the flow of the reply entry `reply`.
#[inline(never)]
fn remove_by_reply(reply: &Entry) {
    let key = conntrack::forward_key_of(reply);
    if let Some(flow) = conntrack::lookup(&key) {
        conntrack::remove(&key, &flow, false);
    }
}
