//! PortForward over WebSocket channels, kubelet's older framing (`v4.channel.k8s.io`,
//! `v4.base64.channel.k8s.io`, or no subprotocol): the ports come in the URL's `port`
//! query parameters; port i gets data channel 2i and error channel 2i+1, each opened by
//! the server with the port as two little-endian bytes. One connection per port for the
//! whole session; it ends, as containerd's, when either direction does, and the session
//! ends once every port's has. Binary messages carry the channel as their first byte;
//! base64 ones as an ASCII digit followed by the base64 payload.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::limits::{Activity, SESSION_INBOUND_BYTES};
use super::portforward::connect;
use super::queue;
use super::Server;

pub const BINARY: &str = "v4.channel.k8s.io";
pub const BASE64: &str = "v4.base64.channel.k8s.io";

/// The ports of a `?port=80&port=8080` (or `port=80,8080`) query; None if absent or bad.
pub fn ports(query: Option<&str>) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for (k, v) in query?.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "port" {
            continue;
        }
        for p in v.split(',') {
            let p: u16 = p.parse().ok().filter(|p| *p > 0)?;
            out.push(p);
        }
    }
    // Two channels per port, numbered in one byte.
    (!out.is_empty() && out.len() <= MAX_PORTS).then_some(out)
}

/// The most ports one session forwards (channel numbers must fit in a byte; the base64
/// framing's single digit allows five).
const MAX_PORTS: usize = 64;
pub const MAX_PORTS_BASE64: usize = 5;

fn encode(base64: bool, ch: u8, data: &[u8]) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push(char::from(b'0' + ch));
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(s.into())
    } else {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(ch);
        m.extend_from_slice(data);
        Message::Binary(m.into())
    }
}

pub(super) fn decode(base64: bool, m: Message) -> Option<(u8, Vec<u8>)> {
    match (base64, m) {
        (false, Message::Binary(b)) => b.split_first().map(|(c, d)| (*c, d.to_vec())),
        (true, Message::Text(t)) => {
            let (c, d) = t.as_bytes().split_first()?;
            let data = base64::engine::general_purpose::STANDARD.decode(d).ok()?;
            Some((c.checked_sub(b'0')?, data))
        }
        _ => None,
    }
}

pub async fn serve<IO>(
    server: Server,
    pod_id: String,
    ports: Vec<u16>,
    base64: bool,
    ws: WebSocketStream<IO>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let (out, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
    let activity = Activity::default();
    let idle = server.limits().idle_timeout;
    let wrote = activity.clone();
    let writer = tokio::spawn(async move {
        while let Some((ch, data)) = out_rx.recv().await {
            if tx.send(encode(base64, ch, &data)).await.is_err() {
                return;
            }
            wrote.touch();
        }
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tx.send(Message::Close(Some(bye))).await;
        let _ = tx.close().await;
    });
    let netns = match server.backend.pod_netns(&pod_id) {
        Ok(n) => n,
        Err(e) => {
            let _ = out.send((1, e.to_string().into_bytes())).await;
            drop(out);
            let _ = writer.await;
            return;
        }
    };
    let mut inputs = Vec::new();
    let mut pairs = Vec::new();
    // What the client sent towards its ports and they have not taken yet, all ports
    // together, is bounded by bytes.
    let budget = queue::Budget::new(SESSION_INBOUND_BYTES);
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = (2 * i as u8, 2 * i as u8 + 1);
        let _ = out.send((data_ch, port.to_le_bytes().to_vec())).await;
        let _ = out.send((err_ch, port.to_le_bytes().to_vec())).await;
        let (in_tx, mut in_rx) = budget.queue();
        inputs.push(in_tx);
        let (out, netns) = (out.clone(), netns.clone());
        pairs.push(tokio::spawn(async move {
            let tcp = match connect(netns, port).await {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod: {e}");
                    let _ = out.send((err_ch, msg.into_bytes())).await;
                    return;
                }
            };
            let (mut rd, mut wr) = tcp.into_split();
            let up = async {
                while let Some(b) = in_rx.recv().await {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
            };
            let down = async {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.send((data_ch, buf[..n].to_vec())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        }));
    }
    drop(out);
    // A data channel's bytes go to its port; the client's close ends the session.
    let reader = tokio::spawn(async move {
        // Idle both ways for the idle timeout ends the session like the client's leaving.
        while let Some(Some(Ok(m))) = activity.read(idle, rx.next()).await {
            if matches!(m, Message::Close(_)) {
                break;
            }
            let Some((ch, data)) = decode(base64, m) else {
                continue;
            };
            if ch % 2 == 0 && !data.is_empty() {
                if let Some(input) = inputs.get(usize::from(ch / 2)) {
                    let _ = input.send(data).await;
                }
            }
        }
    });
    let stop_reader = reader.abort_handle();
    let forwards: Vec<_> = pairs.iter().map(|p| p.abort_handle()).collect();
    let all_done = async {
        for p in pairs.iter_mut() {
            let _ = p.await;
        }
    };
    tokio::select! {
        _ = all_done => {}
        // The client left: the forwards go with it.
        _ = reader => {
            for f in &forwards {
                f.abort();
            }
        }
    }
    stop_reader.abort();
    let _ = writer.await;
    tracing::debug!(pod_id = %pod_id, "websocket port-forward ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_the_query() {
        assert_eq!(ports(Some("port=80&port=8080")), Some(vec![80, 8080]));
        assert_eq!(ports(Some("port=80,81")), Some(vec![80, 81]));
        assert_eq!(ports(Some("x=1")), None);
        assert_eq!(ports(Some("port=0")), None);
        assert_eq!(ports(Some("port=http")), None);
        assert_eq!(ports(None), None);
    }

    #[test]
    fn channel_framing() {
        let m = encode(true, 1, b"hi");
        assert_eq!(m, Message::Text("1aGk=".into()));
        assert_eq!(decode(true, m), Some((1, b"hi".to_vec())));
        let m = encode(false, 2, b"x");
        assert_eq!(decode(false, m), Some((2, b"x".to_vec())));
    }
}
