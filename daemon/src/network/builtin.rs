//! Berth's built-in pod network: the conflist berthd uses while the CNI conf dir holds no
//! config of the operator's (`[cni.default]`), and the copy of it kept for reading.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::conf::NetworkConfigList;
use crate::config::DefaultNetwork;
use crate::error::{Error, Result};

/// The built-in network's name (host-local keeps its reservations under it).
pub const NAME: &str = "berth";

/// Where, under `paths.state`, the built-in network keeps its files: the conflist copy
/// and host-local's reservations. The state dir is a tmpfs on a normal node: a reboot,
/// which ends every pod, frees every reservation too.
pub fn state_dir(state: &Path) -> PathBuf {
    state.join("cni")
}

/// The conflist: the bridge plugin (gateway address on the bridge, hairpin mode for a
/// pod that reaches itself through a service, host-local IPAM with a default route), then
/// portmap for hostPort mappings. `lo` is not listed: berthd brings every pod's loopback
/// up itself.
pub fn conflist(cfg: &DefaultNetwork, ipam_dir: &Path) -> Value {
    let default_route = if cfg.subnet.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    json!({
        "cniVersion": "1.0.0",
        "name": NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": cfg.bridge,
                "isGateway": true,
                "ipMasq": cfg.ip_masq,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{"subnet": cfg.subnet}]],
                    "routes": [{"dst": default_route}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// The built-in network as berthd uses it. With `write`, its conflist is also written to
/// `<state>/cni/berth.conflist` (a copy for the operator to read; berthd never reads it
/// back, and never writes into the operator's conf dir).
pub fn load(cfg: &DefaultNetwork, state: &Path, write: bool) -> Result<NetworkConfigList> {
    let dir = state_dir(state);
    let path = dir.join(format!("{NAME}.conflist"));
    let text = serde_json::to_vec_pretty(&conflist(cfg, &dir.join("ipam")))
        .map_err(|e| Error::Internal(format!("built-in network: {e}")))?;
    if write {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        std::fs::write(&path, &text)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    }
    NetworkConfigList::parse(&text, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DefaultNetwork {
        crate::config::Config::from_toml("").unwrap().cni.default
    }

    #[test]
    fn the_shipped_default_is_bridge_host_local_and_portmap() {
        let d = tempfile::tempdir().unwrap();
        let l = load(&cfg(), d.path(), true).unwrap();
        assert_eq!(l.name, "berth");
        let types: Vec<&str> = l
            .plugins
            .iter()
            .map(NetworkConfigList::plugin_type)
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        let bridge = &l.plugins[0];
        assert_eq!(bridge["bridge"], "berth0");
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.87.0.0/16");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(
            bridge["ipam"]["dataDir"],
            d.path().join("cni/ipam").display().to_string()
        );
        assert_eq!(l.plugins[1]["capabilities"]["portMappings"], true);
        // The copy on disk is the same list.
        let copy = std::fs::read(d.path().join("cni/berth.conflist")).unwrap();
        assert_eq!(NetworkConfigList::parse(&copy, &l.source).unwrap(), l);
    }

    #[test]
    fn its_keys_change_the_list_and_nothing_is_written_unasked() {
        let d = tempfile::tempdir().unwrap();
        let c = DefaultNetwork {
            enabled: true,
            bridge: "bt7".into(),
            subnet: "fd00:87::/64".into(),
            ip_masq: false,
        };
        let l = load(&c, d.path(), false).unwrap();
        assert_eq!(l.plugins[0]["bridge"], "bt7");
        assert_eq!(l.plugins[0]["ipMasq"], false);
        assert_eq!(l.plugins[0]["ipam"]["routes"][0]["dst"], "::/0");
        assert!(!d.path().join("cni").exists());
    }
}
