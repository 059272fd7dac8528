//! A SPDY/3.1 session on an upgraded connection, server side: the client opens streams
//! (SYN_STREAM), each is answered at once (SYN_REPLY) and handed out with a receiver of
//! its data and a sender for ours. One task reads, one writes; PINGs are echoed. As with
//! spdystream (the Go side), there is no flow-control window to honour.
//!
//! Bounds: what the client sent and no handler has taken yet shares one byte budget per
//! session (the reader waits while it is spent); what we send is at most `OUT_FRAMES`
//! frames of at most `CHUNK` bytes; a session without a frame either way for the idle
//! timeout is closed, as spdystream's idle timer closes kubelet's.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{self, Frame, HeaderCodec, Headers, FLAG_FIN};
use crate::error::Result;
use crate::stream::limits::{Activity, Limits, SESSION_INBOUND_BYTES};
use crate::stream::queue::{Budget, ByteRx, ByteTx};

/// Largest data frame written (clients read any size; small frames keep latency low).
const CHUNK: usize = 32 << 10;
/// Frames queued towards the client: with `CHUNK`, 2 MiB at most per session.
const OUT_FRAMES: usize = 64;

/// RST_STREAM statuses.
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 5;

/// A stream the client opened.
pub struct Incoming {
    pub headers: Headers,
    /// Data the client sends on it; ends at its FIN (or RST, or the session's end).
    pub rx: ByteRx,
    pub tx: StreamTx,
}

pub(crate) enum Out {
    Reply(u32),
    Raw(Vec<u8>),
    /// GOAWAY, then the write side closes: the client ends the connection.
    Close,
}

/// Writes on one stream.
#[derive(Clone)]
pub struct StreamTx {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamTx {
    #[cfg(test)]
    pub(crate) fn for_test(id: u32, out: mpsc::Sender<Out>) -> StreamTx {
        StreamTx { id, out }
    }

    /// Sends `data`; false once the session is gone.
    pub async fn send(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(CHUNK) {
            let f = frame::data(self.id, 0, chunk);
            if self.out.send(Out::Raw(f)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Resets the stream (RST_STREAM with `status`): the client sees it refused; what it
    /// still sends on it is dropped once the handler has dropped the stream's receiver.
    pub async fn reset(&self, status: u32) {
        let mut body = self.id.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        let _ = self
            .out
            .send(Out::Raw(frame::control(frame::RST_STREAM, 0, &body)))
            .await;
    }

    /// Half-closes the stream (FIN): the client sees its end.
    pub async fn close(&self) {
        let _ = self
            .out
            .send(Out::Raw(frame::data(self.id, FLAG_FIN, &[])))
            .await;
    }
}

/// Ends the session: GOAWAY, then the connection closes once every writer is gone.
#[derive(Clone)]
pub struct Session {
    out: mpsc::Sender<Out>,
}

impl Session {
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }
}

/// Starts the session's reader and writer on `io`; new streams arrive on the receiver,
/// which ends with the connection.
pub fn start<IO>(io: IO, limits: Limits) -> (mpsc::Receiver<Incoming>, Session)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Out>(OUT_FRAMES);
    let (new_tx, new_rx) = mpsc::channel::<Incoming>(16);
    let activity = Activity::default();
    tokio::spawn(write_loop(wr, out_rx, activity.clone()));
    let session = Session {
        out: out_tx.clone(),
    };
    tokio::spawn(async move {
        let close = out_tx.clone();
        match read_loop(rd, out_tx, new_tx, limits, activity).await {
            Ok(true) => {
                tracing::info!(idle = ?limits.idle_timeout, "spdy session idle: closed");
                let _ = close.send(Out::Close).await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, "spdy session ended");
                // A protocol error ends the whole session, not just our reading of it.
                let _ = close.send(Out::Close).await;
            }
        }
    });
    (new_rx, session)
}

async fn write_loop<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Out>, activity: Activity) {
    tokio::pin!(wr);
    let mut codec = HeaderCodec::default();
    while let Some(o) = rx.recv().await {
        let bytes = match o {
            Out::Raw(b) => b,
            Out::Close => {
                let _ = wr
                    .write_all(&frame::control(frame::GOAWAY, 0, &[0u8; 8]))
                    .await;
                break;
            }
            Out::Reply(id) => match codec.encode(&Vec::new()) {
                Ok(block) => {
                    let mut body = id.to_be_bytes().to_vec();
                    body.extend_from_slice(&block);
                    frame::control(frame::SYN_REPLY, 0, &body)
                }
                Err(_) => continue,
            },
        };
        if wr.write_all(&bytes).await.is_err() {
            return;
        }
        activity.touch();
        // Flush when nothing else is queued: interactive sessions see each write at once.
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Reads frames until the client ends the session: Ok(true) if it was idle too long.
async fn read_loop<R: AsyncRead>(
    rd: R,
    out: mpsc::Sender<Out>,
    new: mpsc::Sender<Incoming>,
    limits: Limits,
    activity: Activity,
) -> Result<bool> {
    tokio::pin!(rd);
    let mut codec = HeaderCodec::default();
    let budget = Budget::new(SESSION_INBOUND_BYTES);
    let mut streams: HashMap<u32, ByteTx> = HashMap::new();
    // Streams whose handler dropped the receiver are forgotten once the map doubles
    // (amortized O(1) per stream), not only at the client's FIN or RST.
    let mut prune_at = 64;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        while let Some((f, n)) = frame::parse(&buf)? {
            buf.drain(..n);
            match f {
                Frame::Data {
                    stream,
                    flags,
                    body,
                } => {
                    if let Some(tx) = streams.get(&stream) {
                        // Waits while the session's budget is spent. A handler that
                        // stopped reading dropped its receiver: forget the stream.
                        if !body.is_empty() && tx.send(body).await.is_err() {
                            streams.remove(&stream);
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        streams.remove(&stream);
                    }
                }
                Frame::Control { kind, flags, body } => match kind {
                    frame::SYN_STREAM => {
                        let id = frame::stream_id(&body)?;
                        let headers = codec.decode(body.get(10..).unwrap_or_default())?;
                        let (tx, rx) = budget.queue();
                        if flags & FLAG_FIN == 0 {
                            streams.insert(id, tx);
                            if streams.len() >= prune_at {
                                streams.retain(|_, tx| !tx.is_closed());
                                prune_at = (streams.len() * 2).max(64);
                            }
                        }
                        let _ = out.send(Out::Reply(id)).await;
                        let inc = Incoming {
                            headers,
                            rx,
                            tx: StreamTx {
                                id,
                                out: out.clone(),
                            },
                        };
                        if new.send(inc).await.is_err() {
                            return Ok(false);
                        }
                    }
                    frame::RST_STREAM => {
                        streams.remove(&frame::stream_id(&body)?);
                    }
                    frame::PING => {
                        let _ = out
                            .send(Out::Raw(frame::control(frame::PING, 0, &body)))
                            .await;
                    }
                    frame::GOAWAY => return Ok(false),
                    frame::HEADERS => {
                        // Keep the shared zlib stream in step even though we ignore them.
                        codec.decode(body.get(4..).unwrap_or_default())?;
                    }
                    // SETTINGS, WINDOW_UPDATE, SYN_REPLY (we open no streams): nothing to do.
                    _ => {}
                },
            }
        }
        let Some(read) = activity
            .read(limits.idle_timeout, rd.read(&mut chunk))
            .await
        else {
            return Ok(true);
        };
        let n = read.map_err(|e| crate::error::Error::io("spdy read", e))?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
