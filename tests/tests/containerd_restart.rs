//! containerd kill -9 and restart: running tasks survive and exec works; tasks that died while
//! containerd was down report STOPPED with their real exit status (containerd 1.6), or are
//! deleted with their shims during the restart (containerd 2.1, as with the Go shim); a
//! file:// log has no gap. Each on containerd 1.6 and 2.1.

use anyhow::{ensure, Context, Result};
use berth_tests::{procs, Containerd, Instance, Runtime, Setup};
use std::time::Duration;

const TRAP42: &str = "trap 'exit 42' TERM; while :; do sleep 1 & wait $!; done";

#[test]
fn tasks_survive_containerd_kill9_and_exits_are_kept() -> Result<()> {
    survive(Containerd::V1_6)
}

#[test]
fn tasks_survive_containerd_kill9_and_exited_tasks_are_deleted_containerd21() -> Result<()> {
    survive(Containerd::V2_1)
}

fn survive(version: Containerd) -> Result<()> {
    let mut inst = Instance::start(Setup::new(Runtime::Berth).on(version))?;
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
    if version.is_v2() {
        // containerd >= 1.7 asks every shim it reloads for its pids, and deletes a shim whose
        // task has none (not a sandbox) as leaked (the cleanup for containerd#6860): a task
        // whose processes all exited while containerd was down is deleted with its shim during
        // the restart, before containerd answers. The Go shim gets the same. What remains is
        // the container, without a task; only the survivors' shims run.
        for id in [&killed, &termed] {
            let t = ctr.task(id)?;
            ensure!(
                t.is_none(),
                "{id}: containerd {} kept the task that exited while it was down: {t:?}\n{}",
                version.label(),
                inst.log_tail(40)
            );
            ensure!(
                !inst.bundle(id).exists(),
                "{id}: bundle left after containerd deleted the task"
            );
            ctr.ok(&["containers", "delete", id])?;
        }
        // Their shims were told to shut down; they exit on their own.
        procs::poll(
            Duration::from_secs(10),
            "the deleted tasks' shims to exit",
            || (inst.shims().len() == survivors.len()).then_some(()),
        )
        .with_context(|| format!("shims: {:#?}", inst.shims()))?;
    } else {
        for (id, want) in [(&killed, 137), (&termed, 42)] {
            stopped_with(&inst, id, want)?;
        }
    }
    for id in &survivors {
        ctr.kill_and_delete(id)?;
    }
    inst.finish()
}

/// containerd 1.6: `id` is STOPPED with exit status `want`; deletes it.
fn stopped_with(inst: &Instance, id: &str, want: i32) -> Result<()> {
    let ctr = inst.ctr();
    ctr.wait_status(id, "STOPPED", Duration::from_secs(20))?;
    // ctr 1.6 `task delete` warns "task <id> exit with non-zero exit code <n>" and exits 0.
    let out = ctr.run(&["tasks", "delete", id], Duration::from_secs(30))?;
    let said = format!("exit with non-zero exit code {want}\"");
    ensure!(
        out.code == 0 && out.stderr.contains(&said),
        "{id}: want exit status {want}: {out:?}\n{}",
        inst.log_tail(40)
    );
    ctr.ok(&["containers", "delete", id]).map(|_| ())
}

#[test]
fn file_log_has_no_gap_across_containerd_restart() -> Result<()> {
    file_log(Containerd::V1_6)
}

#[test]
fn file_log_has_no_gap_across_containerd_restart_containerd21() -> Result<()> {
    file_log(Containerd::V2_1)
}

fn file_log(version: Containerd) -> Result<()> {
    let mut inst = Instance::start(Setup::new(Runtime::Berth).on(version))?;
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
