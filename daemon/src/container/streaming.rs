//! What Exec and Attach require before a streaming URL is handed out: a sensible set of
//! streams and a running container (PortForward's check is the pods service's). The URL itself is
//! the CRI adapter's business (`cri`), the session the streaming server's (`stream`).

use super::Containers;
use crate::error::{Error, Result};

use super::session::SessionIo;

impl Containers {
    pub fn check_exec(&self, container_id: &str, cmd: &[String], io: SessionIo) -> Result<()> {
        super::exec::require_command(cmd)?;
        self.check_remote_command(container_id, io)
    }

    /// What Exec and Attach both require: a sensible set of streams (as kubelet's
    /// streaming server validates them) and a running container.
    pub fn check_remote_command(&self, container_id: &str, f: SessionIo) -> Result<()> {
        if !(f.stdin || f.stdout || f.stderr) {
            return Err(Error::InvalidArgument(
                "one of stdin, stdout and stderr must be set".into(),
            ));
        }
        if f.tty && f.stderr {
            return Err(Error::InvalidArgument(
                "tty and stderr cannot both be set (a terminal merges them)".into(),
            ));
        }
        self.running(container_id).map(drop)
    }
}
