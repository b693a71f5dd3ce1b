//! Network namespaces with unique names, deleted on drop.

use std::{
    fs::File,
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

/// Every namespace we make is named `epx-<pid>-<n>-<role>`.
const PREFIX: &str = "epx-";

pub struct Namespace {
    name: String,
    /// An open handle on the namespace, for entering it.
    file: File,
}

impl Namespace {
    /// A new, empty namespace with loopback up.
    pub fn new(role: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let ns = Self { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a program inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace (its network only: it sees the
    /// host's mounts, bpffs included, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        enter_on_exec(Command::new(program), self.file.as_raw_fd())
    }

    /// A handle that keeps the namespace enterable (see [`enter_on_exec`]).
    pub fn handle(&self) -> Result<File> {
        Ok(self.file.try_clone()?)
    }

    /// Runs `f` on a thread inside the namespace and returns its result; a panic in `f`
    /// carries on in the caller. Sockets `f` opens stay in the namespace wherever they
    /// are used later; so do interface lookups and BPF test runs made inside `f`.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.file.as_raw_fd();
        let name = &self.name;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    bail!("setns into {name}: {}", std::io::Error::last_os_error());
                }
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A permanent neighbour entry: `ip` is at `mac` on `dev` (for hosts that answer no
    /// ARP, like an XDP sink).
    pub fn neighbour(&self, ip: std::net::IpAddr, mac: [u8; 6], dev: &str) -> Result<()> {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        let ip = ip.to_string();
        self.ip(&[
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and veth peers with them.
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// `command`, set to run in the network namespace of `netns` (an fd that must stay open
/// until it is spawned).
pub fn enter_on_exec(mut command: Command, netns: RawFd) -> Command {
    // SAFETY: setns is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// A veth pair `a` (in `ns_a`) — `b` (in `ns_b`), both up.
pub fn veth(ns_a: &Namespace, a: &str, ns_b: &Namespace, b: &str) -> Result<()> {
    ns_a.ip(&[
        "link", "add", "name", a, "type", "veth", "peer", "name", b, "netns", &ns_b.name,
    ])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// Removes what runs killed before they could clean up left behind (their process no
/// longer exists): namespaces, and the agent instances named after them — pinned maps
/// and links under /sys/fs/bpf/endpoint-agent, state and lock under /run/endpoint-agent.
pub fn sweep() {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(name) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    for dir in ["/sys/fs/bpf/endpoint-agent", "/run/endpoint-agent"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_name().to_str().is_some_and(stale) {
                continue;
            }
            // Unpinning a link detaches its program; the namespace is gone anyway.
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Whether `name` is the testbed's (`epx-<pid>-…`) and its process is gone.
fn stale(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
