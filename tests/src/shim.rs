//! Which shim binary is under test, and the two ways containerd is made to run it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Debian 12's Go shim (containerd 1.6), used to validate the tests themselves
/// (`BERTH_TEST_REFERENCE=1`); with containerd 2.1 the reference is that package's own shim
/// (`Containerd::reference_shim`).
pub const REFERENCE_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

/// True when the suite runs against Debian's Go shim instead of ours.
pub fn is_reference() -> bool {
    std::env::var("BERTH_TEST_REFERENCE").is_ok_and(|v| v == "1")
}

/// A session's scratch space: the shim under test and a fresh tempdir.
pub struct Scratch {
    pub shim: PathBuf,
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    /// The random part of the tempdir's name (for a namespace no other session has).
    pub suffix: String,
}

/// Finds the shim under test ([`binary`]) and makes a tempdir named `<prefix>XXXXXX`.
pub fn scratch(prefix: &str) -> Result<Scratch> {
    scratch_with(prefix, binary()?)
}

/// Makes a tempdir named `<prefix>XXXXXX` for the shim binary `shim`.
pub fn scratch_with(prefix: &str, shim: PathBuf) -> Result<Scratch> {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("tempdir")?;
    let dir = tmp.path().to_path_buf();
    let suffix: String = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .chars()
        .skip(prefix.chars().count())
        .collect();
    Ok(Scratch {
        shim,
        tmp,
        dir,
        suffix,
    })
}

/// The shim binary under test: `$BERTH_SHIM`, else `<target>/debug/containerd-shim-berth-v2`
/// next to this test binary, or Debian 12's Go shim ([`REFERENCE_SHIM`]) in reference mode.
/// Fails clearly when missing.
pub fn binary() -> Result<PathBuf> {
    binary_with_reference(Path::new(REFERENCE_SHIM))
}

/// [`binary`] with `reference` as the Go shim of reference mode (the one shipped with the
/// containerd under test, e.g. containerd 2.1's `containerd-shim-runc-v2`).
pub fn binary_with_reference(reference: &Path) -> Result<PathBuf> {
    if is_reference() {
        return checked(reference.to_path_buf(), "BERTH_TEST_REFERENCE=1");
    }
    if let Some(p) = std::env::var_os("BERTH_SHIM") {
        return checked(PathBuf::from(p), "$BERTH_SHIM");
    }
    // The test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no <target>/<profile> parent")?;
    checked(
        profile_dir.join("containerd-shim-berth-v2"),
        "default location (run `cargo build --workspace` first)",
    )
}

fn checked(p: PathBuf, from: &str) -> Result<PathBuf> {
    let meta = std::fs::metadata(&p).with_context(|| {
        format!(
            "shim binary under test not found at {} ({from})",
            p.display()
        )
    })?;
    if !meta.is_file() || meta.len() == 0 {
        bail!(
            "shim binary under test at {} ({from}) is not a usable file",
            p.display()
        );
    }
    Ok(p)
}

/// The low-level OCI runtime the Go-compatible options name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oci {
    Runc,
    Crun,
}

impl Oci {
    pub fn name(self) -> &'static str {
        match self {
            Oci::Runc => "runc",
            Oci::Crun => "crun",
        }
    }
}

/// How containerd finds and configures the shim under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Runtime `io.containerd.berth.v2`: `containerd-shim-berth-v2` first in containerd's PATH.
    Berth,
    /// Installed as `containerd-shim-runc-v2` in containerd's cwd and first in its PATH,
    /// runtime `io.containerd.runc.v2` with runc options naming `Oci`.
    DropIn(Oci),
}

impl Runtime {
    /// The runtime name given to `ctr run --runtime` / CRI `runtime_type`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Berth => "io.containerd.berth.v2",
            Runtime::DropIn(_) => "io.containerd.runc.v2",
        }
    }

    /// The file name containerd resolves for this runtime.
    pub fn link_name(self) -> &'static str {
        match self {
            Runtime::Berth => "containerd-shim-berth-v2",
            Runtime::DropIn(_) => "containerd-shim-runc-v2",
        }
    }

    /// `ctr run` flags selecting this runtime (and the OCI binary for the drop-in).
    pub fn ctr_run_flags(self) -> Vec<String> {
        let mut v = vec!["--runtime".to_string(), self.name().to_string()];
        if let Runtime::DropIn(oci) = self {
            v.push("--runc-binary".into());
            v.push(oci.name().into());
        }
        v
    }

    /// The OCI runtime binary that will run containers.
    pub fn oci(self) -> Oci {
        match self {
            Runtime::Berth => Oci::Runc,
            Runtime::DropIn(o) => o,
        }
    }
}
