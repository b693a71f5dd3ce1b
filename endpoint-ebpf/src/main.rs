//! The XDP program. Every packet on an attached interface makes the same journey:
//!
//! parse → classify (endpoint traffic? a reply? an ARP request for our address?) →
//! policy (acceptance) → conntrack (find or open the flow) → select (target, NAT
//! address) → forward (route lookup, decided before anything is rewritten) → nat
//! (rewrite addresses, ports, TTL and checksums) → send; and every outcome is counted.
#![no_std]
#![no_main]
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

use aya_ebpf::{macros::xdp, programs::XdpContext};
use endpoint_common::{
    counter,
    maps::{Endpoint, Interface},
};

use crate::{
    outcome::Outcome,
    parse::{Frame, Tcp},
    policy::Admission,
};

#[xdp]
pub fn endpoint(ctx: XdpContext) -> u32 {
    let outcome = match journey(&ctx) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    stats::count(&ctx, &outcome);
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
                return consumer_to_target(ctx, &interface, &packet, &endpoint);
            }
            if classify::reply(ctx, &interface, &packet) {
                return target_to_consumer(ctx, &interface, &packet);
            }
            Ok(Outcome::pass())
        }
    }
}

/// A packet from a consumer to one of its endpoints.
#[inline(always)]
fn consumer_to_target(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Tcp,
    endpoint: &Endpoint,
) -> Result<Outcome, Outcome> {
    policy::security_groups(endpoint, packet)?;
    let admission = policy::admission(endpoint);
    if let Admission::Reset = admission {
        // Segments of connections that may still be open get a RST; a SYN is refused
        // like any non-available endpoint's.
        return match conntrack::is_syn(packet) {
            true => Err(policy::refused(endpoint)),
            false => reset::answer(ctx, interface, packet, endpoint.id),
        };
    }
    forward::check_ttl(packet, endpoint.id)?;
    let key = conntrack::forward_key(interface.network, packet);
    let (flow, route, counter) = match (conntrack::lookup(&key, packet), admission) {
        (Some(flow), _) => {
            let route = forward::route(ctx, packet, flow.src, flow.dst, flow.ifindex, endpoint.id)?;
            (flow, route, counter::FORWARD)
        }
        (None, Admission::Open) => {
            conntrack::require_syn(packet, endpoint.id)?;
            let choice = select::choose(endpoint, &key)?;
            // The route is decided before any state exists: a SYN that cannot be
            // forwarded leaves nothing behind, and its retransmission tries again.
            let (nat, target) = (&choice.nat, &choice.target);
            let route =
                forward::route(ctx, packet, nat.addr, target.addr, nat.ifindex, endpoint.id)?;
            let flow = conntrack::open(ctx, &key, packet, endpoint, &choice)?;
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
#[inline(always)]
fn target_to_consumer(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Tcp,
) -> Result<Outcome, Outcome> {
    let flow = conntrack::reply(packet)?;
    forward::check_ttl(packet, flow.endpoint)?;
    let route = forward::Route::back_to_consumer(&flow);
    nat::rewrite(packet, &flow);
    Ok(forward::send(
        ctx,
        interface,
        packet,
        &route,
        counter::REPLY,
        flow.endpoint,
    ))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A panic path that survives optimisation makes the verifier reject the program.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
