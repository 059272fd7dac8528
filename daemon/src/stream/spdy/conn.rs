//! A SPDY/3.1 session on an upgraded connection, server side: the client opens streams
//! (SYN_STREAM), each is answered at once (SYN_REPLY) and handed out with a receiver of
//! its data and a sender for ours. One task reads, one writes; PINGs are echoed. As with
//! spdystream (the Go side), there is no flow-control window to honour.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{self, Frame, HeaderCodec, Headers, FLAG_FIN};
use crate::error::Result;

/// Largest data frame written (clients read any size; small frames keep latency low).
const CHUNK: usize = 32 << 10;

/// A stream the client opened.
pub struct Incoming {
    pub headers: Headers,
    /// Data the client sends on it; ends at its FIN (or RST, or the session's end).
    pub rx: mpsc::Receiver<Vec<u8>>,
    pub tx: StreamTx,
}

enum Out {
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
pub fn start<IO>(io: IO) -> (mpsc::Receiver<Incoming>, Session)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Out>(256);
    let (new_tx, new_rx) = mpsc::channel::<Incoming>(16);
    tokio::spawn(write_loop(wr, out_rx));
    let session = Session {
        out: out_tx.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = read_loop(rd, out_tx, new_tx).await {
            tracing::debug!(error = %e, "spdy session ended");
        }
    });
    (new_rx, session)
}

async fn write_loop<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Out>) {
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
        // Flush when nothing else is queued: interactive sessions see each write at once.
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

async fn read_loop<R: AsyncRead>(
    rd: R,
    out: mpsc::Sender<Out>,
    new: mpsc::Sender<Incoming>,
) -> Result<()> {
    tokio::pin!(rd);
    let mut codec = HeaderCodec::default();
    let mut streams: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
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
                        if !body.is_empty() {
                            // A handler that stopped reading drops its receiver: ignore.
                            let _ = tx.send(body).await;
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
                        let (tx, rx) = mpsc::channel(64);
                        if flags & FLAG_FIN == 0 {
                            streams.insert(id, tx);
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
                            return Ok(());
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
                    frame::GOAWAY => return Ok(()),
                    frame::HEADERS => {
                        // Keep the shared zlib stream in step even though we ignore them.
                        codec.decode(body.get(4..).unwrap_or_default())?;
                    }
                    // SETTINGS, WINDOW_UPDATE, SYN_REPLY (we open no streams): nothing to do.
                    _ => {}
                },
            }
        }
        let n = rd
            .read(&mut chunk)
            .await
            .map_err(|e| crate::error::Error::io("spdy read", e))?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
