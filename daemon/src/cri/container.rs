//! Container records ↔ CRI container messages (status, list items, filters).

use berth_cri::v1::*;

use super::convert::{container_metadata, container_to_cri, mount_to_cri, resources_to_cri};
use crate::records::{ContainerRecord, CtrState};

fn state(rec: &ContainerRecord) -> i32 {
    match rec.state {
        CtrState::Created => ContainerState::ContainerCreated as i32,
        CtrState::Running => ContainerState::ContainerRunning as i32,
        CtrState::Exited => ContainerState::ContainerExited as i32,
    }
}

pub fn summary(rec: &ContainerRecord) -> Container {
    Container {
        id: rec.id.clone(),
        pod_sandbox_id: rec.pod_id.clone(),
        metadata: Some(container_metadata(&rec.config)),
        image: Some(ImageSpec {
            image: rec.image_name.clone(),
            ..Default::default()
        }),
        image_ref: rec.image_id.clone(),
        image_id: rec.image_id.clone(),
        state: state(rec),
        created_at: rec.created_at,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
    }
}

/// ContainerStatus' verbose `info` (as containerd's: the process pid, the sandbox id).
pub fn verbose_info(rec: &ContainerRecord) -> String {
    serde_json::json!({
        "pid": rec.pid,
        "sandboxID": rec.pod_id,
        "bundle": rec.bundle,
        "image": rec.image_name,
        "logPath": rec.log_path,
        // In CRI's shape, as crictl inspect shows containerd's.
        "config": container_to_cri(&rec.config),
        // An operation in progress (intent record); never set after startup recovery.
        "op": rec.op,
    })
    .to_string()
}

pub fn status(rec: &ContainerRecord) -> ContainerStatus {
    ContainerStatus {
        id: rec.id.clone(),
        metadata: Some(container_metadata(&rec.config)),
        state: state(rec),
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: Some(ImageSpec {
            image: rec.image_name.clone(),
            ..Default::default()
        }),
        image_ref: rec.image_id.clone(),
        reason: rec.reason.clone(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        mounts: rec.config.mounts.iter().map(mount_to_cri).collect(),
        log_path: rec.log_path.clone(),
        image_id: rec.image_id.clone(),
        // The effective one: kubelet's, else the image's, else SIGTERM.
        stop_signal: super::convert::stop_signal_to_cri(if rec.stop_signal.is_empty() {
            "SIGTERM"
        } else {
            &rec.stop_signal
        }) as i32,
        user: rec.user.as_ref().map(|u| ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: u.uid.into(),
                gid: u.gid.into(),
                // As containerd reports them: the primary group among the groups, once each.
                supplemental_groups: {
                    let mut g: Vec<i64> = std::iter::once(u.gid)
                        .chain(u.additional_gids.iter().copied())
                        .map(i64::from)
                        .collect();
                    g.sort_unstable();
                    g.dedup();
                    g
                },
            }),
        }),
        resources: rec.config.resources.as_ref().map(|r| ContainerResources {
            linux: Some(resources_to_cri(r)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ListContainers' filter: id prefix, state, pod id, labels.
pub fn matches(rec: &ContainerRecord, f: Option<&ContainerFilter>) -> bool {
    let Some(f) = f else { return true };
    if !f.id.is_empty() && !rec.id.starts_with(&f.id) {
        return false;
    }
    if !f.pod_sandbox_id.is_empty() && !rec.pod_id.starts_with(&f.pod_sandbox_id) {
        return false;
    }
    if let Some(s) = &f.state {
        if s.state != state(rec) {
            return false;
        }
    }
    f.label_selector
        .iter()
        .all(|(k, v)| rec.config.labels.get(k) == Some(v))
}
