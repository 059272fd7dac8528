//! One HTTP/1.1 connection to the streaming server: the token in the path is redeemed
//! (unknown, used or expired → 404), the stream protocol is negotiated from the client's
//! `X-Stream-Protocol-Version` list as kubelet does (the client's first that we speak),
//! and the connection is upgraded to SPDY/3.1 for the session.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{exec, portforward, spdy, Pending};
use crate::runtime::Runtime;

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

pub async fn connection(rt: Arc<Runtime>, sock: tokio::net::TcpStream, peer: SocketAddr) {
    let svc = hyper::service::service_fn(move |req| handle(rt.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(sock), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "streaming connection");
    }
}

async fn handle(
    rt: Arc<Runtime>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(pending) = rt.streaming.take(kind, token) else {
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
    if upgrade != "spdy/3.1" {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "streaming needs an HTTP upgrade to SPDY/3.1",
        ));
    }
    let ours: &[&'static str] = match pending {
        Pending::Exec(_) => &REMOTECOMMAND,
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
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        let (streams, session) = spdy::conn::start(io);
        match pending {
            Pending::Exec(e) => exec::serve_spdy(rt, e, protocol, streams, session).await,
            Pending::PortForward { pod_id } => {
                portforward::serve_spdy(rt, pod_id, streams, session).await
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
