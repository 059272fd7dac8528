//! The CRI server's one measuring point: a tower layer around the gRPC router that counts
//! and times every call by method and gRPC status code. The code is read where gRPC puts
//! it: in the response headers (an error answered at once) or in the trailers at the end
//! of the body; a call whose client went away first counts as Cancelled. Latency runs
//! until the response ends (for GetContainerEvents, until the stream does).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use hyper::{HeaderMap, Request, Response};

use super::CriMetrics;

/// The CRI v1 methods berthd serves; any other path is counted as "unknown" (labels stay
/// bounded whatever a client sends).
const METHODS: [&str; 35] = [
    "Attach",
    "CheckpointContainer",
    "ContainerStats",
    "ContainerStatus",
    "CreateContainer",
    "Exec",
    "ExecSync",
    "GetContainerEvents",
    "ListContainerStats",
    "ListContainers",
    "ListMetricDescriptors",
    "ListPodSandbox",
    "ListPodSandboxMetrics",
    "ListPodSandboxStats",
    "PodSandboxStats",
    "PodSandboxStatus",
    "PortForward",
    "RemoveContainer",
    "RemovePodSandbox",
    "ReopenContainerLog",
    "RunPodSandbox",
    "RuntimeConfig",
    "StartContainer",
    "Status",
    "StopContainer",
    "StopPodSandbox",
    "UpdateContainerResources",
    "UpdateRuntimeConfig",
    "Version",
    // ImageService
    "ImageFsInfo",
    "ImageStatus",
    "ListImages",
    "PullImage",
    "RemoveImage",
    // Neither: a path no service answers.
    "unknown",
];

/// The method a request path names (`/runtime.v1.RuntimeService/Version` → "Version").
fn method_of(path: &str) -> &'static str {
    let known = path
        .strip_prefix("/runtime.v1.RuntimeService/")
        .or_else(|| path.strip_prefix("/runtime.v1.ImageService/"));
    known
        .and_then(|m| METHODS.iter().find(|k| **k == m && m != "unknown"))
        .copied()
        .unwrap_or("unknown")
}

/// gRPC's status code names (as grpc-go and its Prometheus interceptors spell them).
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The name of gRPC status code `code` ("Unknown" for a number outside the set).
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| CODES.get(i))
        .copied()
        .unwrap_or("Unknown")
}

fn grpc_status(h: &HeaderMap) -> Option<&'static str> {
    let v = h.get("grpc-status")?.to_str().ok()?;
    Some(code_name(v.trim().parse().unwrap_or(2)))
}

/// One call being measured: recorded exactly once, when its code is known, or as
/// Canceled when it is dropped before (the client went away).
struct Call {
    metrics: CriMetrics,
    method: &'static str,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if !self.done {
            self.done = true;
            let secs = self.start.elapsed().as_secs_f64();
            self.metrics.observe(self.method, code, secs);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

/// Wraps the CRI router: see the module doc.
#[derive(Clone)]
pub struct CriLayer {
    metrics: CriMetrics,
}

impl CriLayer {
    pub(super) fn new(metrics: CriMetrics) -> CriLayer {
        CriLayer { metrics }
    }
}

impl<S> tower::Layer<S> for CriLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: CriMetrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<Request<B>> for Measured<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Body + Send + 'static,
{
    type Response = Response<MeasuredBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut call = Call {
            metrics: self.metrics.clone(),
            method: method_of(req.uri().path()),
            start: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish("Unknown");
                    return Err(e);
                }
            };
            // An error answered at once ("trailers-only"): its status is in the headers.
            if let Some(code) = grpc_status(resp.headers()) {
                call.finish(code);
            }
            Ok(resp.map(|body| MeasuredBody {
                inner: Box::pin(body),
                call: Some(call),
            }))
        })
    }
}

/// A response body that records its call at its trailers (or end, or drop).
pub struct MeasuredBody<R> {
    inner: Pin<Box<R>>,
    call: Option<Call>,
}

impl<R: Body> Body for MeasuredBody<R> {
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<R::Data>, R::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(f))) => f.trailers_ref().map(|t| grpc_status(t).unwrap_or("OK")),
            Poll::Ready(Some(Err(_))) => Some("Unknown"),
            // Ended without trailers: nothing said otherwise.
            Poll::Ready(None) => Some("OK"),
            Poll::Pending => None,
        };
        if let (Some(code), Some(call)) = (code, self.call.as_mut()) {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes_are_named() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(method_of("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(method_of("/runtime.v1.RuntimeService/Nope"), "unknown");
        assert_eq!(method_of("/runtime.v1.RuntimeService/unknown"), "unknown");
        assert_eq!(
            method_of("/runtime.v1alpha2.RuntimeService/Version"),
            "unknown"
        );
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NotFound");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(17), "Unknown");
        assert_eq!(code_name(-1), "Unknown");
    }
}
