//! A pod's shim that stops answering (SIGSTOP; issue "faults beyond kill -9"): calls on that
//! pod end with DeadlineExceeded instead of hanging, calls on other pods are served while one
//! is stuck, a restarted berthd comes up while the shim is still stopped, and after SIGCONT
//! the pod works again. A pod whose shim stays hung can still be stopped and removed: berthd
//! kills the shim and what runs in the pod, and cleans up (the fixture's leak check).

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::pod::Pod;
use berth_tests::{image, procs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;

/// Resumes the shim however the test ends (a stopped process would outlive the teardown).
struct Cont(i32);
impl Drop for Cont {
    fn drop(&mut self) {
        let _ = procs::signal(self.0, libc::SIGCONT);
    }
}

/// Socket inodes among `pid`'s open fds.
fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The shim's listening socket is its own: no other process (runc's, the container's, a
/// helper's) holds it, or a killed shim would go on accepting connections nobody answers.
fn listener_held_by_the_shim_only(shim: i32) -> Result<()> {
    // /proc/net/unix: Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening.
    let table = std::fs::read_to_string("/proc/net/unix")?;
    let listening: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            (flags & 0x10000 != 0).then(|| f.get(6)?.parse().ok())?
        })
        .collect();
    let mine: Vec<u64> = socket_inodes(shim)
        .into_iter()
        .filter(|i| listening.contains(i))
        .collect();
    ensure!(
        !mine.is_empty(),
        "the shim {shim} holds no listening socket"
    );
    for p in procs::all() {
        if p.pid == shim {
            continue;
        }
        let shared: Vec<u64> = socket_inodes(p.pid)
            .into_iter()
            .filter(|i| mine.contains(i))
            .collect();
        ensure!(
            shared.is_empty(),
            "process {} {:?} holds the shim's listening socket",
            p.pid,
            p.argv
        );
    }
    Ok(())
}

async fn sleeper(pod: &Pod) -> Result<String> {
    pod.start(container_config(
        "sleeper",
        image::BUSYBOX_IMAGE,
        &["sleep", "1000"],
    ))
    .await
}

/// ExecSync on the hung pod must fail with DeadlineExceeded; an exec on the healthy pod,
/// sent while it is stuck, must be answered first.
async fn stuck_and_served(hung: &Pod, hung_ctr: &str, ok: &Pod, ok_ctr: &str) -> Result<()> {
    let done = AtomicBool::new(false);
    let stuck = async {
        let r = hung.rs.exec_sync_of(hung_ctr, &["true"], 2).await;
        done.store(true, Ordering::SeqCst);
        r
    };
    let served = async {
        let r = ok.rs.exec_sync_of(ok_ctr, &["echo", "served"], 10).await;
        (r, done.load(Ordering::SeqCst))
    };
    let bound = Duration::from_secs(60);
    let (stuck, (served, stuck_was_done)) =
        tokio::time::timeout(bound, async { tokio::join!(stuck, served) })
            .await
            .context("ExecSync on the hung pod never returned")?;
    let out = served.context("ExecSync on the healthy pod")?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "served",
        "healthy pod's exec: {out:?}"
    );
    ensure!(
        !stuck_was_done,
        "the healthy pod's exec was answered only after the hung pod's call gave up"
    );
    let e = stuck
        .err()
        .context("ExecSync through a stopped shim succeeded")?;
    ensure!(
        e.code() == Code::DeadlineExceeded,
        "hung pod's ExecSync: {:?} {}",
        e.code(),
        e.message()
    );
    Ok(())
}

#[test]
fn a_hung_shim_costs_its_own_pod_only_and_can_be_removed() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let logs = d.dir.path().join("logs");
        let hung = Pod::run(d, pod_config("hung", &logs.join("hung"))).await?;
        let ok = Pod::run(d, pod_config("fine", &logs.join("fine"))).await?;
        let (hc, oc) = (sleeper(&hung).await?, sleeper(&ok).await?);
        let shim = d.shim_of_pod(&hung.id)?;
        listener_held_by_the_shim_only(shim)?;
        procs::signal(shim, libc::SIGSTOP)?;
        let cont = Cont(shim);
        stuck_and_served(&hung, &hc, &ok, &oc).await?;
        // Status reads do not go through the shim: they answer, from what berthd knows.
        hung.container_status(&hc).await?;
        hung.status().await?;

        // berthd restarted while the shim is still stopped comes up and serves the others.
        d.kill9()?;
        let t0 = Instant::now();
        d.restart()?;
        eprintln!(
            "berthd answered {:?} after its restart, one shim stopped",
            t0.elapsed()
        );
        let (rs, _) = d.client().await?;
        let (hung, ok) = (hung.reconnect(rs.clone()), ok.reconnect(rs));
        stuck_and_served(&hung, &hc, &ok, &oc).await?;

        // Resumed, the pod is whole again.
        procs::signal(shim, libc::SIGCONT)?;
        let out = hung.exec(&hc, &["echo", "back"]).await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "back",
            "exec after SIGCONT: {out:?}"
        );
        let st = hung.container_status(&hc).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "after SIGCONT: {st:?}"
        );

        // Hung for good: stop and remove still work, and take the shim with them.
        procs::signal(shim, libc::SIGSTOP)?;
        let id = hung.id.clone();
        tokio::time::timeout(Duration::from_secs(120), hung.remove())
            .await
            .context("StopPodSandbox + RemovePodSandbox of a hung pod never returned")?
            .context("stop + remove of the hung pod")?;
        drop(cont);
        ensure!(
            procs::poll(Duration::from_secs(10), "the hung shim to be gone", || {
                (!procs::alive(shim)).then_some(())
            })
            .is_ok(),
            "the hung pod's shim {shim} is still there after RemovePodSandbox of {id}"
        );
        let out = ok.exec(&oc, &["echo", "still"]).await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "still",
            "{out:?}"
        );
        Ok(())
    })
}
