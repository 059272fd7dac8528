//! berthd as an NRI runtime, the adjustments that reach past the container's process:
//! OCI hooks a plugin adds (run by runc on the host), device nodes (made in the
//! container and allowed by its cgroup), a seccomp policy (enforced on the process);
//! and the validation of adjustments: validator plugins and NRI's default validator
//! refusing a creation with a clear error, nothing left half-made.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_nri::api;
use berth_tests::berthd::berthd_test;
use berth_tests::cri::{container_config, pod_config};
use berth_tests::image;
use berth_tests::nri_plugin::{nri_berthd, wait_for, Behavior, TestPlugin};
use berth_tests::pod::Pod;

fn hook(script: &str) -> api::Hook {
    api::Hook {
        path: "/bin/sh".into(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn char_device(path: &str, major: i64, minor: i64) -> api::LinuxDevice {
    api::LinuxDevice {
        path: path.into(),
        type_: "c".into(),
        major,
        minor,
        file_mode: protobuf::MessageField::some(api::OptionalFileMode {
            value: 0o666,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(key: &str, value: &str) -> api::KeyValue {
    api::KeyValue {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// /dev/fuse (10:229) is not among the devices every container may use: opening it in
/// the container works only if the adjustment's cgroup rule allows it.
const FUSE: (i64, i64) = (10, 229);

#[test]
fn hooks_and_devices_reach_the_container() -> Result<()> {
    let (builder, dir, sock) = nri_berthd(2000)?;
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks)?;
    berthd_test(builder, async |d| {
        let mut a = api::ContainerAdjustment::new();
        a.hooks = protobuf::MessageField::some(api::Hooks {
            create_runtime: vec![hook(&format!(
                "echo created > {}/create-runtime",
                marks.display()
            ))],
            poststart: vec![hook(&format!(
                "echo started > {}/poststart",
                marks.display()
            ))],
            ..Default::default()
        });
        a.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
            devices: vec![
                char_device("/dev/nri-zero", 1, 5),
                char_device("/dev/nri-fuse", FUSE.0, FUSE.1),
            ],
            ..Default::default()
        });
        let p = TestPlugin::adjusting(&sock, "devices", "10", a).await?;
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("hooks", &logs.join("hooks"))).await?;
        let probe = "echo zero=$(head -c 3 /dev/nri-zero | wc -c); \
            echo fuse=$( (exec 3<>/dev/nri-fuse && echo open) 2>&1)";
        let e = pod
            .run_to_exit(container_config(
                "probe",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", probe],
            ))
            .await?;
        ensure!(e.code == 0, "probe failed: {e:?}");
        ensure!(e.var("zero") == Some("3"), "/dev/nri-zero: {}", e.log);
        ensure!(e.var("fuse") == Some("open"), "/dev/nri-fuse: {}", e.log);
        for (file, want) in [("create-runtime", "created"), ("poststart", "started")] {
            let got = std::fs::read_to_string(marks.join(file))
                .with_context(|| format!("the {file} hook did not run"))?;
            ensure!(got.trim() == want, "{file}: {got:?}");
        }
        p.close();

        // Control: the same device with a rule denying it (a resources adjustment,
        // applied after the device's own rule) cannot be opened.
        let mut a = api::ContainerAdjustment::new();
        a.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
            devices: vec![char_device("/dev/nri-fuse", FUSE.0, FUSE.1)],
            resources: protobuf::MessageField::some(api::LinuxResources {
                devices: vec![api::LinuxDeviceCgroup {
                    allow: false,
                    type_: "c".into(),
                    major: protobuf::MessageField::some(api::OptionalInt64 {
                        value: FUSE.0,
                        ..Default::default()
                    }),
                    minor: protobuf::MessageField::some(api::OptionalInt64 {
                        value: FUSE.1,
                        ..Default::default()
                    }),
                    access: "rwm".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let _deny = TestPlugin::adjusting(&sock, "deny", "10", a).await?;
        let e = pod
            .run_to_exit(container_config(
                "denied",
                image::BUSYBOX_IMAGE,
                &["sh", "-c", probe],
            ))
            .await?;
        ensure!(
            e.var("fuse").is_some_and(|v| v.contains("not permitted")),
            "a denied device: {}",
            e.log
        );
        pod.remove().await?;
        Ok(())
    })
}

/// Whether the host's runc implements runtime-spec 1.2 (its `features`).
fn runtime_implements_spec_1_2() -> Result<bool> {
    let out = std::process::Command::new("runc")
        .arg("features")
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let max = v["ociVersionMax"].as_str().unwrap_or_default();
    let mut n = max.split(['.', '-']).map(|x| x.parse::<u32>().unwrap_or(0));
    Ok((n.next().unwrap_or(0), n.next().unwrap_or(0)) >= (1, 2))
}

#[test]
fn a_seccomp_policy_is_enforced_an_io_priority_refused_on_runc_1_1() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(2000)?;
    berthd_test(builder, async |d| {
        let mut a = api::ContainerAdjustment::new();
        a.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
            seccomp_policy: protobuf::MessageField::some(api::LinuxSeccomp {
                default_action: "SCMP_ACT_ALLOW".into(),
                syscalls: vec![api::LinuxSyscall {
                    names: vec!["mkdir".into(), "mkdirat".into()],
                    action: "SCMP_ACT_ERRNO".into(),
                    errno_ret: protobuf::MessageField::some(api::OptionalUInt32 {
                        value: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let _p = TestPlugin::adjusting(&sock, "seccomp", "10", a).await?;
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("seccomp", &logs.join("seccomp"))).await?;
        let e = pod
            .run_to_exit(container_config(
                "probe",
                image::BUSYBOX_IMAGE,
                &[
                    "sh",
                    "-c",
                    "echo mode=$(grep '^Seccomp:' /proc/self/status | cut -f2); \
                     echo mkdir=$(mkdir /tmp/x 2>&1 && echo made)",
                ],
            ))
            .await?;
        ensure!(e.var("mode") == Some("2"), "seccomp mode: {}", e.log);
        ensure!(
            e.var("mkdir").is_some_and(|v| v.contains("not permitted")),
            "mkdir under the policy: {}",
            e.log
        );
        _p.close();

        // An I/O priority needs a runtime-spec 1.2 runtime; runc 1.1 would drop it
        // silently: refused, naming the plugin.
        if !runtime_implements_spec_1_2()? {
            let mut a = api::ContainerAdjustment::new();
            a.linux = protobuf::MessageField::some(api::LinuxContainerAdjustment {
                io_priority: protobuf::MessageField::some(api::LinuxIOPriority {
                    class: api::IOPrioClass::IOPRIO_CLASS_IDLE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let _io = TestPlugin::adjusting(&sock, "ioprio", "10", a).await?;
            let c = container_config("io", image::BUSYBOX_IMAGE, &["true"]);
            let err = pod.create(c).await.expect_err("CreateContainer passed");
            ensure!(
                err.message()
                    .contains("NRI plugin 10-ioprio adjusts the I/O priority"),
                "CreateContainer with an I/O priority: {err:?}"
            );
            let listed = pod.list_all().await?;
            ensure!(
                listed.iter().all(|c| c.id == e.id),
                "a refused container is listed: {listed:?}"
            );
        }
        pod.remove().await?;
        Ok(())
    })
}

#[test]
fn a_validator_plugin_refuses_adjustments() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(2000)?;
    berthd_test(builder, async |d| {
        let mut a = api::ContainerAdjustment::new();
        a.env.push(env("NRI_ENV", "from-plugin"));
        let adjuster = TestPlugin::connect(
            &sock,
            "adjust",
            "10",
            Behavior {
                adjust: Some(a),
                events: berth_nri::event_bit(api::Event::CREATE_CONTAINER)
                    | berth_nri::event_bit(api::Event::REMOVE_CONTAINER),
                ..Default::default()
            },
        )
        .await?;
        let validator = |reject: Option<&str>| Behavior {
            reject: reject.map(str::to_string),
            events: berth_nri::event_bit(api::Event::VALIDATE_CONTAINER_ADJUSTMENT),
            ..Default::default()
        };
        let guard =
            TestPlugin::connect(&sock, "guard", "90", validator(Some("no env from plugins")))
                .await?;
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("validate", &logs.join("validate"))).await?;
        let c = container_config(
            "app",
            image::BUSYBOX_IMAGE,
            &["sh", "-c", "echo env=$NRI_ENV"],
        );
        let err = pod
            .create(c.clone())
            .await
            .expect_err("CreateContainer passed");
        ensure!(
            err.message().contains(
                "NRI validator 90-guard rejected the container's adjustments: no env from plugins"
            ),
            "CreateContainer's error: {err:?}"
        );
        ensure!(
            pod.list_all().await?.is_empty(),
            "a refused container is listed"
        );
        // What the validator was shown: the adjustment, who made it, who was asked.
        let v = guard.validations().pop().context("no validation")?;
        let id = v.container.id.clone();
        ensure!(
            v.adjust.env.iter().any(|kv| kv.key == "NRI_ENV"),
            "the adjustment shown: {:?}",
            v.adjust
        );
        let env_owner = v.owners.owners.get(&id).and_then(|f| {
            f.compound
                .get(&(api::Field::Env as i32))
                .and_then(|c| c.owners.get("NRI_ENV"))
        });
        ensure!(
            env_owner.map(String::as_str) == Some("10-adjust"),
            "owners shown: {:?}",
            v.owners
        );
        let plugins: Vec<String> = v
            .plugins
            .iter()
            .map(|p| format!("{}-{}", p.index, p.name))
            .collect();
        ensure!(
            plugins == ["10-adjust", "90-guard"],
            "plugins shown: {plugins:?}"
        );
        // The adjuster hears that the refused container is gone.
        wait_for(Duration::from_secs(5), "RemoveContainer", || async {
            (adjuster.kinds_of(&id) == ["CreateContainer", "RemoveContainer"]).then_some(())
        })
        .await
        .with_context(|| format!("events: {:?}", adjuster.kinds_of(&id)))?;

        // A validator that accepts: the container is made, adjusted.
        guard.close();
        let _ok = TestPlugin::connect(&sock, "guard", "90", validator(None)).await?;
        let e = pod.run_to_exit(c).await?;
        ensure!(e.var("env") == Some("from-plugin"), "{}", e.log);
        pod.remove().await?;
        Ok(())
    })
}

#[test]
fn the_default_validator_refuses_hooks_and_missing_plugins() -> Result<()> {
    let (builder, _dir, sock) = nri_berthd(2000)?;
    let builder = builder.config(
        "[nri.default_validator]\nenable = true\nreject_oci_hook_adjustment = true\n\
         required_plugins = [\"needed\"]\ntolerate_missing_plugins_annotation = \"berth.test/tolerate\"\n",
    );
    berthd_test(builder, async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("defval", &logs.join("defval"))).await?;
        let c = container_config("app", image::BUSYBOX_IMAGE, &["true"]);
        let err = pod
            .create(c.clone())
            .await
            .expect_err("CreateContainer passed");
        ensure!(
            err.message()
                .contains("required plugin \"needed\" not present"),
            "CreateContainer without the required plugin: {err:?}"
        );
        // A pod that tolerates missing plugins runs its containers without it.
        let mut tolerant = pod_config("tolerant", &logs.join("tolerant"));
        tolerant
            .annotations
            .insert("berth.test/tolerate".into(), "true".into());
        let tpod = Pod::run(d, tolerant).await?;
        tpod.run_to_exit(c.clone()).await?;
        tpod.remove().await?;

        let _needed = TestPlugin::connect(&sock, "needed", "10", Behavior::default()).await?;
        let mut a = api::ContainerAdjustment::new();
        a.hooks = protobuf::MessageField::some(api::Hooks {
            prestart: vec![hook("true")],
            ..Default::default()
        });
        let hooker = TestPlugin::adjusting(&sock, "hooker", "20", a).await?;
        let err = pod
            .create(c.clone())
            .await
            .expect_err("CreateContainer passed");
        ensure!(
            err.message().contains("NRI default validator")
                && err.message().contains("20-hooker")
                && err.message().contains("OCI hook"),
            "CreateContainer with a hook: {err:?}"
        );
        ensure!(
            pod.list_all().await?.is_empty(),
            "a refused container is listed"
        );
        hooker.close();
        wait_for(Duration::from_secs(5), "CreateContainer", || async {
            pod.create(c.clone()).await.ok()
        })
        .await?;
        pod.remove().await?;
        Ok(())
    })
}

const CDI_SPEC: &str = r#"
cdiVersion: "0.6.0"
kind: "vendor.example/test"
containerEdits:
  env: ["CDI_VENDOR=example"]
devices:
  - name: "fuse"
    containerEdits:
      env: ["CDI_DEV=fuse"]
      deviceNodes:
        - path: "/dev/cdi-fuse"
          hostPath: "/dev/fuse"
      mounts:
        - hostPath: "DATA"
          containerPath: "/cdi-data"
          options: ["rbind", "ro"]
"#;

const CDI_PROBE: &str = "echo env=$CDI_VENDOR/$CDI_DEV; echo data=$(cat /cdi-data/hello); \
    echo dev=$( (exec 3<>/dev/cdi-fuse && echo open) 2>&1)";

#[test]
fn cdi_devices_from_cri_and_from_a_plugin() -> Result<()> {
    let (builder, dir, sock) = nri_berthd(2000)?;
    let specs = dir.path().join("cdi");
    let data = dir.path().join("cdi-data");
    std::fs::create_dir_all(&specs)?;
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("hello"), "cdi")?;
    std::fs::write(
        specs.join("test.yaml"),
        CDI_SPEC.replace("DATA", &data.display().to_string()),
    )?;
    let builder = builder.config(&format!("[cdi]\nspec_dirs = [\"{}\"]\n", specs.display()));
    berthd_test(builder, async |d| {
        let logs = d.dir.path().join("logs");
        let pod = Pod::run(d, pod_config("cdi", &logs.join("cdi"))).await?;
        let check = |e: &berth_tests::pod::Exited| -> Result<()> {
            for (k, want) in [("env", "example/fuse"), ("data", "cdi"), ("dev", "open")] {
                ensure!(
                    e.var(k) == Some(want),
                    "{k}: {:?}; log:\n{}",
                    e.var(k),
                    e.log
                );
            }
            Ok(())
        };
        // CRI's cdi_devices.
        let mut c = container_config("cri", image::BUSYBOX_IMAGE, &["sh", "-c", CDI_PROBE]);
        c.cdi_devices = vec![berth_cri::v1::CdiDevice {
            name: "vendor.example/test=fuse".into(),
        }];
        check(&pod.run_to_exit(c).await?)?;
        // An unknown device: a clear error, nothing made.
        let mut c = container_config("unknown", image::BUSYBOX_IMAGE, &["true"]);
        c.cdi_devices = vec![berth_cri::v1::CdiDevice {
            name: "vendor.example/test=nope".into(),
        }];
        let before = pod.list_all().await?.len();
        let err = pod.create(c).await.expect_err("CreateContainer passed");
        ensure!(
            err.code() == tonic::Code::NotFound
                && err.message().contains("vendor.example/test=nope"),
            "an unknown CDI device: {err:?}"
        );
        ensure!(
            pod.list_all().await?.len() == before,
            "a container with an unknown CDI device is listed"
        );
        // An NRI plugin's CDI device adjustment.
        let mut a = api::ContainerAdjustment::new();
        a.CDI_devices.push(api::CDIDevice {
            name: "vendor.example/test=fuse".into(),
            ..Default::default()
        });
        let _p = TestPlugin::adjusting(&sock, "cdi", "10", a).await?;
        let c = container_config("nri", image::BUSYBOX_IMAGE, &["sh", "-c", CDI_PROBE]);
        check(&pod.run_to_exit(c).await?)?;
        pod.remove().await?;
        Ok(())
    })
}
