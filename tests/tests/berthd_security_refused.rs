//! berthd refuses a bad security context (unknown capabilities, unknown user, a group
//! without a user, a missing seccomp profile, privileged in a plain pod) with
//! InvalidArgument and nothing left half-made; the name is free again afterwards.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::caps::caps;
use berth_tests::cri::{seccomp, secured};
use berth_tests::host::names_in;
use berth_tests::image::BUSYBOX_IMAGE;
use tonic::Code;

/// A busybox container running `sh -c script` with security context `sc`.
fn ctr(name: &str, script: &str, sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    secured(name, BUSYBOX_IMAGE, script, sc)
}

#[test]
fn bad_security_context_is_refused_and_leaves_nothing() -> Result<()> {
    use cri::security_profile::ProfileType;
    let d = Berthd::builder().busybox().start()?;
    let bundles = d.dir.path().join("state").join("containers");
    let roots = d.dir.path().join("root").join("containers");
    d.in_pod(d.pod_config("bad"), async |pod| {
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
                names_in(&bundles).is_empty() && names_in(&roots).is_empty(),
                "{what}: left bundle {:?} / container dir {:?}",
                names_in(&bundles),
                names_in(&roots)
            );
        }
        // The name was released each time: the same name with a good context runs.
        let e = pod
            .run_and_remove(ctr("bad", "echo ok", Default::default()))
            .await?;
        ensure!(e.code == 0 && e.log == "ok\n", "{e:?}");
        Ok(())
    })?;
    d.finish()
}
