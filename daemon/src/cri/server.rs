//! The CRI endpoint: a unix socket (mode 0660, root and the configured group) serving the
//! RuntimeService until SIGTERM/SIGINT, which stops serving and leaves every pod running.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::core::Core;
use crate::error::{Error, Result};

/// Binds the socket: a stale socket file is replaced, a live one (another berthd) refused.
pub fn bind(path: &Path, group: &str) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::FailedPrecondition(format!(
                "{} is served by another process",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("remove stale {}", path.display()), e))?;
    }
    let l =
        UnixListener::bind(path).map_err(|e| Error::io(format!("bind {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    if !group.is_empty() {
        let g = nix::unistd::Group::from_name(group)
            .map_err(|e| Error::Config(format!("group {group}: {e}")))?
            .ok_or_else(|| Error::Config(format!("group {group:?} does not exist")))?;
        nix::unistd::chown(path, None, Some(g.gid))
            .map_err(|e| Error::Config(format!("chown socket: {e}")))?;
    }
    Ok(l)
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the CRI server; pods keep running"),
        _ = int.recv() => tracing::info!("SIGINT: stopping the CRI server; pods keep running"),
    }
}

pub async fn serve(
    core: Arc<Core>,
    streaming: Arc<crate::stream::Streaming>,
    listener: UnixListener,
) -> Result<()> {
    let path = core.config.server.socket.clone();
    tracing::info!(socket = %path.display(), "serving CRI");
    let runtime = crate::cri::runtime_service::Service {
        core: core.clone(),
        streaming,
    };
    let images = crate::cri::image_service::Service { core: core.clone() };
    let res = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(runtime))
        .add_service(ImageServiceServer::new(images))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&path);
    res.map_err(|e| Error::Internal(format!("CRI server: {e}")))
}
