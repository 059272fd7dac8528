//! The CRI streaming server. Exec, Attach and PortForward answer with a URL on it that
//! holds a random single-use token (valid for a minute, as kubelet's); the client (kubelet
//! on behalf of the API server, or crictl) upgrades an HTTP/1.1 connection (optionally
//! inside TLS) there to
//! SPDY/3.1 or WebSocket (`http`, `spdy`, `ws`), and the session runs over its streams
//! (`exec`, `attach`, `portforward`). What a client can make it hold is bounded
//! (`limits`, `queue`).

mod attach;
mod exec;
mod http;
pub mod limits;
mod portforward;
mod queue;
mod spdy;
mod ws;
mod ws_portforward;

#[cfg(test)]
mod fuzz;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::container::session::{AttachTarget, ConsoleSize, ProcessSession, SessionIo};
use crate::error::{Error, Result};

pub use attach::AttachReq;
pub use exec::ExecReq;

/// What the streaming server needs from Berth's core, and all it may use of it: a
/// session for an exec or an attach in a running container, and a pod's network
/// namespace. Each session carries the handles it needs from then on.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// An exec of `cmd` in running container `container_id`, not yet started; its
    /// terminal (if any) starts at `console`'s size when given.
    async fn exec_session(
        &self,
        container_id: &str,
        cmd: &[String],
        io: SessionIo,
        console: Option<ConsoleSize>,
    ) -> Result<ProcessSession>;
    /// A session receiving running container `container_id`'s output, and what its
    /// stdin is.
    async fn attach_session(
        &self,
        container_id: &str,
        io: SessionIo,
    ) -> Result<(ProcessSession, AttachTarget)>;
    /// The network namespace of pod `pod_id` (None: the host's).
    fn pod_netns(&self, pod_id: &str) -> Result<Option<PathBuf>>;
}

/// What every connection of the streaming server holds: the token table and the backend.
#[derive(Clone)]
pub struct Server {
    streaming: Arc<Streaming>,
    backend: Arc<dyn Backend>,
    /// Where sessions are counted.
    metrics: crate::metrics::StreamMetrics,
}

impl Server {
    fn limits(&self) -> &limits::Limits {
        &self.streaming.limits
    }
}

/// How long a URL handed out by Exec/Attach/PortForward stays usable.
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(ExecReq),
    Attach(AttachReq),
    PortForward { pod_id: String },
}

impl Pending {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

pub struct Streaming {
    pub addr: SocketAddr,
    listener: Mutex<Option<std::net::TcpListener>>,
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
    /// Set when the server speaks TLS (`tls_cert_file` + `tls_key_file`).
    tls: Option<tokio_native_tls::TlsAcceptor>,
    limits: limits::Limits,
}

/// The TLS acceptor for a certificate and PKCS #8 key (PEM files), if both are set.
fn tls_acceptor(cfg: &crate::config::Streaming) -> Result<Option<tokio_native_tls::TlsAcceptor>> {
    match (cfg.tls_cert_file.as_str(), cfg.tls_key_file.as_str()) {
        ("", "") => Ok(None),
        ("", _) | (_, "") => Err(Error::Config(
            "streaming.tls_cert_file and streaming.tls_key_file go together".into(),
        )),
        (cert, key) => {
            let read = |p: &str| std::fs::read(p).map_err(|e| Error::io(format!("read {p}"), e));
            let id = native_tls::Identity::from_pkcs8(&read(cert)?, &read(key)?)
                .map_err(|e| Error::Config(format!("streaming TLS certificate/key: {e}")))?;
            let a = native_tls::TlsAcceptor::new(id)
                .map_err(|e| Error::Config(format!("streaming TLS: {e}")))?;
            Ok(Some(a.into()))
        }
    }
}

impl Streaming {
    /// Binds the server's socket (serving starts with [`serve`]).
    pub fn bind(cfg: &crate::config::Streaming) -> Result<Streaming> {
        let tls = tls_acceptor(cfg)?;
        let ip: std::net::IpAddr = cfg
            .address
            .parse()
            .map_err(|_| Error::Config(format!("streaming.address {:?}", cfg.address)))?;
        let l = std::net::TcpListener::bind((ip, cfg.port))
            .map_err(|e| Error::io(format!("bind streaming server {ip}:{}", cfg.port), e))?;
        l.set_nonblocking(true)
            .map_err(|e| Error::io("streaming socket", e))?;
        let addr = l
            .local_addr()
            .map_err(|e| Error::io("streaming socket", e))?;
        Ok(Streaming {
            addr,
            listener: Mutex::new(Some(l)),
            tokens: Mutex::new(HashMap::new()),
            tls,
            limits: limits::Limits::from_config(cfg),
        })
    }

    /// A single-use URL for `p`.
    pub fn url(&self, p: Pending) -> Result<String> {
        let token = crate::util::new_id()?;
        let kind = p.kind();
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        t.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_TTL);
        t.insert(token.clone(), (p, now));
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}/{kind}/{token}", self.addr))
    }

    /// Redeems a token once; an unknown, used, expired or mismatched one is None (404).
    fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (p, at) = t.remove(token)?;
        (at.elapsed() < TOKEN_TTL && p.kind() == kind).then_some(p)
    }
}

/// Accepts streaming connections until berthd stops.
pub async fn serve(
    streaming: Arc<Streaming>,
    backend: Arc<dyn Backend>,
    metrics: crate::metrics::StreamMetrics,
) -> Result<()> {
    let server = Server {
        streaming,
        backend,
        metrics,
    };
    let std_listener = server
        .streaming
        .listener
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| Error::Internal("streaming server already serving".into()))?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| Error::io("streaming listener", e))?;
    let limits = *server.limits();
    tracing::info!(addr = %server.streaming.addr, ?limits, "streaming server");
    // One permit per connection served; a connection holds its permit until it and its
    // session (upgraded or not) are gone.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning; a connection that ends
                // gives its descriptor back.
                tracing::warn!(error = %e, "streaming accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the cap the connection is closed at once (the client sees it refused):
        // leaving it in the kernel's backlog would only make honest clients wait behind it.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "streaming connection refused: at the cap");
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let server = server.clone();
        match server.streaming.tls.clone() {
            None => {
                tokio::spawn(http::connection(server, sock, peer, slot));
            }
            Some(tls) => {
                tokio::spawn(async move {
                    // Bounded like a request head: a peer that never finishes its
                    // handshake holds nothing long.
                    let hs = tokio::time::timeout(limits.header_read_timeout, tls.accept(sock));
                    match hs.await {
                        Ok(Ok(s)) => http::connection(server, s, peer, slot).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streaming() -> Streaming {
        Streaming::bind(&crate::config::Streaming {
            address: "127.0.0.1".into(),
            port: 0,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            header_read_timeout: 10,
            stream_creation_timeout: 30,
            stream_idle_timeout: 14400,
            max_connections: 16,
        })
        .unwrap()
    }

    #[test]
    fn tokens_are_single_use_and_kind_bound() {
        let s = streaming();
        let url = s.url(Pending::PortForward { pod_id: "p".into() }).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(url.starts_with(&format!("http://{}/portforward/", s.addr)));
        assert!(s.take("exec", &token).is_none(), "wrong kind");
        let url = s.url(Pending::PortForward { pod_id: "p".into() }).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(s.take("portforward", &token).is_some());
        assert!(s.take("portforward", &token).is_none(), "reused");
    }

    #[test]
    fn expired_tokens_are_refused() {
        let s = streaming();
        let url = s.url(Pending::PortForward { pod_id: "p".into() }).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        let aged = Instant::now().checked_sub(TOKEN_TTL + Duration::from_secs(1));
        let Some(aged) = aged else { return }; // a machine up for less than a minute
        s.tokens.lock().unwrap().get_mut(&token).unwrap().1 = aged;
        assert!(s.take("portforward", &token).is_none(), "expired");
    }
}
