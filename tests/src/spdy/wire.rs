//! The connection's two tasks and what they share with the session and its streams: the
//! writer turns queued [`Out`] messages into frames; the reader hands DATA, replies and
//! resets to their streams ([`Event`]), completes PINGs and records GOAWAY.

use super::frame::{be32, control_frame, data_frame, kind, FLAG_FIN, FRAME_LIMIT, REFUSED_STREAM};
use super::headers::{HeaderReader, HeaderWriter, Headers};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

/// What the writer task puts on the wire.
pub(super) enum Out {
    Open {
        id: u32,
        headers: Headers,
    },
    Data {
        id: u32,
        fin: bool,
        payload: Vec<u8>,
    },
    Ping(u32),
    /// A HEADERS frame on a stream (its block goes through our zlib stream).
    Headers {
        id: u32,
        headers: Headers,
    },
    /// Any control frame whose body needs no compression (SETTINGS, WINDOW_UPDATE).
    Control {
        kind: u16,
        body: Vec<u8>,
    },
    Reset {
        id: u32,
        status: u32,
    },
    /// GOAWAY, then our write side closes.
    GoAway,
}

/// How a stream's incoming side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server half-closed it (FIN).
    Fin,
    /// RST_STREAM with this status.
    Reset(u32),
    /// The connection ended first.
    Lost,
}

pub(super) enum Event {
    Data(Vec<u8>),
    End(End),
}

pub(super) struct Slot {
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) reply: Option<oneshot::Sender<Headers>>,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) streams: Mutex<HashMap<u32, Slot>>,
    pub(super) pings: Mutex<HashMap<u32, oneshot::Sender<()>>>,
    /// GOAWAY from the server: (last good stream id, status).
    pub(super) goaway: Mutex<Option<(u32, u32)>>,
    /// Why the reader stopped, when not at a clean end of the connection.
    pub(super) failure: Mutex<Option<String>>,
    /// Set once the reader is done: no more streams can be opened.
    pub(super) ended: Mutex<bool>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) async fn write_frames(
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    mut codec: HeaderWriter,
) {
    let mut w = BufWriter::with_capacity(128 << 10, wr);
    while let Some(o) = rx.recv().await {
        let frame = match o {
            Out::Open { id, headers } => {
                let Ok(block) = codec.block(&headers) else {
                    return;
                };
                let mut body = Vec::with_capacity(10 + block.len());
                body.extend(id.to_be_bytes());
                body.extend(0u32.to_be_bytes()); // associated stream
                body.extend([0u8, 0u8]); // priority 0, slot 0
                body.extend(block);
                control_frame(kind::SYN_STREAM, 0, &body)
            }
            Out::Data { id, fin, payload } => {
                data_frame(id, if fin { FLAG_FIN } else { 0 }, &payload)
            }
            Out::Ping(id) => control_frame(kind::PING, 0, &id.to_be_bytes()),
            Out::Headers { id, headers } => {
                let Ok(block) = codec.block(&headers) else {
                    return;
                };
                let mut body = id.to_be_bytes().to_vec();
                body.extend(block);
                control_frame(kind::HEADERS, 0, &body)
            }
            Out::Control { kind, body } => control_frame(kind, 0, &body),
            Out::Reset { id, status } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend(status.to_be_bytes());
                control_frame(kind::RST_STREAM, 0, &body)
            }
            Out::GoAway => {
                let _ = w.write_all(&control_frame(kind::GOAWAY, 0, &[0; 8])).await;
                break;
            }
        };
        if w.write_all(&frame).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Queues a frame from the reader without ever blocking it on the writer.
fn queue(out: &mpsc::Sender<Out>, o: Out) {
    let out = out.clone();
    tokio::spawn(async move {
        let _ = out.send(o).await;
    });
}

pub(super) async fn read_frames<R: AsyncRead + Unpin>(
    mut rd: R,
    shared: &Shared,
    out: mpsc::Sender<Out>,
) -> Result<()> {
    let mut headers = HeaderReader::new();
    loop {
        let mut head = [0u8; 8];
        if rd.read(&mut head[..1]).await? == 0 {
            return Ok(());
        }
        rd.read_exact(&mut head[1..])
            .await
            .context("connection ended inside a frame header")?;
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        ensure!(len <= FRAME_LIMIT, "frame of {len} bytes");
        let flags = head[4];
        let mut body = vec![0u8; len];
        rd.read_exact(&mut body)
            .await
            .context("connection ended inside a frame")?;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let mut streams = lock(&shared.streams);
            if let Some(slot) = streams.get(&id) {
                if !body.is_empty() {
                    let _ = slot.events.send(Event::Data(body));
                }
                if flags & FLAG_FIN != 0 {
                    let _ = slot.events.send(Event::End(End::Fin));
                    streams.remove(&id);
                }
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        ensure!(version == 3, "control frame of SPDY version {version}");
        match u16::from_be_bytes([head[2], head[3]]) {
            kind::SYN_REPLY => {
                let id = be32(&body)? & 0x7fff_ffff;
                let h = headers.block(&body[4..])?;
                let mut streams = lock(&shared.streams);
                if let Some(slot) = streams.get_mut(&id) {
                    if let Some(r) = slot.reply.take() {
                        let _ = r.send(h);
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = slot.events.send(Event::End(End::Fin));
                        streams.remove(&id);
                    }
                }
            }
            kind::RST_STREAM => {
                let id = be32(&body)? & 0x7fff_ffff;
                let status = be32(body.get(4..).unwrap_or_default()).unwrap_or(0);
                if let Some(slot) = lock(&shared.streams).remove(&id) {
                    let _ = slot.events.send(Event::End(End::Reset(status)));
                }
            }
            kind::PING => {
                let id = be32(&body)?;
                match lock(&shared.pings).remove(&id) {
                    Some(waiter) => {
                        let _ = waiter.send(());
                    }
                    // The server's own PING: echo it.
                    None => queue(&out, Out::Ping(id)),
                }
            }
            kind::GOAWAY => {
                let last = be32(&body)? & 0x7fff_ffff;
                let status = be32(body.get(4..).unwrap_or_default()).unwrap_or(0);
                *lock(&shared.goaway) = Some((last, status));
            }
            kind::SYN_STREAM => {
                // Servers push nothing here; keep the header stream in step and refuse.
                let id = be32(&body)? & 0x7fff_ffff;
                headers.block(body.get(10..).unwrap_or_default())?;
                queue(
                    &out,
                    Out::Reset {
                        id,
                        status: REFUSED_STREAM,
                    },
                );
            }
            kind::HEADERS => {
                headers.block(body.get(4..).unwrap_or_default())?;
            }
            kind::SETTINGS | kind::WINDOW_UPDATE => {}
            other => bail!("unknown control frame type {other}"),
        }
    }
}
