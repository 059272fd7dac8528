//! `binary://` loggers: a program that receives the container's stdout/stderr pipes as
//! fds 3 and 4 and signals readiness on fd 5 (containerd's logging-binary protocol).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::reaper::{Reaper, Subscription};

/// Grace period between SIGTERM and SIGKILL when the logger is stopped.
const TERM_TIMEOUT: Duration = Duration::from_secs(12);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running logging binary.
pub struct Logger {
    pid: i32,
    exit: Subscription,
}

/// Splits `binary:///path?k=v&k2=v2` into the program and its `k v k2 v2` arguments.
pub fn parse_uri(uri: &str) -> Result<(String, Vec<String>)> {
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| Error::InvalidArgument(format!("not a binary:// uri: {uri}")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "logging binary path must be absolute: {uri}"
        )));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(percent_decode(k));
        args.push(percent_decode(v));
    }
    Ok((percent_decode(path), args))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Logger {
    /// Starts the logger; returns it and the write ends of the stdout and stderr pipes.
    pub async fn spawn(
        uri: &str,
        id: &str,
        ns: &str,
        reaper: &Arc<Reaper>,
    ) -> Result<(Logger, OwnedFd, OwnedFd)> {
        let (prog, args) = parse_uri(uri)?;
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
        let mut cmd = Command::new(&prog);
        cmd.args(&args)
            .env("CONTAINER_ID", id)
            .env("CONTAINER_NAMESPACE", ns)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. Why two
        // steps: a source fd may already be 3, 4 or 5; moving them all above 9 first makes
        // the final dup2 calls collision-free and clears close-on-exec on 3..5.
        unsafe {
            cmd.pre_exec(move || {
                let mut high = [0; 3];
                for (i, fd) in fds.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let exit = reaper.subscribe();
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("start logging binary {prog}"), e))?;
        drop(cmd);
        // Our copies of the logger's ends must go, or EOF never reaches it / us.
        drop((out_r, err_r, ready_w));
        let logger = Logger {
            pid: child.id() as i32,
            exit,
        };
        let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)
            .map_err(|e| Error::io("ready pipe", e))?;
        let mut b = [0u8; 1];
        if tokio::time::timeout(READY_TIMEOUT, ready.read(&mut b))
            .await
            .is_err()
        {
            logger.stop();
            return Err(Error::Runtime(format!(
                "logging binary {prog} did not become ready"
            )));
        }
        Ok((logger, out_w, err_w))
    }

    /// SIGTERM now, SIGKILL if it is still alive after the grace period.
    pub fn stop(self) {
        let Logger { pid, mut exit } = self;
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        tokio::spawn(async move {
            if tokio::time::timeout(TERM_TIMEOUT, exit.wait_for(pid))
                .await
                .is_err()
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parsing() {
        let (p, a) = parse_uri("binary:///usr/bin/logger?id=abc&path=%2Fvar%2Flog").unwrap();
        assert_eq!(p, "/usr/bin/logger");
        assert_eq!(a, ["id", "abc", "path", "/var/log"]);
        let (p, a) = parse_uri("binary:///bin/x").unwrap();
        assert_eq!(p, "/bin/x");
        assert!(a.is_empty());
        assert!(parse_uri("binary://relative").is_err());
    }
}
