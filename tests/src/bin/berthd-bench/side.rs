//! One runtime under test seen through the CRI client: its pods (tracked for teardown,
//! also on error), the pod and container configs both runtimes get, and the timed calls.

use super::*;

/// Label on every pod the bench creates; its value is the run id (teardown finds them by it).
pub(crate) const RUN_LABEL: &str = "berthd-bench.run";

/// The figures of one runtime.
#[derive(Default)]
pub(crate) struct Figures {
    /// Milliseconds per call pair.
    pub(crate) run_pod: Vec<f64>,
    pub(crate) create_start: Vec<f64>,
    pub(crate) stop_remove: Vec<f64>,
    /// VmRSS of the daemon, kB.
    pub(crate) rss_idle: Option<u64>,
    pub(crate) rss_many: Option<u64>,
    pub(crate) restart_small: Option<Ready>,
    pub(crate) restart_big: Option<Ready>,
    /// PullImage of the small image, ms each.
    pub(crate) pull_small: Vec<f64>,
    /// PullImage of the small image while it is present, ms each.
    pub(crate) pull_present: Vec<f64>,
    /// PullImage of the big image, with the daemon's memory during it.
    pub(crate) pull_big: Vec<pull::BigPull>,
    /// ExecSync and streaming Exec of `true`, ms each; port-forward downloads, MB/s.
    pub(crate) exec_sync: Vec<f64>,
    pub(crate) exec_stream: Vec<f64>,
    pub(crate) pf_mbps: Vec<f64>,
    /// The parallel phase (load.rs).
    pub(crate) load: load::LoadFigures,
    /// At `plan.big` pods (scale.rs).
    pub(crate) scale: scale::ScaleFigures,
}

/// One runtime: a CRI client on its socket, the daemon behind it and its pods.
pub(crate) struct Side {
    /// Column index in the report (0 berthd, 1 containerd).
    pub(crate) col: usize,
    pub(crate) socket: String,
    pub(crate) rs: Rt,
    pub(crate) image: String,
    pub(crate) daemon: Daemon,
    /// Parent of the pods' log directories.
    pub(crate) logs: PathBuf,
    pub(crate) run: String,
    /// Live pods this bench created, oldest first.
    pub(crate) pods: Vec<String>,
    pub(crate) fig: Figures,
    /// The first failure; a failed side sits out every later phase.
    pub(crate) error: Option<anyhow::Error>,
    seq: usize,
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Side {
    pub(crate) fn new(col: usize, socket: &str, rs: Rt, image: &str, daemon: Daemon) -> Side {
        Side {
            col,
            socket: socket.into(),
            rs,
            image: image.into(),
            daemon,
            logs: PathBuf::new(),
            run: String::new(),
            pods: Vec::new(),
            fig: Figures::default(),
            error: None,
            seq: 0,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        column(self.col)
    }

    pub(crate) fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Keeps the first error (with what was being done) and turns `r` into an Option.
    pub(crate) fn note<T>(&mut self, what: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("[bench] {} failed: {what}: {e:#}", self.name());
                if self.error.is_none() {
                    self.error = Some(e.context(what.to_string()));
                }
                None
            }
        }
    }

    /// A pod-network pod as kubelet would send it (pid namespace per container).
    fn pod_cfg(&self, name: &str) -> Result<cri::PodSandboxConfig> {
        let logs = self.logs.join(name);
        std::fs::create_dir_all(&logs)?;
        let mut cfg = pod_config(name, &logs);
        if let Some(md) = cfg.metadata.as_mut() {
            md.namespace = "berthd-bench".into();
            md.uid = format!("{}-{name}", self.run);
        }
        cfg.hostname = name.into();
        cfg.labels.insert(RUN_LABEL.into(), self.run.clone());
        let ns = berth_tests::cri::ns_options(&mut cfg);
        ns.network = cri::NamespaceMode::Pod as i32;
        ns.pid = cri::NamespaceMode::Container as i32;
        Ok(cfg)
    }

    /// The next pod's name and config (its log dir made).
    pub(crate) fn next_pod(&mut self) -> Result<(String, cri::PodSandboxConfig)> {
        self.seq += 1;
        let name = format!("bb{}-{}", self.run, self.seq);
        let cfg = self.pod_cfg(&name)?;
        Ok((name, cfg))
    }

    /// RunPodSandbox, timed; the id is tracked for teardown at once.
    pub(crate) async fn run_pod(&mut self) -> Result<(String, cri::PodSandboxConfig, Duration)> {
        let (name, cfg) = self.next_pod()?;
        let t0 = Instant::now();
        let id = self
            .rs
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id;
        let took = t0.elapsed();
        self.pods.push(id.clone());
        Ok((id, cfg, took))
    }

    /// CreateContainer + StartContainer of one `sleep 3600`, timed together.
    pub(crate) async fn start_sleeper(
        &mut self,
        pod: &str,
        cfg: &cri::PodSandboxConfig,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        let id = self
            .rs
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(container_config("sleeper", &self.image, &["sleep", "3600"])),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .with_context(|| format!("CreateContainer in {pod}"))?
            .into_inner()
            .container_id;
        self.rs
            .start_container(cri::StartContainerRequest { container_id: id })
            .await
            .with_context(|| format!("StartContainer in {pod}"))?;
        Ok(t0.elapsed())
    }

    /// StopPodSandbox + RemovePodSandbox, timed together.
    pub(crate) async fn remove_pod(&mut self, id: &str) -> Result<Duration> {
        let t0 = Instant::now();
        self.rs
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        self.rs
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        let took = t0.elapsed();
        self.pods.retain(|p| p != id);
        Ok(took)
    }

    /// One round: a pod, its container, and the pod's removal; the three times in ms.
    pub(crate) async fn round(&mut self) -> Result<(f64, f64, f64)> {
        let (id, cfg, run) = self.run_pod().await?;
        let cs = self.start_sleeper(&id, &cfg).await?;
        let sr = self.remove_pod(&id).await?;
        Ok((ms(run), ms(cs), ms(sr)))
    }

    /// Adds one pod with its sleeping container (untimed).
    pub(crate) async fn add_pod(&mut self) -> Result<()> {
        let (id, cfg, _) = self.run_pod().await?;
        self.start_sleeper(&id, &cfg).await?;
        Ok(())
    }

    /// Removes the newest pod (untimed).
    pub(crate) async fn drop_pod(&mut self) -> Result<()> {
        if let Some(id) = self.pods.last().cloned() {
            self.remove_pod(&id).await?;
        }
        Ok(())
    }

    /// This run's pods as the runtime lists them.
    pub(crate) async fn listed(&mut self) -> Result<Vec<cri::PodSandbox>> {
        Ok(list_run_pods(&mut self.rs, &self.run).await?)
    }

    /// Stops and removes every pod of this run: the tracked ones and any the runtime lists
    /// under the run label (a call cut by an error may have created one we have no id of).
    pub(crate) async fn teardown(&mut self) -> Result<usize> {
        let mut ids = self.pods.clone();
        // After a failed restart the old channel may be dead: a fresh connection.
        if let Ok((rs, _)) = connect(&self.socket).await {
            self.rs = rs;
        }
        match self.listed().await {
            Ok(listed) => ids.extend(listed.into_iter().map(|p| p.id)),
            Err(e) => eprintln!("[bench] {}: ListPodSandbox: {e:#}", self.name()),
        }
        ids.sort();
        ids.dedup();
        let mut first_err = None;
        for id in &ids {
            if let Err(e) = self.remove_pod(id).await {
                eprintln!("[bench] {}: teardown: {e:#}", self.name());
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(ids.len()),
        }
    }
}

/// ListPodSandbox filtered by this run's label.
pub(crate) async fn list_run_pods(
    rs: &mut Rt,
    run: &str,
) -> std::result::Result<Vec<cri::PodSandbox>, tonic::Status> {
    let filter = cri::PodSandboxFilter {
        label_selector: [(RUN_LABEL.to_string(), run.to_string())].into(),
        ..Default::default()
    };
    Ok(rs
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items)
}
