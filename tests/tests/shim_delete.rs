//! The shim binary's `delete` action (cleanup after a lost shim) on a container of a two-container pod served by one live
//! shim: a valid DeleteResponse (init pid, 137, exited_at ≈ now), exit 0 in < 1 s, only the
//! named container removed, the other container and the daemon untouched, idempotent, and
//! working on a bundle without `runtime`/`options.json` (defaults to runc).

use anyhow::{bail, ensure, Context, Result};
use berth_proto::api;
use berth_proto::protobuf::Message;
use berth_tests::direct::{self, Deleted, Direct};
use berth_tests::task_reqs;
use berth_tests::{procs, task_api};
use std::time::Duration;

fn check_response(what: &str, r: &Deleted, want_pid: Option<u32>) -> Result<api::DeleteResponse> {
    ensure!(
        r.code == 0,
        "{what}: exit {} stderr {:?} stdout {:?}",
        r.code,
        r.stderr,
        r.stdout
    );
    ensure!(
        r.elapsed < Duration::from_secs(1),
        "{what}: took {:?} (containerd allows 5 s for the whole cleanup)",
        r.elapsed
    );
    let resp = api::DeleteResponse::parse_from_bytes(&r.stdout)
        .with_context(|| format!("{what}: stdout is not a DeleteResponse: {:?}", r.stdout))?;
    ensure!(resp.exit_status == 137, "{what}: {resp:?}");
    let now = task_reqs::now_secs();
    ensure!(
        (task_reqs::ts_secs(&resp.exited_at) - now).abs() <= 5,
        "{what}: exited_at {:?} not near now {now}",
        resp.exited_at
    );
    if let Some(pid) = want_pid {
        ensure!(resp.pid == pid, "{what}: pid {} want {pid}", resp.pid);
    }
    Ok(resp)
}

#[test]
fn delete_action_touches_only_its_container() -> Result<()> {
    Direct::run(scenario)
}

fn scenario(d: &Direct) -> Result<()> {
    let (c1, c2) = ("pod", "app");
    d.bundle(c1, &["sleep", "600"], &[])?;
    d.bundle(
        c2,
        &["sleep", "600"],
        &[("io.kubernetes.cri.sandbox-id", c1)],
    )?;
    let addr = d.start_ok(c1, c1)?;
    let daemon = d.daemons().first().context("no daemon")?.pid;
    ensure!(d.start_ok(c2, c1)? == addr, "c2 not grouped");

    let (p1, p2) = task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        let mut pids = Vec::new();
        for id in [c1, c2] {
            let r: api::CreateTaskResponse = d
                .rpc(&cl, "Create", &d.create_req(id, "", ""))
                .await
                .with_context(|| format!("Create {id}"))?;
            d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req(id, ""))
                .await
                .with_context(|| format!("Start {id}"))?;
            pids.push(r.pid);
        }
        Ok::<_, anyhow::Error>((pids[0], pids[1]))
    })??;
    for (id, f) in [(c1, "runtime"), (c1, "options.json"), (c2, "runtime")] {
        ensure!(
            d.bundle_path(id).join(f).exists(),
            "{id}: shim did not persist {f} in the bundle (a later `delete` action reads them to find the runtime and its options)"
        );
    }

    // The named container goes; the other one and the daemon stay.
    let r = d.delete_action(c2)?;
    check_response("delete app", &r, Some(p2))?;
    procs::poll(Duration::from_secs(3), "app's init to die", || {
        (!procs::alive(p2 as i32)).then_some(())
    })?;
    ensure!(
        !d.runc_state(c2).exists(),
        "runc state {} survives delete",
        d.runc_state(c2).display()
    );
    ensure!(
        d.rootfs_mounts(c2).is_empty(),
        "app rootfs still mounted: {:?}",
        d.rootfs_mounts(c2)
    );
    ensure!(
        procs::alive(daemon),
        "delete of app stopped the pod's daemon"
    );
    ensure!(
        procs::alive(p1 as i32),
        "delete of app killed the other container"
    );
    ensure!(
        d.runc_state(c1).exists(),
        "delete of app removed pod's runc state"
    );

    // Idempotent.
    let r = d.delete_action(c2)?;
    check_response("second delete app", &r, None)?;
    ensure!(
        procs::alive(daemon) && procs::alive(p1 as i32),
        "second delete disturbed the pod"
    );

    task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        let st: api::StateResponse = d.rpc(&cl, "State", &task_api::state_req(c1)).await?;
        ensure!(
            st.status.value() == direct::RUNNING,
            "pod after deleting app: {st:?}"
        );
        let st: api::StateResponse = d.rpc(&cl, "State", &task_api::state_req(c2)).await?;
        ensure!(
            st.status.value() == direct::STOPPED && st.exit_status == 137,
            "shim's view of app after delete --force: {st:?}"
        );
        let del: api::DeleteResponse = d
            .rpc(&cl, "Delete", &task_reqs::delete_req(c2, ""))
            .await
            .context("Delete RPC of app after the delete action")?;
        ensure!(del.exit_status == 137, "Delete app: {del:?}");
        Ok(())
    })??;

    // Without `runtime` and `options.json`: defaults to runc under /run/containerd/runc.
    for f in ["runtime", "options.json"] {
        std::fs::remove_file(d.bundle_path(c1).join(f))?;
    }
    let r = d.delete_action(c1)?;
    check_response("delete pod without runtime/options.json", &r, Some(p1))?;
    procs::poll(Duration::from_secs(3), "pod's init to die", || {
        (!procs::alive(p1 as i32)).then_some(())
    })
    .with_context(|| format!("delete stderr: {}", r.stderr))?;
    ensure!(
        !d.runc_state(c1).exists(),
        "runc state {} survives delete",
        d.runc_state(c1).display()
    );
    ensure!(
        procs::alive(daemon),
        "delete of the pod container stopped the daemon"
    );

    task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        let w: api::WaitResponse = d.rpc(&cl, "Wait", &task_reqs::wait_req(c1, "")).await?;
        ensure!(w.exit_status == 137, "pod Wait: {w:?}");
        d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req(c1, ""))
            .await
            .context("Delete RPC of pod")?;
        let _ = d
            .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req(c1))
            .await;
        Ok(())
    })??;
    if procs::poll(Duration::from_secs(5), "daemon exit", || {
        (!procs::alive(daemon)).then_some(())
    })
    .is_err()
    {
        bail!("daemon {daemon} still running after Shutdown with no containers");
    }
    Ok(())
}
