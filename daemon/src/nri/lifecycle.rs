//! The lifecycle hooks: each pod and container event fanned out to the plugins that
//! subscribed to it, in index order, bounded by the request timeout.

use super::*;

impl Nri {
    /// Calls every plugin subscribed to `event`, in order; the first failure ends it.
    pub(super) async fn fan_out<T, F, Fut>(
        &self,
        event: api::Event,
        what: &str,
        call: F,
    ) -> Result<Vec<(String, T)>>
    where
        F: Fn(Arc<Plugin>, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        let mut out = Vec::new();
        if !self.cfg.enable {
            return Ok(out);
        }
        for p in self.active() {
            if !p.subscribed(event) {
                continue;
            }
            let q = p.clone();
            let v = self
                .invoke(&p, what, self.request_timeout(), |ctx| call(q, ctx))
                .await?;
            out.push((p.name(), v));
        }
        Ok(out)
    }

    /// A notification: failures are logged, never returned.
    pub(super) async fn notify<T, F, Fut>(&self, event: api::Event, what: &str, id: &str, call: F)
    where
        F: Fn(Arc<Plugin>, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        if let Err(e) = self.fan_out(event, what, call).await {
            tracing::warn!(id, error = %e, "NRI {what} notification failed");
        }
    }

    pub(super) fn pod(&self, rec: &PodRecord) -> api::PodSandbox {
        convert::pod(rec, &self.default_cgroup_parent)
    }

    /// RunPodSandbox's hook: the pod is running, not yet Ready. An error fails (and so
    /// undoes) the RunPodSandbox.
    pub async fn run_pod_sandbox(&self, rec: &PodRecord) -> Result<()> {
        let req = api::RunPodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            ..Default::default()
        };
        self.fan_out(api::Event::RUN_POD_SANDBOX, "RunPodSandbox", |p, ctx| {
            let req = req.clone();
            async move { p.client.run_pod_sandbox(ctx, &req).await }
        })
        .await
        .map(drop)
    }

    /// UpdatePodSandboxResources' hook, before the pod's new resources are recorded:
    /// an error fails the call.
    pub async fn update_pod_sandbox(
        &self,
        rec: &PodRecord,
        overhead: Option<&Resources>,
        resources: Option<&Resources>,
    ) -> Result<()> {
        // As creations: a plugin synchronizing now is asked too, once it is added.
        let _sync = self.block_sync().await;
        let some = |r: Option<&Resources>| match r {
            Some(r) => protobuf::MessageField::some(convert::resources(r)),
            None => protobuf::MessageField::none(),
        };
        let req = api::UpdatePodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            overhead_linux_resources: some(overhead),
            linux_resources: some(resources),
            ..Default::default()
        };
        self.fan_out(
            api::Event::UPDATE_POD_SANDBOX,
            "UpdatePodSandbox",
            |p, ctx| {
                let req = req.clone();
                async move { p.client.update_pod_sandbox(ctx, &req).await }
            },
        )
        .await
        .map(drop)
    }

    /// The pod's new resources are recorded.
    pub async fn post_update_pod_sandbox(&self, rec: &PodRecord) {
        let req = api::PostUpdatePodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_UPDATE_POD_SANDBOX,
            "PostUpdatePodSandbox",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.post_update_pod_sandbox(ctx, &req).await }
            },
        )
        .await
    }

    /// StopPodSandbox's: its containers are stopped, its infra still there.
    pub async fn stop_pod_sandbox(&self, rec: &PodRecord) {
        let req = api::StopPodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            ..Default::default()
        };
        self.notify(
            api::Event::STOP_POD_SANDBOX,
            "StopPodSandbox",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.stop_pod_sandbox(ctx, &req).await }
            },
        )
        .await
    }

    pub async fn remove_pod_sandbox(&self, rec: &PodRecord) {
        let req = api::RemovePodSandboxRequest {
            pod: protobuf::MessageField::some(self.pod(rec)),
            ..Default::default()
        };
        self.notify(
            api::Event::REMOVE_POD_SANDBOX,
            "RemovePodSandbox",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.remove_pod_sandbox(ctx, &req).await }
            },
        )
        .await
    }

    /// CreateContainer's hook: each plugin in order may adjust the container (applied to
    /// `spec` at once: the next plugin sees the container adjusted) and update or evict
    /// others (carried out once every plugin has answered). An error fails the create.
    pub async fn create_container(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
        spec: &mut oci_spec::runtime::Spec,
    ) -> Result<()> {
        if !self.cfg.enable || (self.active().is_empty() && !self.validating()) {
            return Ok(());
        }
        let mut json: Value =
            serde_json::to_value(&*spec).map_err(|e| Error::Internal(format!("spec: {e}")))?;
        let mut owners = adjust::Owners::default();
        let mut updates = Vec::new();
        let mut evictions = Vec::new();
        let pod_msg = self.pod(pod);
        let plugins = self.active();
        // What validators are shown: the container as asked for, every plugin consulted,
        // all adjustments merged (NRI's merged CreateContainerResponse).
        let mut validation = api::ValidateContainerAdjustmentRequest {
            pod: protobuf::MessageField::some(pod_msg.clone()),
            container: protobuf::MessageField::some(convert::container(rec, Some(&json))),
            ..Default::default()
        };
        let mut merged = api::ContainerAdjustment::new();
        let mut adjusted = false;
        let caps = self.runtime_caps().await;
        let mut cdi = Vec::new();
        for p in &plugins {
            validation.plugins.push(api::PluginInstance {
                name: p.base.clone(),
                index: p.idx.clone(),
                ..Default::default()
            });
            if !p.subscribed(api::Event::CREATE_CONTAINER) {
                continue;
            }
            self.announced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rec.id.clone());
            let req = api::CreateContainerRequest {
                pod: protobuf::MessageField::some(pod_msg.clone()),
                container: protobuf::MessageField::some(convert::container(rec, Some(&json))),
                ..Default::default()
            };
            let rpl = self
                .invoke(p, "CreateContainer", self.request_timeout(), |ctx| {
                    p.client.create_container(ctx, &req)
                })
                .await?;
            if let Some(a) = rpl.adjust.as_ref() {
                adjust::apply(&mut json, a, &p.name(), &mut owners, caps)?;
                adjust::merge(&mut merged, a);
                cdi.extend(a.CDI_devices.iter().map(|d| d.name.clone()));
                adjusted = true;
            }
            validation.update.extend(rpl.update.iter().cloned());
            updates.extend(rpl.update.into_iter().map(|u| (p.name(), u)));
            evictions.extend(rpl.evict.into_iter().map(|e| (p.name(), e)));
        }
        if self.validating() {
            validation.adjust = protobuf::MessageField::some(merged);
            validation.owners = protobuf::MessageField::some(owners.to_proto(&rec.id));
            self.validate(validation, &owners).await?;
        }
        if !cdi.is_empty() {
            // The CDI spec dirs are read: off the async workers.
            let reg = self.cdi.clone();
            json = tokio::task::spawn_blocking(move || reg.inject(&cdi, &mut json).map(|()| json))
                .await
                .map_err(|e| Error::Internal(format!("CDI: {e}")))?
                .map_err(|e| Error::FailedPrecondition(format!("NRI plugins' CDI devices: {e}")))?;
        }
        if adjusted {
            *spec = serde_json::from_value(json).map_err(|e| {
                Error::InvalidArgument(format!(
                    "NRI plugins' adjustments make an invalid OCI spec: {e}"
                ))
            })?;
        }
        for (plugin, u) in updates {
            if u.container_id == rec.id {
                continue;
            }
            let failed = self.apply_updates(&plugin, vec![u], Vec::new()).await;
            if let Some(f) = failed.first() {
                return Err(Error::FailedPrecondition(format!(
                    "NRI plugin {plugin}: updating container {} failed",
                    f.container_id
                )));
            }
        }
        for (plugin, e) in evictions {
            self.apply_updates(&plugin, Vec::new(), vec![e]).await;
        }
        Ok(())
    }

    /// A creation that failed after plugins were told of it (by CreateContainer): they
    /// hear RemoveContainer, so what they set aside for it can go (containerd's undo).
    pub async fn undo_create_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        let told = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.id);
        if told {
            self.remove_container(Some(pod), rec).await;
        }
    }

    pub(super) fn ctr_req(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
    ) -> (api::PodSandbox, api::Container) {
        (self.pod(pod), convert::container(rec, None))
    }

    pub async fn post_create_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.id);
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::PostCreateContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_CREATE_CONTAINER,
            "PostCreateContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.post_create_container(ctx, &req).await }
            },
        )
        .await
    }

    /// StartContainer's hook, before the process starts: an error fails the start (the
    /// container stays Created).
    /// The plugins' StartContainer; the guard returned is held until PostStartContainer
    /// was sent (or the start failed), and the container's StopContainer waits for it.
    pub async fn start_container(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
    ) -> Result<super::Starting<'_>> {
        let mut starting = super::Starting {
            nri: self,
            id: rec.id.clone(),
            done: None,
        };
        if !self.cfg.enable {
            return Ok(starting);
        }
        let (tx, rx) = watch::channel(false);
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), rx);
        starting.done = Some(tx);
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::StartContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.fan_out(api::Event::START_CONTAINER, "StartContainer", |p, ctx| {
            let req = req.clone();
            async move { p.client.start_container(ctx, &req).await }
        })
        .await
        .map(|_| starting)
    }

    pub async fn post_start_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::PostStartContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_START_CONTAINER,
            "PostStartContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.post_start_container(ctx, &req).await }
            },
        )
        .await
    }

    /// UpdateContainerResources' hook: plugins may change the resources asked for (their
    /// update of this container wins) and update others. Returns the resources to apply.
    pub async fn update_container(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
        asked: &Resources,
    ) -> Result<Resources> {
        if !self.cfg.enable {
            return Ok(asked.clone());
        }
        // As creations: a plugin synchronizing now is asked too, once it is added (a
        // plugin that has seen the container in its Synchronize must see its update).
        let _sync = self.block_sync().await;
        if self.active().is_empty() {
            return Ok(asked.clone());
        }
        let (pod_msg, ctr) = self.ctr_req(pod, rec);
        let req = api::UpdateContainerRequest {
            pod: protobuf::MessageField::some(pod_msg),
            container: protobuf::MessageField::some(ctr),
            linux_resources: protobuf::MessageField::some(convert::resources(asked)),
            ..Default::default()
        };
        let answers = self
            .fan_out(api::Event::UPDATE_CONTAINER, "UpdateContainer", |p, ctx| {
                let req = req.clone();
                async move { p.client.update_container(ctx, &req).await }
            })
            .await?;
        let mut res = asked.clone();
        for (plugin, a) in answers {
            for u in a.update {
                if u.container_id == rec.id {
                    if let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                        res = convert::merge_resources(&res, r);
                    }
                } else {
                    self.apply_updates(&plugin, vec![u], Vec::new()).await;
                }
            }
            self.apply_updates(&plugin, Vec::new(), a.evict).await;
        }
        Ok(res)
    }

    pub async fn post_update_container(&self, pod: &PodRecord, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        let (pod, ctr) = self.ctr_req(pod, rec);
        let req = api::PostUpdateContainerRequest {
            pod: protobuf::MessageField::some(pod),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_UPDATE_CONTAINER,
            "PostUpdateContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.post_update_container(ctx, &req).await }
            },
        )
        .await
    }

    /// A container has stopped (whoever learnt it first): StopContainer goes to the
    /// plugins in the background; [`Nri::stopped`] waits for it.
    pub fn container_stopped(self: &Arc<Self>, id: &str) {
        if !self.cfg.enable || self.active().is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tx, rx) = watch::channel(false);
        self.stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), rx);
        let me = self.clone();
        let id = id.to_string();
        let starting = me
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        rt.spawn(async move {
            // A container that exits as it starts: its PostStartContainer goes first
            // (bounded: a plugin answers within its timeout or is disconnected).
            if let Some(mut rx) = starting {
                let bound = std::time::Duration::from_millis(me.cfg.request_timeout_ms * 2 + 1000);
                let _ = tokio::time::timeout(bound, rx.wait_for(|d| *d)).await;
            }
            me.stop_container(&id).await;
            let _ = tx.send(true);
            me.stops
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    pub(super) async fn stop_container(&self, id: &str) {
        let Ok(rec) = self.store.container(id) else {
            return;
        };
        let Ok(pod) = self.store.pod(&rec.pod_id) else {
            return;
        };
        let (pod_msg, ctr) = self.ctr_req(&pod, &rec);
        let req = api::StopContainerRequest {
            pod: protobuf::MessageField::some(pod_msg),
            container: protobuf::MessageField::some(ctr),
            ..Default::default()
        };
        match self
            .fan_out(api::Event::STOP_CONTAINER, "StopContainer", |p, ctx| {
                let req = req.clone();
                async move { p.client.stop_container(ctx, &req).await }
            })
            .await
        {
            Ok(answers) => {
                for (plugin, a) in answers {
                    let failed = self.apply_updates(&plugin, a.update, Vec::new()).await;
                    if !failed.is_empty() {
                        tracing::warn!(plugin, "NRI: updates requested at StopContainer failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(container_id = id, error = %e, "NRI StopContainer notification failed")
            }
        }
    }

    /// Waits until the StopContainer notification of `id` (if one is under way) is done.
    pub async fn stopped(&self, id: &str) {
        let rx = self
            .stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    pub async fn remove_container(&self, pod: Option<&PodRecord>, rec: &ContainerRecord) {
        if !self.cfg.enable {
            return;
        }
        self.stopped(&rec.id).await;
        let pod_msg = match pod {
            Some(p) => self.pod(p),
            None => api::PodSandbox {
                id: rec.pod_id.clone(),
                ..Default::default()
            },
        };
        let req = api::RemoveContainerRequest {
            pod: protobuf::MessageField::some(pod_msg),
            container: protobuf::MessageField::some(convert::container(rec, None)),
            ..Default::default()
        };
        self.notify(
            api::Event::REMOVE_CONTAINER,
            "RemoveContainer",
            &rec.id,
            |p, ctx| {
                let req = req.clone();
                async move { p.client.remove_container(ctx, &req).await }
            },
        )
        .await
    }
}
