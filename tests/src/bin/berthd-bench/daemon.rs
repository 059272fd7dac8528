//! The daemons behind the two columns: the private berthd this bench starts (config, CNI
//! bridge conflist, busybox import) and the reference containerd, with kill -9 + restart.

use super::*;
use berth_tests::berthd::{self, Berthd};
use berth_tests::cni::Bridge;

/// The private bridge and /24 of berthd's pods (no masquerading).
pub(crate) const BRIDGE: &str = "bbench0";
pub(crate) const SUBNET_PREFIX: &str = "10.231.7";

pub(crate) enum Daemon {
    Berthd(Box<Berthd>),
    Reference(reference::RefContainerd),
    /// berthd after its teardown.
    Gone,
}

impl Daemon {
    pub(crate) fn pid(&self) -> i32 {
        match self {
            Daemon::Berthd(d) => d.pid(),
            Daemon::Reference(c) => c.pid,
            Daemon::Gone => 0,
        }
    }

    /// kill -9, then the same daemon again; returns the instant just before its exec.
    pub(crate) fn kill_and_respawn(&mut self) -> Result<Instant> {
        match self {
            Daemon::Berthd(d) => {
                d.kill9()?;
                let t0 = Instant::now();
                d.respawn_nowait()?;
                Ok(t0)
            }
            Daemon::Reference(c) => c.kill_and_respawn(),
            Daemon::Gone => bail!("the daemon is gone"),
        }
    }

    /// The last line of berthd's log holding `what` (None for containerd).
    pub(crate) fn last_log_line(&self, what: &str) -> Option<String> {
        match self {
            Daemon::Berthd(d) => d
                .log()
                .lines()
                .rev()
                .find(|l| l.contains(what))
                .map(|l| l.trim().to_string()),
            _ => None,
        }
    }

    /// The last lines of the daemon's log, for error reports.
    pub(crate) fn log_tail(&self) -> String {
        let text = match self {
            Daemon::Berthd(d) => d.log(),
            Daemon::Reference(_) => {
                std::fs::read_to_string(reference::LOG_FILE).unwrap_or_default()
            }
            Daemon::Gone => String::new(),
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// `target/release/<name>`, next to this binary when it is a release build.
pub(crate) fn release_bin(name: &str) -> PathBuf {
    let here = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("release").join(name)));
    match here {
        Some(p) if p.exists() => p,
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release")
            .join(name),
    }
}

/// The release berthd and the shim it will start (berthd looks next to itself).
pub(crate) fn check_binaries() -> Result<(PathBuf, PathBuf)> {
    let bin = match std::env::var_os("BERTHD") {
        Some(p) => PathBuf::from(p),
        None => release_bin("berthd"),
    };
    let bin = std::fs::canonicalize(&bin).with_context(|| {
        format!(
            "berthd not found at {} — build it with `cargo build --release -p berthd` \
             (or set $BERTHD)",
            bin.display()
        )
    })?;
    let shim = bin.with_file_name("containerd-shim-berth-v2");
    ensure!(
        shim.is_file(),
        "{} missing — build it with `cargo shim-release`",
        shim.display()
    );
    // The tests crate's helper takes berthd from $BERTHD.
    std::env::set_var("BERTHD", &bin);
    Ok((bin, shim))
}

/// Configures berthd on a private root/state/socket with the bench's bridge conflist,
/// imports busybox while it is stopped, and starts it.
pub(crate) fn start_berthd() -> Result<(Berthd, Bridge)> {
    let link = Command::new("ip").args(["link", "show", BRIDGE]).output()?;
    ensure!(
        !link.status.success(),
        "bridge {BRIDGE} already exists (another berthd-bench running, or a leftover: \
         `ip link del {BRIDGE}`)"
    );
    let oci = oci_runtime();
    let d = Berthd::configure(&format!("[runtime]\nbinary = \"{oci}\"\n"))?;
    // Owned from here: deleted on every path, once berthd's pods are gone.
    let bridge = Bridge {
        name: BRIDGE.into(),
        prefix: SUBNET_PREFIX.into(),
    };
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berthd-bench",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": d.dir.path().join("ipam"),
                      "ranges": [[{"subnet": format!("{SUBNET_PREFIX}.0/24")}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}}
        ]
    });
    std::fs::write(
        d.cni_dir.join("10-berthd-bench.conflist"),
        conflist.to_string(),
    )?;
    d.import(&berth_tests::image::busybox(d.dir.path())?)
        .context("import busybox into berthd")?;
    let d = d.start()?;
    Ok((d, bridge))
}

/// `berthd --version` of the binary under test.
pub(crate) fn berthd_version() -> String {
    match berthd::binary() {
        Ok(b) => first_line(&b.display().to_string(), &["--version"]),
        Err(e) => format!("unavailable ({e})"),
    }
}
