//! Control-plane benchmark: how long the agent takes to validate, build, plan and
//! apply a config of 10,000 endpoints over 1,000 services — all at once (a first start)
//! and as a reload that changes one endpoint. Real maps, medians of several rounds.
//! `--smoke`: a small config and one round, checking only that it all works.

use std::{fmt::Write as _, time::Instant};

use aya::maps::{HashMap, MapData};
use endpoint_agent::{
    apply, desired, expiry, facts::Facts, host, ids::Ids, instance::Instance, loader, plan::Plan,
    validate,
};
use endpoint_common::maps::{Addr, Flow, FlowKey};
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
    validate: f64,
    desired: f64,
    plan: f64,
    apply: f64,
    changes: usize,
}

/// Runs validate → ids → desired → plan → apply from `current` to `text`.
fn step(
    text: &str,
    ids: &Ids,
    current: &desired::State,
    ebpf: &mut aya::Ebpf,
) -> (Timings, Ids, desired::State) {
    let t = Instant::now();
    let config = validate::load("bench.yaml", text, &Facts::default())
        .expect("valid")
        .config;
    let validate = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ids = ids.assign(&config);
    let state = desired::build(&config, &ids, &Default::default(), host::link).expect("desired");
    let desired_time = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let plan = Plan::between(current, &state);
    let plan_time = t.elapsed().as_secs_f64();
    let t = Instant::now();
    apply::apply(ebpf, &plan).expect("apply");
    let apply_time = t.elapsed().as_secs_f64();
    (
        Timings {
            validate,
            desired: desired_time,
            plan: plan_time,
            apply: apply_time,
            changes: plan.changes.len(),
        },
        ids,
        state,
    )
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
            let config = validate::load("bench.yaml", &text, &Facts::default())
                .expect("valid")
                .config;
            let mut full = Vec::new();
            let mut reload = Vec::new();
            for _ in 0..rounds {
                let _ = loader::remove_pins(&instance);
                let mut ebpf = loader::load(&config, &instance).expect("load");
                let (first, ids, state) = step(
                    &text,
                    &Ids::default(),
                    &desired::State::default(),
                    &mut ebpf,
                );
                let (again, _, _) = step(&changed, &ids, &state, &mut ebpf);
                assert_eq!(again.changes, 1, "a one-endpoint change is one map change");
                full.push(first);
                reload.push(again);
            }
            // Idle expiry scans the flow table from user space: how long for a full one.
            let flows = if smoke { 1_000 } else { 200_000 };
            let mut ebpf = loader::load(&config, &instance).expect("load");
            {
                let map = ebpf.map_mut("FLOWS").expect("FLOWS");
                let mut table: HashMap<&mut MapData, FlowKey, Flow> =
                    HashMap::try_from(map).expect("FLOWS");
                for i in 0..flows {
                    let key = FlowKey {
                        network: 1,
                        src: Addr::ipv4((0x0a00_0000u32 + i).to_be_bytes()),
                        src_port_be: 80,
                        ..FlowKey::default()
                    };
                    table.insert(key, Flow::default(), 0).expect("insert");
                }
            }
            let ids = Ids::default().assign(&config);
            let t = Instant::now();
            expiry::expire(&mut ebpf, &config, &ids, 0).expect("expire");
            // The table holds at most `tables.flows` entries (LRU).
            let scan = (
                flows.min(config.node.tables.flows),
                t.elapsed().as_secs_f64(),
            );
            (full, reload, scan)
        })
        .expect("namespace thread");
    let _ = loader::remove_pins(&instance);
    let _ = instance.remove();

    let (full, reload, (flows, scan)) = rows;
    println!(
        "control plane: {endpoints} endpoints over {services} services, median of {rounds} round(s), ms"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "", "validate", "desired", "plan", "apply", "total", "changes"
    );
    for (name, runs) in [
        ("first apply (empty maps)", &full),
        ("reload: one endpoint rejected", &reload),
    ] {
        let m = |f: fn(&Timings) -> f64| median(runs.iter().map(f).collect()) * 1e3;
        let total = m(|t| t.validate + t.desired + t.plan + t.apply);
        println!(
            "{name:<34} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>9}",
            m(|t| t.validate),
            m(|t| t.desired),
            m(|t| t.plan),
            m(|t| t.apply),
            total,
            runs[0].changes
        );
    }
    println!(
        "idle-expiry scan of {flows} flow entries: {:.0} ms ({:.2} µs per entry)",
        scan * 1e3,
        scan * 1e6 / flows as f64
    );
}
