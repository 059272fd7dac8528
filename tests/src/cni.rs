//! A private CNI network for one berthd: a bridge + portmap conflist with its own bridge
//! name and /24, or the `[cni.default]` keys that give berthd's built-in network the same
//! (own bridge name and /24, masquerade off); and a guard that deletes the bridge.

use anyhow::Result;
use std::path::Path;

/// Removes the test's bridge (and its portmap chains' target) even when the test fails.
pub struct Bridge {
    pub name: String,
    /// First three octets of the /24, e.g. "10.234.57".
    pub prefix: String,
}

impl Bridge {
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Writes a bridge + portmap conflist (own bridge name and /24, ipMasq off) into
/// `cni_dir`, host-local IPAM state under `ipam`. `slot` (0..=9) keeps tests of one
/// process apart.
pub fn bridge(cni_dir: &Path, ipam: &Path, slot: u32) -> Result<Bridge> {
    let n = std::process::id() % 200 + 20;
    let bridge = Bridge {
        name: format!("bf{slot}x{n}"),
        prefix: format!("10.{}.{n}", 240 + slot),
    };
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-feat",
        "plugins": [
            {"type": "bridge", "bridge": bridge.name, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": ipam,
                      "ranges": [[{"subnet": format!("{}.0/24", bridge.prefix)}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(cni_dir.join("10-berth-feat.conflist"), conflist.to_string())?;
    Ok(bridge)
}

/// `[cni.default]` keys that turn berthd's built-in network on with a bridge name and /24
/// of this test process's own (ipMasq off: no rule for traffic leaving the subnet), and
/// the guard of that bridge. `slot` (0..=4) keeps tests of one process apart, and apart
/// from `bridge`'s networks (10.240-249.x).
pub fn default_network(slot: u32) -> (String, Bridge) {
    assert!(slot <= 4, "default network slot {slot} out of 0..=4");
    let n = std::process::id() % 200 + 20;
    let bridge = Bridge {
        name: format!("bd{slot}x{n}"),
        prefix: format!("10.{}.{n}", 250 + slot),
    };
    let toml = format!(
        "[cni.default]\nenabled = true\nbridge = \"{}\"\nsubnet = \"{}.0/24\"\nip_masq = false\n",
        bridge.name, bridge.prefix
    );
    (toml, bridge)
}
