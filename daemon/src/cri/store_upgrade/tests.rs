//! Stores exactly as older berthds wrote them are upgraded once and read back whole.

use prost::Message as _;

use super::*;
use crate::cri::convert::full_pod;
use crate::records::{ContainerRecord, PodRecord, Records};

/// A pod record as berthd wrote it in format 1 (the config as the k8s-cri crate's serde
/// JSON), trimmed to the fields that matter here.
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

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("state.redb")).unwrap();
    (d, s)
}

#[test]
fn a_format_1_store_is_upgraded_once_and_reads_back_whole() {
    let (_d, store) = store();
    let (pod, ctr) = (v1_pod(), v1_container());
    store.put(PODS, "p1", &pod).unwrap();
    store.put(CONTAINERS, "c1", &ctr).unwrap();
    assert_eq!(store.format().unwrap(), 1);
    assert!(
        store.pod("p1").is_err(),
        "format 1 records are not today's records"
    );
    assert!(crate::records::migrate::ensure_current(&store).is_err());
    upgrade_store(&store).unwrap();
    assert_eq!(store.format().unwrap(), FORMAT);
    crate::records::migrate::ensure_current(&store).unwrap();

    let p: PodRecord = store.pod("p1").unwrap();
    let expected: PodSandboxConfig = serde_json::from_value(pod["config"].clone()).unwrap();
    assert_eq!(p.config, pod_from_cri(&expected).unwrap());
    assert_eq!(p.config.port_mappings[0].host_port, 8080);
    assert_eq!(p.config.cgroup_parent, "/kubepods/pod1");
    assert_eq!(p.config.sysctls["net.ipv4.ip_forward"], "1");
    assert_eq!((p.journal_seq, p.pid), (7, 42));
    let c: ContainerRecord = store.container("c1").unwrap();
    assert_eq!(c.config.envs, vec![("A".to_string(), "b".to_string())]);
    assert_eq!(
        (c.config.name.as_str(), c.config.image.as_str()),
        ("app", "busybox")
    );
    assert_eq!(c.config.args, vec!["1000"]);

    // A second start finds nothing to do.
    upgrade_store(&store).unwrap();
    assert_eq!(store.pod("p1").unwrap().config, p.config);
}

#[test]
fn a_format_2_store_is_upgraded_with_every_field() {
    let (_d, store) = store();
    let cfg = full_pod();
    let mut pod = v1_pod();
    pod["config"] = base64::engine::general_purpose::STANDARD
        .encode(cfg.encode_to_vec())
        .into();
    store.put(PODS, "p1", &pod).unwrap();
    store.migrate(&[], 2, |_, b| Ok(b.to_vec())).unwrap();
    upgrade_store(&store).unwrap();
    let p: PodRecord = store.pod("p1").unwrap();
    assert_eq!(p.config, pod_from_cri(&cfg).unwrap());
    assert_eq!(super::super::convert::pod_to_cri(&p.config), cfg);
}

#[test]
fn an_undecodable_record_fails_the_upgrade_and_leaves_the_store_whole() {
    let (_d, store) = store();
    let mut pod = v1_pod();
    pod["config"] = "not base64!".into();
    store.put(PODS, "p1", &pod).unwrap();
    store.migrate(&[], 2, |_, b| Ok(b.to_vec())).unwrap();
    let e = upgrade_store(&store).unwrap_err();
    assert!(e.to_string().contains("upgrading a pods record"), "{e}");
    assert_eq!(store.format().unwrap(), 2);
    let raw: serde_json::Value = store.get(PODS, "p1").unwrap().unwrap();
    assert_eq!(raw, pod);
}
