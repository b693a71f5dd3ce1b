//! The data path. Every packet on an attached interface makes the same journey:
//!
//! parse → classify (endpoint traffic? a reply? an ARP request for our address?) →
//! policy (security groups, acceptance) → conntrack (find or open the flow) → select
//! (target, NAT address) → forward (route lookup — decided before anything is rewritten,
//! then kept by the flow and checked again once a second) → nat (rewrite addresses,
//! ports, TTL and checksums) → send; and every outcome is counted.
#![no_std]
// Map helpers take `impl Borrow<K>`: pass keys by reference, not by (copied) value, on
// a 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod arp;
mod classify;
mod conntrack;
mod forward;
mod maps;
mod nat;
mod outcome;
mod parse;
mod policy;
mod reset;
mod select;
mod stats;

use aya_ebpf::programs::XdpContext;
use endpoint_common::{
    counter,
    maps::{Endpoint, Interface, role},
};

use crate::{
    conntrack::Entry,
    forward::Hop,
    outcome::Outcome,
    parse::{Frame, Tcp},
    policy::Admission,
};

/// Handles one packet: its journey, counted; returns the XDP action.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    let outcome = match journey(ctx) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    stats::count(ctx, &outcome);
    outcome.action
}

/// Each step either hands the packet on or ends the journey with an [`Outcome`] (`Err`).
#[inline(always)]
fn journey(ctx: &XdpContext) -> Result<Outcome, Outcome> {
    let interface = classify::interface(ctx)?;
    match parse::frame(ctx)? {
        Frame::Arp { eth, arp } => arp::answer(ctx, &interface, eth, arp),
        Frame::Unsupported { dst, counter } => classify::unsupported(ctx, dst, counter),
        Frame::Tcp(packet) => {
            if let Some(endpoint) = classify::endpoint(&interface, &packet) {
                policy::security_groups(&endpoint, &packet)?;
                // Segments of connections that may still be open to an endpoint revoked
                // with `reset` get a RST (a SYN is refused like any other).
                if let Admission::Reset = policy::admission(&endpoint)
                    && !conntrack::is_syn(&packet)
                {
                    return reset::answer(ctx, &interface, &packet, endpoint.id);
                }
                return consumer_to_target(ctx, &interface, &packet, &endpoint);
            }
            if interface.roles & role::PROVIDER != 0 {
                // The flow table first: on the provider side most packets are replies.
                if let Some(flow) = conntrack::reply(&packet) {
                    return target_to_consumer(ctx, &interface, &packet, &flow);
                }
                // To a NAT address and port but no flow: the provider side can never
                // open anything towards a consumer.
                if classify::to_nat_port(ctx, &packet) {
                    return Err(Outcome::drop(counter::DROP_REPLY_NO_FLOW));
                }
            }
            Ok(Outcome::pass())
        }
    }
}

/// A packet from a consumer to one of its endpoints (its own BPF function, as are the
/// heavier steps: the whole call chain's stack must fit in 512 bytes).
#[inline(never)]
fn consumer_to_target(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Tcp,
    endpoint: &Endpoint,
) -> Result<Outcome, Outcome> {
    // Read again rather than passed: with the result pointer, a sixth argument would
    // not fit in the five registers a BPF call has.
    let admission = policy::admission(endpoint);
    forward::check_ttl(packet, endpoint.id)?;
    let key = conntrack::key_of(interface.network, packet);
    let (flow, route, counter) = match (conntrack::lookup(&key, packet), admission) {
        // The route is looked up again once a second (the neighbour or route may have
        // changed); in between, the flow's kept result is used.
        (Some((flow, true)), _) => {
            let hop = Hop {
                src: flow.src,
                dst: flow.dst,
                ifindex: flow.route_from,
            };
            let route = forward::route(ctx, packet, &hop, endpoint.id)?;
            flow.keep_route(&route);
            (flow, route, counter::FORWARD)
        }
        (Some((flow, false)), _) => {
            let route = forward::Route::kept(&flow);
            (flow, route, counter::FORWARD)
        }
        (None, Admission::Open) => {
            conntrack::require_syn(packet, endpoint.id)?;
            let choice = &mut conntrack::opening(endpoint.id)?.choice;
            select::choose(endpoint, &key, choice)?;
            // The route is decided before any state exists: a SYN that cannot be
            // forwarded leaves nothing behind, and its retransmission tries again.
            let hop = Hop {
                src: choice.nat.addr,
                dst: choice.target.addr,
                ifindex: choice.nat.ifindex,
            };
            let route = forward::route(ctx, packet, &hop, endpoint.id)?;
            conntrack::opening(endpoint.id)?.route = route;
            let flow = conntrack::open(ctx, &key, packet, endpoint)?;
            (flow, route, counter::FORWARD_NEW)
        }
        (None, _) => return Err(policy::refused(endpoint)),
    };
    nat::rewrite(packet, &flow);
    Ok(forward::send(
        ctx,
        interface,
        packet,
        &route,
        counter,
        endpoint.id,
    ))
}

/// A packet from a target back to a NAT address.
#[inline(never)]
fn target_to_consumer(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Tcp,
    flow: &Entry,
) -> Result<Outcome, Outcome> {
    forward::check_ttl(packet, flow.endpoint)?;
    let route = forward::Route::kept(flow);
    nat::rewrite(packet, flow);
    Ok(forward::send(
        ctx,
        interface,
        packet,
        &route,
        counter::REPLY,
        flow.endpoint,
    ))
}
