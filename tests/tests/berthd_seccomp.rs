//! berthd seccomp profiles: RuntimeDefault, Unconfined and a Localhost profile file,
//! checked from inside the container.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::caps::{caps, status_field};
use berth_tests::cri::{seccomp, secured};
use berth_tests::image::BUSYBOX_IMAGE;

/// A busybox container running `sh -c script` with security context `sc`.
fn ctr(name: &str, script: &str, sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    secured(name, BUSYBOX_IMAGE, script, sc)
}

/// Seccomp mode and whether unshare(CLONE_NEWUSER) (no capability needed; the default
/// profile allows unshare only with CAP_SYS_ADMIN) works.
const SECCOMP_SCRIPT: &str =
    "grep '^Seccomp:' /proc/self/status; busybox unshare -U true; echo unshare=$?";

#[test]
fn seccomp_runtime_default_and_unconfined() -> Result<()> {
    use cri::security_profile::ProfileType;
    let d = Berthd::builder().busybox().start()?;
    d.in_pod(d.pod_config("seccomp"), async |pod| {
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
            e.var("unshare").is_some_and(|c| c != "0"),
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
                && e.var("unshare").is_some_and(|c| c != "0"),
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
            status_field(&e.log, "Seccomp") == Some("0") && e.var("unshare") == Some("0"),
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
            status_field(&e.log, "Seccomp") == Some("2") && e.var("unshare") == Some("0"),
            "RuntimeDefault + SYS_ADMIN:\n{}",
            e.log
        );
        Ok(())
    })?;
    d.finish()
}

#[test]
fn seccomp_localhost_profile_is_applied() -> Result<()> {
    use cri::security_profile::ProfileType;
    let d = Berthd::builder().busybox().start()?;
    let profile = d.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )?;
    d.in_pod(d.pod_config("localhost"), async |pod| {
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
            e.var("mkdir").is_some_and(|c| c != "0")
                && e.log.contains("Operation not permitted")
                && e.var("touch") == Some("0"),
            "the profile denies mkdir (EPERM) and allows the rest:\n{}",
            e.log
        );
        Ok(())
    })?;
    d.finish()
}
