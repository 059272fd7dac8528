//! An init killed while its container is paused: the shim resumes the container before it
//! reports the exit (as containerd's Go shim does), so Wait returns 137, State says stopped,
//! nothing of the container stays frozen, and Delete cleans up (no cgroup, mount or runc state
//! left; `Direct::finish` checks).

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::direct::{self, Direct};
use berth_tests::{task_api, task_reqs};
use std::time::Duration;

#[test]
fn a_paused_container_whose_init_is_killed_stops_and_deletes() -> Result<()> {
    Direct::run(|d| {
        let id = "paused";
        // A second process besides the init, so "nothing stays frozen" means something.
        d.bundle(id, &["sh", "-c", "sleep 600 & exec sleep 600"], &[])?;
        let addr = d.start_ok(id, id)?;
        task_api::block_on(async {
            let cl = task_api::connect(&addr).await?;
            d.rpc::<_, api::CreateTaskResponse>(&cl, "Create", &d.create_req(id, "", ""))
                .await?;
            d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req(id, ""))
                .await?;
            let pause = api::PauseRequest {
                id: id.into(),
                ..Default::default()
            };
            d.rpc::<_, api::Empty>(&cl, "Pause", &pause)
                .await
                .context("Pause")?;
            let st: api::StateResponse = d.rpc(&cl, "State", &task_api::state_req(id)).await?;
            ensure!(st.status.value() == 4, "State after Pause: {st:?}");
            d.rpc::<_, api::Empty>(&cl, "Kill", &task_reqs::kill_req(id, "", 9))
                .await
                .context("Kill while paused")?;
            let w = tokio::time::timeout(
                Duration::from_secs(20),
                d.rpc::<_, api::WaitResponse>(&cl, "Wait", &task_reqs::wait_req(id, "")),
            )
            .await
            .context("Wait did not return within 20 s of killing a paused init")??;
            ensure!(w.exit_status == 137, "Wait: {w:?}");
            let st: api::StateResponse = d.rpc(&cl, "State", &task_api::state_req(id)).await?;
            ensure!(
                st.status.value() == direct::STOPPED,
                "State after the kill: {st:?}"
            );
            // Nothing of the container is left frozen in its cgroup.
            for dir in d.cgroup_dirs(id) {
                if let Ok(state) = std::fs::read_to_string(dir.join("freezer.state")) {
                    ensure!(
                        state.trim() != "FROZEN",
                        "{} is still frozen",
                        dir.display()
                    );
                }
            }
            d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req(id, ""))
                .await
                .context("Delete")?;
            let _ = d
                .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req(id))
                .await;
            Ok(())
        })?
    })
}
