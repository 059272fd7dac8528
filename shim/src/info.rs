//! The `-info` flag (containerd 2.x): what this runtime is and what its OCI binary can do,
//! as the protobuf `containerd.types.RuntimeInfo` containerd reads from stdout.
//!
//! containerd 2.x runs `<shim> -info` with the runtime options on stdin when its CRI
//! introspects a runtime handler and before a task whose spec uses idmapped mounts. The
//! answer carries the options it was given and the JSON of `<binary> features`, which is
//! how CRI learns about recursive read-only mounts and user namespaces. A binary without a
//! `features` command (crun 1.8) gets the answer without features, never an error, as the
//! Go shim does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::Message;
use berth_proto::shim::oci;
use berth_proto::types::introspection::{RuntimeInfo, RuntimeVersion};

use crate::error::{Error, Result};
use crate::options::RuncOptions;

/// The `Any` type of the features document (the OCI runtime-spec's Go type name).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// Bounds on what we read: the options containerd sends and the binary's answer are both
/// small; anything larger is a broken peer, not a bigger document.
const MAX_STDIN: u64 = 1 << 20;
const MAX_FEATURES: u64 = 1 << 20;
/// A `features` command only prints a table; one that takes longer is hung.
const FEATURES_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `-info`: reads the options from stdin and returns the encoded `RuntimeInfo`.
pub fn run(argv0: &str) -> Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut input)
        .map_err(|e| Error::io("read stdin", e))?;
    if input.len() as u64 > MAX_STDIN {
        return Err(Error::InvalidArgument(format!(
            "runtime options on stdin exceed {MAX_STDIN} bytes"
        )));
    }
    let info = runtime_info(argv0, &input, &|bin| features_of(bin))?;
    info.write_to_bytes()
        .map_err(|e| Error::proto("encode RuntimeInfo", e))
}

/// Builds the answer; `features` runs the OCI binary (a seam for unit tests).
pub fn runtime_info(
    argv0: &str,
    input: &[u8],
    features: &dyn Fn(&Path) -> Option<Vec<u8>>,
) -> Result<RuntimeInfo> {
    let mut info = RuntimeInfo::new();
    info.name = runtime_name(argv0);
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").to_string();
    version.revision = option_env!("BERTH_REVISION")
        .unwrap_or_default()
        .to_string();
    info.version = Some(version).into();

    let opts = if input.is_empty() {
        None
    } else {
        let any =
            Any::parse_from_bytes(input).map_err(|e| Error::proto("decode runtime options", e))?;
        Some(RuncOptions::from_any(Some(&any))?)
    };
    if let Some(o) = &opts {
        info.options = Some(runc_options_any(o)?).into();
    }
    let binary_name = opts.as_ref().map_or("runc", RuncOptions::binary);
    let binary = look_path(binary_name).ok_or_else(|| {
        Error::NotFound(format!(
            "failed to look up the path of {binary_name:?}: not found in PATH"
        ))
    })?;
    if let Some(json) = features(&binary).and_then(|raw| normalize_features(&raw)) {
        let mut any = Any::new();
        any.type_url = FEATURES_TYPE_URL.to_string();
        any.value = json;
        info.features = Some(any).into();
    }
    Ok(info)
}

/// `io.containerd.<name>.v2` from `containerd-shim-<name>-v2`, the runtime type containerd
/// resolved to this binary (so a drop-in install answers `io.containerd.runc.v2`).
pub fn runtime_name(argv0: &str) -> String {
    let file = Path::new(argv0)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file
        .strip_prefix("containerd-shim-")
        .and_then(|s| s.rsplit_once('-'))
    {
        Some((name, v)) if !name.is_empty() && !v.is_empty() => {
            format!("io.containerd.{name}.{v}")
        }
        _ => "io.containerd.berth.v2".to_string(),
    }
}

/// The options echoed back as containerd's runc options (the TOML form of
/// `runtimeoptions.v1.Options` comes back in the type the shim acts on).
fn runc_options_any(o: &RuncOptions) -> Result<Any> {
    let mut p = oci::Options::new();
    p.no_pivot_root = o.no_pivot_root;
    p.no_new_keyring = o.no_new_keyring;
    p.shim_cgroup = o.shim_cgroup.clone();
    p.io_uid = o.io_uid;
    p.io_gid = o.io_gid;
    p.binary_name = o.binary_name.clone();
    p.root = o.root.clone();
    p.systemd_cgroup = o.systemd_cgroup;
    p.criu_image_path = o.criu_image_path.clone();
    p.criu_work_path = o.criu_work_path.clone();
    let mut any = Any::new();
    any.type_url = RUNC_OPTIONS_TYPE_URL.to_string();
    any.value = p
        .write_to_bytes()
        .map_err(|e| Error::proto("encode runc options", e))?;
    Ok(any)
}

/// Go's `exec.LookPath`: a name with a slash is used as is, else the first executable
/// regular file of that name on `$PATH`.
fn look_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// The features document as containerd parses it: a JSON object, re-encoded with sorted
/// keys and without nulls (Go's `omitempty`). Anything else means "no features".
pub fn normalize_features(raw: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    if !v.is_object() {
        return None;
    }
    strip_nulls(&mut v);
    serde_json::to_vec(&v).ok()
}

fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Runs `<binary> features`, bounded in time and size; `None` when it fails (runc before
/// 1.1, crun 1.8 and youki have no such command).
fn features_of(binary: &Path) -> Option<Vec<u8>> {
    let mut child = Command::new(binary)
        .arg("features")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    // Why a thread: the read must not outlive the deadline if the binary hangs with its
    // stdout open; the thread is left behind only in that case, and this process exits next.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = stdout.take(MAX_FEATURES + 1).read_to_end(&mut out);
        let _ = tx.send(r.map(|_| out));
    });
    let deadline = Instant::now() + FEATURES_TIMEOUT;
    let out = rx.recv_timeout(FEATURES_TIMEOUT).ok().and_then(|r| r.ok());
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = out?;
    (status?.success() && out.len() as u64 <= MAX_FEATURES).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC_FEATURES: &str = r#"{"ociVersionMin":"1.0.0","ociVersionMax":"1.0.2-dev",
        "mountOptions":["ro","rro"],"linux":{"namespaces":["user","mount"],
        "mountExtensions":null},"annotations":{"b":"2","a":"1"}}"#;

    fn info(input: &[u8], features: Option<&str>) -> Result<RuntimeInfo> {
        let f = features.map(|s| s.as_bytes().to_vec());
        runtime_info("/x/containerd-shim-runc-v2", input, &|_| f.clone())
    }

    fn runc_opts(binary: &str) -> Vec<u8> {
        let mut o = oci::Options::new();
        o.binary_name = binary.into();
        o.systemd_cgroup = true;
        let mut any = Any::new();
        any.type_url = RUNC_OPTIONS_TYPE_URL.into();
        any.value = o.write_to_bytes().unwrap();
        any.write_to_bytes().unwrap()
    }

    #[test]
    fn names_follow_the_binary_name() {
        assert_eq!(
            runtime_name("/usr/bin/containerd-shim-berth-v2"),
            "io.containerd.berth.v2"
        );
        assert_eq!(
            runtime_name("containerd-shim-runc-v2"),
            "io.containerd.runc.v2"
        );
        assert_eq!(runtime_name("shim"), "io.containerd.berth.v2");
    }

    #[test]
    fn no_options_gives_features_of_runc() {
        let i = info(b"", Some(RUNC_FEATURES)).unwrap();
        assert_eq!(i.name, "io.containerd.runc.v2");
        assert!(i.options.is_none());
        let f = i.features.as_ref().unwrap();
        assert_eq!(f.type_url, FEATURES_TYPE_URL);
        let v: serde_json::Value = serde_json::from_slice(&f.value).unwrap();
        assert_eq!(v["mountOptions"][1], "rro");
        assert!(v["linux"].get("mountExtensions").is_none(), "{v}");
        // Sorted keys, as Go's encoder writes maps.
        let text = String::from_utf8(f.value.clone()).unwrap();
        assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap());
    }

    #[test]
    fn runc_options_are_echoed() {
        let i = info(&runc_opts("runc"), Some(RUNC_FEATURES)).unwrap();
        let o = oci::Options::parse_from_bytes(&i.options.value).unwrap();
        assert_eq!(i.options.type_url, RUNC_OPTIONS_TYPE_URL);
        assert_eq!(o.binary_name, "runc");
        assert!(o.systemd_cgroup);
    }

    #[test]
    fn a_binary_without_features_gets_a_minimal_answer() {
        let i = info(b"", None).unwrap();
        assert!(i.features.is_none());
        assert!(i.version.is_some());
        let i = info(b"", Some("unknown command features")).unwrap();
        assert!(i.features.is_none());
        let i = info(b"", Some("[1,2]")).unwrap();
        assert!(i.features.is_none());
    }

    #[test]
    fn a_missing_binary_and_garbage_options_are_errors() {
        let e = info(&runc_opts("no-such-oci-runtime"), Some("{}")).unwrap_err();
        assert!(e.to_string().contains("no-such-oci-runtime"), "{e}");
        assert!(info(b"\xff\xff\xff", Some("{}")).is_err());
    }
}
