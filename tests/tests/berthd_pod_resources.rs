//! What a pod's containers share and are limited by, checked from the host and from inside:
//! resources in the container's cgroup, the pod's cgroup parent, pod sysctls, and the pod's
//! shared namespaces.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{block_on, container_config, ns_options, pod_config, pod_network};
use berth_tests::host::{cgroup_dir, cgroup_value, container_pid, ns_of, own_ns};
use berth_tests::pod::Pod;
use berth_tests::{image, procs};
use std::path::Path;
use std::time::Duration;

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
}

#[test]
fn resources_reach_the_container_cgroup() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("res", &logs.join("res"))).await?;
        let mut c = container_config("limited", image::BUSYBOX_IMAGE, &["sleep", "3457"]);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                cpuset_cpus: "0".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = pod.start(c).await?;
        let pid = procs::poll(Duration::from_secs(5), "container pid", || {
            container_pid(d, &["sleep", "3457"])
        })?;
        let mem_dir = cgroup_dir(pid, "memory")?;
        ensure!(
            mem_dir.ends_with(&id),
            "container cgroup {} is not named after the container",
            mem_dir.display()
        );
        for (ctrl, file, want) in [
            ("memory", "memory.limit_in_bytes", (64u64 << 20).to_string()),
            ("cpu", "cpu.shares", "512".into()),
            ("cpu", "cpu.cfs_quota_us", "50000".into()),
            ("cpu", "cpu.cfs_period_us", "100000".into()),
            ("cpuset", "cpuset.cpus", "0".into()),
        ] {
            let got = cgroup_value(pid, ctrl, file)?;
            ensure!(got == want, "{file}: {got}, want {want}");
        }
        // Inside, the container reads the same limit from its own cgroup.
        let e = pod
            .run_to_exit({
                let mut c = sh("inside", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes");
                c.linux = Some(cri::LinuxContainerConfig {
                    resources: Some(cri::LinuxContainerResources {
                        memory_limit_in_bytes: 96 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                c
            })
            .await?;
        ensure!(
            e.stdout == format!("{}\n", 96u64 << 20),
            "memory limit seen inside: {e:?}"
        );
        pod.remove().await?;
        ensure!(
            !mem_dir.exists(),
            "container cgroup {} left after the pod was removed",
            mem_dir.display()
        );
        Ok(())
    })
}

/// Removes a test cgroup parent from every v1 hierarchy (runc creates parents, never removes them).
struct CgroupParent(String);
impl Drop for CgroupParent {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path().join(self.0.trim_start_matches('/')));
            }
        }
    }
}

#[test]
fn containers_live_under_the_pods_cgroup_parent() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    let parent = CgroupParent(format!("/berthfeat{}", std::process::id()));
    block_on(async {
        let mut cfg = pod_config("cgparent", &logs.join("cgparent"));
        cfg.linux.as_mut().unwrap().cgroup_parent = parent.0.clone();
        // The infra's cgroup is checked too.
        berth_tests::cri::share_pid(&mut cfg);
        let pod = Pod::run(&d, cfg).await?;
        let checked = async {
            let infra = pod.infra_pid().await?;
            let infra_dir = cgroup_dir(infra, "memory")?;
            let want = Path::new("/sys/fs/cgroup/memory").join(parent.0.trim_start_matches('/'));
            ensure!(
                infra_dir.starts_with(&want),
                "infra cgroup {} not under the pod's parent {}",
                infra_dir.display(),
                want.display()
            );
            pod.start(container_config("child", image::BUSYBOX_IMAGE, &["sleep", "3458"]),
            )
            .await?;
            let pid = procs::poll(Duration::from_secs(5), "container pid", || {
                container_pid(&d, &["sleep", "3458"])
            })?;
            let dir = cgroup_dir(pid, "memory")?;
            // containerd: a container's cgroup parent is its sandbox's (kubelet's pod cgroup).
            ensure!(
                dir.starts_with(&want),
                "container cgroup {} is not under the pod's cgroup parent {} (pod-level limits do not apply to it)",
                dir.display(),
                want.display()
            );
            Ok(())
        }
        .await;
        pod.remove().await?;
        checked
    })??;
    d.finish()?;
    drop(parent);
    Ok(())
}

#[test]
fn pod_sysctls_apply_inside_containers() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(2).start()?;
    let logs = d.dir.path().join("logs");
    let host_value = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")?;
    block_on(async {
        let mut cfg = pod_config("sysctl", &logs.join("sysctl"));
        cfg.hostname = "sysctl".into();
        pod_network(&mut cfg);
        cfg.linux.as_mut().unwrap().sysctls = [(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        )]
        .into();
        let pod = Pod::run(&d, cfg).await?;
        let e = pod
            .run_to_exit(sh(
                "read",
                "cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
            ))
            .await?;
        ensure!(e.stdout == "0\n", "sysctl inside: {e:?}");
        pod.remove().await?;
        Ok(())
    })??;
    let after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")?;
    ensure!(after == host_value, "the host's sysctl changed: {after}");
    d.finish()
}

const NS_SCRIPT: &str =
    "for n in net ipc uts pid; do echo $n $(busybox readlink /proc/self/ns/$n); done; \
     echo self $$; ps -o pid,args";

/// Parses NS_SCRIPT's output: namespace links by name, the shell's pid, the `ps` text.
fn parse_ns(out: &str) -> (std::collections::HashMap<String, String>, String, String) {
    let mut ns = std::collections::HashMap::new();
    let mut me = String::new();
    let mut ps = String::new();
    for l in out.lines() {
        match l.split_once(' ') {
            Some((k @ ("net" | "ipc" | "uts" | "pid"), v)) => {
                ns.insert(k.to_string(), v.trim().to_string());
            }
            Some(("self", v)) => me = v.trim().to_string(),
            _ => {
                ps.push_str(l);
                ps.push('\n');
            }
        }
    }
    (ns, me, ps)
}

#[test]
fn containers_share_the_pods_namespaces() -> Result<()> {
    berthd_test(Berthd::builder().busybox().cni_bridge(3), async |d| {
        let logs = d.dir.path().join("logs");
        let mut cfg = pod_config("ns", &logs.join("ns"));
        cfg.hostname = "ns-pod".into();
        pod_network(&mut cfg);
        ns_options(&mut cfg).pid = cri::NamespaceMode::Pod as i32;
        let pod = Pod::run(d, cfg).await?;
        let infra = pod.infra_pid().await?;

        let with_pid_mode = |name: &str, mode: cri::NamespaceMode| {
            let mut c = sh(name, NS_SCRIPT);
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        pid: mode as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            c
        };
        let a = pod
            .run_to_exit(with_pid_mode("pod-pid", cri::NamespaceMode::Pod))
            .await?;
        let b = pod
            .run_to_exit(with_pid_mode("own-pid", cri::NamespaceMode::Container))
            .await?;
        let (a_ns, a_me, a_ps) = parse_ns(&a.stdout);
        let (b_ns, b_me, b_ps) = parse_ns(&b.stdout);
        for n in ["net", "ipc", "uts"] {
            let want = ns_of(infra, n)?;
            ensure!(
                a_ns.get(n) == Some(&want) && b_ns.get(n) == Some(&want),
                "{n} ns: infra {want}, containers {:?} / {:?}",
                a_ns.get(n),
                b_ns.get(n)
            );
            ensure!(
                want != own_ns(n)?,
                "the CNI pod's {n} namespace is the host's"
            );
        }
        // PID namespace POD: the pause process is visible (it is pid 1); CONTAINER: it is not.
        ensure!(
            a_ns.get("pid") == Some(&ns_of(infra, "pid")?),
            "POD pid ns: {a_ns:?}"
        );
        ensure!(
            a_ps.contains("/pause") && a_me != "1",
            "POD pid mode: pid {a_me}, ps:\n{a_ps}"
        );
        ensure!(
            b_ns.get("pid") != Some(&ns_of(infra, "pid")?),
            "CONTAINER pid ns is the pod's: {b_ns:?}"
        );
        ensure!(
            !b_ps.contains("/pause") && b_me == "1",
            "CONTAINER pid mode: pid {b_me}, ps:\n{b_ps}"
        );
        pod.remove().await?;
        Ok(())
    })
}
