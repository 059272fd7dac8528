//! berthd features as a user checks them from inside a container (through its CRI log) or
//! from the host: command/args vs the image's entrypoint/cmd, env, working dir, hostname,
//! DNS and hosts files, bind mounts and their propagation, resources in the container's
//! cgroup, pod sysctls, shared namespaces, and an HTTP server reached on its pod IP and on
//! a port mapping.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::berthd::Builder;
use berth_tests::cri::{block_on, container_config, ns_options, pod_config, pod_network};
use berth_tests::host::{cgroup_dir, cgroup_value, container_pid, ns_of, own_ns};
use berth_tests::pod::Pod;
use berth_tests::{image, procs};
use k8s_cri::v1 as cri;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An image with an entrypoint, a cmd, its own env and a working dir.
const ENTRY_IMAGE: &str = "berth.test/entry:1";

/// A berthd with busybox, and with `ENTRY_IMAGE` when `entry`.
fn berthd_with_images(entry: bool) -> Builder {
    let b = Berthd::builder().busybox();
    if !entry {
        return b;
    }
    b.image(|dir| {
        let cfg = serde_json::json!({
            "Entrypoint": ["/bin/echo", "ep"],
            "Cmd": ["cmd1"],
            "Env": ["PATH=/custom/bin:/bin", "IMG_VAR=img", "OVR=image"],
            "WorkingDir": "/tmp",
        });
        image::busybox_with(dir, ENTRY_IMAGE, cfg)
    })
}

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
}

fn kv(k: &str, v: &str) -> cri::KeyValue {
    cri::KeyValue {
        key: k.into(),
        value: v.into(),
    }
}

fn node_hostname() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}

#[test]
fn process_command_args_env_workdir_and_hostname() -> Result<()> {
    let d = berthd_with_images(true).cni_bridge(0).start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let mut cfg = pod_config("proc", &logs.join("proc"));
        cfg.hostname = "feat-host".into();
        pod_network(&mut cfg);
        let pod = Pod::run(&d, cfg).await?;

        // Kubernetes' rules: command replaces the entrypoint and drops the cmd; args replace the cmd.
        let entry = |name: &str, command: &[&str], args: &[&str]| {
            let mut c = container_config(name, ENTRY_IMAGE, command);
            c.args = args.iter().map(|s| s.to_string()).collect();
            c
        };
        for (name, command, args, want) in [
            ("neither", &[][..], &[][..], "ep cmd1"),
            ("args-only", &[], &["a1", "a2"], "ep a1 a2"),
            ("command-only", &["/bin/echo", "c"], &[], "c"),
            ("both", &["/bin/echo", "c"], &["a1"], "c a1"),
        ] {
            let e = pod.run_to_exit(entry(name, command, args)).await?;
            ensure!(
            e.status.exit_code == 0 && e.stdout == format!("{want}\n"),
            "{name}: command {command:?} args {args:?}: want {want:?}, got {:?} (exit {}, stderr {:?})",
            e.stdout,
            e.status.exit_code,
            e.stderr
        );
        }

        // Env: the image's (PATH included) under the config's; HOSTNAME is the pod's.
        let mut c = entry("env", &["/bin/sh", "-c", "env; echo cwd=$(pwd)"], &[]);
        c.envs = vec![kv("FOO", "bar baz"), kv("OVR", "config")];
        let e = pod.run_to_exit(c).await?;
        let lines: Vec<&str> = e.stdout.lines().collect();
        for want in [
            "FOO=bar baz",
            "OVR=config",
            "IMG_VAR=img",
            "PATH=/custom/bin:/bin",
            "HOSTNAME=feat-host",
            "cwd=/tmp",
        ] {
            ensure!(lines.contains(&want), "env: no {want:?} in\n{}", e.stdout);
        }
        ensure!(
            !lines.contains(&"OVR=image"),
            "image OVR not overridden:\n{}",
            e.stdout
        );
        // working_dir overrides the image's WorkingDir.
        let mut c = entry("cwd", &["/bin/sh", "-c", "pwd"], &[]);
        c.working_dir = "/etc".into();
        let e = pod.run_to_exit(c).await?;
        ensure!(e.stdout == "/etc\n", "working_dir: {:?}", e.stdout);
        // The busybox image only sets PATH: the container gets it.
        let e = pod.run_to_exit(sh("path", "echo $PATH")).await?;
        ensure!(
            e.stdout == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
            "busybox PATH: {:?}",
            e.stdout
        );

        // A CNI pod's containers see the pod's hostname.
        let e = pod
            .run_to_exit(sh("hostname", "hostname; cat /etc/hostname"))
            .await?;
        ensure!(
            e.stdout == "feat-host\nfeat-host\n",
            "CNI pod hostname: {:?}",
            e.stdout
        );
        pod.remove().await?;

        // A host-network pod's containers see the node's.
        let host = Pod::run(&d, pod_config("hostnet", &logs.join("hostnet"))).await?;
        let e = host
            .run_to_exit(sh(
                "hostname",
                "hostname; cat /etc/hostname; echo $HOSTNAME",
            ))
            .await?;
        let node = node_hostname()?;
        ensure!(
            e.stdout == format!("{node}\n{node}\n{node}\n"),
            "host-network hostname: {:?}, node {node:?}",
            e.stdout
        );
        host.remove().await?;
        Ok(())
    })??;
    d.finish()
}

#[test]
fn pod_dns_config_hosts_and_hostname_files() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(1).start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let mut cfg = pod_config("dns", &logs.join("dns"));
        cfg.hostname = "dns-pod".into();
        cfg.dns_config = Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
            searches: vec!["ns1.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into(), "timeout:2".into()],
        });
        pod_network(&mut cfg);
        let pod = Pod::run(&d, cfg).await?;
        let e = pod
            .run_to_exit(sh(
                "files",
                "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; cat /etc/hostname",
            ))
            .await?;
        let parts: Vec<&str> = e.stdout.split("---\n").collect();
        ensure!(parts.len() == 3, "output: {:?}", e.stdout);
        let resolv: Vec<&str> = parts[0].lines().map(str::trim).collect();
        for want in [
            "nameserver 10.96.0.10",
            "nameserver 10.96.0.11",
            "search ns1.svc.cluster.local svc.cluster.local",
            "options ndots:5 timeout:2",
        ] {
            ensure!(
                resolv.contains(&want),
                "resolv.conf lacks {want:?}:\n{}",
                parts[0]
            );
        }
        ensure!(
            resolv
                .iter()
                .filter(|l| l.starts_with("nameserver"))
                .count()
                == 2,
            "extra nameservers:\n{}",
            parts[0]
        );
        ensure!(
            parts[1].lines().any(|l| {
                let mut f = l.split_whitespace();
                f.next() == Some("127.0.0.1") && f.any(|h| h == "localhost")
            }),
            "/etc/hosts has no 127.0.0.1 localhost:\n{}",
            parts[1]
        );
        ensure!(parts[2] == "dns-pod\n", "/etc/hostname: {:?}", parts[2]);
        pod.remove().await?;
        Ok(())
    })??;
    d.finish()
}

/// Host-side mounts the mount test makes; unmounted (deepest first) even when it fails.
struct HostMounts(Vec<PathBuf>);
impl HostMounts {
    fn run(args: &[&str]) -> Result<()> {
        let out = std::process::Command::new("mount").args(args).output()?;
        ensure!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
    /// Binds `dir` onto itself and makes it a shared mount (the host's / here is private).
    fn shared_bind(&mut self, dir: &Path) -> Result<()> {
        let p = dir.to_str().context("path")?;
        Self::run(&["--bind", p, p])?;
        self.0.push(dir.to_path_buf());
        Self::run(&["--make-shared", p])
    }
    fn tmpfs(&mut self, dir: &Path) -> Result<()> {
        Self::run(&["-t", "tmpfs", "tmpfs", dir.to_str().context("path")?])?;
        self.0.push(dir.to_path_buf());
        Ok(())
    }
    fn unmount_all(&mut self) {
        self.0
            .sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in self.0.drain(..) {
            for _ in 0..3 {
                let ok = std::process::Command::new("umount")
                    .arg(&p)
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !ok {
                    break;
                }
            }
        }
    }
}
impl Drop for HostMounts {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

fn bind(dst: &str, src: &Path, readonly: bool, prop: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: dst.into(),
        host_path: src.display().to_string(),
        readonly,
        propagation: prop as i32,
        ..Default::default()
    }
}

#[test]
fn bind_mounts_rw_ro_rslave_private_and_missing_host_path() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    let vols = d.dir.path().join("vols");
    let dir = |n: &str| -> Result<PathBuf> {
        let p = vols.join(n);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let (rw, ro, slave, private) = (dir("rw")?, dir("ro")?, dir("slave")?, dir("private")?);
    std::fs::write(ro.join("seed"), "seed-content\n")?;
    let mut host = HostMounts(vec![]);
    for p in [&slave, &private] {
        host.shared_bind(p)?;
    }
    let r = block_on(async {
        use cri::MountPropagation::*;
        let pod = Pod::run(&d, pod_config("mounts", &logs.join("mounts"))).await?;
        // The pod is removed whatever the checks find, so a failure leaves no cgroup behind.
        let checked = async {

        // Read-write and read-only binds.
        let mut c = sh(
            "rwro",
            "echo written > /rw/out && cat /ro/seed; \
             if echo x > /ro/new 2>/dev/null; then echo ro-writable; else echo ro-refused; fi",
        );
        c.mounts = vec![
            bind("/rw", &rw, false, PropagationPrivate),
            bind("/ro", &ro, true, PropagationPrivate),
        ];
        let e = pod.run_to_exit(c).await?;
        ensure!(
            e.stdout == "seed-content\nro-refused\n",
            "rw/ro container output: {:?} (stderr {:?})",
            e.stdout,
            e.stderr
        );
        let out = std::fs::read_to_string(rw.join("out")).context("file written in /rw")?;
        ensure!(out == "written\n", "host sees {out:?}");
        ensure!(!ro.join("new").exists(), "a write went through the ro bind");

        // rslave: a mount made on the host after the start appears inside; private: it does not.
        let mut c = sh(
            "slave",
            "i=0; while [ ! -e /slave/sub/marker ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
             cat /slave/sub/marker 2>/dev/null || echo slave-missing; \
             cat /private/sub/marker 2>/dev/null || echo private-missing",
        );
        c.mounts = vec![
            bind("/slave", &slave, false, PropagationHostToContainer),
            bind("/private", &private, false, PropagationPrivate),
        ];
        let id = pod.start(c).await?;
        for p in [&slave, &private] {
            let sub = p.join("sub");
            std::fs::create_dir_all(&sub)?;
            host.tmpfs(&sub)?;
            std::fs::write(sub.join("marker"), "host-mount\n")?;
        }
        let e = pod.wait_exit(&id).await?;
        ensure!(
            e.stdout == "host-mount\nprivate-missing\n",
            "propagation (rslave, private): {:?}",
            e.stdout
        );

        // The last two checks are independent: collect both outcomes, then fail on either.
        let mut wrong = Vec::new();

        // A host path that does not exist is created (containerd 1.6 `WithMounts`:
        // MkdirAll 0755) and the container runs with it.
        let missing = vols.join("missing/deeper");
        let mut c = sh("missing", "echo made > /m/f && echo ok");
        c.mounts = vec![bind("/m", &missing, false, PropagationPrivate)];
        match pod.create(c).await {
            Ok(id) => {
                pod.rs
                    .clone()
                    .start_container(cri::StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await?;
                let e = pod.wait_exit(&id).await?;
                ensure!(e.stdout == "ok\n", "missing-path container: {e:?}");
                ensure!(missing.is_dir(), "host path not created");
                ensure!(
                    std::fs::read_to_string(missing.join("f"))? == "made\n",
                    "file written in the created dir"
                );
            }
            Err(s) => {
                wrong.push(format!(
                    "CreateContainer with a missing host path {}: {:?}: {}",
                    missing.display(),
                    s.code(),
                    s.message()
                ));
                // Refused: then nothing may be left of it.
                let left = pod
                    .rs
                    .clone()
                    .list_containers(cri::ListContainersRequest { filter: None })
                    .await?
                    .into_inner()
                    .containers;
                ensure!(
                    !left
                        .iter()
                        .any(|c| c.metadata.as_ref().is_some_and(|m| m.name == "missing")),
                    "a refused container is listed: {left:?}"
                );
            }
        }

        // Bidirectional on a source that is not a shared mount cannot work: containerd
        // 1.6 refuses it (`ensureShared`: "path ... is mounted on ... but it is not a
        // shared mount"); the host's / is private here.
        let plain = dir("plain")?;
        let mut c = sh("notshared", "true");
        c.mounts = vec![bind("/p", &plain, false, PropagationBidirectional)];
        if let Ok(id) = pod.create(c).await {
            wrong.push(format!(
                "CreateContainer accepted an rshared bind of {} (not a shared mount): container {id}",
                plain.display()
            ));
        }
        ensure!(
            wrong.is_empty(),
            "{}\nberthd log:\n{}",
            wrong.join("\n"),
            d.log()
        );
        Ok(())
        }
        .await;
        pod.remove().await?;
        checked
    });
    host.unmount_all();
    r??;
    d.finish()
}

#[test]
fn rshared_bind_in_a_privileged_container_propagates_to_the_host() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    let shared = d.dir.path().join("vols/shared");
    std::fs::create_dir_all(&shared)?;
    let mut host = HostMounts(vec![]);
    host.shared_bind(&shared)?;
    let r = block_on(async {
        use cri::MountPropagation::*;
        let mut cfg = pod_config("rshared", &logs.join("rshared"));
        // Mounting inside needs a privileged container, so a privileged pod.
        cfg.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .privileged = true;
        let pod = Pod::run(&d, cfg).await?;
        // The source is a shared mount: a mount made inside reaches the host.
        let mut c = container_config(
        "shared",
        image::BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /shared/in && mount -t tmpfs tmpfs /shared/in && echo from-inside > /shared/in/f && echo mounted",
        ],
        );
        c.mounts = vec![bind("/shared", &shared, false, PropagationBidirectional)];
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = pod.run_to_exit(c).await?;
        ensure!(e.stdout == "mounted\n", "rshared container: {e:?}");
        host.0.push(shared.join("in"));
        let seen = std::fs::read_to_string(shared.join("in/f")).unwrap_or_default();
        ensure!(
            seen == "from-inside\n",
            "a mount made in an rshared bind did not reach the host"
        );

        pod.remove().await?;
        Ok(())
    });
    host.unmount_all();
    r??;
    d.finish()
}

#[test]
fn resources_reach_the_container_cgroup() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let pod = Pod::run(&d, pod_config("res", &logs.join("res"))).await?;
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
            container_pid(&d, &["sleep", "3457"])
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
    })??;
    d.finish()
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
    let d = Berthd::builder().busybox().cni_bridge(3).start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let mut cfg = pod_config("ns", &logs.join("ns"));
        cfg.hostname = "ns-pod".into();
        pod_network(&mut cfg);
        ns_options(&mut cfg).pid = cri::NamespaceMode::Pod as i32;
        let pod = Pod::run(&d, cfg).await?;
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
    })??;
    d.finish()
}

/// GET `path` from `addr` with bounded timeouts; returns the whole response.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Retries `http_get` until the server answers (bounded).
fn http_get_eventually(addr: SocketAddr, path: &str, within: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        match http_get(addr, path) {
            Ok(r) if r.starts_with("HTTP/") => return Ok(r),
            other => {
                if start.elapsed() > within {
                    anyhow::bail!("GET http://{addr}{path}: {other:?}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn http_server_reachable_on_pod_ip_and_port_mapping() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(4).start()?;
    let logs = d.dir.path().join("logs");
    let host_port = 38000 + (std::process::id() % 900) as i32;
    block_on(async {
        let mut cfg = pod_config("web", &logs.join("web"));
        cfg.hostname = "web".into();
        pod_network(&mut cfg);
        cfg.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port,
            host_ip: String::new(),
        }];
        let pod = Pod::run(&d, cfg).await?;
        let ip = pod.ip().await?;
        let checked = async {
            ensure!(
                ip.starts_with(&format!("{}.", d.bridge().prefix)),
                "pod IP {ip:?}"
            );
            pod.start(sh(
                "httpd",
                "mkdir -p /tmp/www && echo hello-from-berth > /tmp/www/index.html && \
                     exec busybox httpd -f -p 8080 -h /tmp/www",
            ))
            .await?;
            let direct: SocketAddr = format!("{ip}:8080").parse()?;
            let r = tokio::task::spawn_blocking(move || {
                http_get_eventually(direct, "/index.html", Duration::from_secs(10))
            })
            .await??;
            ensure!(
                r.starts_with("HTTP/1.")
                    && r.contains(" 200 ")
                    && r.ends_with("hello-from-berth\n"),
                "GET on the pod IP:\n{r}"
            );
            let mapped: SocketAddr = format!("{}:{host_port}", d.bridge().gateway()).parse()?;
            let r = tokio::task::spawn_blocking(move || {
                http_get_eventually(mapped, "/index.html", Duration::from_secs(10))
            })
            .await?
            .with_context(|| format!("through the port mapping; berthd log:\n{}", d.log()))?;
            ensure!(
                r.contains(" 200 ") && r.ends_with("hello-from-berth\n"),
                "GET on the port mapping:\n{r}"
            );
            Ok(())
        }
        .await;
        pod.remove().await?;
        checked
    })??;
    // The mapping is gone with the pod.
    let mapped: SocketAddr = format!("{}:{host_port}", d.bridge().gateway()).parse()?;
    let after = http_get(mapped, "/");
    ensure!(
        matches!(&after, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "port {host_port} after the pod was removed: {after:?} (want connection refused: no DNAT left)"
    );
    d.finish()
}
