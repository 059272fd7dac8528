//! Launching a pod's shim: finding the binary, running its `start` action in the pod's
//! bundle (which prints the socket address) and connecting to it. Behind [`Launcher`]
//! so the pod and recovery logic can be tested with fake shims.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

use super::{Shim, ShimHandle};

/// The containerd namespace berthd's shims run in (it names their runc root subdir).
pub const NAMESPACE: &str = "berth";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts and connects shims.
#[async_trait::async_trait]
pub trait Launcher: Send + Sync {
    /// Runs the shim's `start` action for pod `id` in `bundle` and connects to it.
    async fn start(&self, bundle: &Path, id: &str) -> Result<ShimHandle>;
    /// Connects to a running shim at `address`.
    async fn connect(&self, address: &str) -> Result<ShimHandle>;
    /// Whether the shim at `address` is gone: its socket is missing or refuses
    /// connections. One that accepts but does not answer is only wedged (stopped,
    /// overloaded).
    fn gone(&self, address: &str) -> bool;
    /// Kills pod `id`'s shim process (SIGKILL, which also ends a stopped one) and waits
    /// until it is gone: for a shim that no longer answers, so a stop or removal can settle
    /// the pod as after a shim's death. True once no such process is left.
    async fn put_down(&self, id: &str) -> bool;
}

/// The real launcher: `containerd-shim-berth-v2` as a child process.
pub struct ShimLauncher {
    binary: PathBuf,
    /// Passed as `-address`: the shim derives its socket name from it, so it must be
    /// the same for every container of a pod (berthd's CRI socket).
    grpc_address: PathBuf,
}

impl ShimLauncher {
    pub fn new(binary: PathBuf, grpc_address: PathBuf) -> Arc<ShimLauncher> {
        Arc::new(ShimLauncher {
            binary,
            grpc_address,
        })
    }
}

#[async_trait::async_trait]
impl Launcher for ShimLauncher {
    async fn start(&self, bundle: &Path, id: &str) -> Result<ShimHandle> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(["-namespace", NAMESPACE, "-id", id, "-address"])
            .arg(&self.grpc_address)
            .arg("start")
            .current_dir(bundle)
            // No TTRPC_ADDRESS: berthd reads exits from the shim's journal, not from
            // forwarded events.
            .env_remove("TTRPC_ADDRESS")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
            .await
            .map_err(|_| Error::Internal(format!("shim start for {id} timed out")))?
            .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // The shim's first write is its address file in the bundle: a full state
            // disk shows there (a pod without an infra writes nothing there before).
            if err.contains("(os error 28)") {
                return Err(Error::no_space(bundle));
            }
            return Err(Error::Internal(format!(
                "shim start for {id} failed: {} {}",
                text,
                err.trim()
            )));
        }
        self.connect(&text).await
    }

    async fn connect(&self, address: &str) -> Result<ShimHandle> {
        Ok(Arc::new(Shim::connect(address).await?))
    }

    async fn put_down(&self, id: &str) -> bool {
        let (id, address) = (id.to_string(), self.grpc_address.clone());
        // Reading /proc is blocking file I/O: not on the async workers.
        tokio::task::spawn_blocking(move || put_down(&id, &address))
            .await
            .unwrap_or(false)
    }

    fn gone(&self, address: &str) -> bool {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        // A local connect: it succeeds or fails at once, never waits on the peer.
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
        }
    }
}

/// The pids of pod `id`'s shim daemons: processes whose command line is a
/// `containerd-shim-*` binary with `-id <id>` and `-address <berthd's address>` (how
/// [`ShimLauncher::start`] runs it, and what the shim re-executes itself with). Matched by
/// command line at the moment of the kill, not by a remembered pid, which may be reused.
fn shim_pids(id: &str, address: &Path) -> Vec<i32> {
    let address = address.to_string_lossy();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            let flag = |name: &str, value: &str| {
                argv.windows(2)
                    .any(|w| w[0] == name.as_bytes() && w[1] == value.as_bytes())
            };
            let is_shim = argv.first().is_some_and(|a0| {
                use std::os::unix::ffi::OsStrExt;
                Path::new(std::ffi::OsStr::from_bytes(a0))
                    .file_name()
                    .is_some_and(|f| f.as_bytes().starts_with(b"containerd-shim"))
            });
            is_shim && flag("-id", id) && flag("-address", &address)
        })
        .collect()
}

/// Whether `pid` has exited: no longer in /proc, or a zombie. Why not "its command line
/// is empty": the kernel drops a dying process's memory (and so its command line) before it
/// closes its files, and the shim's listening socket must be closed when this says so.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// SIGKILLs pod `id`'s shim daemons and waits (5 s at most) for them to be gone.
fn put_down(id: &str, address: &Path) -> bool {
    let pids = shim_pids(id, address);
    for &pid in &pids {
        tracing::warn!(pod_id = %id, pid, "the pod's shim does not answer: killing it");
        // SAFETY: kill(2) on a pid just matched by its command line; no memory is touched.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if pids.iter().all(|&p| exited(p)) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finds the shim binary: the configured path, else next to berthd, else on $PATH.
pub fn locate(configured: &str) -> Result<PathBuf> {
    if !configured.is_empty() {
        let p = PathBuf::from(configured);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Config(format!("shim {configured} does not exist")))
        };
    }
    let name = "containerd-shim-berth-v2";
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| Error::Config(format!("{name} not found next to berthd or on $PATH")))
}
