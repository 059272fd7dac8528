//! `ctr run --rm`: output and exit codes (0, 3, 137 after an outside `kill -9`) for every
//! runtime set-up, on containerd 1.6 and 2.1.

use anyhow::{ensure, Context, Result};
use berth_tests::{cmd, procs, Containerd, Instance, Oci, Runtime, Setup};
use std::process::Stdio;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn run_rm_suite(runtime: Runtime, version: Containerd) -> Result<()> {
    berth_tests::ensure_hugetlb_v1();
    let inst = Instance::start(Setup::new(runtime).on(version))?;
    let ctr = inst.ctr();
    if version.is_v2() && runtime.oci() == Oci::Crun {
        if let Some(v) = crun_refusing_spec_1_2()? {
            return old_crun_refuses(inst, &v);
        }
    }

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
    let mut fg = std::process::Command::new(&ctr.bin)
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

/// crun's version when it is older than 1.15: those crun refuse every OCI spec whose
/// `ociVersion` is not 1.0.x ("unknown version specified"; crun PR #1417 dropped the check),
/// and containerd 2.x writes 1.2.x. Debian 12 ships crun 1.8.1.
fn crun_refusing_spec_1_2() -> Result<Option<String>> {
    let out = cmd::run(
        std::process::Command::new("crun").arg("--version"),
        Duration::from_secs(10),
    )?;
    let v = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("crun version "))
        .map(str::trim)
        .with_context(|| format!("crun --version: {out:?}"))?
        .to_string();
    let mut it = v.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    Ok(((major, minor) < (1, 15)).then_some(v))
}

/// containerd 2.1 with the drop-in naming an old crun: the create fails with crun's own
/// refusal, which proves the shim ran `crun` (BinaryName) and handed its error back through
/// containerd to `ctr`; nothing may be left behind. The Go shim behaves the same.
fn old_crun_refuses(inst: Instance, crun: &str) -> Result<()> {
    eprintln!(
        "crun {crun} refuses containerd 2.1's OCI spec 1.2: asserting that refusal instead \
         of the run (needs crun >= 1.15 for the full suite)"
    );
    let ctr = inst.ctr();
    let id = inst.new_id("echo");
    let out = ctr.run_rm(&[], &id, &["echo", "hello from berth"], T)?;
    ensure!(
        out.code != 0 && out.stderr.contains("unknown version specified"),
        "want crun's refusal of the spec version: {out:?}\n{}",
        inst.log_tail(30)
    );
    ensure!(
        ctr.task(&id)?.is_none(),
        "a task is left after the refused create"
    );
    // `ctr run --rm` removes the container even when the create fails.
    let left = ctr.ok(&["containers", "ls", "-q"])?;
    if left.lines().any(|l| l.trim() == id) {
        ctr.ok(&["containers", "delete", &id])?;
    }
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
    run_rm_suite(Runtime::Berth, Containerd::V1_6)
}

#[test]
fn run_rm_drop_in_runc() -> Result<()> {
    run_rm_suite(Runtime::DropIn(Oci::Runc), Containerd::V1_6)
}

#[test]
fn run_rm_drop_in_crun() -> Result<()> {
    run_rm_suite(Runtime::DropIn(Oci::Crun), Containerd::V1_6)
}

#[test]
fn run_rm_berth_v2_containerd21() -> Result<()> {
    run_rm_suite(Runtime::Berth, Containerd::V2_1)
}

#[test]
fn run_rm_drop_in_runc_containerd21() -> Result<()> {
    run_rm_suite(Runtime::DropIn(Oci::Runc), Containerd::V2_1)
}

#[test]
fn run_rm_drop_in_crun_containerd21() -> Result<()> {
    run_rm_suite(Runtime::DropIn(Oci::Crun), Containerd::V2_1)
}
