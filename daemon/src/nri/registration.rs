//! Plugins joining: the pre-installed ones started from the plugin dir, external ones
//! accepted on the NRI socket, each registered, configured and synchronized with the pods
//! and containers there are; updates and evictions plugins ask for.

use super::*;

impl Nri {
    /// Starts the pre-installed plugins and listens on the NRI socket (when enabled).
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        if !self.cfg.enable {
            tracing::info!("NRI is disabled");
            return Ok(());
        }
        for (idx, base) in self.discover()? {
            let name = berth_nri::plugin_name(&idx, &base);
            let config = match self.plugin_config(&idx, &base) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "NRI plugin not started");
                    continue;
                }
            };
            let started = async {
                let (trunk, child) = plugin::launch(&self.cfg.plugin_path, &idx, &base)?;
                let preset = plugin::Preset {
                    idx: idx.clone(),
                    base: base.clone(),
                    config,
                    child: Some(child),
                };
                let p = plugin::connect(self, trunk, Some(preset)).await?;
                self.synchronize_and_add(Arc::new(p)).await
            };
            match started.await {
                Ok(()) => tracing::info!(plugin = %name, "pre-installed NRI plugin started"),
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "pre-installed NRI plugin failed to start")
                }
            }
        }
        let path = &self.cfg.socket_path;
        if path.as_os_str().is_empty() {
            tracing::info!("NRI: external plugin connections disabled");
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        }
        // A socket another runtime serves is left to it (NRI plugins of that runtime keep
        // working); a stale one is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            tracing::error!(socket = %path.display(), "NRI socket is served by another process: external NRI plugins cannot connect to berthd");
            return Ok(());
        }
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| Error::io(format!("bind NRI socket {}", path.display()), e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        tracing::info!(socket = %path.display(), nri_version = berth_nri::NRI_VERSION, "serving NRI");
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of fds, say: not a reason to spin.
                        tracing::warn!(error = %e, "NRI socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(nri) = me.upgrade() else { return };
                // Plugins register one at a time, as containerd's NRI does.
                match plugin::connect(&nri, conn, None).await {
                    Ok(p) => {
                        let name = p.name();
                        match nri.synchronize_and_add(Arc::new(p)).await {
                            Ok(()) => {
                                tracing::info!(plugin = %name, "NRI plugin connected and synchronized")
                            }
                            Err(e) => {
                                tracing::warn!(plugin = %name, error = %e, "NRI plugin failed to synchronize")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "NRI plugin failed to register"),
                }
            }
        });
        Ok(())
    }

    /// The pre-installed plugins: executables named `IDX-NAME` in the plugin dir.
    pub(super) fn discover(&self) -> Result<Vec<(String, String)>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = &self.cfg.plugin_path;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() || md.permissions().mode() & 0o111 == 0 {
                continue;
            }
            let file = e.file_name().to_string_lossy().into_owned();
            match berth_nri::parse_plugin_name(&file) {
                Ok(p) => found.push(p),
                Err(why) => tracing::warn!(file, why, "NRI plugin dir: not a plugin name"),
            }
        }
        found.sort();
        Ok(found)
    }

    /// A pre-installed plugin's configuration: `IDX-NAME.conf`, else `NAME.conf`.
    pub(super) fn plugin_config(&self, idx: &str, base: &str) -> Result<String> {
        for f in [
            format!("{}.conf", berth_nri::plugin_name(idx, base)),
            format!("{base}.conf"),
        ] {
            let p = self.cfg.plugin_config_path.join(f);
            match std::fs::read_to_string(&p) {
                Ok(t) => return Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
            }
        }
        Ok(String::new())
    }

    /// The pods and containers a synchronizing plugin is told of.
    pub(super) fn snapshot(&self) -> Result<(Vec<api::PodSandbox>, Vec<api::Container>)> {
        let pods = self
            .store
            .pods()?
            .iter()
            .filter(|p| p.op != Some(crate::intent::Op::Run) && !self.is_hidden(&p.id))
            .map(|p| convert::pod(p, &self.default_cgroup_parent))
            .collect();
        let ctrs = self
            .store
            .containers()?
            .iter()
            .filter(|c| c.op != Some(crate::intent::Op::Create) && !self.is_hidden(&c.id))
            .map(|c| convert::container(c, None))
            .collect();
        Ok((pods, ctrs))
    }

    /// Synchronizes a configured plugin with every pod and container, then adds it to
    /// the plugins called from then on; creations wait meanwhile (the sync lock).
    pub(super) async fn synchronize_and_add(&self, p: Arc<Plugin>) -> Result<()> {
        let updates = {
            let _sync = self.sync.write().await;
            let (pods, containers) = self.snapshot()?;
            let req = api::SynchronizeRequest {
                pods,
                containers,
                more: false,
                ..Default::default()
            };
            let rpl = self
                .invoke(&p, "Synchronize", plugin::sync_timeout(self), |ctx| {
                    p.client.synchronize(ctx, &req)
                })
                .await
                .inspect_err(|_| p.close())?;
            let mut list = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
            list.push(p.clone());
            list.sort_by(|a, b| (&a.idx, &a.base).cmp(&(&b.idx, &b.base)));
            tracing::info!(order = ?list.iter().map(|p| p.name()).collect::<Vec<_>>(), "NRI plugin invocation order");
            rpl.update
        };
        if !updates.is_empty() {
            let failed = self.apply_updates(&p.name(), updates, Vec::new()).await;
            if !failed.is_empty() {
                tracing::warn!(plugin = %p.name(), failed = failed.len(), "NRI: updates requested at Synchronize failed");
            }
        }
        Ok(())
    }

    /// Carries out container updates and evictions a plugin asked for; returns the
    /// updates that failed.
    pub async fn apply_updates(
        &self,
        plugin: &str,
        updates: Vec<api::ContainerUpdate>,
        evictions: Vec<api::ContainerEviction>,
    ) -> Vec<api::ContainerUpdate> {
        let host = self.host.get().and_then(Weak::upgrade);
        let mut failed = Vec::new();
        for u in updates {
            let res = match (&host, u.linux.as_ref().and_then(|l| l.resources.as_ref())) {
                (Some(h), Some(r)) => h.update_container(&u.container_id, r).await,
                (None, _) => Err(Error::Internal("no container service".into())),
                (_, None) => Ok(()),
            };
            if let Err(e) = res {
                tracing::warn!(plugin, container_id = %u.container_id, error = %e, "NRI container update failed");
                if !u.ignore_failure {
                    failed.push(u);
                }
            }
        }
        for ev in evictions {
            tracing::info!(plugin, container_id = %ev.container_id, reason = %ev.reason, "NRI plugin evicts a container");
            let res = match &host {
                Some(h) => h.evict_container(&ev.container_id, &ev.reason).await,
                None => Err(Error::Internal("no container service".into())),
            };
            if let Err(e) = res {
                tracing::warn!(plugin, container_id = %ev.container_id, error = %e, "NRI eviction failed");
            }
        }
        failed
    }
}
