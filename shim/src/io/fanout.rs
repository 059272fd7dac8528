//! Copies of a process's output for attachers (`berth.shim.v1.Attach`): each attacher is
//! a FIFO whose read end berthd holds. The log copier hands every chunk to each attacher
//! without ever waiting on one, so a slow or vanished attacher can neither stall the
//! container's output nor lose a log line.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Chunks queued per attacher before it counts as stuck and is detached (~4 MiB at the
/// copier's 8 KiB reads).
const QUEUE: usize = 512;

#[derive(Default)]
pub struct Fanout {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sinks: Vec<mpsc::Sender<Arc<[u8]>>>,
    /// The output has ended: later attachers get nothing but an error.
    ended: bool,
}

impl Fanout {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the FIFO at `path` (its reader must already be open) as an attacher.
    pub fn add(&self, path: &Path) -> Result<()> {
        let mut inner = self.lock();
        if inner.ended {
            return Err(Error::FailedPrecondition(
                "the process's output has ended".into(),
            ));
        }
        // Non-blocking open of the write end: fails with ENXIO if nobody reads, instead of
        // hanging the RPC.
        let tx = pipe::OpenOptions::new()
            .open_sender(path)
            .map_err(|e| Error::io(format!("open attach fifo {}", path.display()), e))?;
        let (q, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(tx, rx));
        inner.sinks.retain(|s| !s.is_closed());
        inner.sinks.push(q);
        Ok(())
    }

    /// Hands a chunk to every attacher; one whose queue is full is detached.
    pub fn send(&self, chunk: &[u8]) {
        let mut inner = self.lock();
        if inner.sinks.is_empty() {
            return;
        }
        let b: Arc<[u8]> = chunk.into();
        inner.sinks.retain(|s| match s.try_send(b.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("an attacher stopped reading; detached");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// The output ended: every attacher's FIFO is closed once its queue is written.
    pub fn end(&self) {
        let mut inner = self.lock();
        inner.ended = true;
        inner.sinks.clear();
    }

    /// How many attachers are live.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.sinks.retain(|s| !s.is_closed());
        inner.sinks.len()
    }
}

/// Writes queued chunks to one FIFO until the queue ends or the reader goes away. A reader
/// that closes while nothing is queued is noticed at once (the write end reports an
/// error), so a detached attacher's FIFO is not held open until the next output.
async fn write_loop(mut tx: pipe::Sender, mut rx: mpsc::Receiver<Arc<[u8]>>) {
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(b) => {
                    // EPIPE (not SIGPIPE: Rust ignores it) when the reader is gone.
                    if tx.write_all(&b).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            r = tx.ready(Interest::ERROR) => {
                if r.map(|r| r.is_error()).unwrap_or(true) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_attacher_gets_the_output_and_eof_at_the_end() {
        let d = tempfile::tempdir().unwrap();
        let f = Fanout::default();
        let (a, b) = (fifo(d.path(), "a"), fifo(d.path(), "b"));
        let mut ra = pipe::OpenOptions::new().open_receiver(&a).unwrap();
        let mut rb = pipe::OpenOptions::new().open_receiver(&b).unwrap();
        f.add(&a).unwrap();
        f.send(b"one ");
        f.add(&b).unwrap();
        f.send(b"two");
        f.end();
        let (mut sa, mut sb) = (String::new(), String::new());
        ra.read_to_string(&mut sa).await.unwrap();
        rb.read_to_string(&mut sb).await.unwrap();
        assert_eq!((sa.as_str(), sb.as_str()), ("one two", "two"));
        assert!(matches!(f.add(&a), Err(Error::FailedPrecondition(_))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_attacher_that_stops_reading_is_detached_without_stalling_the_others() {
        let d = tempfile::tempdir().unwrap();
        let f = Fanout::default();
        let (stuck, live) = (fifo(d.path(), "stuck"), fifo(d.path(), "live"));
        let _never_read = pipe::OpenOptions::new().open_receiver(&stuck).unwrap();
        let mut r = pipe::OpenOptions::new().open_receiver(&live).unwrap();
        f.add(&stuck).unwrap();
        f.add(&live).unwrap();
        let reader = tokio::spawn(async move {
            let mut n = 0usize;
            let mut buf = vec![0u8; 65536];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k,
                }
            }
        });
        // 16 MiB: far beyond the stuck FIFO's 64 KiB and its queue. `send` never waits,
        // so yield now and then to let the live writer drain.
        let chunk = vec![b'x'; 8192];
        for i in 0..2048 {
            f.send(&chunk);
            if i % 8 == 0 {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        assert_eq!(
            f.len(),
            1,
            "the stuck attacher was detached, the live one kept"
        );
        f.end();
        assert_eq!(reader.await.unwrap(), 2048 * 8192);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reader_that_leaves_is_dropped_without_more_output() {
        let d = tempfile::tempdir().unwrap();
        let f = Fanout::default();
        let a = fifo(d.path(), "a");
        let r = pipe::OpenOptions::new().open_receiver(&a).unwrap();
        f.add(&a).unwrap();
        assert_eq!(f.len(), 1);
        drop(r);
        for _ in 0..100 {
            if f.len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.len(), 0, "the writer noticed its reader left");
        // Nobody reads the FIFO now: attaching to it fails instead of blocking.
        assert!(f.add(&a).is_err());
    }
}
