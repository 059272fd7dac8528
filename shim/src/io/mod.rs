//! A process's stdio: null, FIFOs (copied by the shim, which holds a reader so output
//! survives a containerd restart), `binary://` loggers, `file://` logs, and terminals.

mod binary;
mod console;
pub(crate) mod crilog;
mod fanout;
mod fifo;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::unistd::{fchown, pipe2, Gid, Uid};
use tokio::task::JoinHandle;

pub use console::ConsoleSocket;

use crate::error::{Error, Result};
use crate::reaper::Reaper;
use crate::runc::RuncStdio;

/// The stdio a process was created with, echoed back by State.
#[derive(Debug, Clone, Default)]
pub struct StdioSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioSpec {
    pub fn is_null(&self) -> bool {
        self.stdin.is_empty() && self.stdout.is_empty() && self.stderr.is_empty()
    }
}

/// Who the process runs as, for ownership of its pipe ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct IoOwner {
    pub uid: u32,
    pub gid: u32,
}

/// The shim-side half of a process's stdio, alive for the process's lifetime.
#[derive(Default)]
pub struct ProcessIo {
    /// Output copies (container → client): Delete waits for them to drain.
    copiers: Vec<JoinHandle<()>>,
    /// Input copies (client → container): they end only when the client closes stdin, so
    /// they are cancelled, never waited for.
    inputs: Vec<JoinHandle<()>>,
    /// Shim-held write end of the stdin FIFO; CloseIO drops it (the process then sees EOF).
    stdin_closer: Option<OwnedFd>,
    /// The pty master, for resize.
    console: Option<Arc<OwnedFd>>,
    logger: Option<binary::Logger>,
    /// Attachers of stdout and stderr (cri-log:// only: the shim copies that output).
    attach: Option<(Arc<fanout::Fanout>, Option<Arc<fanout::Fanout>>)>,
}

/// What `prepare` hands to the runtime for create/exec.
pub struct Prepared {
    pub io: ProcessIo,
    pub stdio: RuncStdio,
    pub console_socket: Option<ConsoleSocket>,
    /// For terminals: where the pty master's output goes and where input comes from.
    terminal: Option<(StdioSpec, Option<binary::Logger>, Option<OwnedFd>)>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))
}

fn chown_fd(fd: &OwnedFd, owner: IoOwner) -> Result<()> {
    if owner.uid == 0 && owner.gid == 0 {
        return Ok(());
    }
    fchown(
        fd,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )
    .map_err(|e| Error::sys("fchown stdio pipe", e))
}

pub(crate) enum Scheme {
    Fifo,
    Binary,
    File(PathBuf),
    /// Berth's own: CRI-format log lines, timestamped by the shim.
    CriLog(PathBuf),
}

pub(crate) fn scheme(stdout: &str) -> Result<Scheme> {
    match stdout.split_once("://") {
        None => Ok(Scheme::Fifo),
        Some(("fifo", _)) => Ok(Scheme::Fifo),
        Some(("binary", _)) => Ok(Scheme::Binary),
        Some(("file", rest)) => Ok(Scheme::File(PathBuf::from(rest))),
        Some(("cri-log", rest)) => Ok(Scheme::CriLog(PathBuf::from(rest))),
        Some((other, _)) => Err(Error::InvalidArgument(format!(
            "unknown STDIO scheme {other}"
        ))),
    }
}

fn fifo_path(s: &str) -> &str {
    s.strip_prefix("fifo://").unwrap_or(s)
}

impl Prepared {
    /// Sets up everything that must exist before the runtime runs.
    pub async fn new(
        spec: &StdioSpec,
        id: &str,
        ns: &str,
        owner: IoOwner,
        reaper: &Arc<Reaper>,
    ) -> Result<Prepared> {
        let mut p = Prepared {
            io: ProcessIo::default(),
            stdio: RuncStdio::default(),
            console_socket: None,
            terminal: None,
        };
        if spec.is_null() {
            return Ok(p);
        }
        let sch = scheme(&spec.stdout)?;
        // stdin is always a FIFO when set.
        let stdin_fifo = if spec.stdin.is_empty() {
            None
        } else {
            Some(fifo_path(&spec.stdin).to_string())
        };
        if spec.terminal {
            p.console_socket = Some(ConsoleSocket::new()?);
            let (logger, file) = match &sch {
                Scheme::Binary => {
                    // The logger reads stdout from a pipe we feed with the pty's output.
                    let (lg, w_out, _w_err) =
                        binary::Logger::spawn(&spec.stdout, id, ns, reaper).await?;
                    (Some(lg), Some(w_out))
                }
                Scheme::File(path) => (None, Some(fifo::open_log_file(path)?)),
                Scheme::CriLog(path) => {
                    // The pty's output is copied into a pipe whose read end feeds the log.
                    let (r, w) = pipe()?;
                    let log = open_cri_log(path)?;
                    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r)
                        .map_err(|e| Error::io("log pipe", e))?;
                    let fan = Arc::new(fanout::Fanout::default());
                    p.io.copiers
                        .push(crilog::copy(rx, "stdout", log, fan.clone()));
                    p.io.attach = Some((fan, None));
                    (None, Some(w))
                }
                Scheme::Fifo => (None, None),
            };
            if let Some(path) = &stdin_fifo {
                p.io.stdin_closer = Some(fifo::open_stdin_closer(path)?);
            }
            p.terminal = Some((spec.clone(), logger, file));
            return Ok(p);
        }
        // stdin: a pipe fed from the FIFO.
        if let Some(path) = &stdin_fifo {
            let (r, w) = pipe()?;
            chown_fd(&r, owner)?;
            p.stdio.stdin = Some(r);
            p.io.stdin_closer = Some(fifo::open_stdin_closer(path)?);
            p.io.inputs.push(fifo::copy_fifo_to_pipe(path.clone(), w)?);
        }
        match sch {
            Scheme::Fifo => {
                for (path, slot) in [(&spec.stdout, 1), (&spec.stderr, 2)] {
                    if path.is_empty() {
                        continue;
                    }
                    let (r, w) = pipe()?;
                    chown_fd(&w, owner)?;
                    p.io.copiers
                        .push(fifo::copy_pipe_to_fifo(r, fifo_path(path))?);
                    if slot == 1 {
                        p.stdio.stdout = Some(w);
                    } else {
                        p.stdio.stderr = Some(w);
                    }
                }
            }
            Scheme::Binary => {
                let (lg, w_out, w_err) =
                    binary::Logger::spawn(&spec.stdout, id, ns, reaper).await?;
                chown_fd(&w_out, owner)?;
                chown_fd(&w_err, owner)?;
                p.stdio.stdout = Some(w_out);
                p.stdio.stderr = Some(w_err);
                p.io.logger = Some(lg);
            }
            Scheme::CriLog(path) => {
                let log = open_cri_log(&path)?;
                let fans = [
                    Arc::new(fanout::Fanout::default()),
                    Arc::new(fanout::Fanout::default()),
                ];
                for (slot, stream) in [(1, "stdout"), (2, "stderr")] {
                    let (r, w) = pipe()?;
                    chown_fd(&w, owner)?;
                    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r)
                        .map_err(|e| Error::io("log pipe", e))?;
                    let fan = fans[slot - 1].clone();
                    p.io.copiers
                        .push(crilog::copy(rx, stream, log.clone(), fan));
                    if slot == 1 {
                        p.stdio.stdout = Some(w);
                    } else {
                        p.stdio.stderr = Some(w);
                    }
                }
                let [out, err] = fans;
                p.io.attach = Some((out, Some(err)));
            }
            Scheme::File(path) => {
                // The container writes straight into the file: no copy, so nothing is lost
                // whatever happens to the shim or containerd.
                let f = fifo::open_log_file(&path)?;
                let f2 = f.try_clone().map_err(|e| Error::io("dup log file", e))?;
                p.stdio.stdout = Some(f);
                p.stdio.stderr = Some(f2);
            }
        }
        Ok(p)
    }

    /// After the runtime returned: for a terminal, receive the pty master and start its
    /// copy loops. Returns the process's IO handle.
    pub async fn finish(mut self) -> Result<ProcessIo> {
        if let (Some(sock), Some((spec, logger, out_fd))) =
            (self.console_socket.take(), self.terminal.take())
        {
            let master = sock.receive_master(Duration::from_secs(10)).await?;
            let master = Arc::new(master);
            let stdin = (!spec.stdin.is_empty()).then(|| fifo_path(&spec.stdin).to_string());
            let stdout = (!spec.stdout.is_empty()).then(|| fifo_path(&spec.stdout).to_string());
            let (outputs, inputs) = console::copy_loops(master.clone(), stdin, stdout, out_fd)?;
            self.io.copiers.extend(outputs);
            self.io.inputs.extend(inputs);
            self.io.console = Some(master);
            self.io.logger = logger;
        }
        Ok(self.io)
    }
}

/// `cri-log://PATH`, or no log file for an empty path.
fn open_cri_log(path: &std::path::Path) -> Result<Option<Arc<std::sync::Mutex<crilog::LogFile>>>> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    crilog::LogFile::open(path).map(Some)
}

impl ProcessIo {
    /// Adds attachers: FIFOs (read ends already open, "" = not wanted) that get a copy of
    /// the output from now on. A terminal has only stdout.
    pub fn attach(&self, stdout: &str, stderr: &str) -> Result<()> {
        let Some((out, err)) = &self.attach else {
            return Err(Error::FailedPrecondition(
                "attach needs output the shim copies itself (cri-log:// stdio)".into(),
            ));
        };
        if !stdout.is_empty() {
            out.add(std::path::Path::new(stdout))?;
        }
        if let (false, Some(err)) = (stderr.is_empty(), err) {
            err.add(std::path::Path::new(stderr))?;
        }
        Ok(())
    }

    /// Closes the shim-held stdin writer (CloseIO).
    pub fn close_stdin(&mut self) {
        self.stdin_closer = None;
    }

    /// Applies a window size to the pty, if any.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        match &self.console {
            Some(m) => console::resize(m, width, height),
            None => Ok(()),
        }
    }

    /// Waits (bounded) for the copy loops to drain, then tears everything down.
    pub async fn close(&mut self, drain: Duration) {
        self.stdin_closer = None;
        for i in self.inputs.drain(..) {
            i.abort();
        }
        let copiers = std::mem::take(&mut self.copiers);
        let wait_all = async {
            for c in copiers.iter() {
                while !c.is_finished() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let _ = tokio::time::timeout(drain, wait_all).await;
        for c in copiers {
            c.abort();
        }
        self.console = None;
        if let Some((out, err)) = self.attach.take() {
            out.end();
            if let Some(e) = err {
                e.end();
            }
        }
        if let Some(lg) = self.logger.take() {
            lg.stop();
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for c in self.copiers.iter().chain(self.inputs.iter()) {
            c.abort();
        }
        if let Some(lg) = self.logger.take() {
            lg.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert!(matches!(scheme("/run/x/stdout").unwrap(), Scheme::Fifo));
        assert!(matches!(scheme("fifo:///x").unwrap(), Scheme::Fifo));
        assert!(matches!(
            scheme("binary:///bin/logger?a=b").unwrap(),
            Scheme::Binary
        ));
        match scheme("file:///var/log/x.log").unwrap() {
            Scheme::File(p) => assert_eq!(p, PathBuf::from("/var/log/x.log")),
            _ => panic!(),
        }
        assert!(matches!(scheme("ftp://x"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            scheme("cri-log:///var/log/pods/x/0.log").unwrap(),
            Scheme::CriLog(_)
        ));
    }
}
