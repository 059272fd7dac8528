//! berthd's state is root's alone: another local user (here `nobody`, through setpriv)
//! can neither list berthd's root and state dirs nor read the store or a container's
//! spec (its env holds Secret values), and cannot reach an unpacked layer or a
//! container's upper dir to run a setuid binary from it. A tree made with default modes
//! (here by `berthd image import`, run before berthd starts) is corrected at startup.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::pod::Pod;

/// Runs `args` as nobody:nogroup with no supplementary groups; Ok(stdout) when it
/// succeeded, Err(stderr) when it did not.
fn as_nobody(args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::symlink_metadata(p)
        .with_context(|| p.display().to_string())?
        .permissions()
        .mode()
        & 0o7777)
}

/// The first regular file below `dir` (an unpacked layer's).
fn some_file(dir: &Path) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let ft = e.file_type().ok()?;
        if ft.is_file() {
            return Some(e.path());
        }
        if ft.is_dir() {
            if let Some(f) = some_file(&e.path()) {
                return Some(f);
            }
        }
    }
    None
}

#[test]
fn another_local_user_can_read_nothing_of_berthds_state() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        // The test's own dir is open, so Berth's modes are the only barrier.
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let (root, state) = (d.dir.path().join("root"), d.dir.path().join("state"));
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("modes", &d.dir.path().join("logs"))).await?;
        let mut cfg = container_config("modes", image::BUSYBOX_IMAGE, &["sleep", "3600"]);
        cfg.envs.push(cri::KeyValue {
            key: "DB_PASSWORD".into(),
            value: "s3cr3t-value".into(),
        });
        let id = pod.start(cfg).await?;
        // A setuid copy of busybox in the container's upper dir.
        let r = rs
            .exec_sync_of(
                &id,
                &["sh", "-c", "cp /bin/busybox /suid && chmod 4755 /suid"],
                10,
            )
            .await?;
        ensure!(r.exit_code == 0, "{r:?}");

        let spec = state.join("containers").join(&id).join("config.json");
        let upper_suid = root.join("containers").join(&id).join("upper/suid");
        ensure!(std::fs::read_to_string(&spec)?.contains("s3cr3t-value"));
        ensure!(mode(&upper_suid)? & 0o4000 != 0, "the setuid copy exists");
        let layer_file = some_file(&root.join("snapshots")).context("an unpacked layer file")?;

        // What nobody can do.
        let s = |p: &Path| p.display().to_string();
        for dir in [&root, &state] {
            let r = as_nobody(&["ls", &s(dir)]);
            ensure!(r.is_err(), "nobody lists {}: {r:?}", dir.display());
        }
        let copy = root.join("containers").join(&id).join("berth-record.json");
        for file in [&root.join("berth.redb"), &spec, &copy, &layer_file] {
            let r = as_nobody(&["cat", &s(file)]);
            ensure!(r.is_err(), "nobody reads {}", file.display());
        }
        let rootfs = state.join("containers").join(&id).join("rootfs");
        let r = as_nobody(&["ls", &s(&rootfs)]);
        ensure!(r.is_err(), "nobody lists a container's rootfs: {r:?}");
        let r = as_nobody(&[&s(&upper_suid), "id", "-u"]);
        ensure!(r.is_err(), "nobody runs the setuid binary: {r:?}");
        // The control: nobody can run things in general, and the test dir is open.
        ensure!(
            as_nobody(&["ls", &s(d.dir.path())]).is_ok(),
            "setpriv works"
        );

        // Modes as documented.
        for (p, want) in [
            (&root, 0o711),
            (&state, 0o711),
            (&root.join("berth.redb"), 0o600),
            (&root.join("snapshots"), 0o700),
            (&root.join("content"), 0o700),
            (&root.join("containers"), 0o700),
            // Traversable for user-namespaced pods' rootfs; each bundle closes itself.
            (&state.join("containers"), 0o711),
            (&state.join("containers").join(&id), 0o700),
            (&root.join("pause"), 0o711),
            (&spec, 0o600),
            (&copy, 0o600),
        ] {
            ensure!(
                mode(p)? == want,
                "{}: {:o}, want {want:o}",
                p.display(),
                mode(p)?
            );
        }

        pod.remove().await?;
        anyhow::Ok(())
    })
}
