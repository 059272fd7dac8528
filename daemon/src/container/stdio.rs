//! A container's stdio: the shim writes its output as CRI log lines (`cri-log://`, with
//! no file when the config has no log path) and hands it to attachers; stdin, when the
//! config asks for it, is a FIFO in the bundle that attach sessions write to while the
//! shim holds it open, so the container only sees EOF when StdinOnce closes it.

use std::path::{Path, PathBuf};

use super::Containers;
use crate::error::{Error, Result};
use crate::shim_client::ExecIo;

use crate::records::ContainerRecord;

/// Where a container's stdin FIFO lives.
pub fn stdin_fifo(bundle: &Path) -> PathBuf {
    bundle.join("stdin")
}

impl Containers {
    /// The stdio a container's task is created with (its stdin FIFO made here).
    pub(super) fn container_io(&self, rec: &ContainerRecord) -> Result<ExecIo> {
        let stdin = if rec.config.stdin {
            let p = stdin_fifo(&rec.bundle);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::Internal(format!("mkfifo {}: {e}", p.display())))?;
            p.display().to_string()
        } else {
            String::new()
        };
        let log = format!("cri-log://{}", rec.log_path);
        Ok(ExecIo {
            stdin,
            stdout: log.clone(),
            // A terminal merges stderr into stdout.
            stderr: if rec.config.tty { String::new() } else { log },
            terminal: rec.config.tty,
        })
    }
}
