//! berthd's configuration: one TOML file whose defaults are embedded in the binary
//! (`default-config.toml`); a user file only overrides the keys it names, and flags
//! override both.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The embedded defaults, printed by `berthd config default`.
pub const DEFAULT_TOML: &str = include_str!("default-config.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub paths: Paths,
    pub runtime: Runtime,
    pub cni: Cni,
    pub registry: Registry,
    pub streaming: Streaming,
    pub log: Log,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub socket: PathBuf,
    pub socket_group: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    pub root: PathBuf,
    pub state: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub shim: String,
    pub binary: String,
    pub cgroup_driver: CgroupDriver,
    pub cgroup_parent: String,
    pub sandbox_image: String,
}

/// How the OCI runtime names and creates cgroups: paths under cgroupfs, or systemd
/// slices and scopes (`slice:prefix:name`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    pub fn is_systemd(self) -> bool {
        self == CgroupDriver::Systemd
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Hosts (`host[:port]`) spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    /// Hosts whose TLS certificate is not verified.
    pub skip_verify: Vec<String>,
    /// Registry host → mirror endpoints (`http[s]://host[:port]`), tried in order before
    /// the registry itself; the repository path is kept.
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// Seconds a registry has to answer: each token, manifest or index request must be
    /// whole within it, each blob must bring 16 KiB per period of it (`image::pull`).
    pub timeout: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Streaming {
    /// Address the exec/attach/port-forward server listens on.
    pub address: String,
    /// Its port (0: any free port).
    pub port: u16,
    /// PEM certificate (chain) and PKCS #8 PEM key: both set = the server speaks TLS only
    /// and hands out https:// URLs.
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    /// Seconds a client has to send its whole request head (slowloris bound).
    pub header_read_timeout: u64,
    /// Seconds a session's streams (and both halves of a port-forward pair) have to open.
    pub stream_creation_timeout: u64,
    /// Seconds without a frame either way after which a session is closed.
    pub stream_idle_timeout: u64,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

/// Recursively lays `over` on top of `base` (tables merge, everything else replaces).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// The defaults with `text` (a user config file's contents) laid over them.
    pub fn from_toml(text: &str) -> Result<Config> {
        let mut base: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| Error::Config(format!("embedded defaults: {e}")))?;
        let over: toml::Table = text.parse().map_err(|e| Error::Config(format!("{e}")))?;
        merge(&mut base, over);
        let cfg: Config = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads `path`; a missing file at the default location means "all defaults".
    pub fn load(path: Option<&Path>) -> Result<Config> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("read {}: {e}", p.display())))?;
                Config::from_toml(&text)
            }
            None => match std::fs::read_to_string("/etc/berth/config.toml") {
                Ok(text) => Config::from_toml(&text),
                Err(_) => Config::from_toml(""),
            },
        }
    }

    fn validate(&self) -> Result<()> {
        for (what, p) in [
            ("server.socket", &self.server.socket),
            ("paths.root", &self.paths.root),
            ("paths.state", &self.paths.state),
            ("cni.conf_dir", &self.cni.conf_dir),
        ] {
            if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(Error::Config(format!(
                    "{what} must be an absolute path without '..': {}",
                    p.display()
                )));
            }
        }
        for (host, endpoints) in &self.registry.mirrors {
            for e in endpoints {
                let rest = e
                    .strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"))
                    .unwrap_or("");
                if rest.is_empty() || rest.contains('/') {
                    return Err(Error::Config(format!(
                        "registry.mirrors.{host:?}: {e:?} is not http[s]://host[:port]"
                    )));
                }
            }
        }
        if self.streaming.address.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::Config(format!(
                "streaming.address {:?} is not an IP address",
                self.streaming.address
            )));
        }
        for (what, v) in [
            ("header_read_timeout", self.streaming.header_read_timeout),
            (
                "stream_creation_timeout",
                self.streaming.stream_creation_timeout,
            ),
            ("stream_idle_timeout", self.streaming.stream_idle_timeout),
            ("max_connections", self.streaming.max_connections as u64),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("streaming.{what} must be above 0")));
            }
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(Error::Config(format!(
                "log.level {:?} is not a level",
                self.log.level
            )));
        }
        Ok(())
    }

    /// The state store's file.
    pub fn store_path(&self) -> PathBuf {
        self.paths.root.join("berth.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.socket, PathBuf::from("/run/berth/berth.sock"));
        assert_eq!(c.paths.root, PathBuf::from("/var/lib/berth"));
        assert_eq!(c.runtime.binary, "runc");
        assert_eq!(c.cni.bin_dirs[0], PathBuf::from("/usr/lib/cni"));
        assert_eq!(c.streaming.stream_creation_timeout, 30);
        assert_eq!(c.streaming.stream_idle_timeout, 4 * 3600);
    }

    #[test]
    fn user_file_overrides_only_its_keys() {
        let c =
            Config::from_toml("[runtime]\nbinary = \"crun\"\n[cni]\nconf_dir = \"/x\"\n").unwrap();
        assert_eq!(c.runtime.binary, "crun");
        assert_eq!(c.runtime.cgroup_driver, CgroupDriver::Cgroupfs);
        assert_eq!(c.cni.conf_dir, PathBuf::from("/x"));
        assert_eq!(c.cni.bin_dirs.len(), 2);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(Config::from_toml("[runtime]\nbinnary = \"crun\"\n").is_err());
        assert!(Config::from_toml("[paths]\nroot = \"relative\"\n").is_err());
        assert!(Config::from_toml("[paths]\nstate = \"/run/../etc\"\n").is_err());
        assert!(Config::from_toml("[runtime]\ncgroup_driver = \"cgroupv3\"\n").is_err());
        assert!(Config::from_toml("[server\n").is_err());
        assert!(Config::from_toml("[streaming]\nmax_connections = 0\n").is_err());
        assert!(Config::from_toml("[streaming]\nheader_read_timeout = 0\n").is_err());
    }
}
