//! The pods service against fake shims: a RunPodSandbox that fails at its shim leaves
//! nothing behind; a pod runs, stops and goes with every step taken in its shim.

use crate::events::Kind;
use crate::records::{CtrState, PodState, Records};
use crate::store::{CONTAINERS, PODS};
use crate::testkit::{host_pod, kit, Kit};

fn leftovers(k: &Kit) -> Vec<std::path::PathBuf> {
    ["state/pods", "root/pods"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(k.dir.path().join(d))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        })
        .collect()
}

#[tokio::test]
async fn a_run_whose_shim_does_not_start_is_undone() {
    let k = kit();
    *k.launcher.fail_start.lock().unwrap() = true;
    let err = k.core.pods.run(host_pod("web"), String::new()).await;
    assert!(err.err().unwrap().to_string().contains("fake shim start"));
    assert!(k.core.store().pods().unwrap().is_empty(), "no record left");
    assert_eq!(leftovers(&k), Vec::<std::path::PathBuf>::new());
    assert!(k.events().is_empty(), "nothing announced");
    // The name is free again.
    *k.launcher.fail_start.lock().unwrap() = false;
    k.core
        .pods
        .run(host_pod("web"), String::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_whose_infra_is_not_created_stops_the_shim_it_started() {
    let k = kit();
    k.launcher.fail_new.lock().unwrap().insert("create");
    assert!(k
        .core
        .pods
        .run(host_pod("web"), String::new())
        .await
        .is_err());
    assert!(k.core.store().pods().unwrap().is_empty());
    assert_eq!(leftovers(&k), Vec::<std::path::PathBuf>::new());
    let shims = k.launcher.shims.lock().unwrap().clone();
    assert_eq!(shims.len(), 1);
    let calls = shims.values().next().unwrap().calls();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("shutdown "),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_pod_runs_in_its_own_shim_and_is_announced() {
    let k = kit();
    let (id, shim) = k
        .core
        .pods
        .run(host_pod("ok"), String::new())
        .await
        .unwrap();
    assert_eq!(
        shim.address(),
        format!("unix:///fake/{id}"),
        "the pod's own shim"
    );
    let rec = k.core.store().pod(&id).unwrap();
    assert_eq!((rec.state, rec.pid, rec.op), (PodState::Ready, 4242, None));
    assert_eq!(rec.shim_address, format!("unix:///fake/{id}"));
    let calls = k.launcher.shim(&rec.shim_address).calls();
    assert_eq!(calls, [format!("create {id}"), format!("start {id} None")]);
    assert_eq!(
        k.events(),
        [(Kind::Created, id.clone()), (Kind::Started, id.clone())]
    );
}

#[tokio::test]
async fn stop_and_remove_end_the_infra_and_the_shim() {
    let k = kit();
    let pods = &k.core.pods;
    let (id, _) = pods.run(host_pod("ok"), String::new()).await.unwrap();
    let rec = k.core.store().pod(&id).unwrap();
    let shim = k.launcher.shim(&rec.shim_address);
    pods.stop(&id).await.unwrap();
    let stopped = k.core.store().pod(&id).unwrap();
    assert_eq!(
        (stopped.state, stopped.pid, stopped.op),
        (PodState::NotReady, 0, None)
    );
    pods.remove(&id).await.unwrap();
    assert!(k.core.store().pods().unwrap().is_empty());
    assert!(!rec.bundle.exists() && !rec.files.exists());
    let calls = shim.calls();
    for want in [
        format!("kill {id} None 9"),
        format!("delete {id} None"),
        "shutdown ".to_string(),
    ] {
        assert!(calls.contains(&want), "{want:?} not in {calls:?}");
    }
    let kinds: Vec<Kind> = k.events().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [Kind::Created, Kind::Started, Kind::Stopped, Kind::Deleted]
    );
    // Idempotent, as kubelet expects.
    pods.stop(&id).await.unwrap();
    pods.remove(&id).await.unwrap();
}

#[test]
fn an_undecodable_record_is_left_out_of_the_lists_not_failing_them() {
    let k = kit();
    k.ready_pod("p1");
    k.container("c1", "p1", CtrState::Running);
    let store = k.core.store();
    store
        .put(PODS, "garbage", &serde_json::json!({"id": 7}))
        .unwrap();
    store
        .put(CONTAINERS, "garbage", &serde_json::json!("not a record"))
        .unwrap();
    let pods: Vec<_> = k
        .core
        .pods
        .list()
        .unwrap()
        .into_iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(pods, ["p1"]);
    let ctrs: Vec<_> = k
        .core
        .containers
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(ctrs, ["c1"]);
}
