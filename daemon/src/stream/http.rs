//! One HTTP/1.1 connection to the streaming server: the token in the path is redeemed
//! (unknown, used or expired → 404), the stream protocol is negotiated from the client's
//! `X-Stream-Protocol-Version` (SPDY) or `Sec-WebSocket-Protocol` (WebSocket) list as
//! kubelet does (the client's first that we speak), and the connection is upgraded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;

use super::Server;
use super::{attach, exec, portforward, spdy, ws, ws_portforward, Pending};

/// Remote command protocols, newest first.
pub const REMOTECOMMAND: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
pub const PORTFORWARD: [&str; 1] = ["portforward.k8s.io"];

fn reply(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = code;
    r
}

/// The first protocol the client offers that we speak.
fn negotiate(req: &Request<Incoming>, ours: &[&'static str]) -> Option<&'static str> {
    req.headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offer| ours.iter().find(|p| **p == offer).copied())
}

/// The WebSocket upgrade: subprotocol from `Sec-WebSocket-Protocol` (the client's first
/// that we speak), accept key, then the session on the upgraded connection.
fn websocket(
    server: Server,
    mut req: Request<Incoming>,
    pending: Pending,
    slot: Slot,
) -> Response<Full<Bytes>> {
    use hyper::header::HeaderValue;
    let ours: &[&'static str] = match pending {
        Pending::Exec(_) | Pending::Attach(_) => &ws::EXEC,
        Pending::PortForward { .. } => &ws::PORTFORWARD,
    };
    let offered: Vec<String> = req
        .headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let is_pf = matches!(pending, Pending::PortForward { .. });
    let chosen = offered
        .iter()
        .find_map(|o| ours.iter().find(|p| **p == o).copied())
        // kubelet takes a port-forward without a subprotocol as binary v4 channels.
        .or_else(|| (is_pf && offered.is_empty()).then_some(""));
    let Some(protocol) = chosen else {
        return reply(
            StatusCode::FORBIDDEN,
            &format!("unable to upgrade: unable to negotiate protocol: supported {ours:?}"),
        );
    };
    // Channel port-forwarding names its ports in the query.
    let channel_ports = if is_pf && protocol != ws::PORTFORWARD[0] {
        match ws_portforward::ports(req.uri().query()) {
            Some(p)
                if protocol == ws_portforward::BASE64
                    && p.len() > ws_portforward::MAX_PORTS_BASE64 =>
            {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "too many ports for base64 channels",
                )
            }
            Some(p) => Some(p),
            None => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "query parameter \"port\" is required (ports > 0)",
                )
            }
        }
    } else {
        None
    };
    let Some(key) = req.headers().get(hyper::header::SEC_WEBSOCKET_KEY).cloned() else {
        return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _slot = slot;
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let _session = server.metrics.session(pending.kind(), "websocket");
        let socket = ws::socket(io).await;
        match pending {
            Pending::Exec(e) => {
                ws::serve_remotecommand(server, ws::Remote::Exec(e), protocol, socket).await
            }
            Pending::Attach(a) => {
                ws::serve_remotecommand(server, ws::Remote::Attach(a), protocol, socket).await
            }
            Pending::PortForward { pod_id } => match channel_ports {
                Some(ports) => {
                    let base64 = protocol == ws_portforward::BASE64;
                    ws_portforward::serve(server, pod_id, ports, base64, socket).await
                }
                None => {
                    let limits = *server.limits();
                    let (streams, session) = spdy::conn::start(ws::Bytes::new(socket), limits);
                    portforward::serve_spdy(server, pod_id, streams, session).await
                }
            },
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    if !protocol.is_empty() {
        h.insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// The connection's place under `max_connections`, held by its session once upgraded.
type Slot = Arc<OwnedSemaphorePermit>;

/// Largest request head read (kubelet's upgrade requests are well under 4 KiB).
const MAX_HEAD: usize = 64 << 10;

pub async fn connection<IO>(server: Server, sock: IO, peer: SocketAddr, slot: OwnedSemaphorePermit)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot: Slot = Arc::new(slot);
    let limits = *server.limits();
    let svc = hyper::service::service_fn(move |req| handle(server.clone(), req, slot.clone()));
    // hyper bounds the head, in size and in time (the timeout needs its timer; without
    // one hyper waits forever). The timer restarts for each request head, so a kept-alive
    // connection that sends nothing more is closed as well. (keep_alive(false) is no
    // option: hyper then answers the upgrade with `Connection: close`, which WebSocket
    // clients refuse.)
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(sock), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "streaming connection");
    }
}

async fn handle(
    server: Server,
    mut req: Request<Incoming>,
    slot: Slot,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(pending) = server.streaming.take(kind, token) else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "unknown or expired streaming URL",
        ));
    };
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        return Ok(websocket(server, req, pending, slot));
    }
    if upgrade != "spdy/3.1" {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "streaming needs an HTTP upgrade to SPDY/3.1 or WebSocket",
        ));
    }
    let ours: &[&'static str] = match pending {
        Pending::Exec(_) | Pending::Attach(_) => &REMOTECOMMAND,
        Pending::PortForward { .. } => &PORTFORWARD,
    };
    let Some(protocol) = negotiate(&req, ours) else {
        return Ok(reply(
            StatusCode::FORBIDDEN,
            &format!("unable to upgrade: unable to negotiate protocol: supported {ours:?}"),
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _slot = slot;
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        let _session = server.metrics.session(pending.kind(), "spdy");
        let (streams, session) = spdy::conn::start(io, *server.limits());
        match pending {
            Pending::Exec(e) => exec::serve_spdy(server, e, protocol, streams, session).await,
            Pending::Attach(a) => attach::serve_spdy(server, a, protocol, streams, session).await,
            Pending::PortForward { pod_id } => {
                portforward::serve_spdy(server, pod_id, streams, session).await
            }
        }
    });
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    *r.body_mut() = Full::new(Bytes::new());
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        "Upgrade".parse().unwrap_or_else(|_| unreachable!()),
    );
    h.insert(
        hyper::header::UPGRADE,
        "SPDY/3.1".parse().unwrap_or_else(|_| unreachable!()),
    );
    h.insert(
        "x-stream-protocol-version",
        protocol.parse().unwrap_or_else(|_| unreachable!()),
    );
    Ok(r)
}
