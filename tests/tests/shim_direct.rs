//! The shim without containerd, as berthd starts it (the `start` action, the ttrpc task
//! service and shim grouping): `start` with no TTRPC_ADDRESS and no `log` FIFO prints only the address and
//! closes its pipes; Create/Start/Wait/State/Delete/Shutdown over ttrpc; grouping by annotation
//! reuses the one daemon.

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::direct::{self, Direct};
use berth_tests::direct_steps::daemon_gone;
use berth_tests::{fifo, task_reqs};
use berth_tests::{procs, task_api};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

#[test]
fn start_create_wait_delete_shutdown_without_containerd() -> Result<()> {
    Direct::run(scenario)
}

fn scenario(d: &Direct) -> Result<()> {
    let c1 = "c1";
    let b1 = d.bundle(c1, &["sh", "-c", "echo hi; exit 7"], &[])?;
    ensure!(!b1.join("log").exists(), "test bug: bundle has a log FIFO");

    // `start`: exit 0 at once, output exactly the address, pipes closed within 2 s.
    let s = d.start(c1, &[], Duration::from_secs(2))?;
    let want = d.expected_address(c1);
    ensure!(s.code == 0, "start exited {}: {:?}", s.code, s.text());
    ensure!(
        s.output == want.as_bytes(),
        "start output {:?}, expected exactly {want:?}",
        s.text()
    );
    ensure!(
        s.exit_after < Duration::from_secs(2) && s.eof_after < Duration::from_secs(2),
        "start too slow: exit after {:?}, EOF after {:?}",
        s.exit_after,
        s.eof_after
    );
    let addr_file = task_api::address_of(&b1)?;
    ensure!(
        addr_file == want,
        "bundle address file {addr_file:?}, want {want:?}"
    );
    let sock = want.trim_start_matches("unix://");
    let meta = std::fs::metadata(sock).with_context(|| format!("stat {sock}"))?;
    ensure!(meta.file_type().is_socket(), "{sock} is not a socket");
    ensure!(
        meta.permissions().mode() & 0o777 == 0o600,
        "socket mode {:o}, want 600",
        meta.permissions().mode() & 0o777
    );
    let daemons = d.daemons();
    ensure!(
        daemons.len() == 1,
        "expected one daemon, found {daemons:#?}"
    );
    let daemon = daemons[0].pid;

    // Grouping: the group annotation and the CRI sandbox id both name c1's shim.
    let b2 = d.bundle(
        "c2",
        &["sleep", "600"],
        &[("io.containerd.runc.v2.group", c1)],
    )?;
    d.start_ok("c2", c1)
        .context("start with io.containerd.runc.v2.group")?;
    let b3 = d.bundle(
        "c3",
        &["sleep", "600"],
        &[("io.kubernetes.cri.sandbox-id", c1)],
    )?;
    d.start_ok("c3", c1)
        .context("start with io.kubernetes.cri.sandbox-id")?;
    for b in [&b2, &b3] {
        let a = task_api::address_of(b)?;
        ensure!(a == want, "{}: address {a:?}, want {want:?}", b.display());
    }
    std::thread::sleep(Duration::from_millis(300));
    let daemons = d.daemons();
    ensure!(
        daemons.len() == 1 && daemons[0].pid == daemon,
        "grouped start spawned another daemon: {daemons:#?}"
    );

    let stdout_fifo = d.dir.join("io").join("c1-stdout");
    let reader = fifo::fifo(&stdout_fifo)?;
    let stdout = stdout_fifo.display().to_string();

    task_api::block_on(async {
        let client = task_api::connect(&want).await?;
        let created: api::CreateTaskResponse = d
            .rpc(&client, "Create", &d.create_req(c1, &stdout, ""))
            .await
            .context("Create c1")?;
        ensure!(created.pid > 0, "Create pid {}", created.pid);
        ensure!(
            !d.rootfs_mounts(c1).is_empty(),
            "rootfs of c1 not mounted after Create"
        );
        let c: api::ConnectResponse = d
            .rpc(&client, "Connect", &task_api::connect_req(c1))
            .await
            .context("Connect c1")?;
        ensure!(
            c.shim_pid == daemon as u32 && c.task_pid == created.pid,
            "Connect {c:?}, daemon {daemon}, init {}",
            created.pid
        );
        let st: api::StateResponse = d.rpc(&client, "State", &task_api::state_req(c1)).await?;
        ensure!(
            st.status.value() == direct::CREATED,
            "State after Create: {st:?}"
        );
        let started: api::StartResponse = d
            .rpc(&client, "Start", &task_reqs::start_req(c1, ""))
            .await
            .context("Start c1")?;
        ensure!(started.pid == created.pid, "Start pid {started:?}");
        let w: api::WaitResponse = d
            .rpc(&client, "Wait", &task_reqs::wait_req(c1, ""))
            .await
            .context("Wait c1")?;
        ensure!(w.exit_status == 7, "Wait: {w:?}");
        let now = task_reqs::now_secs();
        ensure!(
            (task_reqs::ts_secs(&w.exited_at) - now).abs() < 30,
            "Wait exited_at {:?} not near now {now}",
            w.exited_at
        );
        // Berth's journal: every event so far, numbered from 1 in order; nothing after.
        let j: berth_proto::berth_shim::ReadResponse = task_api::call(
            &client,
            &d.namespace,
            "berth.shim.v1.Journal",
            "Read",
            &berth_proto::berth_shim::ReadRequest {
                after: 0,
                wait_ms: 0,
                ..Default::default()
            },
        )
        .await
        .context("Journal.Read")?;
        let topics: Vec<(u64, &str)> = j
            .entries
            .iter()
            .map(|e| (e.seq, e.topic.as_str()))
            .collect();
        ensure!(
            j.first == 1
                && topics
                    == [
                        (1, "/tasks/create"),
                        (2, "/tasks/start"),
                        (3, "/tasks/exit")
                    ],
            "journal {topics:?} first {}",
            j.first
        );
        let exit = <berth_proto::events::task::TaskExit as berth_proto::protobuf::Message>::parse_from_bytes(
            &j.entries[2].event,
        )?;
        ensure!(
            exit.container_id == c1 && exit.exit_status == 7 && exit.pid == created.pid,
            "journal exit {exit:?}"
        );
        let later: berth_proto::berth_shim::ReadResponse = task_api::call(
            &client,
            &d.namespace,
            "berth.shim.v1.Journal",
            "Read",
            &berth_proto::berth_shim::ReadRequest {
                after: 3,
                wait_ms: 200,
                ..Default::default()
            },
        )
        .await?;
        ensure!(
            later.entries.is_empty(),
            "journal after 3: {:?}",
            later.entries
        );
        let out = fifo::read_until(&reader, "hi\n", Duration::from_secs(5));
        ensure!(out == "hi\n", "container stdout through the FIFO: {out:?}");
        let st: api::StateResponse = d.rpc(&client, "State", &task_api::state_req(c1)).await?;
        ensure!(
            st.status.value() == direct::STOPPED && st.exit_status == 7 && st.pid == created.pid,
            "State after exit: {st:?}"
        );
        let del: api::DeleteResponse = d
            .rpc(&client, "Delete", &task_reqs::delete_req(c1, ""))
            .await
            .context("Delete c1")?;
        ensure!(
            del.exit_status == 7 && del.pid == created.pid,
            "Delete: {del:?}"
        );
        ensure!(
            d.rootfs_mounts(c1).is_empty(),
            "rootfs of c1 still mounted after Delete: {:?}",
            d.rootfs_mounts(c1)
        );
        ensure!(
            !d.runc_state(c1).exists(),
            "runc state {} left after Delete",
            d.runc_state(c1).display()
        );
        let e = d
            .rpc::<_, api::StateResponse>(&client, "State", &task_api::state_req(c1))
            .await
            .err()
            .context("State after Delete succeeded")?;
        ensure!(
            task_api::code_of(&e) == Some(berth_proto::ttrpc::Code::NOT_FOUND),
            "State after Delete: {e:?}"
        );

        // The same daemon serves c2; Shutdown while c2 exists keeps it running.
        let c2: api::CreateTaskResponse = d
            .rpc(&client, "Create", &d.create_req("c2", "", ""))
            .await
            .context("Create c2 in the shared shim")?;
        d.rpc::<_, api::StartResponse>(&client, "Start", &task_reqs::start_req("c2", ""))
            .await
            .context("Start c2")?;
        d.rpc::<_, api::Empty>(&client, "Shutdown", &task_reqs::shutdown_req(c1))
            .await
            .context("Shutdown while c2 runs")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            procs::alive(daemon),
            "daemon exited on Shutdown while c2 still existed"
        );
        let st: api::StateResponse = d
            .rpc(&client, "State", &task_api::state_req("c2"))
            .await
            .context("State c2 after early Shutdown")?;
        ensure!(
            st.status.value() == direct::RUNNING && st.pid == c2.pid,
            "c2 State: {st:?}"
        );
        d.rpc::<_, api::Empty>(
            &client,
            "Kill",
            &task_reqs::kill_req("c2", "", libc::SIGKILL),
        )
        .await
        .context("Kill c2")?;
        let w: api::WaitResponse = d
            .rpc(&client, "Wait", &task_reqs::wait_req("c2", ""))
            .await?;
        ensure!(w.exit_status == 137, "c2 Wait after SIGKILL: {w:?}");
        let del: api::DeleteResponse = d
            .rpc(&client, "Delete", &task_reqs::delete_req("c2", ""))
            .await
            .context("Delete c2")?;
        ensure!(del.exit_status == 137, "c2 Delete: {del:?}");
        // Shutdown with nothing left: the reply may race with exit (containerd ignores that).
        let _ = d
            .rpc::<_, api::Empty>(&client, "Shutdown", &task_reqs::shutdown_req("c2"))
            .await;
        Ok(())
    })??;

    daemon_gone(daemon)?;
    procs::poll(
        Duration::from_secs(5),
        "socket removed after Shutdown",
        || (!std::path::Path::new(sock).exists()).then_some(()),
    )?;
    Ok(())
}
