//! The streaming server's resource limits: the timeouts and the connection cap from
//! `[streaming]`, the byte bounds that are fixed, an idle clock shared by a session's
//! reader and writer, and berthd's open-file limit.
//!
//! Every buffer that takes bytes from a client is bounded by bytes, not by a count of
//! messages: a count of frames of up to 1 MiB each is no bound worth having.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The largest WebSocket message or frame read (kubelet and kubectl write 32 KiB at most).
pub const WS_MAX_MESSAGE: usize = 1 << 20;
/// Bytes a session's client may have queued towards its consumers (stdin, port-forward
/// connections) before berthd stops reading from its connection.
pub const SESSION_INBOUND_BYTES: usize = 2 << 20;
/// Bytes of one incomplete terminal-size message kept (one is about 30 bytes).
pub const RESIZE_PENDING_MAX: usize = 4 << 10;
/// Half-open port-forward pairs one SPDY session may hold at once (each expires after
/// the stream creation timeout); streams past it are reset.
pub const MAX_PENDING_PAIRS: usize = 1024;

/// The limits set in `[streaming]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head (the upgrade request) must be complete within this.
    pub header_read_timeout: Duration,
    /// Every stream a session announced, and both halves of a port-forward pair, must be
    /// open within this (kubelet's stream creation timeout, 30 s).
    pub creation_timeout: Duration,
    /// A session with no frame either way for this long is closed (kubelet's
    /// `--streaming-connection-idle-timeout`, 4 h).
    pub idle_timeout: Duration,
    /// Connections served at once; one past it is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(cfg: &crate::config::Streaming) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(cfg.header_read_timeout),
            creation_timeout: Duration::from_secs(cfg.stream_creation_timeout),
            idle_timeout: Duration::from_secs(cfg.stream_idle_timeout),
            max_connections: cfg.max_connections,
        }
    }
}

/// When a session last moved a frame, either way. Readers and writers touch it; the
/// reader, on a read that waited for the idle timeout, asks how long it has really been.
#[derive(Clone)]
pub struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long until the session has been idle for `idle` (zero: it has).
    pub fn remaining(&self, idle: Duration) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        (last + idle).saturating_sub(self.base.elapsed())
    }

    /// Runs `fut` (one read); None once the session has been idle for `idle`, counting
    /// the writer's frames too.
    pub async fn read<F: std::future::Future>(&self, idle: Duration, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let left = self.remaining(idle);
            if left.is_zero() {
                return None;
            }
            if let Ok(v) = tokio::time::timeout(left, &mut fut).await {
                self.touch();
                return Some(v);
            }
        }
    }
}

/// Raises berthd's soft RLIMIT_NOFILE to its hard limit: every streaming connection, port
/// forward and exec FIFO is a descriptor, and the usual soft limit of 1024 would let a
/// client's connections starve the CRI socket's accept. The hard limit is never raised
/// (that needs CAP_SYS_RESOURCE); failing is only a warning.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised RLIMIT_NOFILE"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "could not raise RLIMIT_NOFILE"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "getrlimit(RLIMIT_NOFILE)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_counts_both_directions() {
        let a = Activity::default();
        let idle = Duration::from_millis(300);
        let writer = a.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                writer.touch();
            }
        });
        let start = Instant::now();
        let r = a.read(idle, std::future::pending::<()>()).await;
        assert!(r.is_none());
        // The writer's last frame at 600 ms keeps the session alive until 900 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(880),
            "{:?}",
            start.elapsed()
        );
    }
}
