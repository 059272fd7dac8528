//! A container's adjustments (NRI's `ContainerAdjustment`), applied to its OCI spec in
//! plugin order, and NRI's conflict rule: one field (an annotation key, a mount
//! destination, an env name, a device path, an rlimit type, a resource, ...) is set by
//! one plugin at most; a second plugin setting it fails the creation, naming both. A
//! removal (the key marked with a leading '-') frees the field.
//!
//! Adjustments berthd does not apply (see docs/nri.md) fail the creation rather than be
//! dropped: a plugin that asks for them relies on them.

use std::collections::HashMap;

use berth_nri::api;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Who set what, for one container's creation.
#[derive(Default)]
pub struct Owners {
    fields: HashMap<String, String>,
}

impl Owners {
    fn claim(&mut self, field: String, plugin: &str) -> Result<()> {
        match self.fields.get(&field) {
            Some(other) if other != plugin => Err(Error::FailedPrecondition(format!(
                "NRI plugins {other} and {plugin} both adjust {field}"
            ))),
            _ => {
                self.fields.insert(field, plugin.to_string());
                Ok(())
            }
        }
    }

    fn clear(&mut self, field: &str) {
        self.fields.remove(field);
    }
}

fn removal(key: &str) -> Option<&str> {
    key.strip_prefix('-')
}

fn obj<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v[key].is_object() {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("an object")
}

fn arr<'a>(v: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !v[key].is_array() {
        v[key] = json!([]);
    }
    v[key].as_array_mut().expect("an array")
}

fn unsupported(plugin: &str, what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "NRI plugin {plugin} adjusts {what}, which berthd does not apply"
    ))
}

fn hook(h: &api::Hook) -> Value {
    let mut v = json!({ "path": h.path });
    if !h.args.is_empty() {
        v["args"] = json!(h.args);
    }
    if !h.env.is_empty() {
        v["env"] = json!(h.env);
    }
    if let Some(t) = h.timeout.as_ref() {
        v["timeout"] = json!(t.value);
    }
    v
}

/// Applies one plugin's adjustment to `spec` (an OCI runtime spec as JSON).
pub fn apply(
    spec: &mut Value,
    a: &api::ContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    annotations(spec, a, plugin, owners)?;
    mounts(spec, a, plugin, owners)?;
    env(spec, a, plugin, owners)?;
    args(spec, a, plugin, owners)?;
    if let Some(h) = a.hooks.as_ref() {
        let hooks = obj(spec, "hooks");
        for (name, list) in [
            ("prestart", &h.prestart),
            ("createRuntime", &h.create_runtime),
            ("createContainer", &h.create_container),
            ("startContainer", &h.start_container),
            ("poststart", &h.poststart),
            ("poststop", &h.poststop),
        ] {
            if list.is_empty() {
                continue;
            }
            let v = hooks.entry(name).or_insert_with(|| json!([]));
            if let Some(a) = v.as_array_mut() {
                a.extend(list.iter().map(hook));
            }
        }
    }
    rlimits(spec, a, plugin, owners)?;
    if !a.CDI_devices.is_empty() {
        return Err(unsupported(plugin, "CDI devices"));
    }
    if let Some(l) = a.linux.as_ref() {
        linux(spec, l, plugin, owners)?;
    }
    Ok(())
}

fn annotations(
    spec: &mut Value,
    a: &api::ContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    if a.annotations.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<&String> = a.annotations.keys().collect();
    // Removals first: "-k" and "k" in one adjustment mean "replace k".
    keys.sort_by_key(|k| (!k.starts_with('-'), k.to_string()));
    for k in keys {
        let field = |k: &str| format!("annotation {k:?}");
        if let Some(k) = removal(k) {
            owners.clear(&field(k));
            obj(spec, "annotations").remove(k);
        } else {
            owners.claim(field(k), plugin)?;
            obj(spec, "annotations").insert(k.clone(), json!(a.annotations[k]));
        }
    }
    Ok(())
}

fn mounts(
    spec: &mut Value,
    a: &api::ContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    for m in &a.mounts {
        let field = |d: &str| format!("mount {d:?}");
        let list = arr(spec, "mounts");
        if let Some(dest) = removal(&m.destination) {
            owners.clear(&field(dest));
            list.retain(|x| x["destination"] != dest);
            continue;
        }
        if !m.destination.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "NRI plugin {plugin}: mount destination {:?} is not absolute",
                m.destination
            )));
        }
        owners.claim(field(&m.destination), plugin)?;
        list.retain(|x| x["destination"] != m.destination.as_str());
        let mut v = json!({
            "destination": m.destination,
            "type": m.type_,
            "source": m.source,
        });
        if !m.options.is_empty() {
            v["options"] = json!(m.options);
        }
        list.push(v);
    }
    Ok(())
}

fn env(
    spec: &mut Value,
    a: &api::ContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    for kv in &a.env {
        let field = |k: &str| format!("env {k:?}");
        let env = arr(obj_value(spec, "process"), "env");
        let name_of = |v: &Value| -> String {
            v.as_str()
                .unwrap_or_default()
                .split_once('=')
                .map(|(k, _)| k.to_string())
                .unwrap_or_else(|| v.as_str().unwrap_or_default().to_string())
        };
        if let Some(k) = removal(&kv.key) {
            owners.clear(&field(k));
            env.retain(|v| name_of(v) != k);
            continue;
        }
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(Error::InvalidArgument(format!(
                "NRI plugin {plugin}: env name {:?} is not valid",
                kv.key
            )));
        }
        owners.claim(field(&kv.key), plugin)?;
        let entry = json!(format!("{}={}", kv.key, kv.value));
        match env.iter_mut().find(|v| name_of(v) == kv.key) {
            Some(v) => *v = entry,
            None => env.push(entry),
        }
    }
    Ok(())
}

fn args(
    spec: &mut Value,
    a: &api::ContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    if a.args.is_empty() {
        return Ok(());
    }
    // NRI marks a replacement with a leading "" (api's UpdateArgs).
    let args: Vec<&String> = a.args.iter().skip_while(|s| s.is_empty()).collect();
    if args.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "NRI plugin {plugin}: empty args"
        )));
    }
    owners.claim("args".into(), plugin)?;
    obj(spec, "process").insert("args".into(), json!(args));
    Ok(())
}

fn rlimits(
    spec: &mut Value,
    a: &api::ContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    for r in &a.rlimits {
        if !r.type_.starts_with("RLIMIT_") {
            return Err(Error::InvalidArgument(format!(
                "NRI plugin {plugin}: rlimit type {:?} is not RLIMIT_*",
                r.type_
            )));
        }
        owners.claim(format!("rlimit {}", r.type_), plugin)?;
        let process = obj(spec, "process");
        let list = process.entry("rlimits").or_insert(json!([]));
        let list = list.as_array_mut().expect("rlimits is an array");
        list.retain(|x| x["type"] != r.type_.as_str());
        list.push(json!({ "type": r.type_, "hard": r.hard, "soft": r.soft }));
    }
    Ok(())
}

fn linux(
    spec: &mut Value,
    l: &api::LinuxContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    for d in &l.devices {
        let field = |p: &str| format!("device {p:?}");
        if let Some(p) = removal(&d.path) {
            owners.clear(&field(p));
            arr(obj_value(spec, "linux"), "devices").retain(|x| x["path"] != p);
            continue;
        }
        owners.claim(field(&d.path), plugin)?;
        let mut dev = json!({
            "path": d.path, "type": d.type_, "major": d.major, "minor": d.minor,
        });
        if let Some(m) = d.file_mode.as_ref() {
            dev["fileMode"] = json!(m.value);
        }
        if let Some(u) = d.uid.as_ref() {
            dev["uid"] = json!(u.value);
        }
        if let Some(g) = d.gid.as_ref() {
            dev["gid"] = json!(g.value);
        }
        let linux = obj(spec, "linux");
        let list = linux.entry("devices").or_insert(json!([]));
        if let Some(list) = list.as_array_mut() {
            list.retain(|x| x["path"] != d.path.as_str());
            list.push(dev);
        }
        // The device is usable too: a cgroup rule allowing it.
        let res = linux.entry("resources").or_insert(json!({}));
        let rules = res
            .as_object_mut()
            .expect("resources is an object")
            .entry("devices")
            .or_insert(json!([]));
        if let Some(rules) = rules.as_array_mut() {
            rules.push(json!({
                "allow": true, "type": d.type_, "major": d.major, "minor": d.minor, "access": "rwm",
            }));
        }
    }
    if let Some(r) = l.resources.as_ref() {
        resources(spec, r, plugin, owners)?;
    }
    if !l.cgroups_path.is_empty() {
        owners.claim("cgroups path".into(), plugin)?;
        obj(spec, "linux").insert("cgroupsPath".into(), json!(l.cgroups_path));
    }
    if let Some(o) = l.oom_score_adj.as_ref() {
        owners.claim("OOM score adjustment".into(), plugin)?;
        obj(spec, "process").insert("oomScoreAdj".into(), json!(o.value));
    }
    if let Some(p) = l.io_priority.as_ref() {
        owners.claim("I/O priority".into(), plugin)?;
        let class = match p.class.enum_value_or_default() {
            api::IOPrioClass::IOPRIO_CLASS_RT => "IOPRIO_CLASS_RT",
            api::IOPrioClass::IOPRIO_CLASS_BE => "IOPRIO_CLASS_BE",
            api::IOPrioClass::IOPRIO_CLASS_IDLE => "IOPRIO_CLASS_IDLE",
            api::IOPrioClass::IOPRIO_CLASS_NONE => {
                obj(spec, "process").remove("ioPriority");
                ""
            }
        };
        if !class.is_empty() {
            obj(spec, "process").insert(
                "ioPriority".into(),
                json!({ "class": class, "priority": p.priority }),
            );
        }
    }
    for n in &l.namespaces {
        let field = |t: &str| format!("namespace {t:?}");
        let linux = obj(spec, "linux");
        let list = linux.entry("namespaces").or_insert(json!([]));
        let Some(list) = list.as_array_mut() else {
            continue;
        };
        if let Some(t) = removal(&n.type_) {
            owners.clear(&field(t));
            list.retain(|x| x["type"] != t);
            continue;
        }
        owners.claim(field(&n.type_), plugin)?;
        list.retain(|x| x["type"] != n.type_.as_str());
        let mut v = json!({ "type": n.type_ });
        if !n.path.is_empty() {
            v["path"] = json!(n.path);
        }
        list.push(v);
    }
    let mut keys: Vec<&String> = l.sysctl.keys().collect();
    keys.sort_by_key(|k| (!k.starts_with('-'), k.to_string()));
    for k in keys {
        let field = |k: &str| format!("sysctl {k:?}");
        let sysctl = obj(obj_value(spec, "linux"), "sysctl");
        if let Some(k) = removal(k) {
            owners.clear(&field(k));
            sysctl.remove(k);
        } else {
            owners.claim(field(k), plugin)?;
            sysctl.insert(k.clone(), json!(l.sysctl[k]));
        }
    }
    if l.seccomp_policy.is_some() {
        return Err(unsupported(plugin, "the seccomp policy"));
    }
    if !l.net_devices.is_empty() {
        return Err(unsupported(plugin, "network devices"));
    }
    if l.scheduler.is_some() {
        return Err(unsupported(plugin, "the scheduling policy"));
    }
    if l.rdt.is_some() {
        return Err(unsupported(plugin, "RDT"));
    }
    if l.memory_policy.is_some() {
        return Err(unsupported(plugin, "the memory policy"));
    }
    Ok(())
}

fn obj_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    obj(v, key);
    &mut v[key]
}

fn resources(
    spec: &mut Value,
    r: &api::LinuxResources,
    plugin: &str,
    owners: &mut Owners,
) -> Result<()> {
    let res = obj_value(obj_value(spec, "linux"), "resources");
    let mut set = |section: &str, key: &str, what: &str, v: Value| -> Result<()> {
        owners.claim(what.to_string(), plugin)?;
        obj(res, section).insert(key.into(), v);
        Ok(())
    };
    if let Some(m) = r.memory.as_ref() {
        if let Some(v) = m.limit.as_ref() {
            set("memory", "limit", "memory limit", json!(v.value))?;
        }
        if let Some(v) = m.reservation.as_ref() {
            set(
                "memory",
                "reservation",
                "memory reservation",
                json!(v.value),
            )?;
        }
        if let Some(v) = m.swap.as_ref() {
            set("memory", "swap", "memory swap limit", json!(v.value))?;
        }
        if let Some(v) = m.swappiness.as_ref() {
            set("memory", "swappiness", "memory swappiness", json!(v.value))?;
        }
        if let Some(v) = m.disable_oom_killer.as_ref() {
            set(
                "memory",
                "disableOOMKiller",
                "memory OOM killer",
                json!(v.value),
            )?;
        }
        if m.kernel.is_some() || m.kernel_tcp.is_some() {
            return Err(unsupported(plugin, "kernel memory limits"));
        }
    }
    if let Some(c) = r.cpu.as_ref() {
        if let Some(v) = c.shares.as_ref() {
            set("cpu", "shares", "CPU shares", json!(v.value))?;
        }
        if let Some(v) = c.quota.as_ref() {
            set("cpu", "quota", "CPU quota", json!(v.value))?;
        }
        if let Some(v) = c.period.as_ref() {
            set("cpu", "period", "CPU period", json!(v.value))?;
        }
        if let Some(v) = c.realtime_runtime.as_ref() {
            set(
                "cpu",
                "realtimeRuntime",
                "CPU realtime runtime",
                json!(v.value),
            )?;
        }
        if let Some(v) = c.realtime_period.as_ref() {
            set(
                "cpu",
                "realtimePeriod",
                "CPU realtime period",
                json!(v.value),
            )?;
        }
        if !c.cpus.is_empty() {
            set("cpu", "cpus", "cpuset CPUs", json!(c.cpus))?;
        }
        if !c.mems.is_empty() {
            set("cpu", "mems", "cpuset memory nodes", json!(c.mems))?;
        }
    }
    if let Some(p) = r.pids.as_ref() {
        set("pids", "limit", "pids limit", json!(p.limit))?;
    }
    for h in &r.hugepage_limits {
        owners.claim(format!("hugepage limit {:?}", h.page_size), plugin)?;
        let list = res
            .as_object_mut()
            .expect("resources is an object")
            .entry("hugepageLimits")
            .or_insert(json!([]));
        if let Some(list) = list.as_array_mut() {
            list.retain(|x| x["pageSize"] != h.page_size.as_str());
            list.push(json!({ "pageSize": h.page_size, "limit": h.limit }));
        }
    }
    for (k, v) in &r.unified {
        owners.claim(format!("cgroup v2 {k:?}"), plugin)?;
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
        let rules = res
            .as_object_mut()
            .expect("resources is an object")
            .entry("devices")
            .or_insert(json!([]));
        if let Some(rules) = rules.as_array_mut() {
            rules.push(rule);
        }
    }
    if r.blockio_class.is_some() {
        return Err(unsupported(plugin, "the block I/O class"));
    }
    if r.rdt_class.is_some() {
        return Err(unsupported(plugin, "the RDT class"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
