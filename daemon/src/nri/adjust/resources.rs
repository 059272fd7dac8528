//! A plugin's adjustment of the container's cgroup resources (`linux.resources` of the
//! OCI spec). The single-valued knobs are one table: where each goes in the spec, the
//! NRI field that owns it, and how it is read from NRI's message.

use berth_nri::api::{self, Field};
use serde_json::{json, Value};

use super::{obj, obj_value, unsupported, Owners};
use crate::error::Result;

/// One single-valued resource: its place in the spec's `linux.resources`
/// (`section.key`), its NRI field, and its value in an adjustment, if set.
struct Knob {
    section: &'static str,
    key: &'static str,
    field: Field,
    get: fn(&api::LinuxResources) -> Option<Value>,
}

fn mem(r: &api::LinuxResources) -> Option<&api::LinuxMemory> {
    r.memory.as_ref()
}

fn cpu(r: &api::LinuxResources) -> Option<&api::LinuxCPU> {
    r.cpu.as_ref()
}

fn text(s: &str) -> Option<Value> {
    (!s.is_empty()).then(|| json!(s))
}

const KNOBS: &[Knob] = &[
    Knob {
        section: "memory",
        key: "limit",
        field: Field::MemLimit,
        get: |r| Some(json!(mem(r)?.limit.as_ref()?.value)),
    },
    Knob {
        section: "memory",
        key: "reservation",
        field: Field::MemReservation,
        get: |r| Some(json!(mem(r)?.reservation.as_ref()?.value)),
    },
    Knob {
        section: "memory",
        key: "swap",
        field: Field::MemSwapLimit,
        get: |r| Some(json!(mem(r)?.swap.as_ref()?.value)),
    },
    Knob {
        section: "memory",
        key: "swappiness",
        field: Field::MemSwappiness,
        get: |r| Some(json!(mem(r)?.swappiness.as_ref()?.value)),
    },
    Knob {
        section: "memory",
        key: "disableOOMKiller",
        field: Field::MemDisableOomKiller,
        get: |r| Some(json!(mem(r)?.disable_oom_killer.as_ref()?.value)),
    },
    Knob {
        section: "cpu",
        key: "shares",
        field: Field::CPUShares,
        get: |r| Some(json!(cpu(r)?.shares.as_ref()?.value)),
    },
    Knob {
        section: "cpu",
        key: "quota",
        field: Field::CPUQuota,
        get: |r| Some(json!(cpu(r)?.quota.as_ref()?.value)),
    },
    Knob {
        section: "cpu",
        key: "period",
        field: Field::CPUPeriod,
        get: |r| Some(json!(cpu(r)?.period.as_ref()?.value)),
    },
    Knob {
        section: "cpu",
        key: "realtimeRuntime",
        field: Field::CPURealtimeRuntime,
        get: |r| Some(json!(cpu(r)?.realtime_runtime.as_ref()?.value)),
    },
    Knob {
        section: "cpu",
        key: "realtimePeriod",
        field: Field::CPURealtimePeriod,
        get: |r| Some(json!(cpu(r)?.realtime_period.as_ref()?.value)),
    },
    Knob {
        section: "cpu",
        key: "cpus",
        field: Field::CPUSetCPUs,
        get: |r| text(&cpu(r)?.cpus),
    },
    Knob {
        section: "cpu",
        key: "mems",
        field: Field::CPUSetMems,
        get: |r| text(&cpu(r)?.mems),
    },
    Knob {
        section: "pids",
        key: "limit",
        field: Field::PidsLimit,
        get: |r| Some(json!(r.pids.as_ref()?.limit)),
    },
];

/// Applies one plugin's resources to `spec` (an OCI runtime spec as JSON).
pub fn apply(
    spec: &mut Value,
    r: &api::LinuxResources,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    if mem(r).is_some_and(|m| m.kernel.is_some() || m.kernel_tcp.is_some()) {
        return Err(unsupported(plugin, "kernel memory limits"));
    }
    let res = obj_value(obj_value(spec, "linux"), "resources");
    for k in KNOBS {
        if let Some(v) = (k.get)(r) {
            owners.claim(k.field, "", plugin)?;
            obj(res, k.section).insert(k.key.into(), v);
        }
    }
    for h in &r.hugepage_limits {
        owners.claim(Field::HugepageLimits, &h.page_size, plugin)?;
        let list = super::arr(res, "hugepageLimits");
        list.retain(|x| x["pageSize"] != h.page_size.as_str());
        list.push(json!({ "pageSize": h.page_size, "limit": h.limit }));
    }
    for (k, v) in &r.unified {
        owners.claim(Field::CgroupsUnified, k, plugin)?;
        obj(res, "unified").insert(k.clone(), json!(v));
    }
    for d in &r.devices {
        let mut rule = json!({ "allow": d.allow, "access": d.access });
        if !d.type_.is_empty() {
            rule["type"] = json!(d.type_);
        }
        if let Some(m) = d.major.as_ref() {
            rule["major"] = json!(m.value);
        }
        if let Some(m) = d.minor.as_ref() {
            rule["minor"] = json!(m.value);
        }
        super::arr(res, "devices").push(rule);
    }
    if r.blockio_class.is_some() {
        return Err(unsupported(plugin, "the block I/O class"));
    }
    if r.rdt_class.is_some() {
        return Err(unsupported(plugin, "the RDT class"));
    }
    Ok(())
}
