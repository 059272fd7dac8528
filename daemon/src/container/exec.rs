//! ExecSync: run a command in a running container through the pod's shim, collect its
//! stdout and stderr from FIFOs berthd holds, bounded in time and size.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::error::{Error, Result};
use crate::runtime::Runtime;

use super::CtrState;

/// Output kept per stream (kubelet's limit for exec probes is 16 MiB).
const MAX_OUTPUT: usize = 16 << 20;

/// The container's process spec with `cmd` as its args (same env, cwd, user, caps).
pub(crate) fn exec_spec(bundle: &Path, cmd: &[String], tty: bool) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(bundle.join("config.json")).map_err(|e| Error::io("read config.json", e))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Internal(format!("config.json: {e}")))?;
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| Error::Internal("config.json has no process".into()))?;
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::Value::Bool(tty);
    serde_json::to_vec(&process).map_err(|e| Error::Internal(format!("exec spec: {e}")))
}

async fn drain(mut r: pipe::Receiver) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                if out.len() < MAX_OUTPUT {
                    out.extend_from_slice(&buf[..n.min(MAX_OUTPUT - out.len())]);
                }
            }
        }
    }
}

impl Runtime {
    /// Runs `cmd` in container `id`; returns (stdout, stderr, exit code).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument(
                "exec command must not be empty".into(),
            ));
        }
        let rec = self.container(id)?;
        if rec.state != CtrState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let pod = self.pod(&rec.pod_id)?;
        let shim = self.shim_of(&pod).await?;
        let exec_id = format!("exec-{}", &crate::util::new_id()?[..16]);
        let dir = self.config.paths.state.join("exec").join(&exec_id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir exec dir", e))?;
        let res = async {
            let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
            for p in [&out_path, &err_path] {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| Error::Internal(format!("mkfifo: {e}")))?;
            }
            // Our read ends exist before the shim opens the FIFOs for writing.
            let out_r = pipe::OpenOptions::new()
                .open_receiver(&out_path)
                .map_err(|e| Error::io("open stdout fifo", e))?;
            let err_r = pipe::OpenOptions::new()
                .open_receiver(&err_path)
                .map_err(|e| Error::io("open stderr fifo", e))?;
            let spec = exec_spec(&rec.bundle, &cmd, false)?;
            let io = crate::pod::shim::ExecIo {
                stdout: out_path.display().to_string(),
                stderr: err_path.display().to_string(),
                ..Default::default()
            };
            shim.exec_io(id, &exec_id, spec, &io).await?;
            let started = shim.start_exec(id, &exec_id).await;
            if let Err(e) = started {
                let _ = shim.delete_exec(id, &exec_id).await;
                return Err(e);
            }
            let limit = if timeout > 0 {
                Duration::from_secs(timeout as u64)
            } else {
                Duration::from_secs(24 * 3600)
            };
            let code = match shim.wait_exec(id, &exec_id, limit).await {
                Ok(c) => c as i32,
                Err(e) => {
                    // Timed out: kill it, as kubelet expects, then report the timeout.
                    let _ = shim.kill_exec(id, &exec_id, 9).await;
                    let _ = shim.wait_exec(id, &exec_id, Duration::from_secs(10)).await;
                    let _ = shim.delete_exec(id, &exec_id).await;
                    return Err(Error::Internal(format!(
                        "exec in {id} did not finish within {timeout}s: {e}"
                    )));
                }
            };
            // The shim closes its FIFO writers once the process's output ends (and at
            // Delete at the latest), which ends our reads.
            let collect = async { tokio::join!(drain(out_r), drain(err_r)) };
            let (collected, deleted) = tokio::join!(
                tokio::time::timeout(Duration::from_secs(15), collect),
                shim.delete_exec(id, &exec_id)
            );
            deleted?;
            let (out, err) =
                collected.map_err(|_| Error::Internal("exec output did not close".into()))?;
            Ok((out, err, code))
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        res
    }
}
