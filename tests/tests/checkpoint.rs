//! Checkpoint through CRIU, only where `criu check` passes on the host (skipped with a reason otherwise).

use anyhow::{ensure, Result};
use berth_tests::{cmd, Instance, Runtime, Setup};
use std::process::Command;
use std::time::Duration;

/// `None` when CRIU works here, else why not.
fn criu_unusable() -> Option<String> {
    match cmd::run(Command::new("criu").arg("check"), Duration::from_secs(60)) {
        Ok(o) if o.code == 0 => None,
        Ok(o) => Some(format!(
            "`criu check` failed: {}{}",
            o.stdout.trim(),
            o.stderr.trim()
        )),
        Err(e) => Some(format!("cannot run criu: {e:#}")),
    }
}

#[test]
fn checkpoint_running_task() -> Result<()> {
    if let Some(why) = criu_unusable() {
        eprintln!("SKIPPED checkpoint_running_task: {why}");
        return Ok(());
    }
    let inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let id = inst.new_id("ckpt");
    ctr.run_detached(
        &[],
        &id,
        &["sh", "-c", "i=0; while :; do i=$((i+1)); sleep 0.1; done"],
    )?;
    let images = inst.path().join("criu-images");
    let work = inst.path().join("criu-work");
    let (ip, wp) = (images.display().to_string(), work.display().to_string());
    ctr.ok(&[
        "tasks",
        "checkpoint",
        "--image-path",
        &ip,
        "--work-path",
        &wp,
        &id,
    ])?;
    ensure!(
        images.join("inventory.img").exists(),
        "no CRIU inventory in {ip}"
    );
    ctr.wait_status(&id, "RUNNING", Duration::from_secs(10))?;
    ctr.kill_and_delete(&id)?;
    inst.finish()
}
