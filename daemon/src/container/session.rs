//! One process session in a container's pod shim, used by ExecSync, streaming Exec and
//! Attach alike: a private directory under the state dir's `exec/` with the FIFOs the
//! shim writes the process's output to (and reads its stdin from), berthd's ends of
//! them, and the exec's lifecycle (register, start, wait, kill, delete). The directory
//! goes when the session is dropped; startup cleanup removes what a crash left there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::unix::pipe;

use crate::error::{Error, Result};
use crate::shim_client::{ExecIo, Exit, ShimHandle};

/// Which of a process's streams a session carries, and whether it has a terminal (whose
/// stderr is merged into stdout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionIo {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A terminal's size in characters (the client's first one, for an exec's terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSize {
    pub width: u32,
    pub height: u32,
}

/// What a session runs: a new exec process (its OCI Process JSON), or the container's
/// own init process, whose output is copied to the session (Berth's Attach service).
enum Kind {
    Exec { spec: Vec<u8> },
    Attach,
}

/// The container an attach session joins, as far as its stdio goes.
#[derive(Debug, Clone)]
pub struct AttachTarget {
    pub tty: bool,
    pub stdin_once: bool,
    /// The container's stdin FIFO (the shim holds it open), if it was created with one.
    pub stdin_fifo: Option<PathBuf>,
}

/// A small handle for the tasks that feed a session's stdin and terminal size.
#[derive(Clone)]
pub struct Control {
    shim: ShimHandle,
    container_id: String,
    exec_id: Option<String>,
}

impl Control {
    /// Closes the process's stdin in the shim (it holds its end until told).
    pub async fn close_stdin(&self) -> Result<()> {
        self.shim
            .close_stdin(&self.container_id, self.exec_id.as_deref())
            .await
    }

    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.shim
            .resize(&self.container_id, self.exec_id.as_deref(), width, height)
            .await
    }

    /// Waits, at most `limit`, for the process's exit.
    pub async fn wait(&self, limit: Duration) -> Result<Exit> {
        self.shim
            .wait(&self.container_id, self.exec_id.as_deref(), limit)
            .await
    }
}

pub struct ProcessSession {
    control: Control,
    kind: Kind,
    dir: PathBuf,
    io: ExecIo,
    /// berthd's ends of the FIFOs, until taken.
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    started: bool,
}

fn fifo(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::Internal(format!("mkfifo {}: {e}", p.display())))?;
    Ok(p)
}

impl ProcessSession {
    /// A session for a new exec of `spec` in container `container_id` (registered with
    /// the shim by [`start`](Self::start)).
    pub fn exec(
        shim: ShimHandle,
        container_id: &str,
        exec_root: &Path,
        spec: Vec<u8>,
        io: SessionIo,
    ) -> Result<ProcessSession> {
        let exec_id = format!("exec-{}", &crate::util::new_id()?[..16]);
        let dir = exec_root.join(&exec_id);
        let control = Control {
            shim,
            container_id: container_id.into(),
            exec_id: Some(exec_id),
        };
        ProcessSession::open(control, Kind::Exec { spec }, dir, io)
    }

    /// A session that receives a copy of the container's own output (stdin is not the
    /// session's: attachers write to the container's stdin FIFO).
    pub fn attach(
        shim: ShimHandle,
        container_id: &str,
        exec_root: &Path,
        io: SessionIo,
    ) -> Result<ProcessSession> {
        let dir = exec_root.join(format!("attach-{}", &crate::util::new_id()?[..16]));
        let control = Control {
            shim,
            container_id: container_id.into(),
            exec_id: None,
        };
        let io = SessionIo { stdin: false, ..io };
        ProcessSession::open(control, Kind::Attach, dir, io)
    }

    fn open(control: Control, kind: Kind, dir: PathBuf, want: SessionIo) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        let mut s = ProcessSession {
            control,
            kind,
            dir,
            io: ExecIo {
                terminal: want.tty,
                ..Default::default()
            },
            stdin: None,
            stdout: None,
            stderr: None,
            started: false,
        };
        // Our ends are open before the shim opens the FIFOs. stdin is opened read-write
        // so that opening never blocks and EOF comes when we drop it.
        if want.stdin {
            let p = fifo(&s.dir, "stdin")?;
            s.stdin = Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&p)
                    .map_err(|e| Error::io("open stdin fifo", e))?,
            );
            s.io.stdin = p.display().to_string();
        }
        if want.stdout {
            let p = fifo(&s.dir, "stdout")?;
            s.stdout = Some(
                pipe::OpenOptions::new()
                    .open_receiver(&p)
                    .map_err(|e| Error::io("open stdout fifo", e))?,
            );
            s.io.stdout = p.display().to_string();
        }
        // A terminal merges stderr into stdout.
        if want.stderr && !want.tty {
            let p = fifo(&s.dir, "stderr")?;
            s.stderr = Some(
                pipe::OpenOptions::new()
                    .open_receiver(&p)
                    .map_err(|e| Error::io("open stderr fifo", e))?,
            );
            s.io.stderr = p.display().to_string();
        }
        Ok(s)
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs the session in the shim: registers and starts the exec (deleted again if it
    /// does not start), or hands the attach FIFOs to the shim.
    pub async fn start(&mut self) -> Result<()> {
        let c = &self.control;
        match &mut self.kind {
            Kind::Exec { spec } => {
                let exec_id = c.exec_id.as_deref().unwrap_or_default();
                c.shim
                    .exec(&c.container_id, exec_id, std::mem::take(spec), &self.io)
                    .await?;
                if let Err(e) = c.shim.start(&c.container_id, Some(exec_id)).await {
                    let _ = c.shim.delete(&c.container_id, Some(exec_id)).await;
                    return Err(e);
                }
            }
            Kind::Attach => {
                c.shim
                    .attach(&c.container_id, None, &self.io.stdout, &self.io.stderr)
                    .await?
            }
        }
        self.started = true;
        Ok(())
    }

    /// Waits, at most `limit`, for the process's exit.
    pub async fn wait(&self, limit: Duration) -> Result<Exit> {
        self.control.wait(limit).await
    }

    /// SIGKILLs an exec and waits (bounded) for it to go.
    pub async fn kill(&self) {
        let c = &self.control;
        if let Some(exec_id) = c.exec_id.as_deref() {
            let _ = c.shim.kill(&c.container_id, Some(exec_id), 9, false).await;
            let _ = c.wait(Duration::from_secs(10)).await;
        }
    }

    /// Deletes a started exec from the shim (which closes its ends of the FIFOs); an
    /// attach has nothing to delete.
    pub async fn delete(&self) -> Result<()> {
        let c = &self.control;
        match c.exec_id.as_deref() {
            Some(exec_id) if self.started => c.shim.delete(&c.container_id, Some(exec_id)).await,
            _ => Ok(()),
        }
    }
}

impl Drop for ProcessSession {
    fn drop(&mut self) {
        // Only FIFOs and an empty dir: quick, and every session's own.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
