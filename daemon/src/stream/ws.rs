//! WebSocket sessions on the streaming server (`tokio-tungstenite` frames the messages;
//! hyper did the HTTP upgrade).
//!
//! - Exec and Attach, `v5.channel.k8s.io` / `v4.channel.k8s.io`: each binary message starts with its
//!   channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize); v5 adds 255 = "the client
//!   closed channel N" (stdin EOF). As kubelet, an empty message on the lowest writable
//!   channel tells the client the session is up.
//! - PortForward, `SPDY/3.1+portforward.k8s.io` (kubectl's tunnel): the messages carry a
//!   SPDY byte stream, served by the same SPDY session code as a plain upgrade; or
//!   kubelet's older channel framing (`ws_portforward`).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink as _, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::attach::{self, AttachReq};
use super::exec::{self, ExecReq, Resize, Streams};
use super::limits::{Activity, RESIZE_PENDING_MAX, SESSION_INBOUND_BYTES, WS_MAX_MESSAGE};
use super::queue;
use super::Server;

pub const EXEC: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
pub const PORTFORWARD: [&str; 3] = [
    "SPDY/3.1+portforward.k8s.io",
    super::ws_portforward::BINARY,
    super::ws_portforward::BASE64,
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// A server-side WebSocket on an upgraded connection. tungstenite's defaults admit 64 MiB
/// messages; kubelet and kubectl write 32 KiB at most, so 1 MiB is generous.
pub async fn socket<IO>(io: IO) -> WebSocketStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(cfg)).await
}

/// A remote command over WebSocket channels.
pub enum Remote {
    Exec(ExecReq),
    Attach(AttachReq),
}

pub async fn serve_remotecommand<IO>(
    server: Server,
    remote: Remote,
    protocol: &'static str,
    ws: WebSocketStream<IO>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let req = match &remote {
        Remote::Exec(e) => e.flags(),
        Remote::Attach(a) => a.flags(),
    };
    let (mut tx, mut rx) = ws.split();
    let (out, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
    let activity = Activity::default();
    let idle = server.limits().idle_timeout;
    let wrote = activity.clone();
    let writer = tokio::spawn(async move {
        while let Some((ch, data)) = out_rx.recv().await {
            let mut m = Vec::with_capacity(data.len() + 1);
            m.push(ch);
            m.extend_from_slice(&data);
            if tx.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
            wrote.touch();
        }
        // A normal closure (1000): clients take a close without a code (1005) as an
        // error even after the status arrived.
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tx.send(Message::Close(Some(bye))).await;
        let _ = tx.close().await;
    });
    // One sink per writable channel, each prefixing its channel byte.
    let mut forwarders = Vec::new();
    let mut sink = |ch: u8| -> exec::Sink {
        let (s, mut r) = mpsc::channel::<Vec<u8>>(16);
        let out = out.clone();
        forwarders.push(tokio::spawn(async move {
            while let Some(b) = r.recv().await {
                if out.send((ch, b)).await.is_err() {
                    break;
                }
            }
        }));
        s
    };
    // Bounded by bytes: a message may be 1 MiB.
    let (stdin_tx, stdin_rx) = queue::queue(SESSION_INBOUND_BYTES);
    let (resize_tx, resize_rx) = queue::queue(RESIZE_PENDING_MAX);
    let streams = Streams {
        error: Some(sink(ERROR)),
        stdin: req.stdin.then_some(stdin_rx),
        stdout: req.stdout.then(|| sink(STDOUT)),
        stderr: (req.stderr && !req.tty).then(|| sink(STDERR)),
        resize: req.tty.then_some(Resize::new(resize_rx, None)),
    };
    let first = if req.stdout {
        STDOUT
    } else if req.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out.send((first, Vec::new())).await;
    drop(out);
    let stop_writer = writer.abort_handle();
    let reader = tokio::spawn(async move {
        let mut stdin = Some(stdin_tx);
        loop {
            let Some(next) = activity.read(idle, rx.next()).await else {
                // Idle both ways for the idle timeout: the connection goes (both halves
                // dropped), as kubelet's does.
                tracing::info!(?idle, "websocket session idle: closed");
                stop_writer.abort();
                break;
            };
            let Some(Ok(m)) = next else { break };
            let data = match m {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, payload)) = data.split_first() else {
                continue;
            };
            match ch {
                STDIN => {
                    if let Some(s) = &stdin {
                        if !payload.is_empty() && s.send(payload.to_vec()).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    // Fails once the resize pump gave up on bad sizes: dropped.
                    let _ = resize_tx.send(payload.to_vec()).await;
                }
                CLOSE if payload.first() == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    });
    match remote {
        Remote::Exec(e) => {
            exec::serve(server, &e, protocol, streams).await;
            reader.abort();
        }
        Remote::Attach(a) => {
            // The reader ends when the client's connection does.
            let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
            let stop_reader = reader.abort_handle();
            let watch = tokio::spawn(async move {
                let _ = reader.await;
                let _ = gone_tx.send(());
            });
            let gone = Box::pin(async move {
                let _ = gone_rx.await;
            });
            attach::serve(server, &a, protocol, streams, gone).await;
            stop_reader.abort();
            watch.abort();
        }
    }
    for f in forwarders {
        let _ = f.await;
    }
    let _ = writer.await;
}

/// WebSocket binary messages as a byte stream (for the SPDY tunnel).
pub struct Bytes<IO> {
    ws: WebSocketStream<IO>,
    pending: Vec<u8>,
}

impl<IO> Bytes<IO> {
    pub fn new(ws: WebSocketStream<IO>) -> Self {
        Bytes {
            ws,
            pending: Vec::new(),
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Bytes<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.drain(..n);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Binary(b)))) => self.pending.extend_from_slice(&b),
                Poll::Ready(Some(Ok(Message::Close(_)))) | Poll::Ready(None) => {
                    return Poll::Ready(Ok(()))
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Bytes<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(io_err(e))),
            Poll::Pending => return Poll::Pending,
        }
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(data.to_vec().into()))
            .map_err(io_err)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_err)
    }
}
