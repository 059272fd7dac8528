//! Which containerd a suite runs against: Debian 12's containerd 1.6 from the host, or
//! containerd 2.1 from Debian sid's package, unpacked privately by `tests/containerd2.sh`.
//!
//! The 2.1 binaries come from `$BERTH_CONTAINERD2_BIN` (the directory holding `containerd`,
//! `ctr` and `containerd-shim-runc-v2`; `tests/run.sh` sets it), else from running
//! `tests/containerd2.sh <target>/containerd-2.1` once per test binary. When neither gives
//! them the test fails saying why: a 2.1 suite is never skipped.

use crate::{cmd, shim};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The containerd a private [`crate::Instance`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Containerd {
    /// Debian 12's containerd 1.6 (`containerd` and `ctr` from the PATH), config version 2.
    #[default]
    V1_6,
    /// containerd 2.1 from Debian sid's package, config version 3.
    V2_1,
}

/// The env var naming the directory with containerd 2.1's binaries.
pub const CONTAINERD2_BIN_ENV: &str = "BERTH_CONTAINERD2_BIN";

/// The script that fetches containerd 2.1 and prints its bin dir.
pub const CONTAINERD2_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/containerd2.sh");

impl Containerd {
    /// "1.6" or "2.1".
    pub fn label(self) -> &'static str {
        match self {
            Containerd::V1_6 => "1.6",
            Containerd::V2_1 => "2.1",
        }
    }

    /// The `containerd` binary to run.
    pub fn containerd(self) -> Result<PathBuf> {
        self.bin("containerd")
    }

    /// The `ctr` binary matching this containerd.
    pub fn ctr(self) -> Result<PathBuf> {
        self.bin("ctr")
    }

    /// The Go `containerd-shim-runc-v2` shipped with this containerd: the shim under test in
    /// reference mode (`BERTH_TEST_REFERENCE=1`).
    pub fn reference_shim(self) -> Result<PathBuf> {
        match self {
            Containerd::V1_6 => Ok(PathBuf::from(shim::REFERENCE_SHIM)),
            Containerd::V2_1 => Ok(containerd2_bin_dir()?.join("containerd-shim-runc-v2")),
        }
    }

    /// The shim under test for this containerd ([`shim::binary_with_reference`]).
    pub fn shim_under_test(self) -> Result<PathBuf> {
        shim::binary_with_reference(&self.reference_shim()?)
    }

    /// True for containerd 2.x (config version 3, `bootstrap.json`, CRI split in plugins).
    pub fn is_v2(self) -> bool {
        self != Containerd::V1_6
    }

    fn bin(self, name: &str) -> Result<PathBuf> {
        match self {
            // Looked up in the PATH, as before there were two versions.
            Containerd::V1_6 => Ok(PathBuf::from(name)),
            Containerd::V2_1 => Ok(containerd2_bin_dir()?.join(name)),
        }
    }
}

/// The directory holding containerd 2.1's `containerd`, `ctr` and `containerd-shim-runc-v2`
/// (found once per process; see the module docs).
pub fn containerd2_bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("containerd 2.1 is not available: {e}"))
}

fn locate() -> Result<PathBuf> {
    let dir = match std::env::var_os(CONTAINERD2_BIN_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => run_script()?,
    };
    for b in ["containerd", "ctr", "containerd-shim-runc-v2"] {
        let p = dir.join(b);
        if !p.is_file() {
            bail!(
                "{} is missing (from ${CONTAINERD2_BIN_ENV} or {CONTAINERD2_SCRIPT})",
                p.display()
            );
        }
    }
    let out = cmd::run(
        Command::new(dir.join("containerd")).arg("--version"),
        Duration::from_secs(20),
    )?;
    if out.code != 0 || !out.stdout.split_whitespace().any(|w| w.starts_with("2.1.")) {
        bail!(
            "{}/containerd --version does not say 2.1.x: {out:?}",
            dir.display()
        );
    }
    Ok(dir)
}

/// Runs `tests/containerd2.sh <target>/containerd-2.1` (it downloads at most once; a lock in
/// that dir serialises concurrent test binaries) and returns the bin dir it prints.
fn run_script() -> Result<PathBuf> {
    let dest = target_dir()?.join("containerd-2.1");
    let out = cmd::run(
        Command::new("bash").arg(CONTAINERD2_SCRIPT).arg(&dest),
        Duration::from_secs(600),
    )
    .with_context(|| format!("running {CONTAINERD2_SCRIPT}"))?;
    if out.code != 0 {
        bail!(
            "{CONTAINERD2_SCRIPT} {} failed (exit {}); set ${CONTAINERD2_BIN_ENV} to a directory \
             with containerd 2.1's containerd, ctr and containerd-shim-runc-v2 instead\n{}",
            dest.display(),
            out.code,
            out.stderr.trim()
        );
    }
    let line = out.stdout.lines().last().unwrap_or("").trim();
    if line.is_empty() {
        bail!(
            "{CONTAINERD2_SCRIPT} printed no bin dir; stderr: {}",
            out.stderr
        );
    }
    Ok(PathBuf::from(line))
}

/// Cargo's target dir: `$CARGO_TARGET_DIR`, else the one holding this test binary
/// (`<target>/<profile>/deps/<test>` or `<target>/<profile>/<bin>`).
fn target_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().context("test binary has no parent")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    dir.parent()
        .map(Path::to_path_buf)
        .context("test binary has no <target>/<profile> parent")
}
