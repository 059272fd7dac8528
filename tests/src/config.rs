//! The private containerd config each test instance runs with: version 2 TOML for
//! containerd 1.6, version 3 for containerd 2.1.

use crate::containerd_version::Containerd;
use crate::image::PAUSE_IMAGE;
use crate::shim::Runtime;
use std::path::Path;

/// Renders the config for `version`: private root/state/socket, debug log, CRI off unless
/// `cri` is set. With CRI the default handler `berth` uses `runtime`; pods are expected on the
/// host network. The config ends inside the `berth` runtime's table (or its `options`), so
/// extra TOML can add options for it ([`cri_runtime_table`]).
pub fn render(
    version: Containerd,
    dir: &Path,
    address: &str,
    runtime: Runtime,
    cri: bool,
) -> String {
    match version {
        Containerd::V1_6 => render_v2(dir, address, runtime, cri),
        Containerd::V2_1 => render_v3(dir, address, runtime, cri),
    }
}

/// The TOML table of CRI runtime handler `name` (its `options` sub-table is `<this>.options`).
pub fn cri_runtime_table(version: Containerd, name: &str) -> String {
    match version {
        Containerd::V1_6 => {
            format!("plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}")
        }
        Containerd::V2_1 => {
            format!("plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{name}")
        }
    }
}

/// What both versions' configs begin with: private root, state and socket, a debug log, no
/// metrics listener, containerd's opt dir (table `opt`, quoted as each version writes it);
/// the CRI service off unless `cri`.
fn header(version: u32, dir: &Path, address: &str, cri: bool, opt: &str) -> String {
    let d = dir.display();
    let disabled = if cri {
        ""
    } else {
        r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
    };
    format!(
        r#"version = {version}
root = "{d}/root"
state = "{d}/state"
{disabled}

[grpc]
  address = "{address}"

[debug]
  level = "debug"

[metrics]
  address = ""

[{opt}]
  path = "{d}/opt"
"#
    )
}

/// containerd 1.6: config version 2, CRI in one plugin (`io.containerd.grpc.v1.cri`).
fn render_v2(dir: &Path, address: &str, runtime: Runtime, cri: bool) -> String {
    let d = dir.display();
    let opt = r#"plugins."io.containerd.internal.v1.opt""#;
    let mut s = header(2, dir, address, cri, opt);
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
"#
        ));
        s.push_str(&runtime_tables(Containerd::V1_6, runtime));
    }
    s
}

/// containerd 2.1: config version 3. CRI is split: `io.containerd.cri.v1.runtime` (runtimes,
/// CNI, OOM and AppArmor settings), `io.containerd.cri.v1.images` (the sandbox image as
/// `pinned_images.sandbox`) and `io.containerd.grpc.v1.cri` (the gRPC service and its stream
/// server). Disabling `io.containerd.grpc.v1.cri` turns the CRI service off; the two config
/// plugins still load, do nothing a test sees, and log no error. NRI is off: with CRI on it
/// would serve the host-wide `/var/run/nri/nri.sock`, which two instances cannot share.
/// The ttrpc socket is `<address>.ttrpc` (private), the debug socket is off, and temporary
/// mounts go to `<root>/tmpmounts`.
fn render_v3(dir: &Path, address: &str, runtime: Runtime, cri: bool) -> String {
    let d = dir.display();
    let mut s = header(
        3,
        dir,
        address,
        cri,
        "plugins.'io.containerd.internal.v1.opt'",
    );
    s.push_str(
        r#"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
"#,
    );
    if cri {
        s.push_str(&format!(
            r#"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d}/cni"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "berth"
"#
        ));
        s.push_str(&runtime_tables(Containerd::V2_1, runtime));
    }
    s
}

/// The `berth` handler's table, and its runc options naming the OCI binary for the drop-in.
fn runtime_tables(version: Containerd, runtime: Runtime) -> String {
    let t = cri_runtime_table(version, "berth");
    let mut s = format!("    [{t}]\n      runtime_type = \"{}\"\n", runtime.name());
    if let Runtime::DropIn(oci) = runtime {
        s.push_str(&format!(
            "      [{t}.options]\n        BinaryName = \"{}\"\n",
            oci.name()
        ));
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
            Containerd::V1_6,
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
        for v in [Containerd::V1_6, Containerd::V2_1] {
            let s = render(v, Path::new("/x"), "/x/c.sock", Runtime::Berth, false);
            assert!(
                s.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"),
                "{s}"
            );
            assert!(!s.contains("runtimes.berth"), "{s}");
        }
    }

    #[test]
    fn v3_cri_drop_in() {
        let s = render(
            Containerd::V2_1,
            Path::new("/x"),
            "/x/c.sock",
            Runtime::DropIn(Oci::Crun),
            true,
        );
        assert!(s.starts_with("version = 3\n"), "{s}");
        for want in [
            "[plugins.'io.containerd.grpc.v1.cri']",
            "[plugins.'io.containerd.cri.v1.images'.pinned_images]",
            "    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.berth]\n      runtime_type = \"io.containerd.runc.v2\"",
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.berth.options]\n        BinaryName = \"crun\"",
            "restrict_oom_score_adj = true",
            "[plugins.'io.containerd.nri.v1.nri']\n  disable = true",
            "bin_dirs = [\"/usr/lib/cni\"]",
        ] {
            assert!(s.contains(want), "{want} missing from\n{s}");
        }
        assert!(!s.contains("disabled_plugins"), "{s}");
        assert!(!s.contains("sandbox_image"), "{s}");
    }

    #[test]
    fn v2_render_is_unchanged_in_form() {
        let s = render(
            Containerd::V1_6,
            Path::new("/x"),
            "/x/c.sock",
            Runtime::DropIn(Oci::Runc),
            true,
        );
        assert!(s.contains("    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.berth]\n      runtime_type = \"io.containerd.runc.v2\"\n      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.berth.options]\n        BinaryName = \"runc\"\n"), "{s}");
        assert!(s.contains("sandbox_image = "), "{s}");
    }
}
