//! The agent binary, run inside a namespace: started, waited for until ready, stopped
//! with SIGTERM (and only that process).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Namespace;

pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `binary run --config config` in `ns` and waits until it says it is ready.
    pub fn start(ns: &Namespace, binary: &Path, config: &Path) -> Result<Self> {
        let mut child = ns
            .command(binary.to_str().context("agent path")?)
            .args(["run", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the agent")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let stderr = child.stderr.take().context("agent stderr")?;
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("ready:") {
                        let _ = ready_tx.send(());
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let mut agent = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ready.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(agent);
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "the agent exited ({status}) before it was ready:\n{}",
                    agent.log()
                );
            }
            if Instant::now() > deadline {
                bail!("the agent was not ready within 30 s:\n{}", agent.log());
            }
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the agent to exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM, SIGINT) and waits (up to 10 s) for the agent to exit.
    pub fn stop_with(&mut self, signal: i32) -> Result<ExitStatus> {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                bail!("the agent ignored SIGTERM for 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a signal to the child we started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}
