//! Fleet benchmark: how one etcd serves many nodes. A real etcd on loopback (its own
//! data directory, removed after), a model of 10,000 endpoints over 1,000 services
//! imported as the `store import` command does, and 10 followers — the agent's own
//! model follower (`store::follow::model`), as many as nodes — watching it. Measured:
//! the import, a node's full read, and a change's fan-out (from the put to the last
//! follower handing the new model to its agent, its 50 ms quiet window included) over
//! 50 changes. `--smoke`: 200 endpoints, 3 followers, 5 changes; `--followers N`: N.

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use endpoint_agent::store::{
    Location, Store,
    follow::{self, Update},
};
use tokio::sync::mpsc;

fn model_text(services: usize, endpoints: usize) -> String {
    let mut y = String::from("services:\n");
    for s in 0..services {
        let _ = writeln!(
            y,
            "  - name: s{s:04}\n    acceptance_required: false\n    allowed_principals: ['*']\n    load_balancers:\n      - name: nlb\n        zone: z1\n        listeners:\n          - port: 80\n            targets:\n              - {{ ip: 172.16.{}.{}, port: 8080 }}",
            1 + s / 250,
            1 + s % 250,
        );
    }
    y += "endpoints:\n";
    for e in 0..endpoints {
        let _ = writeln!(
            y,
            "  - {{ id: e{e:05}, service: s{:04}, principal: p, consumer_network: vpc-a, ip: 10.{}.{}.{}, zone: z1 }}",
            e % services,
            e / 65536,
            e / 256 % 256,
            e % 256
        );
    }
    y
}

/// etcd on 127.0.0.1:`port`, killed (only it) and its data removed on drop.
struct Etcd {
    child: Child,
    data: std::path::PathBuf,
}

impl Etcd {
    fn start(port: u16) -> Result<Self> {
        let data = std::env::temp_dir().join(format!("endpoint-bench-etcd-{}", std::process::id()));
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", port + 1);
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd (Debian's etcd-server; `cargo xtask setup` installs it)")?;
        Ok(Self { child, data })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let (services, endpoints, mut followers, changes) = if smoke {
        (20, 200, 3, 5)
    } else {
        (1_000, 10_000, 10, 50)
    };
    // `--followers N`: how the fan-out grows with the nodes.
    if let Some(n) = args.iter().position(|a| a == "--followers") {
        followers = args
            .get(n + 1)
            .and_then(|n| n.parse().ok())
            .context("--followers N")?;
    }
    // A port of this run's own, clear of etcd's default.
    let port = 30_000 + (std::process::id() % 10_000) as u16 * 2;
    let _etcd = Etcd::start(port)?;
    let location: Location = format!("etcd://127.0.0.1:{port}/bench").parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(location, services, endpoints, followers, changes))
}

async fn run(
    location: Location,
    services: usize,
    endpoints: usize,
    followers: usize,
    changes: usize,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut store = loop {
        if let Ok(mut store) = Store::connect(&location).await
            && store.model().await.is_ok()
        {
            break store;
        }
        if Instant::now() > deadline {
            bail!("etcd did not start within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = model_text(services, endpoints);
    let started = Instant::now();
    store.import(&text).await?;
    let import = started.elapsed();
    let started = Instant::now();
    let model = store.model().await?;
    let read = started.elapsed();
    let bytes: usize = model.objects.iter().map(|(k, v)| k.len() + v.len()).sum();

    let (updates, mut received) = mpsc::unbounded_channel();
    for f in 0..followers {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(follow::model(location.clone(), tx));
        let updates = updates.clone();
        tokio::spawn(async move {
            while let Some(update) = rx.recv().await {
                if let Update::Model(model) = update {
                    let _ = updates.send((f, model.revision, Instant::now()));
                }
            }
        });
    }
    // Every follower has read the model whole.
    let mut ready = vec![false; followers];
    while ready.contains(&false) {
        let (f, _, _) = received.recv().await.context("followers")?;
        ready[f] = true;
    }
    let mut took = Vec::new();
    for change in 0..changes {
        let value = format!(
            "{{ id: e00000, service: s0000, principal: p, consumer_network: vpc-a, ip: 10.0.0.0, zone: z1, state: {} }}",
            if change % 2 == 0 {
                "rejected"
            } else {
                "available"
            }
        );
        let put = Instant::now();
        let revision = store
            .client
            .put(store.key("model/endpoints/e00000"), value, None)
            .await?
            .header()
            .map_or(0, |h| h.revision());
        let mut seen = vec![false; followers];
        let mut last = put;
        while seen.contains(&false) {
            let (f, at, when) = tokio::time::timeout(Duration::from_secs(10), received.recv())
                .await
                .context("a follower missed a change for 10 s")?
                .context("followers")?;
            if at >= revision {
                seen[f] = true;
                last = last.max(when);
            }
        }
        took.push(last - put);
    }
    took.sort();
    println!(
        "fleet: {endpoints} endpoints over {services} services ({} objects, {:.1} MB in etcd): \
         import {:.2} s, a node's full read {:.0} ms",
        model.objects.len(),
        bytes as f64 / 1e6,
        import.as_secs_f64(),
        read.as_secs_f64() * 1e3
    );
    println!(
        "fleet: a change to the last of {followers} followers: p50 {:.1} ms, p99 {:.1} ms \
         ({changes} changes; 50 ms of each is the follower's quiet window)",
        percentile(&took, 0.5).as_secs_f64() * 1e3,
        percentile(&took, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
