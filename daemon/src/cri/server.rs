//! The CRI endpoint: a unix socket (mode 0660, root and the configured group) serving the
//! RuntimeService until SIGTERM/SIGINT, which stops serving and leaves every pod running.
//! Every call passes the metrics layer; systemd hears READY=1 once the server is polled
//! and STOPPING=1 at the signal.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use berth_cri::v1::image_service_server::ImageServiceServer;
use berth_cri::v1::runtime_service_server::RuntimeServiceServer;
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
    // Bound inside a fresh private dir (mkdtemp: 0700, random name) next to the socket,
    // given its mode and group there, then renamed into place: no other user can connect
    // during the moment a freshly bound socket has the umask's mode.
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = nix::unistd::mkdtemp(&dir.join(".berth-sock-XXXXXX"))
        .map_err(|e| Error::io(format!("mkdtemp in {}", dir.display()), e.into()))?;
    let _tmp_gone = crate::util::RemoveOnDrop::dir(tmp.clone());
    let staged = tmp.join("sock");
    let l = UnixListener::bind(&staged)
        .map_err(|e| Error::io(format!("bind {}", path.display()), e))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    if !group.is_empty() {
        let g = nix::unistd::Group::from_name(group)
            .map_err(|e| Error::Config(format!("group {group}: {e}")))?
            .ok_or_else(|| Error::Config(format!("group {group:?} does not exist")))?;
        nix::unistd::chown(&staged, None, Some(g.gid))
            .map_err(|e| Error::Config(format!("chown socket: {e}")))?;
    }
    std::fs::rename(&staged, path)
        .map_err(|e| Error::io(format!("place {}", path.display()), e))?;
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

/// How long a SIGTERM waits for open calls (GetContainerEvents streams, pulls) before
/// berthd exits anyway: well under systemd's stop timeout, so a stop or restart never
/// ends in a SIGKILL. The pods keep running either way.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        // Every call counted and timed by method and code, here and nowhere else.
        .layer(core.metrics.cri_layer())
        .add_service(RuntimeServiceServer::new(runtime))
        .add_service(ImageServiceServer::new(images))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    // Told once the server has been polled (it accepts from then on); never ends.
    let ready = async {
        crate::systemd::ready().await;
        std::future::pending::<std::convert::Infallible>().await
    };
    let res = tokio::select! {
        // In this order: the server starts accepting before systemd hears READY=1.
        biased;
        r = &mut server => r,
        never = ready => match never {},
        _ = shutdown_signal() => {
            crate::systemd::stopping().await;
            // Stop accepting, let open calls finish, but not for longer than the grace:
            // an event subscriber (kubelet's evented PLEG) never ends its call itself.
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "calls still open after the grace: ended");
                    Ok(())
                }
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    res.map_err(|e| Error::Internal(format!("CRI server: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn the_socket_appears_with_its_mode_and_nothing_else_is_left() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("berth.sock");
        let l = bind(&path, "").unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o660);
        assert_eq!(names(d.path()), ["berth.sock"], "the staging dir is gone");
        // The listener answers at the final path.
        let c = tokio::net::UnixStream::connect(&path);
        let (c, a) = tokio::join!(c, l.accept());
        assert!(c.is_ok() && a.is_ok());
        // A live socket is another berthd's.
        let e = bind(&path, "").unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        drop(l);
        // A stale one is replaced.
        bind(&path, "").unwrap();
        assert_eq!(names(d.path()), ["berth.sock"]);
    }
}
