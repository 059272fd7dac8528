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
    pub metrics: Metrics,
    pub log: Log,
    pub nri: Nri,
    pub cdi: Cdi,
    pub userns: Userns,
}

/// CDI (docs/nri.md#cdi): where the device spec files are, a later dir taking precedence.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cdi {
    pub spec_dirs: Vec<PathBuf>,
}

/// User-namespaced pods (docs/userns.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Userns {
    pub rootfs: UsernsRootfs,
}

/// How a user-namespaced container's rootfs shows the image's files owned by the pod's
/// root: an overlay on idmapped layers, or on remapped copies of them.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UsernsRootfs {
    /// idmap when the startup probe says it works here, else copy.
    #[default]
    Auto,
    Idmap,
    Copy,
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
    pub pod_infra: PodInfra,
}

/// When a pod gets an infra process.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PodInfra {
    /// Only where one is needed: a pod sharing its PID namespace, a user-namespaced pod.
    Auto,
    /// Every pod (Berth before 2026-12).
    Always,
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
    /// Seconds one CNI plugin call (ADD or DEL) may take before it is killed.
    pub plugin_timeout: u64,
    /// The built-in network used while `conf_dir` holds no config.
    pub default: DefaultNetwork,
}

/// Berth's built-in pod network (`network::builtin`): a bridge with host-local IPAM
/// and portmap, used only while the conf dir holds no config of the operator's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DefaultNetwork {
    pub enabled: bool,
    /// The host bridge's name (an interface name: 1 to 15 characters).
    pub bridge: String,
    /// The pods' subnet (CIDR, host bits zero); the bridge takes its first address.
    pub subnet: String,
    /// Whether pod traffic leaving the subnet is masqueraded (the bridge plugin's ipMasq).
    pub ip_masq: bool,
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

/// The Prometheus endpoint (`metrics`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// `ip:port` serving `GET /metrics` (port 0: any free port); "" = off.
    pub address: String,
}

/// The Node Resource Interface (`nri`, docs/nri.md): plugins hooked into the pod and
/// container lifecycle.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Nri {
    /// false: no NRI at all (no socket, no plugins started, no calls).
    pub enable: bool,
    /// The unix socket external plugins connect to; "" accepts none.
    pub socket_path: PathBuf,
    /// Pre-installed plugins (`IDX-NAME` executables) berthd starts at startup.
    pub plugin_path: PathBuf,
    /// Their configuration: `IDX-NAME.conf`, else `NAME.conf`.
    pub plugin_config_path: PathBuf,
    /// Milliseconds a plugin has to register (and to take its Synchronize) after it
    /// connects or is started.
    pub registration_timeout_ms: u64,
    /// Milliseconds a plugin has to answer one request.
    pub request_timeout_ms: u64,
    /// NRI's builtin default validator (docs/nri.md), off unless enabled.
    pub default_validator: DefaultValidator,
}

/// NRI's default validator: what it refuses of the plugins' adjustments of a container
/// (the keys of containerd's `[plugins."io.containerd.nri.v1.nri".default_validator]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DefaultValidator {
    pub enable: bool,
    /// Refuses OCI hooks added by plugins.
    pub reject_oci_hook_adjustment: bool,
    /// Refuses a seccomp policy set by a plugin for a container whose profile is the
    /// runtime default, unconfined (or none), or a custom (localhost) one.
    pub reject_runtime_default_seccomp_adjustment: bool,
    pub reject_unconfined_seccomp_adjustment: bool,
    pub reject_custom_seccomp_adjustment: bool,
    /// Refuses namespaces adjusted by plugins.
    pub reject_namespace_adjustment: bool,
    /// Refuses sysctls adjusted by plugins.
    pub reject_sysctl_adjustment: bool,
    /// Plugins (`NAME` or `IDX-NAME`) that must be connected for any container to be
    /// created (pods add theirs with the `required-plugins.noderesource.dev` annotation).
    pub required_plugins: Vec<String>,
    /// A pod annotation ("" = none) that, "true", lets its containers be created without
    /// the required plugins.
    pub tolerate_missing_plugins_annotation: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
    pub format: LogFormat,
}

/// How log lines are written: readable text, or one JSON object per line.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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

/// The built-in network's bridge name and subnet, checked before any pod uses them (a
/// plugin's own message would only come at the first RunPodSandbox).
fn validate_default_network(d: &DefaultNetwork) -> Result<()> {
    let b = &d.bridge;
    if b.is_empty()
        || b.len() > 15
        || b == "."
        || b == ".."
        || b.contains(['/', ':', '\0'])
        || b.contains(char::is_whitespace)
    {
        return Err(Error::Config(format!(
            "cni.default.bridge {b:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        )));
    }
    parse_subnet(&d.subnet)
        .map(drop)
        .map_err(|why| Error::Config(format!("cni.default.subnet {:?}: {why}", d.subnet)))
}

/// A CIDR whose host bits are zero, with room for a gateway and pods (IPv4 /30 at most,
/// IPv6 /126).
pub fn parse_subnet(s: &str) -> std::result::Result<(std::net::IpAddr, u8), String> {
    use std::net::IpAddr;
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| "not a CIDR (address/prefix length)".to_string())?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{len:?} is not a prefix length"))?;
    let (bits, max) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 30),
        IpAddr::V6(a) => (u128::from(a), 126),
    };
    if len == 0 || len > max {
        return Err(format!(
            "prefix length {len} leaves no room (1 to {max} for this address family)"
        ));
    }
    // Both families as the top bits of a u128 (IPv4 shifted up), so the mask is one.
    let host_mask = u128::MAX >> len;
    if bits & host_mask != 0 {
        return Err("host bits are set (write the network address)".into());
    }
    Ok((addr, len))
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
        validate_default_network(&self.cni.default)?;
        if self.cni.plugin_timeout == 0 {
            return Err(Error::Config("cni.plugin_timeout must be above 0".into()));
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
        let m = &self.metrics.address;
        if !m.is_empty() && m.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Config(format!(
                "metrics.address {m:?} is not ip:port (e.g. \"127.0.0.1:9323\"), or \"\" for off"
            )));
        }
        for (what, p) in [
            ("nri.socket_path", &self.nri.socket_path),
            ("nri.plugin_path", &self.nri.plugin_path),
            ("nri.plugin_config_path", &self.nri.plugin_config_path),
        ] {
            let empty_ok = what == "nri.socket_path";
            if (p.as_os_str().is_empty() && !empty_ok)
                || (!p.as_os_str().is_empty() && !p.is_absolute())
            {
                return Err(Error::Config(format!(
                    "{what} must be an absolute path: {}",
                    p.display()
                )));
            }
        }
        for (what, v) in [
            ("registration_timeout_ms", self.nri.registration_timeout_ms),
            ("request_timeout_ms", self.nri.request_timeout_ms),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("nri.{what} must be above 0")));
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
        assert_eq!(c.cni.plugin_timeout, 60);
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
        let t = Config::from_toml("[cni]\nplugin_timeout = 5\n").unwrap();
        assert_eq!(t.cni.plugin_timeout, 5);
        let e = Config::from_toml("[cni]\nplugin_timeout = 0\n").unwrap_err();
        assert!(e.to_string().contains("cni.plugin_timeout"), "{e}");
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
        assert!(Config::from_toml("[log]\nformat = \"xml\"\n").is_err());
        assert!(Config::from_toml("[metrics]\naddress = \"localhost\"\n").is_err());
        assert!(Config::from_toml("[metrics]\naddress = \"127.0.0.1\"\n").is_err());
    }

    #[test]
    fn nri_defaults_are_containerds() {
        let n = Config::from_toml("").unwrap().nri;
        assert!(n.enable);
        assert_eq!(n.socket_path, PathBuf::from("/var/run/nri/nri.sock"));
        assert_eq!(n.plugin_path, PathBuf::from("/opt/nri/plugins"));
        assert_eq!(n.plugin_config_path, PathBuf::from("/etc/nri/conf.d"));
        assert_eq!(
            (n.registration_timeout_ms, n.request_timeout_ms),
            (5000, 2000)
        );
        assert!(
            !Config::from_toml("[nri]\nenable = false\n")
                .unwrap()
                .nri
                .enable
        );
        assert!(Config::from_toml("[nri]\nsocket_path = \"\"\n").is_ok());
        assert!(Config::from_toml("[nri]\nsocket_path = \"nri.sock\"\n").is_err());
        assert!(Config::from_toml("[nri]\nrequest_timeout_ms = 0\n").is_err());
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_set() {
        assert_eq!(Config::from_toml("").unwrap().metrics.address, "");
        let on = Config::from_toml("[metrics]\naddress = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(on.metrics.address, "127.0.0.1:0");
        assert!(Config::from_toml("[metrics]\naddress = \"[::1]:9323\"\n").is_ok());
    }

    #[test]
    fn the_default_network_is_on_and_its_keys_are_checked() {
        let c = Config::from_toml("").unwrap();
        let d = &c.cni.default;
        assert!(d.enabled && d.ip_masq);
        assert_eq!(
            (d.bridge.as_str(), d.subnet.as_str()),
            ("berth0", "10.87.0.0/16")
        );
        assert_eq!(c.log.format, LogFormat::Text);
        let off = Config::from_toml("[cni.default]\nenabled = false\n").unwrap();
        assert!(!off.cni.default.enabled);
        assert_eq!(off.cni.default.bridge, "berth0");
        for (bad, why) in [
            ("bridge = \"\"", "interface name"),
            ("bridge = \"a-very-long-bridge\"", "interface name"),
            ("bridge = \"a/b\"", "interface name"),
            ("subnet = \"10.87.0.0\"", "not a CIDR"),
            ("subnet = \"10.87.0.1/16\"", "host bits"),
            ("subnet = \"10.87.0.0/31\"", "no room"),
            ("subnet = \"banana/16\"", "not an IP address"),
            ("subnet = \"fd00::1/64\"", "host bits"),
        ] {
            let e = Config::from_toml(&format!("[cni.default]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(e.to_string().contains("cni.default."), "{bad}: {e}");
        }
        assert!(Config::from_toml("[cni.default]\nsubnet = \"fd00:87::/64\"\n").is_ok());
        assert!(Config::from_toml("[cni.default]\nsubnet = \"10.240.7.0/24\"\n").is_ok());
    }
}
