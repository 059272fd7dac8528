//! The `containerd.runc.v1.Options` fields that act on the shim's own process and its
//! stdio, checked black-box on a shim started without containerd: `io_uid`/`io_gid` own the
//! container's stdio pipes; `shim_cgroup` on `start`'s stdin places the daemon; the daemon's
//! `oom_score_adj` is the start process's parent's + 1, clamped.

use anyhow::{bail, ensure, Context, Result};
use berth_proto::api;
use berth_proto::protobuf::MessageField;
use berth_proto::shim::oci;
use berth_tests::direct::Direct;
use berth_tests::direct_steps::{
    conclude, create_start, daemon_gone, daemon_of, shutdown, start_with_options,
    wait_delete_shutdown,
};
use berth_tests::{fifo, task_reqs};
use berth_tests::{procs, task_api};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const IO_UID: u32 = 1234;
const IO_GID: u32 = 2345;

// ---------------------------------------------------------------------------------------------
// io_uid / io_gid

/// The case io_uid/io_gid exist for: a user-namespaced container whose root is host
/// 1234:2345. The pipes must be that user's on the host, so the container can reopen its own
/// stdio (`/proc/self/fd/1`, mode 0600 pipes); runc cannot fix an unmapped owner itself.
#[test]
fn io_uid_gid_own_the_stdio_pipes_of_a_userns_container() -> Result<()> {
    let d = Direct::new()?;
    let res = io_owner_scenario(&d, true);
    conclude(d, res)
}

/// A plain root container: runc's init resets the pipes' uid to the container user (0, runc
/// `fixStdioPermissions`) but keeps the group, so the shim's io_gid must show.
#[test]
fn io_gid_owns_the_stdio_pipes_of_a_root_container() -> Result<()> {
    let d = Direct::new()?;
    let res = io_owner_scenario(&d, false);
    conclude(d, res)
}

fn io_owner_scenario(d: &Direct, userns: bool) -> Result<()> {
    let id = "iouid";
    // Reopening fd 1/2 by path checks the pipe inode's owner and mode, as any tool writing to
    // /dev/stdout does.
    d.bundle(
        id,
        &[
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; \
             echo reopened-stdout > /proc/self/fd/1; echo reopened-stderr > /proc/self/fd/2; \
             exec sleep 600",
        ],
        &[],
    )?;
    if userns {
        map_root_to(d, id, IO_UID, IO_GID)?;
    }
    let want_uid = if userns { IO_UID } else { 0 };
    let opts = task_reqs::runc_options(&oci::Options {
        io_uid: IO_UID,
        io_gid: IO_GID,
        ..Default::default()
    })?;
    let addr = start_with_options(d, id, &opts)?;
    let daemon = daemon_of(d, id)?;
    let io = d.dir.join("io");
    let (p_in, p_out, p_err) = (
        io.join("iouid-stdin"),
        io.join("iouid-stdout"),
        io.join("iouid-stderr"),
    );
    let _stdin_holder = fifo::fifo(&p_in)?;
    let r_out = fifo::fifo(&p_out)?;
    let r_err = fifo::fifo(&p_err)?;
    let (stdin, stdout, stderr) = (
        p_in.display().to_string(),
        p_out.display().to_string(),
        p_err.display().to_string(),
    );

    task_api::block_on(async {
        let client = task_api::connect(&addr).await?;
        let pid = create_start(d, &client, id, &stdin, &stdout, &stderr, &opts).await?;
        let out = fifo::read_until(
            &r_out,
            "to-stdout\nreopened-stdout\n",
            Duration::from_secs(5),
        );
        let err = fifo::read_until(
            &r_err,
            "to-stderr\nreopened-stderr\n",
            Duration::from_secs(5),
        );
        // What a user checks on the host: who owns the pipes the container's stdio is.
        let mut wrong = Vec::new();
        let mut seen = Vec::new();
        for fd in 0..3 {
            let p = format!("/proc/{pid}/fd/{fd}");
            let target = std::fs::read_link(&p).unwrap_or_default();
            let m = std::fs::metadata(&p).with_context(|| format!("stat {p}"))?;
            let line = format!(
                "fd {fd} -> {} ({}), owner {}:{}",
                target.display(),
                if m.file_type().is_fifo() {
                    "pipe"
                } else {
                    "NOT a pipe"
                },
                m.uid(),
                m.gid()
            );
            if !m.file_type().is_fifo() || m.uid() != want_uid || m.gid() != IO_GID {
                wrong.push(line.clone());
            }
            seen.push(line);
        }
        // Stop the container before judging, so a failed check still ends cleanly.
        d.rpc::<_, api::Empty>(&client, "Kill", &task_reqs::kill_req(id, "", libc::SIGKILL))
            .await
            .context("Kill")?;
        wait_delete_shutdown(d, &client, id, 137).await?;
        ensure!(
            wrong.is_empty(),
            "with io_uid={IO_UID} io_gid={IO_GID}{}, the container's stdio pipes must be owned \
             by {want_uid}:{IO_GID}; wrong: {wrong:#?}\nall: {seen:#?}",
            if userns {
                " (container root = host 1234:2345)"
            } else {
                ""
            }
        );
        ensure!(
            out == "to-stdout\nreopened-stdout\n",
            "container stdout through the FIFO (plain, then reopened by path): {out:?}"
        );
        ensure!(
            err == "to-stderr\nreopened-stderr\n",
            "container stderr through the FIFO (plain, then reopened by path): {err:?}"
        );
        Ok(())
    })??;
    daemon_gone(daemon)
}

/// Gives `id` a user namespace whose root is host `uid:gid` (one id each), and opens the
/// session's dirs to that user so runc's init can reach the rootfs.
fn map_root_to(d: &Direct, id: &str, uid: u32, gid: u32) -> Result<()> {
    let p = d.bundle_path(id).join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    let linux = &mut spec["linux"];
    linux["namespaces"]
        .as_array_mut()
        .context("spec namespaces")?
        .push(serde_json::json!({"type": "user"}));
    linux["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": uid, "size": 1}]);
    linux["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    std::fs::write(&p, serde_json::to_vec_pretty(&spec)?)?;
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// shim_cgroup

#[test]
fn shim_cgroup_from_start_stdin_holds_the_daemon() -> Result<()> {
    let cg = ShimCgroup::create()?;
    let d = Direct::new()?;
    let res = shim_cgroup_scenario(&d, &cg);
    // The daemon must be gone (finish waits, or kills it) before the cgroup can be removed.
    let res = conclude(d, res);
    let rm = cg.remove();
    match (res, rm) {
        (Err(e), Err(r)) => Err(e.context(format!("cgroup teardown also failed: {r:#}"))),
        (res, rm) => res.and(rm),
    }
}

fn shim_cgroup_scenario(d: &Direct, cg: &ShimCgroup) -> Result<()> {
    let id = "shimcg";
    d.bundle(id, &["true"], &[])?;
    let opts = task_reqs::runc_options(&oci::Options {
        shim_cgroup: cg.path(),
        ..Default::default()
    })?;
    let addr = start_with_options(d, id, &opts)?;
    let daemon = daemon_of(d, id)?;
    let cgroup_file = format!("/proc/{daemon}/cgroup");
    let daemon_cgroups =
        std::fs::read_to_string(&cgroup_file).with_context(|| format!("read {cgroup_file}"))?;

    let container_cgroups = task_api::block_on(async {
        let client = task_api::connect(&addr).await?;
        let mut req = d.create_req(id, "", "");
        req.options = MessageField::some(opts.clone());
        let c: api::CreateTaskResponse = d
            .rpc(&client, "Create", &req)
            .await
            .context("Create in the shim placed by shim_cgroup")?;
        let cgs = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap_or_default();
        d.rpc::<_, api::StartResponse>(&client, "Start", &task_reqs::start_req(id, ""))
            .await
            .context("Start")?;
        wait_delete_shutdown(d, &client, id, 0).await?;
        Ok::<_, anyhow::Error>(cgs)
    })??;
    daemon_gone(daemon)?;

    let want = cg.path();
    let wrong = cgroup_lines_not_at(&daemon_cgroups, &want);
    ensure!(
        wrong.is_empty(),
        "shim_cgroup={want:?} on start's stdin: the daemon (pid {daemon}) is not in it in \
         {wrong:?}; {cgroup_file}:\n{daemon_cgroups}"
    );
    for need in ["memory", "pids", "cpu"] {
        ensure!(
            hierarchy_path(&daemon_cgroups, need).as_deref() == Some(want.as_str()),
            "daemon's {need} cgroup is not {want:?}:\n{daemon_cgroups}"
        );
    }
    // The option places the shim only: the container still gets its own cgroupsPath.
    let container_want = format!("/{}", d.cgroup_name(id));
    ensure!(
        hierarchy_path(&container_cgroups, "memory").as_deref() == Some(container_want.as_str()),
        "container init's memory cgroup should be {container_want:?}:\n{container_cgroups}"
    );
    Ok(())
}

/// A cgroup made by the test in every hierarchy before `start` (Go's runc.v2 shim only loads
/// an existing `ShimCgroup`), removed after the daemon is gone.
struct ShimCgroup {
    name: String,
    unified: bool,
}

impl ShimCgroup {
    fn create() -> Result<ShimCgroup> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "berth-shimcg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let cg = ShimCgroup { name, unified };
        for h in cg.hierarchies()? {
            let dir = h.join(&cg.name);
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            // A v1 cpuset cgroup takes no task until it has cpus and mems.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if dir.join(f).exists() {
                    let v = std::fs::read_to_string(h.join(f))?;
                    std::fs::write(dir.join(f), v.trim())
                        .with_context(|| format!("write {}", dir.join(f).display()))?;
                }
            }
        }
        Ok(cg)
    }

    /// The path as `ShimCgroup` carries it and /proc/<pid>/cgroup shows it.
    fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Roots of the hierarchies a process is placed in (v1: every mounted one but the hybrid
    /// `unified` cgroup2 mount; v2: the one root).
    fn hierarchies(&self) -> Result<Vec<PathBuf>> {
        let base = Path::new("/sys/fs/cgroup");
        if self.unified {
            return Ok(vec![base.to_path_buf()]);
        }
        let mut v = Vec::new();
        for e in std::fs::read_dir(base)
            .context("read /sys/fs/cgroup")?
            .flatten()
        {
            let p = e.path();
            let link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
            if !link && e.file_name() != "unified" && p.join("cgroup.procs").exists() {
                v.push(p);
            }
        }
        Ok(v)
    }

    /// Every directory of this name under /sys/fs/cgroup (whoever made it).
    fn existing(&self) -> Vec<PathBuf> {
        let base = Path::new("/sys/fs/cgroup");
        let mut v: Vec<PathBuf> = std::fs::read_dir(base)
            .map(|rd| rd.flatten().map(|e| e.path().join(&self.name)).collect())
            .unwrap_or_default();
        v.push(base.join(&self.name));
        v.into_iter().filter(|p| p.is_dir()).collect()
    }

    /// rmdir in every hierarchy; a cgroup that cannot go (still has tasks) is a leak.
    fn remove(self) -> Result<()> {
        let mut left = Vec::new();
        for dir in self.existing() {
            let r = procs::poll(Duration::from_secs(5), "cgroup rmdir", || {
                std::fs::remove_dir(&dir).ok()
            });
            if r.is_err() {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                left.push(format!("{} (tasks: {:?})", dir.display(), procs.trim()));
            }
        }
        if !left.is_empty() {
            bail!("shim cgroup could not be removed: {left:?}");
        }
        Ok(())
    }
}

impl Drop for ShimCgroup {
    fn drop(&mut self) {
        for dir in self.existing() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The path of the line naming `controller` (`memory`, `name=systemd`, ...) in a
/// /proc/<pid>/cgroup text; on a v2 host the one `0::` line.
fn hierarchy_path(text: &str, controller: &str) -> Option<String> {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if v2 {
            id == "0" && ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

/// Lines of a /proc/<pid>/cgroup text, for the hierarchies a shim cgroup applies to, whose
/// path is not `want` (v1: every line with controllers; v2: the `0::` line).
fn cgroup_lines_not_at(text: &str, want: &str) -> Vec<String> {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    text.lines()
        .filter(|l| {
            let mut parts = l.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            (v2 || !ctrls.is_empty()) && path != want
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// oom_score_adj

#[test]
fn daemon_oom_score_adj_is_parent_plus_one_clamped() -> Result<()> {
    let d = Direct::new()?;
    let res = oom_scenario(&d);
    conclude(d, res)
}

fn oom_scenario(d: &Direct) -> Result<()> {
    // (start's parent, start itself, expected daemon): the daemon follows the parent, not
    // start's own value it inherits; 1000 + 1 is clamped to 1000 (the kernel rejects 1001).
    let cases = [(500, 700, 501), (1000, 600, 1000)];
    let mut wrong = Vec::new();
    for (i, (parent, own, want)) in cases.into_iter().enumerate() {
        let id = format!("oom{i}");
        d.bundle(&id, &["true"], &[])?;
        // Raising oom_score_adj needs no privilege, and lowering back to >= 0 neither.
        let script = format!(
            "echo {parent} > /proc/self/oom_score_adj || exit 90; \
             sh -c 'echo {own} > /proc/self/oom_score_adj || exit 91; exec \"$@\"' \
             berth-start \"$@\"; exit $?"
        );
        let s = d.start_via(
            &id,
            &["sh", "-c", &script, "berth-parent"],
            &[],
            Duration::from_secs(2),
        )?;
        let addr = d.expected_address(&id);
        ensure!(
            s.code == 0 && s.output == addr.as_bytes(),
            "start {id} under a parent with oom_score_adj {parent}: exit {} output {:?}",
            s.code,
            s.text()
        );
        let daemon = daemon_of(d, &id)?;
        let got = std::fs::read_to_string(format!("/proc/{daemon}/oom_score_adj"))
            .context("read daemon oom_score_adj")?;
        if got.trim() != want.to_string() {
            wrong.push(format!(
                "parent {parent}, start {own}: daemon {daemon} has {}, want {want}",
                got.trim()
            ));
        }
        task_api::block_on(async {
            let client = task_api::connect(&addr).await?;
            shutdown(d, &client, &id).await;
            Ok::<_, anyhow::Error>(())
        })??;
        daemon_gone(daemon)?;
    }
    ensure!(
        wrong.is_empty(),
        "daemon oom_score_adj must be start's parent's + 1, clamped to 1000: {wrong:#?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// runc flags and environment, through a logging wrapper named by binary_name
