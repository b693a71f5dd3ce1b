//! Abuse: a SYN flood from one consumer network fills only that network's room for
//! handshakes, and an endpoint's rate of new connections is held to its limit without
//! holding any other endpoint. The floods are crafted SYNs from spoofed sources inside
//! the consumer's own subnet (whose handshakes never finish), always bounded.

use std::{
    net::SocketAddrV4,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use testbed::flood::{Pace, RawSocket, Segment, Sent, paced};

use crate::bed::*;

/// The flood's `i`th source: a host of the consumer subnet that does not exist
/// (10.0.0.128–247, clear of the client and the endpoints), a new port each round.
fn spoofed(i: u64) -> SocketAddrV4 {
    let host = 128 + (i % 120) as u8;
    let port = 1024 + ((i / 120) % 64000) as u16;
    at(Ipv4Addr::new(10, 0, 0, host), port)
}

/// SYNs from spoofed sources to `to`, paced, from inside `ns` (on its own thread
/// within `scope`).
fn syns<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    ns: &'scope Namespace,
    to: SocketAddrV4,
    pace: Pace,
    stop: &'scope AtomicBool,
) -> std::thread::ScopedJoinHandle<'scope, Sent> {
    let raw = RawSocket::open(ns).unwrap();
    scope.spawn(move || {
        paced(&raw, pace, stop, |i| {
            Segment::syn(spoofed(i), to, (i as u32).wrapping_mul(2_654_435_761))
        })
        .unwrap()
    })
}

#[test]
fn a_syn_flood_from_one_consumer_network_leaves_another_networks_connections_alone() {
    if !root() {
        return;
    }
    const HALF_OPEN: u64 = 256;
    let config = example().replace(
        "  nat_ports:",
        &format!("  limits: {{ half_open_per_network: {HALF_OPEN} }}\n  nat_ports:"),
    );
    assert_ne!(config, example());
    let bed = bed_with(&config);
    let t = &bed.topology;
    // vpc-b works, and its client has the endpoint's MAC (the raw frames need it).
    ask(&t.consumer_b, at(ORDERS, 80), "before", WAIT).unwrap_or_else(|e| bed.fail(e));
    let mut conversation = Conversation::open(&bed);
    let before = bed.status();

    let stop = AtomicBool::new(false);
    let pace = Pace {
        rate: 40_000,
        frames: 200_000,
        time: Duration::from_secs(10),
    };
    let (sent, failures, measured, flood_started) = std::thread::scope(|scope| {
        let flood = syns(scope, &t.consumer_b, at(ORDERS, 80), pace, &stop);
        let flood_started = Instant::now();
        // Let the flood fill vpc-b's room first.
        std::thread::sleep(Duration::from_millis(200));
        let mut failures = Vec::new();
        for n in 0..1000 {
            let line = format!("new {n}");
            match ask(&t.consumer_a, at(ORDERS, 80), &line, WAIT) {
                Ok(answer) => assert_eq!(answer.echo, line),
                Err(e) => failures.push(format!("{n}: {e:#}")),
            }
            if failures.len() > 10 {
                break; // failed already; no need to wait out the rest
            }
            if n % 50 == 0 {
                conversation.say(&format!("during the flood ({n})"), &bed.agent.log());
            }
        }
        let measured = Instant::now();
        stop.store(true, Ordering::Relaxed);
        (flood.join().unwrap(), failures, measured, flood_started)
    });
    conversation.say("after the flood", &bed.agent.log());
    eprintln!(
        "flood: {} SYNs ({} refused) in {:?}; 1000 connections in {:?}",
        sent.frames,
        sent.failed,
        sent.elapsed(),
        measured - flood_started
    );
    assert!(
        failures.len() <= 10,
        "{} of 1000 connections failed during the flood:\n{}\nagent log:\n{}",
        failures.len(),
        failures.join("\n"),
        bed.agent.log()
    );
    // Ten times the network's room for handshakes, at least (how many more depends on
    // how fast the 1000 connections went).
    assert!(sent.frames >= 10 * HALF_OPEN, "hardly a flood: {sent:?}");
    assert!(
        sent.last.unwrap() + Duration::from_millis(100) >= measured,
        "the flood ended before the connections did: {sent:?}"
    );

    let after = bed.status();
    let delta =
        |id: &str, name: &str| counted_for(&after, id, name) - counted_for(&before, id, name);
    // The flood got vpc-b's room for handshakes and no more; the rest was held there.
    let opened = delta("vpce-b-orders", "forward_new");
    let held = delta("vpce-b-orders", "drop_half_open_limit");
    assert!(opened <= HALF_OPEN, "{opened} flood SYNs opened a flow");
    assert!(
        opened + held >= sent.frames * 99 / 100,
        "{opened} opened and {held} held of {} SYNs: {after:#}",
        sent.frames
    );
    assert!(counted(&after, "drop_half_open_limit") >= held);
    // vpc-a was not held at all.
    assert_eq!(delta("vpce-a-orders", "drop_half_open_limit"), 0);
    assert!(delta("vpce-a-orders", "forward_new") >= 990, "{after:#}");
}

#[test]
fn an_endpoint_is_held_to_its_rate_of_new_connections_and_no_other_endpoint_is() {
    if !root() {
        return;
    }
    const RATE: f64 = 50.0;
    const BURST: f64 = 5.0;
    let config = example().replace(
        "      - { cidr: fd00:a::/64, ports: [80] }\n",
        "      - { cidr: fd00:a::/64, ports: [80] }\n    limits: { new_connections_per_second: 50, burst: 5 }\n",
    );
    assert_ne!(config, example());
    let bed = bed_with(&config);
    let t = &bed.topology;
    // Both clients have the endpoint's MAC; then the pace gives back a whole burst.
    for consumer in [&t.consumer_a, &t.consumer_b] {
        ask(consumer, at(ORDERS, 80), "before", WAIT).unwrap_or_else(|e| bed.fail(e));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = bed.status();

    // 200 SYNs a second for 4 s to each network's endpoint, at once.
    let pace = Pace {
        rate: 200,
        frames: 801,
        time: Duration::from_secs(6),
    };
    let stop = AtomicBool::new(false);
    let (a, b) = std::thread::scope(|scope| {
        let a = syns(scope, &t.consumer_a, at(ORDERS, 80), pace, &stop);
        let b = syns(scope, &t.consumer_b, at(ORDERS, 80), pace, &stop);
        (a.join().unwrap(), b.join().unwrap())
    });
    std::thread::sleep(Duration::from_millis(100));
    let after = bed.status();
    let delta =
        |id: &str, name: &str| counted_for(&after, id, name) - counted_for(&before, id, name);

    let elapsed = a.elapsed().as_secs_f64();
    let expected = RATE * elapsed + BURST;
    let opened = delta("vpce-a-orders", "forward_new");
    let held = delta("vpce-a-orders", "drop_rate_limit");
    eprintln!(
        "vpce-a-orders: {opened} opened, {held} held of {} SYNs in {elapsed:.3} s (expected {expected:.1})",
        a.frames
    );
    assert!(
        (opened as f64 - expected).abs() <= expected * 0.1,
        "{opened} opened in {elapsed:.3} s, expected {expected:.1} ± 10%: {after:#}"
    );
    assert_eq!(
        opened + held,
        a.frames,
        "every SYN opened or held: {after:#}"
    );
    // vpce-b-orders has no limit: all of the same offered rate went through.
    let opened_b = delta("vpce-b-orders", "forward_new");
    assert!(
        opened_b >= b.frames * 99 / 100,
        "vpce-b-orders opened {opened_b} of {} SYNs: {after:#}",
        b.frames
    );
    assert_eq!(delta("vpce-b-orders", "drop_rate_limit"), 0);
}
