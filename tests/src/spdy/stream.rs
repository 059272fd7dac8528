//! A stream of a session: [`StreamWriter`] queues our DATA, HEADERS, WINDOW_UPDATE and
//! RST_STREAM frames; [`StreamReader`] takes what the reader task routes to the stream.

use super::frame::kind;
use super::headers::Headers;
use super::wire::{End, Event, Out};
use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Payload per DATA frame this client writes.
const DATA_CHUNK: usize = 32 << 10;

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
    pub(super) id: u32,
    pub(super) out: mpsc::Sender<Out>,
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
    pub(super) id: u32,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    pub(super) reply: Option<oneshot::Receiver<Headers>>,
    pub(super) end: Option<End>,
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

    /// Reads into `seen` until it contains `want`; fails when the stream ends first or
    /// `within` passes (the error shows what came).
    pub async fn read_until(
        &mut self,
        seen: &mut Vec<u8>,
        want: &str,
        within: Duration,
    ) -> Result<()> {
        let res = tokio::time::timeout(within, async {
            while !String::from_utf8_lossy(seen).contains(want) {
                match self.recv().await {
                    Some(b) => seen.extend(b),
                    None => bail!("stream ended"),
                }
            }
            Ok(())
        })
        .await;
        match res {
            Ok(r) => {
                r.with_context(|| format!("{want:?} (have {:?})", String::from_utf8_lossy(seen)))
            }
            Err(_) => bail!(
                "no {want:?} within {within:?} (have {:?})",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}
