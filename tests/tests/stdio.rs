//! Stdio as containerd's shims hand it out: a `binary://` logger gets stdout on fd 3 and stderr on fd 4, its query
//! as arguments and CONTAINER_ID/CONTAINER_NAMESPACE, and is gone after the task is deleted;
//! `ctr run -t` gets a pty with the harness terminal's size; null IO gives /dev/null (through
//! `ctr run --null-io`, and on a shim started directly). The containerd-driven tests run on
//! containerd 1.6 and 2.1.

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::direct::Direct;
use berth_tests::task_reqs;
use berth_tests::{cmd, procs, task_api, Containerd, Instance, Runtime, Setup};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Readiness by closing fd 5 first (so the copies below do not inherit it), then one `cat` per
/// stream; stays alive until SIGTERM (recorded) so a logger the shim forgets is caught.
const LOGGER: &str = r#"#!/bin/sh
d="$2"
echo "$*" > "$d/args"
echo "CONTAINER_ID=$CONTAINER_ID" > "$d/env"
echo "CONTAINER_NAMESPACE=$CONTAINER_NAMESPACE" >> "$d/env"
echo $$ > "$d/pids"
exec 5>&-
cat <&3 > "$d/stdout" 3<&- 4<&- &
echo $! >> "$d/pids"
cat <&4 > "$d/stderr" 3<&- 4<&- &
echo $! >> "$d/pids"
exec 3<&- 4<&-
trap 'echo term > "$d/term"; exit 0' TERM
while :; do sleep 0.2; done
"#;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn logger_pids(d: &Path) -> Vec<i32> {
    read(&d.join("pids"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn binary_logger_gets_stdout_stderr_and_is_stopped() -> Result<()> {
    binary_logger(Containerd::V1_6)
}

#[test]
fn binary_logger_gets_stdout_stderr_and_is_stopped_containerd21() -> Result<()> {
    binary_logger(Containerd::V2_1)
}

fn binary_logger(version: Containerd) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("berth-l").tempdir()?;
    let d = tmp.path();
    let script = d.join("logger.sh");
    std::fs::write(&script, LOGGER)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let inst = Instance::start(Setup::new(Runtime::Berth).on(version))?;
    let ctr = inst.ctr();
    let id = inst.new_id("logged");
    let uri = format!(
        "binary://{}?dir={}&mode=test",
        script.display(),
        d.display()
    );
    let res = (|| -> Result<()> {
        ctr.run_detached(
            &["--log-uri", &uri],
            &id,
            &["sh", "-c", "echo out-line; echo err-line >&2; sleep 600"],
        )?;
        procs::poll(Duration::from_secs(10), "logger files to fill", || {
            (read(&d.join("stdout")).contains("out-line")
                && read(&d.join("stderr")).contains("err-line"))
            .then_some(())
        })
        .with_context(|| {
            format!(
                "stdout {:?} stderr {:?}",
                read(&d.join("stdout")),
                read(&d.join("stderr"))
            )
        })?;
        ensure!(
            read(&d.join("stdout")) == "out-line\n" && read(&d.join("stderr")) == "err-line\n",
            "streams mixed up: stdout {:?} stderr {:?}",
            read(&d.join("stdout")),
            read(&d.join("stderr"))
        );
        let args = read(&d.join("args"));
        ensure!(
            args.trim() == format!("dir {} mode test", d.display()),
            "logger args {args:?}"
        );
        let env = read(&d.join("env"));
        ensure!(
            env.contains(&format!("CONTAINER_ID={id}\n"))
                && env.contains(&format!("CONTAINER_NAMESPACE={}\n", inst.namespace)),
            "logger env {env:?}"
        );
        let pids = logger_pids(d);
        ensure!(pids.len() == 3, "logger pids {pids:?}");
        ensure!(
            procs::alive(pids[0]),
            "logger exited while the task still runs"
        );
        ctr.kill_and_delete(&id)?;
        // SIGTERM, then SIGKILL after 12 s at the latest.
        procs::poll(Duration::from_secs(20), "logger processes to go", || {
            pids.iter().all(|p| !procs::alive(*p)).then_some(())
        })
        .with_context(|| {
            format!(
                "still alive: {:?}",
                pids.iter()
                    .filter(|p| procs::alive(**p))
                    .collect::<Vec<_>>()
            )
        })?;
        ensure!(
            read(&d.join("term")) == "term\n",
            "logger was not stopped with SIGTERM (the shim stops a logger with SIGTERM, then SIGKILL after 12 s)"
        );
        Ok(())
    })();
    if let Err(e) = res {
        // Processes our script started (pids it recorded): never leave them running.
        for p in logger_pids(d) {
            if procs::alive(p) {
                let _ = procs::signal(p, libc::SIGKILL);
            }
        }
        let _ = ctr.kill_and_delete(&id);
        return Err(e.context(inst.log_tail(40)));
    }
    inst.finish()
}

#[test]
fn tty_run_has_pts_and_harness_size() -> Result<()> {
    tty_run(Containerd::V1_6)
}

#[test]
fn tty_run_has_pts_and_harness_size_containerd21() -> Result<()> {
    tty_run(Containerd::V2_1)
}

fn tty_run(version: Containerd) -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth).on(version))?;
    let ctr = inst.ctr();
    let id = inst.new_id("tty");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "-t".into()];
    args.extend(Runtime::Berth.ctr_run_flags());
    args.extend(
        [
            berth_tests::image::BUSYBOX_IMAGE,
            id.as_str(),
            "sh",
            "-c",
            // ctr resizes right after Start: let that land before asking.
            "sleep 1; tty; echo size=$(stty size); exit 4",
        ]
        .map(String::from),
    );
    let argv = ctr.argv(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = cmd::run_pty_sized(&ctr.bin, &argv, Duration::from_secs(60), Some((37, 123)))?;
    ensure!(
        out.code == 4 && out.stdout.contains("/dev/pts/") && out.stdout.contains("size=37 123"),
        "ctr run -t: {out:?}\n{}",
        inst.log_tail(30)
    );
    inst.finish()
}

#[test]
fn ctr_null_io_is_dev_null() -> Result<()> {
    ctr_null_io(Containerd::V1_6)
}

#[test]
fn ctr_null_io_is_dev_null_containerd21() -> Result<()> {
    ctr_null_io(Containerd::V2_1)
}

/// `ctr run -d --null-io`: containerd hands the shim empty stdio paths; the init's stdin,
/// stdout and stderr are /dev/null.
fn ctr_null_io(version: Containerd) -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth).on(version))?;
    let ctr = inst.ctr();
    let id = inst.new_id("nullio");
    let init = ctr.run_detached(&["--null-io"], &id, &["sleep", "600"])?;
    for fd in 0..3 {
        let l = std::fs::read_link(format!("/proc/{}/fd/{fd}", init.pid))?;
        ensure!(
            l == Path::new("/dev/null"),
            "fd {fd} of the --null-io init points to {}\n{}",
            l.display(),
            inst.log_tail(30)
        );
    }
    ctr.kill_and_delete(&id)?;
    inst.finish()
}

/// The same on a shim started directly (no containerd): Create with empty stdio paths.
#[test]
fn null_io_is_dev_null() -> Result<()> {
    let d = Direct::new()?;
    let (addr, daemon) = d.start_sleeper("c1")?;
    let res = task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        let r = async {
            let c: api::CreateTaskResponse = d
                .rpc(&cl, "Create", &d.create_req("c1", "", ""))
                .await
                .context("Create with null IO")?;
            d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req("c1", ""))
                .await
                .context("Start")?;
            for fd in 0..3 {
                let l = std::fs::read_link(format!("/proc/{}/fd/{fd}", c.pid))?;
                ensure!(
                    l == Path::new("/dev/null"),
                    "fd {fd} of the null-IO init points to {}",
                    l.display()
                );
            }
            Ok(())
        }
        .await;
        let _ = d
            .rpc::<_, api::Empty>(&cl, "Kill", &task_reqs::kill_req("c1", "", libc::SIGKILL))
            .await;
        let _ = d
            .rpc::<_, api::WaitResponse>(&cl, "Wait", &task_reqs::wait_req("c1", ""))
            .await;
        let _ = d
            .rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req("c1", ""))
            .await;
        let _ = d
            .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req("c1"))
            .await;
        r
    })?;
    res?;
    procs::poll(Duration::from_secs(5), "daemon exit", || {
        (!procs::alive(daemon)).then_some(())
    })?;
    d.finish()
}
