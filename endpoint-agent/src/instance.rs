//! An agent instance and where it keeps what must outlive its process: the pinned maps
//! and links under bpffs (so the data path keeps running, and a restarted agent adopts
//! it), and a state directory with the ids, the last applied config, the host changes
//! to undo and the attach modes.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::{Serialize, de::DeserializeOwned};

const BPFFS: &str = "/sys/fs/bpf";

/// What an instance keeps of its applied configs besides the last text and the ids.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Record {
    /// Config generations applied to the maps.
    pub generation: u64,
    /// The flow hash's seed, when the config names none: random, then kept.
    pub seed: u32,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    /// `/sys/fs/bpf/endpoint-agent/<name>`: maps, and `links/<interface>`.
    pub pins: PathBuf,
    /// `/run/endpoint-agent/<name>`.
    pub state: PathBuf,
}

impl Instance {
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("instance name {name:?}: use letters, digits, '-' and '_'");
        }
        Ok(Self {
            name: name.to_string(),
            pins: Path::new(BPFFS).join("endpoint-agent").join(name),
            state: Path::new("/run/endpoint-agent").join(name),
        })
    }

    /// Mounts bpffs if it is not (a fresh machine has an empty `/sys/fs/bpf`) and makes
    /// the directories.
    pub fn prepare(&self) -> Result<()> {
        // Agents starting at once must not both mount: the second mount would hide what
        // the first one pinned. The mount point itself is the lock.
        let mount_point = fs::File::open(BPFFS).with_context(|| format!("opening {BPFFS}"))?;
        mount_point
            .lock()
            .context("locking the bpffs mount point")?;
        let mounts = fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
        let mounted = mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
        });
        if !mounted {
            log::info!("mounting bpffs on {BPFFS}");
            let status = Command::new("mount")
                .args(["-t", "bpf", "bpf", BPFFS])
                .status()
                .context("running mount")?;
            if !status.success() {
                bail!("could not mount bpffs on {BPFFS}");
            }
        }
        for dir in [self.pins.join("links"), self.state.clone()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Makes this process the instance's only agent (or `cleanup`) until the returned lock
    /// is dropped; fails at once, naming the holder, if another process holds it.
    pub fn lock(&self) -> Result<fs::File> {
        let root = self
            .state
            .parent()
            .context("a state directory has a parent")?;
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        // Beside the state directory, not in it: the lock outlives `remove`.
        let path = root.join(format!("{}.lock", self.name));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A POSIX record lock, not flock: it belongs to this process alone, so a child
        // caught between fork and exec when the agent is killed cannot keep holding it
        // (an flock would live on in the child's copy of the descriptor).
        let whole = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        // SAFETY: fcntl on a descriptor this function owns, with a valid lock request.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &whole) } != 0 {
            let e = std::io::Error::last_os_error();
            let holder = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "instance {:?} is in use by another agent (pid {}): {e}",
                self.name,
                holder.trim()
            );
        }
        use std::io::Write as _;
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(file)
    }

    /// Whether an agent of this instance left a data path behind (pinned maps).
    pub fn exists(&self) -> bool {
        self.pins.join(endpoint_common::maps::name::FLOWS).exists()
    }

    pub fn link_pin(&self, interface: &str) -> PathBuf {
        self.pins.join("links").join(interface)
    }

    pub fn read<T: DeserializeOwned>(&self, file: &str) -> Result<Option<T>> {
        let path = self.state.join(file);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `file` atomically (a crash leaves the old or the new version).
    pub fn write<T: Serialize>(&self, file: &str, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        write_atomically(&self.state.join(file), text.as_bytes())
    }

    /// Removes the pins and the state directory.
    pub fn remove(&self) -> Result<()> {
        for dir in [&self.pins, &self.state] {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
        // The parents go too when no other instance uses them.
        for dir in [self.pins.parent(), self.state.parent()]
            .into_iter()
            .flatten()
        {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = path.file_name().context("a file path")?.to_string_lossy();
    let temporary = path.with_file_name(format!(
        ".{name}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}
