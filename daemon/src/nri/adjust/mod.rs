//! A container's adjustments (NRI's `ContainerAdjustment`), applied to its OCI spec in
//! plugin order, and NRI's conflict rule: one field (an annotation key, a mount
//! destination, an env name, a device path, an rlimit type, a resource, ...) is set by
//! one plugin at most; a second plugin setting it fails the creation, naming both. A
//! removal (the key marked with a leading '-') frees the field. Who set what is
//! `owners`' (also shown to validators); the cgroup resources are `resources`'.
//!
//! Adjustments berthd or its OCI runtime does not apply (see docs/nri.md) fail the
//! creation rather than be dropped: a plugin that asks for them relies on them.

mod owners;
mod resources;

use berth_nri::api::{self, Field};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

pub use owners::Owners;

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

/// What the OCI runtime honours of the adjustments beyond runtime-spec 1.0 (runc
/// 1.1.5, Debian 12's, implements 1.0.2 and drops what it does not know).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    /// `process.ioPriority` (runtime-spec 1.2, runc 1.2).
    pub io_priority: bool,
}

/// Adds one plugin's adjustment to the merged adjustment of all plugins (what
/// validators are shown): protobuf's merge, lists appended, maps and values overlaid.
pub fn merge(merged: &mut api::ContainerAdjustment, a: &api::ContainerAdjustment) {
    use protobuf::Message;
    if let Ok(bytes) = a.write_to_bytes() {
        // The bytes were just written from a message of this type.
        let _ = merged.merge_from_bytes(&bytes);
    }
}

/// Applies one plugin's adjustment to `spec` (an OCI runtime spec as JSON).
pub fn apply(
    spec: &mut Value,
    a: &api::ContainerAdjustment,
    plugin: &str,
    owners: &mut Owners,
    caps: Caps,
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
            owners.accumulate(Field::OciHooks, plugin);
            let v = hooks.entry(name).or_insert_with(|| json!([]));
            if let Some(a) = v.as_array_mut() {
                a.extend(list.iter().map(hook));
            }
        }
    }
    rlimits(spec, a, plugin, owners)?;
    // Resolved (from the CDI spec dirs) once every plugin has answered.
    for d in &a.CDI_devices {
        owners.claim(Field::CdiDevices, &d.name, plugin)?;
    }
    if let Some(l) = a.linux.as_ref() {
        linux(spec, l, plugin, owners, caps)?;
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
        if let Some(k) = removal(k) {
            owners.clear(Field::Annotations, k);
            obj(spec, "annotations").remove(k);
        } else {
            owners.claim(Field::Annotations, k, plugin)?;
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
        let list = arr(spec, "mounts");
        if let Some(dest) = removal(&m.destination) {
            owners.clear(Field::Mounts, dest);
            list.retain(|x| x["destination"] != dest);
            continue;
        }
        if !m.destination.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "NRI plugin {plugin}: mount destination {:?} is not absolute",
                m.destination
            )));
        }
        owners.claim(Field::Mounts, &m.destination, plugin)?;
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
        let env = arr(obj_value(spec, "process"), "env");
        let name_of = |v: &Value| -> String {
            v.as_str()
                .unwrap_or_default()
                .split_once('=')
                .map(|(k, _)| k.to_string())
                .unwrap_or_else(|| v.as_str().unwrap_or_default().to_string())
        };
        if let Some(k) = removal(&kv.key) {
            owners.clear(Field::Env, k);
            env.retain(|v| name_of(v) != k);
            continue;
        }
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(Error::InvalidArgument(format!(
                "NRI plugin {plugin}: env name {:?} is not valid",
                kv.key
            )));
        }
        owners.claim(Field::Env, &kv.key, plugin)?;
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
    owners.claim(Field::Args, "", plugin)?;
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
        owners.claim(Field::Rlimits, &r.type_, plugin)?;
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
    caps: Caps,
) -> Result<()> {
    for d in &l.devices {
        if let Some(p) = removal(&d.path) {
            owners.clear(Field::Devices, p);
            arr(obj_value(spec, "linux"), "devices").retain(|x| x["path"] != p);
            continue;
        }
        owners.claim(Field::Devices, &d.path, plugin)?;
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
        resources::apply(spec, r, plugin, owners)?;
    }
    if !l.cgroups_path.is_empty() {
        owners.claim(Field::CgroupsPath, "", plugin)?;
        obj(spec, "linux").insert("cgroupsPath".into(), json!(l.cgroups_path));
    }
    if let Some(o) = l.oom_score_adj.as_ref() {
        owners.claim(Field::OomScoreAdj, "", plugin)?;
        obj(spec, "process").insert("oomScoreAdj".into(), json!(o.value));
    }
    if let Some(p) = l.io_priority.as_ref() {
        if !caps.io_priority {
            return Err(Error::FailedPrecondition(format!(
                "NRI plugin {plugin} adjusts the I/O priority, which the OCI runtime does \
                 not apply (it implements no runtime-spec 1.2)"
            )));
        }
        owners.claim(Field::IoPriority, "", plugin)?;
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
        let linux = obj(spec, "linux");
        let list = linux.entry("namespaces").or_insert(json!([]));
        let Some(list) = list.as_array_mut() else {
            continue;
        };
        if let Some(t) = removal(&n.type_) {
            owners.clear(Field::Namespace, t);
            list.retain(|x| x["type"] != t);
            continue;
        }
        owners.claim(Field::Namespace, &n.type_, plugin)?;
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
        let sysctl = obj(obj_value(spec, "linux"), "sysctl");
        if let Some(k) = removal(k) {
            owners.clear(Field::Sysctl, k);
            sysctl.remove(k);
        } else {
            owners.claim(Field::Sysctl, k, plugin)?;
            sysctl.insert(k.clone(), json!(l.sysctl[k]));
        }
    }
    if let Some(p) = l.seccomp_policy.as_ref() {
        owners.claim(Field::SeccompPolicy, "", plugin)?;
        obj(spec, "linux").insert("seccomp".into(), seccomp(p));
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

/// NRI's `LinuxSeccomp` as the OCI spec's `linux.seccomp` (NRI's `ToOCILinuxSeccomp`):
/// the whole policy is replaced.
fn seccomp(p: &api::LinuxSeccomp) -> Value {
    let mut v = json!({ "defaultAction": p.default_action });
    if let Some(e) = p.default_errno.as_ref() {
        v["defaultErrnoRet"] = json!(e.value);
    }
    if !p.architectures.is_empty() {
        v["architectures"] = json!(p.architectures);
    }
    if !p.flags.is_empty() {
        v["flags"] = json!(p.flags);
    }
    if !p.listener_path.is_empty() {
        v["listenerPath"] = json!(p.listener_path);
    }
    if !p.listener_metadata.is_empty() {
        v["listenerMetadata"] = json!(p.listener_metadata);
    }
    let syscalls: Vec<Value> = p
        .syscalls
        .iter()
        .map(|s| {
            let mut c = json!({ "names": s.names, "action": s.action });
            if let Some(e) = s.errno_ret.as_ref() {
                c["errnoRet"] = json!(e.value);
            }
            if !s.args.is_empty() {
                c["args"] = s
                    .args
                    .iter()
                    .map(|a| {
                        json!({ "index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op })
                    })
                    .collect();
            }
            c
        })
        .collect();
    if !syscalls.is_empty() {
        v["syscalls"] = json!(syscalls);
    }
    v
}

fn obj_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    obj(v, key);
    &mut v[key]
}

#[cfg(test)]
mod tests;
