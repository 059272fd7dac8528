//! containerd kill -9 and restart: running tasks survive and exec works; tasks that died while
//! containerd was down report STOPPED with their real exit status; a file:// log has no gap.

use anyhow::{ensure, Context, Result};
use berth_tests::{procs, Instance, Runtime, Setup};
use std::time::Duration;

const TRAP42: &str = "trap 'exit 42' TERM; while :; do sleep 1 & wait $!; done";

#[test]
fn tasks_survive_containerd_kill9_and_exits_are_kept() -> Result<()> {
    let mut inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let survivors: Vec<String> = (0..3).map(|_| inst.new_id("live")).collect();
    for id in &survivors {
        ctr.run_detached(&[], id, &["sleep", "600"])?;
    }
    let killed = inst.new_id("kill9");
    let k = ctr.run_detached(&[], &killed, &["sleep", "600"])?;
    let termed = inst.new_id("term42");
    let t = ctr.run_detached(&[], &termed, &["sh", "-c", TRAP42])?;
    std::thread::sleep(Duration::from_millis(300)); // let the trap be installed

    inst.kill9()?;
    procs::signal(k.pid, libc::SIGKILL)?;
    procs::signal(t.pid, libc::SIGTERM)?;
    for pid in [k.pid, t.pid] {
        procs::poll(
            Duration::from_secs(10),
            &format!("pid {pid} to be reaped"),
            || (!procs::alive(pid)).then_some(()),
        )?;
    }
    inst.restart()?;

    for id in &survivors {
        ctr.wait_status(id, "RUNNING", Duration::from_secs(20))?;
        let out = ctr.exec(id, "after", false, &["echo", "alive"])?;
        ensure!(
            out.code == 0 && out.stdout.contains("alive"),
            "exec in {id} after restart: {out:?}\n{}",
            inst.log_tail(40)
        );
    }
    for (id, want) in [(&killed, 137), (&termed, 42)] {
        ctr.wait_status(id, "STOPPED", Duration::from_secs(20))?;
        // ctr 1.6 `task delete` warns "task <id> exit with non-zero exit code <n>" and exits 0.
        let out = ctr.run(&["tasks", "delete", id], Duration::from_secs(30))?;
        let said = format!("exit with non-zero exit code {want}\"");
        ensure!(
            out.code == 0 && out.stderr.contains(&said),
            "{id}: want exit status {want}: {out:?}\n{}",
            inst.log_tail(40)
        );
        ctr.ok(&["containers", "delete", id])?;
    }
    for id in &survivors {
        ctr.kill_and_delete(id)?;
    }
    inst.finish()
}

#[test]
fn file_log_has_no_gap_across_containerd_restart() -> Result<()> {
    let mut inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let log = inst.path().join("logs").join("counter.log");
    let uri = format!("file://{}", log.display());
    let id = inst.new_id("counter");
    let script = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done";
    ctr.run_detached(&["--log-uri", &uri], &id, &["sh", "-c", script])?;
    std::thread::sleep(Duration::from_secs(1));
    inst.kill9()?;
    std::thread::sleep(Duration::from_secs(1));
    inst.restart()?;
    std::thread::sleep(Duration::from_secs(1));
    ctr.kill_and_delete(&id)?;

    let text = std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    let nums: Vec<u64> = text
        .lines()
        .map(|l| l.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("log: {text}"))?;
    ensure!(
        nums.len() >= 30,
        "too few lines ({}) in {}",
        nums.len(),
        log.display()
    );
    for (i, n) in nums.iter().enumerate() {
        ensure!(
            *n == i as u64,
            "gap or reorder at line {i}: got {n}; log:\n{text}"
        );
    }
    inst.finish()
}
