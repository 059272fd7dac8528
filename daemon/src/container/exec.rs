//! Processes run in a running container: sessions for an exec or an attach (run by the
//! streaming server, `session`), and ExecSync, which collects an exec's stdout and
//! stderr bounded in time and size.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::Containers;
use crate::error::{Error, Result};

use super::session::{AttachTarget, ConsoleSize, ProcessSession, SessionIo};
use crate::records::{ContainerRecord, CtrState, Records};

/// Output kept per stream (kubelet's limit for exec probes is 16 MiB).
const MAX_OUTPUT: usize = 16 << 20;
/// Beyond an ExecSync's own timeout: the shim's calls around the process (register, start,
/// kill and delete of a timed-out one) on a loaded node.
const EXEC_GRACE: Duration = Duration::from_secs(5);

/// The container's process spec with `cmd` as its args (same env, cwd, user, caps); a
/// terminal gets `console` as its size before the process runs (OCI `consoleSize`, which
/// the runtime sets on the pty it makes). Reads the bundle's config.json: call it off the
/// async workers.
fn exec_spec(
    bundle: &Path,
    cmd: &[String],
    tty: bool,
    console: Option<ConsoleSize>,
) -> Result<Vec<u8>> {
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
    match console.filter(|_| tty) {
        Some(c) => {
            process["consoleSize"] = serde_json::json!({"height": c.height, "width": c.width});
        }
        // The container's own size (if any) is not the exec's client's.
        None => {
            if let Some(p) = process.as_object_mut() {
                p.remove("consoleSize");
            }
        }
    }
    serde_json::to_vec(&process).map_err(|e| Error::Internal(format!("exec spec: {e}")))
}

/// An exec needs a command (checked when its URL is handed out and again when it runs).
pub(super) fn require_command(cmd: &[String]) -> Result<()> {
    if cmd.is_empty() {
        return Err(Error::InvalidArgument(
            "exec command must not be empty".into(),
        ));
    }
    Ok(())
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

impl Containers {
    pub(super) fn running(&self, id: &str) -> Result<ContainerRecord> {
        let rec = self.store.container(id)?;
        if rec.state != CtrState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(rec)
    }

    /// A session for an exec of `cmd` in running container `id` (started by the caller);
    /// a terminal starts at `console`'s size when given.
    pub async fn exec_session(
        &self,
        id: &str,
        cmd: &[String],
        io: SessionIo,
        console: Option<ConsoleSize>,
    ) -> Result<ProcessSession> {
        require_command(cmd)?;
        let rec = self.running(id)?;
        let shim = self.shim_of(&self.store.pod(&rec.pod_id)?).await?;
        let (bundle, args, tty) = (rec.bundle.clone(), cmd.to_vec(), io.tty);
        let spec = tokio::task::spawn_blocking(move || exec_spec(&bundle, &args, tty, console))
            .await
            .map_err(|e| Error::Internal(format!("exec spec: {e}")))??;
        ProcessSession::exec(shim, id, &self.exec_root(), spec, io)
    }

    /// A session receiving running container `id`'s output, and what its stdin is.
    pub async fn attach_session(
        &self,
        id: &str,
        io: SessionIo,
    ) -> Result<(ProcessSession, AttachTarget)> {
        let rec = self.running(id)?;
        let shim = self.shim_of(&self.store.pod(&rec.pod_id)?).await?;
        let target = AttachTarget {
            tty: rec.config.tty,
            stdin_once: rec.config.stdin_once,
            stdin_fifo: rec.config.stdin.then(|| super::stdin_fifo(&rec.bundle)),
        };
        // The container's terminal decides whether there is a separate stderr.
        let io = SessionIo {
            tty: rec.config.tty,
            ..io
        };
        let session = ProcessSession::attach(shim, id, &self.exec_root(), io)?;
        Ok((session, target))
    }

    /// Where sessions keep their FIFOs (startup cleanup empties it).
    fn exec_root(&self) -> std::path::PathBuf {
        self.config.paths.state.join("exec")
    }

    /// Runs `cmd` in container `id`; returns (stdout, stderr, exit code). The output is
    /// read while the process runs (a pipe holds 64 KiB: a process writing more would
    /// block until its timeout otherwise); past [`MAX_OUTPUT`] per stream it is read and
    /// dropped, so the process never blocks on it. With a timeout, the whole call is bounded
    /// by it plus [`EXEC_GRACE`], also when the pod's shim does not answer (a hung shim):
    /// the caller gets DeadlineExceeded, and the session's FIFOs go with the dropped call.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        if timeout <= 0 {
            return self.exec_sync_unbounded(id, cmd, timeout).await;
        }
        let bound = Duration::from_secs(timeout as u64) + EXEC_GRACE;
        tokio::time::timeout(bound, self.exec_sync_unbounded(id, cmd, timeout))
            .await
            .unwrap_or_else(|_| {
                Err(Error::DeadlineExceeded(format!(
                    "exec in {id} did not finish within {timeout}s: the pod's shim did not answer in time"
                )))
            })
    }

    async fn exec_sync_unbounded(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        let io = SessionIo {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut s = self.exec_session(id, &cmd, io, None).await?;
        let read = |r: Option<pipe::Receiver>| async move {
            match r {
                Some(r) => drain(r).await,
                None => Vec::new(),
            }
        };
        // Aborted on every way out (the tasks own the FIFO readers).
        let readers = Readers([
            tokio::spawn(read(s.stdout.take())),
            tokio::spawn(read(s.stderr.take())),
        ]);
        s.start().await?;
        let limit = if timeout > 0 {
            Duration::from_secs(timeout as u64)
        } else {
            Duration::from_secs(24 * 3600)
        };
        let code = match s.wait(limit).await {
            Ok(exit) => exit.status as i32,
            Err(e) => {
                // Timed out: kill it, as kubelet expects, then report the timeout.
                s.kill().await;
                let _ = s.delete().await;
                return Err(Error::DeadlineExceeded(format!(
                    "exec in {id} did not finish within {timeout}s: {e}"
                )));
            }
        };
        // The shim closes its FIFO writers once the process's output ends (and at
        // Delete at the latest), which ends the reads.
        let (collected, deleted) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(15), readers.collect()),
            s.delete()
        );
        deleted?;
        let (out, err) =
            collected.map_err(|_| Error::Internal("exec output did not close".into()))?;
        Ok((out, err, code))
    }
}

/// The stdout and stderr readers of an ExecSync, aborted when dropped unfinished.
struct Readers([tokio::task::JoinHandle<Vec<u8>>; 2]);

impl Readers {
    async fn collect(mut self) -> (Vec<u8>, Vec<u8>) {
        let out = (&mut self.0[0]).await.unwrap_or_default();
        let err = (&mut self.0[1]).await.unwrap_or_default();
        (out, err)
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
