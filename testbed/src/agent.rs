//! The agent binary, run inside a namespace as an instance of its own: started with its
//! events going to a file of the testbed's, waited for until its first config is applied
//! (the `applied` event), stopped by signal (only this process), and its instance cleaned
//! up whatever happened to it.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Namespace, netns::enter_on_exec};

pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
    binary: PathBuf,
    instance: String,
    /// Where its events go (JSON lines), kept across a restart of the same instance.
    events: PathBuf,
    netns: File,
    /// Run `cleanup` for the instance on drop (not after `kill`, whose point is to
    /// leave the data path for the next agent).
    cleanup: bool,
}

impl Agent {
    /// Starts `binary --instance <instance> run --config <config> <extra…>` in `ns`, its
    /// events going to a file of the testbed's, and waits until its config is applied.
    pub fn start(
        ns: &Namespace,
        binary: &Path,
        instance: &str,
        config: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let netns = ns.handle()?;
        let events = std::env::temp_dir().join(format!("endpoint-testbed-{instance}.events"));
        let applied = applied_in(&events).len();
        let mut child = enter_on_exec(Command::new(binary), netns.as_raw_fd())
            .args(["--instance", instance, "run", "--config"])
            .arg(config)
            .arg("--events")
            .arg(&events)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the agent")?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("agent stderr")?;
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let mut agent = Self {
            child,
            log,
            binary: binary.to_path_buf(),
            instance: instance.to_string(),
            events,
            netns,
            cleanup: true,
        };
        // Ready once it applied its config (a restarted agent applies the same
        // generation again).
        let deadline = Instant::now() + Duration::from_secs(30);
        while applied_in(&agent.events).len() <= applied {
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "the agent exited ({status}) before it was ready:\n{}",
                    agent.log()
                );
            }
            if Instant::now() > deadline {
                bail!("the agent was not ready within 30 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    /// Every event it emitted so far (JSON lines).
    pub fn events(&self) -> String {
        std::fs::read_to_string(&self.events).unwrap_or_default()
    }

    /// The config generation the maps hold (its last `applied` event's; 0: none yet).
    pub fn generation(&self) -> u64 {
        applied_in(&self.events).into_iter().max().unwrap_or(0)
    }

    /// Waits up to `timeout` until config generation `generation` is applied.
    pub fn wait_generation(&mut self, generation: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.generation() < generation {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the agent exited ({status}) before generation {generation} was applied:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "generation {generation} was not applied within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for `text` to appear in the log.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if Instant::now() > deadline {
                bail!(
                    "{text:?} not in the agent's log within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Sends SIGTERM and waits (up to 10 s) for the agent to exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM, SIGINT, SIGKILL) and waits (up to 10 s) for the agent to
    /// exit.
    pub fn stop_with(&mut self, signal: i32) -> Result<ExitStatus> {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                bail!(
                    "the agent ignored signal {signal} for 10 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the agent dies at once, leaving its data path running (a later agent of
    /// the same instance adopts it, and cleans up in the end).
    pub fn kill(mut self) -> Result<()> {
        self.cleanup = false;
        self.stop_with(libc::SIGKILL).map(drop)
    }

    /// SIGTERM to an agent run with `--on-exit keep`: it leaves its data path for the
    /// next agent of the instance (which cleans up in the end).
    pub fn stop_keeping(mut self) -> Result<ExitStatus> {
        self.cleanup = false;
        self.stop()
    }

    /// Sends `signal` without waiting (SIGHUP: reload).
    pub fn signal(&self, signal: i32) {
        // SAFETY: a signal to the child we started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Runs another command of the agent binary for this instance, in its namespace.
    pub fn command(&self, args: &[&str]) -> Result<std::process::Output> {
        let output = enter_on_exec(Command::new(&self.binary), self.netns.as_raw_fd())
            .args(["--instance", &self.instance])
            .args(args)
            .output()
            .context("running the agent binary")?;
        Ok(output)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
        // Whatever state the agent left, the instance goes (and its events with it).
        if self.cleanup {
            let _ = self.command(&["cleanup"]);
            let _ = std::fs::remove_file(&self.events);
        }
    }
}

/// The generations of the `applied` events in an events file, in order.
fn applied_in(events: &Path) -> Vec<u64> {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            (value["event"] == "applied").then(|| value["generation"].as_u64())?
        })
        .collect()
}
