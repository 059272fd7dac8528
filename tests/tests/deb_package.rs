//! The `berth` Debian package (docs/packaging.md), as an operator gets it: its file list
//! and modes, its control fields and conffile, the shim built as shipped (static,
//! non-PIE); installed with dpkg into a scratch root (`dpkg --root`, dependencies not
//! checked there), the installed berthd, shim and berth-pause run a pod (berthd with a
//! private config naming the installed shim); `berth-torture --help` explains itself;
//! purged, nothing of it is left, running or mounted. Nothing is installed on the host.
//!
//! The package is `$BERTH_DEB` (tests/run.sh builds it once, with
//! daemon/packaging/build-deb.sh); without it this test runs that script itself, which
//! takes a release build (minutes the first time).

use anyhow::{bail, ensure, Result};
use berth_tests::berthd::Berthd;
use berth_tests::cri::container_config;
use berth_tests::pod::Pod;
use berth_tests::{cmd, image, leaks, procs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The package under test.
fn package() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_DEB") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "BERTH_DEB={} is not a file", p.display());
        return Ok(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/packaging/build-deb.sh");
    eprintln!(
        "deb_package: no BERTH_DEB: building the package with {}",
        script.display()
    );
    let out = cmd::run(Command::new("bash").arg(&script), Duration::from_secs(3600))?;
    ensure!(
        out.code == 0,
        "build-deb.sh failed ({}):\n{}",
        out.code,
        out.stderr
    );
    let path = out.stdout.lines().last().unwrap_or("").trim().to_string();
    ensure!(Path::new(&path).is_file(), "build-deb.sh printed {path:?}");
    Ok(path.into())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = cmd::run(Command::new(program).args(args), Duration::from_secs(120))?;
    ensure!(
        out.code == 0,
        "{program} {args:?}: exit {}\n{}{}",
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(out.stdout)
}

/// `dpkg-deb -c`: (path, mode string, owner) of each entry.
fn contents(deb: &Path) -> Result<Vec<(String, String, String)>> {
    let text = run("dpkg-deb", &["-c", &deb.display().to_string()])?;
    let mut files = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() >= 6, "dpkg-deb -c line {line:?}");
        let path = f[5].trim_start_matches('.').to_string();
        files.push((path, f[0].to_string(), f[1].to_string()));
    }
    Ok(files)
}

/// Whether an ELF executable is static and non-PIE: type EXEC, no PT_INTERP.
fn static_non_pie(bin: &Path) -> Result<bool> {
    let b = std::fs::read(bin)?;
    ensure!(
        b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2,
        "not a 64-bit ELF"
    );
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let e_type = u16_at(16);
    let phoff = u64::from_le_bytes(b[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) == 3
    });
    Ok(e_type == 2 && !interp)
}

/// Processes whose executable lies under `root`.
fn running_from(root: &Path) -> Vec<procs::Proc> {
    procs::all()
        .into_iter()
        .filter(|p| p.exe.as_ref().is_some_and(|e| e.starts_with(root)))
        .collect()
}

#[test]
fn the_package_installs_runs_a_pod_and_purges_clean() -> Result<()> {
    let deb = package()?;
    let debs = deb.display().to_string();

    // What it holds, with which modes.
    let files = contents(&deb)?;
    let mode_of = |path: &str| {
        files
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, m, o)| (m.as_str(), o.as_str()))
    };
    for (path, mode) in [
        ("/usr/bin/berthd", "-rwxr-xr-x"),
        ("/usr/bin/berthctl", "-rwxr-xr-x"),
        ("/usr/bin/containerd-shim-berth-v2", "-rwxr-xr-x"),
        ("/usr/bin/berth-pause", "-rwxr-xr-x"),
        ("/usr/bin/berth-torture", "-rwxr-xr-x"),
        ("/lib/systemd/system/berthd.service", "-rw-r--r--"),
        ("/etc/berth/config.toml", "-rw-r--r--"),
        ("/usr/share/doc/berth/README.md", "-rw-r--r--"),
        ("/usr/share/doc/berth/berthd.md", "-rw-r--r--"),
        ("/usr/share/doc/berth/packaging.md", "-rw-r--r--"),
        ("/usr/share/doc/berth/crash-recovery.md", "-rw-r--r--"),
    ] {
        // Owned by root (listed by id or by name, as the tar was written).
        let got = mode_of(path);
        ensure!(
            matches!(got, Some((m, "0/0" | "root/root")) if m == mode),
            "{path}: {got:?}, want {mode} owned by root"
        );
    }
    // Every doc page goes along.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    for page in berth_tests::host::names_in(&docs) {
        let path = format!("/usr/share/doc/berth/{page}");
        ensure!(mode_of(&path).is_some(), "{path} not in the package");
    }
    let control = run("dpkg-deb", &["-f", &debs, "Package", "Depends"])?;
    ensure!(control.contains("Package: berth\n"), "{control}");
    for dep in ["runc | crun", "containernetworking-plugins", "libc6"] {
        ensure!(control.contains(dep), "Depends lacks {dep}: {control}");
    }
    let conffiles = run("dpkg-deb", &["-I", &debs, "conffiles"])?;
    ensure!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/berth/config.toml"),
        "conffiles: {conffiles:?}"
    );

    // Installed into a scratch root: its own dpkg database, nothing on the host.
    let scratch = tempfile::Builder::new()
        .prefix("berth-deb-")
        .tempdir_in("/tmp")?;
    let root = scratch.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    let roots = root.display().to_string();
    run(
        "dpkg",
        &["--root", &roots, "--force-depends", "--install", &debs],
    )?;
    let status = run("dpkg", &["--root", &roots, "-s", "berth"])?;
    ensure!(status.contains("Status: install ok installed"), "{status}");
    let bin = root.join("usr/bin");
    ensure!(
        static_non_pie(&bin.join("containerd-shim-berth-v2"))?,
        "the shim is not built as shipped (static, non-PIE)"
    );
    // The conffile is berthd's built-in default.
    let berthd = bin.join("berthd");
    let defaults = run(&berthd.display().to_string(), &["config", "default"])?;
    ensure!(
        std::fs::read_to_string(root.join("etc/berth/config.toml"))? == defaults,
        "/etc/berth/config.toml differs from `berthd config default`"
    );
    let help = run(
        &bin.join("berth-torture").display().to_string(),
        &["--help"],
    )?;
    for word in [
        "--socket",
        "--daemon",
        "--image",
        "--failpoints",
        "EXIT STATUS",
    ] {
        ensure!(
            help.contains(word),
            "berth-torture --help lacks {word}:\n{help}"
        );
    }

    // The installed binaries run a pod: berthd from the scratch root with a private
    // config, the shim named there, berth-pause found next to berthd.
    let shim = bin.join("containerd-shim-berth-v2");
    let d = Berthd::builder()
        .binary(&berthd)
        .busybox()
        .config(&format!("[runtime]\nshim = \"{}\"\n", shim.display()))
        .start()?;
    d.in_pod(d.pod_config("from-deb"), async |pod: &Pod| {
        let shims = procs::shims_of(&d.socket.display().to_string());
        ensure!(
            shims.len() == 1 && shims[0].exe.as_deref() == Some(shim.as_path()),
            "the pod's shim is not the installed one: {shims:?}"
        );
        let out = pod
            .run_and_remove(container_config(
                "hello",
                image::BUSYBOX_IMAGE,
                &["echo", "hello from the package"],
            ))
            .await?;
        ensure!(
            out.code == 0 && out.stdout == "hello from the package\n",
            "{out:?}"
        );
        Ok(())
    })?;
    d.finish()?;

    // Purged: nothing of it left, running or mounted.
    run("dpkg", &["--root", &roots, "--purge", "berth"])?;
    for path in [
        "usr/bin/berthd",
        "usr/bin/berthctl",
        "usr/bin/containerd-shim-berth-v2",
        "etc/berth/config.toml",
        "lib/systemd/system/berthd.service",
        "usr/share/doc/berth",
    ] {
        ensure!(!root.join(path).exists(), "{path} left after purge");
    }
    let left = running_from(&root);
    if !left.is_empty() {
        for p in &left {
            let _ = procs::signal(p.pid, libc::SIGKILL);
        }
        bail!("processes of the package still running: {left:?}");
    }
    let mounts = leaks::mounts_under(&root);
    ensure!(
        mounts.is_empty(),
        "mounts left under the scratch root: {mounts:?}"
    );
    Ok(())
}
