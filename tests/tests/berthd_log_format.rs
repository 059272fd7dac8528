//! `[log] format = "json"`: berthd writes one JSON object per line, each with its level
//! and message, and the lines of a pod's or a container's operation carry the pod and
//! container ids as fields an operator can select on.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::container_config;
use berth_tests::image;
use berth_tests::pod::Pod;
use serde_json::Value;

#[test]
fn json_logs_are_one_object_per_line_with_pod_and_container_ids() -> Result<()> {
    let builder = Berthd::builder()
        .busybox()
        .config("[log]\nformat = \"json\"\nlevel = \"info\"\n");
    berthd_test(builder, async |d| {
        let pod = Pod::run(d, d.pod_config("logged")).await?;
        let exited = pod
            .run_to_exit(container_config(
                "hello",
                image::BUSYBOX_IMAGE,
                &["echo", "hi"],
            ))
            .await?;
        ensure!(exited.status.exit_code == 0, "{:?}", exited.status);
        let cid = exited.id.clone();
        let pod_id = pod.id.clone();
        pod.remove().await?;

        let log = d.log();
        let mut lines = Vec::new();
        for (n, line) in log.lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("log line {} is not JSON: {line:?}", n + 1))?;
            ensure!(
                v.is_object()
                    && v["level"].is_string()
                    && v["message"].is_string()
                    && v["timestamp"].is_string(),
                "log line {} lacks level, message or timestamp: {line}",
                n + 1
            );
            lines.push(v);
        }
        let find = |msg: &str| lines.iter().find(|v| v["message"] == msg).cloned();
        let ready = find("pod ready").context("no \"pod ready\" line")?;
        ensure!(
            ready["pod_id"] == pod_id.as_str() && ready["level"] == "INFO",
            "the pod ready line: {ready}"
        );
        let created = find("container created").context("no \"container created\" line")?;
        ensure!(
            created["container_id"] == cid.as_str() && created["pod_id"] == pod_id.as_str(),
            "the container created line: {created}"
        );
        // Every line of the pod's stop names it.
        let stop: Vec<&Value> = lines
            .iter()
            .filter(|v| {
                v["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n == "stop_pod_sandbox"))
            })
            .collect();
        ensure!(
            stop.iter().all(|v| v["pod_id"] == pod_id.as_str()),
            "stop lines without the pod id: {stop:?}"
        );
        Ok(())
    })
}
