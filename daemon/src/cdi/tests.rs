//! The CDI registry on spec files in temp dirs.

use super::*;
use serde_json::json;

const YAML: &str = r#"
cdiVersion: "0.6.0"
kind: "vendor.example/gpu"
containerEdits:
  env:
    - "GPU_LIB=/usr/lib/gpu"
devices:
  - name: "gpu0"
    containerEdits:
      env: ["GPU=0"]
      deviceNodes:
        - path: "/dev/gpu0"
          hostPath: "/dev/null"
      mounts:
        - hostPath: "/usr/lib"
          containerPath: "/usr/lib/gpu"
          options: ["ro", "rbind"]
      hooks:
        - hookName: "createContainer"
          path: "/bin/true"
      additionalGIDs: [44]
  - name: "gpu1"
    containerEdits:
      deviceNodes:
        - path: "/dev/gpu1"
          type: "c"
          major: 1
          minor: 5
          permissions: "rw"
"#;

fn spec() -> Value {
    json!({ "process": { "env": ["PATH=/bin", "GPU=x"], "user": { "uid": 0, "gid": 0 } } })
}

#[test]
fn devices_resolve_and_their_edits_apply() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("gpu.yaml"), YAML).unwrap();
    std::fs::write(d.path().join("broken.json"), "{").unwrap();
    let r = Registry::new(vec![d.path().to_path_buf()]);
    let mut s = spec();
    r.inject(
        &[
            "vendor.example/gpu=gpu0".into(),
            "vendor.example/gpu=gpu1".into(),
        ],
        &mut s,
    )
    .unwrap();
    assert_eq!(
        s["process"]["env"],
        json!(["PATH=/bin", "GPU=0", "GPU_LIB=/usr/lib/gpu"])
    );
    assert_eq!(s["linux"]["devices"][0]["path"], "/dev/gpu0");
    assert_eq!(s["linux"]["devices"][0]["type"], "c");
    assert_eq!(s["linux"]["devices"][0]["major"], 1);
    assert_eq!(s["linux"]["devices"][0]["minor"], 3);
    assert_eq!(s["linux"]["resources"]["devices"][1]["access"], "rw");
    assert_eq!(s["mounts"][0]["destination"], "/usr/lib/gpu");
    assert_eq!(s["hooks"]["createContainer"][0]["path"], "/bin/true");
    assert_eq!(s["process"]["user"]["additionalGids"], json!([44]));
    let _: oci_spec::runtime::Linux = serde_json::from_value(s["linux"].clone()).unwrap();

    let e = r
        .inject(&["vendor.example/gpu=gpu9".into()], &mut spec())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gpu9") && e.contains("not in the spec dirs"),
        "{e}"
    );
    let e = r
        .inject(&["gpu0".into()], &mut spec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a qualified name"), "{e}");
}

#[test]
fn a_later_dir_wins_and_one_dir_twice_conflicts() {
    let etc = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let spec_with = |v: &str| {
        format!(
            r#"{{"cdiVersion":"0.6.0","kind":"vendor.example/nic","devices":[{{"name":"a","containerEdits":{{"env":["NIC={v}"]}}}}]}}"#
        )
    };
    std::fs::write(etc.path().join("a.json"), spec_with("etc")).unwrap();
    std::fs::write(run.path().join("a.json"), spec_with("run")).unwrap();
    let r = Registry::new(vec![etc.path().into(), run.path().into()]);
    let mut s = spec();
    r.inject(&["vendor.example/nic=a".into()], &mut s).unwrap();
    assert!(s["process"]["env"]
        .as_array()
        .unwrap()
        .contains(&json!("NIC=run")));
    std::fs::write(run.path().join("b.json"), spec_with("again")).unwrap();
    let e = r
        .inject(&["vendor.example/nic=a".into()], &mut spec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("defined by both"), "{e}");
}
