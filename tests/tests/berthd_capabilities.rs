//! berthd container capabilities, read from inside the container: containerd's default
//! set, add, drop, drop ALL (and add one back), add ALL as the runtime's own set, and a
//! privileged container in a privileged pod (all caps, writable /sys, host devices, no
//! masks) beside a plain one that stays confined.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::caps::{
    cap_field, cap_set, caps, caps_from_hex, own_status_field, status_field,
    CONTAINERD_DEFAULT_CAPS,
};
use berth_tests::cri::{privileged, seccomp, secured};
use berth_tests::image::BUSYBOX_IMAGE;

/// A busybox container running `sh -c script` with security context `sc`.
fn ctr(name: &str, script: &str, sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    secured(name, BUSYBOX_IMAGE, script, sc)
}

/// A container printing its capability sets (and whether chown works) with `caps` changed.
fn with_caps(name: &str, add: &[&str], drop: &[&str]) -> cri::ContainerConfig {
    let sc = cri::LinuxContainerSecurityContext {
        capabilities: caps(add, drop),
        ..Default::default()
    };
    ctr(name, CAPS_SCRIPT, sc)
}

const CAPS_SCRIPT: &str = "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status; \
    touch /tmp/f && busybox chown 1 /tmp/f; echo chown=$?";

#[test]
fn capabilities_default_add_drop_and_drop_all() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    d.in_pod(d.pod_config("caps"), async |pod| {
        let default = cap_set(&CONTAINERD_DEFAULT_CAPS);

        let e = pod
            .run_and_remove(ctr("default", CAPS_SCRIPT, Default::default()))
            .await?;
        ensure!(e.code == 0, "{e:?}");
        for f in ["CapEff", "CapPrm", "CapBnd"] {
            ensure!(
                cap_field(&e.log, f)? == default,
                "{f} is not containerd's default set {default:?}:\n{}",
                e.log
            );
        }
        ensure!(cap_field(&e.log, "CapAmb")?.is_empty(), "{}", e.log);
        ensure!(
            e.var("chown") == Some("0"),
            "chown with CAP_CHOWN: {}",
            e.log
        );

        let e = pod
            .run_and_remove(with_caps("add", &["NET_ADMIN"], &[]))
            .await?;
        let mut want = default.clone();
        want.insert("NET_ADMIN".into());
        ensure!(
            cap_field(&e.log, "CapEff")? == want,
            "add NET_ADMIN:\n{}",
            e.log
        );
        ensure!(
            cap_field(&e.log, "CapBnd")? == want,
            "add NET_ADMIN:\n{}",
            e.log
        );

        let e = pod
            .run_and_remove(with_caps("drop", &[], &["CHOWN"]))
            .await?;
        let mut want = default.clone();
        want.remove("CHOWN");
        ensure!(
            cap_field(&e.log, "CapEff")? == want,
            "drop CHOWN:\n{}",
            e.log
        );
        ensure!(
            e.var("chown").is_some_and(|c| c != "0"),
            "chown must fail without CAP_CHOWN:\n{}",
            e.log
        );

        let e = pod
            .run_and_remove(with_caps("dropall", &[], &["ALL"]))
            .await?;
        ensure!(
            cap_field(&e.log, "CapEff")?.is_empty(),
            "drop ALL:\n{}",
            e.log
        );
        ensure!(
            cap_field(&e.log, "CapBnd")?.is_empty(),
            "drop ALL:\n{}",
            e.log
        );

        // Drop ALL then add one back: only that one.
        let e = pod
            .run_and_remove(with_caps("dropall-add", &["NET_BIND_SERVICE"], &["ALL"]))
            .await?;
        ensure!(
            cap_field(&e.log, "CapEff")? == cap_set(&["NET_BIND_SERVICE"]),
            "drop ALL + add NET_BIND_SERVICE:\n{}",
            e.log
        );
        Ok(())
    })?;
    d.finish()
}

/// containerd adds "ALL" as the capabilities the runtime itself holds
/// (`oci.WithAllCurrentCapabilities`), so it works where the host lacks some.
#[test]
fn add_all_capabilities_gives_the_runtimes_own_set() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let host_caps = caps_from_hex(&own_status_field("CapEff")?)?;
    d.in_pod(d.pod_config("addall"), async |pod| {
        let e = pod
            .run_and_remove(with_caps("addall", &["ALL"], &["NET_ADMIN"]))
            .await?;
        let mut want = host_caps.clone();
        want.remove("NET_ADMIN");
        ensure!(
            cap_field(&e.log, "CapEff")? == want,
            "add ALL, drop NET_ADMIN: want {want:?}:\n{}",
            e.log
        );
        Ok(())
    })?;
    d.finish()
}

#[test]
fn privileged_container_in_privileged_pod() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    // "Full" is everything the runtime itself holds (this host may lack a capability).
    let host_caps = caps_from_hex(&own_status_field("CapEff")?)?;
    d.in_pod(privileged(d.pod_config("priv")), async |pod| {
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
        let eff = cap_field(&e.log, "CapEff")?;
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
            e.var("sys").is_some_and(|s| s.contains("(rw")),
            "/sys must be writable when privileged:\n{}",
            e.log
        );
        ensure!(
            e.var("kmsg") == Some("yes"),
            "host devices (/dev/kmsg) must be visible when privileged:\n{}",
            e.log
        );
        ensure!(
            e.var("timer_list") == Some("-,16"),
            "/proc/timer_list must not be masked when privileged:\n{}",
            e.log
        );
        ensure!(
            e.var("procsys") == Some("rw"),
            "/proc/sys must not be read-only when privileged:\n{}",
            e.log
        );

        // A non-privileged container in the privileged pod is still confined.
        let e = pod
            .run_and_remove(ctr("plain", script, Default::default()))
            .await?;
        ensure!(
            cap_field(&e.log, "CapEff")? == cap_set(&CONTAINERD_DEFAULT_CAPS),
            "{}",
            e.log
        );
        ensure!(e.var("sys").is_some_and(|s| s.contains("(ro")), "{}", e.log);
        ensure!(e.var("kmsg") == Some("no"), "{}", e.log);
        ensure!(e.var("timer_list") == Some("c,0"), "{}", e.log);
        Ok(())
    })?;
    d.finish()
}
