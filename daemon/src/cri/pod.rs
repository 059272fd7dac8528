//! Pod records ↔ CRI sandbox messages (status, list items, filters).

use berth_cri::v1::*;

use super::convert::{namespaces_to_cri, pod_metadata, pod_to_cri};
use crate::records::{PodRecord, PodState};

fn state(rec: &PodRecord) -> i32 {
    match rec.state {
        PodState::Ready => PodSandboxState::SandboxReady as i32,
        PodState::NotReady => PodSandboxState::SandboxNotready as i32,
    }
}

pub fn status(rec: &PodRecord) -> PodSandboxStatus {
    let ns_opts = Some(namespaces_to_cri(&rec.config.security.namespaces));
    let mut ips = rec.ips.iter();
    PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(pod_metadata(&rec.config)),
        state: state(rec),
        created_at: rec.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace { options: ns_opts }),
        }),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}

pub fn summary(rec: &PodRecord) -> PodSandbox {
    PodSandbox {
        id: rec.id.clone(),
        metadata: Some(pod_metadata(&rec.config)),
        state: state(rec),
        created_at: rec.created_at,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}

/// ListPodSandbox's filter: id (exact or unique prefix, as crictl passes), state, labels.
pub fn matches(rec: &PodRecord, f: Option<&PodSandboxFilter>) -> bool {
    let Some(f) = f else { return true };
    if !f.id.is_empty() && !rec.id.starts_with(&f.id) {
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

pub fn verbose_info(rec: &PodRecord) -> String {
    serde_json::json!({
        "pid": rec.pid,
        "bundle": rec.bundle,
        "netns": rec.netns,
        "shimAddress": rec.shim_address,
        "op": rec.op,
        // In CRI's shape, as crictl inspectp shows containerd's.
        "config": pod_to_cri(&rec.config),
    })
    .to_string()
}
