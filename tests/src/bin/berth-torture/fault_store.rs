//! Fault `store`: while pods run, the daemon is killed and its state store
//! (`<root>/berth.redb`) deleted, truncated or garbled, in turn, before the restart.
//! Checks after it: the daemon said so in its log (and moved a damaged file aside, root's
//! alone), and every pod and container it knew (all but churn's) is listed again with its
//! id, metadata, labels, annotations, log path, image, times, state and exit code (a
//! container that exited with 3 before the kill is made for that). The common checks
//! (counters untouched with every line, victims' exits, leftovers, events) run as usual.
//! Removals whose DELETED event no client had received when the store went are lost with
//! it (docs/crash-recovery.md): they are counted here, not reported as violations.

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::report::Report;
use crate::workload::{self, Rs, Shape, LABEL};

/// What the daemon's log says when it rebuilt the store (daemon/src/salvage/mod.rs).
const REBUILT: &str = "the state store was lost or damaged";
const ASIDE_PREFIX: &str = "berth.redb.damaged-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    Delete,
    Truncate,
    Garble,
}

/// What the daemon knew before the kill.
pub struct Known {
    pods: Vec<cri::PodSandboxStatus>,
    containers: Vec<cri::ContainerStatus>,
    /// The container that exited with 3 (removed after the checks).
    finished: String,
}

pub struct StoreFault {
    store: PathBuf,
    root: PathBuf,
    daemon_log: PathBuf,
    rng: u64,
    damages: usize,
    aside: usize,
    /// By kind of damage, how many.
    by_kind: BTreeMap<&'static str, usize>,
    /// DELETED events lost with a store (ids).
    pub events_lost: usize,
}

impl StoreFault {
    pub fn new(root: Option<&Path>, daemon_log: PathBuf, seed: u64) -> Result<StoreFault> {
        let root = root.context("--faults store needs --root (where the store is)")?;
        Ok(StoreFault {
            store: root.join("berth.redb"),
            root: root.to_path_buf(),
            daemon_log,
            rng: seed | 1,
            damages: 0,
            aside: 0,
            by_kind: BTreeMap::new(),
            events_lost: 0,
        })
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Before the kill: a container that exits with 3, then what the daemon lists.
    pub async fn before(
        &mut self,
        rs: &mut Rs,
        shape: &Shape,
        vpod: &str,
        vcfg: &cri::PodSandboxConfig,
    ) -> Result<Known> {
        let name = format!("done{}", self.damages);
        let finished =
            workload::start(rs, vpod, vcfg, shape.container(&name, "echo n 0; exit 3")).await?;
        let mut exited = false;
        for _ in 0..250 {
            let (st, _) = workload::status(rs, &finished).await?;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !exited {
            bail!("container {name} did not exit");
        }
        let mut pods = Vec::new();
        for p in workload::pods_with(rs, "").await? {
            if p.labels.get(LABEL).is_some_and(|r| r == "churn") {
                continue;
            }
            let st = rs
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: p.id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("no pod status")?;
            pods.push(st);
        }
        let mut containers = Vec::new();
        let all = rs
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        for c in all {
            if pods.iter().any(|p| p.id == c.pod_sandbox_id) {
                containers.push(workload::status(rs, &c.id).await?.0);
            }
        }
        Ok(Known {
            pods,
            containers,
            finished,
        })
    }

    /// While the daemon is down: the store is deleted, truncated or garbled, in turn.
    pub fn damage(&mut self) -> Result<Damage> {
        let how = [Damage::Delete, Damage::Truncate, Damage::Garble][self.damages % 3];
        let len = std::fs::metadata(&self.store)
            .with_context(|| format!("stat {}", self.store.display()))?
            .len();
        match how {
            Damage::Delete => std::fs::remove_file(&self.store)?,
            Damage::Truncate => {
                let to = 1 + self.next() % (len / 2).max(1);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.store)?
                    .set_len(to)?;
            }
            Damage::Garble => {
                // The header page and one page further in: redb finds both.
                let mut bytes = std::fs::read(&self.store)?;
                let page = 4096.min(bytes.len());
                let at = (self.next() as usize % bytes.len().max(1)) & !4095;
                for i in (0..page).chain(at..(at + 4096).min(bytes.len())) {
                    bytes[i] = self.next() as u8;
                }
                std::fs::write(&self.store, &bytes)?;
            }
        }
        self.damages += 1;
        if how != Damage::Delete {
            self.aside += 1;
        }
        let kind = match how {
            Damage::Delete => "deleted",
            Damage::Truncate => "truncated",
            Damage::Garble => "garbled",
        };
        *self.by_kind.entry(kind).or_default() += 1;
        eprintln!("[torture] store {kind} (was {len} bytes)");
        Ok(how)
    }

    /// After the restart: reported, set aside, and everything known listed again as it was.
    pub async fn after(&mut self, rs: &mut Rs, known: Known, report: &mut Report) -> Result<()> {
        let log = std::fs::read_to_string(&self.daemon_log).unwrap_or_default();
        let said = log.lines().filter(|l| l.contains(REBUILT)).count();
        if said != self.damages {
            report.add(
                "store not reported",
                format!("{} damages, the log reports {said} rebuilds", self.damages),
            );
        }
        let aside: Vec<PathBuf> = std::fs::read_dir(&self.root)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(ASIDE_PREFIX))
            .map(|e| e.path())
            .collect();
        if aside.len() != self.aside {
            report.add(
                "store not set aside",
                format!("{} damaged stores, {} set aside", self.aside, aside.len()),
            );
        }
        for a in &aside {
            let mode = std::fs::metadata(a)?.permissions().mode() & 0o777;
            if mode != 0o600 {
                report.add(
                    "store not set aside",
                    format!("{}: mode {mode:o}", a.display()),
                );
            }
        }
        for was in &known.pods {
            let now = rs
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: was.id.clone(),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().status);
            let Some(now) = now else {
                report.add("store: pod lost", format!("pod {}", was.id));
                continue;
            };
            let ip = |s: &cri::PodSandboxStatus| s.network.as_ref().map(|n| n.ip.clone());
            if now.metadata != was.metadata
                || now.labels != was.labels
                || now.annotations != was.annotations
                || now.created_at != was.created_at
                || now.state != was.state
                || ip(&now) != ip(was)
            {
                report.add(
                    "store: pod changed",
                    format!("pod {}: was {was:?}, now {now:?}", was.id),
                );
            }
        }
        for was in &known.containers {
            let Ok((now, _)) = workload::status(rs, &was.id).await else {
                report.add("store: container lost", format!("container {}", was.id));
                continue;
            };
            // Running ones may have exited since (the victims): their exits are the
            // common checks'; everything else must be as it was.
            let exited = was.state == cri::ContainerState::ContainerExited as i32;
            let same = now.metadata == was.metadata
                && now.labels == was.labels
                && now.annotations == was.annotations
                && now.log_path == was.log_path
                && now.image == was.image
                && now.image_ref == was.image_ref
                && now.created_at == was.created_at
                && now.started_at == was.started_at
                && (!exited
                    || (now.state == was.state
                        && now.exit_code == was.exit_code
                        && now.finished_at == was.finished_at
                        && now.reason == was.reason));
            if !same {
                report.add(
                    "store: container changed",
                    format!("container {}: was {was:?}, now {now:?}", was.id),
                );
            }
        }
        if !known.containers.iter().any(|c| c.id == known.finished) {
            report.add(
                "store: container lost",
                "the exited container was not listed".into(),
            );
        }
        rs.remove_container(cri::RemoveContainerRequest {
            container_id: known.finished.clone(),
        })
        .await
        .with_context(|| format!("remove {}", known.finished))?;
        Ok(())
    }

    /// The event check's findings: a removal's DELETED missing for an id that is not
    /// one of `lived` is a loss the store took with it (counted); the rest stay.
    pub fn sort_events(&mut self, bad: Vec<String>, lived: &[String]) -> Vec<String> {
        let (lost, rest): (Vec<String>, Vec<String>) = bad.into_iter().partition(|b| {
            b.contains("no DELETED last")
                && !lived
                    .iter()
                    .any(|id| b.starts_with(&id[..12.min(id.len())]))
        });
        self.events_lost = lost.len();
        rest
    }

    pub fn summary(&self) -> String {
        format!(
            "store damages: {} ({:?}); DELETED events lost with a store: {}",
            self.damages, self.by_kind, self.events_lost
        )
    }
}
