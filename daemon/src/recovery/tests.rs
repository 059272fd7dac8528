//! Recovery against fake shims: operations a crash cut are resolved from what the shim
//! says, a dead shim's recorded exits are kept, and containers whose shim no longer
//! answers are settled through the containers service's exit path.

use crate::events::Kind;
use crate::intent::Op;
use crate::records::{CtrState, Records};
use crate::shim_client::TaskStatus;
use crate::testkit::kit;

#[tokio::test]
async fn a_cut_start_takes_the_state_the_shim_reports() {
    let k = kit();
    let (_, shim) = k.ready_pod("p1");
    for (id, status) in [
        ("ran", TaskStatus::Stopped),
        ("runs", TaskStatus::Running),
        ("never", TaskStatus::Created),
    ] {
        let mut rec = k.container(id, "p1", CtrState::Created);
        rec.op = Some(Op::Start);
        rec.started_at = 20;
        k.put_container(&rec);
        shim.set_state(id, status, 3, 500);
    }
    k.core.recovery.resolve_intents().await.unwrap();
    let get = |id: &str| k.core.store().container(id).unwrap();
    let ran = get("ran");
    assert_eq!(
        (ran.state, ran.exit_code, ran.finished_at),
        (CtrState::Exited, 3, 500)
    );
    assert_eq!((ran.reason.as_str(), ran.op), ("Error", None));
    let runs = get("runs");
    assert_eq!(
        (runs.state, runs.pid, runs.op),
        (CtrState::Running, 4242, None)
    );
    let never = get("never");
    assert_eq!(
        (never.state, never.started_at, never.op),
        (CtrState::Created, 0, None)
    );
    let mut events: Vec<String> = k
        .events()
        .into_iter()
        .map(|(kind, id)| format!("{kind:?} {id}"))
        .collect();
    events.sort();
    assert_eq!(events, ["Started ran", "Started runs", "Stopped ran"]);
    // Counted as finished intents; the census reads the records as they are now.
    let text = k.core.metrics.encode(false);
    for line in [
        r#"berth_recovery_intents_total{op="start",outcome="finished"} 3"#,
        r#"berth_pods{state="ready"} 1"#,
        r#"berth_containers{state="created"} 1"#,
        r#"berth_containers{state="running"} 1"#,
        r#"berth_containers{state="exited"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_cut_start_whose_shim_is_gone_is_an_interrupted_start() {
    let k = kit();
    let (pod, _) = k.ready_pod("p1");
    k.launcher
        .dead
        .lock()
        .unwrap()
        .insert(pod.shim_address.clone());
    let mut rec = k.container("c1", "p1", CtrState::Created);
    rec.op = Some(Op::Start);
    k.put_container(&rec);
    k.core.recovery.resolve_intents().await.unwrap();
    let rec = k.core.store().container("c1").unwrap();
    assert_eq!(
        (rec.state, rec.exit_code, rec.reason.as_str()),
        (CtrState::Exited, 255, "StartInterrupted")
    );
}

#[tokio::test]
async fn a_dead_shims_recorded_exit_is_kept_and_the_rest_reported_shim_died() {
    let k = kit();
    k.ready_pod("p1");
    let oom = k.container("oom", "p1", CtrState::Running);
    k.container("lost", "p1", CtrState::Running);
    let record = berth_proto::exit::ExitRecord {
        status: 137,
        exited_at_ns: 777,
        oom_killed: true,
    };
    record.write(&oom.bundle).unwrap();
    for id in ["oom", "lost"] {
        let c = k.core.store().container(id).unwrap();
        k.core.containers.settle_without_shim(&c).await.unwrap();
    }
    let get = |id: &str| k.core.store().container(id).unwrap();
    let oom = get("oom");
    assert_eq!(
        (oom.exit_code, oom.finished_at, oom.reason.as_str()),
        (137, 777, "OOMKilled")
    );
    let lost = get("lost");
    assert_eq!((lost.exit_code, lost.reason.as_str()), (137, "ShimDied"));
}

#[tokio::test]
async fn running_containers_of_an_unreachable_shim_are_settled_once() {
    let k = kit();
    k.ready_pod("p1");
    k.container("c1", "p1", CtrState::Running);
    // No shim was reconnected: its containers' exits cannot be known.
    k.core.recovery.recover_containers().await.unwrap();
    let rec = k.core.store().container("c1").unwrap();
    assert_eq!(
        (rec.state, rec.exit_code, rec.reason.as_str()),
        (CtrState::Exited, 255, "ShimUnreachable")
    );
    assert_eq!(k.events(), [(Kind::Stopped, "c1".to_string())]);
}

#[tokio::test]
async fn pods_a_reboot_ended_are_settled_at_startup_without_their_shims() {
    let k = kit();
    // p1: its shim is gone and its bundle with it (the state dir was emptied).
    let (p1, _) = k.ready_pod("p1");
    k.launcher
        .dead
        .lock()
        .unwrap()
        .insert(p1.shim_address.clone());
    k.container("runs", "p1", CtrState::Running);
    k.container("made", "p1", CtrState::Created);
    let mut done = k.container("done", "p1", CtrState::Exited);
    done.exit_code = 3;
    done.reason = "Error".into();
    k.put_container(&done);
    // p2: its shim answers; it survived.
    let (p2, _) = k.ready_pod("p2");
    std::fs::create_dir_all(&p2.bundle).unwrap();
    k.container("kept", "p2", CtrState::Running);
    k.core.recovery.recover().await.unwrap();
    let get = |id: &str| k.core.store().container(id).unwrap();
    for id in ["runs", "made"] {
        let c = get(id);
        assert_eq!(
            (c.state, c.exit_code, c.reason.as_str()),
            (CtrState::Exited, 255, "NodeRebooted"),
            "{id}"
        );
    }
    let done = get("done");
    assert_eq!((done.exit_code, done.reason.as_str()), (3, "Error"));
    assert_eq!(get("kept").state, CtrState::Running);
    let pod = |id: &str| k.core.store().pod(id).unwrap().state;
    assert_eq!(pod("p1"), crate::records::PodState::NotReady);
    // p2 is reconnected, not settled (a fake shim's Wait may end its infra at once, so
    // its pod's state is not asserted): its container runs on, only p1 is counted.
    let text = k.core.metrics.encode(false);
    let line = r#"berth_recovery_pods_total{outcome="rebooted"} 1"#;
    assert!(
        text.lines().any(|l| l == line),
        "{line} missing in:\n{text}"
    );
    // This boot is remembered: the next start compares with it.
    let stored = std::fs::read_to_string(k.dir.path().join("root/boot_id")).unwrap();
    let now = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(stored.trim(), now.trim());
}

#[tokio::test]
async fn after_a_new_boot_every_pod_is_settled_even_with_its_bundle_left() {
    let k = kit();
    let (p1, _) = k.ready_pod("p1");
    std::fs::create_dir_all(&p1.bundle).unwrap();
    k.container("c1", "p1", CtrState::Running);
    // The records were settled in another boot than this one.
    std::fs::write(k.dir.path().join("root/boot_id"), "an-earlier-boot").unwrap();
    k.core.recovery.recover().await.unwrap();
    let c = k.core.store().container("c1").unwrap();
    assert_eq!(
        (c.state, c.exit_code, c.reason.as_str()),
        (CtrState::Exited, 255, "NodeRebooted")
    );
    assert_eq!(
        k.core.store().pod("p1").unwrap().state,
        crate::records::PodState::NotReady
    );
}
