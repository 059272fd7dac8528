//! tests/try.sh, the README's first command, run as a newcomer would but on private paths
//! (its own run dir, CRI socket, root, state, pod log dir, an empty CNI conf dir, a bridge
//! and /24 of its own with masquerade off, a free streaming port, the binaries already
//! built): it starts berthd, runs a pod with a busybox container through it with
//! berthctl and prints what the container wrote; `try.sh stop` then leaves nothing: no
//! berthd, no shim, no mount, none of the dirs it made, no bridge. And the packages it
//! installs are ones the test command installs too.

use anyhow::{ensure, Context, Result};
use berth_tests::{cmd, leaks, procs};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn try_sh(env: &[(&str, String)], arg: Option<&str>) -> Result<cmd::Output> {
    let mut c = Command::new("bash");
    c.arg(repo().join("tests/try.sh"));
    c.args(arg);
    for (k, v) in env {
        c.env(k, v);
    }
    cmd::run(&mut c, Duration::from_secs(300))
}

#[test]
fn try_sh_runs_a_pod_through_berthd_and_stop_leaves_nothing() -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("berth-try-")
        .tempdir_in("/tmp")?;
    let t = tmp.path();
    let conf_dir = t.join("net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let n = std::process::id() % 200 + 20;
    let bridge = format!("btry{n}");
    let bin = berth_tests::berthd::binary()?
        .parent()
        .context("no binary dir")?
        .to_path_buf();
    let p = |s: &str| t.join(s).display().to_string();
    let socket = p("berth.sock");
    let env = [
        ("BERTH_TRY_RUN", p("run")),
        ("BERTH_TRY_SOCKET", socket.clone()),
        ("BERTH_TRY_ROOT", p("root")),
        ("BERTH_TRY_STATE", p("state")),
        ("BERTH_TRY_LOGS", p("podlogs")),
        ("BERTH_TRY_CNI_CONF_DIR", conf_dir.display().to_string()),
        ("BERTH_TRY_BRIDGE", bridge.clone()),
        ("BERTH_TRY_SUBNET", format!("10.239.{n}.0/24")),
        ("BERTH_TRY_IP_MASQ", "false".into()),
        ("BERTH_TRY_STREAMING_PORT", "0".into()),
        ("BERTH_TRY_BIN", bin.display().to_string()),
        ("BERTH_TRY_INSTALL", "0".into()),
    ];
    let started = try_sh(&env, None)?;
    let pid: i32 = std::fs::read_to_string(t.join("run/berthd.pid"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    // Whatever happens next, `stop` runs.
    let stopped = try_sh(&env, Some("stop"));
    let started = started.ok("try.sh")?;
    ensure!(
        started
            .stdout
            .contains("hello from pod hello, run by berthd")
            && started.stdout.contains(&format!("pod IP: 10.239.{n}.")),
        "try.sh did not show the pod's output:\n{}\n{}",
        started.stdout,
        started.stderr
    );
    ensure!(
        started.stdout.contains("berthctl exec -it web sh"),
        "try.sh did not say how to go on:\n{}",
        started.stdout
    );
    let stopped = stopped?.ok("try.sh stop")?;

    // Nothing left.
    let mut left = Vec::new();
    if pid > 0 && procs::alive(pid) {
        left.push(format!("berthd pid {pid} still running"));
    }
    for s in procs::shims_of(&socket) {
        left.push(format!("shim {} still running: {:?}", s.pid, s.argv));
    }
    for m in leaks::mounts_under(t) {
        left.push(format!("mount {} left", m.display()));
    }
    for d in ["run", "root", "state", "podlogs", "berth.sock"] {
        if t.join(d).exists() {
            left.push(format!("{d} left"));
        }
    }
    let link = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()?;
    if link.status.success() {
        left.push(format!("bridge {bridge} left"));
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
    }
    ensure!(
        left.is_empty(),
        "try.sh stop left {left:?}\nstop said:\n{}{}",
        stopped.stdout,
        stopped.stderr
    );
    Ok(())
}

/// The words of a bash array assignment `name=(...)` in `text` (comments dropped).
fn bash_array(text: &str, name: &str) -> Result<BTreeSet<String>> {
    let start = text
        .find(&format!("{name}=("))
        .with_context(|| format!("no {name}=( in the script"))?;
    let body = &text[start + name.len() + 2..];
    let body = &body[..body.find(')').context("unclosed array")?];
    Ok(body
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .map(String::from)
        .collect())
}

#[test]
fn the_packages_try_sh_installs_are_installed_by_the_test_command() -> Result<()> {
    let shared = std::fs::read_to_string(repo().join("tests/packages.sh"))?;
    let run_sh = std::fs::read_to_string(repo().join("tests/run.sh"))?;
    let tested = bash_array(&run_sh, "pkgs")?;
    // The test machine builds with cargo, so it has the C toolchain Rust links with.
    let toolchain = ["gcc", "libc6-dev"];
    for list in ["build_pkgs", "run_pkgs", "containerd_pkgs"] {
        for p in bash_array(&shared, list)? {
            ensure!(
                tested.contains(&p) || toolchain.contains(&p.as_str()),
                "tests/packages.sh {list} has {p}, which tests/run.sh does not install: \
                 CI would not catch what try.sh needs"
            );
        }
    }
    Ok(())
}
