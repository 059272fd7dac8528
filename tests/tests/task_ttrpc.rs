//! A direct ttrpc client on a running shim: v3 Connect/State (berth-proto's client) and the
//! same calls on v2 built by hand; NotFound for an unknown id; Unimplemented for an unknown method.

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::{shim, task_api, Instance, Runtime, Setup};

#[test]
fn ttrpc_connect_and_state_v2_and_v3() -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let id = inst.new_id("direct");
    let init = ctr.run_detached(&[], &id, &["sleep", "600"])?;
    let addr = task_api::address_of(&inst.bundle(&id))?;
    ensure!(
        addr.starts_with("unix:///run/containerd/s/"),
        "bundle address {addr:?}"
    );
    let shim_pids: Vec<u32> = inst.shims().iter().map(|p| p.pid as u32).collect();
    let ns = inst.namespace.clone();
    let reference = shim::is_reference();

    let res = task_api::block_on(async {
        let client = task_api::connect(&addr).await?;
        let (sv2, sv3) = (task_api::TASK_V2, task_api::TASK_V3);

        let c: api::ConnectResponse =
            task_api::call(&client, &ns, sv2, "Connect", &task_api::connect_req(&id))
                .await
                .context("v2 Connect")?;
        ensure!(
            shim_pids.contains(&c.shim_pid) && c.task_pid == init.pid as u32,
            "v2 Connect {c:?}, shims {shim_pids:?}, init {}",
            init.pid
        );
        let s: api::StateResponse =
            task_api::call(&client, &ns, sv2, "State", &task_api::state_req(&id))
                .await
                .context("v2 State")?;
        ensure!(
            s.pid == init.pid as u32 && s.status.value() == 2 && s.id == id,
            "v2 State {s:?}"
        );

        let e = task_api::call::<_, api::StateResponse>(
            &client,
            &ns,
            sv2,
            "State",
            &task_api::state_req("no-such-task"),
        )
        .await
        .err()
        .context("State of unknown id succeeded")?;
        ensure!(
            task_api::code_of(&e) == Some(berth_proto::ttrpc::Code::NOT_FOUND),
            "unknown id: {e:?}"
        );
        let e = task_api::call::<_, api::Empty>(
            &client,
            &ns,
            sv2,
            "NoSuchMethod",
            &api::Empty::default(),
        )
        .await
        .err()
        .context("unknown method succeeded")?;
        ensure!(
            task_api::code_of(&e) == Some(berth_proto::ttrpc::Code::UNIMPLEMENTED),
            "unknown method: {e:?}"
        );

        if reference {
            // containerd 1.6's Go shim serves only containerd.task.v2.Task.
            eprintln!("reference shim: skipping {sv3} calls");
            return Ok(());
        }
        let v3 = task_api::v3(client.clone());
        let c = v3
            .connect(task_api::ctx(&ns), &task_api::connect_req(&id))
            .await
            .context("v3 Connect")?;
        ensure!(
            shim_pids.contains(&c.shim_pid) && c.task_pid == init.pid as u32,
            "v3 Connect {c:?}"
        );
        let s = v3
            .state(task_api::ctx(&ns), &task_api::state_req(&id))
            .await
            .context("v3 State")?;
        ensure!(
            s.pid == init.pid as u32 && s.status.value() == 2,
            "v3 State {s:?}"
        );
        Ok(())
    })?;
    if let Err(e) = res {
        return Err(e.context(inst.log_tail(40)));
    }
    ctr.kill_and_delete(&id)?;
    inst.finish()
}
