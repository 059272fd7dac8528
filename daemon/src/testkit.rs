//! Unit-test fixtures for the core: a `Core` over private temp dirs whose shims are
//! fakes (`shim_client::fake`), and records written straight into its store.

use std::sync::Arc;

use crate::config::Config;
use crate::core::Core;
use crate::events::{Event, Kind};
use crate::records::{ContainerRecord, CtrState, PodRecord, PodState};
use crate::shim_client::fake::{FakeLauncher, FakeShim};
use crate::store::{CONTAINERS, PODS};
use crate::workload::{NamespaceMode, Namespaces, PodSecurity, PodSpec};

pub struct Kit {
    pub dir: tempfile::TempDir,
    pub core: Arc<Core>,
    pub launcher: Arc<FakeLauncher>,
}

pub fn kit() -> Kit {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let text = format!(
        "[server]\nsocket = \"{d}/berth.sock\"\n[paths]\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
         [cni]\nconf_dir = \"{d}/net.d\"\n"
    );
    let cfg = Config::from_toml(&text).unwrap();
    let launcher = FakeLauncher::new();
    let core = Core::with_parts(cfg, launcher.clone(), dir.path().join("pause")).unwrap();
    Kit {
        dir,
        core,
        launcher,
    }
}

impl Kit {
    /// A Ready pod recorded as served by a fake shim; returns that shim.
    pub fn ready_pod(&self, id: &str) -> (PodRecord, Arc<FakeShim>) {
        let address = format!("unix:///fake/{id}");
        let rec = PodRecord {
            id: id.into(),
            name_key: format!("{id}_ns_uid_0"),
            config: host_pod(id),
            runtime_handler: String::new(),
            state: PodState::Ready,
            created_at: 1,
            bundle: self.dir.path().join("state/pods").join(id),
            files: self.dir.path().join("root/pods").join(id),
            netns: None,
            network: String::new(),
            ips: vec![],
            pid: 4242,
            shim_address: address.clone(),
            op: None,
            stopped_at: 0,
            journal_seq: 0,
            pins: None,
            shm: None,
        };
        self.core
            .store()
            .create(PODS, id, &rec.name_key, &rec)
            .unwrap();
        let shim = self.launcher.shim(&address);
        shim.set_state(id, crate::shim_client::TaskStatus::Running, 0, 0);
        (rec, shim)
    }

    /// A container of `pod` in `state`, recorded (its bundle dir made).
    pub fn container(&self, id: &str, pod: &str, state: CtrState) -> ContainerRecord {
        let bundle = self.dir.path().join("state/containers").join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let rec = ContainerRecord {
            id: id.into(),
            pod_id: pod.into(),
            name_key: format!("{id}_{pod}_ns_uid_0"),
            config: Default::default(),
            image_name: "busybox".into(),
            image_id: "sha256:0".into(),
            state,
            created_at: 10,
            started_at: if state == CtrState::Created { 0 } else { 20 },
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            pid: 4343,
            bundle,
            dir: self.dir.path().join("root/containers").join(id),
            log_path: String::new(),
            stop_signal: String::new(),
            user: None,
            op: None,
        };
        self.core
            .store()
            .create(CONTAINERS, id, &rec.name_key, &rec)
            .unwrap();
        rec
    }

    pub fn put_container(&self, rec: &ContainerRecord) {
        self.core.store().put(CONTAINERS, &rec.id, rec).unwrap();
    }

    /// The events nobody has received yet, as (kind, id).
    pub fn events(&self) -> Vec<(Kind, String)> {
        let (backlog, rx) = self.core.events.subscribe();
        self.core.events.leave(rx, Vec::new());
        backlog
            .into_iter()
            .map(|Event { kind, id, .. }| (kind, id))
            .collect()
    }
}

/// A host-network pod's spec (no CNI needed).
pub fn host_pod(name: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        namespace: "ns".into(),
        uid: "uid".into(),
        security: PodSecurity {
            namespaces: Namespaces {
                network: NamespaceMode::Node,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}
