//! The containers service against fake shims: an exit recorded exactly once, an early
//! exit kept until the start is recorded, a stop's exit status and reason.

use crate::events::Kind;
use crate::intent::Op;
use crate::records::{CtrState, Records};
use crate::shim_client::{Exit, TaskStatus};
use crate::testkit::kit;

#[test]
fn an_exit_is_recorded_once_whoever_reports_it() {
    let k = kit();
    k.ready_pod("p1");
    k.container("c1", "p1", CtrState::Running);
    let c = &k.core.containers;
    c.record_exit("c1", 0, 100).unwrap();
    c.record_exit_with("c1", 137, 200, "ShimDied").unwrap();
    let rec = k.core.store().container("c1").unwrap();
    assert_eq!(rec.state, CtrState::Exited);
    assert_eq!((rec.exit_code, rec.finished_at), (0, 100));
    assert_eq!(rec.reason, "Completed");
    assert_eq!(k.events(), [(Kind::Stopped, "c1".to_string())]);
}

#[test]
fn an_exit_before_the_start_is_recorded_is_kept_until_it_is() {
    let k = kit();
    k.ready_pod("p1");
    let mut rec = k.container("c1", "p1", CtrState::Created);
    rec.op = Some(Op::Start);
    k.put_container(&rec);
    let c = &k.core.containers;
    c.exit_seen("c1", Exit { status: 3, at: 50 }).unwrap();
    assert_eq!(
        k.core.store().container("c1").unwrap().state,
        CtrState::Created
    );
    rec.state = CtrState::Running;
    rec.op = None;
    k.put_container(&rec);
    c.became_running("c1").unwrap();
    let rec = k.core.store().container("c1").unwrap();
    assert_eq!(
        (rec.state, rec.exit_code, rec.finished_at),
        (CtrState::Exited, 3, 50)
    );
    assert_eq!(rec.reason, "Error");
    // Recorded once: a second look finds nothing kept.
    c.became_running("c1").unwrap();
    assert_eq!(k.events().len(), 1);
}

#[test]
fn an_exit_of_an_unknown_or_created_container_is_ignored() {
    let k = kit();
    k.ready_pod("p1");
    k.container("c1", "p1", CtrState::Created);
    let c = &k.core.containers;
    c.exit_seen("c1", Exit { status: 1, at: 5 }).unwrap();
    c.exit_seen("nope", Exit { status: 1, at: 5 }).unwrap();
    c.became_running("c1").unwrap();
    assert_eq!(
        k.core.store().container("c1").unwrap().state,
        CtrState::Created
    );
    assert!(k.events().is_empty());
}

#[tokio::test]
async fn stop_signals_the_task_and_records_its_status() {
    let k = kit();
    let (_, shim) = k.ready_pod("p1");
    k.container("c1", "p1", CtrState::Running);
    shim.set_state("c1", TaskStatus::Running, 0, 0);
    k.core.containers.stop("c1", 5).await.unwrap();
    let rec = k.core.store().container("c1").unwrap();
    assert_eq!((rec.state, rec.exit_code), (CtrState::Exited, 143));
    assert_eq!(rec.op, None, "the stop's intent is cleared");
    assert!(
        shim.calls().contains(&"kill c1 None 15".to_string()),
        "{:?}",
        shim.calls()
    );
    // Idempotent, also for ids nobody knows.
    k.core.containers.stop("c1", 5).await.unwrap();
    k.core.containers.stop("nope", 5).await.unwrap();
}

#[tokio::test]
async fn a_failing_stop_leaves_no_intent_behind() {
    let k = kit();
    let (_, shim) = k.ready_pod("p1");
    k.container("c1", "p1", CtrState::Running);
    shim.set_state("c1", TaskStatus::Running, 0, 0);
    shim.fail("kill");
    assert!(k.core.containers.stop("c1", 5).await.is_err());
    let rec = k.core.store().container("c1").unwrap();
    assert_eq!((rec.state, rec.op), (CtrState::Running, None));
}

#[tokio::test]
async fn a_stop_whose_shim_died_under_it_settles_the_container() {
    let k = kit();
    let (pod, shim) = k.ready_pod("p1");
    k.container("c1", "p1", CtrState::Running);
    shim.set_state("c1", TaskStatus::Running, 0, 0);
    shim.fail("kill");
    k.launcher
        .dead
        .lock()
        .unwrap()
        .insert(pod.shim_address.clone());
    k.core.containers.stop("c1", 5).await.unwrap();
    let rec = k.core.store().container("c1").unwrap();
    assert_eq!(
        (rec.state, rec.exit_code, rec.reason.as_str(), rec.op),
        (CtrState::Exited, 137, "ShimDied", None)
    );
}
