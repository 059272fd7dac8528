//! FIFO and file plumbing: pipe↔FIFO copy loops, the held stdin writer, log files.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Copies the container's output pipe into a client FIFO. The FIFO is opened read-write,
/// so the shim itself holds a reader: writes never fail with EPIPE while containerd (the
/// real reader) restarts, and nothing is dropped on the floor.
pub fn copy_pipe_to_fifo(read_end: OwnedFd, fifo: &str) -> Result<JoinHandle<()>> {
    let mut src =
        pipe::Receiver::from_owned_fd(read_end).map_err(|e| Error::io("stdio pipe", e))?;
    let mut dst = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(fifo)
        .map_err(|e| Error::io(format!("open {fifo}"), e))?;
    Ok(tokio::spawn(async move {
        let _ = tokio::io::copy(&mut src, &mut dst).await;
    }))
}

/// Copies a client's stdin FIFO into the container's stdin pipe; EOF closes the pipe.
pub fn copy_fifo_to_pipe(fifo: String, write_end: OwnedFd) -> Result<JoinHandle<()>> {
    let mut src = pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .map_err(|e| Error::io(format!("open {fifo}"), e))?;
    let mut dst = pipe::Sender::from_owned_fd(write_end).map_err(|e| Error::io("stdin pipe", e))?;
    Ok(tokio::spawn(async move {
        let _ = tokio::io::copy(&mut src, &mut dst).await;
    }))
}

/// Opens the stdin FIFO write-only, non-blocking. Holding it keeps the shim's reader from
/// seeing EOF until CloseIO drops it, whatever the client does with its own end.
pub fn open_stdin_closer(fifo: &str) -> Result<OwnedFd> {
    // O_RDWR would also work, but a reader of ours must already exist for O_WRONLY|
    // O_NONBLOCK to succeed; open a transient reader to make the open never fail.
    let keep_reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .map_err(|e| Error::io(format!("open {fifo}"), e))?;
    let w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .map_err(|e| Error::io(format!("open {fifo} for writing"), e))?;
    drop(keep_reader);
    Ok(w.into())
}

/// Opens a `file://` log: parent made 0755, file O_APPEND|O_CREAT|O_WRONLY 0644.
pub fn open_log_file(path: &Path) -> Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "file:// log path must be absolute: {}",
            path.display()
        )));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
    }
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::io::{Read, Write};

    fn read_some(r: &mut std::fs::File) -> String {
        let mut buf = [0u8; 64];
        for _ in 0..200 {
            match r.read(&mut buf) {
                Ok(n) if n > 0 => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        String::new()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_survives_a_reader_restart() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("out");
        nix::unistd::mkfifo(&f, Mode::from_bits_truncate(0o600)).unwrap();
        let open_client = || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&f)
                .unwrap()
        };
        let mut client = open_client();
        let (r, w) = nix::unistd::pipe().unwrap();
        let h = copy_pipe_to_fifo(r, f.to_str().unwrap()).unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"one").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(read_some(&mut client), "one");
        // The client (containerd) goes away; the container keeps writing.
        drop(client);
        w.write_all(b"two").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!h.is_finished(), "copier must survive a missing reader");
        // A new client finds what was written while it was gone.
        let mut client = open_client();
        assert_eq!(read_some(&mut client), "two");
        drop(w);
        h.await.unwrap();
    }

    #[test]
    fn log_file_is_created_with_parent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c.log");
        let fd = open_log_file(&p).unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x");
        assert!(open_log_file(Path::new("rel.log")).is_err());
    }
}
