//! Exec over a SPDY session (remotecommand v2–v4): the client opens its error, stdin,
//! stdout, stderr and resize streams; the command runs as an exec process in the pod's
//! shim with FIFOs berthd holds (a terminal when asked); on exit the error stream gets the
//! status (v4: a Status object, with the exit code on failure) and the session closes.
//!
//! A client that goes away only ends its own streams: stdin gets EOF, output is drained and
//! dropped, and the process runs on (as with containerd) until it exits by itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::spdy::conn::{Incoming, Session, StreamTx};
use super::spdy::frame::header;
use crate::error::{Error, Result};
use crate::pod::shim::ExecIo;
use crate::runtime::Runtime;

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

/// The client's streams, by type.
#[derive(Default)]
struct Streams {
    error: Option<StreamTx>,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
    stdout: Option<StreamTx>,
    stderr: Option<StreamTx>,
    resize: Option<mpsc::Receiver<Vec<u8>>>,
}

async fn collect(
    req: &ExecReq,
    protocol: &str,
    incoming: &mut mpsc::Receiver<Incoming>,
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
            "error" => s.error = Some(inc.tx),
            "stdin" => s.stdin = Some(inc.rx),
            "stdout" => s.stdout = Some(inc.tx),
            "stderr" => s.stderr = Some(inc.tx),
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

/// The status the error stream carries for an exit code (v4: JSON; older: text on error).
fn status(protocol: &str, code: Option<i32>, err: Option<&str>) -> Option<Vec<u8>> {
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
    if protocol == "v4.channel.k8s.io" {
        return serde_json::to_vec(&v).ok();
    }
    (v["status"] != "Success").then(|| v["message"].as_str().unwrap_or("").as_bytes().to_vec())
}

pub async fn serve_spdy(
    rt: Arc<Runtime>,
    req: ExecReq,
    protocol: &'static str,
    mut incoming: mpsc::Receiver<Incoming>,
    session: Session,
) {
    let streams = match collect(&req, protocol, &mut incoming).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(container_id = %req.container_id, error = %e, "exec session");
            session.close().await;
            return;
        }
    };
    let error = streams.error.clone();
    let outcome = run(&rt, &req, streams).await;
    let msg = match &outcome {
        Ok(code) => status(protocol, Some(*code), None),
        Err(e) => status(protocol, None, Some(&e.to_string())),
    };
    if let Some(err) = error {
        if let Some(m) = msg {
            err.send(&m).await;
        }
        err.close().await;
    }
    session.close().await;
    tracing::info!(container_id = %req.container_id, result = ?outcome.as_ref().map_err(|e| e.to_string()), "exec session ended");
}

/// Copies a FIFO to a stream; keeps draining (and dropping) once the client is gone.
async fn pump_out(mut r: pipe::Receiver, tx: Option<StreamTx>) {
    let mut buf = vec![0u8; 32 << 10];
    let mut live = tx.is_some();
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if live {
                    if let Some(t) = &tx {
                        live = t.send(&buf[..n]).await;
                    }
                }
            }
        }
    }
    if let Some(t) = tx {
        t.close().await;
    }
}

async fn pump_in(
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut w: pipe::Sender,
    shim: crate::pod::shim::Shim,
    id: String,
    exec_id: String,
) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            break;
        }
    }
    drop(w);
    // The shim keeps its end of the FIFO open (as containerd's does) until told: the
    // process sees EOF once the client's stdin has ended.
    if let Err(e) = shim.close_stdin(&id, &exec_id).await {
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
async fn pump_resize(
    mut rx: mpsc::Receiver<Vec<u8>>,
    shim: crate::pod::shim::Shim,
    id: String,
    exec_id: String,
) {
    let mut buf = Vec::new();
    while let Some(b) = rx.recv().await {
        buf.extend_from_slice(&b);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
        let mut used = 0;
        while let Some(Ok(sz)) = it.next() {
            used = it.byte_offset();
            if let Err(e) = shim.resize(&id, &exec_id, sz.width, sz.height).await {
                tracing::debug!(error = %e, "resize");
            }
        }
        buf.drain(..used);
    }
}

async fn run(rt: &Arc<Runtime>, req: &ExecReq, s: Streams) -> Result<i32> {
    let rec = rt.container(&req.container_id)?;
    let pod = rt.pod(&rec.pod_id)?;
    let shim = rt.shim_of(&pod).await?;
    let exec_id = format!("exec-{}", &crate::pod::new_id()?[..16]);
    let dir = rt.config.paths.state.join("exec").join(&exec_id);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir exec dir", e))?;
    let res = async {
        let fifo = |name: &str| -> Result<std::path::PathBuf> {
            let p = dir.join(name);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::Internal(format!("mkfifo: {e}")))?;
            Ok(p)
        };
        let mut io = ExecIo {
            terminal: req.tty,
            ..Default::default()
        };
        // Our ends are open before the shim opens the FIFOs. stdin is opened read-write
        // so that opening never blocks and EOF comes when we drop it.
        let stdin_w = if req.stdin {
            let p = fifo("stdin")?;
            io.stdin = p.display().to_string();
            Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&p)
                    .map_err(|e| Error::io("open stdin fifo", e))?,
            )
        } else {
            None
        };
        let mut outs = Vec::new();
        for (name, want, tx) in [
            ("stdout", req.stdout, s.stdout.clone()),
            ("stderr", req.stderr && !req.tty, s.stderr.clone()),
        ] {
            if !want {
                continue;
            }
            let p = fifo(name)?;
            let r = pipe::OpenOptions::new()
                .open_receiver(&p)
                .map_err(|e| Error::io("open output fifo", e))?;
            if name == "stdout" {
                io.stdout = p.display().to_string();
            } else {
                io.stderr = p.display().to_string();
            }
            outs.push(tokio::spawn(pump_out(r, tx)));
        }
        let spec = crate::container::exec_spec(&rec.bundle, &req.cmd, req.tty)?;
        shim.exec_io(&req.container_id, &exec_id, spec, &io).await?;
        if let Err(e) = shim.start_exec(&req.container_id, &exec_id).await {
            let _ = shim.delete_exec(&req.container_id, &exec_id).await;
            return Err(e);
        }
        if let (Some(rx), Some(w)) = (s.stdin, stdin_w) {
            let (id, eid) = (req.container_id.clone(), exec_id.clone());
            tokio::spawn(pump_in(rx, w, shim.clone(), id, eid));
        }
        if let Some(rx) = s.resize {
            let (id, eid) = (req.container_id.clone(), exec_id.clone());
            tokio::spawn(pump_resize(rx, shim.clone(), id, eid));
        }
        let code = shim
            .wait_exec(
                &req.container_id,
                &exec_id,
                Duration::from_secs(10 * 365 * 24 * 3600),
            )
            .await?;
        // The shim closes the output FIFOs once the process's output ends; what is
        // still in flight reaches the client before the status does.
        let drained = async {
            for o in outs {
                let _ = o.await;
            }
        };
        let (_, deleted) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(15), drained),
            shim.delete_exec(&req.container_id, &exec_id)
        );
        deleted?;
        Ok(code as i32)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    res
}
