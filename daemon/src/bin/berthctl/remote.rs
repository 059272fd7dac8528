//! `exec` and `attach`: the runtime answers Exec or Attach with a URL on its streaming
//! server, and berthctl speaks the WebSocket channel protocol there (`v5.channel.k8s.io`,
//! or `v4` on older servers: stdin's end cannot be told then), with the client library's
//! `ws` client. With `-t` the local terminal goes raw and its size follows the window
//! (SIGWINCH); the exit code is the remote command's.

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;
use berthd::cri::client::ws::{self, WsSession};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::ctx::Ctx;
use crate::term::{self, RawMode};
use crate::Outcome;

/// Remote-command protocols in order of preference.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Pass stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Run the command on a terminal (the local one goes raw).
    #[arg(short, long)]
    tty: bool,
    /// The container (id, unique id prefix or name).
    container: String,
    /// The command and its arguments (after `--` when they have options).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
pub struct AttachArgs {
    /// Pass stdin to the container (it must have been created with stdin open).
    #[arg(short, long)]
    interactive: bool,
    /// The container has a terminal (as it was created: `run -t`).
    #[arg(short, long)]
    tty: bool,
    /// The container (id, unique id prefix or name).
    container: String,
}

pub async fn exec(ctx: &Ctx, a: ExecArgs) -> Result<Outcome> {
    let id = ctx.container_id(&a.container).await?;
    let req = cri::ExecRequest {
        container_id: id,
        cmd: a.command,
        tty: a.tty,
        stdin: a.interactive,
        stdout: true,
        stderr: !a.tty,
    };
    let url = ctx.call("Exec", ctx.rs.clone().exec(req)).await?.url;
    session(&url, a.interactive, a.tty, false).await
}

pub async fn attach(ctx: &Ctx, a: AttachArgs) -> Result<Outcome> {
    let id = ctx.container_id(&a.container).await?;
    let req = cri::AttachRequest {
        container_id: id,
        stdin: a.interactive,
        tty: a.tty,
        stdout: true,
        stderr: !a.tty,
    };
    let url = ctx.call("Attach", ctx.rs.clone().attach(req)).await?.url;
    if a.interactive && a.tty {
        eprint!("(detach with ctrl-p ctrl-q)\r\n");
    }
    session(&url, a.interactive, a.tty, true).await
}

/// Ctrl-P then Ctrl-Q: leaves an attached session (the container keeps running).
const DETACH: [u8; 2] = [0x10, 0x11];

/// Runs one remote-command session to its end; the exit code to leave with.
async fn session(url: &str, stdin: bool, tty: bool, detachable: bool) -> Result<Outcome> {
    let mut s = WsSession::connect(url, &PROTOCOLS)
        .await
        .with_context(|| format!("streaming session at {url}"))?;
    let raw = if tty && stdin {
        RawMode::enter()?
    } else {
        None
    };
    let r = pump(&mut s, stdin, tty, detachable).await;
    // The terminal is restored before anything more is printed.
    drop(raw);
    let end = r?;
    if end == End::Detached {
        eprintln!("\r\nberthctl: detached");
        return Ok(Outcome::Exit(0));
    }
    if s.out.error.is_empty() {
        return Ok(Outcome::Exit(0));
    }
    let status = s.out.status()?;
    if let Some(code) = ws::exit_code(&status) {
        return Ok(Outcome::Exit(u8::try_from(code).unwrap_or(255)));
    }
    let msg = status["message"].as_str().unwrap_or_default();
    bail!("the remote command failed: {msg} ({})", status["reason"]);
}

#[derive(PartialEq, Eq)]
enum End {
    Closed,
    Detached,
}

/// Moves bytes until the server closes the session (or the user detaches): stdin and
/// window sizes out, stdout and stderr in, the error channel kept in `s.out.error`.
async fn pump(s: &mut WsSession, stdin: bool, tty: bool, detachable: bool) -> Result<End> {
    let mut input = if stdin {
        Some(term::stdin_chunks())
    } else {
        None
    };
    let mut winch = if tty {
        // The first size goes at once: the server gives it to the terminal before the
        // command runs (a shell reads its size as it starts).
        if let Some((w, h)) = term::size() {
            s.resize(w, h).await?;
        }
        Some(signal(SignalKind::window_change()).context("SIGWINCH handler")?)
    } else {
        None
    };
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let mut last = 0u8;
    loop {
        tokio::select! {
            m = s.recv() => match m? {
                None => return Ok(End::Closed),
                Some((ws::STDOUT, data)) => {
                    out.write_all(&data).await?;
                    out.flush().await?;
                }
                Some((ws::STDERR, data)) => {
                    err.write_all(&data).await?;
                    err.flush().await?;
                }
                Some((ws::ERROR, data)) => s.out.error.extend_from_slice(&data),
                Some(_) => {}
            },
            chunk = recv_input(&mut input) => match chunk {
                Some(data) => {
                    if detachable && tty && detaches(last, &data) {
                        return Ok(End::Detached);
                    }
                    last = *data.last().unwrap_or(&last);
                    s.send(ws::STDIN, &data).await?;
                }
                None => {
                    input = None;
                    // v5 tells the end of stdin; v4 has no way to.
                    if s.protocol == PROTOCOLS[0] {
                        s.close_stdin().await?;
                    }
                }
            },
            _ = recv_winch(&mut winch) => {
                if let Some((w, h)) = term::size() {
                    s.resize(w, h).await?;
                }
            }
        }
    }
}

/// The next stdin chunk (None at its end); pending forever without stdin.
async fn recv_input(
    input: &mut Option<tokio::sync::mpsc::Receiver<Option<Vec<u8>>>>,
) -> Option<Vec<u8>> {
    match input {
        Some(rx) => rx.recv().await.flatten(),
        None => std::future::pending().await,
    }
}

async fn recv_winch(winch: &mut Option<tokio::signal::unix::Signal>) {
    match winch {
        Some(w) => {
            w.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether `data` (after the byte `last`) holds the detach keys.
fn detaches(last: u8, data: &[u8]) -> bool {
    (last == DETACH[0] && data.first() == Some(&DETACH[1])) || data.windows(2).any(|w| w == DETACH)
}

#[cfg(test)]
mod tests {
    use super::detaches;

    #[test]
    fn detach_keys_across_reads() {
        assert!(detaches(0, b"ab\x10\x11"));
        assert!(detaches(0x10, b"\x11"));
        assert!(!detaches(0, b"\x11"));
        assert!(!detaches(0x10, b"a\x11"));
    }
}
