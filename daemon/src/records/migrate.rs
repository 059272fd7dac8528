//! Record format versions and the migration of a store written by an older berthd,
//! run once at startup before anything reads a record.
//!
//! - 1: the CRI configs inside pod and container records were the `k8s-cri` crate's serde
//!   JSON.
//! - 2: they are the CRI messages' protobuf wire form (`wire`).

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};

use crate::error::{Error, Result};
use crate::store::{Store, CONTAINERS, PODS};

/// The record format this berthd writes.
pub const FORMAT: u64 = 2;

/// Brings the store to [`FORMAT`]; a store from a newer berthd is refused untouched.
pub fn migrate(store: &Store) -> Result<()> {
    match store.format()? {
        FORMAT => Ok(()),
        1 => {
            let n = store.migrate(&[PODS, CONTAINERS], FORMAT, v1_to_v2)?;
            tracing::info!(records = n, from = 1, to = FORMAT, "state store migrated");
            Ok(())
        }
        newer => Err(Error::FailedPrecondition(format!(
            "the state store has record format {newer}; this berthd reads up to {FORMAT}"
        ))),
    }
}

fn v1_to_v2(table: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let bad = |e: serde_json::Error| Error::Store(format!("migrating a {table} record: {e}"));
    let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    let config = v["config"].take();
    let wire = if table == PODS_NAME {
        super::wire::encode(&serde_json::from_value::<PodSandboxConfig>(config).map_err(bad)?)
    } else {
        super::wire::encode(&serde_json::from_value::<ContainerConfig>(config).map_err(bad)?)
    };
    v["config"] = serde_json::Value::String(wire);
    serde_json::to_vec(&v).map_err(bad)
}

const PODS_NAME: &str = "pods";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ContainerRecord, PodRecord, Records};

    /// Records exactly as berthd wrote them before format 2 (the config as the k8s-cri
    /// crate's serde JSON), trimmed to the fields that matter here.
    fn v1_pod() -> serde_json::Value {
        serde_json::json!({
            "id": "p1", "name_key": "web_ns_uid_0",
            "config": {
                "metadata": {"name": "web", "uid": "uid", "namespace": "ns", "attempt": 0},
                "hostname": "web-0", "log_directory": "/var/log/pods/x", "dns_config": null,
                "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": 8080, "host_ip": ""}],
                "labels": {"app": "web"}, "annotations": {},
                "linux": {"cgroup_parent": "/kubepods/pod1", "security_context": null,
                          "sysctls": {"net.ipv4.ip_forward": "1"}, "overhead": null, "resources": null},
                "windows": null
            },
            "runtime_handler": "", "state": "Ready", "created_at": 5,
            "bundle": "/run/berth/pods/p1", "files": "/var/lib/berth/pods/p1",
            "netns": null, "ips": ["10.0.0.2"], "pid": 42, "shim_address": "unix:///x",
            "op": null, "stopped_at": 0, "journal_seq": 7
        })
    }

    fn v1_container() -> serde_json::Value {
        serde_json::json!({
            "id": "c1", "pod_id": "p1", "name_key": "app_web_ns_uid_0",
            "config": {
                "metadata": {"name": "app", "attempt": 0},
                "image": {"image": "busybox", "annotations": {}, "user_specified_image": "", "runtime_handler": ""},
                "command": ["sleep"], "args": ["1000"], "working_dir": "",
                "envs": [{"key": "A", "value": "b"}], "mounts": [], "devices": [],
                "labels": {}, "annotations": {}, "log_path": "app/0.log",
                "stdin": false, "stdin_once": false, "tty": false,
                "linux": null, "windows": null, "cdi_devices": [], "stop_signal": 0
            },
            "image_name": "busybox", "image_id": "sha256:1", "state": "Running",
            "created_at": 1, "started_at": 2, "finished_at": 0, "exit_code": 0, "reason": "",
            "pid": 9, "bundle": "/b", "dir": "/d", "log_path": "/var/log/pods/x/app/0.log",
            "stop_signal": "", "user": null, "op": null
        })
    }

    #[test]
    fn a_format_1_store_is_migrated_once_and_reads_back_whole() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("state.redb")).unwrap();
        let (pod, ctr) = (v1_pod(), v1_container());
        store.put(PODS, "p1", &pod).unwrap();
        store.put(CONTAINERS, "c1", &ctr).unwrap();
        assert_eq!(store.format().unwrap(), 1);
        // Format 1 records no longer read as records of today's format.
        assert!(store.pod("p1").is_err());
        migrate(&store).unwrap();
        assert_eq!(store.format().unwrap(), FORMAT);
        let p: PodRecord = store.pod("p1").unwrap();
        let expected: PodSandboxConfig = serde_json::from_value(pod["config"].clone()).unwrap();
        assert_eq!(p.config, expected);
        assert_eq!(p.config.port_mappings[0].host_port, 8080);
        assert_eq!(
            p.config.linux.as_ref().unwrap().cgroup_parent,
            "/kubepods/pod1"
        );
        assert_eq!((p.journal_seq, p.pid), (7, 42));
        let c: ContainerRecord = store.container("c1").unwrap();
        let expected: ContainerConfig = serde_json::from_value(ctr["config"].clone()).unwrap();
        assert_eq!(c.config, expected);
        assert_eq!(c.config.envs[0].value, "b");
        // A second start finds nothing to do.
        migrate(&store).unwrap();
        assert_eq!(store.pod("p1").unwrap().config, expected_pod(&pod));
    }

    fn expected_pod(pod: &serde_json::Value) -> PodSandboxConfig {
        serde_json::from_value(pod["config"].clone()).unwrap()
    }

    #[test]
    fn a_store_from_a_newer_berthd_is_refused_untouched() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("state.redb")).unwrap();
        store
            .migrate(&[], FORMAT + 1, |_, b| Ok(b.to_vec()))
            .unwrap();
        let err = migrate(&store).unwrap_err();
        assert!(err.to_string().contains("record format 3"), "{err}");
        assert_eq!(store.format().unwrap(), FORMAT + 1);
    }
}
