//! Exec sessions (remotecommand). Over SPDY (v2–v4) the client opens its error, stdin,
//! stdout, stderr and resize streams; over WebSocket (v4, v5) they are channels (`ws`); the command runs as an exec process in the pod's
//! shim with FIFOs berthd holds (a terminal when asked); on exit the error stream gets the
//! status (v4: a Status object, with the exit code on failure) and the session closes.
//!
//! A client that goes away only ends its own streams: stdin gets EOF, output is drained and
//! dropped, and the process runs on (as with containerd) until it exits by itself.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::spdy::conn::{Incoming, Session, StreamTx};
use super::spdy::frame::header;
use super::Server;
use crate::container::session::{Control, SessionIo};
use crate::error::{Error, Result};

/// How long the client has to open every stream it announced.
const STREAMS_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ExecReq {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl ExecReq {
    pub fn flags(&self) -> SessionIo {
        SessionIo {
            tty: self.tty,
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// Bytes towards the client on one stream; dropping it ends (closes) the stream.
pub type Sink = mpsc::Sender<Vec<u8>>;

/// The client's streams by type, whatever carries them (SPDY streams, WebSocket channels).
#[derive(Default)]
pub struct Streams {
    pub error: Option<Sink>,
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    pub stdout: Option<Sink>,
    pub stderr: Option<Sink>,
    pub resize: Option<mpsc::Receiver<Vec<u8>>>,
}

/// A sink that writes to a SPDY stream and half-closes it when dropped; the handle ends
/// once everything sent has been queued on the session.
pub(super) fn spdy_sink(tx: StreamTx, done: &mut Vec<tokio::task::JoinHandle<()>>) -> Sink {
    let (s, mut r) = mpsc::channel::<Vec<u8>>(16);
    done.push(tokio::spawn(async move {
        while let Some(b) = r.recv().await {
            if !tx.send(&b).await {
                break;
            }
        }
        tx.close().await;
    }));
    s
}

pub(super) async fn collect(
    req: SessionIo,
    protocol: &str,
    incoming: &mut mpsc::Receiver<Incoming>,
    done: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Streams> {
    // v3 and later clients open a resize stream for a terminal.
    let resize = req.tty && matches!(protocol, "v3.channel.k8s.io" | "v4.channel.k8s.io");
    let want = 1
        + usize::from(req.stdin)
        + usize::from(req.stdout)
        + usize::from(req.stderr && !req.tty)
        + usize::from(resize);
    let mut s = Streams::default();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + STREAMS_WAIT;
    while got < want {
        let inc = tokio::time::timeout_at(deadline, incoming.recv())
            .await
            .map_err(|_| {
                Error::InvalidArgument("timed out waiting for the client's streams".into())
            })?
            .ok_or_else(|| {
                Error::InvalidArgument("client left before opening its streams".into())
            })?;
        got += 1;
        match header(&inc.headers, "streamtype").unwrap_or("") {
            "error" => s.error = Some(spdy_sink(inc.tx, done)),
            "stdin" => s.stdin = Some(inc.rx),
            "stdout" => s.stdout = Some(spdy_sink(inc.tx, done)),
            "stderr" => s.stderr = Some(spdy_sink(inc.tx, done)),
            "resize" => s.resize = Some(inc.rx),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown stream type {other:?}"
                )))
            }
        }
    }
    Ok(s)
}

/// The status the error stream carries for an exit code (v4 and later: JSON; older: text
/// on error only).
pub(super) fn status(protocol: &str, code: Option<i32>, err: Option<&str>) -> Option<Vec<u8>> {
    let v = match (code, err) {
        (Some(0), None) => serde_json::json!({"metadata": {}, "status": "Success"}),
        (Some(c), None) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        }),
        (_, e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e.unwrap_or("exec failed"),
            "reason": "InternalError",
            "code": 500,
        }),
    };
    if matches!(protocol, "v4.channel.k8s.io" | "v5.channel.k8s.io") {
        return serde_json::to_vec(&v).ok();
    }
    (v["status"] != "Success").then(|| v["message"].as_str().unwrap_or("").as_bytes().to_vec())
}

pub async fn serve_spdy(
    server: Server,
    req: ExecReq,
    protocol: &'static str,
    mut incoming: mpsc::Receiver<Incoming>,
    session: Session,
) {
    let mut done = Vec::new();
    match collect(req.flags(), protocol, &mut incoming, &mut done).await {
        Ok(streams) => serve(server, &req, protocol, streams).await,
        Err(e) => tracing::warn!(container_id = %req.container_id, error = %e, "exec session"),
    }
    // Every stream's last bytes are queued before the session says goodbye.
    for d in done {
        let _ = d.await;
    }
    session.close().await;
}

/// Runs the exec for a session's streams and reports its outcome on the error stream.
pub async fn serve(server: Server, req: &ExecReq, protocol: &str, mut streams: Streams) {
    let error = streams.error.take();
    let outcome = run(&server, req, streams).await;
    let msg = match &outcome {
        Ok(code) => status(protocol, Some(*code), None),
        Err(e) => status(protocol, None, Some(&e.to_string())),
    };
    if let (Some(err), Some(m)) = (error, msg) {
        let _ = err.send(m).await;
    }
    tracing::info!(container_id = %req.container_id, result = ?outcome.as_ref().map_err(|e| e.to_string()), "exec session ended");
}

/// Copies a FIFO to a stream; keeps draining (and dropping) once the client is gone.
async fn pump_out(mut r: pipe::Receiver, mut tx: Option<Sink>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(t) = &tx {
                    if t.send(buf[..n].to_vec()).await.is_err() {
                        tx = None;
                    }
                }
            }
        }
    }
}

async fn pump_in(mut rx: mpsc::Receiver<Vec<u8>>, mut w: pipe::Sender, control: Control) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            break;
        }
    }
    drop(w);
    // The shim keeps its end of the FIFO open (as containerd's does) until told: the
    // process sees EOF once the client's stdin has ended.
    if let Err(e) = control.close_stdin().await {
        tracing::debug!(error = %e, "close stdin");
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TermSize {
    width: u32,
    height: u32,
}

/// Terminal sizes arrive as a run of JSON objects.
pub(super) async fn pump_resize(mut rx: mpsc::Receiver<Vec<u8>>, control: Control) {
    let mut buf = Vec::new();
    while let Some(b) = rx.recv().await {
        buf.extend_from_slice(&b);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
        let mut used = 0;
        while let Some(Ok(sz)) = it.next() {
            used = it.byte_offset();
            if let Err(e) = control.resize(sz.width, sz.height).await {
                tracing::debug!(error = %e, "resize");
            }
        }
        buf.drain(..used);
    }
}

async fn run(server: &Server, req: &ExecReq, s: Streams) -> Result<i32> {
    let mut session = server
        .backend
        .exec_session(&req.container_id, &req.cmd, req.flags())
        .await?;
    let control = session.control();
    let outs: Vec<_> = [
        (session.stdout.take(), s.stdout),
        (session.stderr.take(), s.stderr),
    ]
    .into_iter()
    .filter_map(|(fifo, tx)| fifo.map(|r| tokio::spawn(pump_out(r, tx))))
    .collect();
    let stdin_w = session.stdin.take();
    session.start().await?;
    let stdin_pump = match (s.stdin, stdin_w) {
        (Some(rx), Some(w)) => Some(tokio::spawn(pump_in(rx, w, control.clone()))),
        _ => None,
    };
    if let Some(rx) = s.resize {
        tokio::spawn(pump_resize(rx, control.clone()));
    }
    let exit = session
        .wait(Duration::from_secs(10 * 365 * 24 * 3600))
        .await;
    // Stdin nobody will read any more: stop copying it (the pump may be blocked on a
    // full FIFO) and let the client's unread data go with its receiver.
    if let Some(p) = stdin_pump {
        p.abort();
    }
    let exit = exit?;
    // The shim closes the output FIFOs once the process's output ends; what is still in
    // flight reaches the client before the status does.
    let drained = async {
        for o in outs {
            let _ = o.await;
        }
    };
    let (_, deleted) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(15), drained),
        session.delete()
    );
    deleted?;
    Ok(exit.status as i32)
}
