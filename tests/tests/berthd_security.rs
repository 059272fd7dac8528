//! berthd CreateContainer security context, checked from inside the container the way a
//! user would: capabilities (containerd's default set, add, drop, drop ALL), privileged
//! containers (all caps, writable /sys, host devices, no masks), run_as_user/group/username
//! and supplemental groups, read-only rootfs, no_new_privs, seccomp (RuntimeDefault,
//! Unconfined, Localhost), masked and read-only /proc paths, and bad input refused with
//! InvalidArgument and nothing left half-made.

use anyhow::{ensure, Context, Result};
use berth_tests::berthd::Berthd;
use berth_tests::caps::{cap_set, caps_from_hex, status_field, CONTAINERD_DEFAULT_CAPS};
use berth_tests::cri::{block_on, container_config, privileged};
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::pod::{Exited, Pod};
use k8s_cri::v1 as cri;
use std::collections::BTreeSet;
use tonic::Code;

fn start() -> Result<Berthd> {
    Berthd::builder().busybox().start()
}

/// A busybox container running `sh -c script` with security context `sc`.
fn ctr(name: &str, script: &str, sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    let mut c = container_config(name, BUSYBOX_IMAGE, &["sh", "-c", script]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    c
}

fn caps(add: &[&str], drop: &[&str]) -> Option<cri::Capability> {
    Some(cri::Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

fn seccomp(
    t: cri::security_profile::ProfileType,
    localhost_ref: &str,
) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// A `key=value` line the script printed.
fn var<'a>(e: &'a Exited, key: &str) -> Option<&'a str> {
    e.log
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn cap_field(e: &Exited, field: &str) -> Result<BTreeSet<String>> {
    let hex = status_field(&e.log, field).with_context(|| format!("no {field} in:\n{}", e.log))?;
    caps_from_hex(hex)
}

fn with_log<T>(r: Result<T>, d: &Berthd) -> Result<T> {
    r.map_err(|e| e.context(format!("berthd log:\n{}", d.log())))
}

const CAPS_SCRIPT: &str = "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status; \
    touch /tmp/f && busybox chown 1 /tmp/f; echo chown=$?";

#[test]
fn capabilities_default_add_drop_and_drop_all() -> Result<()> {
    let d = start()?;
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("caps")).await?;
        let default = cap_set(&CONTAINERD_DEFAULT_CAPS);

        let e = pod
            .run_and_remove(ctr("default", CAPS_SCRIPT, Default::default()))
            .await?;
        ensure!(e.code == 0, "{e:?}");
        for f in ["CapEff", "CapPrm", "CapBnd"] {
            ensure!(
                cap_field(&e, f)? == default,
                "{f} is not containerd's default set {default:?}:\n{}",
                e.log
            );
        }
        ensure!(cap_field(&e, "CapAmb")?.is_empty(), "{}", e.log);
        ensure!(
            var(&e, "chown") == Some("0"),
            "chown with CAP_CHOWN: {}",
            e.log
        );

        let e = pod
            .run_and_remove(ctr(
                "add",
                CAPS_SCRIPT,
                cri::LinuxContainerSecurityContext {
                    capabilities: caps(&["NET_ADMIN"], &[]),
                    ..Default::default()
                },
            ))
            .await?;
        let mut want = default.clone();
        want.insert("NET_ADMIN".into());
        ensure!(
            cap_field(&e, "CapEff")? == want,
            "add NET_ADMIN:\n{}",
            e.log
        );
        ensure!(
            cap_field(&e, "CapBnd")? == want,
            "add NET_ADMIN:\n{}",
            e.log
        );

        let e = pod
            .run_and_remove(ctr(
                "drop",
                CAPS_SCRIPT,
                cri::LinuxContainerSecurityContext {
                    capabilities: caps(&[], &["CHOWN"]),
                    ..Default::default()
                },
            ))
            .await?;
        let mut want = default.clone();
        want.remove("CHOWN");
        ensure!(cap_field(&e, "CapEff")? == want, "drop CHOWN:\n{}", e.log);
        ensure!(
            var(&e, "chown").is_some_and(|c| c != "0"),
            "chown must fail without CAP_CHOWN:\n{}",
            e.log
        );

        let e = pod
            .run_and_remove(ctr(
                "dropall",
                CAPS_SCRIPT,
                cri::LinuxContainerSecurityContext {
                    capabilities: caps(&[], &["ALL"]),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(cap_field(&e, "CapEff")?.is_empty(), "drop ALL:\n{}", e.log);
        ensure!(cap_field(&e, "CapBnd")?.is_empty(), "drop ALL:\n{}", e.log);

        // Drop ALL then add one back: only that one.
        let e = pod
            .run_and_remove(ctr(
                "dropall-add",
                CAPS_SCRIPT,
                cri::LinuxContainerSecurityContext {
                    capabilities: caps(&["NET_BIND_SERVICE"], &["ALL"]),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(
            cap_field(&e, "CapEff")? == cap_set(&["NET_BIND_SERVICE"]),
            "drop ALL + add NET_BIND_SERVICE:\n{}",
            e.log
        );
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

/// containerd adds "ALL" as the capabilities the runtime itself holds
/// (`oci.WithAllCurrentCapabilities`), so it works where the host lacks some.
#[test]
fn add_all_capabilities_gives_the_runtimes_own_set() -> Result<()> {
    let d = start()?;
    let host_caps = caps_from_hex(&own_status_field("CapEff")?)?;
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("addall")).await?;
        let e = pod
            .run_and_remove(ctr(
                "addall",
                CAPS_SCRIPT,
                cri::LinuxContainerSecurityContext {
                    capabilities: caps(&["ALL"], &["NET_ADMIN"]),
                    ..Default::default()
                },
            ))
            .await?;
        let mut want = host_caps.clone();
        want.remove("NET_ADMIN");
        ensure!(
            cap_field(&e, "CapEff")? == want,
            "add ALL, drop NET_ADMIN: want {want:?}:\n{}",
            e.log
        );
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

fn own_status_field(field: &str) -> Result<String> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    Ok(status_field(&s, field)
        .context(field.to_string())?
        .to_string())
}

#[test]
fn privileged_container_in_privileged_pod() -> Result<()> {
    let d = start()?;
    // "Full" is everything the runtime itself holds (this host may lack a capability).
    let host_caps = caps_from_hex(&own_status_field("CapEff")?)?;
    let r = block_on(async {
        let pod = Pod::run(&d, privileged(d.pod_config("priv"))).await?;
        let script = "grep -E '^Cap(Eff|Bnd)|^Seccomp:' /proc/self/status; \
            echo sys=$(mount | grep ' on /sys type sysfs ' | head -n 1); \
            test -c /dev/kmsg && echo kmsg=yes || echo kmsg=no; \
            echo timer_list=$(ls -l /proc/timer_list | cut -c1),$(head -c 16 /proc/timer_list | wc -c); \
            grep -q ' /proc/sys proc ro' /proc/self/mounts && echo procsys=ro || echo procsys=rw";
        let e = pod
            .run_and_remove(ctr(
                "priv",
                script,
                cri::LinuxContainerSecurityContext {
                    privileged: true,
                    // Ignored for privileged containers, as containerd.
                    seccomp: seccomp(cri::security_profile::ProfileType::RuntimeDefault, ""),
                    capabilities: caps(&[], &["ALL"]),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(e.code == 0, "{e:?}");
        let eff = cap_field(&e, "CapEff")?;
        ensure!(
            eff == host_caps,
            "privileged CapEff {eff:?} != the runtime's own {host_caps:?}:\n{}",
            e.log
        );
        ensure!(
            status_field(&e.log, "Seccomp") == Some("0"),
            "privileged must run without seccomp:\n{}",
            e.log
        );
        ensure!(
            var(&e, "sys").is_some_and(|s| s.contains("(rw")),
            "/sys must be writable when privileged:\n{}",
            e.log
        );
        ensure!(
            var(&e, "kmsg") == Some("yes"),
            "host devices (/dev/kmsg) must be visible when privileged:\n{}",
            e.log
        );
        ensure!(
            var(&e, "timer_list") == Some("-,16"),
            "/proc/timer_list must not be masked when privileged:\n{}",
            e.log
        );
        ensure!(
            var(&e, "procsys") == Some("rw"),
            "/proc/sys must not be read-only when privileged:\n{}",
            e.log
        );

        // A non-privileged container in the privileged pod is still confined.
        let e = pod
            .run_and_remove(ctr("plain", script, Default::default()))
            .await?;
        ensure!(
            cap_field(&e, "CapEff")? == cap_set(&CONTAINERD_DEFAULT_CAPS),
            "{}",
            e.log
        );
        ensure!(
            var(&e, "sys").is_some_and(|s| s.contains("(ro")),
            "{}",
            e.log
        );
        ensure!(var(&e, "kmsg") == Some("no"), "{}", e.log);
        ensure!(var(&e, "timer_list") == Some("c,0"), "{}", e.log);
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

#[test]
fn run_as_user_group_username_and_supplemental_groups() -> Result<()> {
    let d = start()?;
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("users")).await?;
        let script = "echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); \
            grep '^CapEff' /proc/self/status";

        let e = pod
            .run_and_remove(ctr("image-user", script, Default::default()))
            .await?;
        ensure!(
            var(&e, "uid") == Some("0") && var(&e, "gid") == Some("0"),
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
        ensure!(var(&e, "uid") == Some("1234"), "{}", e.log);
        ensure!(var(&e, "gid") == Some("2345"), "{}", e.log);
        let groups: BTreeSet<&str> = var(&e, "groups")
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ensure!(
            groups == BTreeSet::from(["2345", "3456"]),
            "id -G {groups:?}:\n{}",
            e.log
        );
        // A non-root process keeps no capabilities across exec (no ambient set).
        ensure!(cap_field(&e, "CapEff")?.is_empty(), "{}", e.log);

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
            var(&e, "uid") == Some("65534") && var(&e, "gid") == Some("65534"),
            "run_as_username nobody (65534:65534 in the image's /etc/passwd):\n{}",
            e.log
        );
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

#[test]
fn readonly_rootfs_and_no_new_privs() -> Result<()> {
    let d = start()?;
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("ro")).await?;
        let script = "echo x > /x; echo root=$?; echo x > /tmp/y; echo tmp=$?; \
            echo x > /dev/shm/z; echo shm=$?; grep '^NoNewPrivs' /proc/self/status";

        let e = pod
            .run_and_remove(ctr("rw", script, Default::default()))
            .await?;
        ensure!(
            var(&e, "root") == Some("0") && var(&e, "tmp") == Some("0"),
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
            var(&e, "root").is_some_and(|c| c != "0") && e.log.contains("Read-only file system"),
            "writing /x on a read-only rootfs must fail with EROFS:\n{}",
            e.log
        );
        // containerd mounts nothing on /tmp either: it is part of the read-only rootfs.
        ensure!(
            var(&e, "tmp").is_some_and(|c| c != "0"),
            "/tmp is part of the read-only rootfs:\n{}",
            e.log
        );
        ensure!(
            var(&e, "shm") == Some("0"),
            "/dev/shm stays writable:\n{}",
            e.log
        );
        ensure!(
            status_field(&e.log, "NoNewPrivs") == Some("1"),
            "no_new_privs:\n{}",
            e.log
        );
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

/// Seccomp mode and whether unshare(CLONE_NEWUSER) (no capability needed; the default
/// profile allows unshare only with CAP_SYS_ADMIN) works.
const SECCOMP_SCRIPT: &str =
    "grep '^Seccomp:' /proc/self/status; busybox unshare -U true; echo unshare=$?";

#[test]
fn seccomp_runtime_default_and_unconfined() -> Result<()> {
    use cri::security_profile::ProfileType;
    let d = start()?;
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("seccomp")).await?;
        let run =
            |name: &str, sc: cri::LinuxContainerSecurityContext| ctr(name, SECCOMP_SCRIPT, sc);

        let e = pod
            .run_and_remove(run(
                "default",
                cri::LinuxContainerSecurityContext {
                    seccomp: seccomp(ProfileType::RuntimeDefault, ""),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(
            status_field(&e.log, "Seccomp") == Some("2"),
            "RuntimeDefault must install a filter:\n{}",
            e.log
        );
        ensure!(
            var(&e, "unshare").is_some_and(|c| c != "0"),
            "RuntimeDefault must block unshare without CAP_SYS_ADMIN:\n{}",
            e.log
        );

        #[allow(deprecated)]
        let old = cri::LinuxContainerSecurityContext {
            seccomp_profile_path: "runtime/default".into(),
            ..Default::default()
        };
        let e = pod.run_and_remove(run("deprecated", old)).await?;
        ensure!(
            status_field(&e.log, "Seccomp") == Some("2")
                && var(&e, "unshare").is_some_and(|c| c != "0"),
            "seccomp_profile_path runtime/default:\n{}",
            e.log
        );

        let e = pod
            .run_and_remove(run(
                "unconfined",
                cri::LinuxContainerSecurityContext {
                    seccomp: seccomp(ProfileType::Unconfined, ""),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(
            status_field(&e.log, "Seccomp") == Some("0") && var(&e, "unshare") == Some("0"),
            "Unconfined: no filter, unshare works:\n{}",
            e.log
        );

        // Nothing asked: unconfined, as containerd 1.6.
        let e = pod.run_and_remove(run("unset", Default::default())).await?;
        ensure!(
            status_field(&e.log, "Seccomp") == Some("0"),
            "no seccomp field:\n{}",
            e.log
        );

        // With CAP_SYS_ADMIN the default profile allows unshare (as containerd's).
        let e = pod
            .run_and_remove(run(
                "sysadmin",
                cri::LinuxContainerSecurityContext {
                    seccomp: seccomp(ProfileType::RuntimeDefault, ""),
                    capabilities: caps(&["SYS_ADMIN"], &[]),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(
            status_field(&e.log, "Seccomp") == Some("2") && var(&e, "unshare") == Some("0"),
            "RuntimeDefault + SYS_ADMIN:\n{}",
            e.log
        );
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

#[test]
fn seccomp_localhost_profile_is_applied() -> Result<()> {
    use cri::security_profile::ProfileType;
    let d = start()?;
    let profile = d.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )?;
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("localhost")).await?;
        let e = pod
            .run_and_remove(ctr(
                "local",
                "grep '^Seccomp:' /proc/self/status; mkdir /tmp/d; echo mkdir=$?; \
                 touch /tmp/f; echo touch=$?",
                cri::LinuxContainerSecurityContext {
                    seccomp: seccomp(ProfileType::Localhost, &profile.display().to_string()),
                    ..Default::default()
                },
            ))
            .await?;
        ensure!(
            status_field(&e.log, "Seccomp") == Some("2"),
            "Localhost profile must install a filter:\n{}",
            e.log
        );
        ensure!(
            var(&e, "mkdir").is_some_and(|c| c != "0")
                && e.log.contains("Operation not permitted")
                && var(&e, "touch") == Some("0"),
            "the profile denies mkdir (EPERM) and allows the rest:\n{}",
            e.log
        );
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

#[test]
fn masked_and_readonly_proc_paths() -> Result<()> {
    let d = start()?;
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("masked")).await?;
        // Writes the current hostname back, so nothing changes even if /proc/sys were
        // writable (this host-network pod shares the host's UTS namespace).
        // /proc/kcore is absent on some kernels (this CI VM's): then /proc/timer_list and
        // /proc/keys, masked the same way, carry the check.
        let script = "test -s /proc/kcore; echo kcore=$?; \
            for f in timer_list keys; do \
              echo $f=$(ls -l /proc/$f | cut -c1),$(head -c 16 /proc/$f | wc -c); done; \
            echo firmware=$(ls /sys/firmware | wc -l); \
            h=$(cat /proc/sys/kernel/hostname); echo \"$h\" > /proc/sys/kernel/hostname; \
            echo sysw=$?";
        let e = pod
            .run_and_remove(ctr("masked", script, Default::default()))
            .await?;
        ensure!(
            var(&e, "kcore").is_some_and(|c| c != "0"),
            "/proc/kcore must be masked (empty):\n{}",
            e.log
        );
        for f in ["timer_list", "keys"] {
            ensure!(
                var(&e, f) == Some("c,0"),
                "/proc/{f} must be masked (/dev/null, reads nothing):\n{}",
                e.log
            );
        }
        ensure!(
            var(&e, "firmware") == Some("0"),
            "/sys/firmware must be masked (empty):\n{}",
            e.log
        );
        ensure!(
            var(&e, "sysw").is_some_and(|c| c != "0") && e.log.contains("Read-only file system"),
            "/proc/sys must be read-only:\n{}",
            e.log
        );
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bad_security_context_is_refused_and_leaves_nothing() -> Result<()> {
    use cri::security_profile::ProfileType;
    let d = start()?;
    let bundles = d.dir.path().join("state").join("containers");
    let roots = d.dir.path().join("root").join("containers");
    let r = block_on(async {
        let pod = Pod::run(&d, d.pod_config("bad")).await?;
        let sc = cri::LinuxContainerSecurityContext::default;
        let cases: Vec<(&str, cri::LinuxContainerSecurityContext, &[Code])> = vec![
            (
                "unknown capability added",
                cri::LinuxContainerSecurityContext {
                    capabilities: caps(&["CAP_NOPE"], &[]),
                    ..sc()
                },
                &[Code::InvalidArgument],
            ),
            (
                "unknown capability dropped",
                cri::LinuxContainerSecurityContext {
                    capabilities: caps(&[], &["NOPE"]),
                    ..sc()
                },
                &[Code::InvalidArgument],
            ),
            (
                "run_as_username not in the image's /etc/passwd",
                cri::LinuxContainerSecurityContext {
                    run_as_username: "ghost".into(),
                    ..sc()
                },
                &[Code::InvalidArgument],
            ),
            (
                "run_as_group without a user",
                cri::LinuxContainerSecurityContext {
                    run_as_group: Some(cri::Int64Value { value: 5 }),
                    ..sc()
                },
                &[Code::InvalidArgument],
            ),
            (
                "missing Localhost seccomp profile",
                cri::LinuxContainerSecurityContext {
                    seccomp: seccomp(ProfileType::Localhost, "/nonexistent/berth/profile.json"),
                    ..sc()
                },
                &[Code::InvalidArgument, Code::NotFound],
            ),
            (
                "privileged container in a non-privileged pod",
                cri::LinuxContainerSecurityContext {
                    privileged: true,
                    ..sc()
                },
                &[Code::InvalidArgument],
            ),
        ];
        for (what, sc, codes) in cases {
            let r = pod.create(ctr("bad", "true", sc)).await;
            match &r {
                Err(s) if codes.contains(&s.code()) => {
                    eprintln!("{what}: {:?}: {}", s.code(), s.message())
                }
                _ => anyhow::bail!("{what}: expected {codes:?}, got {r:?}"),
            }
            let left = pod.list_all().await?;
            ensure!(left.is_empty(), "{what}: containers left: {left:?}");
            ensure!(
                entries(&bundles).is_empty() && entries(&roots).is_empty(),
                "{what}: left bundle {:?} / container dir {:?}",
                entries(&bundles),
                entries(&roots)
            );
        }
        // The name was released each time: the same name with a good context runs.
        let e = pod
            .run_and_remove(ctr("bad", "echo ok", Default::default()))
            .await?;
        ensure!(e.code == 0 && e.log == "ok\n", "{e:?}");
        pod.remove().await
    });
    with_log(r?, &d)?;
    d.finish()
}
