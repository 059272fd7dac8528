//! What a container's process gets from its config, image and pod, as a user checks it from
//! inside (through its CRI log): command/args vs the image's entrypoint/cmd, env, working
//! dir, hostname, DNS config and the hosts and hostname files.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd, Builder};
use berth_tests::cri::{container_config, pod_config, pod_network};
use berth_tests::image;
use berth_tests::pod::Pod;

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
    berthd_test(berthd_with_images(true).cni_bridge(0), async |d| {
        let logs = d.dir.path().join("logs");
        let mut cfg = pod_config("proc", &logs.join("proc"));
        cfg.hostname = "feat-host".into();
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;

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
        let host = Pod::run(d, pod_config("hostnet", &logs.join("hostnet"))).await?;
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
    })
}

#[test]
fn pod_dns_config_hosts_and_hostname_files() -> Result<()> {
    berthd_test(Berthd::builder().busybox().cni_bridge(1), async |d| {
        let logs = d.dir.path().join("logs");
        let mut cfg = pod_config("dns", &logs.join("dns"));
        cfg.hostname = "dns-pod".into();
        cfg.dns_config = Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
            searches: vec!["ns1.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into(), "timeout:2".into()],
        });
        pod_network(&mut cfg);
        let pod = Pod::run(d, cfg).await?;
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
    })
}
