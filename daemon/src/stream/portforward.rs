//! PortForward over a SPDY session (`portforward.k8s.io`): the client opens an error and
//! a data stream per connection, both tagged with the port and a request id. Each data
//! stream is joined to a TCP connection to that port on the pod's localhost, made from
//! inside the pod's network namespace, so listeners bound to 127.0.0.1 are reachable.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::spdy::conn::{Incoming, Session, StreamTx};
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
    // Error streams wait here for their data stream (same request id), and the reverse.
    let mut errors: HashMap<String, StreamTx> = HashMap::new();
    let mut datas: HashMap<String, (u16, Incoming)> = HashMap::new();
    while let Some(inc) = incoming.recv().await {
        let rid = header(&inc.headers, "requestid").unwrap_or("").to_string();
        let port: Option<u16> = header(&inc.headers, "port").and_then(|p| p.parse().ok());
        let Some(port) = port.filter(|p| *p > 0) else {
            inc.tx.send(b"invalid port").await;
            inc.tx.close().await;
            continue;
        };
        match header(&inc.headers, "streamtype").unwrap_or("") {
            "error" => match datas.remove(&rid) {
                Some((port, data)) => {
                    tokio::spawn(forward(netns.clone(), port, data, Some(inc.tx)));
                }
                None => {
                    errors.insert(rid, inc.tx);
                }
            },
            "data" => match errors.remove(&rid) {
                Some(err) => {
                    tokio::spawn(forward(netns.clone(), port, inc, Some(err)));
                }
                None => {
                    datas.insert(rid, (port, inc));
                }
            },
            _ => inc.tx.close().await,
        }
    }
    // The client closed the session; forwards in flight end with their streams.
    tracing::debug!(pod_id = %pod_id, "port-forward session ended");
}
