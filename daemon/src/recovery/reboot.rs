//! A rebooted node: every shim and container is gone, `paths.state` (a tmpfs: bundles,
//! netns pins, the built-in network's IPAM) is empty, while `paths.root` keeps the store.
//! Found at startup from the kernel's boot id (kept in `paths.root/boot_id`), and per pod
//! from a shim that is gone together with the pod's bundle (what a simulated reboot
//! leaves; the boot id cannot change there). Such pods are settled in one pass, without
//! waiting on any shim: the pod NotReady, its created and running containers Exited 255
//! (unknown exit, as containerd reports a task that vanished) with reason NodeRebooted,
//! and the previous boot's CNI allocation released (DEL with an empty CNI_NETNS, as the
//! spec allows) in the background, so a slow or broken plugin never delays startup; a
//! DEL that fails leaves the network to StopPodSandbox, which retries it.

use std::path::Path;
use std::sync::Arc;

use super::Recovery;
use crate::error::Result;
use crate::events::Kind;
use crate::intent::Op;
use crate::metrics::PodOutcome;
use crate::records::{CtrState, PodRecord, PodState, Records};
use crate::shim_client::runc_delete;
use crate::store::PODS;

/// The kernel's id of the running boot.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The boot the records were last settled in, under `paths.root`.
const STORED_BOOT_ID: &str = "boot_id";
/// The reason and exit code of a container a reboot ended.
pub const REBOOT_REASON: &str = "NodeRebooted";
const UNKNOWN_EXIT: u32 = 255;

/// The running boot's id (None where the kernel has none).
pub(super) fn current_boot() -> Option<String> {
    std::fs::read_to_string(KERNEL_BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether the node booted since `root`'s boot id was written. A first start (nothing
/// written yet, or a store from an older berthd) is not a reboot: pods are then judged
/// one by one.
pub(super) fn booted_since(root: &Path, current: Option<&str>) -> bool {
    let stored = std::fs::read_to_string(root.join(STORED_BOOT_ID)).ok();
    match (stored.as_deref().map(str::trim), current) {
        (Some(s), Some(c)) if !s.is_empty() => s != c,
        _ => false,
    }
}

/// Records `current` as the boot the records are settled for (root's alone).
pub(super) fn remember_boot(root: &Path, current: Option<&str>) -> Result<()> {
    match current {
        Some(c) => crate::util::modes::write_private(&root.join(STORED_BOOT_ID), c.as_bytes()),
        None => Ok(()),
    }
}

impl Recovery {
    /// Whether pod `rec` did not survive a reboot: the node booted since it was recorded,
    /// or its bundle is gone from the state dir and no shim answers at its address. A
    /// RunPodSandbox a crash cut is left to the intents (rolled back whole).
    pub(super) fn lost_to_reboot(&self, rec: &PodRecord, new_boot: bool) -> bool {
        if rec.op == Some(Op::Run) {
            return false;
        }
        new_boot
            || (!rec.bundle.exists()
                && (rec.shim_address.is_empty() || self.shims.gone(&rec.shim_address)))
    }

    /// Settles the pods a reboot ended; returns those whose network is to be released.
    pub(super) async fn settle_rebooted(&self, pods: &[PodRecord]) -> Result<Vec<PodRecord>> {
        let mut wired = Vec::new();
        for rec in pods {
            let live: Vec<_> = self
                .store
                .containers_of(&rec.id)?
                .into_iter()
                .filter(|c| {
                    c.op.is_none() && matches!(c.state, CtrState::Created | CtrState::Running)
                })
                .collect();
            if rec.state != PodState::Ready && live.is_empty() && rec.netns.is_none() {
                continue;
            }
            tracing::warn!(pod_id = %rec.id, containers = live.len(), "the pod did not survive a reboot");
            self.metrics.pod(PodOutcome::Rebooted);
            let now = crate::util::now_ns();
            for c in &live {
                self.containers
                    .record_lost(&c.id, UNKNOWN_EXIT, now, REBOOT_REASON)?;
                // Runtime state outside the state dir (none after a real reboot).
                runc_delete(&c.id).await;
            }
            runc_delete(&rec.id).await;
            let updated = self.store.update(PODS, &rec.id, |r: &mut PodRecord| {
                let was = r.state == PodState::Ready;
                if was {
                    r.set_not_ready();
                }
                r.pid = 0;
                was
            })?;
            if let Some(r) = updated {
                self.events.emit(Kind::Stopped, &r.id, &r.id, r.stopped_at);
            }
            if rec.netns.is_some() {
                wired.push(rec.clone());
            }
        }
        Ok(wired)
    }

    /// Releases the previous boot's CNI allocations of `pods`, side by side, in the
    /// background; each one released is forgotten by its record (StopPodSandbox then has
    /// nothing to DEL), each one that fails is left to StopPodSandbox.
    pub(super) fn release_networks(self: &Arc<Self>, pods: Vec<PodRecord>) {
        if pods.is_empty() {
            return;
        }
        let rt = self.clone();
        tokio::spawn(async move {
            let jobs = pods.iter().map(|p| rt.release_network(p));
            futures_util::future::join_all(jobs).await;
        });
    }

    async fn release_network(&self, rec: &PodRecord) {
        let list = match self.cni.load_for(&rec.network) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(pod_id = %rec.id, error = %e, "no CNI config to release the previous boot's network");
                return;
            }
        };
        let args = crate::pod::net_args(&rec.id, &rec.config, self.node.pod_cidr());
        // The namespace died with the boot: DEL without one releases IPAM and host rules.
        match self.cni.del(&list, None, &args).await {
            Ok(()) => {
                let _ = self.store.update(PODS, &rec.id, |r: &mut PodRecord| {
                    let had = r.netns.is_some();
                    r.netns = None;
                    had
                });
                // A pin file a simulated reboot left (a real one leaves none).
                if let Some(ns) = &rec.netns {
                    let _ = (crate::network::NetNs { path: ns.clone() }).remove();
                }
                tracing::info!(pod_id = %rec.id, ips = ?rec.ips, "released the previous boot's pod network");
            }
            Err(e) => {
                tracing::warn!(pod_id = %rec.id, error = %e, "releasing the previous boot's pod network failed; StopPodSandbox retries it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_is_a_changed_boot_id() {
        let d = tempfile::tempdir().unwrap();
        // First start: nothing stored, no reboot.
        assert!(!booted_since(d.path(), Some("b1")));
        remember_boot(d.path(), Some("b1")).unwrap();
        assert!(!booted_since(d.path(), Some("b1")));
        assert!(booted_since(d.path(), Some("b2")));
        // No kernel boot id: nothing can be told.
        assert!(!booted_since(d.path(), None));
        remember_boot(d.path(), Some("b2")).unwrap();
        assert!(!booted_since(d.path(), Some("b2")));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(STORED_BOOT_ID))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn the_kernel_has_a_boot_id() {
        // Linux always has one; its value is this boot's.
        let b = current_boot().unwrap();
        assert_eq!(b.len(), 36, "{b}");
    }
}
