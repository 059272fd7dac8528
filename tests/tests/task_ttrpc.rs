//! A direct ttrpc client on a shim containerd started: v3 Connect/State (berth-proto's client)
//! and the same calls on v2 built by hand; NotFound for an unknown id; Unimplemented for an
//! unknown method. On containerd 1.6 and 2.1; with 2.1 also the `bootstrap.json` containerd
//! wrote for the shim (protocol ttrpc, the shim's socket, and a task API version the shim
//! serves: containerd 2.x calls v3 when the shim's `start` says version 3, else v2).

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::{shim, task_api, Containerd, Instance, Runtime, Setup};

#[test]
fn ttrpc_connect_and_state_v2_and_v3() -> Result<()> {
    connect_and_state(Containerd::V1_6)
}

#[test]
fn ttrpc_connect_and_state_v2_and_v3_containerd21() -> Result<()> {
    connect_and_state(Containerd::V2_1)
}

fn connect_and_state(version: Containerd) -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth).on(version))?;
    let ctr = inst.ctr();
    let id = inst.new_id("direct");
    let init = ctr.run_detached(&[], &id, &["sleep", "600"])?;
    let boot = task_api::bootstrap_of(&inst.bundle(&id))?;
    let addr = boot.address.clone();
    ensure!(
        addr.starts_with("unix:///run/containerd/s/"),
        "bundle address {addr:?}"
    );
    let reference = shim::is_reference();
    if version.is_v2() {
        ensure!(
            boot.from_json && boot.protocol == "ttrpc",
            "containerd {} wrote no ttrpc bootstrap.json: {boot:?}",
            version.label()
        );
        // Our shim also writes the `address` file (as for 1.6); it must name the same socket.
        if let Ok(a) = std::fs::read_to_string(inst.bundle(&id).join("address")) {
            ensure!(
                a.trim() == addr,
                "address file {a:?} vs bootstrap.json {boot:?}"
            );
        }
        if reference {
            // containerd 2.1's Go shim bootstraps Task v3.
            ensure!(boot.version == 3, "Go shim bootstrap {boot:?}");
        } else {
            ensure!(
                boot.version == 2 || boot.version == 3,
                "bootstrap version {boot:?}"
            );
        }
    }
    // The services this shim must serve: ours serves both; containerd 1.6's Go shim only v2,
    // containerd 2.1's only v3.
    let (sv2, sv3) = (task_api::TASK_V2, task_api::TASK_V3);
    let services: Vec<&str> = match (reference, version) {
        (false, _) => vec![sv2, sv3],
        (true, Containerd::V1_6) => vec![sv2],
        (true, Containerd::V2_1) => vec![sv3],
    };
    ensure!(
        services.contains(&boot.task_service()),
        "containerd uses {} ({boot:?}), which the shim is not expected to serve",
        boot.task_service()
    );
    let shim_pids: Vec<u32> = inst.shims().iter().map(|p| p.pid as u32).collect();
    let ns = inst.namespace.clone();

    let res = task_api::block_on(async {
        let client = task_api::connect(&addr).await?;
        for svc in &services {
            let c: api::ConnectResponse =
                task_api::call(&client, &ns, svc, "Connect", &task_api::connect_req(&id))
                    .await
                    .with_context(|| format!("{svc} Connect"))?;
            ensure!(
                shim_pids.contains(&c.shim_pid) && c.task_pid == init.pid as u32,
                "{svc} Connect {c:?}, shims {shim_pids:?}, init {}",
                init.pid
            );
            let s: api::StateResponse =
                task_api::call(&client, &ns, svc, "State", &task_api::state_req(&id))
                    .await
                    .with_context(|| format!("{svc} State"))?;
            ensure!(
                s.pid == init.pid as u32 && s.status.value() == 2 && s.id == id,
                "{svc} State {s:?}"
            );

            let e = task_api::call::<_, api::StateResponse>(
                &client,
                &ns,
                svc,
                "State",
                &task_api::state_req("no-such-task"),
            )
            .await
            .err()
            .with_context(|| format!("{svc} State of unknown id succeeded"))?;
            ensure!(
                task_api::code_of(&e) == Some(berth_proto::ttrpc::Code::NOT_FOUND),
                "{svc} unknown id: {e:?}"
            );
            let e = task_api::call::<_, api::Empty>(
                &client,
                &ns,
                svc,
                "NoSuchMethod",
                &api::Empty::default(),
            )
            .await
            .err()
            .with_context(|| format!("{svc} unknown method succeeded"))?;
            ensure!(
                task_api::code_of(&e) == Some(berth_proto::ttrpc::Code::UNIMPLEMENTED),
                "{svc} unknown method: {e:?}"
            );
        }

        if !services.contains(&sv3) {
            eprintln!("reference shim of containerd 1.6: skipping the generated {sv3} client");
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
