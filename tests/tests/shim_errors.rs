//! Error codes over ttrpc (the gRPC codes containerd maps to its errdefs), on a shim started directly: NotFound for
//! unknown ids, AlreadyExists for duplicate container and exec ids, FailedPrecondition for an
//! unstarted exec and for exec start after the init exited, InvalidArgument for a bad id,
//! Unimplemented for unknown methods and services, Connect of an unknown id; and nothing
//! half-made after a failed Create.

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_proto::ttrpc::{self, Code};
use berth_tests::direct::{self, Direct};
use berth_tests::direct_steps::daemon_gone;
use berth_tests::task_reqs;
use berth_tests::{procs, task_api};

fn expect_code<T: std::fmt::Debug>(
    what: &str,
    r: std::result::Result<T, ttrpc::Error>,
    want: Code,
) -> Result<()> {
    match r {
        Ok(v) => anyhow::bail!("{what}: succeeded with {v:?}, expected {want:?}"),
        Err(e) => {
            ensure!(
                task_api::code_of(&e) == Some(want),
                "{what}: got {e:?}, expected {want:?}"
            );
            Ok(())
        }
    }
}

#[test]
fn task_api_error_codes() -> Result<()> {
    Direct::run(scenario)
}

fn scenario(d: &Direct) -> Result<()> {
    let c1 = "c1";
    let (addr, daemon) = d.start_sleeper(c1)?;
    // Every other container joins c1's shim.
    let group = [("io.containerd.runc.v2.group", c1)];

    task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        let created: api::CreateTaskResponse = d
            .rpc(&cl, "Create", &d.create_req(c1, "", ""))
            .await
            .context("Create c1")?;
        d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req(c1, ""))
            .await
            .context("Start c1")?;

        // Unknown container id.
        let nope = "no-such-container";
        expect_code(
            "State unknown id",
            d.rpc::<_, api::StateResponse>(&cl, "State", &task_api::state_req(nope))
                .await,
            Code::NOT_FOUND,
        )?;
        expect_code(
            "Kill unknown id",
            d.rpc::<_, api::Empty>(&cl, "Kill", &task_reqs::kill_req(nope, "", 9))
                .await,
            Code::NOT_FOUND,
        )?;
        expect_code(
            "Wait unknown id",
            d.rpc::<_, api::WaitResponse>(&cl, "Wait", &task_reqs::wait_req(nope, ""))
                .await,
            Code::NOT_FOUND,
        )?;
        expect_code(
            "Delete unknown id",
            d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req(nope, ""))
                .await,
            Code::NOT_FOUND,
        )?;
        expect_code(
            "State unknown exec id",
            d.rpc::<_, api::StateResponse>(
                &cl,
                "State",
                &api::StateRequest {
                    id: c1.into(),
                    exec_id: "no-such-exec".into(),
                    ..Default::default()
                },
            )
            .await,
            Code::NOT_FOUND,
        )?;

        // Connect for an unknown id: no error, task_pid 0.
        let c: api::ConnectResponse = d
            .rpc(&cl, "Connect", &task_api::connect_req(nope))
            .await
            .context("Connect unknown id must not fail")?;
        ensure!(
            c.task_pid == 0 && c.shim_pid == daemon as u32,
            "Connect unknown id: {c:?} (daemon {daemon})"
        );

        // Create with an existing id, and the running container is untouched by it.
        expect_code(
            "Create existing id",
            d.rpc::<_, api::CreateTaskResponse>(&cl, "Create", &d.create_req(c1, "", ""))
                .await,
            Code::ALREADY_EXISTS,
        )?;
        let st: api::StateResponse = d.rpc(&cl, "State", &task_api::state_req(c1)).await?;
        ensure!(
            st.status.value() == direct::RUNNING && st.pid == created.pid,
            "c1 after duplicate Create: {st:?}"
        );
        ensure!(
            procs::alive(created.pid as i32) && !d.rootfs_mounts(c1).is_empty(),
            "duplicate Create damaged c1 (alive {}, rootfs mounts {:?})",
            procs::alive(created.pid as i32),
            d.rootfs_mounts(c1)
        );

        // Exec: duplicate id; Kill before start.
        d.rpc::<_, api::Empty>(
            &cl,
            "Exec",
            &task_reqs::exec_req(c1, "e1", &["sleep", "600"]),
        )
        .await
        .context("Exec e1")?;
        expect_code(
            "Exec duplicate exec id",
            d.rpc::<_, api::Empty>(&cl, "Exec", &task_reqs::exec_req(c1, "e1", &["true"]))
                .await,
            Code::ALREADY_EXISTS,
        )?;
        expect_code(
            "Kill exec not started",
            d.rpc::<_, api::Empty>(&cl, "Kill", &task_reqs::kill_req(c1, "e1", 9))
                .await,
            Code::FAILED_PRECONDITION,
        )?;

        // Start of the exec after the init exited.
        d.rpc::<_, api::Empty>(&cl, "Kill", &task_reqs::kill_req(c1, "", libc::SIGKILL))
            .await
            .context("Kill c1")?;
        let w: api::WaitResponse = d.rpc(&cl, "Wait", &task_reqs::wait_req(c1, "")).await?;
        ensure!(w.exit_status == 137, "c1 Wait after SIGKILL: {w:?}");
        expect_code(
            "Start exec after init exit",
            d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req(c1, "e1"))
                .await,
            Code::FAILED_PRECONDITION,
        )?;
        d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req(c1, "e1"))
            .await
            .context("Delete unstarted exec e1")?;
        let del: api::DeleteResponse = d
            .rpc(&cl, "Delete", &task_reqs::delete_req(c1, ""))
            .await
            .context("Delete c1")?;
        ensure!(del.exit_status == 137, "Delete c1: {del:?}");
        expect_code(
            "Kill after Delete",
            d.rpc::<_, api::Empty>(&cl, "Kill", &task_reqs::kill_req(c1, "", 9))
                .await,
            Code::NOT_FOUND,
        )?;

        // Invalid container id.
        let mut bad = d.create_req("c4", "", "");
        bad.id = "../x".into();
        expect_code(
            "Create with id ../x",
            d.rpc::<_, api::CreateTaskResponse>(&cl, "Create", &bad)
                .await,
            Code::INVALID_ARGUMENT,
        )?;
        ensure!(
            d.rootfs_mounts("c4").is_empty() && !d.dir.join("x").exists(),
            "Create ../x left something behind"
        );

        // Unknown method (v2 and v3) and unknown service.
        for svc in [task_api::TASK_V2, task_api::TASK_V3] {
            expect_code(
                &format!("{svc}/Frobnicate"),
                task_api::call::<_, api::Empty>(
                    &cl,
                    &d.namespace,
                    svc,
                    "Frobnicate",
                    &api::Empty::default(),
                )
                .await,
                Code::UNIMPLEMENTED,
            )?;
        }

        // A Create that fails in the runtime leaves nothing half-made, and the id is reusable.
        let c4 = "c4";
        d.bundle(c4, &["/no/such/binary"], &group)?;
        let r = d
            .rpc::<_, api::CreateTaskResponse>(&cl, "Create", &d.create_req(c4, "", ""))
            .await;
        ensure!(r.is_err(), "Create with a missing binary succeeded: {r:?}");
        ensure!(
            !d.runc_state(c4).exists(),
            "failed Create left runc state {}",
            d.runc_state(c4).display()
        );
        ensure!(
            d.rootfs_mounts(c4).is_empty(),
            "failed Create left mounts {:?}",
            d.rootfs_mounts(c4)
        );
        ensure!(
            d.cgroup_dirs(c4).is_empty(),
            "failed Create left cgroups {:?}",
            d.cgroup_dirs(c4)
        );
        expect_code(
            "State after failed Create",
            d.rpc::<_, api::StateResponse>(&cl, "State", &task_api::state_req(c4))
                .await,
            Code::NOT_FOUND,
        )?;
        d.write_config(c4, &["sh", "-c", "exit 3"], &group)?;
        d.rpc::<_, api::CreateTaskResponse>(&cl, "Create", &d.create_req(c4, "", ""))
            .await
            .context("Create c4 again after the failed attempt")?;
        d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req(c4, ""))
            .await
            .context("Start c4")?;
        let w: api::WaitResponse = d.rpc(&cl, "Wait", &task_reqs::wait_req(c4, "")).await?;
        ensure!(w.exit_status == 3, "c4 Wait: {w:?}");
        d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req(c4, ""))
            .await
            .context("Delete c4")?;

        let _ = d
            .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req(c1))
            .await;
        Ok(())
    })??;
    daemon_gone(daemon)?;
    Ok(())
}

/// An unknown service must answer Unimplemented, as Go ttrpc's `serviceSet.resolve` does
/// (`codes.Unimplemented "service <name>"`), which containerd maps to ErrNotImplemented.
#[test]
fn unknown_service_is_unimplemented() -> Result<()> {
    let d = Direct::new()?;
    let (addr, daemon) = d.start_sleeper("c1")?;
    let res = task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        let r = expect_code(
            "containerd.task.v9.Task/State",
            task_api::call::<_, api::StateResponse>(
                &cl,
                &d.namespace,
                "containerd.task.v9.Task",
                "State",
                &task_api::state_req("c1"),
            )
            .await,
            Code::UNIMPLEMENTED,
        );
        let _ = d
            .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req("c1"))
            .await;
        r
    })?;
    daemon_gone(daemon)?;
    res?;
    d.finish()
}
