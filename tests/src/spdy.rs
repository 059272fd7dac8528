//! A SPDY/3.1 client for the CRI streaming server, written apart from berthd's server side
//! so that each checks the other: the HTTP/1.1 upgrade (`Upgrade: SPDY/3.1`, protocol
//! negotiation through `X-Stream-Protocol-Version`), SYN_STREAM / SYN_REPLY, DATA with FIN,
//! RST_STREAM, PING and GOAWAY; header blocks go through one zlib stream per direction
//! preset with the SPDY/3 dictionary. No flow-control windows (as moby/spdystream).
//!
//! On top of it: [`exec`] / [`ExecSession`] (remotecommand v2–v4, the streams kubectl exec
//! opens) and [`PortForward`] (`portforward.k8s.io`, an error and a data stream per
//! forwarded connection).

use anyhow::{bail, ensure, Context, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Remote command protocols in kubectl's order of preference.
pub const EXEC_PROTOCOLS: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
/// The port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Control frame types (SPDY/3 §2.6).
mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status REFUSED_STREAM.
const REFUSED_STREAM: u32 = 3;
/// Payload per DATA frame this client writes.
const DATA_CHUNK: usize = 32 << 10;
/// Largest frame accepted from the server (its own limit is far lower).
const FRAME_LIMIT: usize = 16 << 20;
/// Bound for the TCP connect and the HTTP handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a new stream waits for its SYN_REPLY (client-go's createStreamResponseTimeout).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The SPDY/3 header compression dictionary: protocol data both ends share.
use berth_proto::spdy::header_dictionary;

/// Name/value pairs of a header block.
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (names are lowercase on the wire).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Our direction's header compressor: one zlib stream for the session, sync-flushed per block.
struct HeaderWriter(Compress);

impl HeaderWriter {
    fn new() -> Result<HeaderWriter> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&header_dictionary())
            .context("zlib dictionary (flate2 needs its zlib-rs feature)")?;
        Ok(HeaderWriter(z))
    }

    fn block(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for part in [k.to_ascii_lowercase().as_bytes(), v.as_bytes()] {
                raw.extend((part.len() as u32).to_be_bytes());
                raw.extend_from_slice(part);
            }
        }
        let mut out = Vec::new();
        let mut scratch = [0u8; 4096];
        let mut rest = &raw[..];
        loop {
            let (in0, out0) = (self.0.total_in(), self.0.total_out());
            self.0
                .compress(rest, &mut scratch, FlushCompress::Sync)
                .context("deflate header block")?;
            let consumed = (self.0.total_in() - in0) as usize;
            let produced = (self.0.total_out() - out0) as usize;
            rest = &rest[consumed..];
            out.extend_from_slice(&scratch[..produced]);
            // The sync flush is complete once the input is in and output space was left over.
            if rest.is_empty() && produced < scratch.len() {
                return Ok(out);
            }
        }
    }
}

/// The server's direction: its zlib stream asks for the dictionary before its first block.
struct HeaderReader {
    z: Decompress,
    dict: Vec<u8>,
}

impl HeaderReader {
    fn new() -> HeaderReader {
        HeaderReader {
            z: Decompress::new(true),
            dict: header_dictionary(),
        }
    }

    fn block(&mut self, compressed: &[u8]) -> Result<Headers> {
        let mut raw = Vec::new();
        let mut scratch = [0u8; 4096];
        let mut rest = compressed;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self.z.decompress(rest, &mut scratch, FlushDecompress::Sync);
            let consumed = (self.z.total_in() - in0) as usize;
            let produced = (self.z.total_out() - out0) as usize;
            rest = &rest[consumed..];
            raw.extend_from_slice(&scratch[..produced]);
            match r {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&self.dict)
                        .context("server's header stream: dictionary")?;
                    continue;
                }
                Err(e) => bail!("inflate the server's header block: {e}"),
                Ok(_) => {}
            }
            if rest.is_empty() && produced < scratch.len() {
                break;
            }
            ensure!(
                consumed > 0 || produced > 0,
                "inflate made no progress on a header block"
            );
            ensure!(raw.len() < FRAME_LIMIT, "header block inflates past 16 MiB");
        }
        parse_header_block(&raw)
    }
}

fn parse_header_block(raw: &[u8]) -> Result<Headers> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
            ensure!(self.0.len() >= n, "header block cut short");
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn u32(&mut self) -> Result<usize> {
            let b = self.bytes(4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        fn string(&mut self) -> Result<String> {
            let n = self.u32()?;
            Ok(String::from_utf8(self.bytes(n)?.to_vec())?)
        }
    }
    let mut c = Cursor(raw);
    let pairs = c.u32()?;
    let mut h = Vec::new();
    for _ in 0..pairs {
        let k = c.string()?;
        let v = c.string()?;
        h.push((k, v));
    }
    ensure!(
        c.0.is_empty(),
        "{} stray bytes after a header block",
        c.0.len()
    );
    Ok(h)
}

fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut f = vec![0x80, 0x03];
    f.extend(kind.to_be_bytes());
    f.push(flags);
    f.extend(&len.to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

fn data_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    f.push(flags);
    f.extend(&len.to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn be32(b: &[u8]) -> Result<u32> {
    ensure!(b.len() >= 4, "control frame body of {} bytes", b.len());
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// What the writer task puts on the wire.
enum Out {
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

enum Event {
    Data(Vec<u8>),
    End(End),
}

struct Slot {
    events: mpsc::UnboundedSender<Event>,
    reply: Option<oneshot::Sender<Headers>>,
}

#[derive(Default)]
struct Shared {
    streams: Mutex<HashMap<u32, Slot>>,
    pings: Mutex<HashMap<u32, oneshot::Sender<()>>>,
    /// GOAWAY from the server: (last good stream id, status).
    goaway: Mutex<Option<(u32, u32)>>,
    /// Why the reader stopped, when not at a clean end of the connection.
    failure: Mutex<Option<String>>,
    /// Set once the reader is done: no more streams can be opened.
    ended: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The answer to an upgrade request the server refused.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub headers: Headers,
    pub body: String,
}

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

/// `http://host:port/path` → ("host:port", "/path").
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url:?}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_string(), path.to_string()))
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads an HTTP response head; returns (status, headers, bytes read past the head).
async fn read_head(sock: &mut TcpStream) -> Result<(u16, Headers, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = find_subslice(&buf, b"\r\n\r\n") {
            break i;
        }
        ensure!(buf.len() < 64 << 10, "response head over 64 KiB");
        let n = sock.read(&mut chunk).await.context("read response")?;
        ensure!(
            n > 0,
            "connection closed before a response head ({} bytes: {:?})",
            buf.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 response: {status_line:?}"
    );
    let status: u16 = code
        .parse()
        .with_context(|| format!("status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, rest))
}

impl Session {
    /// Requests `url` with an upgrade to SPDY/3.1 offering `protocols` (in order of
    /// preference); a 101 yields the session, any other answer is returned as it came.
    pub async fn upgrade(url: &str, protocols: &[&str]) -> Result<Upgrade> {
        let (host, path) = split_url(url)?;
        let mut sock = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&host))
            .await
            .with_context(|| format!("connect {host}: timed out"))?
            .with_context(|| format!("connect {host}"))?;
        sock.set_nodelay(true)?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-tests/spdy\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        );
        for p in protocols {
            req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await?;
        let (status, headers, rest) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut sock))
            .await
            .with_context(|| {
                format!("no response head from {url} within {HANDSHAKE_TIMEOUT:?}")
            })??;
        if status != 101 {
            let body =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, read_body(&mut sock, &headers, rest))
                    .await
                    .with_context(|| format!("body of the {status} from {url}: timed out"))??;
            return Ok(Upgrade::Refused(Refused {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }));
        }
        let upgrade = header(&headers, "upgrade").unwrap_or("");
        ensure!(
            upgrade.eq_ignore_ascii_case("spdy/3.1"),
            "101 with Upgrade {upgrade:?}: {headers:?}"
        );
        let connection = header(&headers, "connection").unwrap_or("");
        ensure!(
            connection.to_ascii_lowercase().contains("upgrade"),
            "101 with Connection {connection:?}"
        );
        let protocol = header(&headers, "x-stream-protocol-version")
            .with_context(|| format!("101 without X-Stream-Protocol-Version: {headers:?}"))?
            .to_string();
        ensure!(
            protocols.contains(&protocol.as_str()),
            "server chose {protocol:?}, which we did not offer ({protocols:?})"
        );
        Ok(Upgrade::Switched(Session::start(sock, protocol, rest)?))
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

/// Reads a refused response's body: Content-Length bytes, else to the end (bounded).
async fn read_body(sock: &mut TcpStream, headers: &Headers, mut body: Vec<u8>) -> Result<Vec<u8>> {
    let want = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    let mut chunk = [0u8; 4096];
    loop {
        if want.is_some_and(|w| body.len() >= w) || body.len() > 1 << 20 {
            return Ok(body);
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

async fn write_frames(wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Out>, mut codec: HeaderWriter) {
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

async fn read_frames<R: AsyncRead + Unpin>(
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

/// A stream: `tx` writes our side, `rx` reads the server's.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The headers of the server's SYN_REPLY (empty until it came).
    pub reply: Headers,
    pub tx: StreamWriter,
    pub rx: StreamReader,
}

/// Our side of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamWriter {
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(DATA_CHUNK) {
            self.out
                .send(Out::Data {
                    id: self.id,
                    fin: false,
                    payload: chunk.to_vec(),
                })
                .await
                .map_err(|_| anyhow::anyhow!("stream {}: the session is gone", self.id))?;
        }
        Ok(())
    }

    /// Half-closes our side (an empty DATA frame with FIN).
    pub async fn close(&self) -> Result<()> {
        self.out
            .send(Out::Data {
                id: self.id,
                fin: true,
                payload: Vec::new(),
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream {}: the session is gone", self.id))
    }

    /// A HEADERS frame on this stream.
    pub async fn headers(&self, headers: &[(&str, &str)]) -> Result<()> {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.out
            .send(Out::Headers {
                id: self.id,
                headers,
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream {}: the session is gone", self.id))
    }

    /// A WINDOW_UPDATE for this stream.
    pub async fn window_update(&self, delta: u32) -> Result<()> {
        let mut body = self.id.to_be_bytes().to_vec();
        body.extend((delta & 0x7fff_ffff).to_be_bytes());
        self.out
            .send(Out::Control {
                kind: kind::WINDOW_UPDATE,
                body,
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream {}: the session is gone", self.id))
    }

    /// RST_STREAM with CANCEL.
    pub async fn reset(&self) -> Result<()> {
        self.out
            .send(Out::Reset {
                id: self.id,
                status: 5,
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream {}: the session is gone", self.id))
    }
}

/// The server's side of a stream.
pub struct StreamReader {
    id: u32,
    events: mpsc::UnboundedReceiver<Event>,
    reply: Option<oneshot::Receiver<Headers>>,
    end: Option<End>,
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next data the server sent; None once the stream ended (see [`StreamReader::end`]).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        if self.end.is_some() {
            return None;
        }
        match self.events.recv().await {
            Some(Event::Data(d)) => Some(d),
            Some(Event::End(e)) => {
                self.end = Some(e);
                None
            }
            None => {
                self.end = Some(End::Lost);
                None
            }
        }
    }

    /// How the stream ended, once it has.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// Everything up to the server's FIN; fails on a reset or a lost connection.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(d) = self.recv().await {
            all.extend_from_slice(&d);
        }
        ensure!(
            self.end == Some(End::Fin),
            "stream {} ended with {:?} after {} bytes",
            self.id,
            self.end,
            all.len()
        );
        Ok(all)
    }
}

/// What an exec session delivered.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub protocol: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's bytes as sent.
    pub error: Vec<u8>,
    /// v4: the error stream parsed as a Status object (Null when empty).
    pub status: serde_json::Value,
    /// The server's GOAWAY, if it sent one.
    pub goaway: Option<(u32, u32)>,
}

impl ExecOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The exit code a v4 Status reports: 0 for Success, the ExitCode cause for
    /// NonZeroExitCode; None for anything else.
    pub fn exit_code(&self) -> Option<i32> {
        match self.status["status"].as_str()? {
            "Success" => Some(0),
            _ if self.status["reason"] == "NonZeroExitCode" => self.status["details"]["causes"]
                .as_array()?
                .iter()
                .find(|c| c["reason"] == "ExitCode")?["message"]
                .as_str()?
                .parse()
                .ok(),
            _ => None,
        }
    }
}

/// The streams of one exec, opened as kubectl opens them: error, then stdin (when
/// wanted), stdout, stderr (not with a terminal), resize (terminal, v3+).
pub struct ExecSession {
    pub session: Session,
    pub error: Stream,
    pub stdin: Option<Stream>,
    pub stdout: Stream,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

impl ExecSession {
    /// Connects to an exec URL (whose ExecRequest had stdout set, stdin = `stdin`,
    /// tty = `tty` and stderr = !`tty`) and opens its streams.
    pub async fn start(url: &str, protocols: &[&str], stdin: bool, tty: bool) -> Result<Self> {
        let session = Session::connect(url, protocols).await?;
        let open = |t: &'static str| {
            let s = &session;
            async move { s.open(&[("streamtype", t)]).await }
        };
        let error = open("error").await?;
        let stdin = if stdin {
            Some(open("stdin").await?)
        } else {
            None
        };
        let stdout = open("stdout").await?;
        let stderr = if tty {
            None
        } else {
            Some(open("stderr").await?)
        };
        let resize = if tty && session.protocol() != "v2.channel.k8s.io" {
            Some(open("resize").await?)
        } else {
            None
        };
        Ok(ExecSession {
            session,
            error,
            stdin,
            stdout,
            stderr,
            resize,
        })
    }

    /// Sends a terminal size on the resize stream.
    pub async fn resize(&self, width: u16, height: u16) -> Result<()> {
        let r = self
            .resize
            .as_ref()
            .context("no resize stream (no terminal, or protocol v2)")?;
        let msg = serde_json::json!({"Width": width, "Height": height}).to_string();
        r.tx.write(msg.as_bytes()).await
    }

    /// Sends `input` on stdin then its end (FIN), reads stdout, stderr and the error
    /// stream to their ends and waits for the server to close the session, all within
    /// `within`. Stdin is fed beside the reading; what the server never takes is dropped.
    pub async fn finish(self, input: Option<Vec<u8>>, within: Duration) -> Result<ExecOutput> {
        let ExecSession {
            session,
            mut error,
            stdin,
            mut stdout,
            stderr,
            resize,
        } = self;
        let feeder = stdin.map(|s| {
            let tx = s.tx.clone();
            tokio::spawn(async move {
                if let Some(data) = input {
                    tx.write(&data).await?;
                }
                tx.close().await
            })
        });
        let collected = tokio::time::timeout(within, async {
            let out = stdout.rx.read_to_end();
            let err = async {
                match stderr {
                    Some(mut s) => s.rx.read_to_end().await,
                    None => Ok(Vec::new()),
                }
            };
            let status = error.rx.read_to_end();
            let (out, err, status) = tokio::join!(out, err, status);
            Ok::<_, anyhow::Error>((out?, err?, status?))
        })
        .await;
        let (stdout, stderr, error) = match collected {
            Ok(r) => r.context("exec streams")?,
            Err(_) => bail!("exec streams still open after {within:?}"),
        };
        session.wait_end(Duration::from_secs(10)).await?;
        if let Some(f) = feeder {
            f.abort();
        }
        drop(resize);
        let status = if session.protocol() == "v4.channel.k8s.io" && !error.is_empty() {
            serde_json::from_slice(&error).with_context(|| {
                format!(
                    "error stream is not a Status: {:?}",
                    String::from_utf8_lossy(&error)
                )
            })?
        } else {
            serde_json::Value::Null
        };
        Ok(ExecOutput {
            protocol: session.protocol().to_string(),
            stdout,
            stderr,
            error,
            status,
            goaway: session.goaway(),
        })
    }
}

/// Runs an exec URL to its end as `kubectl exec [-i] [-t]` would: `stdin` is sent then
/// closed (the ExecRequest must have stdin set exactly when it is Some), a terminal of
/// `tty` = (width, height) is announced on the resize stream first. Bounded to 60 s.
pub async fn exec(
    url: &str,
    stdin: Option<Vec<u8>>,
    tty: Option<(u16, u16)>,
) -> Result<ExecOutput> {
    let s = ExecSession::start(url, &EXEC_PROTOCOLS, stdin.is_some(), tty.is_some()).await?;
    if let Some((w, h)) = tty {
        s.resize(w, h).await?;
    }
    s.finish(stdin, Duration::from_secs(60)).await
}

/// Connects to a port-forward URL (as `kubectl port-forward` does, once per session).
pub async fn port_forward(url: &str) -> Result<PortForward> {
    PortForward::connect(url).await
}

/// A port-forward session: each [`PortForward::open`] is one forwarded connection.
pub struct PortForward {
    pub session: Session,
    next_request: AtomicU32,
}

/// One forwarded connection: bytes on `data` reach the port in the pod and back; the
/// server reports failures as text on `error`.
pub struct Forwarded {
    pub request_id: u32,
    pub port: u16,
    pub data: Stream,
    pub error: StreamReader,
}

impl PortForward {
    pub async fn connect(url: &str) -> Result<PortForward> {
        let session = Session::connect(url, &[PORT_FORWARD_PROTOCOL]).await?;
        Ok(PortForward {
            session,
            next_request: AtomicU32::new(0),
        })
    }

    /// Opens a connection to `port` in the pod: an error stream (which we half-close at
    /// once: it only carries the server's reports) and a data stream, one request id.
    pub async fn open(&self, port: u16) -> Result<Forwarded> {
        let rid = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (p, r) = (port.to_string(), rid.to_string());
        let error = self
            .session
            .open(&[("streamtype", "error"), ("port", &p), ("requestid", &r)])
            .await?;
        error.tx.close().await?;
        let data = self
            .session
            .open(&[("streamtype", "data"), ("port", &p), ("requestid", &r)])
            .await?;
        Ok(Forwarded {
            request_id: rid,
            port,
            data,
            error: error.rx,
        })
    }
}

impl Forwarded {
    /// Sends `request` and reads the reply up to the server's end of the data stream, then
    /// reads the error stream to its end: (reply, error text), bounded by `within`. With
    /// `half_close` our side ends right after the request (for servers that answer at
    /// EOF, like an echo); otherwise only once the reply has ended (like an HTTP client).
    pub async fn round_trip(
        mut self,
        request: &[u8],
        half_close: bool,
        within: Duration,
    ) -> Result<(Vec<u8>, String)> {
        let port = self.port;
        tokio::time::timeout(within, async move {
            self.data.tx.write(request).await?;
            if half_close {
                self.data.tx.close().await?;
            }
            let reply = self.data.rx.read_to_end().await?;
            if !half_close {
                // The server may already have dropped the stream (a failed connect).
                let _ = self.data.tx.close().await;
            }
            let err = self.error.read_to_end().await?;
            Ok((reply, String::from_utf8_lossy(&err).into_owned()))
        })
        .await
        .with_context(|| format!("forward to port {port}: no end within {within:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_share_one_zlib_stream() {
        let (mut w, mut r) = (HeaderWriter::new().unwrap(), HeaderReader::new());
        for i in 0..4 {
            let h: Headers = vec![
                ("streamtype".into(), "data".into()),
                ("port".into(), (8000 + i).to_string()),
                ("requestid".into(), i.to_string()),
            ];
            assert_eq!(r.block(&w.block(&h).unwrap()).unwrap(), h);
        }
        // A large block crosses the 4 KiB scratch buffers both ways.
        let big: Headers = vec![("x-big".into(), "y".repeat(50_000))];
        assert_eq!(r.block(&w.block(&big).unwrap()).unwrap(), big);
    }

    #[test]
    fn frames_are_laid_out_as_the_spec_says() {
        assert_eq!(
            control_frame(kind::PING, 0, &7u32.to_be_bytes()),
            [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]
        );
        assert_eq!(
            data_frame(5, FLAG_FIN, b"ab"),
            [0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']
        );
        assert_eq!(
            split_url("http://127.0.0.1:1234/exec/abc").unwrap(),
            ("127.0.0.1:1234".to_string(), "/exec/abc".to_string())
        );
    }
}
