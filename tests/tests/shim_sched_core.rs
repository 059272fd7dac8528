//! `SCHED_CORE=1` (containerd's core scheduling): the shim's `start` gives its process group a
//! core-scheduling cookie before the daemon forks, so the pod's containers carry the shim's
//! cookie and share SMT cores with nobody else. On a kernel without core scheduling the start
//! fails with that reason and leaves no daemon or socket, as containerd's Go shim does.

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::direct::Direct;
use berth_tests::{task_api, task_reqs};
use std::time::Duration;

const PR_SCHED_CORE: libc::c_int = 62;
const PR_SCHED_CORE_GET: libc::c_ulong = 0;
const PIDTYPE_PID: libc::c_ulong = 0;

/// The core-scheduling cookie of `pid`, or the errno when the kernel cannot tell.
fn cookie(pid: i32) -> std::result::Result<u64, i32> {
    let mut c: u64 = 0;
    // SAFETY: PR_SCHED_CORE_GET writes one u64 through the pointer we pass.
    let r = unsafe {
        libc::prctl(
            PR_SCHED_CORE,
            PR_SCHED_CORE_GET,
            pid as libc::c_ulong,
            PIDTYPE_PID,
            &mut c as *mut u64,
        )
    };
    if r == 0 {
        Ok(c)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[test]
fn sched_core_gives_the_pod_a_cookie_or_fails_the_start() -> Result<()> {
    let supported = cookie(0).is_ok();
    Direct::run(|d| {
        let id = "sc";
        d.bundle(id, &["sleep", "600"], &[])?;
        // Its own session: the cookie is made for start's process group, as containerd
        // starts shims (never this test's group).
        let s = d.start_via(
            id,
            &["setsid", "env", "SCHED_CORE=1"],
            &[],
            Duration::from_secs(2),
        )?;
        if !supported {
            eprintln!(
                "this kernel has no core scheduling (CONFIG_SCHED_CORE): checking the refusal"
            );
            ensure!(
                s.code != 0,
                "start succeeded without core scheduling: {}",
                s.text()
            );
            ensure!(
                s.text().contains("sched core"),
                "the reason is named: {}",
                s.text()
            );
            ensure!(
                d.daemons().is_empty(),
                "a daemon was left: {:?}",
                d.daemons()
            );
            let sock = d.expected_address(id);
            let path = sock.trim_start_matches("unix://");
            ensure!(!std::path::Path::new(path).exists(), "socket {path} left");
            return Ok(());
        }
        ensure!(s.code == 0, "start with SCHED_CORE=1: {}", s.text());
        let addr = d.expected_address(id);
        let daemon = d.daemons().first().context("no daemon")?.pid;
        task_api::block_on(async {
            let cl = task_api::connect(&addr).await?;
            let c: api::CreateTaskResponse =
                d.rpc(&cl, "Create", &d.create_req(id, "", "")).await?;
            d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req(id, ""))
                .await?;
            let (shim, ctr, me) = (cookie(daemon), cookie(c.pid as i32), cookie(0));
            let res = (|| {
                ensure!(
                    matches!(shim, Ok(x) if x != 0) && shim == ctr && me != shim,
                    "cookies: shim {shim:?}, container {ctr:?}, test {me:?}"
                );
                Ok(())
            })();
            d.rpc::<_, api::Empty>(&cl, "Kill", &task_reqs::kill_req(id, "", 9))
                .await?;
            d.rpc::<_, api::WaitResponse>(&cl, "Wait", &task_reqs::wait_req(id, ""))
                .await?;
            d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req(id, ""))
                .await?;
            let _ = d
                .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req(id))
                .await;
            res
        })?
    })
}
