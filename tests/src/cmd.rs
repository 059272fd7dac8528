//! Running external commands with a bound on every wait (pipes or a pseudo-terminal).

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code, or 128 + signal number when the command died of a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Fails with the command's output unless it exited 0.
    pub fn ok(self, what: &str) -> Result<Output> {
        if self.code != 0 {
            bail!(
                "{what}: exit {}\nstdout: {}\nstderr: {}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Exit code in the shell convention (128 + signal for signal deaths).
pub fn code_of(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` at most `timeout`; on expiry kills it (it is our own child) and fails.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` with piped stdio (stdin /dev/null) and fails if it takes longer than `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {desc}"))?;
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let status = wait_bounded(&mut child, timeout)?;
    // Grandchildren may hold the pipes open; never block on them for long.
    let stdout = join_bounded(out);
    let stderr = join_bounded(err);
    match status {
        Some(st) => Ok(Output {
            code: code_of(st),
            stdout,
            stderr,
        }),
        None => bail!("timed out after {timeout:?}: {desc}\nstdout: {stdout}\nstderr: {stderr}"),
    }
}

fn join_bounded(h: JoinHandle<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if h.is_finished() {
        h.join().unwrap_or_default()
    } else {
        "<output still open after exit>".into()
    }
}

/// Runs `program args` with a fresh pseudo-terminal as stdin/stdout/stderr (for `ctr ... -t`).
/// The terminal output is returned as `stdout`.
pub fn run_pty(program: impl AsRef<OsStr>, args: &[String], timeout: Duration) -> Result<Output> {
    run_pty_sized(program, args, timeout, None)
}

/// [`run_pty`] with the terminal set to `size` = (rows, cols) before the program starts.
pub fn run_pty_sized(
    program: impl AsRef<OsStr>,
    args: &[String],
    timeout: Duration,
    size: Option<(u16, u16)>,
) -> Result<Output> {
    let program = program.as_ref();
    let (master, slave) = open_pty()?;
    if let Some((rows, cols)) = size {
        set_pty_size(&master, cols, rows)?;
    }
    let mut child = {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        cmd.spawn()
            .with_context(|| format!("spawn {program:?} {args:?}"))?
        // `cmd` (and with it our copies of the slave) is dropped here, so EOF/EIO can arrive.
    };
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let status = loop {
        drain(&master, &mut buf);
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drain(&master, &mut buf);
    let stdout = String::from_utf8_lossy(&buf).into_owned();
    match status {
        Some(st) => Ok(Output {
            code: code_of(st),
            stdout,
            stderr: String::new(),
        }),
        None => bail!("timed out after {timeout:?}: {program:?} {args:?}\noutput: {stdout}"),
    }
}

fn drain(master: &OwnedFd, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        // SAFETY: reading into a valid stack buffer from an fd we own (non-blocking).
        let n = unsafe { libc::read(master.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n <= 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n as usize]);
    }
}

/// Sets the window size of the terminal whose master is `master`.
pub fn set_pty_size(master: &OwnedFd, cols: u16, rows: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a pty master we own, with a valid winsize.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        bail!("TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new pseudo-terminal: (master, slave). The master is non-blocking (reads drain what is
/// there); neither end becomes our controlling terminal (O_NOCTTY): a child takes the slave.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain libc pty calls; every returned fd is checked and wrapped in an OwnedFd.
    unsafe {
        let m =
            libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC);
        if m < 0 {
            bail!("posix_openpt: {}", std::io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            bail!("grantpt/unlockpt: {}", std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            bail!("ptsname_r: {}", std::io::Error::last_os_error());
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            bail!("open pty slave: {}", std::io::Error::last_os_error());
        }
        Ok((master, OwnedFd::from_raw_fd(s)))
    }
}
