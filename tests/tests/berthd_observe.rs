//! What kubelet observes of berthd besides status calls: GetContainerEvents (in order, with
//! the statuses, and exits that happened while berthd was down delivered after it is back),
//! PodSandboxStats / ListPodSandboxStats, ListMetricDescriptors and ListPodSandboxMetrics.

use anyhow::{bail, ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config, pod_network};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::pod::Pod;
use std::time::Duration;
use tonic::Streaming;

type EventType = cri::ContainerEventType;

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
}

async fn subscribe(
    rs: &cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
) -> Result<Streaming<cri::ContainerEventResponse>> {
    Ok(rs
        .clone()
        .get_container_events(cri::GetEventsRequest {})
        .await?
        .into_inner())
}

/// The next event, bounded by `limit`.
async fn next(
    s: &mut Streaming<cri::ContainerEventResponse>,
    limit: Duration,
) -> Result<cri::ContainerEventResponse> {
    match tokio::time::timeout(limit, s.message()).await {
        Ok(Ok(Some(e))) => Ok(e),
        Ok(Ok(None)) => bail!("the event stream ended"),
        Ok(Err(e)) => bail!("the event stream failed: {e}"),
        Err(_) => bail!("no event within {limit:?}"),
    }
}

fn kind(e: &cri::ContainerEventResponse) -> EventType {
    EventType::try_from(e.container_event_type).unwrap_or(EventType::ContainerCreatedEvent)
}

/// Collects events until `count` of them concern `ids`; others are ignored.
async fn collect(
    s: &mut Streaming<cri::ContainerEventResponse>,
    ids: &[&str],
    count: usize,
) -> Result<Vec<cri::ContainerEventResponse>> {
    let mut out = Vec::new();
    while out.len() < count {
        let e = next(s, Duration::from_secs(20))
            .await
            .with_context(|| format!("after {:?}", summary(&out)))?;
        if ids.contains(&e.container_id.as_str()) {
            out.push(e);
        }
    }
    Ok(out)
}

fn summary(events: &[cri::ContainerEventResponse]) -> Vec<(String, EventType)> {
    events
        .iter()
        .map(|e| (e.container_id.chars().take(8).collect(), kind(e)))
        .collect()
}

#[test]
fn container_events_arrive_in_order_with_the_pod_and_container_statuses() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut events = subscribe(&rs).await?;
        let pod = Pod::run(d, pod_config("ev", &logs.join("ev"))).await?;
        let got = collect(&mut events, &[&pod.id], 2).await?;
        ensure!(
            summary(&got).iter().map(|(_, k)| *k).collect::<Vec<_>>()
                == [
                    EventType::ContainerCreatedEvent,
                    EventType::ContainerStartedEvent
                ],
            "pod events: {:?}",
            summary(&got)
        );
        let ps = got[1]
            .pod_sandbox_status
            .as_ref()
            .context("no pod status")?;
        ensure!(ps.id == pod.id && ps.state == cri::PodSandboxState::SandboxReady as i32);

        let id = pod.start(sh("worker", "sleep 1000")).await?;
        let mut rs2 = rs.clone();
        rs2.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await?;
        rs2.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        let got = collect(&mut events, &[&id], 4).await?;
        let kinds: Vec<EventType> = got.iter().map(kind).collect();
        ensure!(
            kinds
                == [
                    EventType::ContainerCreatedEvent,
                    EventType::ContainerStartedEvent,
                    EventType::ContainerStoppedEvent,
                    EventType::ContainerDeletedEvent
                ],
            "container events: {:?}",
            summary(&got)
        );
        for e in &got {
            ensure!(
                e.pod_sandbox_status.as_ref().map(|p| p.id.as_str()) == Some(pod.id.as_str()),
                "event without its pod status: {:?}",
                summary(std::slice::from_ref(e))
            );
            ensure!(e.created_at > 0, "event without a time");
        }
        // The STOPPED event carries the exited container's status; DELETED no longer lists it.
        let stopped = got[2]
            .containers_statuses
            .iter()
            .find(|s| s.id == id)
            .context("STOPPED without the container's status")?;
        ensure!(
            stopped.state == cri::ContainerState::ContainerExited as i32
                && stopped.exit_code == 137,
            "stopped status: state {} exit {}",
            stopped.state,
            stopped.exit_code
        );
        ensure!(
            got[2].created_at == stopped.finished_at,
            "STOPPED is timed by the exit"
        );
        ensure!(got[3].containers_statuses.iter().all(|s| s.id != id));

        let pod_id = pod.id.clone();
        pod.remove().await?;
        let got = collect(&mut events, &[&pod_id], 2).await?;
        ensure!(
            got.iter().map(kind).collect::<Vec<_>>()
                == [
                    EventType::ContainerStoppedEvent,
                    EventType::ContainerDeletedEvent
                ],
            "pod teardown events: {:?}",
            summary(&got)
        );
        Ok(())
    })
}

#[test]
fn an_exit_while_berthd_is_down_is_delivered_after_the_restart() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("down", &logs.join("down"))).await?;
        let id = pod.start(sh("brief", "sleep 2; exit 7")).await?;
        d.kill9()?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        d.restart()?;
        let (rs, _) = d.client().await?;
        // Nobody received its CREATED and STARTED either: they come first, in order.
        let mut events = subscribe(&rs).await?;
        let got = collect(&mut events, &[&id], 3).await?;
        ensure!(
            got.iter().map(kind).collect::<Vec<_>>()
                == [
                    EventType::ContainerCreatedEvent,
                    EventType::ContainerStartedEvent,
                    EventType::ContainerStoppedEvent
                ],
            "{:?}",
            summary(&got)
        );
        let got = &got[2..];
        let st = got[0]
            .containers_statuses
            .iter()
            .find(|s| s.id == id)
            .context("no status")?;
        ensure!(st.exit_code == 7, "exit code {}", st.exit_code);
        // Timed when it happened (while berthd was down), not when it was delivered.
        ensure!(got[0].created_at == st.finished_at && st.finished_at > st.started_at);
        Ok(())
    })
}

/// Events for `ids` that arrive within `quiet` (none expected: a redelivery would show).
async fn more(
    s: &mut Streaming<cri::ContainerEventResponse>,
    ids: &[&str],
    quiet: Duration,
) -> Vec<cri::ContainerEventResponse> {
    let mut out = Vec::new();
    while let Ok(e) = next(s, quiet).await {
        if ids.contains(&e.container_id.as_str()) {
            out.push(e);
        }
    }
    out
}

#[test]
fn a_restart_delivers_exactly_the_events_no_client_received() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut events = subscribe(&rs).await?;
        let pod = Pod::run(d, pod_config("replay", &logs.join("replay"))).await?;
        let a = pod.start(sh("a", "sleep 1000")).await?;
        let b = pod.start(sh("b", "sleep 2; exit 3")).await?;
        let ids = [pod.id.as_str(), a.as_str(), b.as_str()];
        let first = collect(&mut events, &ids, 6).await?;
        // kubelet goes away; A is stopped while nobody listens (an event only berthd's
        // memory held), then berthd is killed and B exits while it is down.
        drop(events);
        let mut rs2 = rs.clone();
        rs2.stop_container(cri::StopContainerRequest {
            container_id: a.clone(),
            timeout: 0,
        })
        .await?;
        // berthd keeps its journal position just after applying an entry (A's exit).
        tokio::time::sleep(Duration::from_millis(500)).await;
        d.kill9()?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        d.restart()?;
        let (rs, _) = d.client().await?;
        // From the pod shim's journal berthd replays B's exit and nothing it had
        // applied before (A's exit among them).
        let log = d.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("journal followed") && l.contains(&pod.id))
            .context("no journal line for the pod")?;
        let replayed = line
            .split("replayed=[")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .unwrap_or_default();
        ensure!(
            !replayed.is_empty() && !replayed.contains(','),
            "one entry replayed, not {replayed:?}: {line}"
        );
        let mut events = subscribe(&rs).await?;
        let got = collect(&mut events, &ids, 2).await?;
        let mut kinds = summary(&got);
        kinds.sort();
        let mut want = vec![
            (a[..8].to_string(), EventType::ContainerStoppedEvent),
            (b[..8].to_string(), EventType::ContainerStoppedEvent),
        ];
        want.sort();
        ensure!(
            kinds == want,
            "after the restart: {kinds:?} (before it: {:?})",
            summary(&first)
        );
        let extra = more(&mut events, &ids, Duration::from_secs(1)).await;
        ensure!(
            extra.is_empty(),
            "events delivered twice: {:?}",
            summary(&extra)
        );
        // Those are now received: a second restart delivers none of them again.
        drop(events);
        d.kill9()?;
        d.restart()?;
        let (rs, _) = d.client().await?;
        let mut events = subscribe(&rs).await?;
        let extra = more(&mut events, &ids, Duration::from_secs(1)).await;
        ensure!(
            extra.is_empty(),
            "redelivered after a second restart: {:?}",
            summary(&extra)
        );
        // Removing the pod still announces the rest, once.
        let mut rs2 = rs.clone();
        rs2.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await?;
        let got = collect(&mut events, &ids, 4).await?;
        let mut kinds = summary(&got);
        kinds.sort();
        let mut want = vec![
            (a[..8].to_string(), EventType::ContainerDeletedEvent),
            (b[..8].to_string(), EventType::ContainerDeletedEvent),
            (pod.id[..8].to_string(), EventType::ContainerStoppedEvent),
            (pod.id[..8].to_string(), EventType::ContainerDeletedEvent),
        ];
        want.sort();
        ensure!(kinds == want, "removal: {kinds:?}");
        Ok(())
    })
}

#[test]
fn pod_stats_and_metrics_follow_the_pod() -> Result<()> {
    berthd_test(Berthd::builder().busybox().cni_bridge(0), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, is) = d.client().await?;
        let mut rs2 = rs.clone();
        let mut cfg = pod_config("stats", &logs.join("stats"));
        cfg.labels.insert("tier".into(), "stats".into());
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
        let ip = pod.ip().await?;
        // 3 MB in the writable layer, some cpu, two processes (sh + sleep) besides pause.
        let id = pod
            .start(sh(
                "busy",
                "dd if=/dev/zero of=/blob bs=1000 count=3000 2>/dev/null; \
                     i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
                     touch /done; sleep 1000 & wait",
            ))
            .await?;
        let mut done = false;
        for _ in 0..200 {
            let r = rs2
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["test".into(), "-e".into(), "/done".into()],
                    timeout: 5,
                })
                .await?
                .into_inner();
            if r.exit_code == 0 {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(done, "the container never finished its work");
        // Traffic into the pod: TCP attempts to a closed port reach its eth0.
        for _ in 0..5 {
            let _ = std::net::TcpStream::connect_timeout(
                &format!("{ip}:9").parse()?,
                Duration::from_millis(200),
            );
        }

        let st = rs2
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?
            .into_inner()
            .stats
            .context("no stats")?;
        ensure!(st.attributes.as_ref().map(|a| a.id.as_str()) == Some(pod.id.as_str()));
        let linux = st.linux.context("no linux stats")?;
        let v = |x: Option<&cri::UInt64Value>| x.map(|v| v.value).unwrap_or(0);
        let cpu = v(linux
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref()));
        let mem = v(linux
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref()));
        let procs = v(linux
            .process
            .as_ref()
            .and_then(|p| p.process_count.as_ref()));
        ensure!(cpu > 1_000_000, "pod cpu {cpu} ns");
        ensure!(mem > 0, "pod working set {mem}");
        ensure!(
            procs >= 2,
            "pod processes {procs} (sh, sleep; the pod has no infra process)"
        );
        let net = linux.network.context("no network stats")?;
        let eth0 = net.default_interface.context("no default interface")?;
        ensure!(eth0.name == "eth0", "default interface {}", eth0.name);
        ensure!(v(eth0.rx_bytes.as_ref()) > 0, "eth0 received nothing");
        ensure!(
            linux.containers.len() == 1,
            "{} container stats",
            linux.containers.len()
        );
        let c = &linux.containers[0];
        ensure!(c.attributes.as_ref().map(|a| a.id.as_str()) == Some(id.as_str()));
        let wl = v(c
            .writable_layer
            .as_ref()
            .and_then(|w| w.used_bytes.as_ref()));
        ensure!(wl >= 3_000_000, "writable layer {wl} bytes");
        // ImageFsInfo counts the writable layers as the containers' filesystem.
        let fs = is
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await?
            .into_inner();
        let cfs = fs
            .container_filesystems
            .first()
            .context("no container filesystem")?;
        let used = v(cfs.used_bytes.as_ref());
        ensure!(used >= 3_000_000, "container filesystem {used} bytes");

        let list = |filter| {
            let mut rs = rs.clone();
            async move {
                Ok::<_, anyhow::Error>(
                    rs.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter })
                        .await?
                        .into_inner()
                        .stats,
                )
            }
        };
        ensure!(list(None).await?.len() == 1);
        let by_label = |k: &str, v: &str| cri::PodSandboxStatsFilter {
            id: String::new(),
            label_selector: [(k.to_string(), v.to_string())].into(),
        };
        ensure!(list(Some(by_label("tier", "stats"))).await?.len() == 1);
        ensure!(list(Some(by_label("tier", "other"))).await?.is_empty());
        let unknown = rs2
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: "nope".into(),
            })
            .await
            .err()
            .context("stats of an unknown pod succeeded")?;
        ensure!(unknown.code() == tonic::Code::NotFound, "{unknown}");

        let desc = rs2
            .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
            .await?
            .into_inner()
            .descriptors;
        let m = rs2
            .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await?
            .into_inner()
            .pod_metrics;
        let pm = m
            .iter()
            .find(|p| p.pod_sandbox_id == pod.id)
            .context("pod not in metrics")?;
        let cm = pm
            .container_metrics
            .iter()
            .find(|c| c.container_id == id)
            .context("container not in metrics")?;
        let cpu_metric = cm
            .metrics
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .context("no cpu metric")?;
        ensure!(v(cpu_metric.value.as_ref()) > 0);
        ensure!(cpu_metric.label_values.contains(&"busy".to_string()));
        for metric in pm.metrics.iter().chain(&cm.metrics) {
            let d = desc
                .iter()
                .find(|d| d.name == metric.name)
                .with_context(|| format!("{} has no descriptor", metric.name))?;
            ensure!(
                d.label_keys.len() == metric.label_values.len(),
                "{}",
                metric.name
            );
        }
        ensure!(pm
            .metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total"
                && m.label_values.first().map(String::as_str) == Some("eth0")
                && v(m.value.as_ref()) > 0));
        pod.remove().await
    })
}

#[test]
fn status_reports_features_and_container_status_the_process_identity_and_resources() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let (rs, _) = d.client().await?;
        let mut rs2 = rs.clone();
        let st = rs2
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner();
        ensure!(
            st.features
                .as_ref()
                .is_some_and(|f| f.supplemental_groups_policy),
            "features: {:?}",
            st.features
        );
        let handlers: Vec<(&str, bool)> = st
            .runtime_handlers
            .iter()
            .map(|h| {
                let rro = h
                    .features
                    .as_ref()
                    .is_some_and(|f| f.recursive_read_only_mounts);
                (h.name.as_str(), rro)
            })
            .collect();
        // runc 1.1 lists "rro" in `runc features`; the kernel here is newer than 5.12.
        ensure!(
            handlers == [("", true), ("berth", true)],
            "runtime handlers: {handlers:?}"
        );

        let pod = Pod::run(d, pod_config("who", &logs.join("who"))).await?;
        let mut c = sh("who", "id -G; sleep 1000");
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1234 }),
                run_as_group: Some(cri::Int64Value { value: 2345 }),
                supplemental_groups: vec![3456],
                ..Default::default()
            }),
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
        });
        let id = pod.start(c).await?;
        let s = pod.container_status(&id).await?;
        let user = s
            .user
            .clone()
            .and_then(|u| u.linux)
            .context("no user in status")?;
        ensure!(
            (user.uid, user.gid, user.supplemental_groups.as_slice())
                == (1234, 2345, &[2345, 3456][..]),
            "user {user:?}"
        );
        ensure!(
            s.image_id.starts_with("sha256:") && s.image_id == s.image_ref,
            "image id {:?}",
            s.image_id
        );
        let mem = |s: &cri::ContainerStatus| {
            s.resources
                .as_ref()
                .and_then(|r| r.linux.as_ref())
                .map(|l| l.memory_limit_in_bytes)
        };
        ensure!(mem(&s) == Some(64 << 20), "resources {:?}", s.resources);
        rs2.update_memory_limit(&id, 96 << 20).await?;
        let s = pod.container_status(&id).await?;
        ensure!(mem(&s) == Some(96 << 20), "after update: {:?}", s.resources);
        pod.remove().await
    })
}
