//! Attach sessions (remotecommand, the same streams as exec): the pod's shim hands a copy
//! of the container's output to FIFOs this session reads (`berth.shim.v1.Attach`), and
//! the client's stdin goes into the container's stdin FIFO, which the shim holds open.
//!
//! As with containerd: the session ends when the container's output ends (it exited),
//! when the client goes away, or when the client's stdin ends — then, for a StdinOnce
//! container without a terminal, the container's stdin is closed and the output keeps
//! flowing until the container exits; otherwise the client is detached. Several
//! sessions can be attached at once; none of them can stall the container or its log.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::exec::{self, Sink, Streams};
use super::queue::ByteRx;
use super::spdy::conn::{Incoming, Session};
use super::Server;
use crate::container::session::SessionIo;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct AttachReq {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl AttachReq {
    pub fn flags(&self) -> SessionIo {
        SessionIo {
            tty: self.tty,
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// How long after its output ends a process's exit is waited for.
const OUTPUT_END_GRACE: Duration = Duration::from_secs(2);

/// Resolves when the client's connection is gone.
pub type Gone = Pin<Box<dyn Future<Output = ()> + Send>>;

pub async fn serve_spdy(
    server: Server,
    req: AttachReq,
    protocol: &'static str,
    mut incoming: mpsc::Receiver<Incoming>,
    session: Session,
) {
    let mut done = Vec::new();
    let within = server.limits().creation_timeout;
    match exec::collect(req.flags(), protocol, &mut incoming, &mut done, within).await {
        Ok(streams) => {
            // The stream receiver ends with the connection's read side.
            let gone = Box::pin(async move { while incoming.recv().await.is_some() {} });
            serve(server, &req, protocol, streams, gone).await
        }
        Err(e) => tracing::warn!(container_id = %req.container_id, error = %e, "attach session"),
    }
    for d in done {
        let _ = d.await;
    }
    session.close().await;
}

/// Runs an attach for a session's streams and reports how it ended on the error stream.
pub async fn serve(
    server: Server,
    req: &AttachReq,
    protocol: &str,
    mut streams: Streams,
    gone: Gone,
) {
    let error = streams.error.take();
    let outcome = run(&server, req, streams, gone).await;
    let msg = match &outcome {
        Ok(()) => exec::status(protocol, Some(0), None),
        Err(e) => exec::status(protocol, None, Some(&e.to_string())),
    };
    if let (Some(err), Some(m)) = (error, msg) {
        let _ = err.send(m).await;
    }
    tracing::info!(container_id = %req.container_id, result = ?outcome.as_ref().map_err(|e| e.to_string()), "attach session ended");
}

/// Copies an attach FIFO to the client until the shim closes it (the output ended) or
/// the client's stream is gone; dropping the FIFO then detaches us in the shim.
async fn forward(mut r: pipe::Receiver, tx: Sink) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            },
            _ = tx.closed() => return,
        }
    }
}

/// Copies the client's stdin into the container's stdin FIFO until the client's stdin
/// ends (or the container stops reading it).
async fn stdin_in(mut rx: ByteRx, mut w: pipe::Sender) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
    }
}

async fn run(server: &Server, req: &AttachReq, s: Streams, gone: Gone) -> Result<()> {
    let (mut session, target) = server
        .backend
        .attach_session(&req.container_id, req.flags())
        .await?;
    let control = session.control();
    let ctty = target.tty;
    let id = req.container_id.clone();
    let res = async {
        let fifos: Vec<_> = [
            (session.stdout.take(), s.stdout),
            (session.stderr.take(), s.stderr),
        ]
        .into_iter()
        .filter_map(|(fifo, tx)| Some((fifo?, tx?)))
        .collect();
        // The client's stdin reaches the container only if it was created with one. Opened
        // before anything is spawned: a container whose stdin was closed (StdinOnce) fails
        // here with nothing to undo.
        let stdin_w = match (&s.stdin, &target.stdin_fifo) {
            (Some(_), Some(fifo)) => {
                Some(pipe::OpenOptions::new().open_sender(fifo).map_err(|e| {
                    Error::FailedPrecondition(format!("the container's stdin is closed: {e}"))
                })?)
            }
            _ => None,
        };
        session.start().await?;
        let mut outs: Vec<_> = fifos
            .into_iter()
            .map(|(r, tx)| tokio::spawn(forward(r, tx)))
            .collect();
        // Every pump ends with the session: a dropped handle would leave it running.
        let mut pumps: Vec<_> = outs.iter().map(|h| h.abort_handle()).collect();
        let mut resize = s.resize.filter(|_| ctty);
        // Why before stdin flows: what the client types first (`stty size`, a full-screen
        // program) must find the client's window, not the one the terminal had before.
        if let Some(r) = resize.as_mut() {
            if let Some(sz) = exec::first_size(r, exec::FIRST_SIZE_WAIT).await {
                if let Err(e) = control.resize(sz.width, sz.height).await {
                    tracing::debug!(container_id = %id, error = %e, "first resize");
                }
            }
        }
        let stdin = match (s.stdin, stdin_w) {
            (Some(rx), Some(w)) => {
                let h = tokio::spawn(stdin_in(rx, w));
                pumps.push(h.abort_handle());
                Some(h)
            }
            _ => None,
        };
        if let Some(r) = resize {
            let h = tokio::spawn(exec::pump_resize(r, control.clone()));
            pumps.push(h.abort_handle());
        }
        let has_outs = !outs.is_empty();
        let outputs = async {
            for o in outs.iter_mut() {
                let _ = o.await;
            }
        };
        // Without output streams, the container's exit ends the session.
        let exited = async {
            if has_outs {
                std::future::pending::<()>().await
            }
            let _ = control
                .wait(Duration::from_secs(10 * 365 * 24 * 3600))
                .await;
        };
        let stdin_ended = async {
            match stdin {
                Some(h) => {
                    let _ = h.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(outputs, exited, gone);
        // Whether the session ended because the output did.
        let output_ended = tokio::select! {
            _ = &mut outputs => true,
            _ = &mut exited => false,
            _ = &mut gone => false,
            _ = stdin_ended => {
                if target.stdin_once && !ctty {
                    if let Err(e) = control.close_stdin().await {
                        tracing::debug!(container_id = %id, error = %e, "close stdin");
                    }
                    tokio::select! {
                        _ = &mut outputs => true,
                        _ = &mut exited => false,
                        _ = &mut gone => false,
                    }
                } else {
                    false
                }
            }
        };
        for p in pumps {
            p.abort();
        }
        // The output normally ends with the process (its exit follows within moments). If
        // it still runs, the shim cut this attacher off (it fell too far behind) or the
        // process closed its output: the client must not take that for the end.
        if output_ended && control.wait(OUTPUT_END_GRACE).await.is_err() {
            return Err(Error::Internal(
                "attach output ended while the container runs (the client fell too far \
                 behind, or the container closed its output)"
                    .into(),
            ));
        }
        Ok(())
    }
    .await;
    // Dropping the pumps closes our FIFO ends: the shim drops those attachers at once;
    // the session's dir goes with it.
    drop(session);
    res
}
