//! PortForward over a SPDY session (`portforward.k8s.io`): the client opens an error and
//! a data stream per connection, both tagged with the port and a request id. Each data
//! stream is joined to a TCP connection to that port on the pod's localhost, made from
//! inside the pod's network namespace, so listeners bound to 127.0.0.1 are reachable.
//!
//! A stream whose partner does not arrive within the stream creation timeout is dropped,
//! as kubelet drops it: the error half is told why and closed, the data half is reset.
//! At most `MAX_PENDING_PAIRS` halves wait at once; more are reset at once.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::limits::MAX_PENDING_PAIRS;
use super::spdy::conn::{self, Incoming, Session, StreamTx};
use super::spdy::frame::header;
use super::Server;
use crate::error::{Error, Result};

/// Connects to `port` on localhost inside the network namespace at `netns` (the node's
/// own when None). The connect runs on a thread of its own that joins the namespace and
/// then ends: setns changes only the calling thread (never one of tokio's pooled ones,
/// which would stay in the pod's namespace), and the socket keeps the namespace it was
/// made in after the thread is gone.
pub(super) async fn connect(netns: Option<PathBuf>, port: u16) -> Result<TcpStream> {
    let (done, result) = tokio::sync::oneshot::channel();
    let work = move || -> Result<std::net::TcpStream> {
        if let Some(ns) = netns {
            let f = std::fs::File::open(&ns)
                .map_err(|e| Error::io(format!("open netns {}", ns.display()), e))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Internal(format!("enter the pod's network namespace: {e}")))?;
        }
        let s = std::net::TcpStream::connect(("127.0.0.1", port))
            .or_else(|_| std::net::TcpStream::connect(("::1", port)))
            .map_err(|e| Error::io(format!("connect to port {port} in the pod"), e))?;
        s.set_nonblocking(true)
            .map_err(|e| Error::io("socket", e))?;
        Ok(s)
    };
    std::thread::Builder::new()
        .name("berth-portfwd".into())
        .spawn(move || {
            let _ = done.send(work());
        })
        .map_err(|e| Error::io("spawn connect thread", e))?;
    let std_stream = result
        .await
        .map_err(|_| Error::Internal("connect thread vanished".into()))??;
    TcpStream::from_std(std_stream).map_err(|e| Error::io("socket", e))
}

/// Joins one client connection (its data stream) to the pod's port.
async fn forward(netns: Option<PathBuf>, port: u16, data: Incoming, error: Option<StreamTx>) {
    let tcp = match connect(netns, port).await {
        Ok(t) => t,
        Err(e) => {
            if let Some(err) = &error {
                err.send(e.to_string().as_bytes()).await;
                err.close().await;
            }
            data.tx.close().await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let Incoming { mut rx, tx, .. } = data;
    let up = async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 32 << 10];
        let mut failed = None;
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
                Ok(n) => {
                    if !tx.send(&buf[..n]).await {
                        break;
                    }
                }
            }
        }
        tx.close().await;
        failed
    };
    let (_, failed) = tokio::join!(up, down);
    if let Some(err) = error {
        // A reset by the pod's server is not a clean end: the client is told, as kubelet
        // tells it, instead of seeing a truncated reply as complete.
        if let Some(e) = failed {
            let msg = format!("error forwarding port {port} to pod: {e}");
            err.send(msg.as_bytes()).await;
        }
        err.close().await;
    }
}

/// One half of a port-forward pair, waiting for the other.
enum Half {
    Error(StreamTx),
    Data(u16, Incoming),
}

/// The halves waiting for their partner, by request id, and when each expires.
#[derive(Default)]
struct Waiting {
    halves: HashMap<String, (Half, u64)>,
    /// (deadline, request id, sequence): in arrival order, hence in deadline order.
    queue: VecDeque<(tokio::time::Instant, String, u64)>,
    seq: u64,
}

impl Waiting {
    fn insert(&mut self, rid: String, half: Half, deadline: tokio::time::Instant) {
        self.seq += 1;
        self.queue.push_back((deadline, rid.clone(), self.seq));
        self.halves.insert(rid, (half, self.seq));
    }

    fn take(&mut self, rid: &str) -> Option<Half> {
        self.halves.remove(rid).map(|(h, _)| h)
    }

    /// The halves whose time is up (an entry already paired is skipped).
    fn expired(&mut self, now: tokio::time::Instant) -> Vec<(String, Half)> {
        let mut out = Vec::new();
        while let Some((at, _, _)) = self.queue.front() {
            if *at > now {
                break;
            }
            let Some((_, rid, seq)) = self.queue.pop_front() else {
                break;
            };
            if self.halves.get(&rid).is_some_and(|(_, s)| *s == seq) {
                if let Some((h, _)) = self.halves.remove(&rid) {
                    out.push((rid, h));
                }
            }
        }
        // Paired entries leave stale queue items behind: keep the queue near the map.
        if self.queue.len() > 2 * self.halves.len() + 64 {
            let live = &self.halves;
            self.queue
                .retain(|(_, rid, seq)| live.get(rid).is_some_and(|(_, s)| s == seq));
        }
        out
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.queue.front().map(|(at, _, _)| *at)
    }
}

/// Ends a half whose partner never came.
async fn drop_half(rid: &str, half: Half) {
    match half {
        Half::Error(tx) => {
            let msg = format!("timed out waiting for the data stream of request {rid}");
            tx.send(msg.as_bytes()).await;
            tx.close().await;
        }
        Half::Data(_, inc) => {
            let Incoming { rx, tx, .. } = inc;
            drop(rx);
            tx.reset(conn::CANCEL).await;
        }
    }
}

pub async fn serve_spdy(
    server: Server,
    pod_id: String,
    mut incoming: mpsc::Receiver<Incoming>,
    session: Session,
) {
    let netns = match server.backend.pod_netns(&pod_id) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(pod_id = %pod_id, error = %e, "port-forward");
            session.close().await;
            return;
        }
    };
    let within = server.limits().creation_timeout;
    // Error streams wait here for their data stream (same request id), and the reverse.
    let mut waiting = Waiting::default();
    loop {
        let next = waiting.next_deadline();
        let inc = tokio::select! {
            inc = incoming.recv() => match inc {
                Some(inc) => inc,
                None => break,
            },
            _ = async { tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)).await },
                if next.is_some() => {
                let expired = waiting.expired(tokio::time::Instant::now());
                if !expired.is_empty() {
                    tracing::debug!(pod_id = %pod_id, count = expired.len(), "port-forward: half-open pairs expired");
                }
                for (rid, half) in expired {
                    drop_half(&rid, half).await;
                }
                continue;
            }
        };
        let rid = header(&inc.headers, "requestid").unwrap_or("").to_string();
        let port: Option<u16> = header(&inc.headers, "port").and_then(|p| p.parse().ok());
        let Some(port) = port.filter(|p| *p > 0) else {
            inc.tx.send(b"invalid port").await;
            inc.tx.close().await;
            continue;
        };
        let deadline = tokio::time::Instant::now() + within;
        let half = match header(&inc.headers, "streamtype").unwrap_or("") {
            "error" => match waiting.take(&rid) {
                Some(Half::Data(port, data)) => {
                    tokio::spawn(forward(netns.clone(), port, data, Some(inc.tx)));
                    continue;
                }
                other => (other, Half::Error(inc.tx)),
            },
            "data" => match waiting.take(&rid) {
                Some(Half::Error(err)) => {
                    tokio::spawn(forward(netns.clone(), port, inc, Some(err)));
                    continue;
                }
                other => (other, Half::Data(port, inc)),
            },
            _ => {
                inc.tx.close().await;
                continue;
            }
        };
        // A second half of the same kind replaces the first, which is dropped.
        let (replaced, half) = half;
        if let Some(old) = replaced {
            drop_half(&rid, old).await;
        }
        if waiting.halves.len() >= MAX_PENDING_PAIRS {
            drop_half(&rid, half).await;
            continue;
        }
        waiting.insert(rid, half, deadline);
    }
    // The client closed the session; forwards in flight end with their streams.
    tracing::debug!(pod_id = %pod_id, "port-forward session ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn err_half() -> Half {
        let (out, _rx) = mpsc::channel(1);
        Half::Error(StreamTx::for_test(1, out))
    }

    #[test]
    fn halves_expire_in_order_and_paired_ones_do_not() {
        let t0 = tokio::time::Instant::now();
        let mut w = Waiting::default();
        for i in 0..200 {
            w.insert(format!("{i}"), err_half(), t0 + Duration::from_millis(i));
        }
        for i in 0..100 {
            assert!(w.take(&format!("{i}")).is_some());
        }
        let gone = w.expired(t0 + Duration::from_millis(149));
        let ids: Vec<_> = gone.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(ids.len(), 50);
        assert_eq!((ids[0], ids[49]), ("100", "149"));
        assert_eq!(w.halves.len(), 50);
        assert!(w.queue.len() <= 2 * w.halves.len() + 64);
        assert_eq!(w.expired(t0 + Duration::from_secs(1)).len(), 50);
        assert!(w.halves.is_empty() && w.next_deadline().is_none());
    }
}
