//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on `[metrics] address`, answered in
//! the Prometheus text format (0.0.4), or OpenMetrics when the scraper asks for it in
//! `Accept`. Bounded like the streaming server: a request head must arrive whole within
//! `HEADER_READ_TIMEOUT` and fit in `MAX_HEAD`, and at most `MAX_CONNECTIONS` are served
//! at once (one more is closed as soon as it is accepted).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Metrics;
use crate::error::{Error, Result};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 32;
const MAX_HEAD: usize = 16 << 10;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint's bound socket (serving starts with [`serve`]).
pub struct Endpoint {
    listener: std::net::TcpListener,
    pub addr: SocketAddr,
}

/// Binds `address` (`ip:port`; port 0 picks a free one).
pub fn bind(address: &str) -> Result<Endpoint> {
    let want: SocketAddr = address
        .parse()
        .map_err(|_| Error::Config(format!("metrics.address {address:?} is not ip:port")))?;
    let listener = std::net::TcpListener::bind(want)
        .map_err(|e| Error::io(format!("bind metrics endpoint {want}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("metrics socket", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("metrics socket", e))?;
    Ok(Endpoint { listener, addr })
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "metrics are at /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET /metrics\n".into(),
        ));
    }
    let openmetrics = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    // The census reads the records: off the async workers.
    let body = tokio::task::spawn_blocking(move || metrics.encode(openmetrics)).await;
    Ok(match body {
        Ok(text) => reply(
            StatusCode::OK,
            if openmetrics { OPENMETRICS } else { TEXT },
            text,
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("encoding metrics: {e}\n"),
        ),
    })
}

/// Serves scrapes until berthd stops.
pub async fn serve(ep: Endpoint, metrics: Arc<Metrics>) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(ep.listener)
        .map_err(|e| Error::io("metrics listener", e))?;
    tracing::info!(addr = %ep.addr, "serving metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = MAX_CONNECTIONS, "metrics connection refused: at the cap");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| handle(metrics.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "metrics connection");
            }
        });
    }
}
