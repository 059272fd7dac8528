//! NRI's connection multiplexer (containerd/nri `pkg/net/multiplex`), both ends.
//!
//! One unix stream (the *trunk*) carries several logical connections. Every frame is an
//! 8-byte header, the logical connection's id and the payload's length (both u32, big
//! endian), then the payload. NRI opens two: [`PLUGIN_SERVICE_CONN`] (the runtime calls
//! the plugin's `Plugin` service) and [`RUNTIME_SERVICE_CONN`] (the plugin calls the
//! runtime's `Runtime` service). Opening is virtual: each end just uses the ids, and
//! frames for an id nobody opened are dropped, as NRI's mux does.
//!
//! Each logical connection is handed out as one end of an in-memory duplex pipe that
//! ttrpc reads and writes as a byte stream ([`ttrpc::r#async::transport::Socket::new`]);
//! tasks move its bytes to and from the trunk.
//!
//! Frames written here carry at most [`MAX_WRITE_FRAME`] bytes: the Go side reads each
//! frame with one `Read` into ttrpc's 4 KiB `bufio.Reader`, and a frame larger than the
//! buffer it is read into fails with ENOMEM there. Frames read here may be as large as
//! NRI allows (a ttrpc message's header and 4 MiB).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// The logical connection of the plugin's `Plugin` service (the runtime is its client).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// The logical connection of the runtime's `Runtime` service (the plugin is its client).
pub const RUNTIME_SERVICE_CONN: u32 = 2;

/// The largest payload of a frame this side writes.
pub const MAX_WRITE_FRAME: usize = 4096;
/// The largest payload of a frame accepted (NRI's `maxPayloadSize`: a ttrpc message
/// header and its 4 MiB maximum).
pub const MAX_READ_FRAME: usize = 10 + (4 << 20);
/// The in-memory pipe's buffer per logical connection and direction.
const PIPE_BUFFER: usize = 256 << 10;

/// A multiplexed trunk. Dropping it does not close the trunk; [`Mux::close`] does.
pub struct Mux {
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    closed_tx: Arc<watch::Sender<bool>>,
    closed: watch::Receiver<bool>,
}

impl Mux {
    /// Multiplexes `trunk` into the logical connections `ids`: returns the mux and, in
    /// the order of `ids`, each connection's stream end.
    pub fn new(trunk: UnixStream, ids: &[u32]) -> (Mux, Vec<DuplexStream>) {
        let (read, write) = trunk.into_split();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (closed_tx, closed) = watch::channel(false);
        let closed_tx = Arc::new(closed_tx);
        let reader_closed = closed_tx.clone();
        let mut ends = Vec::with_capacity(ids.len());
        let mut inbound: HashMap<u32, WriteHalf<DuplexStream>> = HashMap::new();
        let mut handles = Vec::new();
        for &id in ids {
            let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
            let (from_conn, to_conn) = tokio::io::split(ours);
            inbound.insert(id, to_conn);
            ends.push(theirs);
            handles.push(tokio::spawn(outbound(id, from_conn, write.clone())).abort_handle());
        }
        let all = tasks.clone();
        let reader = tokio::spawn(async move {
            let mut read = read;
            let mut inbound = inbound;
            let _ = demux(&mut read, &mut inbound).await;
            // The trunk is gone: every logical connection reads EOF, and the writers
            // stop (dropping the trunk's write half).
            drop(inbound);
            for t in all.lock().unwrap().drain(..) {
                t.abort();
            }
            reader_closed.send_replace(true);
        });
        handles.push(reader.abort_handle());
        tasks.lock().unwrap().extend(handles);
        (
            Mux {
                tasks,
                closed_tx,
                closed,
            },
            ends,
        )
    }

    /// Closes the trunk and every logical connection.
    pub fn close(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.closed_tx.send_replace(true);
    }

    /// Whether the trunk has ended (the peer closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the trunk has ended.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads frames off the trunk and passes each payload to its logical connection.
async fn demux(
    read: &mut tokio::net::unix::OwnedReadHalf,
    conns: &mut HashMap<u32, WriteHalf<DuplexStream>>,
) -> std::io::Result<()> {
    let mut hdr = [0u8; 8];
    let mut buf = Vec::new();
    loop {
        read.read_exact(&mut hdr).await?;
        let id = u32::from_be_bytes(hdr[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(hdr[4..8].try_into().unwrap()) as usize;
        if len > MAX_READ_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("multiplexed frame of {len} bytes is too large"),
            ));
        }
        buf.resize(len, 0);
        read.read_exact(&mut buf).await?;
        if let Some(conn) = conns.get_mut(&id) {
            if conn.write_all(&buf).await.is_err() {
                // That connection's user is gone; its later frames are dropped.
                conns.remove(&id);
            }
        }
    }
}

/// Moves what a logical connection's user writes onto the trunk, in frames.
async fn outbound(
    id: u32,
    mut from: ReadHalf<DuplexStream>,
    trunk: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
) {
    let mut frame = vec![0u8; 8 + MAX_WRITE_FRAME];
    loop {
        let n = match from.read(&mut frame[8..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        frame[0..4].copy_from_slice(&id.to_be_bytes());
        frame[4..8].copy_from_slice(&(n as u32).to_be_bytes());
        let mut w = trunk.lock().await;
        if w.write_all(&frame[..8 + n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_go_to_their_connection() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_ma, mut ea) = Mux::new(a, &[1, 2]);
        let (mb, mut eb) = Mux::new(b, &[1, 2]);
        let big = vec![7u8; 3 * MAX_WRITE_FRAME + 5];
        ea[1].write_all(&big).await.unwrap();
        ea[0].write_all(b"one").await.unwrap();
        let mut got = vec![0u8; big.len()];
        eb[1].read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        let mut one = [0u8; 3];
        eb[0].read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"one");
        drop(_ma);
        mb.closed().await;
        assert!(mb.is_closed());
        let mut rest = Vec::new();
        eb[0].read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn raw_frames_are_nri_framing() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (_m, mut e) = Mux::new(a, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
        e[1].write_all(b"hello").await.unwrap();
        let mut f = [0u8; 13];
        b.read_exact(&mut f).await.unwrap();
        assert_eq!(&f[..8], &[0, 0, 0, 2, 0, 0, 0, 5]);
        assert_eq!(&f[8..], b"hello");
        // A frame for a connection nobody opened is dropped; the next one arrives.
        b.write_all(&[0, 0, 0, 9, 0, 0, 0, 1, b'x']).await.unwrap();
        b.write_all(&[0, 0, 0, 1, 0, 0, 0, 2, b'o', b'k'])
            .await
            .unwrap();
        let mut ok = [0u8; 2];
        e[0].read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, b"ok");
    }
}
