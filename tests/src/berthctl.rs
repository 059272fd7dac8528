//! Driving the built `berthctl` binary: one command to its end (bounded), a command left
//! running with its stdout collected line by line (`events`), and an interactive
//! terminal (`Pty`: the command's controlling terminal, typed into, resized, read).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cmd::{self, Output};

/// Bound for one berthctl command.
pub const WITHIN: Duration = Duration::from_secs(60);

/// `berthctl` next to the berthd under test (`$BERTHCTL` overrides).
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTHCTL") {
        return Ok(PathBuf::from(p));
    }
    let p = crate::berthd::binary()?.with_file_name("berthctl");
    if !p.is_file() {
        bail!(
            "berthctl not found at {} (run `cargo build --workspace` first)",
            p.display()
        );
    }
    Ok(p)
}

/// berthctl talking to the CRI socket `socket`.
pub struct Ctl {
    pub endpoint: String,
}

impl Ctl {
    pub fn new(socket: &Path) -> Ctl {
        Ctl {
            endpoint: format!("unix://{}", socket.display()),
        }
    }

    /// The command line for `args` (with `--endpoint`).
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut c = Command::new(binary()?);
        c.arg("--endpoint").arg(&self.endpoint).args(args);
        Ok(c)
    }

    /// Runs `args` to its end (stdin /dev/null).
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        cmd::run(&mut self.command(args)?, WITHIN)
    }

    /// Runs `args`, failing unless it exits 0; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(self.run(args)?.ok(&format!("berthctl {args:?}"))?.stdout)
    }

    /// Runs `args` with `input` on its stdin.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        use std::io::Write;
        let mut child = self
            .command(args)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input)?;
        drop(stdin);
        let out = Lines::collect(child.stdout.take().context("stdout")?);
        let err = Lines::collect(child.stderr.take().context("stderr")?);
        let Some(st) = cmd::wait_bounded(&mut child, WITHIN)? else {
            bail!("berthctl {args:?} still running after {WITHIN:?}");
        };
        Ok(Output {
            code: cmd::code_of(st),
            stdout: out.text(),
            stderr: err.text(),
        })
    }

    /// Starts `args` and collects its stdout lines as they come; killed (by pid) on drop.
    pub fn spawn(&self, args: &[&str]) -> Result<Running> {
        let mut child = self
            .command(args)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let lines = Lines::collect(child.stdout.take().context("stdout")?);
        let errors = Lines::collect(child.stderr.take().context("stderr")?);
        Ok(Running {
            child,
            lines,
            errors,
        })
    }
}

/// Lines read from a pipe on a thread of their own.
#[derive(Clone)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(pipe: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines(Arc::default());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        lines
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn text(&self) -> String {
        // The reader thread ends with the pipe; the process has exited, so soon.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.0) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.snapshot().iter().map(|l| format!("{l}\n")).collect()
    }
}

/// A berthctl left running (`events`).
pub struct Running {
    child: Child,
    pub lines: Lines,
    pub errors: Lines,
}

impl Running {
    /// Waits (bounded) for a stdout line `pred` accepts.
    pub fn wait_line(&self, within: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines.snapshot().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no such line within {within:?}; stdout: {:?}, stderr: {:?}",
                    self.lines.snapshot(),
                    self.errors.snapshot()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command on a pseudo-terminal of its own as its controlling terminal (so a resize
/// sends it SIGWINCH, as a terminal window does), typed into and read.
pub struct Pty {
    master: OwnedFd,
    child: Child,
    pub seen: Vec<u8>,
}

impl Pty {
    /// Starts `cmd` on a new terminal of `cols` x `rows`.
    pub fn spawn(mut cmd: Command, cols: u16, rows: u16) -> Result<Pty> {
        let (master, slave) = crate::cmd::open_pty()?;
        crate::cmd::set_pty_size(&master, cols, rows)?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec only async-signal-safe calls: a new session, then
        // the terminal (already fd 0) as its controlling one.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("spawn on a pty")?;
        // `cmd`, holding our copies of the slave, is gone: EOF/EIO can arrive.
        Ok(Pty {
            master,
            child,
            seen: Vec::new(),
        })
    }

    /// Types `text`.
    pub fn type_in(&self, text: &[u8]) -> Result<()> {
        let mut off = 0;
        while off < text.len() {
            // SAFETY: writing from a valid slice to the master we own.
            let n = unsafe {
                libc::write(
                    self.master.as_raw_fd(),
                    text[off..].as_ptr().cast(),
                    text.len() - off,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                return Err(e.into());
            }
            off += n as usize;
        }
        Ok(())
    }

    /// Resizes the terminal (the kernel signals the command's foreground group).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        crate::cmd::set_pty_size(&self.master, cols, rows)
    }

    /// Reads until the output since `from` contains `want` (bounded); the output seen.
    pub fn read_until(&mut self, from: usize, want: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            self.drain();
            let text =
                String::from_utf8_lossy(&self.seen[from.min(self.seen.len())..]).into_owned();
            if text.contains(want) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                bail!("no {want:?} on the terminal within {within:?}; it shows {text:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn drain(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            // SAFETY: reading into a valid stack buffer from the (non-blocking) master.
            let n = unsafe {
                libc::read(
                    self.master.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                )
            };
            if n <= 0 {
                return;
            }
            self.seen.extend_from_slice(&chunk[..n as usize]);
        }
    }

    /// Waits (bounded) for the command to exit; its exit code.
    pub fn wait(&mut self, within: Duration) -> Result<i32> {
        let deadline = Instant::now() + within;
        loop {
            self.drain();
            if let Some(st) = self.child.try_wait()? {
                self.drain();
                return Ok(cmd::code_of(st));
            }
            if Instant::now() >= deadline {
                bail!(
                    "still running after {within:?}; the terminal shows {:?}",
                    String::from_utf8_lossy(&self.seen)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
