//! berthd run_as_user/group/username and supplemental groups, a read-only rootfs and
//! no_new_privs, checked from inside the container.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::caps::{cap_field, status_field};
use berth_tests::cri::secured;
use berth_tests::image::BUSYBOX_IMAGE;
use std::collections::BTreeSet;

/// A busybox container running `sh -c script` with security context `sc`.
fn ctr(name: &str, script: &str, sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    secured(name, BUSYBOX_IMAGE, script, sc)
}

#[test]
fn run_as_user_group_username_and_supplemental_groups() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    d.in_pod(d.pod_config("users"), async |pod| {
        let script = "echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); \
            grep '^CapEff' /proc/self/status";

        let e = pod
            .run_and_remove(ctr("image-user", script, Default::default()))
            .await?;
        ensure!(
            e.var("uid") == Some("0") && e.var("gid") == Some("0"),
            "image user (root):\n{}",
            e.log
        );

        let e = pod
            .run_and_remove(ctr(
                "numeric",
                script,
                cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1234 }),
                    run_as_group: Some(cri::Int64Value { value: 2345 }),
                    supplemental_groups: vec![3456],
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(e.code == 0, "{e:?}");
        ensure!(e.var("uid") == Some("1234"), "{}", e.log);
        ensure!(e.var("gid") == Some("2345"), "{}", e.log);
        let groups: BTreeSet<&str> = e
            .var("groups")
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ensure!(
            groups == BTreeSet::from(["2345", "3456"]),
            "id -G {groups:?}:\n{}",
            e.log
        );
        // A non-root process keeps no capabilities across exec (no ambient set).
        ensure!(cap_field(&e.log, "CapEff")?.is_empty(), "{}", e.log);

        let e = pod
            .run_and_remove(ctr(
                "named",
                script,
                cri::LinuxContainerSecurityContext {
                    run_as_username: "nobody".into(),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(
            e.var("uid") == Some("65534") && e.var("gid") == Some("65534"),
            "run_as_username nobody (65534:65534 in the image's /etc/passwd):\n{}",
            e.log
        );
        Ok(())
    })?;
    d.finish()
}

#[test]
fn readonly_rootfs_and_no_new_privs() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    d.in_pod(d.pod_config("ro"), async |pod| {
        let script = "echo x > /x; echo root=$?; echo x > /tmp/y; echo tmp=$?; \
            echo x > /dev/shm/z; echo shm=$?; grep '^NoNewPrivs' /proc/self/status";

        let e = pod
            .run_and_remove(ctr("rw", script, Default::default()))
            .await?;
        ensure!(
            e.var("root") == Some("0") && e.var("tmp") == Some("0"),
            "a default rootfs is writable:\n{}",
            e.log
        );
        ensure!(status_field(&e.log, "NoNewPrivs") == Some("0"), "{}", e.log);

        let e = pod
            .run_and_remove(ctr(
                "ro",
                script,
                cri::LinuxContainerSecurityContext {
                    readonly_rootfs: true,
                    no_new_privs: true,
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(
            e.var("root").is_some_and(|c| c != "0") && e.log.contains("Read-only file system"),
            "writing /x on a read-only rootfs must fail with EROFS:\n{}",
            e.log
        );
        // containerd mounts nothing on /tmp either: it is part of the read-only rootfs.
        ensure!(
            e.var("tmp").is_some_and(|c| c != "0"),
            "/tmp is part of the read-only rootfs:\n{}",
            e.log
        );
        ensure!(
            e.var("shm") == Some("0"),
            "/dev/shm stays writable:\n{}",
            e.log
        );
        ensure!(
            status_field(&e.log, "NoNewPrivs") == Some("1"),
            "no_new_privs:\n{}",
            e.log
        );
        Ok(())
    })?;
    d.finish()
}
