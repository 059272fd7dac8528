//! Phase 4: execs straight over the shim's ttrpc socket.

use super::*;

pub(crate) struct ExecFigure {
    pub(crate) n: usize,
    pub(crate) before: Mem,
    pub(crate) warm: Mem,
    pub(crate) after: Mem,
    /// VmRSS (kB) after each quarter of the measured execs.
    pub(crate) quarters: Vec<u64>,
    pub(crate) secs: f64,
}

pub(crate) fn exec_spec() -> Any {
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["true"],
        "env": [PATH_ENV],
        "cwd": "/",
    });
    Any {
        type_url: PROCESS_TYPE_URL.into(),
        value: process.to_string().into_bytes(),
        ..Default::default()
    }
}

/// Exec (null IO) + Wait (sent first, as containerd does) + Start + Delete of one `true`.
pub(crate) async fn exec_cycle(
    client: &berth_proto::ttrpc::r#async::Client,
    svc: &str,
    ns: &str,
    id: &str,
    exec_id: &str,
    spec: &Any,
) -> Result<()> {
    let v = svc;
    let req = api::ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: MessageField::some(spec.clone()),
        ..Default::default()
    };
    task_api::call::<_, api::Empty>(client, ns, v, "Exec", &req)
        .await
        .with_context(|| format!("Exec {exec_id}"))?;
    let wait = api::WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let start = api::StartRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let (w, s) = tokio::join!(
        task_api::call::<_, api::WaitResponse>(client, ns, v, "Wait", &wait),
        async {
            tokio::task::yield_now().await;
            task_api::call::<_, api::StartResponse>(client, ns, v, "Start", &start).await
        }
    );
    s.with_context(|| format!("Start {exec_id}"))?;
    let w = w.with_context(|| format!("Wait {exec_id}"))?;
    ensure!(
        w.exit_status == 0,
        "exec {exec_id} exited {}",
        w.exit_status
    );
    let del = api::DeleteRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    task_api::call::<_, api::DeleteResponse>(client, ns, v, "Delete", &del)
        .await
        .with_context(|| format!("Delete {exec_id}"))?;
    Ok(())
}

/// `count` exec cycles numbered from `first`, `parallel` in flight; stops at the first error.
pub(crate) async fn exec_batch(
    client: &berth_proto::ttrpc::r#async::Client,
    svc: &'static str,
    ns: &str,
    id: &str,
    first: usize,
    count: usize,
    parallel: usize,
) -> Result<()> {
    let spec = &exec_spec();
    let next = &AtomicUsize::new(0);
    let stop = &AtomicBool::new(false);
    let workers = (0..parallel.min(count)).map(move |_| async move {
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= count || stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let exec_id = format!("bench-{}", first + i);
            if let Err(e) = exec_cycle(client, svc, ns, id, &exec_id, spec).await {
                stop.store(true, Ordering::SeqCst);
                return Err(e.context(format!("exec cycle #{} of {count}", first + i + 1)));
            }
        }
    });
    join_all(workers).await.into_iter().collect()
}

pub(crate) fn execs(ctx: &Ctx, w: Which, n: usize) -> Result<ExecFigure> {
    let id = ctx.inst.new_id(&format!("exec-{}", w.handler()));
    ctr_run(ctx, "-d", w, &id, &["sleep", "3600"])?.ok(&format!("ctr run -d {id}"))?;
    let res = execs_on(ctx, &id, n);
    let down = ctx.ctr().kill_and_delete(&id);
    let r = res?;
    down?;
    Ok(r)
}

pub(crate) fn execs_on(ctx: &Ctx, id: &str, n: usize) -> Result<ExecFigure> {
    ctx.ctr()
        .wait_status(id, "RUNNING", Duration::from_secs(20))?;
    // The task API the shim announced (containerd 2.1's Go shim serves only v3).
    let boot = task_api::bootstrap_of(&ctx.inst.bundle(id))?;
    let (addr, svc) = (boot.address.clone(), boot.task_service());
    let ns = ctx.inst.namespace.clone();
    let parallel = ctx.parallel;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = task_api::connect(&addr).await?;
        let c: api::ConnectResponse =
            task_api::call(&client, &ns, svc, "Connect", &task_api::connect_req(id))
                .await
                .context("Connect")?;
        let pid = c.shim_pid as i32;
        tokio::time::sleep(SETTLE).await;
        let before = mem_of(pid)?;
        let warm_n = WARMUP_EXECS.min(n);
        exec_batch(&client, svc, &ns, id, 0, warm_n, parallel).await?;
        tokio::time::sleep(SETTLE).await;
        let warm = mem_of(pid)?;
        // Four equal chunks, RSS read (without settling) after each: shows whether growth levels off.
        let rest = n - warm_n;
        let mut quarters = Vec::new();
        let mut done = 0;
        let t0 = Instant::now();
        for q in 1..=4 {
            let upto = rest * q / 4;
            exec_batch(&client, svc, &ns, id, warm_n + done, upto - done, parallel).await?;
            done = upto;
            quarters.push(mem_of(pid)?.rss);
        }
        let secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        let after = mem_of(pid)?;
        Ok(ExecFigure {
            n,
            before,
            warm,
            after,
            quarters,
            secs,
        })
    })
}
