//! A fault-injecting CNI plugin for the CNI fault suites: a shell script, written into a
//! bin dir of the test's own, that wraps the real bridge plugin and misbehaves as the
//! files next to it say: ADD hangs for ever (after the bridge wired the pod, with a
//! child process, so only killing its process group ends it), or fails with a CNI error
//! after the bridge wired the pod; DEL crashes (SIGSEGV) the next N times. Every call is
//! appended to `calls` ("ADD <id>", "DEL <id>").

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The plugin's type (its file name) in a conflist.
pub const PLUGIN: &str = "faulty";

/// The error message a failing ADD prints (in the CNI error JSON).
pub const ADD_FAILURE: &str = "faulty plugin: ADD failed after the bridge was wired";

/// What ADD does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Add {
    /// The bridge's ADD, passed through.
    Pass,
    /// The bridge's ADD, then sleep for ever.
    Hang,
    /// The bridge's ADD, then exit 1 with a CNI error.
    Fail,
}

/// The plugin in its bin dir.
pub struct Faulty {
    pub dir: PathBuf,
}

const SCRIPT: &str = r#"#!/bin/sh
# berth-tests' faulty CNI plugin (tests/src/faulty_cni.rs): the real bridge plugin,
# misbehaving as the files in its dir say.
dir='@DIR@'
real='@REAL@'
conf=$(cat)
echo "$CNI_COMMAND $CNI_CONTAINERID" >> "$dir/calls"
mode=$(cat "$dir/add" 2>/dev/null)
case "$CNI_COMMAND" in
ADD)
  out=$(printf '%s' "$conf" | "$real") || { printf '%s\n' "$out"; exit 1; }
  case "$mode" in
  hang)
    sleep 100000 &
    echo $! > "$dir/hung.pid"
    wait
    exit 0 ;;
  fail)
    printf '{"cniVersion":"1.0.0","code":11,"msg":"%s"}\n' '@FAILURE@'
    exit 1 ;;
  esac
  printf '%s\n' "$out" ;;
DEL)
  n=$(cat "$dir/del_crashes" 2>/dev/null)
  if [ "${n:-0}" -gt 0 ]; then
    echo $((n - 1)) > "$dir/del_crashes"
    echo "faulty plugin: crashing on DEL" >&2
    ulimit -c 0
    kill -SEGV $$
  fi
  printf '%s' "$conf" | exec "$real" ;;
*)
  printf '%s' "$conf" | exec "$real" ;;
esac
"#;

impl Faulty {
    /// Writes the plugin into `dir` (made if missing), wrapping the bridge plugin found in
    /// `/usr/lib/cni` or `/opt/cni/bin`.
    pub fn install(dir: &Path) -> Result<Faulty> {
        std::fs::create_dir_all(dir)?;
        let real = ["/usr/lib/cni/bridge", "/opt/cni/bin/bridge"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context("no CNI bridge plugin in /usr/lib/cni or /opt/cni/bin")?;
        let text = SCRIPT
            .replace("@DIR@", &dir.display().to_string())
            .replace("@REAL@", real)
            .replace("@FAILURE@", ADD_FAILURE);
        let p = dir.join(PLUGIN);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(Faulty {
            dir: dir.to_path_buf(),
        })
    }

    pub fn set_add(&self, add: Add) -> Result<()> {
        let m = match add {
            Add::Pass => "",
            Add::Hang => "hang",
            Add::Fail => "fail",
        };
        Ok(std::fs::write(self.dir.join("add"), m)?)
    }

    /// The next `n` DELs crash.
    pub fn crash_dels(&self, n: u32) -> Result<()> {
        Ok(std::fs::write(self.dir.join("del_crashes"), n.to_string())?)
    }

    /// The calls so far, in order: "ADD <container id>", "DEL <container id>".
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The pid of the child a hung ADD left sleeping (its last one).
    pub fn hung_child(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("hung.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Puts the faulty plugin under the bridge network of a configured (not yet started)
/// berthd (`Builder::cni_bridge`): installed in a bin dir of its own, looked up before the
/// real plugins, each plugin call bounded by `timeout_s` seconds (`cni.plugin_timeout`).
pub fn use_in(d: &crate::berthd::Berthd, timeout_s: u64) -> Result<Faulty> {
    let faulty = Faulty::install(&d.dir.path().join("cni-bin"))?;
    route_through(&d.cni_dir)?;
    // The fixture's config has its [cni] table: the keys go into it.
    let text = std::fs::read_to_string(&d.config)?;
    let keys = format!(
        "[cni]\nplugin_timeout = {timeout_s}\nbin_dirs = [\"{}\", \"/usr/lib/cni\", \"/opt/cni/bin\"]\n",
        faulty.dir.display()
    );
    std::fs::write(&d.config, text.replacen("[cni]\n", &keys, 1))?;
    Ok(faulty)
}

/// Makes the bridge conflist `cni::bridge` wrote into `cni_dir` run through the faulty
/// plugin instead of the bridge plugin itself.
pub fn route_through(cni_dir: &Path) -> Result<()> {
    let p = cni_dir.join("10-berth-feat.conflist");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["plugins"][0]["type"] = serde_json::json!(PLUGIN);
    Ok(std::fs::write(&p, v.to_string())?)
}
