//! Port-forward (`portforward.k8s.io`) over a session: an error and a data stream per
//! forwarded connection, sharing one request id.

use super::session::Session;
use super::stream::{Stream, StreamReader};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

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
