//! The `containerd.runc.v1.Options` fields that reach runc's command line, checked black-box
//! on a shim started without containerd (through a logging wrapper named by `binary_name`):
//! `no_pivot_root`, `no_new_keyring`, `root` and `systemd_cgroup`; and `NOTIFY_SOCKET` never
//! reaches runc.

use anyhow::{ensure, Context, Result};
use berth_proto::protobuf::Message;
use berth_proto::shim::oci;
use berth_tests::direct::{self, Direct};
use berth_tests::direct_steps::{
    conclude, create_start, daemon_gone, daemon_of, start_with_options, wait_delete_shutdown,
};
use berth_tests::{cmd, task_api};
use berth_tests::{fifo, task_reqs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[test]
fn no_pivot_no_new_keyring_root_reach_runc_without_notify_socket() -> Result<()> {
    let d = Direct::new()?;
    let root = d.dir.join("runc-root");
    let res = flags_scenario(&d, &root);
    // Containers under the custom root are invisible to the session's own cleanup.
    let leak = cleanup_runc_root(&root.join(&d.namespace), "flags");
    let res = match (res, leak) {
        (Err(e), Err(l)) => Err(e.context(format!("also: {l:#}"))),
        (res, leak) => res.and(leak),
    };
    conclude(d, res)
}

fn flags_scenario(d: &Direct, root: &Path) -> Result<()> {
    let id = "flags";
    let bundle = d.bundle(id, &["sh", "-c", "echo ran"], &[])?;
    let wrapper = RuncWrapper::new(d)?;
    let opts = task_reqs::runc_options(&oci::Options {
        no_pivot_root: true,
        no_new_keyring: true,
        binary_name: wrapper.script.display().to_string(),
        root: root.display().to_string(),
        ..Default::default()
    })?;
    let notify = d.dir.join("notify.sock").display().to_string();
    let notify_env = format!("NOTIFY_SOCKET={notify}");
    let s = d.start_via(
        id,
        &["env", &notify_env],
        &opts.write_to_bytes()?,
        Duration::from_secs(2),
    )?;
    let addr = d.expected_address(id);
    ensure!(
        s.code == 0 && s.output == addr.as_bytes(),
        "start: exit {} output {:?}",
        s.code,
        s.text()
    );
    let daemon = daemon_of(d, id)?;
    // Precondition: the daemon has NOTIFY_SOCKET, as under a Type=notify containerd.service.
    let environ = std::fs::read(format!("/proc/{daemon}/environ"))?;
    ensure!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == notify_env.as_bytes()),
        "test set-up: the shim daemon's environment lacks {notify_env}"
    );
    let state_dir = root.join(&d.namespace).join(id);
    let out_path = d.dir.join("io").join("flags-stdout");
    let reader = fifo::fifo(&out_path)?;
    let stdout = out_path.display().to_string();

    let ran = task_api::block_on(async {
        let client = task_api::connect(&addr).await?;
        create_start(d, &client, id, "", &stdout, "", &opts).await?;
        ensure!(
            state_dir.join("state.json").is_file(),
            "runc state not under the `root` option: {} missing",
            state_dir.join("state.json").display()
        );
        ensure!(
            !d.runc_state(id).exists(),
            "runc state in the default root {} despite `root`",
            d.runc_state(id).display()
        );
        wait_delete_shutdown(d, &client, id, 0).await
    })?;
    let calls = wrapper.invocations()?;
    let bad_env: Vec<String> = calls
        .iter()
        .filter(|c| c.env.iter().any(|e| e.starts_with("NOTIFY_SOCKET=")))
        .map(|c| format!("{:?}", c.argv))
        .collect();
    let notify_msg =
        format!("NOTIFY_SOCKET reached the OCI runtime's environment in: {bad_env:#?}");
    // runc given NOTIFY_SOCKET fails `start` (it dials the socket): name the cause then too.
    if let Err(e) = ran {
        return Err(if bad_env.is_empty() {
            e
        } else {
            e.context(notify_msg)
        });
    }
    ensure!(bad_env.is_empty(), "{notify_msg}");
    daemon_gone(daemon)?;
    let out = fifo::read_until(&reader, "ran\n", Duration::from_secs(5));
    ensure!(out == "ran\n", "container stdout through the FIFO: {out:?}");
    ensure!(
        !state_dir.exists(),
        "runc state {} left after Delete",
        state_dir.display()
    );

    let globals = globals(&root.join(&d.namespace), &bundle, false);
    let create = assert_invocations(&calls, &globals, &["create", "start", "delete"], id)?;
    for flag in ["--no-pivot", "--no-new-keyring"] {
        ensure!(
            create.iter().any(|a| a == flag),
            "runc create lacks {flag}: {create:?}"
        );
    }
    let pid_file = bundle.join("init.pid").display().to_string();
    let b = bundle.display().to_string();
    ensure!(
        has_pair(&create, "--bundle", &b) && has_pair(&create, "--pid-file", &pid_file),
        "runc create lacks --bundle {b} / --pid-file {pid_file}: {create:?}"
    );
    Ok(())
}

#[test]
fn systemd_cgroup_passes_systemd_cgroup_to_runc() -> Result<()> {
    let d = Direct::new()?;
    let res = systemd_scenario(&d);
    conclude(d, res)
}

fn systemd_scenario(d: &Direct) -> Result<()> {
    let id = "sdcg";
    let bundle = d.bundle(id, &["sh", "-c", "echo ran"], &[])?;
    let wrapper = RuncWrapper::new(d)?;
    let opts = task_reqs::runc_options(&oci::Options {
        systemd_cgroup: true,
        binary_name: wrapper.script.display().to_string(),
        ..Default::default()
    })?;
    let addr = start_with_options(d, id, &opts)?;
    let daemon = daemon_of(d, id)?;
    let out_path = d.dir.join("io").join("sdcg-stdout");
    let reader = fifo::fifo(&out_path)?;
    let stdout = out_path.display().to_string();
    task_api::block_on(async {
        let client = task_api::connect(&addr).await?;
        create_start(d, &client, id, "", &stdout, "", &opts).await?;
        wait_delete_shutdown(d, &client, id, 0).await
    })??;
    daemon_gone(daemon)?;
    let out = fifo::read_until(&reader, "ran\n", Duration::from_secs(5));
    ensure!(out == "ran\n", "container stdout through the FIFO: {out:?}");
    let calls = wrapper.invocations()?;
    // No `root` option: the default root per namespace; --systemd-cgroup last of the globals.
    let globals = globals(
        &Path::new(direct::RUNC_ROOT).join(&d.namespace),
        &bundle,
        true,
    );
    let create = assert_invocations(&calls, &globals, &["create", "start", "delete"], id)?;
    for flag in ["--no-pivot", "--no-new-keyring"] {
        ensure!(
            !create.iter().any(|a| a == flag),
            "runc create has {flag} though the option is unset: {create:?}"
        );
    }
    Ok(())
}

/// One logged runtime invocation.
#[derive(Debug)]
struct Invocation {
    argv: Vec<String>,
    env: Vec<String>,
}

/// An executable script that logs its argv and environment (one file per call) and execs the
/// real runc without `--systemd-cgroup` (there is no systemd to manage cgroups here).
struct RuncWrapper {
    script: PathBuf,
    log_dir: PathBuf,
}

impl RuncWrapper {
    fn new(d: &Direct) -> Result<RuncWrapper> {
        let runc = on_path("runc").context("runc not on PATH")?;
        let log_dir = d.dir.join("runc-calls");
        std::fs::create_dir_all(&log_dir)?;
        let script = d.dir.join("runc-wrapper");
        let body = format!(
            r#"#!/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
f=$(mktemp '{log}/call.XXXXXXXX') || exit 97
{{ for a in "$@"; do printf 'ARG %s\n' "$a"; done; env | sed 's/^/ENV /'; }} > "$f"
for a do shift; [ "$a" = --systemd-cgroup ] && continue; set -- "$@" "$a"; done
exec '{runc}' "$@"
"#,
            log = log_dir.display(),
            runc = runc.display()
        );
        std::fs::write(&script, body)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(RuncWrapper { script, log_dir })
    }

    fn invocations(&self) -> Result<Vec<Invocation>> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.log_dir)?
            .flatten()
            .map(|e| {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, e.path())
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| {
                let text = std::fs::read_to_string(&p)?;
                let mut inv = Invocation {
                    argv: Vec::new(),
                    env: Vec::new(),
                };
                for l in text.lines() {
                    if let Some(a) = l.strip_prefix("ARG ") {
                        inv.argv.push(a.to_string());
                    } else if let Some(e) = l.strip_prefix("ENV ") {
                        inv.env.push(e.to_string());
                    }
                }
                Ok(inv)
            })
            .collect()
    }
}

/// runc's global flags, in the order go-runc (and so the Go shim) passes them.
fn globals(root: &Path, bundle: &Path, systemd: bool) -> Vec<String> {
    let mut g = vec![
        "--root".to_string(),
        root.display().to_string(),
        "--log".into(),
        bundle.join("log.json").display().to_string(),
        "--log-format".into(),
        "json".into(),
    ];
    if systemd {
        g.push("--systemd-cgroup".into());
    }
    g
}

/// Every call starts with `globals`; each of `commands` was run on `id`. Returns the argv
/// of the (single) `create` call after the globals.
fn assert_invocations(
    calls: &[Invocation],
    globals: &[String],
    commands: &[&str],
    id: &str,
) -> Result<Vec<String>> {
    ensure!(
        !calls.is_empty(),
        "the binary_name wrapper was never run: the shim ignored binary_name"
    );
    let all: Vec<&Vec<String>> = calls.iter().map(|c| &c.argv).collect();
    let bad: Vec<&&Vec<String>> = all
        .iter()
        .filter(|a| !a.starts_with(globals) || a.len() == globals.len())
        .collect();
    ensure!(
        bad.is_empty(),
        "runtime calls not starting with the global flags {globals:?}: {bad:#?}"
    );
    for c in commands {
        ensure!(
            all.iter()
                .any(|a| a[globals.len()] == *c && a.last().map(String::as_str) == Some(id)),
            "no `{c} ... {id}` call through binary_name; calls: {all:#?}"
        );
    }
    let creates: Vec<&&Vec<String>> = all
        .iter()
        .filter(|a| a[globals.len()] == "create")
        .collect();
    ensure!(
        creates.len() == 1,
        "expected one runtime create, got {creates:#?}"
    );
    Ok(creates[0][globals.len()..].to_vec())
}

fn has_pair(argv: &[String], flag: &str, value: &str) -> bool {
    argv.windows(2).any(|w| w[0] == flag && w[1] == value)
}

fn on_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(bin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Force-deletes whatever is left under a custom runc state root; anything left is a leak.
fn cleanup_runc_root(ns_root: &Path, id: &str) -> Result<()> {
    let leaked = ns_root.join(id).exists();
    if leaked {
        let _ = cmd::run(
            Command::new("runc")
                .arg("--root")
                .arg(ns_root)
                .args(["delete", "--force", id]),
            Duration::from_secs(10),
        );
    }
    let _ = std::fs::remove_dir_all(ns_root);
    ensure!(
        !leaked,
        "leaked runc state {} under the custom root",
        ns_root.join(id).display()
    );
    Ok(())
}
