//! The fixture's end: every pod removed through CRI, berthd stopped, and what it left
//! behind (socket, shims, mounts, pins, runc state, IPs) reported as leaks; a forced
//! cleanup when the test body failed or panicked.

use super::*;

impl Berthd {
    /// Stops and removes every pod through CRI (while berthd runs; bounded).
    pub fn remove_all_pods(&self) -> Result<()> {
        let socket = self.socket.display().to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let (rs, _) = crate::cri::connect(&socket).await?;
                tokio::time::timeout(Duration::from_secs(120), pod::remove_all(&rs))
                    .await
                    .context("removing every pod took over 120 s")?
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread removing the pods panicked"))?
    }

    /// What berthd left behind: its socket, shims, mounts (rootfs, netns pins, ...),
    /// netns pin files, runc state and remapped layer copies.
    pub fn leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        if self.socket.exists() {
            leaks.push(format!("socket {} still exists", self.socket.display()));
        }
        for p in procs::shims_of(&self.socket.display().to_string()) {
            leaks.push(format!("shim pid {} still running: {:?}", p.pid, p.argv));
        }
        for m in leaks::mounts_under(self.dir.path()) {
            if self.own_mounts.contains(&m) {
                continue;
            }
            leaks.push(format!("mount {} left", m.display()));
        }
        for pin in leaks::leftover_entries(&self.dir.path().join("state/netns")) {
            leaks.push(format!("netns pin {} left", pin.display()));
        }
        for pin in leaks::leftover_entries(&self.dir.path().join("state/podns")) {
            leaks.push(format!("pod namespace pins {} left", pin.display()));
        }
        for id in leaks::runc_states_under(self.dir.path()) {
            leaks.push(format!("runc state {id} left"));
        }
        // Remapped layer copies of user-namespaced pods go with their last container.
        for copy in leaks::leftover_entries(&self.dir.path().join("root/userns-copies")) {
            leaks.push(format!("remapped layer copy {} left", copy.display()));
        }
        for ip in reserved_ips(&self.dir.path().join("state/cni/ipam")) {
            leaks.push(format!("built-in network: IP {ip} still reserved"));
        }
        leaks
    }

    /// Removes the pods, stops berthd, collects the leaks, then force-cleans whatever is
    /// left (so nothing outlives the test either way).
    pub(super) fn teardown(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        if self.child.is_some() {
            if let Err(e) = self.remove_all_pods() {
                problems.push(format!("removing every pod: {e:#}"));
            }
        }
        if let Err(e) = self.stop() {
            problems.push(format!("stopping berthd: {e:#}"));
        }
        problems.extend(self.leaks());
        self.force_cleanup();
        if !problems.is_empty() {
            bail!("berthd left: {problems:#?}\nlog:\n{}", self.log());
        }
        Ok(())
    }

    pub(super) fn force_cleanup(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The pods' processes are the shims' children (the shim is their subreaper): kill
        // them first, or they would outlive a failed test under pid 1.
        let shims: Vec<i32> = procs::shims_of(&self.socket.display().to_string())
            .iter()
            .map(|p| p.pid)
            .collect();
        for pid in procs::descendants(&shims) {
            let _ = procs::signal(pid, libc::SIGKILL);
        }
        for pid in shims {
            let _ = procs::signal(pid, libc::SIGKILL);
        }
        for id in leaks::runc_states_under(self.dir.path()) {
            let _ = std::process::Command::new("runc")
                .args(["--root", leaks::BERTH_RUNC_ROOT, "delete", "--force", &id])
                .output();
        }
        let mut mounts = leaks::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix_umount(&m);
        }
    }
}

/// The addresses host-local holds reserved under `data_dir` (one file per address, in a
/// dir per network; its `lock` and `last_reserved_ip.*` files are not reservations).
pub fn reserved_ips(data_dir: &Path) -> Vec<String> {
    let mut ips = Vec::new();
    for net in crate::host::names_in(data_dir) {
        for name in crate::host::names_in(&data_dir.join(net)) {
            if name.parse::<std::net::IpAddr>().is_ok() {
                ips.push(name);
            }
        }
    }
    ips
}

fn nix_umount(p: &Path) -> std::io::Result<()> {
    let c =
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A berthd dropped without `finish` (a test that failed or returned early) is torn down
/// the same way, and a leak fails the test: a panic, unless it is already panicking.
impl Drop for Berthd {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Err(e) = self.teardown() {
            if std::thread::panicking() {
                eprintln!("{e:#}");
            } else {
                panic!("{e:#}");
            }
        }
    }
}
