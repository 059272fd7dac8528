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
