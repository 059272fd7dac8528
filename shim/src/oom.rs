//! OOM watchers (cgroup v1 eventfd, v2 inotify): call back on each OOM kill in a cgroup.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};

/// Starts a task that calls `on_oom` for each OOM event in `cg` and ends once the cgroup
/// is gone. Must be called inside a tokio runtime (the current-thread flavour is fine).
pub fn watch(cg: &Cgroup, on_oom: impl Fn() + Send + Sync + 'static) -> Result<()> {
    spawn_watch(cg, on_oom).map(drop)
}

fn spawn_watch(cg: &Cgroup, on_oom: impl Fn() + Send + Sync + 'static) -> Result<JoinHandle<()>> {
    match cg {
        Cgroup::V1 { .. } => {
            let dir = cg
                .memory_dir()
                .ok_or_else(|| Error::NotFound("memory cgroup does not exist".into()))?;
            watch_v1(dir, on_oom)
        }
        Cgroup::V2 { path } => watch_v2(path.clone(), on_oom),
    }
}

/// v1: an eventfd registered for `memory.oom_control` through `cgroup.event_control`.
fn watch_v1(dir: PathBuf, on_oom: impl Fn() + Send + Sync + 'static) -> Result<JoinHandle<()>> {
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| Error::sys("eventfd", e))?;
    let control = dir.join("memory.oom_control");
    let oom_control =
        File::open(&control).map_err(|e| Error::io(format!("open {}", control.display()), e))?;
    let event_control = dir.join("cgroup.event_control");
    // One write(2): the kernel parses each write separately, so write! (several writes)
    // would hand it a lone "<efd>" and fail with EINVAL.
    let line = format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd());
    OpenOptions::new()
        .write(true)
        .open(&event_control)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| Error::io(format!("register in {}", event_control.display()), e))?;
    // The kernel holds its own references from here on; memory.oom_control may close.
    drop(oom_control);
    // SAFETY: EventFd owns its descriptor (an OwnedFd it never replaces), so as_raw_fd()
    // names the same open eventfd for as long as the AsyncFd owns it.
    let afd = unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) }
        .map_err(|e| Error::io("register eventfd with tokio", e.into()))?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(e) => return tracing::warn!(error = %e, "oom eventfd poll failed"),
            };
            match guard.try_io(|fd| fd.get_ref().read().map_err(std::io::Error::from)) {
                Ok(Ok(_count)) => {}
                Ok(Err(e)) => return tracing::warn!(error = %e, "oom eventfd read failed"),
                Err(_would_block) => continue,
            }
            // The kernel also signals the eventfd when the cgroup is removed: that is our end.
            if !dir.exists() {
                return;
            }
            on_oom();
        }
    }))
}

/// Inotify only implements `AsFd`; `AsyncFd` wants `AsRawFd`.
struct Notify(Inotify);

impl AsRawFd for Notify {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// v2: inotify IN_MODIFY on `memory.events` and `cgroup.events`.
fn watch_v2(dir: PathBuf, on_oom: impl Fn() + Send + Sync + 'static) -> Result<JoinHandle<()>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| Error::sys("inotify_init", e))?;
    for name in ["memory.events", "cgroup.events"] {
        let file = dir.join(name);
        ino.add_watch(&file, AddWatchFlags::IN_MODIFY)
            .map_err(|e| Error::sys(format!("inotify watch {}", file.display()), e))?;
    }
    // Kills that happened before the watch began are not ours to report.
    let mut last = read_oom_kill(&dir).unwrap_or(0);
    // SAFETY: Inotify owns its descriptor (an OwnedFd it never replaces), so as_raw_fd()
    // names the same open inotify instance for as long as the AsyncFd owns it.
    let afd = unsafe { AsyncFd::register_with_interest(Notify(ino), Interest::READABLE) }
        .map_err(|e| Error::io("register inotify with tokio", e.into()))?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(e) => return tracing::warn!(error = %e, "oom inotify poll failed"),
            };
            match guard.try_io(|n| n.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(_events)) => {}
                Ok(Err(e)) => return tracing::warn!(error = %e, "oom inotify read failed"),
                Err(_would_block) => continue,
            }
            let Some(kills) = read_oom_kill(&dir) else {
                return; // memory.events vanished: the cgroup is gone
            };
            if kills > last {
                on_oom();
            }
            last = last.max(kills);
            match std::fs::read_to_string(dir.join("cgroup.events")) {
                Ok(s) if populated(&s) == Some(false) => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }))
}

fn read_oom_kill(dir: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join("memory.events")).ok()?;
    Some(crate::cgroup::parse_memory_events(&s).oom_kill)
}

/// The `populated` key of `cgroup.events`; `None` if absent (e.g. a half-written file).
fn populated(cgroup_events: &str) -> Option<bool> {
    cgroup_events
        .lines()
        .find_map(|l| match l.split_once(' ')? {
            ("populated", v) => Some(v.trim() != "0"),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    fn counter() -> (
        impl Fn() + Send + Sync + 'static,
        mpsc::UnboundedReceiver<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            move || {
                let _ = tx.send(());
            },
            rx,
        )
    }

    #[test]
    fn populated_key() {
        assert_eq!(populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(populated("frozen 0\npopulated 0\n"), Some(false));
        assert_eq!(populated(""), None);
    }

    /// v2 on a fake cgroup directory: inotify works on any file, so no v2 controller is needed.
    #[tokio::test(flavor = "current_thread")]
    async fn v2_reports_new_kills_and_stops_when_unpopulated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write =
            |name: &str, body: &str| std::fs::write(dir.path().join(name), body).expect("write");
        write("memory.events", "low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n");
        write("cgroup.events", "populated 1\nfrozen 0\n");
        let (on_oom, mut rx) = counter();
        let task = spawn_watch(
            &Cgroup::V2 {
                path: dir.path().into(),
            },
            on_oom,
        )
        .expect("watch");
        tokio::task::yield_now().await;
        write("memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n");
        timeout(WAIT, rx.recv())
            .await
            .expect("oom reported")
            .expect("sender alive");
        write("memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n");
        write("cgroup.events", "populated 0\nfrozen 0\n");
        timeout(WAIT, task)
            .await
            .expect("watcher ended")
            .expect("no panic");
        assert!(
            rx.try_recv().is_err(),
            "unchanged oom_kill must not be reported"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_cgroup_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("gone");
        let v1 = Cgroup::V1 {
            paths: HashMap::from([("memory".to_string(), gone.clone())]),
        };
        assert!(watch(&v1, || {}).is_err());
        assert!(watch(&Cgroup::V2 { path: gone }, || {}).is_err());
        let no_memory = Cgroup::V1 {
            paths: HashMap::new(),
        };
        assert!(matches!(watch(&no_memory, || {}), Err(Error::NotFound(_))));
    }

    /// Removes the test cgroup even when an assertion fails.
    struct TestCgroup(PathBuf);
    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for _ in 0..50 {
                if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("leaked test cgroup {}", self.0.display());
        }
    }

    /// Real cgroup v1 OOM: a child allocating 64 MiB in an 8 MiB memory cgroup.
    #[tokio::test(flavor = "current_thread")]
    async fn v1_real_oom_kill() {
        let mem_root = match Cgroup::for_pid(std::process::id() as i32) {
            Ok(Cgroup::V1 { paths }) if nix::unistd::geteuid().is_root() => paths
                .get("memory")
                .and_then(|p| {
                    p.ancestors()
                        .find(|a| a.join("cgroup.sane_behavior").exists())
                })
                .map(Path::to_path_buf),
            _ => None,
        };
        let Some(mem_root) = mem_root else {
            return eprintln!("skipped: needs root and a cgroup v1 memory hierarchy");
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cg = TestCgroup(mem_root.join(format!("berth-oomtest-{}-{n}", std::process::id())));
        std::fs::create_dir(&cg.0).expect("mkdir cgroup");
        let set = |f: &str, v: &str| std::fs::write(cg.0.join(f), v).expect(f);
        set("memory.limit_in_bytes", "8388608");
        if cg.0.join("memory.memsw.limit_in_bytes").exists() {
            set("memory.memsw.limit_in_bytes", "8388608");
        }
        let (on_oom, mut rx) = counter();
        let paths = HashMap::from([("memory".to_string(), cg.0.clone())]);
        let task = spawn_watch(&Cgroup::V1 { paths }, on_oom).expect("watch");
        let procs = cg.0.join("cgroup.procs");
        // tail keeps the whole newline-free "last line" in memory: 64 MiB.
        let script = format!(
            "echo $$ > '{}' && head -c 64M /dev/zero | tail",
            procs.display()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .expect("run child");
        assert!(
            !status.success(),
            "child should have been OOM-killed: {status}"
        );
        timeout(WAIT, rx.recv())
            .await
            .expect("oom reported")
            .expect("sender alive");
        std::fs::remove_dir(&cg.0).expect("rmdir cgroup");
        timeout(WAIT, task)
            .await
            .expect("watcher ended with the cgroup")
            .expect("no panic");
    }
}
