//! A SPDY session on an upgraded connection: starting its reader and writer tasks, opening
//! streams (SYN_STREAM, then the wait for SYN_REPLY), PING, SETTINGS and GOAWAY, and ending
//! the connection (waiting for the server, or with a reset).

use super::frame::kind;
use super::headers::{HeaderWriter, Headers};
use super::http::{self, Handshake, Refused};
use super::stream::{Stream, StreamReader, StreamWriter};
use super::wire::{lock, read_frames, write_frames, End, Event, Out, Shared, Slot};
use anyhow::{bail, ensure, Context, Result};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How long a new stream waits for its SYN_REPLY (client-go's createStreamResponseTimeout).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What came of an upgrade request.
pub enum Upgrade {
    Switched(Session),
    Refused(Refused),
}

/// A SPDY session on an upgraded connection. Keep it while its streams are in use:
/// dropping it ends the connection.
pub struct Session {
    protocol: String,
    out: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    next_stream: tokio::sync::Mutex<u32>,
    next_ping: AtomicU32,
    done: watch::Receiver<bool>,
    fd: RawFd,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl Session {
    /// Requests `url` with an upgrade to SPDY/3.1 offering `protocols` (in order of
    /// preference); a 101 yields the session, any other answer is returned as it came.
    pub async fn upgrade(url: &str, protocols: &[&str]) -> Result<Upgrade> {
        Ok(match http::handshake(url, protocols).await? {
            Handshake::Switched {
                sock,
                protocol,
                early,
            } => Upgrade::Switched(Session::start(sock, protocol, early)?),
            Handshake::Refused(r) => Upgrade::Refused(r),
        })
    }

    /// [`Session::upgrade`], failing unless the server switched protocols.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<Session> {
        match Session::upgrade(url, protocols).await? {
            Upgrade::Switched(s) => Ok(s),
            Upgrade::Refused(r) => bail!(
                "{url}: HTTP {} instead of 101: {:?} {:?}",
                r.status,
                r.headers,
                r.body
            ),
        }
    }

    fn start(sock: TcpStream, protocol: String, early: Vec<u8>) -> Result<Session> {
        let fd = sock.as_raw_fd();
        let (rd, wr) = sock.into_split();
        let shared = Arc::new(Shared::default());
        let (out_tx, out_rx) = mpsc::channel(64);
        let (done_tx, done_rx) = watch::channel(false);
        let codec = HeaderWriter::new()?;
        let writer = tokio::spawn(write_frames(wr, out_rx, codec));
        let rd = BufReader::with_capacity(128 << 10, std::io::Cursor::new(early).chain(rd));
        let reader = tokio::spawn({
            let (shared, out) = (shared.clone(), out_tx.clone());
            async move {
                if let Err(e) = read_frames(rd, &shared, out).await {
                    *lock(&shared.failure) = Some(format!("{e:#}"));
                }
                // Under the streams lock, so that no stream is registered after the drain.
                let mut streams = lock(&shared.streams);
                *lock(&shared.ended) = true;
                for (_, slot) in streams.drain() {
                    let _ = slot.events.send(Event::End(End::Lost));
                }
                drop(streams);
                lock(&shared.pings).clear();
                let _ = done_tx.send(true);
            }
        });
        Ok(Session {
            protocol,
            out: out_tx,
            shared,
            next_stream: tokio::sync::Mutex::new(1),
            next_ping: AtomicU32::new(1),
            done: done_rx,
            fd,
            reader: Some(reader),
            writer: Some(writer),
        })
    }

    /// The protocol the server chose.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Opens a stream (SYN_STREAM) carrying `headers` and waits for the server's
    /// SYN_REPLY, as client-go does before using a stream.
    pub async fn open(&self, headers: &[(&str, &str)]) -> Result<Stream> {
        let mut s = self.open_unreplied(headers).await?;
        let reply = s.rx.reply.take().context("no reply slot")?;
        s.reply = tokio::time::timeout(REPLY_TIMEOUT, reply)
            .await
            .with_context(|| {
                format!(
                    "stream {} {headers:?}: no SYN_REPLY within {REPLY_TIMEOUT:?}",
                    s.id
                )
            })?
            .map_err(|_| {
                anyhow::anyhow!(
                    "stream {} {headers:?}: the session ended before its SYN_REPLY ({})",
                    s.id,
                    self.why_ended()
                )
            })?;
        Ok(s)
    }

    /// Opens a stream without waiting for its SYN_REPLY.
    pub async fn open_unreplied(&self, headers: &[(&str, &str)]) -> Result<Stream> {
        let headers: Headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Ids go out in increasing order: allocation and queueing happen under one lock.
        let mut next = self.next_stream.lock().await;
        let id = *next;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut streams = lock(&self.shared.streams);
            ensure!(
                !*lock(&self.shared.ended),
                "the session has ended ({})",
                self.why_ended()
            );
            streams.insert(
                id,
                Slot {
                    events: events_tx,
                    reply: Some(reply_tx),
                },
            );
        }
        *next += 2;
        self.out
            .send(Out::Open {
                id,
                headers: headers.clone(),
            })
            .await
            .map_err(|_| anyhow::anyhow!("the session's writer is gone"))?;
        drop(next);
        Ok(Stream {
            id,
            headers,
            reply: Vec::new(),
            tx: StreamWriter {
                id,
                out: self.out.clone(),
            },
            rx: StreamReader {
                id,
                events: events_rx,
                reply: Some(reply_rx),
                end: None,
            },
        })
    }

    /// Sends a PING and waits (bounded) for its echo; returns the round trip.
    pub async fn ping(&self, within: Duration) -> Result<Duration> {
        let id = self.next_ping.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pings).insert(id, tx);
        let start = Instant::now();
        self.out
            .send(Out::Ping(id))
            .await
            .map_err(|_| anyhow::anyhow!("the session's writer is gone"))?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(_)) => bail!("session ended before PING {id} came back"),
            Err(_) => bail!("no echo of PING {id} within {within:?}"),
        }
    }

    /// GOAWAY from the server, if one came: (last good stream id, status).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        *lock(&self.shared.goaway)
    }

    /// Whether the server's side of the connection has ended.
    pub fn ended(&self) -> bool {
        *self.done.borrow()
    }

    fn why_ended(&self) -> String {
        lock(&self.shared.failure)
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }

    /// Waits (bounded) for the server to end the connection; Err on a protocol error.
    pub async fn wait_end(&self, within: Duration) -> Result<()> {
        let mut done = self.done.clone();
        tokio::time::timeout(within, done.wait_for(|d| *d))
            .await
            .with_context(|| format!("the server kept the session open past {within:?}"))?
            .ok();
        match lock(&self.shared.failure).clone() {
            Some(f) => bail!("session failed: {f}"),
            None => Ok(()),
        }
    }

    /// Sends SETTINGS with `(id, value)` entries (the server may ignore them).
    pub async fn settings(&self, entries: &[(u32, u32)]) -> Result<()> {
        let mut body = (entries.len() as u32).to_be_bytes().to_vec();
        for (id, value) in entries {
            body.extend((id & 0x00ff_ffff).to_be_bytes());
            body.extend(value.to_be_bytes());
        }
        self.out
            .send(Out::Control {
                kind: kind::SETTINGS,
                body,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the session's writer is gone"))
    }

    /// Says GOAWAY and closes our write side.
    pub async fn go_away(&self) -> Result<()> {
        self.out
            .send(Out::GoAway)
            .await
            .map_err(|_| anyhow::anyhow!("the session's writer is gone"))
    }

    /// Drops the TCP connection at once with a reset, as a killed client's kernel would
    /// when data was left unread.
    pub async fn kill(mut self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: fd is this session's socket, still open: both halves live in the tasks.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        for t in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}
