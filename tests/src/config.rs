//! The private containerd config (version 2 TOML) each test instance runs with.

use crate::image::PAUSE_IMAGE;
use crate::shim::Runtime;
use std::path::Path;

/// Renders the config: private root/state/socket, debug log, CRI off unless `cri` is set.
/// With CRI the default handler `berth` uses `runtime`; pods are expected on the host network.
pub fn render(dir: &Path, address: &str, runtime: Runtime, cri: bool) -> String {
    let d = dir.display();
    let mut s = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
{disabled}

[grpc]
  address = "{address}"

[debug]
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
        disabled = if cri {
            ""
        } else {
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
        },
    );
    if cri {
        s.push_str(&format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "berth"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth]
      runtime_type = "{rt}"
"#,
            rt = runtime.name()
        ));
        if let Runtime::DropIn(oci) = runtime {
            s.push_str(&format!(
                "      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.berth.options]\n        BinaryName = \"{}\"\n",
                oci.name()
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::Oci;

    #[test]
    fn cri_drop_in_sets_binary_name() {
        let s = render(
            Path::new("/x"),
            "/x/c.sock",
            Runtime::DropIn(Oci::Crun),
            true,
        );
        assert!(
            s.contains("runtime_type = \"io.containerd.runc.v2\""),
            "{s}"
        );
        assert!(s.contains("BinaryName = \"crun\""), "{s}");
        assert!(!s.contains("disabled_plugins"), "{s}");
    }

    #[test]
    fn plain_instance_disables_cri() {
        let s = render(Path::new("/x"), "/x/c.sock", Runtime::Berth, false);
        assert!(
            s.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"),
            "{s}"
        );
        assert!(!s.contains("runtimes.berth"), "{s}");
    }
}
