//! berthd user-namespaced pods' volumes: CRI `Mount.uid_mappings/gid_mappings` (idmapped
//! volume mounts) as seen from inside and on the host, read-only binds of mounts with
//! locked flags, bad idmapped volumes refused with nothing made, and a shim dying while an
//! idmapped volume is attached leaking nothing.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::pod_network;
use berth_tests::cri_calls::CriCalls;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::leaks::leftover_entries;
use berth_tests::userns::{mapping, pod_with, userns, HOST_GID, HOST_UID};
use std::os::unix::fs::MetadataExt;

/// A tmpfs mounted nosuid,nodev,noexec (outside berthd's dir), unmounted on drop.
struct LockedTmpfs(tempfile::TempDir);
impl LockedTmpfs {
    fn mount() -> Result<LockedTmpfs> {
        let t = tempfile::tempdir()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "nosuid,nodev,noexec,size=1m", "tmpfs"])
            .arg(t.path())
            .output()?;
        ensure!(out.status.success(), "mount tmpfs: {out:?}");
        Ok(LockedTmpfs(t))
    }
}
impl Drop for LockedTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// True if some mount point under this test's berthd dir contains `needle` (other tests
/// run side by side with mounts of their own).
fn any_mount_named(d: &Berthd, needle: &str) -> bool {
    let dir = d.dir.path().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| p.starts_with(&dir) && p.contains(needle))
        })
}

/// CRI `Mount.uid_mappings/gid_mappings` equal to the pod's: the volume is idmapped
/// through the pod's user namespace, so its files show with their on-disk ids inside (a
/// file owned by 1000 on disk is 1000 inside, root's is root's) and what the pod's root
/// writes is stored as 0:0 on disk, as containerd with runc 1.2 does; without mappings
/// the same dir shows through the pod's mapping. A read-only bind of a nosuid,nodev,noexec
/// mount works. Removal leaves nothing mounted.
#[test]
fn idmapped_volumes_and_binds_of_locked_mounts() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(5).start()?;
    let vol = d.dir.path().join("idvol");
    std::fs::create_dir(&vol)?;
    std::fs::write(vol.join("disk1000"), "x")?;
    std::os::unix::fs::chown(vol.join("disk1000"), Some(1000), Some(1000))?;
    std::fs::write(vol.join("diskroot"), "x")?;
    let sub = vol.join("file");
    std::fs::write(&sub, "one")?;
    let locked = LockedTmpfs::mount()?;
    std::fs::write(locked.0.path().join("f"), "locked")?;

    let u = userns(
        cri::NamespaceMode::Pod,
        mapping(HOST_UID),
        mapping(HOST_GID),
    );
    let cfg = pod_with(&d, "idvol", u.clone());
    d.in_pod(cfg, async |pod| {
        let script = "echo disk1000=$(stat -c %u:%g /idvol/disk1000); \
            echo diskroot=$(stat -c %u:%g /idvol/diskroot); \
            echo file=$(cat /idfile):$(stat -c %u:%g /idfile); \
            echo plain=$(stat -c %u:%g /plain/disk1000); \
            echo w > /idvol/written && echo written=ok; \
            echo locked=$(cat /locked/f)";
        let mut c =
            berth_tests::cri::container_config("idvol", BUSYBOX_IMAGE, &["sh", "-c", script]);
        let idmapped = |container_path: &str, host_path: &std::path::Path, readonly| cri::Mount {
            container_path: container_path.into(),
            host_path: host_path.display().to_string(),
            readonly,
            uid_mappings: mapping(HOST_UID),
            gid_mappings: mapping(HOST_GID),
            ..Default::default()
        };
        c.mounts = vec![
            idmapped("/idvol", &vol, false),
            idmapped("/idfile", &sub, true),
            cri::Mount {
                container_path: "/plain".into(),
                host_path: vol.display().to_string(),
                readonly: true,
                ..Default::default()
            },
            cri::Mount {
                container_path: "/locked".into(),
                host_path: locked.0.path().display().to_string(),
                readonly: true,
                ..Default::default()
            },
        ];
        let e = pod.run_and_remove(c).await?;
        ensure!(e.code == 0, "{e:?}");
        ensure!(e.var("disk1000") == Some("1000:1000"), "{}", e.log);
        ensure!(e.var("diskroot") == Some("0:0"), "{}", e.log);
        ensure!(e.var("file") == Some("one:0:0"), "{}", e.log);
        // The same dir without mappings: host ids through the pod's mapping (nobody).
        ensure!(e.var("plain") == Some("65534:65534"), "{}", e.log);
        ensure!(e.var("written") == Some("ok"), "{}", e.log);
        ensure!(e.var("locked") == Some("locked"), "{}", e.log);
        let w = std::fs::metadata(vol.join("written"))?;
        ensure!(
            (w.uid(), w.gid()) == (0, 0),
            "the pod's root writes through the idmap as 0:0 on disk: {}:{}",
            w.uid(),
            w.gid()
        );
        ensure!(
            !any_mount_named(&d, "idmapped-volumes"),
            "an idmapped volume is still attached"
        );

        // A running container: its idmapped volume stays usable after the host's
        // attachment came off (runc holds its own bind).
        let mut c =
            berth_tests::cri::container_config("idvol-run", BUSYBOX_IMAGE, &["sleep", "600"]);
        c.mounts = vec![idmapped("/idvol", &vol, false)];
        let id = pod.start(c).await?;
        ensure!(!any_mount_named(&d, "idmapped-volumes"));
        let out = pod
            .exec(&id, &["sh", "-c", "stat -c %u:%g /idvol/disk1000"])
            .await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "1000:1000",
            "{out:?}"
        );
        pod.rs.stop_ctr(&id, 0).await?;
        pod.rs.remove_ctr(&id).await?;
        let left = leftover_entries(&d.dir.path().join("state/containers"));
        ensure!(left.is_empty(), "{left:?}");
        Ok(())
    })?;
    drop(locked);
    d.finish()
}

/// Idmapped mounts with mappings other than the pod's, or in a pod without a user
/// namespace: InvalidArgument, no container, no bundle, nothing mounted.
#[test]
fn bad_idmapped_volumes_make_nothing() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(6).start()?;
    let vol = d.dir.path().join("vol");
    std::fs::create_dir(&vol)?;
    let with = |uids, gids| {
        let mut c = berth_tests::cri::container_config("bad", BUSYBOX_IMAGE, &["true"]);
        c.mounts = vec![cri::Mount {
            container_path: "/v".into(),
            host_path: vol.display().to_string(),
            uid_mappings: uids,
            gid_mappings: gids,
            ..Default::default()
        }];
        c
    };
    let check = async |pod: &berth_tests::pod::Pod, what: &str, c: cri::ContainerConfig| {
        let err = pod
            .create(c)
            .await
            .err()
            .with_context(|| format!("{what}: accepted"))?;
        ensure!(
            err.code() == tonic::Code::InvalidArgument && err.message().contains("\"/v\""),
            "{what}: {err:?}"
        );
        ensure!(pod.list_all().await?.is_empty(), "{what}");
        let left = leftover_entries(&d.dir.path().join("state/containers"));
        ensure!(left.is_empty(), "{what}: {left:?}");
        ensure!(!any_mount_named(&d, "idmapped-volumes"), "{what}");
        Ok(())
    };
    let u = userns(
        cri::NamespaceMode::Pod,
        mapping(HOST_UID),
        mapping(HOST_GID),
    );
    d.in_pod(pod_with(&d, "idmap-bad", u), async |pod| {
        check(
            pod,
            "other uids",
            with(mapping(5 * 65536), mapping(HOST_GID)),
        )
        .await?;
        check(pod, "uids only", with(mapping(HOST_UID), vec![])).await?;
        Ok(())
    })?;
    let mut plain = d.pod_config("idmap-plain");
    pod_network(&mut plain);
    d.in_pod(plain, async |pod| {
        check(
            pod,
            "no user namespace",
            with(mapping(HOST_UID), mapping(HOST_GID)),
        )
        .await
    })?;
    d.finish()
}

/// The shim dies (a failpoint: kill -9 there) right after `runc create`, while the
/// container's idmapped volume is still attached under its bundle: CreateContainer
/// fails, and berthd's rollback and the pod's removal leave nothing mounted (the guard's
/// leak check counts every mount under the test's dir).
#[test]
fn a_shim_dying_with_an_idmapped_volume_attached_leaks_nothing() -> Result<()> {
    let d = Berthd::builder()
        .busybox()
        .cni_bridge(8)
        .configure()?
        // The pod's own infra is the first create: the second one dies.
        .start_adjusted(|c| {
            c.env(
                "BERTH_SHIM_FAILPOINTS",
                "shim.create.after_runtime=1*off->panic",
            );
        })?;
    let vol = d.dir.path().join("vol");
    std::fs::create_dir(&vol)?;
    let u = userns(
        cri::NamespaceMode::Pod,
        mapping(HOST_UID),
        mapping(HOST_GID),
    );
    d.in_pod(pod_with(&d, "idvol-death", u), async |pod| {
        let mut c = berth_tests::cri::container_config("v", BUSYBOX_IMAGE, &["true"]);
        c.mounts = vec![cri::Mount {
            container_path: "/v".into(),
            host_path: vol.display().to_string(),
            uid_mappings: mapping(HOST_UID),
            gid_mappings: mapping(HOST_GID),
            ..Default::default()
        }];
        let err = pod
            .create(c)
            .await
            .err()
            .context("the create survived its shim")?;
        // The shim's death ends the Create call ("early eof" on its socket).
        ensure!(
            err.code() == tonic::Code::Internal && err.message().contains("create task"),
            "{err:?}"
        );
        ensure!(
            !any_mount_named(&d, "idmapped-volumes"),
            "an idmapped volume outlived its shim's death"
        );
        let left = leftover_entries(&d.dir.path().join("state/containers"));
        ensure!(left.is_empty(), "{left:?}");
        Ok(())
    })?;
    d.finish()
}
