//! FIFOs a shim writes a process' output into, opened by the test, and reading one until
//! a string arrives.

use anyhow::{bail, Result};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// A FIFO at `path`, opened read-write and non-blocking by the test (so the shim's
/// blocking write-open succeeds and no EOF races exist); read with [`read_until`].
pub fn fifo(path: &Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: libc calls with a valid NUL-terminated path; the fd is checked and owned.
    unsafe {
        if libc::mkfifo(c.as_ptr(), 0o600) != 0 {
            bail!(
                "mkfifo {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        let fd = libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        if fd < 0 {
            bail!(
                "open {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads a non-blocking fd until the collected text contains `needle` or `timeout` passes.
pub fn read_until(fd: &OwnedFd, needle: &str, timeout: Duration) -> String {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        // SAFETY: read into a valid stack buffer from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n > 0 {
            buf.extend_from_slice(&chunk[..n as usize]);
            continue;
        }
        let s = String::from_utf8_lossy(&buf).into_owned();
        if s.contains(needle) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
