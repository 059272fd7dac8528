//! The shim's one reaper: a SIGCHLD loop calling `wait4(-1, WNOHANG)` and broadcasting
//! every exit to subscribers. Callers subscribe *before* they spawn, so a fast exit is
//! never lost and nobody else's `waitpid` steals a status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// One reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// Exit code, or 128 + signal number for a signal death.
    pub status: u32,
    pub at: SystemTime,
}

type Subs = Mutex<Vec<(u64, UnboundedSender<Exit>)>>;

/// The process-wide exit broadcaster (one per daemon, passed around explicitly).
#[derive(Default)]
pub struct Reaper {
    subs: Subs,
    next: AtomicU64,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    reaper: Arc<Reaper>,
    pub rx: UnboundedReceiver<Exit>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut s) = self.reaper.subs.lock() {
            s.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Subscription {
    /// Waits for the exit of `pid`, skipping everyone else's.
    pub async fn wait_for(&mut self, pid: i32) -> Option<Exit> {
        while let Some(e) = self.rx.recv().await {
            if e.pid == pid {
                return Some(e);
            }
        }
        None
    }
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reap loop on the current runtime.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        // Register the handler before anything is spawned, then reap once in case a child
        // exited before registration.
        let mut sig = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sig.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.subs.lock() {
            s.push((id, tx));
        }
        Subscription {
            id,
            reaper: self.clone(),
            rx,
        }
    }

    /// Why a loop: signals coalesce, so one SIGCHLD may stand for many exits.
    fn reap_all(&self) {
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => Exit {
                    pid: pid.as_raw(),
                    status: code as u32,
                    at: SystemTime::now(),
                },
                Ok(WaitStatus::Signaled(pid, sig, _)) => Exit {
                    pid: pid.as_raw(),
                    status: 128 + sig as u32,
                    at: SystemTime::now(),
                },
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            self.publish(exit);
        }
    }

    fn publish(&self, exit: Exit) {
        if let Ok(mut s) = self.subs.lock() {
            s.retain(|(_, tx)| tx.send(exit).is_ok());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `wait4(-1)` loop would steal the children of other tests running in this
    /// process, so the body runs in a re-executed copy of the test binary.
    #[test]
    fn exit_codes_and_signals() {
        if std::env::var_os("BERTH_REAPER_CHILD").is_some() {
            return child_body();
        }
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "reaper::tests::exit_codes_and_signals",
                "--exact",
                "--nocapture",
            ])
            .env("BERTH_REAPER_CHILD", "1")
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[allow(clippy::zombie_processes)] // the reaper under test collects them
    fn child_body() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = Reaper::start().unwrap();
            let mut sub = r.subscribe();
            let c = std::process::Command::new("sh")
                .args(["-c", "exit 3"])
                .spawn()
                .unwrap();
            assert_eq!(sub.wait_for(c.id() as i32).await.unwrap().status, 3);
            let c = std::process::Command::new("sh")
                .args(["-c", "kill -9 $$"])
                .spawn()
                .unwrap();
            assert_eq!(sub.wait_for(c.id() as i32).await.unwrap().status, 137);
            // A subscriber that arrives late does not see earlier exits; one that
            // subscribed first sees them all, in order.
            let mut late = r.subscribe();
            let a = std::process::Command::new("true").spawn().unwrap().id() as i32;
            let b = std::process::Command::new("false").spawn().unwrap().id() as i32;
            let mut got = vec![];
            while got.len() < 2 {
                let e = late.rx.recv().await.unwrap();
                if e.pid == a || e.pid == b {
                    got.push((e.pid, e.status));
                }
            }
            got.sort();
            let mut want = vec![(a, 0), (b, 1)];
            want.sort();
            assert_eq!(got, want);
        });
    }
}
