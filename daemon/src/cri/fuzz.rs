//! CRI requests as bytes from kubelet: valid RunPodSandbox and CreateContainer configs,
//! mutated at the wire level, decoded, converted (`cri::convert`) and turned into OCI
//! specs (`oci_config`). Never a panic; a refusal is a typed error.

use proptest::prelude::*;
use prost::Message as _;

use super::convert::{container_from_cri, full_container, full_pod, pod_from_cri};
use crate::error::{Error, Result};
use crate::oci_config::{container_spec, sandbox_spec, ContainerOpts, ImageConfig, SandboxOpts};

/// `base` with a few bytes changed, cut or extended.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(edits, cut, tail)| {
            let mut b = base.clone();
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            if !tail.is_empty() {
                b.truncate(cut.index(b.len() + 1));
                b.extend(tail);
            }
            b
        })
}

fn no_device(_: &std::path::Path) -> Result<oci_spec::runtime::LinuxDevice> {
    Err(Error::NotFound("no such device".into()))
}

fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument(_)
            | Error::FailedPrecondition(_)
            | Error::Unimplemented(_)
            | Error::NotFound(_)
    )
}

proptest! {
    #![proptest_config(crate::fuzz::config())]

    #[test]
    fn pod_configs_from_the_wire_never_panic(bytes in mutated(full_pod().encode_to_vec())) {
        let Ok(cfg) = berth_cri::v1::PodSandboxConfig::decode(bytes.as_slice()) else {
            return Ok(());
        };
        let spec = match pod_from_cri(&cfg) {
            Ok(s) => s,
            Err(e) => {
                prop_assert!(typed(&e), "{e:?}");
                return Ok(());
            }
        };
        let opts = SandboxOpts {
            id: "sb".into(),
            rootfs: "/run/berth/sb/rootfs".into(),
            args: vec!["/pause".into()],
            cgroup_parent: spec.cgroup_parent.clone(),
            hostname: spec.hostname.clone(),
            ..Default::default()
        };
        if let Err(e) = sandbox_spec(&spec, &opts) {
            prop_assert!(typed(&e), "{e:?}");
        }
    }

    #[test]
    fn container_configs_from_the_wire_never_panic(
        bytes in mutated(full_container().encode_to_vec()),
        pod_bytes in mutated(full_pod().encode_to_vec()),
    ) {
        let Ok(cfg) = berth_cri::v1::ContainerConfig::decode(bytes.as_slice()) else {
            return Ok(());
        };
        let pod = berth_cri::v1::PodSandboxConfig::decode(pod_bytes.as_slice())
            .ok()
            .and_then(|p| pod_from_cri(&p).ok())
            .unwrap_or_default();
        let spec = match container_from_cri(&cfg) {
            Ok(s) => s,
            Err(e) => {
                prop_assert!(typed(&e), "{e:?}");
                return Ok(());
            }
        };
        let image = ImageConfig {
            entrypoint: vec!["/bin/sh".into()],
            user: "app".into(),
            ..Default::default()
        };
        let opts = ContainerOpts {
            id: "c1".into(),
            sandbox_id: "sb".into(),
            sandbox_pid: 42,
            target_pid: Some(43),
            rootfs: "/run/berth/c1/rootfs".into(),
            cgroup_parent: pod.cgroup_parent.clone(),
            passwd: Some("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n".into()),
            group: Some("root:x:0:\napp:x:1000:app\n".into()),
            device_lookup: no_device,
            localhost_profile: Some(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.into()),
            apparmor_available: true,
            ..Default::default()
        };
        if let Err(e) = container_spec(&spec, &pod, &image, &opts) {
            prop_assert!(typed(&e), "{e:?}");
        }
    }
}
