//! A container's log path is never written through a symlink: whoever can write the pod's
//! log dir could otherwise, at a rotation, put a symlink to a host file in the log's place
//! and have berthd (ReopenContainerLog) and the shim (the log writer), both root, create
//! or append to it.

use std::time::Duration;

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::pod_config;
use berth_tests::pod::Pod;
use tonic::Code;

#[test]
fn a_symlink_put_at_the_log_path_at_rotation_is_not_followed() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (mut rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("logsym", &logs)).await?;
        let id = pod.start_line_counter("logsym").await?;
        // A host file the attacker wants written (and one it wants created).
        let victim = d.dir.path().join("victim");
        std::fs::write(&victim, "victim\n")?;
        let created = d.dir.path().join("created-through-link");

        let log = logs.join("logsym.log");
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::rename(&log, logs.join("logsym.log.1"))?;
        std::os::unix::fs::symlink(&created, &log)?;
        let r = rs
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::FailedPrecondition),
            "reopen through a symlink: {r:?}"
        );
        ensure!(
            !created.exists(),
            "berthd created a file through the symlink"
        );

        // The shim's writer does not follow one either.
        std::fs::remove_file(&log)?;
        std::os::unix::fs::symlink(&victim, &log)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            std::fs::read_to_string(&victim)? == "victim\n",
            "the shim wrote through the symlink"
        );
        pod.remove().await?;
        anyhow::Ok(())
    })
}
