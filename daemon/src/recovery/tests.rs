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
