//! berthd user-namespaced pods (`userns_options` mode POD): what the pod sees from inside
//! (its uid map, the image's files owned by root, a volume's files owned through the
//! mapping, the pod files and logs working) and what the host sees (the processes run as
//! the mapped ids, what the container writes to a volume belongs to them), and bad
//! requests refused with InvalidArgument and nothing made; the rootfs on remapped copies.
//! Idmapped volumes: `berthd_userns_volumes.rs`.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::ns_options;
use berth_tests::cri_calls::CriCalls;
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::leaks::leftover_entries;
use berth_tests::userns::{host_uids, mapping, pod_with, userns, HOST_GID, HOST_UID};
use std::os::unix::fs::MetadataExt;

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
