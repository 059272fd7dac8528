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

use super::limits::RESIZE_PENDING_MAX;
use super::queue::ByteRx;
use super::spdy::conn::{self, Incoming, Session, StreamTx};
use super::spdy::frame::header;
use super::Server;
use crate::container::session::{ConsoleSize, Control, SessionIo};
use crate::error::{Error, Result};

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
    pub stdin: Option<ByteRx>,
    pub stdout: Option<Sink>,
    pub stderr: Option<Sink>,
    pub resize: Option<Resize>,
}

/// The client's terminal sizes, and how to end their stream when they make no sense.
pub struct Resize {
    pub rx: ByteRx,
    /// SPDY: the stream, reset on a parse error (a WebSocket channel has nothing to reset:
    /// its messages are dropped from then on).
    pub stream: Option<StreamTx>,
    /// Bytes read but not yet parsed (what followed the first size).
    pub pending: Vec<u8>,
}

impl Resize {
    pub fn new(rx: ByteRx, stream: Option<StreamTx>) -> Resize {
        Resize {
            rx,
            stream,
            pending: Vec::new(),
        }
    }
}

/// How long a terminal session waits for the client's first size before its process
/// runs (exec) or its stdin flows (attach). kubectl, crictl and kubelet send it right
/// after opening their streams, so it is normally there at once; a client that never
/// sends one (a terminal without a size) only delays its start by this much.
pub const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);

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

/// The streams of a session, waiting up to `within` (the stream creation timeout) for
/// every one the request announced.
pub(super) async fn collect(
    req: SessionIo,
    protocol: &str,
    incoming: &mut mpsc::Receiver<Incoming>,
    done: &mut Vec<tokio::task::JoinHandle<()>>,
    within: Duration,
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
    let deadline = tokio::time::Instant::now() + within;
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
            "resize" => s.resize = Some(Resize::new(inc.rx, Some(inc.tx))),
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
    let within = server.limits().creation_timeout;
    match collect(req.flags(), protocol, &mut incoming, &mut done, within).await {
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

async fn pump_in(mut rx: ByteRx, mut w: pipe::Sender, control: Control) {
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

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TermSize {
    width: u32,
    height: u32,
}

/// The client's first terminal size (the latest of those already sent), waiting at most
/// `within` for it. What follows it stays in `resize.pending` for `pump_resize`, which
/// also deals with a stream that starts with something other than a size (None here).
/// A 0x0 size is no size (runc and the pty leave a window of 0 alone).
pub(super) async fn first_size(resize: &mut Resize, within: Duration) -> Option<ConsoleSize> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (sizes, used, bad) = parse_sizes(&resize.pending);
        resize.pending.drain(..used);
        let found = sizes
            .iter()
            .rev()
            .find(|s| s.width > 0 && s.height > 0)
            .map(|s| ConsoleSize {
                width: s.width,
                height: s.height,
            });
        if found.is_some() {
            return found;
        }
        if bad.is_some() || resize.pending.len() > RESIZE_PENDING_MAX {
            return None;
        }
        match tokio::time::timeout_at(deadline, resize.rx.recv()).await {
            Ok(Some(b)) => resize.pending.extend_from_slice(&b),
            // The stream ended, or the client sent no size in time.
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Terminal sizes arrive as a run of JSON objects. At most `RESIZE_PENDING_MAX` bytes of
/// an incomplete one are kept, so each chunk is parsed in time bounded by that plus its
/// own length; anything that is not a size (bad JSON, a wrong shape, an object larger
/// than the bound) ends the stream, as kubelet stops reading it on its first decode
/// error, instead of piling up behind it. Ends with the stream.
pub(super) async fn pump_resize(resize: Resize, control: Control) {
    let Resize {
        mut rx,
        stream,
        pending: mut buf,
    } = resize;
    loop {
        let (sizes, used, bad) = parse_sizes(&buf);
        for sz in sizes {
            if let Err(e) = control.resize(sz.width, sz.height).await {
                tracing::debug!(error = %e, "resize");
            }
        }
        buf.drain(..used);
        let why = match bad {
            Some(e) => e,
            None if buf.len() > RESIZE_PENDING_MAX => {
                format!("a terminal size of more than {RESIZE_PENDING_MAX} bytes")
            }
            None => match rx.recv().await {
                Some(b) => {
                    buf.extend_from_slice(&b);
                    continue;
                }
                None => return,
            },
        };
        tracing::warn!(error = %why, "resize stream ended");
        // Dropping the receiver first: the session forgets the stream and drops what
        // the client still sends on it.
        drop(rx);
        if let Some(s) = stream {
            s.reset(conn::PROTOCOL_ERROR).await;
        }
        return;
    }
}

/// The whole sizes at the front of `buf`, the bytes they took, and the parse error that
/// stopped them (None when only an incomplete object is left).
pub(super) fn parse_sizes(buf: &[u8]) -> (Vec<TermSize>, usize, Option<String>) {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<TermSize>();
    let mut sizes = Vec::new();
    let mut used = 0;
    loop {
        match it.next() {
            Some(Ok(sz)) => {
                used = it.byte_offset();
                sizes.push(sz);
            }
            None => return (sizes, used, None),
            Some(Err(e)) if e.is_eof() => return (sizes, used, None),
            Some(Err(e)) => return (sizes, used, Some(format!("bad terminal size: {e}"))),
        }
    }
}

async fn run(server: &Server, req: &ExecReq, mut s: Streams) -> Result<i32> {
    // Why wait: a terminal made without the client's size has a 0x0 window, and what
    // reads it at once (`stty size`, a shell, top, vim) fails or draws for no screen. The
    // first size goes into the process spec, so the runtime sets it on the pty before
    // the process runs; later sizes are resizes.
    let console = match s.resize.as_mut() {
        Some(r) if req.tty => first_size(r, FIRST_SIZE_WAIT).await,
        _ => None,
    };
    let mut session = server
        .backend
        .exec_session(&req.container_id, &req.cmd, req.flags(), console)
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
    if let Some(r) = s.resize {
        tokio::spawn(pump_resize(r, control.clone()));
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

#[cfg(test)]
mod tests {
    use super::{first_size, parse_sizes, Resize};
    use crate::container::session::ConsoleSize;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_size_is_taken_whole_and_the_rest_kept() {
        let (tx, rx) = super::super::queue::queue(4096);
        let mut r = Resize::new(rx, None);
        tx.send(br#"{"Width":0,"Height":0}{"Width":97,"#.to_vec())
            .await
            .unwrap();
        tx.send(br#""Height":31}{"Width":1"#.to_vec())
            .await
            .unwrap();
        let got = first_size(&mut r, Duration::from_secs(30)).await;
        assert_eq!(
            got,
            Some(ConsoleSize {
                width: 97,
                height: 31
            })
        );
        assert_eq!(r.pending, br#"{"Width":1"#);
        // A stream that ends, or sends garbage, gives no size (and keeps the garbage for
        // the pump, which ends the stream over it).
        drop(tx);
        assert_eq!(first_size(&mut r, Duration::from_secs(30)).await, None);
        let (tx, rx) = super::super::queue::queue(4096);
        let mut r = Resize::new(rx, None);
        tx.send(b"nonsense".to_vec()).await.unwrap();
        assert_eq!(first_size(&mut r, Duration::from_secs(30)).await, None);
        assert_eq!(r.pending, b"nonsense");
        // No size within the bound: none (the session goes on without one).
        let (_tx, rx) = super::super::queue::queue(4096);
        let mut r = Resize::new(rx, None);
        assert_eq!(first_size(&mut r, Duration::from_millis(20)).await, None);
    }

    #[test]
    fn sizes_are_taken_whole_and_bad_input_is_named() {
        let (s, used, bad) = parse_sizes(br#"{"Width":80,"Height":24} {"Width":100,"#);
        assert_eq!((s.len(), s[0].width, s[0].height), (1, 80, 24));
        assert_eq!((used, bad), (24, None), "an incomplete object waits");
        let (s, _, bad) = parse_sizes(br#"{"Width":1,"Height":2}nonsense"#);
        assert_eq!(s.len(), 1);
        assert!(bad.is_some(), "garbage after a size ends the stream");
        assert!(
            parse_sizes(br#"{"Width":"wide","Height":2}"#).2.is_some(),
            "a wrong shape ends it"
        );
        assert!(parse_sizes(b"[1,2,3]").2.is_some());
        let (s, used, bad) = parse_sizes(br#"{"Width":"aaaaaaaaaaaaaa"#);
        assert!(
            s.is_empty() && used == 0 && bad.is_none(),
            "an unterminated string waits"
        );
    }
}
