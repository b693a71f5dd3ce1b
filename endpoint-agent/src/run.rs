//! `endpoint-agent run`: the node agent. Config → validate → desired state → load →
//! fill the maps → prepare the host → attach; then wait for SIGINT/SIGTERM and leave
//! nothing behind.

use std::path::Path;

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{apply, config, desired, host, loader};

pub async fn run(path: &Path) -> Result<()> {
    let loaded = config::load(path)?;
    for warning in &loaded.warnings {
        log::warn!("{warning}");
    }
    let config = &loaded.config;
    let desired = desired::build(config, host::link)?;

    let mut ebpf = loader::load(config)?;
    drain_program_logs(&mut ebpf);
    apply::fill(&mut ebpf, &desired)?;
    let host = host::Host::prepare(config)?;
    for interface in &config.node.interfaces {
        let (_, mode) = loader::attach(&mut ebpf, &interface.name)?;
        log::info!(
            "{}: attached in {mode} mode as {:?}{}",
            interface.name,
            interface.role,
            interface
                .consumer_network
                .as_deref()
                .map_or(String::new(), |n| format!(" for consumer network {n:?}"))
        );
    }
    let available = config
        .endpoints
        .iter()
        .filter(|e| e.state == config::State::Available)
        .count();
    log::info!(
        "ready: {} services, {} endpoints ({available} available)",
        config.services.len(),
        config.endpoints.len()
    );

    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
        _ = terminate.recv() => log::info!("SIGTERM: stopping"),
    }
    // Detach first, then put the host back as it was.
    drop(ebpf);
    drop(host);
    log::info!("detached; bye");
    Ok(())
}

/// Forwards the program's aya-log records to the agent's log.
fn drain_program_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            log::warn!("no program logs: {e}");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd and keeps it open while it lives.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let Ok(mut logger) = registered else {
        log::warn!("no program logs: cannot poll the log buffer");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
