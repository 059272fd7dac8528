//! Phases 2 and 3: pods through containerd's CRI plugin.

use super::*;

pub(crate) type Rt = cri::RuntimeServiceClient<tonic::transport::Channel>;

/// RunPodSandbox with `w`'s handler; the id is remembered for teardown at once.
pub(crate) async fn run_pod(ctx: &Ctx, rt: &mut Rt, w: Which, name: &str) -> Result<String> {
    let pod = pod_config(name, &ctx.logs);
    let id = rt
        .run_pod_sandbox(criapi::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: w.handler().into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name} (handler {})", w.handler()))?
        .into_inner()
        .pod_sandbox_id;
    ctx.remember_pod(&id);
    Ok(id)
}

/// CreateContainer + StartContainer of a sleeping busybox in pod `sandbox` (named `pod_name`).
pub(crate) async fn add_container(
    ctx: &Ctx,
    rt: &mut Rt,
    sandbox: &str,
    pod_name: &str,
    name: &str,
) -> Result<String> {
    let id = rt
        .create_container(criapi::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(container_config(name, BUSYBOX_IMAGE, &["sleep", "3600"])),
            sandbox_config: Some(pod_config(pod_name, &ctx.logs)),
        })
        .await
        .with_context(|| format!("CreateContainer {name} in {pod_name}"))?
        .into_inner()
        .container_id;
    ctx.inst.track_key(&id);
    rt.start_container(criapi::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .with_context(|| format!("StartContainer {name} in {pod_name}"))?;
    Ok(id)
}

pub(crate) async fn remove_pod(ctx: &Ctx, rt: &mut Rt, id: &str) -> Result<()> {
    rt.stop_pod_sandbox(criapi::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .with_context(|| format!("StopPodSandbox {id}"))?;
    rt.remove_pod_sandbox(criapi::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .with_context(|| format!("RemovePodSandbox {id}"))?;
    ctx.forget_pod(id);
    Ok(())
}

/// The one shim of `w` (there must be exactly one), read after `SETTLE`.
pub(crate) async fn single_shim_mem(ctx: &Ctx, w: Which) -> Result<Mem> {
    tokio::time::sleep(SETTLE).await;
    let pids = ctx.shim_pids(w);
    ensure!(
        pids.len() == 1,
        "expected exactly one {} shim process for the pod, found pids {pids:?}",
        w.label()
    );
    mem_of(pids[0])
}

/// One pod per shim: sandbox + 1 container, then + 2 more (3 containers). Returns the shim's
/// memory at 1 and at 3 containers.
pub(crate) async fn one_pod(ctx: &Ctx, w: Which) -> Result<(Mem, Mem)> {
    let (mut rt, _) = cri::connect(&ctx.inst.address).await?;
    let name = format!("single-{}", w.handler());
    let sb = run_pod(ctx, &mut rt, w, &name).await?;
    let res: Result<(Mem, Mem)> = async {
        add_container(ctx, &mut rt, &sb, &name, "c1").await?;
        let m1 = single_shim_mem(ctx, w).await?;
        add_container(ctx, &mut rt, &sb, &name, "c2").await?;
        add_container(ctx, &mut rt, &sb, &name, "c3").await?;
        let m3 = single_shim_mem(ctx, w).await?;
        Ok((m1, m3))
    }
    .await;
    let down = remove_pod(ctx, &mut rt, &sb).await;
    let r = res?;
    down?;
    Ok(r)
}

pub(crate) struct PodsFigure {
    pub(crate) pods: usize,
    pub(crate) shims: usize,
    pub(crate) total: Mem,
    pub(crate) up: Duration,
    pub(crate) down: Duration,
}

/// `n` pods (sandbox + 1 sleeping container each) on `w`, set up `ctx.parallel` at a time;
/// sums the memory of every shim process of `w`, then tears the pods down.
pub(crate) async fn many_pods(ctx: &Ctx, w: Which, n: usize) -> Result<PodsFigure> {
    let t0 = Instant::now();
    let next = &AtomicUsize::new(0);
    let workers = (0..ctx.parallel.min(n)).map(move |_| async move {
        let (mut rt, _) = cri::connect(&ctx.inst.address).await?;
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= n {
                return anyhow::Ok(());
            }
            let name = format!("many-{}-{i}", w.handler());
            let sb = run_pod(ctx, &mut rt, w, &name).await?;
            add_container(ctx, &mut rt, &sb, &name, "c1").await?;
        }
    });
    let setup = join_all(workers).await.into_iter().collect::<Result<()>>();
    let up = t0.elapsed();
    let measured = match setup {
        Ok(()) => {
            tokio::time::sleep(SETTLE).await;
            let pids = ctx.shim_pids(w);
            let mut total = Mem::default();
            let mut err = None;
            for &p in &pids {
                match mem_of(p) {
                    Ok(m) => total = total + m,
                    Err(e) => err = Some(e),
                }
            }
            match err {
                Some(e) => Err(e),
                None if pids.len() != n => Err(anyhow::anyhow!(
                    "{n} pods on {} but {} shim processes: {pids:?}",
                    w.label(),
                    pids.len()
                )),
                None => Ok((pids.len(), total)),
            }
        }
        Err(e) => Err(e),
    };
    let t1 = Instant::now();
    let down = teardown_pods(ctx).await;
    let down_time = t1.elapsed();
    let (shims, total) = measured?;
    down?;
    Ok(PodsFigure {
        pods: n,
        shims,
        total,
        up,
        down: down_time,
    })
}

/// Stops and removes every remembered pod, `ctx.parallel` at a time; returns the first error.
pub(crate) async fn teardown_pods(ctx: &Ctx) -> Result<()> {
    let ids: Vec<String> = ctx.pods.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let next = &AtomicUsize::new(0);
    let ids = &ids;
    let workers = (0..ctx.parallel.clamp(1, ids.len().max(1))).map(move |_| async move {
        let (mut rt, _) = cri::connect(&ctx.inst.address).await?;
        let mut first = Ok(());
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(id) = ids.get(i) else {
                return first;
            };
            if let Err(e) = remove_pod(ctx, &mut rt, id).await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    });
    join_all(workers).await.into_iter().collect::<Result<()>>()
}

/// Polls every future to completion concurrently on the current task (no `futures` crate).
pub(crate) async fn join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
