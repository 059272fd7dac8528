//! A SIGTERM stops berthd within a bound even while calls stay open: a GetContainerEvents
//! subscriber (kubelet's evented PLEG holds one for ever), an exec session and a
//! port-forward session on the streaming server. systemd's stop or restart must never wait
//! out its timeout and SIGKILL. The pods keep running, and a restarted berthd finds them
//! as they were.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::pod::Pod;
use berth_tests::spdy::PortForward;
use berth_tests::streaming::port_forward_url;
use berth_tests::ws::WsSession;
use berth_tests::{image, procs};

#[test]
fn sigterm_ends_open_calls_and_leaves_pods_running() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let (rs, _) = d.client().await?;
        let mut cfg = pod_config("stop", &d.dir.path().join("logs"));
        berth_tests::cri::share_pid(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
        let id = pod
            .start(container_config(
                "stop",
                image::BUSYBOX_IMAGE,
                &["sleep", "3600"],
            ))
            .await?;
        let infra = rs.pod_info(&pod.id).await?["pid"]
            .as_i64()
            .context("infra pid")? as i32;

        // An event subscriber, an exec session and a port-forward session that stay open.
        let mut events = rs
            .clone()
            .get_container_events(cri::GetEventsRequest {})
            .await?
            .into_inner();
        let url = rs.exec_url(&id, &["sleep", "100"], true, false).await?;
        let _session = WsSession::connect(&url, &["v4.channel.k8s.io"]).await?;
        let _forward = PortForward::connect(&port_forward_url(&rs, &pod.id).await?).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let t = Instant::now();
        let code = d.stop()?;
        let took = t.elapsed();
        println!("berthd stopped {took:?} after SIGTERM, exit code {code}");
        ensure!(code == 0, "exit code {code}");
        // The grace is 5 s; the bound says "did not wait for the open calls to end".
        ensure!(took < Duration::from_secs(12), "stop took {took:?}");
        // The subscriber (past the events it was sent) sees its stream end, not hang.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = events.message().await {}
        })
        .await;
        ensure!(ended.is_ok(), "the event stream still hangs after the stop");
        ensure!(procs::alive(infra), "the pod's infra died with berthd");

        d.restart()?;
        let (rs, _) = d.client().await?;
        let st = rs.ctr_status(&id).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "after the restart: {st:?}"
        );
        rs.stop_and_remove_pod(&pod.id).await?;
        anyhow::Ok(())
    })
}
