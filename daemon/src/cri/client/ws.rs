//! A WebSocket client for the CRI streaming server: remote commands (exec, attach) as
//! kubectl 1.30+ speaks them, and kubelet's channel port-forwarding (data channel 2i and
//! error channel 2i+1 per port, `v4.channel.k8s.io` or its base64 twin). Remote commands:
//! `v5.channel.k8s.io` (or `v4`), every binary message prefixed with its channel (0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize); v5 adds 255 + channel = "I closed this
//! channel". The framing is tokio-tungstenite's; the channel protocol is written here
//! apart from berthd's streaming server (`stream/`), so each checks the other.

use anyhow::{bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What a session delivered, by channel.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The error channel's Status object.
    pub fn status(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.error).with_context(|| {
            format!(
                "error channel is not a Status: {:?}",
                String::from_utf8_lossy(&self.error)
            )
        })
    }

    /// The exit code the error channel's Status reports (see [`exit_code`]).
    pub fn exit_code(&self) -> Option<i32> {
        exit_code(&self.status().ok()?)
    }
}

/// The exit code a remote command's Status object reports: 0 for Success, the ExitCode
/// cause for NonZeroExitCode; None for anything else (a failure that is not the
/// command's own exit, such as a refused exec).
pub fn exit_code(status: &serde_json::Value) -> Option<i32> {
    match status["status"].as_str()? {
        "Success" => Some(0),
        _ if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok(),
        _ => None,
    }
}

pub struct WsSession {
    pub protocol: String,
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    pub out: Output,
}

impl WsSession {
    /// Upgrades a streaming URL (`http://…`) offering `protocols` in order.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<WsSession> {
        Self::connect_with(url, protocols, None).await
    }

    /// The same for an `https://` URL, trusting only `root_pem` (PEM certificate).
    pub async fn connect_tls(url: &str, protocols: &[&str], root_pem: &[u8]) -> Result<WsSession> {
        let tls = native_tls::TlsConnector::builder()
            .add_root_certificate(native_tls::Certificate::from_pem(root_pem)?)
            .build()?;
        Self::connect_with(url, protocols, Some(Connector::NativeTls(tls))).await
    }

    async fn connect_with(
        url: &str,
        protocols: &[&str],
        tls: Option<Connector>,
    ) -> Result<WsSession> {
        let (scheme, rest) = url.split_once("://").context("no scheme in URL")?;
        let ws_url = match scheme {
            "http" => format!("ws://{rest}"),
            "https" => format!("wss://{rest}"),
            other => bail!("scheme {other:?}"),
        };
        let mut req = ws_url.as_str().into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", "))?,
        );
        let host = rest
            .split('/')
            .next()
            .context("no host in URL")?
            .to_string();
        let tcp = TcpStream::connect(&host).await?;
        let connector = tls.unwrap_or(Connector::Plain);
        let (ws, resp) =
            tokio_tungstenite::client_async_tls_with_config(req, tcp, None, Some(connector))
                .await
                .with_context(|| format!("WebSocket upgrade of {url}"))?;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (tx, rx) = ws.split();
        Ok(WsSession {
            protocol,
            tx,
            rx,
            out: Output::default(),
        })
    }

    pub async fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut m = vec![channel];
        m.extend_from_slice(data);
        self.tx.send(Message::Binary(m.into())).await?;
        Ok(())
    }

    /// v5: tells the server stdin is done.
    pub async fn close_stdin(&mut self) -> Result<()> {
        if self.protocol != "v5.channel.k8s.io" {
            bail!("closing a channel needs v5, not {:?}", self.protocol);
        }
        self.tx
            .send(Message::Binary(vec![CLOSE, STDIN].into()))
            .await?;
        Ok(())
    }

    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let msg = serde_json::json!({"Width": width, "Height": height}).to_string();
        self.send(RESIZE, msg.as_bytes()).await
    }

    /// The next message as (channel, payload): binary, or with `v4.base64.channel.k8s.io`
    /// a digit and base64 text. None once the server closed the session.
    pub async fn recv(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        use base64::Engine;
        loop {
            match self.rx.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(b))) => {
                    if let Some((&ch, data)) = b.split_first() {
                        return Ok(Some((ch, data.to_vec())));
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let (ch, data) = t.as_bytes().split_first().context("empty text message")?;
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .context("base64 payload")?;
                    return Ok(Some((ch.wrapping_sub(b'0'), data)));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends on a channel of a `v4.base64.channel.k8s.io` session.
    pub async fn send_base64(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        use base64::Engine;
        let mut s = String::from(char::from(b'0' + channel));
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        self.tx.send(Message::Text(s.into())).await?;
        Ok(())
    }

    /// Reads one message into `out`; false once the server closed the session.
    async fn read_one(&mut self) -> Result<bool> {
        let Some((ch, data)) = self.recv().await? else {
            return Ok(false);
        };
        match ch {
            STDOUT => self.out.stdout.extend_from_slice(&data),
            STDERR => self.out.stderr.extend_from_slice(&data),
            ERROR => self.out.error.extend_from_slice(&data),
            _ => {}
        }
        Ok(true)
    }

    /// Reads until stdout contains `want` (within `within`).
    pub async fn read_until(&mut self, want: &str, within: Duration) -> Result<()> {
        let r = tokio::time::timeout(within, async {
            while !self.out.stdout_text().contains(want) {
                if !self.read_one().await? {
                    bail!("session ended");
                }
            }
            Ok(())
        })
        .await;
        match r {
            Ok(r) => r.with_context(|| {
                format!(
                    "waiting for {want:?} on stdout (have {:?})",
                    self.out.stdout_text()
                )
            }),
            Err(_) => bail!(
                "no {want:?} on stdout within {within:?} (have {:?})",
                self.out.stdout_text()
            ),
        }
    }

    /// Reads until the server closes the session (within `within`).
    pub async fn finish(mut self, within: Duration) -> Result<Output> {
        tokio::time::timeout(within, async {
            while self.read_one().await? {}
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("session still open after {within:?}"))??;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(
            exit_code(&serde_json::json!({"status": "Success"})),
            Some(0)
        );
        let failed = serde_json::json!({"status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}});
        assert_eq!(exit_code(&failed), Some(3));
        let refused = serde_json::json!({"status": "Failure", "reason": "InternalError",
            "message": "no such container"});
        assert_eq!(exit_code(&refused), None);
        assert_eq!(exit_code(&serde_json::Value::Null), None);
    }
}
