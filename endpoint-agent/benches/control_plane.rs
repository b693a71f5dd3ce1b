//! Control-plane benchmark: how long the agent takes to validate, build, plan and
//! apply a config of 10,000 endpoints over 1,000 services — all at once (a first start)
//! and as a reload that changes one endpoint. Real maps, medians of several rounds.
//! `--smoke`: a small config and one round, checking only that it all works.

use std::{fmt::Write as _, time::Instant};

use endpoint_agent::{
    config,
    expiry::{self, Expiry},
    facts::Facts,
    flows,
    instance::Instance,
    loader, metrics,
    pipeline::{Applied, Inputs, Pipeline},
};
use endpoint_common::maps::{Addr, FAMILY_IPV4, Flow, FlowKey, PROTO_TCP, name};
use testbed::{Namespace, veth};

fn config_text(services: usize, endpoints: usize) -> String {
    let mut y = String::from(
        "node:\n  interfaces:\n    - { name: cons-a, role: consumer, consumer_network: vpc-a }\n    - { name: cons-b, role: consumer, consumer_network: vpc-b }\n    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }\n",
    );
    let _ = writeln!(
        y,
        "  tables: {{ endpoints: {}, targets: {}, rings: {}, ring_size: 211, flows: 131072 }}",
        endpoints.next_power_of_two(),
        (2 * services).next_power_of_two(),
        services.next_power_of_two()
    );
    y += "services:\n";
    for s in 0..services {
        let _ = writeln!(
            y,
            "  - name: s{s:04}\n    acceptance_required: false\n    allowed_principals: ['*']\n    load_balancers:\n      - name: nlb\n        zone: z1\n        listeners:\n          - port: 80\n            targets:\n              - {{ ip: 172.16.{}.{}, port: 8080 }}\n              - {{ ip: 172.16.{}.{}, port: 8081 }}",
            1 + s / 250,
            1 + s % 250,
            1 + s / 250,
            1 + s % 250
        );
    }
    y += "endpoints:\n";
    for e in 0..endpoints {
        let network = if e % 2 == 0 { "vpc-a" } else { "vpc-b" };
        let _ = writeln!(
            y,
            "  - {{ id: e{e:05}, service: s{:04}, principal: p, consumer_network: {network}, ip: 10.{}.{}.{}, zone: z1 }}",
            e % services,
            e / 65536,
            e / 256 % 256,
            e % 256
        );
    }
    y
}

struct Timings {
    /// validate → ids → desired → plan.
    propose: f64,
    apply: f64,
    changes: usize,
}

/// One pass of the pipeline to `text`.
fn step(pipeline: &mut Pipeline, text: &str, facts: &Facts) -> Timings {
    let inputs = Inputs {
        facts,
        seed: 1,
        unhealthy: &Default::default(),
        flow_records: false,
        verified: &Default::default(),
        failover: &Default::default(),
    };
    let t = Instant::now();
    let proposal = pipeline
        .propose("bench.yaml", text, &inputs)
        .expect("valid");
    let propose = t.elapsed().as_secs_f64();
    let changes = proposal.plan.changes.len();
    let t = Instant::now();
    pipeline.apply(proposal).expect("apply");
    Timings {
        propose,
        apply: t.elapsed().as_secs_f64(),
        changes,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (services, endpoints, rounds) = if smoke {
        (10, 100, 1)
    } else {
        (1000, 10_000, 5)
    };
    let text = config_text(services, endpoints);
    // One endpoint changes state: the reload a provider's `accept` or `reject` causes.
    let changed = text.replacen("zone: z1 }\n", "zone: z1, state: rejected }\n", 1);

    let ns = Namespace::new("bench-control").expect("namespace");
    for (link, peer) in [
        ("cons-a", "cons-a-peer"),
        ("cons-b", "cons-b-peer"),
        ("prov", "prov-peer"),
    ] {
        veth(&ns, link, &ns, peer).expect("veth");
    }
    let instance = Instance::new(ns.name()).unwrap();
    instance.prepare().unwrap();
    let rows = ns
        .enter(|| {
            let config = config::parse("bench.yaml", &text).expect("YAML");
            let facts = Facts::of_this_node().expect("facts");
            let mut full = Vec::new();
            let mut reload = Vec::new();
            let mut scrapes = Vec::new();
            let mut exposition = 0;
            for _ in 0..rounds {
                let _ = loader::remove_pins(&instance);
                let (_ebpf, maps) = loader::load(&config, &instance).expect("load");
                let mut pipeline = Pipeline::new(maps, Applied::default());
                let first = step(&mut pipeline, &text, &facts);
                // A metrics scrape: every endpoint's counters and usage, every target.
                let applied = pipeline.applied();
                let snapshot = metrics::Snapshot {
                    config: applied.config.clone(),
                    ids: applied.ids.clone(),
                    generation: applied.generation,
                    ..metrics::Snapshot::default()
                };
                let t = Instant::now();
                exposition = metrics::render(pipeline.maps(), &snapshot, &Default::default())
                    .expect("metrics")
                    .len();
                scrapes.push(t.elapsed().as_secs_f64());
                let again = step(&mut pipeline, &changed, &facts);
                // Its policy, and its address: a rejected endpoint that was never
                // accepted is not answered for.
                assert_eq!(again.changes, 2, "a one-endpoint change is two map changes");
                full.push(first);
                reload.push(again);
            }
            // Expiry reads the flow table from user space, a slice a round: how long a
            // round and a whole pass take over a full table.
            let flows = if smoke { 1_000 } else { 1_000_000 };
            let mut big = config.clone();
            big.node.tables.flows = 2 * flows;
            let _ = loader::remove_pins(&instance);
            let (mut ebpf, maps) = loader::load(&big, &instance).expect("load");
            let mut pipeline = Pipeline::new(maps, Applied::default());
            step(&mut pipeline, &text, &facts);
            {
                let mut table = pipeline
                    .maps_mut()
                    .hash_mut::<FlowKey, Flow>(name::FLOWS)
                    .expect("FLOWS");
                for i in 0..2 * flows {
                    let key = FlowKey {
                        src: Addr::ipv4((0x0a00_0000u32 + i).to_ne_bytes()),
                        dst_port_be: 80,
                        scope: FlowKey::scope(1 + i % 2, FAMILY_IPV4, PROTO_TCP),
                        ..FlowKey::default()
                    };
                    let flow = Flow {
                        last_seen_s: u64::from(expiry::now_s()),
                        ..Flow::default()
                    };
                    table.insert(key, flow, 0).expect("insert");
                }
            }
            let mut expiry = Expiry::default();
            let program = loader::expire_program(&mut ebpf).expect("expire program");
            let contents = pipeline.applied().contents.clone();
            let mut rounds_ms = Vec::new();
            let t = Instant::now();
            for _ in 0..expiry::PASS {
                let r = Instant::now();
                expiry
                    .round(program, pipeline.maps(), &contents, expiry::now_ns())
                    .expect("expire");
                rounds_ms.push(r.elapsed().as_secs_f64() * 1e3);
            }
            let pass = (2 * flows, t.elapsed().as_secs_f64(), median(rounds_ms));
            // `flows` streams the table: all of these entries are connections to list.
            let t = Instant::now();
            let listed = flows::write(
                pipeline.maps(),
                &pipeline.applied().ids,
                &flows::Filter::default(),
                true,
                &mut std::io::sink(),
            )
            .expect("flows");
            assert_eq!(
                listed,
                2 * flows as usize,
                "every consumer-side entry listed"
            );
            let listing = (listed, t.elapsed().as_secs_f64());
            (full, reload, pass, listing, (median(scrapes), exposition))
        })
        .expect("namespace thread");
    let _ = loader::remove_pins(&instance);
    let _ = instance.remove();

    let (full, reload, (entries, pass, round_ms), (listed, listing), (scrape, exposition)) = rows;
    println!(
        "control plane: {endpoints} endpoints over {services} services, median of {rounds} round(s), ms"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>9}",
        "", "propose", "apply", "total", "changes"
    );
    for (name, runs) in [
        ("first apply (empty maps)", &full),
        ("reload: one endpoint rejected", &reload),
    ] {
        let m = |f: fn(&Timings) -> f64| median(runs.iter().map(f).collect()) * 1e3;
        println!(
            "{name:<34} {:>10.1} {:>10.1} {:>10.1} {:>9}",
            m(|t| t.propose),
            m(|t| t.apply),
            m(|t| t.propose + t.apply),
            runs[0].changes
        );
    }
    println!(
        "expiry over {entries} flow entries: a round (1/{} of the table) {round_ms:.1} ms, a whole pass {:.0} ms of agent time",
        expiry::PASS,
        pass * 1e3
    );
    println!(
        "flows --json over {entries} flow entries: {listed} connections listed in {:.0} ms",
        listing * 1e3
    );
    println!(
        "metrics scrape at {endpoints} endpoints: {:.1} ms to read the maps and encode {} KiB",
        scrape * 1e3,
        exposition / 1024
    );
}
