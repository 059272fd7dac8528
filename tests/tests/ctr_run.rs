//! `ctr run --rm`: output and exit codes (0, 3, 137 after an outside `kill -9`) for every runtime set-up.

use anyhow::{ensure, Context, Result};
use berth_tests::{cmd, procs, Instance, Oci, Runtime, Setup};
use std::process::Stdio;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn run_rm_suite(runtime: Runtime) -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let inst = Instance::start(Setup::new(runtime))?;
    let ctr = inst.ctr();

    let id = inst.new_id("echo");
    let out = ctr.run_rm(&[], &id, &["echo", "hello from berth"], T)?;
    ensure!(
        out.code == 0 && out.stdout.contains("hello from berth"),
        "echo: {out:?}\n{}",
        inst.log_tail(30)
    );

    let id = inst.new_id("exit3");
    let out = ctr.run_rm(&[], &id, &["sh", "-c", "echo before; exit 3"], T)?;
    ensure!(
        out.code == 3 && out.stdout.contains("before"),
        "exit 3: {out:?}\n{}",
        inst.log_tail(30)
    );

    // kill -9 from another ctr call while `ctr run --rm` waits in the foreground.
    let id = inst.new_id("killed");
    let argv = ctr.argv(
        &[
            &["run", "--rm"][..],
            &runtime
                .ctr_run_flags()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &[berth_tests::image::BUSYBOX_IMAGE, &id, "sleep", "600"],
        ]
        .concat(),
    );
    let mut fg = std::process::Command::new("ctr")
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let running = ctr.wait_status(&id, "RUNNING", Duration::from_secs(30));
    if running.is_err() {
        let _ = fg.kill();
        let _ = fg.wait();
    }
    running?;
    assert_shims_are_under_test(&inst)?;
    ctr.kill(&id, "SIGKILL")?;
    let st = cmd::wait_bounded(&mut fg, T)?.context("ctr run --rm did not return after kill -9")?;
    ensure!(
        cmd::code_of(st) == 137,
        "kill -9: ctr returned {} \n{}",
        cmd::code_of(st),
        inst.log_tail(30)
    );

    inst.finish()
}

/// Every live shim of this containerd is the binary under test (proves the resolution order).
fn assert_shims_are_under_test(inst: &Instance) -> Result<()> {
    let want = std::fs::canonicalize(&inst.shim)?;
    let shims = inst.shims();
    ensure!(
        !shims.is_empty(),
        "no shim process found for {}",
        inst.address
    );
    for p in shims {
        ensure!(
            p.exe.as_deref() == Some(want.as_path()),
            "shim {} runs {:?}, expected {}",
            p.pid,
            p.exe,
            want.display()
        );
        ensure!(procs::alive(p.pid), "shim {} not alive", p.pid);
    }
    Ok(())
}

#[test]
fn run_rm_berth_v2() -> Result<()> {
    run_rm_suite(Runtime::Berth)
}

#[test]
fn run_rm_drop_in_runc() -> Result<()> {
    run_rm_suite(Runtime::DropIn(Oci::Runc))
}

#[test]
fn run_rm_drop_in_crun() -> Result<()> {
    run_rm_suite(Runtime::DropIn(Oci::Crun))
}
