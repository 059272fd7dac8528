//! Pods without an infra process (those that do not share a PID namespace, kubelet's
//! default): no process runs for the pod itself; its IPC and UTS namespaces are pinned by
//! berthd with the hostname and sysctls set, its containers share them, the pod's
//! network and its /dev/shm; the pins and the /dev/shm tmpfs go with StopPodSandbox; a berthd restart keeps the pod Ready and its
//! shim's death makes it NotReady. Bad sysctls leave nothing made.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{block_on, container_config, pod_config, pod_network};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::pod::Pod;
use berth_tests::procs;
use tonic::Code;

/// Processes the pod's shim runs: none before a container starts.
fn shim_children(d: &Berthd) -> Vec<i32> {
    procs::shim_children(&d.socket.display().to_string(), |_| true)
}

/// The namespace inode a pin file (or /proc/PID/ns link) holds.
fn ns_inode(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

const NS_SCRIPT: &str =
    "for n in net ipc uts; do echo $n $(busybox readlink /proc/self/ns/$n); done; \
     echo host $(hostname); echo shmmni $(cat /proc/sys/kernel/shmmni); \
     echo port $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)";

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
}

#[test]
fn a_pod_without_a_shared_pid_namespace_runs_no_infra_and_its_containers_share_its_pins(
) -> Result<()> {
    let host_shmmni = std::fs::read_to_string("/proc/sys/kernel/shmmni")?;
    berthd_test(Berthd::builder().busybox().cni_bridge(5), async |d| {
        let logs = d.dir.path().join("logs");
        let mut cfg = pod_config("pinned", &logs.join("pinned"));
        cfg.hostname = "pinned-pod".into();
        pod_network(&mut cfg);
        cfg.linux.as_mut().unwrap().sysctls = [
            ("kernel.shmmni".to_string(), "2345".to_string()),
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "81".to_string(),
            ),
        ]
        .into();
        let pod = Pod::run(d, cfg).await?;
        let (st, info) = pod.status().await?;
        ensure!(st.state == cri::PodSandboxState::SandboxReady as i32);
        ensure!(
            info["pid"].as_i64().unwrap_or(0) == 0,
            "an infra pid is reported: {info}"
        );
        ensure!(
            procs::shims_of(&d.socket.display().to_string()).len() == 1,
            "one shim per pod"
        );
        ensure!(
            shim_children(d).is_empty(),
            "the pod's shim runs processes before any container: {:?}",
            shim_children(d)
        );
        let pins = d.dir.path().join("state/podns").join(&pod.id);
        let (ipc_ino, uts_ino) = (ns_inode(&pins.join("ipc"))?, ns_inode(&pins.join("uts"))?);
        let host_ipc = ns_inode(Path::new("/proc/self/ns/ipc"))?;
        ensure!(
            ipc_ino != host_ipc,
            "the pinned IPC namespace is the host's"
        );

        let a = pod.run_to_exit(sh("a", NS_SCRIPT)).await?;
        let b = pod.run_to_exit(sh("b", NS_SCRIPT)).await?;
        ensure!(a.code == 0 && b.code == 0, "{a:?} {b:?}");
        ensure!(
            a.stdout == b.stdout,
            "containers differ:\n{}\n{}",
            a.stdout,
            b.stdout
        );
        let want = [
            format!("ipc ipc:[{ipc_ino}]"),
            format!("uts uts:[{uts_ino}]"),
            "host pinned-pod".to_string(),
            "shmmni 2345".to_string(),
            "port 81".to_string(),
        ];
        for w in &want {
            ensure!(
                a.stdout.lines().any(|l| l == w),
                "{w:?} not in:\n{}",
                a.stdout
            );
        }
        let netns = d.dir.path().join("state/netns").join(&pod.id);
        ensure!(
            a.stdout
                .lines()
                .any(|l| l == format!("net net:[{}]", ns_inode(&netns).unwrap_or(0))),
            "not in the pod's network namespace:\n{}",
            a.stdout
        );
        ensure!(
            std::fs::read_to_string("/proc/sys/kernel/shmmni")? == host_shmmni,
            "the host's sysctl changed"
        );
        // One /dev/shm for the pod: what one container leaves there, the next one reads
        // (POSIX shared memory between a pod's containers), on a 64 MiB tmpfs.
        let w = pod
            .run_to_exit(sh("w", "echo from-w > /dev/shm/pod-note"))
            .await?;
        let r = pod
            .run_to_exit(sh(
                "r",
                "cat /dev/shm/pod-note; df -k /dev/shm | tail -n 1; \
                 grep ' /dev/shm ' /proc/self/mountinfo",
            ))
            .await?;
        ensure!(w.code == 0 && r.code == 0, "{w:?} {r:?}");
        let lines: Vec<&str> = r.stdout.lines().collect();
        ensure!(
            lines.first() == Some(&"from-w"),
            "the pod's containers do not share /dev/shm:\n{}",
            r.stdout
        );
        ensure!(
            r.stdout.contains(" 65536 ")
                && ["nosuid", "nodev", "noexec", "tmpfs"]
                    .iter()
                    .all(|o| r.stdout.contains(o)),
            "/dev/shm is not a 64 MiB nosuid,nodev,noexec tmpfs:\n{}",
            r.stdout
        );
        let shm = d.dir.path().join("root/pods").join(&pod.id).join("shm");
        let mounted = || -> Result<bool> {
            let table = std::fs::read_to_string("/proc/self/mountinfo")?;
            let at = shm.display().to_string();
            Ok(table
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(at.as_str())))
        };
        ensure!(mounted()?, "no tmpfs at {}", shm.display());
        // The pod's IP serves, and the pod's stats carry its interface.
        ensure!(!pod.ip().await?.is_empty(), "no pod IP");
        let stats = pod
            .rs
            .clone()
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?
            .into_inner()
            .stats
            .context("no stats")?;
        let ifaces = stats
            .linux
            .and_then(|l| l.network)
            .map(|n| n.default_interface.map(|i| i.name).unwrap_or_default());
        ensure!(
            ifaces.as_deref() == Some("eth0"),
            "pod network stats: {ifaces:?}"
        );

        pod.rs.stop_pod(&pod.id).await?;
        ensure!(
            !mounted()?,
            "the pod's /dev/shm is mounted after StopPodSandbox"
        );
        ensure!(!pins.exists(), "pins left after StopPodSandbox");
        ensure!(!netns.exists(), "netns left after StopPodSandbox");
        pod.remove().await?;
        Ok(())
    })?;
    Ok(())
}

#[test]
fn a_pinned_pod_survives_a_berthd_restart_and_its_shims_death_makes_it_not_ready() -> Result<()> {
    let mut d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    let (id, cid) = block_on(async {
        let pod = Pod::run(&d, pod_config("restart", &logs)).await?;
        let cid = pod
            .start(container_config(
                "sleeper",
                image::BUSYBOX_IMAGE,
                &["sleep", "4242"],
            ))
            .await?;
        Ok::<_, anyhow::Error>((pod.id, cid))
    })??;
    d.kill9()?;
    d.restart()?;
    block_on(async {
        let (rs, _) = d.client().await?;
        ensure!(
            rs.pod_state(&id).await? == cri::PodSandboxState::SandboxReady as i32,
            "not Ready after a restart; log:\n{}",
            d.log()
        );
        ensure!(rs.ctr_status(&cid).await?.state == cri::ContainerState::ContainerRunning as i32);
        procs::signal(d.shim_of_pod(&id)?, libc::SIGKILL)?;
        let mut state = rs.pod_state(&id).await?;
        for _ in 0..100 {
            if state == cri::PodSandboxState::SandboxNotready as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            state = rs.pod_state(&id).await?;
        }
        ensure!(
            state == cri::PodSandboxState::SandboxNotready as i32,
            "still Ready 5 s after its shim died"
        );
        // Its container is settled as the shim's death is confirmed (the pod's status
        // may see the dead shim first).
        rs.wait_ctr_state(
            &cid,
            cri::ContainerState::ContainerExited,
            Duration::from_secs(5),
        )
        .await
        .context("the container is not Exited 5 s after its shim died")?;
        rs.stop_and_remove_pod(&id).await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn bad_sysctls_are_refused_with_nothing_made() -> Result<()> {
    berthd_test(Berthd::builder().cni_bridge(6), async |d| {
        let (rs, _) = d.client().await?;
        let logs = d.dir.path().join("logs");
        for (name, key, pod_net) in [
            ("notns", "vm.swappiness", true),
            ("walk", "kernel/../../../etc/x", true),
            ("hostnet", "net.ipv4.ip_unprivileged_port_start", false),
        ] {
            let mut cfg = pod_config(name, &logs);
            if pod_net {
                pod_network(&mut cfg);
            }
            cfg.linux.as_mut().unwrap().sysctls = [(key.to_string(), "1".to_string())].into();
            let r = rs.run_pod(&cfg).await;
            ensure!(
                matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
                "{key}: {r:?}"
            );
        }
        ensure!(
            rs.list_pods(None).await?.is_empty(),
            "a refused pod is listed"
        );
        let podns = d.dir.path().join("state/podns");
        let left: Vec<_> = std::fs::read_dir(&podns)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(left.is_empty(), "pins left: {left:?}");
        Ok(())
    })
}
