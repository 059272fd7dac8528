//! Bind mounts as a container sees them: read-write, read-only, missing host paths, and
//! propagation (rslave, private, rshared from a privileged container to the host).

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::image;
use berth_tests::pod::Pod;
use std::path::{Path, PathBuf};

fn sh(name: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image::BUSYBOX_IMAGE, &["sh", "-c", script])
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
