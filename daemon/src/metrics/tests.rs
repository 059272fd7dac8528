//! The CRI layer records each call once with the code gRPC reports (headers, trailers,
//! or Canceled when dropped); the census and handles appear in both text formats; the
//! endpoint answers GET /metrics and nothing else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, Response};

use super::*;

/// A gRPC handler stand-in: answers every request with `respond()`.
#[derive(Clone)]
struct Answer(fn() -> Response<ReplyBody>);

type ReplyBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl tower::Service<Request<()>> for Answer {
    type Response = Response<ReplyBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let r = (self.0)();
        Box::pin(async move { Ok(r) })
    }
}

fn trailers(code: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", code.parse().unwrap());
    t
}

fn ok_with_trailers() -> Response<ReplyBody> {
    let body = Full::new(Bytes::from_static(b"msg"))
        .with_trailers(async { Some(Ok(trailers("0"))) })
        .boxed();
    Response::new(body)
}

fn not_found_at_once() -> Response<ReplyBody> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    r.headers_mut().insert("grpc-status", "5".parse().unwrap());
    r
}

fn count(m: &Metrics, method: &'static str, code: &'static str) -> u64 {
    m.cri
        .requests
        .get(&vec![("method", method), ("code", code)])
        .map_or(0, |c| c.get())
}

async fn call(
    m: &Metrics,
    path: &str,
    answer: fn() -> Response<ReplyBody>,
) -> Response<grpc::MeasuredBody<ReplyBody>> {
    use tower::{Layer, Service};
    let mut svc = m.cri_layer().layer(Answer(answer));
    let req = Request::builder().uri(path).body(()).unwrap();
    svc.call(req).await.unwrap()
}

#[tokio::test]
async fn each_call_is_counted_once_with_its_code() {
    let m = Metrics::detached();
    // An error in the headers counts at once, and reading the (empty) body adds nothing.
    let r = call(
        &m,
        "/runtime.v1.RuntimeService/PodSandboxStatus",
        not_found_at_once,
    )
    .await;
    assert_eq!(count(&m, "PodSandboxStatus", "NotFound"), 1);
    r.into_body().collect().await.unwrap();
    assert_eq!(count(&m, "PodSandboxStatus", "NotFound"), 1);
    assert_eq!(count(&m, "PodSandboxStatus", "OK"), 0);

    // A success counts when its trailers come.
    let r = call(&m, "/runtime.v1.RuntimeService/Version", ok_with_trailers).await;
    assert_eq!(count(&m, "Version", "OK"), 0, "not before the trailers");
    let got = r.into_body().collect().await.unwrap();
    assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(count(&m, "Version", "OK"), 1);

    // A response whose client went away before its end.
    let r = call(&m, "/runtime.v1.ImageService/PullImage", ok_with_trailers).await;
    drop(r);
    assert_eq!(count(&m, "PullImage", "Canceled"), 1);
    assert_eq!(count(&m, "PullImage", "OK"), 0);

    // A path no service has.
    let r = call(&m, "/x.Y/Z", not_found_at_once).await;
    drop(r);
    assert_eq!(count(&m, "unknown", "NotFound"), 1);

    let text = m.encode(false);
    assert!(
        text.contains(r#"berth_cri_requests_total{method="Version",code="OK"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"berth_cri_request_duration_seconds_count{method="Version",code="OK"} 1"#),
        "{text}"
    );
}

#[test]
fn the_census_and_every_family_are_encoded_in_both_formats() {
    let m = Metrics::new(Box::new(|| {
        Some(Census {
            pods: vec![("ready", 2), ("notready", 1)],
            containers: vec![("running", 3)],
        })
    }));
    m.events.delivered.inc_by(4);
    m.pull.finished(1.5, Some("NotFound"));
    m.recovery.intent("create", IntentOutcome::RolledBack);
    let guard = m.streaming.session("exec", "spdy");
    let text = m.encode(false);
    for line in [
        r#"berth_pods{state="ready"} 2"#,
        r#"berth_pods{state="notready"} 1"#,
        r#"berth_containers{state="running"} 3"#,
        "berth_events_delivered_total 4",
        r#"berth_image_pull_errors_total{code="NotFound"} 1"#,
        r#"berth_image_pull_duration_seconds_count{result="error"} 1"#,
        r#"berth_recovery_intents_total{op="create",outcome="rolled_back"} 1"#,
        r#"berth_streaming_sessions_total{kind="exec",protocol="spdy"} 1"#,
        r#"berth_streaming_sessions_active{kind="exec"} 1"#,
        "berth_shims_alive 0",
        "berth_recovery_duration_seconds 0.0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    drop(guard);
    assert!(m
        .encode(false)
        .contains(r#"berth_streaming_sessions_active{kind="exec"} 0"#));
    let om = m.encode(true);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains(r#"berth_pods{state="ready"} 2"#));
}

/// One HTTP/1.1 request on a fresh connection; the whole answer.
async fn http(addr: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_endpoint_serves_get_metrics_only() {
    let m = std::sync::Arc::new(Metrics::detached());
    m.events.emitted.inc();
    let ep = bind("127.0.0.1:0").unwrap();
    let addr = ep.addr;
    assert_ne!(addr.port(), 0);
    let server = tokio::spawn(serve(ep, m));
    let ok = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
    assert!(ok.contains("\nberth_events_emitted_total 1\n"), "{ok}");
    let om = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    let other = http(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let post = http(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    server.abort();
    assert!(bind("127.0.0.1").is_err());
}
