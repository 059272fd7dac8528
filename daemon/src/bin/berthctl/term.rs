//! The local terminal of `exec -t` / `attach -t`: raw mode while a remote terminal is in
//! use (restored on every way out), the window size, and stdin read on a thread of its
//! own.

use std::io::{IsTerminal, Read};
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;

/// Raw mode on stdin until dropped. In raw mode the local terminal neither echoes nor
/// edits nor turns ^C into a signal: every key goes to the remote terminal, which does
/// all of that itself (a second echo or a local SIGINT would be wrong).
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode if stdin is a terminal; None otherwise (nothing to restore).
    pub fn enter() -> Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd()).context("tcgetattr on stdin")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // TCSADRAIN: output already written keeps the old settings (its \n → \r\n).
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw).context("tcsetattr raw")?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // The shell gets its terminal back as it lent it, however the session ended.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The terminal's size (columns, rows): stdout's, else stdin's; None when neither is a
/// terminal.
pub fn size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ only writes the winsize struct given; a non-terminal fd
        // fails with ENOTTY and leaves it alone.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

/// Stdin's bytes as they come, then None at its end. A blocking read of a terminal
/// cannot be cancelled, so it runs on a thread of its own rather than on the runtime's
/// workers or its blocking pool (whose shutdown would wait for it); berthctl exits
/// without joining it.
pub fn stdin_chunks() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}
