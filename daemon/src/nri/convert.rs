//! berthd's records and OCI specs as NRI's `PodSandbox` and `Container` messages, and
//! NRI's resources as berthd's.

use berth_nri::api;
use serde_json::Value;

use crate::records::{ContainerRecord, CtrState, PodRecord, PodState};
use crate::workload::Resources;

/// A pod as plugins see it.
pub fn pod(rec: &PodRecord, default_cgroup_parent: &str) -> api::PodSandbox {
    let c = &rec.config;
    let mut linux = api::LinuxPodSandbox::new();
    linux.cgroup_parent = rec.cgroup_parent(default_cgroup_parent);
    linux.cgroups_path = format!("{}/{}", linux.cgroup_parent.trim_end_matches('/'), rec.id);
    if let Some(r) = &c.overhead {
        linux.pod_overhead = protobuf::MessageField::some(resources(r));
    }
    if let Some(r) = &c.resources {
        linux.pod_resources = protobuf::MessageField::some(resources(r));
    }
    let pins = rec.pins.clone().unwrap_or_default();
    for (kind, path) in [
        ("network", &rec.netns),
        ("ipc", &pins.ipc),
        ("uts", &pins.uts),
    ] {
        if let Some(ns) = path {
            linux.namespaces.push(api::LinuxNamespace {
                type_: kind.into(),
                path: ns.display().to_string(),
                ..Default::default()
            });
        }
    }
    api::PodSandbox {
        id: rec.id.clone(),
        name: c.name.clone(),
        uid: c.uid.clone(),
        namespace: c.namespace.clone(),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        runtime_handler: rec.runtime_handler.clone(),
        linux: protobuf::MessageField::some(linux),
        pid: rec.pid,
        ips: rec.ips.clone(),
        ..Default::default()
    }
}

/// Whether the pod counts as running for NRI (a stop is announced only for these).
pub fn pod_running(rec: &PodRecord) -> bool {
    rec.state == PodState::Ready || rec.pid != 0
}

fn state(rec: &ContainerRecord) -> api::ContainerState {
    match rec.state {
        CtrState::Created => api::ContainerState::CONTAINER_CREATED,
        CtrState::Running => api::ContainerState::CONTAINER_RUNNING,
        CtrState::Exited => api::ContainerState::CONTAINER_STOPPED,
    }
}

/// A container as plugins see it: its record, and what its OCI spec says (`spec`, the
/// spec being created, or None to read the bundle's config.json).
pub fn container(rec: &ContainerRecord, spec: Option<&Value>) -> api::Container {
    let mut c = api::Container {
        id: rec.id.clone(),
        pod_sandbox_id: rec.pod_id.clone(),
        name: rec.config.name.clone(),
        state: state(rec).into(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        pid: rec.pid,
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        status_reason: rec.reason.clone(),
        ..Default::default()
    };
    let read;
    let spec = match spec {
        Some(s) => Some(s),
        None => {
            read = std::fs::read(rec.bundle.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            read.as_ref()
        }
    };
    match spec {
        Some(s) => from_spec(&mut c, s),
        None => {
            c.args = rec
                .config
                .command
                .iter()
                .chain(&rec.config.args)
                .cloned()
                .collect();
            c.env = rec
                .config
                .envs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
        }
    }
    if let Some(p) = &rec.config.security.seccomp {
        use crate::workload::Profile;
        use api::security_profile::ProfileType;
        let (t, r) = match p {
            Profile::Unconfined => (ProfileType::UNCONFINED, ""),
            Profile::RuntimeDefault => (ProfileType::RUNTIME_DEFAULT, ""),
            Profile::Localhost(r) => (ProfileType::LOCALHOST, r.as_str()),
        };
        c.linux.mut_or_insert_default().seccomp_profile =
            protobuf::MessageField::some(api::SecurityProfile {
                profile_type: t.into(),
                localhost_ref: r.to_string(),
                ..Default::default()
            });
    }
    if let Some(u) = &rec.user {
        c.user = protobuf::MessageField::some(api::User {
            uid: u.uid,
            gid: u.gid,
            additional_gids: u.additional_gids.clone(),
            ..Default::default()
        });
    }
    c
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn hooks(v: &Value) -> Vec<api::Hook> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|h| api::Hook {
                    path: h["path"].as_str().unwrap_or_default().to_string(),
                    args: strings(&h["args"]),
                    env: strings(&h["env"]),
                    timeout: match h["timeout"].as_i64() {
                        Some(t) => protobuf::MessageField::some(api::OptionalInt {
                            value: t,
                            ..Default::default()
                        }),
                        None => protobuf::MessageField::none(),
                    },
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn opt_i64(v: &Value) -> protobuf::MessageField<api::OptionalInt64> {
    match v.as_i64() {
        Some(value) => protobuf::MessageField::some(api::OptionalInt64 {
            value,
            ..Default::default()
        }),
        None => protobuf::MessageField::none(),
    }
}

fn opt_u64(v: &Value) -> protobuf::MessageField<api::OptionalUInt64> {
    match v.as_u64() {
        Some(value) => protobuf::MessageField::some(api::OptionalUInt64 {
            value,
            ..Default::default()
        }),
        None => protobuf::MessageField::none(),
    }
}

/// An OCI `linux.resources` as NRI's.
pub fn resources_from_spec(r: &Value) -> api::LinuxResources {
    let m = &r["memory"];
    let c = &r["cpu"];
    api::LinuxResources {
        memory: protobuf::MessageField::some(api::LinuxMemory {
            limit: opt_i64(&m["limit"]),
            reservation: opt_i64(&m["reservation"]),
            swap: opt_i64(&m["swap"]),
            swappiness: opt_u64(&m["swappiness"]),
            ..Default::default()
        }),
        cpu: protobuf::MessageField::some(api::LinuxCPU {
            shares: opt_u64(&c["shares"]),
            quota: opt_i64(&c["quota"]),
            period: opt_u64(&c["period"]),
            realtime_runtime: opt_i64(&c["realtimeRuntime"]),
            realtime_period: opt_u64(&c["realtimePeriod"]),
            cpus: c["cpus"].as_str().unwrap_or_default().to_string(),
            mems: c["mems"].as_str().unwrap_or_default().to_string(),
            ..Default::default()
        }),
        hugepage_limits: r["hugepageLimits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| api::HugepageLimit {
                        page_size: h["pageSize"].as_str().unwrap_or_default().to_string(),
                        limit: h["limit"].as_u64().unwrap_or_default(),
                        ..Default::default()
                    })
                    .collect()
            })
            .unwrap_or_default(),
        unified: r["unified"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        pids: match r["pids"]["limit"].as_i64() {
            Some(limit) => protobuf::MessageField::some(api::LinuxPids {
                limit,
                ..Default::default()
            }),
            None => protobuf::MessageField::none(),
        },
        ..Default::default()
    }
}

/// Fills what a container's OCI spec says into its NRI message.
pub fn from_spec(c: &mut api::Container, s: &Value) {
    let p = &s["process"];
    c.args = strings(&p["args"]);
    c.env = strings(&p["env"]);
    if let Some(a) = s["annotations"].as_object() {
        for (k, v) in a {
            if let Some(v) = v.as_str() {
                c.annotations.insert(k.clone(), v.to_string());
            }
        }
    }
    c.mounts = s["mounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| api::Mount {
                    destination: m["destination"].as_str().unwrap_or_default().to_string(),
                    type_: m["type"].as_str().unwrap_or_default().to_string(),
                    source: m["source"].as_str().unwrap_or_default().to_string(),
                    options: strings(&m["options"]),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    let h = &s["hooks"];
    if h.is_object() {
        c.hooks = protobuf::MessageField::some(api::Hooks {
            prestart: hooks(&h["prestart"]),
            create_runtime: hooks(&h["createRuntime"]),
            create_container: hooks(&h["createContainer"]),
            start_container: hooks(&h["startContainer"]),
            poststart: hooks(&h["poststart"]),
            poststop: hooks(&h["poststop"]),
            ..Default::default()
        });
    }
    c.rlimits = p["rlimits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| api::POSIXRlimit {
                    type_: r["type"].as_str().unwrap_or_default().to_string(),
                    hard: r["hard"].as_u64().unwrap_or_default(),
                    soft: r["soft"].as_u64().unwrap_or_default(),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    let l = &s["linux"];
    let mut linux = api::LinuxContainer::new();
    linux.namespaces = l["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| api::LinuxNamespace {
                    type_: n["type"].as_str().unwrap_or_default().to_string(),
                    path: n["path"].as_str().unwrap_or_default().to_string(),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    linux.devices = l["devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| api::LinuxDevice {
                    path: d["path"].as_str().unwrap_or_default().to_string(),
                    type_: d["type"].as_str().unwrap_or_default().to_string(),
                    major: d["major"].as_i64().unwrap_or_default(),
                    minor: d["minor"].as_i64().unwrap_or_default(),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    if l["resources"].is_object() {
        linux.resources = protobuf::MessageField::some(resources_from_spec(&l["resources"]));
    }
    if let Some(v) = p["oomScoreAdj"].as_i64() {
        linux.oom_score_adj = protobuf::MessageField::some(api::OptionalInt {
            value: v,
            ..Default::default()
        });
    }
    linux.cgroups_path = l["cgroupsPath"].as_str().unwrap_or_default().to_string();
    if let Some(o) = l["sysctl"].as_object() {
        linux.sysctl = o
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
    }
    c.linux = protobuf::MessageField::some(linux);
}

/// berthd's (CRI-shaped) resources as NRI's.
pub fn resources(r: &Resources) -> api::LinuxResources {
    let i = |v: i64| {
        if v == 0 {
            protobuf::MessageField::none()
        } else {
            protobuf::MessageField::some(api::OptionalInt64 {
                value: v,
                ..Default::default()
            })
        }
    };
    let u = |v: i64| {
        if v <= 0 {
            protobuf::MessageField::none()
        } else {
            protobuf::MessageField::some(api::OptionalUInt64 {
                value: v as u64,
                ..Default::default()
            })
        }
    };
    api::LinuxResources {
        memory: protobuf::MessageField::some(api::LinuxMemory {
            limit: i(r.memory_limit_in_bytes),
            swap: i(r.memory_swap_limit_in_bytes),
            ..Default::default()
        }),
        cpu: protobuf::MessageField::some(api::LinuxCPU {
            shares: u(r.cpu_shares),
            quota: i(r.cpu_quota),
            period: u(r.cpu_period),
            cpus: r.cpuset_cpus.clone(),
            mems: r.cpuset_mems.clone(),
            ..Default::default()
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| api::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
                ..Default::default()
            })
            .collect(),
        unified: r.unified.clone(),
        ..Default::default()
    }
}

/// NRI's resources laid over berthd's: what NRI sets replaces, what it leaves unset
/// stays.
pub fn merge_resources(base: &Resources, n: &api::LinuxResources) -> Resources {
    let mut r = base.clone();
    if let Some(m) = n.memory.as_ref() {
        if let Some(v) = m.limit.as_ref() {
            r.memory_limit_in_bytes = v.value;
        }
        if let Some(v) = m.swap.as_ref() {
            r.memory_swap_limit_in_bytes = v.value;
        }
    }
    if let Some(c) = n.cpu.as_ref() {
        if let Some(v) = c.shares.as_ref() {
            r.cpu_shares = v.value as i64;
        }
        if let Some(v) = c.quota.as_ref() {
            r.cpu_quota = v.value;
        }
        if let Some(v) = c.period.as_ref() {
            r.cpu_period = v.value as i64;
        }
        if !c.cpus.is_empty() {
            r.cpuset_cpus = c.cpus.clone();
        }
        if !c.mems.is_empty() {
            r.cpuset_mems = c.mems.clone();
        }
    }
    for h in &n.hugepage_limits {
        r.hugepage_limits.retain(|x| x.page_size != h.page_size);
        r.hugepage_limits.push(crate::workload::HugepageLimit {
            page_size: h.page_size.clone(),
            limit: h.limit,
        });
    }
    for (k, v) in &n.unified {
        r.unified.insert(k.clone(), v.clone());
    }
    r
}
