//! One NRI plugin: its multiplexed connection, its registration and configuration, and
//! the runtime service it calls (RegisterPlugin, UpdateContainers).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use berth_nri::api;
use berth_nri::api_ttrpc::{PluginClient, Runtime};
use berth_nri::conn::Connection;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use ttrpc::r#async::TtrpcContext;

use super::Nri;
use crate::error::{Error, Result};

/// A registered, configured plugin.
pub struct Plugin {
    pub idx: String,
    pub base: String,
    /// The events it subscribed to (bit `event - 1`).
    pub events: i32,
    pub client: PluginClient,
    conn: Connection,
    /// A pre-installed plugin berthd started (killed when it is closed).
    child: Mutex<Option<tokio::process::Child>>,
    closed: AtomicBool,
}

impl Plugin {
    /// `IDX-NAME`.
    pub fn name(&self) -> String {
        berth_nri::plugin_name(&self.idx, &self.base)
    }

    pub fn subscribed(&self, e: api::Event) -> bool {
        self.events & berth_nri::event_bit(e) != 0
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.conn.mux.is_closed()
    }

    /// Disconnects the plugin (and kills it if berthd started it).
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            tracing::info!(plugin = %self.name(), "NRI plugin disconnected");
        }
        self.conn.close();
        if let Some(c) = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let _ = c.start_kill();
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a plugin says when it registers.
struct Registration {
    name: String,
    idx: String,
    version: String,
}

/// The runtime service of one plugin connection.
struct RuntimeService {
    /// Whether the plugin names itself (an external one) or berthd named it.
    external: bool,
    registered: Mutex<Option<oneshot::Sender<std::result::Result<Registration, String>>>>,
    name: OnceLock<String>,
    nri: Weak<Nri>,
}

fn status(code: ttrpc::Code, msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

#[async_trait::async_trait]
impl Runtime for RuntimeService {
    async fn register_plugin(
        &self,
        _: &TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        let checked = if self.external {
            berth_nri::check_plugin_name(&req.plugin_name)
                .and_then(|()| berth_nri::check_plugin_index(&req.plugin_idx))
        } else {
            Ok(())
        };
        let tx = self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(tx) = tx else {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                "plugin already registered".into(),
            ));
        };
        match checked {
            Ok(()) => {
                let _ = tx.send(Ok(Registration {
                    name: req.plugin_name,
                    idx: req.plugin_idx,
                    version: req.NRI_version,
                }));
                Ok(api::Empty::new())
            }
            Err(e) => {
                let _ = tx.send(Err(e.clone()));
                Err(status(ttrpc::Code::INVALID_ARGUMENT, e))
            }
        }
    }

    async fn update_containers(
        &self,
        _: &TtrpcContext,
        req: api::UpdateContainersRequest,
    ) -> ttrpc::Result<api::UpdateContainersResponse> {
        let Some(nri) = self.nri.upgrade() else {
            return Err(status(
                ttrpc::Code::UNAVAILABLE,
                "berthd is stopping".into(),
            ));
        };
        let name = self.name.get().cloned().unwrap_or_default();
        tracing::info!(plugin = %name, updates = req.update.len(), evictions = req.evict.len(), "NRI plugin requested container updates");
        let failed = nri.apply_updates(&name, req.update, req.evict).await;
        Ok(api::UpdateContainersResponse {
            failed,
            ..Default::default()
        })
    }
}

/// How berthd knows a plugin before it registers: a pre-installed one by its file name
/// and configuration, an external one not at all.
pub struct Preset {
    pub idx: String,
    pub base: String,
    pub config: String,
    pub child: Option<tokio::process::Child>,
}

/// Takes a plugin through registration and configuration on its connection `trunk`.
pub async fn connect(
    nri: &Arc<Nri>,
    trunk: UnixStream,
    mut preset: Option<Preset>,
) -> Result<Plugin> {
    let (tx, rx) = oneshot::channel();
    let svc = Arc::new(RuntimeService {
        external: preset.is_none(),
        registered: Mutex::new(Some(tx)),
        name: OnceLock::new(),
        nri: Arc::downgrade(nri),
    });
    let (conn, client) = berth_nri::conn::runtime_side(trunk, svc.clone())
        .await
        .map_err(|e| Error::Internal(format!("NRI connection: {e}")))?;
    let reg_timeout = nri.registration_timeout();
    let closed = conn.mux.closed();
    let reg = tokio::select! {
        r = rx => r.map_err(|_| Error::Internal("NRI plugin registration: no answer".into()))?
            .map_err(|e| Error::InvalidArgument(format!("NRI plugin registration refused: {e}")))?,
        () = closed => return Err(Error::Internal("NRI plugin closed its connection before registering".into())),
        () = tokio::time::sleep(reg_timeout) => {
            conn.close();
            return Err(Error::DeadlineExceeded(format!(
                "NRI plugin did not register within {} ms", reg_timeout.as_millis()
            )));
        }
    };
    let (idx, base, config, child) = match preset.take() {
        Some(p) => (p.idx, p.base, p.config, p.child),
        None => (reg.idx, reg.name, String::new(), None),
    };
    let full = berth_nri::plugin_name(&idx, &base);
    let _ = svc.name.set(full.clone());
    let version = if reg.version.is_empty() {
        "unknown"
    } else {
        &reg.version
    };
    tracing::info!(plugin = %full, nri_version = version, "NRI plugin registered");
    let mut plugin = Plugin {
        idx,
        base,
        events: 0,
        client,
        conn,
        child: Mutex::new(child),
        closed: AtomicBool::new(false),
    };
    let req = api::ConfigureRequest {
        config,
        runtime_name: "berthd".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        registration_timeout: reg_timeout.as_millis() as i64,
        request_timeout: nri.request_timeout().as_millis() as i64,
        NRI_version: berth_nri::NRI_VERSION.into(),
        ..Default::default()
    };
    let rpl = nri
        .invoke(&plugin, "Configure", nri.request_timeout(), |ctx| {
            plugin.client.configure(ctx, &req)
        })
        .await?;
    let events = if rpl.events == 0 {
        berth_nri::valid_events()
    } else {
        rpl.events
    };
    if events & !berth_nri::valid_events() != 0 {
        plugin.close();
        return Err(Error::InvalidArgument(format!(
            "NRI plugin {full} subscribed to unknown events (0x{:x})",
            events & !berth_nri::valid_events()
        )));
    }
    plugin.events = events;
    Ok(plugin)
}

/// Starts the pre-installed plugin `dir/IDX-NAME` with its end of a socket pair as fd 3
/// (NRI_PLUGIN_SOCKET=3), and returns berthd's end.
pub fn launch(dir: &Path, idx: &str, base: &str) -> Result<(UnixStream, tokio::process::Child)> {
    let path = dir.join(berth_nri::plugin_name(idx, base));
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::io("NRI plugin socket pair", e))?;
    let theirs: OwnedFd = theirs.into();
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&path);
    cmd.env_clear()
        .env(berth_nri::PLUGIN_NAME_ENV, base)
        .env(berth_nri::PLUGIN_IDX_ENV, idx)
        .env(berth_nri::PLUGIN_SOCKET_ENV, "3")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("start NRI plugin {}", path.display()), e))?;
    drop(theirs);
    ours.set_nonblocking(true)
        .map_err(|e| Error::io("NRI plugin socket", e))?;
    let ours = UnixStream::from_std(ours).map_err(|e| Error::io("NRI plugin socket", e))?;
    Ok((ours, child))
}

/// How long a Synchronize may take at most: the registration timeout (a plugin's
/// registration is not complete before it has synchronized).
pub fn sync_timeout(nri: &Nri) -> Duration {
    nri.registration_timeout()
}
