//! A CDI `containerEdits` (env, device nodes, mounts, hooks, additional GIDs) and how it
//! changes a container's OCI spec, as CDI's `ContainerEdits.Apply` does. A device
//! node's missing type and numbers are read from the host's node.

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Edits {
    env: Vec<String>,
    device_nodes: Vec<DeviceNode>,
    mounts: Vec<Mount>,
    hooks: Vec<Hook>,
    #[serde(rename = "additionalGIDs")]
    additional_gids: Vec<u32>,
    intel_rdt: Option<Value>,
    net_devices: Vec<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct DeviceNode {
    path: String,
    host_path: String,
    #[serde(rename = "type")]
    type_: String,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: String,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Mount {
    host_path: String,
    container_path: String,
    #[serde(rename = "type")]
    type_: String,
    options: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Hook {
    hook_name: String,
    path: String,
    args: Vec<String>,
    env: Vec<String>,
    timeout: Option<i64>,
}

const HOOKS: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

fn arr<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Vec<Value> {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let want_array = last;
        let ok = if want_array {
            cur[*k].is_array()
        } else {
            cur[*k].is_object()
        };
        if !ok {
            cur[*k] = if want_array { json!([]) } else { json!({}) };
        }
        cur = &mut cur[*k];
    }
    cur.as_array_mut().expect("an array")
}

/// A device node's type, major and minor from the host's node at `path`.
fn host_node(path: &str) -> Result<(String, i64, i64), String> {
    use nix::sys::stat::{major, minor, stat, SFlag};
    let st = stat(path).map_err(|e| format!("device node {path}: {e}"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let t = if kind == SFlag::S_IFCHR {
        "c"
    } else if kind == SFlag::S_IFBLK {
        "b"
    } else {
        return Err(format!("{path} is not a device node"));
    };
    Ok((t.into(), major(st.st_rdev) as i64, minor(st.st_rdev) as i64))
}

impl Edits {
    pub fn append(&mut self, o: &Edits) {
        self.env.extend(o.env.iter().cloned());
        self.device_nodes.extend(o.device_nodes.iter().cloned());
        self.mounts.extend(o.mounts.iter().cloned());
        self.hooks.extend(o.hooks.iter().cloned());
        self.additional_gids
            .extend(o.additional_gids.iter().copied());
        if o.intel_rdt.is_some() {
            self.intel_rdt = o.intel_rdt.clone();
        }
        self.net_devices.extend(o.net_devices.iter().cloned());
    }

    /// Applies the edits to `spec` (an OCI runtime spec as JSON).
    pub fn apply(&self, spec: &mut Value) -> Result<(), String> {
        if self.intel_rdt.is_some() {
            return Err("Intel RDT edits need RDT hardware, which berthd does not manage".into());
        }
        if !self.net_devices.is_empty() {
            return Err("network device edits need runtime-spec 1.2 (runc 1.2)".into());
        }
        for kv in &self.env {
            let Some((k, _)) = kv.split_once('=') else {
                return Err(format!("env {kv:?} is not NAME=VALUE"));
            };
            let env = arr(spec, &["process", "env"]);
            let name_of = |v: &Value| {
                v.as_str()
                    .and_then(|s| s.split_once('='))
                    .map(|(n, _)| n.to_string())
            };
            match env.iter_mut().find(|v| name_of(v).as_deref() == Some(k)) {
                Some(v) => *v = json!(kv),
                None => env.push(json!(kv)),
            }
        }
        for d in &self.device_nodes {
            if !d.path.starts_with('/') {
                return Err(format!("device node path {:?} is not absolute", d.path));
            }
            let host = if d.host_path.is_empty() {
                &d.path
            } else {
                &d.host_path
            };
            let (t, major, minor) = match (d.type_.as_str(), d.major, d.minor) {
                ("p", _, _) => ("p".to_string(), 0, 0),
                (t @ ("c" | "b" | "u"), Some(ma), Some(mi)) => (t.to_string(), ma, mi),
                _ => host_node(host)?,
            };
            let mut node = json!({ "path": d.path, "type": t, "major": major, "minor": minor });
            if let Some(m) = d.file_mode {
                node["fileMode"] = json!(m);
            }
            if let Some(u) = d.uid {
                node["uid"] = json!(u);
            }
            if let Some(g) = d.gid {
                node["gid"] = json!(g);
            }
            let devices = arr(spec, &["linux", "devices"]);
            devices.retain(|x| x["path"] != d.path.as_str());
            devices.push(node);
            if t != "p" {
                let access = if d.permissions.is_empty() {
                    "rwm"
                } else {
                    d.permissions.as_str()
                };
                let rule_type = if t == "u" { "c" } else { t.as_str() };
                arr(spec, &["linux", "resources", "devices"]).push(json!({
                    "allow": true, "type": rule_type, "major": major, "minor": minor,
                    "access": access,
                }));
            }
        }
        for m in &self.mounts {
            if !m.container_path.starts_with('/') {
                return Err(format!("mount path {:?} is not absolute", m.container_path));
            }
            let mut options = m.options.clone();
            let t = if m.type_.is_empty() { "bind" } else { &m.type_ };
            if t == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
                options.push("bind".into());
            }
            let mounts = arr(spec, &["mounts"]);
            mounts.retain(|x| x["destination"] != m.container_path.as_str());
            mounts.push(json!({
                "destination": m.container_path, "source": m.host_path, "type": t,
                "options": options,
            }));
        }
        for h in &self.hooks {
            if !HOOKS.contains(&h.hook_name.as_str()) {
                return Err(format!("unknown hook {:?}", h.hook_name));
            }
            let mut v = json!({ "path": h.path });
            if !h.args.is_empty() {
                v["args"] = json!(h.args);
            }
            if !h.env.is_empty() {
                v["env"] = json!(h.env);
            }
            if let Some(t) = h.timeout {
                v["timeout"] = json!(t);
            }
            arr(spec, &["hooks", h.hook_name.as_str()]).push(v);
        }
        for g in &self.additional_gids {
            if *g == 0 {
                continue;
            }
            let gids = arr(spec, &["process", "user", "additionalGids"]);
            if !gids.iter().any(|x| x == g) {
                gids.push(json!(g));
            }
        }
        Ok(())
    }
}
