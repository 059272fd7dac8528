//! berthd's masked and read-only paths (/proc/kcore, timer_list, keys, /sys/firmware,
//! a read-only /proc/sys), as a container sees them.

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::secured;
use berth_tests::image::BUSYBOX_IMAGE;

/// A busybox container running `sh -c script` with security context `sc`.
fn ctr(name: &str, script: &str, sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    secured(name, BUSYBOX_IMAGE, script, sc)
}

#[test]
fn masked_and_readonly_proc_paths() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    d.in_pod(d.pod_config("masked"), async |pod| {
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
            e.var("kcore").is_some_and(|c| c != "0"),
            "/proc/kcore must be masked (empty):\n{}",
            e.log
        );
        for f in ["timer_list", "keys"] {
            ensure!(
                e.var(f) == Some("c,0"),
                "/proc/{f} must be masked (/dev/null, reads nothing):\n{}",
                e.log
            );
        }
        ensure!(
            e.var("firmware") == Some("0"),
            "/sys/firmware must be masked (empty):\n{}",
            e.log
        );
        ensure!(
            e.var("sysw").is_some_and(|c| c != "0") && e.log.contains("Read-only file system"),
            "/proc/sys must be read-only:\n{}",
            e.log
        );
        Ok(())
    })?;
    d.finish()
}
