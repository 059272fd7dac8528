//! Runtime options: `containerd.runc.v1.Options`, `runtimeoptions.v1.Options` (TOML body or
//! path) or none; persisted as `options.json` + `runtime` in the bundle for `delete`.

use std::path::Path;

use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::Message;
use berth_proto::runtimeoptions;
use berth_proto::shim::oci;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default runc state root, as the Go shim uses it.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";

/// The options the shim acts on. Serialized with protobuf snake_case names and
/// omitempty, which is the `options.json` format the Go shim writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuncOptions {
    #[serde(skip_serializing_if = "is_false")]
    pub no_pivot_root: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub no_new_keyring: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub shim_cgroup: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub io_uid: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub io_gid: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub binary_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub criu_path: String,
    #[serde(skip_serializing_if = "is_false")]
    pub systemd_cgroup: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub criu_image_path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub criu_work_path: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The TOML form containerd's CRI config uses: Go field names of the runc options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct TomlOptions {
    no_pivot_root: bool,
    no_new_keyring: bool,
    shim_cgroup: String,
    io_uid: u32,
    io_gid: u32,
    binary_name: String,
    root: String,
    criu_path: String,
    systemd_cgroup: bool,
    criu_image_path: String,
    criu_work_path: String,
}

impl RuncOptions {
    /// Decodes whatever options containerd sent. Unknown types fall back to defaults,
    /// as the Go shim does.
    pub fn from_any(any: Option<&Any>) -> Result<RuncOptions> {
        let Some(any) = any else {
            return Ok(RuncOptions::default());
        };
        let url = any.type_url.as_str();
        if url.is_empty() {
            return Ok(RuncOptions::default());
        }
        if url.ends_with("containerd.runc.v1.Options") {
            let o = oci::Options::parse_from_bytes(&any.value)
                .map_err(|e| Error::proto("decode containerd.runc.v1.Options", e))?;
            return Ok(RuncOptions {
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                shim_cgroup: o.shim_cgroup,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                binary_name: o.binary_name,
                root: o.root,
                criu_path: String::new(),
                systemd_cgroup: o.systemd_cgroup,
                criu_image_path: o.criu_image_path,
                criu_work_path: o.criu_work_path,
            });
        }
        if url.ends_with("runtimeoptions.v1.Options") {
            let o = runtimeoptions::Options::parse_from_bytes(&any.value)
                .map_err(|e| Error::proto("decode runtimeoptions.v1.Options", e))?;
            let body = if !o.config_body.is_empty() {
                String::from_utf8(o.config_body).map_err(|_| {
                    Error::InvalidArgument("runtime options body is not UTF-8".into())
                })?
            } else if !o.config_path.is_empty() {
                std::fs::read_to_string(&o.config_path)
                    .map_err(|e| Error::io(format!("read runtime options {}", o.config_path), e))?
            } else {
                return Ok(RuncOptions::default());
            };
            return Self::from_toml(&body);
        }
        tracing::warn!(
            type_url = url,
            "unknown runtime options type, using defaults"
        );
        Ok(RuncOptions::default())
    }

    /// Parses the TOML body of a CRI runtime `options` table.
    pub fn from_toml(body: &str) -> Result<RuncOptions> {
        let t: TomlOptions = toml::from_str(body)
            .map_err(|e| Error::InvalidArgument(format!("runtime options TOML: {e}")))?;
        Ok(RuncOptions {
            no_pivot_root: t.no_pivot_root,
            no_new_keyring: t.no_new_keyring,
            shim_cgroup: t.shim_cgroup,
            io_uid: t.io_uid,
            io_gid: t.io_gid,
            binary_name: t.binary_name,
            root: t.root,
            criu_path: t.criu_path,
            systemd_cgroup: t.systemd_cgroup,
            criu_image_path: t.criu_image_path,
            criu_work_path: t.criu_work_path,
        })
    }

    /// The runtime binary to run (`runc` when unset).
    pub fn binary(&self) -> &str {
        if self.binary_name.is_empty() {
            "runc"
        } else {
            &self.binary_name
        }
    }

    /// The runtime's state root for a namespace: `<root or /run/containerd/runc>/<ns>`.
    pub fn runtime_root(&self, namespace: &str) -> String {
        let root = if self.root.is_empty() {
            DEFAULT_RUNC_ROOT
        } else {
            &self.root
        };
        format!("{}/{}", root.trim_end_matches('/'), namespace)
    }

    /// Persists `options.json` and `runtime` for the `delete` action.
    pub fn persist(&self, bundle: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| Error::json("encode options.json", e))?;
        crate::socket::write_atomic(bundle, "options.json", &json)?;
        crate::socket::write_atomic(bundle, "runtime", self.binary_name.as_bytes())
    }

    /// Reads what [`persist`](Self::persist) wrote; missing files mean defaults.
    pub fn load(bundle: &Path) -> RuncOptions {
        let mut o: RuncOptions = std::fs::read(bundle.join("options.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Ok(rt) = std::fs::read_to_string(bundle.join("runtime")) {
            o.binary_name = rt.trim().to_string();
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(url: &str, m: &dyn Fn() -> Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = m();
        a
    }

    #[test]
    fn runc_options_decode() {
        let mut o = oci::Options::new();
        o.binary_name = "crun".into();
        o.root = "/run/x".into();
        o.systemd_cgroup = true;
        o.io_uid = 7;
        let a = any("containerd.runc.v1.Options", &|| {
            o.write_to_bytes().unwrap()
        });
        let r = RuncOptions::from_any(Some(&a)).unwrap();
        assert_eq!(r.binary(), "crun");
        assert_eq!(r.runtime_root("k8s.io"), "/run/x/k8s.io");
        assert!(r.systemd_cgroup);
        assert_eq!(r.io_uid, 7);
        // The typeurl prefix form is accepted too.
        let a2 = any("type.googleapis.com/containerd.runc.v1.Options", &|| {
            o.write_to_bytes().unwrap()
        });
        assert_eq!(RuncOptions::from_any(Some(&a2)).unwrap(), r);
    }

    #[test]
    fn runtimeoptions_body_and_path() {
        let mut o = runtimeoptions::Options::new();
        o.config_body =
            b"BinaryName = \"crun\"\nSystemdCgroup = false\nNoPivotRoot = true\n".to_vec();
        let a = any("runtimeoptions.v1.Options", &|| o.write_to_bytes().unwrap());
        let r = RuncOptions::from_any(Some(&a)).unwrap();
        assert_eq!(r.binary_name, "crun");
        assert!(r.no_pivot_root);

        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rt.toml");
        std::fs::write(&p, "Root = \"/run/y\"\n").unwrap();
        let mut o = runtimeoptions::Options::new();
        o.config_path = p.display().to_string();
        let a = any("runtimeoptions.v1.Options", &|| o.write_to_bytes().unwrap());
        assert_eq!(RuncOptions::from_any(Some(&a)).unwrap().root, "/run/y");
    }

    #[test]
    fn none_and_unknown_give_defaults() {
        assert_eq!(RuncOptions::from_any(None).unwrap(), RuncOptions::default());
        let a = any("example.com/Other", &|| vec![1, 2, 3]);
        assert_eq!(RuncOptions::from_any(Some(&a)).unwrap().binary(), "runc");
    }

    #[test]
    fn bad_toml_is_invalid_argument() {
        assert!(matches!(
            RuncOptions::from_toml("BinaryName = ["),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn persist_round_trip_uses_go_json_names() {
        let d = tempfile::tempdir().unwrap();
        let r = RuncOptions {
            binary_name: "runc".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        r.persist(d.path()).unwrap();
        let json = std::fs::read_to_string(d.path().join("options.json")).unwrap();
        assert_eq!(json, r#"{"binary_name":"runc","systemd_cgroup":true}"#);
        assert_eq!(
            std::fs::read_to_string(d.path().join("runtime")).unwrap(),
            "runc"
        );
        assert_eq!(RuncOptions::load(d.path()), r);
        assert_eq!(
            RuncOptions::load(&d.path().join("missing")).binary(),
            "runc"
        );
    }
}
