//! Layer C: real TCP through the node, the forwarder against nftables DNAT on the same
//! namespaces: connections per second (connect, one request and answer, close) and bulk
//! throughput. Both ways have an XDP program on the node's ingress veth, so both pay
//! the TSO loss that native XDP on a veth causes.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use testbed::{Namespace, Server, accept_until, at};

use crate::{
    bed::Bed,
    report::{Report, TcpVariant, median},
};

/// Completed connections per second from `ns` to `to` over `seconds`, and how many
/// attempts failed.
fn connections_per_second(ns: &Namespace, to: SocketAddrV4, seconds: f64) -> Result<(f64, u64)> {
    ns.enter(move || -> Result<(f64, u64)> {
        let once = || -> Result<()> {
            let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"ping\n")?;
            let mut answer = String::new();
            BufReader::new(&stream).read_line(&mut answer)?;
            anyhow::ensure!(answer.ends_with("ping\n"), "answer {answer:?}");
            Ok(())
        };
        let start = Instant::now();
        let (mut done, mut failed) = (0u64, 0u64);
        while start.elapsed().as_secs_f64() < seconds {
            match once() {
                Ok(()) => done += 1,
                Err(_) => failed += 1,
            }
        }
        anyhow::ensure!(
            done > 0,
            "no connection to {to} completed ({failed} failed)"
        );
        Ok((done as f64 / start.elapsed().as_secs_f64(), failed))
    })?
}

/// Gbit/s sent from `ns` to a discarding server at `to` for `seconds`.
fn bulk(ns: &Namespace, to: SocketAddrV4, seconds: f64) -> Result<f64> {
    ns.enter(move || -> Result<f64> {
        let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
        let chunk = vec![0x5au8; 1 << 16];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            stream.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        Ok(sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
    })?
}

/// A server that reads and discards everything, until dropped.
struct Discard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Discard {
    fn start(ns: &Namespace, addr: SocketAddrV4) -> Result<Self> {
        let listener = ns.enter(move || TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            accept_until(&listener, &flag, |mut stream, _| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                });
            });
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Discard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn run(report: &mut Report, bed: &Bed, smoke: bool) -> Result<()> {
    // 3 rounds of 1 s stay well inside the 64k client ports a destination has per
    // minute (TIME_WAIT).
    let (rounds, seconds) = if smoke { (1, 0.3) } else { (3, 1.0) };
    let _servers = [
        Server::start(&bed.provider, "target-1", at([172, 16, 0, 10].into(), 8080))?,
        Server::start(&bed.provider, "target-2", at([172, 16, 0, 11].into(), 8080))?,
    ];
    let _discard = Discard::start(&bed.provider, at([172, 16, 0, 10].into(), 9000))?;
    let ways = [
        (
            "this forwarder",
            at([10, 0, 0, 100].into(), 80),
            at([10, 0, 0, 100].into(), 9000),
        ),
        (
            "nftables dnat + masquerade",
            at([10, 1, 0, 100].into(), 80),
            at([10, 1, 0, 100].into(), 9000),
        ),
    ];
    let mut cps = vec![Vec::new(); ways.len()];
    let mut failed = vec![0u64; ways.len()];
    let mut gbps = vec![Vec::new(); ways.len()];
    for _ in 0..rounds {
        for (i, (_, requests, stream)) in ways.iter().enumerate() {
            let (rate, failures) = connections_per_second(&bed.consumer, *requests, seconds)
                .with_context(|| format!("agent log:\n{}", bed.agent.log()))?;
            cps[i].push(rate);
            failed[i] += failures;
            gbps[i].push(bulk(&bed.consumer, *stream, seconds)?);
        }
    }
    for (i, (name, _, _)) in ways.iter().enumerate() {
        report.tcp.push(TcpVariant {
            measure: "connections per second".into(),
            variant: name.to_string(),
            value: median(&cps[i]),
            unit: "conn/s".into(),
            failed: failed[i],
        });
    }
    for (i, (name, _, _)) in ways.iter().enumerate() {
        report.tcp.push(TcpVariant {
            measure: "bulk throughput".into(),
            variant: name.to_string(),
            value: median(&gbps[i]),
            unit: "Gbit/s".into(),
            failed: 0,
        });
    }
    report.tcp_ratios = vec![
        (
            "connections per second, forwarder / nftables".into(),
            median(&cps[0]) / median(&cps[1]),
        ),
        (
            "bulk throughput, forwarder / kernel path with XDP pass".into(),
            median(&gbps[0]) / median(&gbps[1]),
        ),
    ];
    Ok(())
}
