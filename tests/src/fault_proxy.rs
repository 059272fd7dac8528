//! A fault-injecting HTTP proxy on 127.0.0.1 in front of a local registry (issue 15's
//! "registry failures mid-pull"): it passes requests through until told to cut blob
//! bodies with a connection reset, answer 500, stop answering altogether, or stall in the
//! middle of a blob. The fault can be changed (or cleared) while a test runs, and the
//! proxy counts what it saw, so a test can tell a resumed download from a restarted one.

use anyhow::Result;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the requests it gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Everything passes.
    None,
    /// The next `times` blob answers are cut with a TCP reset after `after` bytes of
    /// their body (the headers always arrive).
    ResetBlob { after: u64, times: u32 },
    /// Every request is answered `500 Internal Server Error`.
    Status500,
    /// Connections are accepted and requests read, but never answered.
    Silent,
    /// Blob answers stop after `after` bytes of body; the connection stays open.
    StallBlob { after: u64 },
}

/// What the proxy saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Blob GETs, and of those the ones with a Range header (resumes).
    pub blob_gets: u32,
    pub range_gets: u32,
    /// Answers cut with a reset, answered 500, left unanswered, stalled.
    pub resets: u32,
    pub errors_500: u32,
    pub unanswered: u32,
    pub stalled: u32,
}

#[derive(Default)]
struct State {
    fault: Option<Fault>,
    seen: Seen,
}

/// The running proxy; stopped (every connection cut) when dropped.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    rt: Option<tokio::runtime::Runtime>,
}

/// The bound on a request head the proxy reads.
const MAX_HEAD: usize = 64 << 10;

impl FaultProxy {
    /// A proxy to `127.0.0.1:<upstream>`, passing everything until `set` says otherwise.
    pub fn start(upstream: u16) -> Result<FaultProxy> {
        // A runtime of its own: the proxy serves whatever the test body awaits.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let l = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = l.local_addr()?.port();
        let state: Arc<Mutex<State>> = Default::default();
        let st = state.clone();
        rt.spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(s, upstream, st).await;
                });
            }
        });
        Ok(FaultProxy {
            port,
            state,
            rt: Some(rt),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The fault from now on (new requests; a stalled or silent connection stays so).
    pub fn set(&self, fault: Fault) {
        self.lock().fault = Some(fault);
    }

    pub fn seen(&self) -> Seen {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What to do with one request.
enum Action {
    Pass,
    Reset(u64),
    Answer500,
    Silent,
    Stall(u64),
}

async fn serve(mut client: TcpStream, upstream: u16, st: Arc<Mutex<State>>) -> Result<()> {
    let head = read_head(&mut client).await?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let blob = method == "GET" && path.contains("/blobs/sha256:");
    let ranged = text
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("range:"));
    let mut action = {
        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
        if blob {
            s.seen.blob_gets += 1;
            if ranged {
                s.seen.range_gets += 1;
            }
        }
        match s.fault.clone().unwrap_or(Fault::None) {
            Fault::None => Action::Pass,
            Fault::Status500 => {
                s.seen.errors_500 += 1;
                Action::Answer500
            }
            Fault::Silent => {
                s.seen.unanswered += 1;
                Action::Silent
            }
            // Counted when the cut is made: a blob shorter than `after` passes whole.
            Fault::ResetBlob { after, times } if blob && times > 0 => Action::Reset(after),
            Fault::StallBlob { after } if blob => {
                s.seen.stalled += 1;
                Action::Stall(after)
            }
            _ => Action::Pass,
        }
    };
    match action {
        Action::Answer500 => {
            let body = "{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"injected fault\"}]}";
            let resp = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            return Ok(());
        }
        Action::Silent => {
            // Held open, never answered, until the proxy goes.
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
    up.write_all(&one_shot(&text)).await?;
    // The answer's head passes whole; the body is counted from its first byte.
    let mut buf = vec![0u8; 16 << 10];
    let (mut head, mut head_done) = (Vec::new(), false);
    let mut body: u64 = 0;
    loop {
        let n = up.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if !head_done {
            let before = head.len();
            head.extend_from_slice(chunk);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                client.write_all(chunk).await?;
                continue;
            };
            // The part of this chunk that is head goes out whole.
            let in_chunk = end + 4 - before;
            client.write_all(&chunk[..in_chunk]).await?;
            chunk = &chunk[in_chunk..];
            head_done = true;
        }
        let limit = match action {
            Action::Reset(after) | Action::Stall(after) => Some(after),
            _ => None,
        };
        let room = limit.map_or(chunk.len() as u64, |l| l.saturating_sub(body));
        let k = (chunk.len() as u64).min(room) as usize;
        client.write_all(&chunk[..k]).await?;
        body += k as u64;
        if k < chunk.len() || limit.is_some_and(|l| body >= l) {
            match action {
                Action::Reset(_) if take_reset(&st) => {
                    client.flush().await?;
                    // Let the client read what came, then cut: a reset throws away what
                    // the client has not read yet.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    // A zero linger makes the close a reset; it never blocks (the
                    // deprecation is about a non-zero linger blocking the drop).
                    #[allow(deprecated)]
                    client.set_linger(Some(Duration::ZERO))?;
                    return Ok(());
                }
                Action::Stall(_) => std::future::pending::<()>().await,
                _ => {
                    // No cut is due any more: the rest passes.
                    client.write_all(&chunk[k..]).await?;
                    body += (chunk.len() - k) as u64;
                    action = Action::Pass;
                }
            }
        }
    }
    Ok(())
}

/// Whether a cut is still due (another connection may have made the last one): counts it.
fn take_reset(st: &Mutex<State>) -> bool {
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    match s.fault.clone() {
        Some(Fault::ResetBlob { after, times }) if times > 0 => {
            s.fault = Some(Fault::ResetBlob {
                after,
                times: times - 1,
            });
            s.seen.resets += 1;
            true
        }
        _ => false,
    }
}

/// Reads a request head (through its empty line), bounded.
async fn read_head(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(head.len() < MAX_HEAD, "request head over {MAX_HEAD} bytes");
        let n = s.read(&mut b).await?;
        anyhow::ensure!(n > 0, "the client closed before its request ended");
        head.extend_from_slice(&b[..n]);
    }
    Ok(head)
}

/// The request head with `Connection: close`, so the registry ends its answer by closing
/// (one request per connection: the proxy never has to find where an answer ends).
fn one_shot(head: &str) -> Vec<u8> {
    let mut out = String::new();
    for l in head.trim_end_matches("\r\n").split("\r\n") {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}
