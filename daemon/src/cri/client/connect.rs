//! Connecting both CRI services over a unix socket (tonic over a `UnixStream`; the URI
//! tonic wants is a placeholder, the connector dials the socket).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{ImageServiceClient, RuntimeServiceClient};

/// The runtime service client.
pub type Rs = RuntimeServiceClient<Channel>;
/// The image service client.
pub type Is = ImageServiceClient<Channel>;

/// Bound for one CRI call made through [`connect`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dialing the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket path of an endpoint: `unix:///path` or a plain absolute path. Anything
/// else (tcp://, npipe://, a relative path) is refused with what is accepted.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        bail!("endpoint {endpoint:?}: only unix sockets are supported, as unix:///path/to/socket or /path/to/socket");
    }
    Ok(PathBuf::from(path))
}

/// Connects both services to the socket at `address`, each call bounded by
/// [`CALL_TIMEOUT`] (the black-box suites' client).
pub async fn connect(address: &str) -> Result<(Rs, Is)> {
    connect_endpoint(address, Some(CALL_TIMEOUT)).await
}

/// Connects both services to `endpoint` (see [`socket_path`]); `timeout` bounds each
/// call's wait for its answer (None: callers bound them, as a pull or an event stream
/// may rightly take long).
pub async fn connect_endpoint(endpoint: &str, timeout: Option<Duration>) -> Result<(Rs, Is)> {
    let path = socket_path(endpoint)?;
    if !tokio::fs::try_exists(&path).await.unwrap_or(true) {
        bail!(
            "no CRI socket at {} (is the runtime running?)",
            path.display()
        );
    }
    let mut ep = Endpoint::try_from("http://[::]:50051")?.connect_timeout(CONNECT_TIMEOUT);
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    let dial = path.clone();
    let channel = ep
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = dial.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .with_context(|| format!("connect to the CRI socket {}", path.display()))?;
    Ok((
        RuntimeServiceClient::new(channel.clone()),
        ImageServiceClient::new(channel),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets() {
        assert_eq!(
            socket_path("unix:///run/berth/berth.sock").unwrap(),
            PathBuf::from("/run/berth/berth.sock")
        );
        assert_eq!(
            socket_path("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        let e = socket_path("tcp://127.0.0.1:1234").unwrap_err().to_string();
        assert!(e.contains("only unix sockets"), "{e}");
        assert!(socket_path("unix://relative").is_err());
    }
}
