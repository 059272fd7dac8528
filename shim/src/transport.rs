//! The shim's ttrpc transport: accepts only peers running as our own user (as Go's
//! `UnixSocketRequireSameUser` does) and makes requests for services we do not serve
//! answer `Unimplemented`, as Go's ttrpc does; ttrpc-rust would say InvalidArgument, and
//! containerd only falls back on Unimplemented.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use berth_proto::protobuf::Message;
use berth_proto::ttrpc::r#async::transport::Listener;
use berth_proto::ttrpc::r#async::Service;
use berth_proto::ttrpc::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

/// Requests for unknown services are re-addressed here: a service without methods, so
/// ttrpc itself answers Unimplemented.
pub const UNKNOWN_SERVICE: &str = "berth.shim.v1.UnknownService";

const HEADER: usize = 10;
const MAX_FRAME: usize = 4 << 20;
const TYPE_REQUEST: u8 = 1;

/// The empty service every unknown request lands on.
pub fn unknown_service() -> Service {
    Service {
        methods: Default::default(),
        streams: Default::default(),
    }
}

/// Wraps a listening socket into a ttrpc listener that filters as described above.
pub fn listener(l: UnixListener, known: Vec<String>) -> Listener {
    let known: Arc<[String]> = known.into();
    let me = nix::unistd::geteuid().as_raw();
    let stream = futures_util::stream::unfold(l, move |l| {
        let known = known.clone();
        async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => match s.peer_cred() {
                        Ok(c) if c.uid() == me => return Some((Ok(Filtered::new(s, known)), l)),
                        Ok(c) => {
                            tracing::warn!(uid = c.uid(), "refused a connection from another user")
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read peer credentials"),
                    },
                    Err(e) => return Some((Err(e), l)),
                }
            }
        }
    });
    Listener::new(stream)
}

/// A connection whose inbound request frames are checked before ttrpc reads them.
pub struct Filtered {
    inner: UnixStream,
    known: Arc<[String]>,
    /// Bytes read but not yet forming a whole frame.
    raw: Vec<u8>,
    /// Whole frames ready for ttrpc, and how much of them it has taken.
    ready: Vec<u8>,
    pos: usize,
    /// Something that is not a ttrpc frame we can parse: pass everything through.
    passthrough: bool,
}

impl Filtered {
    fn new(inner: UnixStream, known: Arc<[String]>) -> Filtered {
        Filtered {
            inner,
            known,
            raw: Vec::new(),
            ready: Vec::new(),
            pos: 0,
            passthrough: false,
        }
    }

    /// Moves every complete frame from `raw` to `ready`, re-addressing unknown services.
    fn process(&mut self) {
        while !self.passthrough && self.raw.len() >= HEADER {
            let len =
                u32::from_be_bytes([self.raw[0], self.raw[1], self.raw[2], self.raw[3]]) as usize;
            if len > MAX_FRAME {
                self.passthrough = true;
                break;
            }
            if self.raw.len() < HEADER + len {
                break;
            }
            let frame: Vec<u8> = self.raw.drain(..HEADER + len).collect();
            let rewritten = (frame[8] == TYPE_REQUEST)
                .then(|| rewrite(&frame, &self.known))
                .flatten();
            self.ready
                .extend_from_slice(rewritten.as_deref().unwrap_or(&frame));
        }
        if self.passthrough {
            self.ready.append(&mut self.raw);
        }
    }
}

/// A request frame for an unknown service, re-addressed to [`UNKNOWN_SERVICE`].
fn rewrite(frame: &[u8], known: &[String]) -> Option<Vec<u8>> {
    let mut req = Request::parse_from_bytes(&frame[HEADER..]).ok()?;
    if known.contains(&req.service) || req.service == UNKNOWN_SERVICE {
        return None;
    }
    req.service = UNKNOWN_SERVICE.to_string();
    let body = req.write_to_bytes().ok()?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&frame[4..HEADER]);
    out.extend_from_slice(&body);
    Some(out)
}

impl AsyncRead for Filtered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.pos);
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // EOF: hand over whatever partial frame is left, then EOF.
                    if this.raw.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.ready.append(&mut this.raw);
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(rb.filled());
                    this.process();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Filtered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(service: &str, method: &str, ty: u8) -> Vec<u8> {
        let mut r = Request::new();
        r.service = service.into();
        r.method = method.into();
        r.payload = vec![1, 2, 3];
        let body = r.write_to_bytes().unwrap();
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&[ty, 0]);
        f.extend_from_slice(&body);
        f
    }

    fn service_of(f: &[u8]) -> String {
        Request::parse_from_bytes(&f[HEADER..]).unwrap().service
    }

    #[test]
    fn unknown_services_are_readdressed_and_known_ones_kept() {
        let known = vec!["containerd.task.v2.Task".to_string()];
        assert!(rewrite(&frame("containerd.task.v2.Task", "State", 1), &known).is_none());
        let out = rewrite(&frame("containerd.task.v9.Task", "State", 1), &known).unwrap();
        assert_eq!(service_of(&out), UNKNOWN_SERVICE);
        assert_eq!(
            &out[4..HEADER],
            &frame("x", "y", 1)[4..HEADER],
            "stream id and flags kept"
        );
        let req = Request::parse_from_bytes(&out[HEADER..]).unwrap();
        assert_eq!(
            (req.method.as_str(), req.payload.as_slice()),
            ("State", &[1u8, 2, 3][..])
        );
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len() - HEADER);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_split_across_reads_are_reassembled() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = UnixStream::pair().unwrap();
        let known: Arc<[String]> = vec!["known".to_string()].into();
        let mut f = Filtered::new(a, known);
        let mut input = frame("nope", "M", 1);
        input.extend(frame("known", "M", 1));
        let (x, y) = input.split_at(5);
        b.write_all(x).await.unwrap();
        b.flush().await.unwrap();
        let writer = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            b.write_all(y).await.unwrap();
            drop(b);
        };
        let reader = async {
            let mut got = Vec::new();
            f.read_to_end(&mut got).await.unwrap();
            got
        };
        let (_, got) = tokio::join!(writer, reader);
        let first_len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
        assert_eq!(service_of(&got[..HEADER + first_len]), UNKNOWN_SERVICE);
        assert_eq!(service_of(&got[HEADER + first_len..]), "known");
    }
}
