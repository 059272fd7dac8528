//! The console socket runc hands a pty master through cannot be taken by another local
//! user. The shim used to make it in `$TMPDIR/berth-pty-<shim pid>-<n>`, accepting a dir
//! that already existed: a user who made those names first owned the dir, could swap
//! `pty.sock`, and received the pty master of a root shell in the container (`kubectl
//! exec -it`). Here an "attacker" (uid 65534) makes every such name for the running shim,
//! each with a listening `pty.sock`, before a tty exec: the exec must work, and no
//! attacker dir may be used, changed or connected to.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use berth_tests::{Instance, Runtime, Setup};

const NOBODY: u32 = 65534;

/// Where the shim process makes console sockets: $XDG_RUNTIME_DIR, else $TMPDIR, else /tmp.
fn console_base(pid: i32) -> Result<PathBuf> {
    let env = std::fs::read(format!("/proc/{pid}/environ"))?;
    let var = |k: &str| {
        env.split(|b| *b == 0).find_map(|kv| {
            kv.strip_prefix(format!("{k}=").as_bytes())
                .map(|v| PathBuf::from(OsStr::from_bytes(v)))
        })
    };
    Ok(var("XDG_RUNTIME_DIR")
        .or_else(|| var("TMPDIR"))
        .unwrap_or_else(|| PathBuf::from("/tmp")))
}

struct Trap {
    dir: PathBuf,
    ino: u64,
    listener: UnixListener,
}

impl Trap {
    /// A dir and listening socket as the attacker would make them.
    fn set(dir: PathBuf) -> Result<Trap> {
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let sock = dir.join("pty.sock");
        let listener = UnixListener::bind(&sock)?;
        listener.set_nonblocking(true)?;
        for p in [&dir, &sock] {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let ino = std::fs::metadata(&dir)?.ino();
        Ok(Trap { dir, ino, listener })
    }

    /// What the shim did with the attacker's dir, if anything.
    fn sprung(&self) -> Option<String> {
        let md = match std::fs::metadata(&self.dir) {
            Ok(md) => md,
            Err(e) => return Some(format!("removed ({e})")),
        };
        if md.ino() != self.ino {
            return Some("replaced".into());
        }
        if md.mode() & 0o7777 != 0o755 || md.uid() != NOBODY {
            return Some(format!("mode {:o} uid {}", md.mode() & 0o7777, md.uid()));
        }
        if !self.dir.join("pty.sock").exists() {
            return Some("its socket removed".into());
        }
        self.listener
            .accept()
            .ok()
            .map(|_| "its socket got a connection".to_string())
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_tty_exec_never_uses_a_console_dir_another_user_made() -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let id = inst.new_id("pty");
    ctr.run_detached(&[], &id, &["sleep", "600"])?;
    let shim = inst.shims().first().context("no shim running")?.pid;
    let base = console_base(shim)?;
    let traps = (0..8)
        .map(|n| Trap::set(base.join(format!("berth-pty-{shim}-{n}"))))
        .collect::<Result<Vec<_>>>()?;
    let out = ctr.exec(&id, "e1", true, &["sh", "-c", "tty; echo tty-ok; exit 3"]);
    let sprung: Vec<String> = traps
        .iter()
        .filter_map(|t| {
            t.sprung()
                .map(|what| format!("{}: {what}", t.dir.display()))
        })
        .collect();
    drop(traps);
    let out = out?;
    ensure!(
        sprung.is_empty(),
        "the shim used console dirs another user made: {sprung:?}"
    );
    ensure!(
        out.code == 3 && out.stdout.contains("/dev/pts/") && out.stdout.contains("tty-ok"),
        "tty exec: {out:?}\n{}",
        inst.log_tail(30)
    );
    ctr.kill_and_delete(&id)?;
    inst.finish()
}
