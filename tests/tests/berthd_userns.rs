//! berthd user-namespaced pods (`userns_options` mode POD): what the pod sees from inside
//! (its uid map, the image's files owned by root, a volume's files owned through the
//! mapping, the pod files and logs working) and what the host sees (the processes run as
//! the mapped ids, what the container writes to a volume belongs to them), and bad
//! requests refused with InvalidArgument and nothing made.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::{ns_options, pod_network};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::leaks::leftover_entries;
use std::os::unix::fs::MetadataExt;

/// The host ids the pod's 65536 ids map to (kubelet's ranges are multiples of 65536).
const HOST_UID: u32 = 3 * 65536;
const HOST_GID: u32 = 4 * 65536;

fn mapping(host_id: u32) -> Vec<cri::IdMapping> {
    vec![cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    }]
}

fn userns(
    mode: cri::NamespaceMode,
    uids: Vec<cri::IdMapping>,
    gids: Vec<cri::IdMapping>,
) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: mode as i32,
        uids,
        gids,
    }
}

/// A pod-network pod `name` with user namespace `u`.
fn pod_with(d: &Berthd, name: &str, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    let mut cfg = d.pod_config(name);
    pod_network(&mut cfg);
    ns_options(&mut cfg).userns_options = Some(u);
    cfg
}

/// The `Uid:` (real, effective, saved, fs) of a host process.
fn host_uids(pid: i32) -> Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid: line")?;
    Ok(line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect())
}

#[test]
fn a_pod_in_its_own_user_namespace() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(3).start()?;
    let vol = d.dir.path().join("vol");
    std::fs::create_dir(&vol)?;
    // World-writable so the pod's root (a stranger to this dir) may add a file.
    std::fs::set_permissions(&vol, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    std::fs::write(vol.join("mapped"), "x")?;
    std::os::unix::fs::chown(
        vol.join("mapped"),
        Some(HOST_UID + 1000),
        Some(HOST_GID + 1000),
    )?;
    std::fs::write(vol.join("hosts-own"), "x")?;

    let features = berth_tests::cri::block_on(async {
        let (mut rs, _) = d.client().await?;
        let s = rs
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner();
        anyhow::Ok(s.runtime_handlers)
    })??;
    ensure!(
        features
            .iter()
            .all(|h| h.features.as_ref().is_some_and(|f| f.user_namespaces)),
        "this host (Linux 6.x, root) supports user namespaces: {features:?}"
    );

    let u = userns(
        cri::NamespaceMode::Pod,
        mapping(HOST_UID),
        mapping(HOST_GID),
    );
    let cfg = pod_with(&d, "userns", u.clone());
    d.in_pod(cfg, async |pod| {
        let infra = pod.infra_pid().await?;
        ensure!(
            host_uids(infra)?.iter().all(|&id| id == HOST_UID),
            "the infra runs as the mapped root on the host: {:?}",
            host_uids(infra)?
        );

        let script = "echo uid_map=$(cat /proc/self/uid_map); \
            echo gid_map=$(cat /proc/self/gid_map); \
            echo id=$(id -u):$(id -g); \
            echo passwd=$(stat -c %u:%g /etc/passwd); \
            echo bin=$(stat -c %u:%g /bin); \
            echo mapped=$(stat -c %u:%g /vol/mapped); \
            echo hostsown=$(stat -c %u:%g /vol/hosts-own); \
            echo new > /new && echo new=$(stat -c %u:%g /new); \
            echo w > /vol/written && echo written=ok; \
            grep -q localhost /etc/hosts && echo hosts=ok; \
            test -r /etc/resolv.conf && echo resolv=ok; \
            echo s > /dev/shm/s && echo shm=ok";
        let mut c =
            berth_tests::cri::container_config("inside", BUSYBOX_IMAGE, &["sh", "-c", script]);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: vol.display().to_string(),
            ..Default::default()
        }];
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    userns_options: Some(u.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = pod.run_and_remove(c).await?;
        ensure!(e.code == 0, "{e:?}");
        let map = |v: Option<&str>| v.map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
        ensure!(
            map(e.var("uid_map")) == Some(format!("0 {HOST_UID} 65536")),
            "uid_map:\n{}",
            e.log
        );
        ensure!(
            map(e.var("gid_map")) == Some(format!("0 {HOST_GID} 65536")),
            "gid_map:\n{}",
            e.log
        );
        ensure!(e.var("id") == Some("0:0"), "{}", e.log);
        // The image's files are root's inside (the idmapped rootfs), not nobody's.
        ensure!(e.var("passwd") == Some("0:0"), "{}", e.log);
        ensure!(e.var("bin") == Some("0:0"), "{}", e.log);
        ensure!(e.var("new") == Some("0:0"), "{}", e.log);
        // A volume's files show through the mapping; the host's own ids are nobody's.
        ensure!(e.var("mapped") == Some("1000:1000"), "{}", e.log);
        ensure!(e.var("hostsown") == Some("65534:65534"), "{}", e.log);
        for k in ["written", "hosts", "resolv", "shm"] {
            ensure!(e.var(k) == Some("ok"), "{k}:\n{}", e.log);
        }
        let w = std::fs::metadata(vol.join("written"))?;
        ensure!(
            (w.uid(), w.gid()) == (HOST_UID, HOST_GID),
            "the pod's root writes as the mapped ids on the host: {}:{}",
            w.uid(),
            w.gid()
        );

        // A running container's processes, seen from the host.
        let marker = "987654";
        let id = pod
            .start(berth_tests::cri::container_config(
                "sleeper",
                BUSYBOX_IMAGE,
                &["sleep", marker],
            ))
            .await?;
        let proc_ = berth_tests::procs::all()
            .into_iter()
            .find(|p| p.argv == ["sleep", marker])
            .context("the sleeper's process")?;
        ensure!(
            host_uids(proc_.pid)?.iter().all(|&id| id == HOST_UID),
            "{:?}",
            host_uids(proc_.pid)?
        );
        let out = pod.exec(&id, &["id", "-u"]).await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "0",
            "{out:?}"
        );
        pod.rs.stop_ctr(&id, 0).await?;
        pod.rs.remove_ctr(&id).await?;
        Ok(())
    })?;
    d.finish()
}

#[test]
fn bad_user_namespaces_make_nothing() -> Result<()> {
    let d = Berthd::builder().busybox().cni_bridge(4).start()?;
    let ok = mapping(HOST_UID);
    let two = vec![
        ok[0],
        cri::IdMapping {
            host_id: 2 * HOST_UID,
            ..ok[0]
        },
    ];
    let from_one = vec![cri::IdMapping {
        container_id: 1,
        ..ok[0]
    }];
    let bad = [
        (
            "two mappings",
            userns(cri::NamespaceMode::Pod, two.clone(), two),
        ),
        (
            "container id 0 unmapped",
            userns(cri::NamespaceMode::Pod, from_one.clone(), from_one),
        ),
        (
            "no gid mapping",
            userns(cri::NamespaceMode::Pod, ok.clone(), vec![]),
        ),
        (
            "mode CONTAINER",
            userns(cri::NamespaceMode::Container, vec![], vec![]),
        ),
        (
            "mode TARGET",
            userns(cri::NamespaceMode::Target, vec![], vec![]),
        ),
        (
            "NODE with mappings",
            userns(cri::NamespaceMode::Node, ok.clone(), ok.clone()),
        ),
    ];
    berth_tests::cri::block_on(async {
        let (rs, _) = d.client().await?;
        for (what, u) in bad {
            let cfg = pod_with(&d, "bad", u);
            let err = rs
                .run_pod(&cfg)
                .await
                .err()
                .with_context(|| format!("{what}: accepted"))?;
            ensure!(
                err.code() == tonic::Code::InvalidArgument,
                "{what}: {err:?}"
            );
        }
        // The host's network with a user namespace of the pod's own.
        let mut cfg = d.pod_config("bad-hostnet");
        ns_options(&mut cfg).userns_options =
            Some(userns(cri::NamespaceMode::Pod, ok.clone(), ok.clone()));
        let err = rs
            .run_pod(&cfg)
            .await
            .err()
            .context("host network accepted")?;
        ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
        let pods = rs.list_pods(None).await?;
        ensure!(pods.is_empty(), "{pods:?}");
        anyhow::Ok(())
    })??;
    for dir in ["state/pods", "root/pods", "state/netns"] {
        let left = leftover_entries(&d.dir.path().join(dir));
        ensure!(left.is_empty(), "{dir}: {left:?}");
    }

    // A container that asks for another user namespace than its pod's.
    d.in_pod(
        pod_with(
            &d,
            "mismatch",
            userns(cri::NamespaceMode::Pod, ok.clone(), ok.clone()),
        ),
        async |pod| {
            let mut c = berth_tests::cri::container_config("other", BUSYBOX_IMAGE, &["true"]);
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        userns_options: Some(userns(
                            cri::NamespaceMode::Pod,
                            mapping(5 * 65536),
                            mapping(5 * 65536),
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let err = pod.create(c).await.err().context("accepted")?;
            ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
            ensure!(pod.list_all().await?.is_empty());
            Ok(())
        },
    )?;
    d.finish()
}

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

/// True if some mount point's path contains `needle`.
fn any_mount_named(needle: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p.contains(needle)))
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
            !any_mount_named("idmapped-volumes"),
            "an idmapped volume is still attached"
        );

        // A running container: its idmapped volume stays usable after the host's
        // attachment came off (runc holds its own bind).
        let mut c =
            berth_tests::cri::container_config("idvol-run", BUSYBOX_IMAGE, &["sleep", "600"]);
        c.mounts = vec![idmapped("/idvol", &vol, false)];
        let id = pod.start(c).await?;
        ensure!(!any_mount_named("idmapped-volumes"));
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
        ensure!(!any_mount_named("idmapped-volumes"), "{what}");
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

/// The remapped copies under berthd's root (`<root>/userns-copies/<key>/fs`).
fn copies(d: &Berthd) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = leftover_entries(&d.dir.path().join("root/userns-copies"))
        .into_iter()
        .map(|p| p.join("fs"))
        .collect();
    v.sort();
    v
}

/// `[userns] rootfs = "copy"`: the rootfs is an overlay on copies of the image's layers
/// chowned through the pod's mapping. Inside, the image's files are root's; on the host,
/// the copies' files belong to the mapped ids while the snapshots stay root's; two pods
/// with the same mapping share the copies, which go with the last container using them.
#[test]
fn rootfs_on_remapped_copies() -> Result<()> {
    let mut d = Berthd::builder()
        .busybox()
        .cni_bridge(7)
        .config("[userns]\nrootfs = \"copy\"\n")
        .start()?;
    ensure!(
        d.log().contains("remapped copies"),
        "the configured way is logged:\n{}",
        d.log()
    );
    let u = userns(
        cri::NamespaceMode::Pod,
        mapping(HOST_UID),
        mapping(HOST_GID),
    );
    let script = "echo id=$(id -u):$(id -g); \
        echo passwd=$(stat -c %u:%g /etc/passwd); \
        echo bin=$(stat -c %u:%g /bin); \
        echo new > /new && echo new=$(stat -c %u:%g /new)";
    berth_tests::cri::block_on(async {
        let a = berth_tests::pod::Pod::run(&d, pod_with(&d, "copy-a", u.clone())).await?;
        let e = a
            .run_to_exit(berth_tests::cri::container_config(
                "inside",
                BUSYBOX_IMAGE,
                &["sh", "-c", script],
            ))
            .await?;
        ensure!(e.code == 0, "{e:?}");
        for (k, v) in [
            ("id", "0:0"),
            ("passwd", "0:0"),
            ("bin", "0:0"),
            ("new", "0:0"),
        ] {
            ensure!(e.var(k) == Some(v), "{k}:\n{}", e.log);
        }
        let made = copies(&d);
        ensure!(!made.is_empty(), "no remapped copy under the root");
        let passwd = made
            .iter()
            .map(|c| c.join("etc/passwd"))
            .find(|p| p.exists())
            .context("no copy holds etc/passwd")?;
        let m = std::fs::metadata(&passwd)?;
        ensure!(
            (m.uid(), m.gid()) == (HOST_UID, HOST_GID),
            "{}: {}:{}",
            passwd.display(),
            m.uid(),
            m.gid()
        );
        // A second pod with the same mapping uses the same copies.
        let b = berth_tests::pod::Pod::run(&d, pod_with(&d, "copy-b", u.clone())).await?;
        let id_b = b
            .start(berth_tests::cri::container_config(
                "sleeper",
                BUSYBOX_IMAGE,
                &["sleep", "600"],
            ))
            .await?;
        ensure!(copies(&d) == made, "{:?} != {made:?}", copies(&d));
        let out = b
            .exec(&id_b, &["sh", "-c", "stat -c %u:%g /etc/passwd"])
            .await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "0:0",
            "{out:?}"
        );
        // The first pod's container goes: the second still uses the copies.
        a.rs.remove_ctr(&e.id).await?;
        a.remove().await?;
        ensure!(copies(&d) == made);
        b.rs.stop_ctr(&id_b, 0).await?;
        b.rs.remove_ctr(&id_b).await?;
        ensure!(copies(&d).is_empty(), "left: {:?}", copies(&d));
        b.remove().await
    })??;

    // After a crash: a copy whose only user is no recorded container (berthd died
    // between the container's removal and the copy's) goes at startup.
    d.kill9()?;
    let orphan = d.dir.path().join("root/userns-copies/0123abcd");
    std::fs::create_dir_all(orphan.join("users"))?;
    std::fs::create_dir_all(orphan.join("fs/etc"))?;
    std::fs::write(orphan.join("users").join("f".repeat(64)), "")?;
    d.restart()?;
    // Startup recovery may finish just after the socket serves.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while orphan.exists() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ensure!(
        !orphan.exists(),
        "the orphan copy is still there:\n{}",
        d.log()
    );
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
            !any_mount_named("idmapped-volumes"),
            "an idmapped volume outlived its shim's death"
        );
        let left = leftover_entries(&d.dir.path().join("state/containers"));
        ensure!(left.is_empty(), "{left:?}");
        Ok(())
    })?;
    d.finish()
}
