//! Terminals: the console socket runc sends the pty master through, the master's copy
//! loops, and window resizing.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::AsyncWrite;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Copy tasks of one direction.
type Handles = Vec<JoinHandle<()>>;

/// A temporary listening socket passed as `--console-socket`; removed on drop.
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        // Short path: sun_path is 108 bytes, bundles are long.
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        // Why mkdtemp: the base is shared with other users (/tmp). A name they can guess
        // lets them create the dir first, own it, swap the socket and receive the pty
        // master of a root shell. mkdtemp makes a dir nobody else can have made (random
        // name, exclusive creation, mode 0700 from the start).
        let dir = nix::unistd::mkdtemp(&base.join("berth-pty-XXXXXX"))
            .map_err(|e| Error::io(format!("mkdtemp in {}", base.display()), e.into()))?;
        let path = dir.join("pty.sock");
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("bind {}", path.display()), e))?;
        Ok(ConsoleSocket {
            dir,
            path,
            listener: Some(listener),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts runc's connection and receives the pty master over SCM_RIGHTS. runc sends
    /// and disconnects before it exits, so its connection is waiting in the backlog.
    pub async fn receive_master(mut self, timeout: Duration) -> Result<OwnedFd> {
        let std_l = self
            .listener
            .take()
            .ok_or_else(|| Error::Runtime("console socket used twice".into()))?;
        std_l
            .set_nonblocking(true)
            .map_err(|e| Error::io("console socket", e))?;
        let l = tokio::net::UnixListener::from_std(std_l)
            .map_err(|e| Error::io("console socket", e))?;
        let work = async {
            let (stream, _) = l
                .accept()
                .await
                .map_err(|e| Error::io("accept console socket", e))?;
            loop {
                stream
                    .readable()
                    .await
                    .map_err(|e| Error::io("console socket", e))?;
                let fd = stream.as_raw_fd();
                let mut buf = [0u8; 4096];
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                match recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Ok(msg) => {
                        for c in msg.cmsgs().map_err(|e| Error::sys("console cmsg", e))? {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                if let Some(&raw) = fds.first() {
                                    // SAFETY: the kernel just installed this fd for us.
                                    return Ok(unsafe {
                                        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw)
                                    });
                                }
                            }
                        }
                        return Err(Error::Runtime(
                            "console socket: no pty master received".into(),
                        ));
                    }
                    Err(nix::errno::Errno::EAGAIN) => continue,
                    Err(e) => return Err(Error::sys("recvmsg console socket", e)),
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Runtime("timed out waiting for the pty master".into()))?
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dup_nonblocking(fd: &OwnedFd) -> Result<OwnedFd> {
    let d = fd.try_clone().map_err(|e| Error::io("dup pty master", e))?;
    // O_NONBLOCK lives on the open file description, shared by every dup.
    let flags =
        nix::fcntl::fcntl(&d, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| Error::sys("fcntl", e))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&d, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| Error::sys("fcntl", e))?;
    Ok(d)
}

/// Starts master→stdout and stdin→master copies; returns (outputs, inputs). `out_fd` (a
/// logger pipe or log file) takes precedence over the stdout FIFO.
pub fn copy_loops(
    master: Arc<OwnedFd>,
    stdin: Option<String>,
    stdout: Option<String>,
    out_fd: Option<OwnedFd>,
) -> Result<(Handles, Handles)> {
    let mut handles = Vec::new();
    let mut inputs = Vec::new();
    let out: Option<Box<dyn AsyncWrite + Unpin + Send>> = match (out_fd, stdout) {
        (Some(fd), _) => Some(writer_for(fd)?),
        (None, Some(fifo)) => Some(Box::new(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&fifo)
                .map_err(|e| Error::io(format!("open {fifo}"), e))?,
        )),
        (None, None) => None,
    };
    if let Some(mut out) = out {
        // SAFETY-free but subtle: a pty master is not a FIFO, so the unchecked constructor
        // is used; it only needs a non-blocking fd that epoll accepts, which a tty is.
        let mut r = pipe::Receiver::from_owned_fd_unchecked(dup_nonblocking(&master)?)
            .map_err(|e| Error::io("pty master", e))?;
        handles.push(tokio::spawn(async move {
            // EIO from the master means every slave fd is closed: the process is gone.
            let _ = tokio::io::copy(&mut r, &mut out).await;
        }));
    }
    if let Some(fifo) = stdin {
        let mut src = pipe::OpenOptions::new()
            .open_receiver(&fifo)
            .map_err(|e| Error::io(format!("open {fifo}"), e))?;
        let mut w = pipe::Sender::from_owned_fd_unchecked(dup_nonblocking(&master)?)
            .map_err(|e| Error::io("pty master", e))?;
        inputs.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut src, &mut w).await;
        }));
    }
    Ok((handles, inputs))
}

fn writer_for(fd: OwnedFd) -> Result<Box<dyn AsyncWrite + Unpin + Send>> {
    let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::sys("fstat", e))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFIFO {
        Ok(Box::new(
            pipe::Sender::from_owned_fd(fd).map_err(|e| Error::io("log pipe", e))?,
        ))
    } else {
        Ok(Box::new(tokio::fs::File::from_std(std::fs::File::from(fd))))
    }
}

/// TIOCSWINSZ on the master: ws_col = width, ws_row = height.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(Error::io("resize pty", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_a_real_pty() {
        let pty = nix::pty::openpty(None, None).unwrap();
        resize(&pty.master, 120, 40).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
            0
        );
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
    }

    #[test]
    fn console_socket_path_is_short_and_removed() {
        let s = ConsoleSocket::new().unwrap();
        let p = s.path().to_path_buf();
        assert!(p.as_os_str().len() < 100);
        assert!(p.exists());
        drop(s);
        assert!(!p.exists());
    }
}
