//! Startup cleanup of leftovers that no record in the store owns: pod and container
//! bundles (with their shim, tasks, rootfs mounts, cgroups and runc state), network
//! namespace pins (with their CNI allocation) and per-pod/per-container directories.
//! Recorded workloads are never touched here. Such leftovers come from an operation cut
//! by a crash before its record was written, or from a lost or replaced state store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Recovery;
use crate::error::Result;
use crate::network::NetNs;

use crate::records::{PodRecord, Records};
use crate::shim_client::{kill_cgroup, runc_delete, ShimHandle};

const TASK_EXIT_WAIT: Duration = Duration::from_secs(2);

/// A bundle under the state dir: its id, its pod (a pod bundle is its own pod) and the
/// cgroups path its config.json gave the task.
#[derive(Debug)]
struct Leftover {
    id: String,
    pod_id: String,
    bundle: PathBuf,
    cgroups_path: Option<String>,
}

fn read_leftover(bundle: &Path, is_pod: bool) -> Leftover {
    let id = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let pod_id = if is_pod {
        id.clone()
    } else {
        spec["annotations"][crate::oci_config::annotations::SANDBOX_ID]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    Leftover {
        id,
        pod_id,
        bundle: bundle.to_path_buf(),
        cgroups_path: spec["linux"]["cgroupsPath"].as_str().map(str::to_string),
    }
}

/// The entries of `dir` (none when it is missing), only directories when `dirs_only`.
fn entries(dir: &Path, dirs_only: bool) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !dirs_only || e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    entries(dir, true)
}

impl Recovery {
    /// Removes every leftover that no pod or container record owns.
    pub(super) async fn remove_orphans(&self) -> Result<()> {
        let pods: HashMap<String, PodRecord> = self
            .store
            .pods()?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let ctrs: HashSet<String> = self.store.containers()?.into_iter().map(|c| c.id).collect();
        let state = &self.config.paths.state;
        let root = &self.config.paths.root;

        // Only the bundles no record owns have their config.json read (a restart with 200
        // pods read 400 of them for nothing).
        let unowned = |b: &PathBuf, owned: &dyn Fn(&str) -> bool| {
            b.file_name()
                .is_none_or(|n| !owned(n.to_string_lossy().as_ref()))
        };
        let orphan_ctrs: Vec<Leftover> = subdirs(&state.join("containers"))
            .iter()
            .filter(|b| unowned(b, &|id| ctrs.contains(id)))
            .map(|b| read_leftover(b, false))
            .collect();
        let orphan_pods: Vec<Leftover> = subdirs(&state.join("pods"))
            .iter()
            .filter(|b| unowned(b, &|id| pods.contains_key(id)))
            .map(|b| read_leftover(b, true))
            .collect();

        // Containers first (in their pod's shim, recorded or not), then the pods.
        let mut shims: HashMap<String, Option<ShimHandle>> = HashMap::new();
        for l in orphan_ctrs.iter().chain(&orphan_pods) {
            if !shims.contains_key(&l.pod_id) {
                let shim = match pods.get(&l.pod_id) {
                    Some(rec) => self.pods.shim_of(rec).await.ok(),
                    None => {
                        self.shims
                            .leftover(&state.join("pods").join(&l.pod_id))
                            .await
                    }
                };
                shims.insert(l.pod_id.clone(), shim);
            }
            tracing::warn!(id = %l.id, pod_id = %l.pod_id, "removing a task no record owns");
            self.metrics.orphans_removed.inc();
            if let Some(shim) = shims.get(&l.pod_id).and_then(Option::as_ref) {
                let _ = shim.kill(&l.id, None, libc::SIGKILL as u32, true).await;
                let _ = shim.wait(&l.id, None, TASK_EXIT_WAIT).await;
                let _ = shim.delete(&l.id, None).await;
            } else {
                runc_delete(&l.id).await;
            }
            if let Some(cg) = l.cgroups_path.clone() {
                // Sleeps while processes die: off the async workers.
                let _ = tokio::task::spawn_blocking(move || kill_cgroup(&cg)).await;
            }
            let _ = crate::util::unmount_under(&l.bundle);
            let _ = std::fs::remove_dir_all(&l.bundle);
        }
        // The shims of unrecorded pods have no task left: let them go.
        for (pod_id, shim) in shims {
            if let (false, Some(shim)) = (pods.contains_key(&pod_id), shim) {
                tracing::warn!(pod_id = %pod_id, "stopping a shim no record owns");
                shim.shutdown(true).await;
            }
        }
        for (dir, owned) in [
            (root.join("containers"), &ctrs),
            (root.join("pods"), &pods.keys().cloned().collect()),
        ] {
            for d in subdirs(&dir) {
                let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.is_some_and(|n| !owned.contains(&n)) {
                    tracing::warn!(dir = %d.display(), "removing a directory no record owns");
                    self.metrics.orphans_removed.inc();
                    let _ = crate::util::unmount_under(&d);
                    let _ = std::fs::remove_dir_all(&d);
                }
            }
        }
        // Exec sessions end with the berthd that served them: their FIFO dirs go.
        for d in subdirs(&state.join("exec")) {
            let _ = std::fs::remove_dir_all(&d);
        }
        self.remove_orphan_netns(&pods).await;
        // Pinned IPC/UTS namespaces of pods no record names.
        for id in crate::pod::pins::pinned_ids(state) {
            if !pods.contains_key(&id) {
                tracing::warn!(pod_id = %id, "removing pod namespaces no pod owns");
                self.metrics.orphans_removed.inc();
                if let Err(e) = crate::pod::pins::remove(state, &id) {
                    tracing::warn!(pod_id = %id, error = %e, "removing orphan pod namespaces");
                }
            }
        }
        for owner in self.images.lease_owners()? {
            if !ctrs.contains(&owner) {
                tracing::warn!(owner = %owner, "releasing snapshots no container holds");
                self.images.release(&owner)?;
            }
        }
        // Remapped layer copies whose users are gone (a crash between a container's
        // removal and their release, or in the middle of a copy).
        let copies = crate::image::remap::Copies::new(root);
        // Their users are containers, and pods whose infra runs a sandbox image.
        let live: HashSet<String> = ctrs.iter().cloned().chain(pods.keys().cloned()).collect();
        match tokio::task::spawn_blocking(move || copies.sweep(&live)).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    copies = n,
                    "removed remapped layer copies no container uses"
                );
                self.metrics.orphans_removed.inc_by(n as u64);
            }
            Err(e) => tracing::warn!(error = %e, "sweeping remapped layer copies"),
        }
        Ok(())
    }

    /// Netns pins no pod record names: CNI DEL (releasing the IP) then unpin.
    async fn remove_orphan_netns(&self, pods: &HashMap<String, PodRecord>) {
        let list = self.cni.load().ok().flatten();
        let in_use: HashSet<&Path> = pods.values().filter_map(|p| p.netns.as_deref()).collect();
        for ns in entries(&self.config.paths.state.join("netns"), false) {
            if in_use.contains(ns.as_path()) {
                continue;
            }
            let id = ns
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            tracing::warn!(netns = %ns.display(), "removing a network namespace no pod owns");
            self.metrics.orphans_removed.inc();
            if let Some(list) = &list {
                let args = crate::pod::net_args(&id, &Default::default(), self.node.pod_cidr());
                let present = NetNs::is_pinned(&ns).then_some(ns.as_path());
                if let Err(e) = self.cni.del(list, present, &args).await {
                    tracing::warn!(netns = %ns.display(), error = %e, "CNI DEL failed");
                }
            }
            let _ = (NetNs { path: ns }).remove();
        }
    }
}
