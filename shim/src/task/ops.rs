//! The task operations that do not create or remove processes: State, Pids, Kill,
//! Pause/Resume, Update, Wait, Stats, ResizePty, CloseIO, Checkpoint, Connect, Shutdown.

use std::time::SystemTime;

use berth_proto::api::*;
use berth_proto::events::task::{TaskPaused, TaskResumed};
use berth_proto::protobuf::Message;
use berth_proto::shim::oci::{CheckpointOptions, ProcessDetails};
use berth_proto::topics::{TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC};

use crate::cgroup::Detail;
use crate::error::{Error, Result};
use crate::events::{pack, timestamp};

use super::state::Status;
use super::Service;

/// The Go zero time containerd expects for "not exited".
fn go_zero_time() -> berth_proto::protobuf::well_known_types::timestamp::Timestamp {
    let mut t = berth_proto::protobuf::well_known_types::timestamp::Timestamp::new();
    t.seconds = -62135596800;
    t
}

/// Maps a runtime kill failure as the Go shim does.
fn kill_error(e: Error) -> Error {
    let msg = e.to_string().to_lowercase();
    if msg.contains("os: process already finished")
        || msg.contains("container not running")
        || msg.contains("no such process")
    {
        Error::NotFound("process already finished".into())
    } else if msg.contains("does not exist") {
        Error::NotFound("no such container".into())
    } else {
        Error::Runtime(format!("unknown error after kill: {e}"))
    }
}

impl Service {
    pub fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let t = self.lock()?;
        let c = t.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let mut r = StateResponse::new();
        r.id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        r.bundle = c.bundle.display().to_string();
        r.pid = p.pid.max(0) as u32;
        let mut status = p.status;
        if !req.exec_id.is_empty()
            && p.status == Status::Running
            && matches!(c.init.status, Status::Paused | Status::Pausing)
        {
            status = c.init.status;
        }
        r.status = status.wire().into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        match p.exit {
            Some((code, at)) => {
                r.exit_status = code;
                r.exited_at = Some(timestamp(at)).into();
            }
            None => r.exited_at = Some(go_zero_time()).into(),
        }
        Ok(r)
    }

    pub async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let runc = self.lock()?.get(&req.id)?.runc.clone();
        let pids = runc.ps(&req.id).await?;
        let t = self.lock()?;
        let c = t.get(&req.id)?;
        let mut r = PidsResponse::new();
        for pid in pids {
            let mut pi = ProcessInfo::new();
            pi.pid = pid as u32;
            if let Some(x) = c.execs.values().find(|x| x.pid == pid && pid > 0) {
                let mut d = ProcessDetails::new();
                d.exec_id = x.id.clone();
                pi.info = Some(pack("containerd.runc.v1.ProcessDetails", &d)).into();
            }
            r.processes.push(pi);
        }
        Ok(r)
    }

    pub async fn kill(&self, req: KillRequest) -> Result<()> {
        if !req.exec_id.is_empty() {
            let t = self.lock()?;
            let x = t.get(&req.id)?.process(&req.exec_id)?;
            if x.pid == 0 {
                return Err(Error::FailedPrecondition("process not created".into()));
            }
            if x.status == Status::Stopped {
                return Err(Error::NotFound("process already finished".into()));
            }
            let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|_| Error::InvalidArgument(format!("invalid signal {}", req.signal)))?;
            return nix::sys::signal::kill(nix::unistd::Pid::from_raw(x.pid), sig).map_err(|e| {
                match e {
                    nix::errno::Errno::ESRCH => Error::NotFound("process already finished".into()),
                    e => Error::sys("kill", e),
                }
            });
        }
        let runc = {
            let t = self.lock()?;
            let c = t.get(&req.id)?;
            if c.checkpoint.is_some() && c.init.pid == 0 {
                return Err(Error::FailedPrecondition("process not created".into()));
            }
            // SIGKILL to every process of a container with its own PID namespace: the
            // kernel kills every process of a PID namespace whose init dies, so killing
            // the init is enough, without `runc kill --all` (an exec of runc, 5-10 ms of
            // every pod and container stop). The pid is signalled as an exec's is above
            // (and as containerd's shim signals its processes): only while the record
            // says Running. The init is this shim's child, so its pid stays taken until
            // the reaper reaps it, and its exit is marked Stopped right after; a pid is
            // not handed out again within that window (pids go in sequence to pid_max).
            if req.signal == libc::SIGKILL as u32
                && !c.kill_all_on_exit
                && c.init.pid > 0
                && c.init.status == Status::Running
            {
                let pid = nix::unistd::Pid::from_raw(c.init.pid);
                return match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                    Err(e) => Err(Error::sys("kill", e)),
                };
            }
            c.runc.clone()
        };
        runc.kill(&req.id, req.signal, req.all)
            .await
            .map_err(kill_error)
    }

    pub async fn pause(&self, req: PauseRequest) -> Result<()> {
        let runc = {
            let mut t = self.lock()?;
            let c = t.get_mut(&req.id)?;
            if c.init.status != Status::Running {
                return Err(Error::State(
                    format!("cannot pause a {:?} container", c.init.status).to_lowercase(),
                ));
            }
            c.init.status = Status::Pausing;
            c.runc.clone()
        };
        let r = runc.pause(&req.id).await;
        let mut t = self.lock()?;
        let c = t.get_mut(&req.id)?;
        if c.init.status == Status::Pausing {
            c.init.status = if r.is_ok() {
                Status::Paused
            } else {
                Status::Running
            };
        }
        r?;
        let mut ev = TaskPaused::new();
        ev.container_id = req.id.clone();
        self.events.publish(TASK_PAUSED_EVENT_TOPIC, &ev);
        Ok(())
    }

    pub async fn resume(&self, req: ResumeRequest) -> Result<()> {
        let runc = {
            let t = self.lock()?;
            let c = t.get(&req.id)?;
            if c.init.status != Status::Paused {
                return Err(Error::State(
                    format!("cannot resume a {:?} container", c.init.status).to_lowercase(),
                ));
            }
            c.runc.clone()
        };
        runc.resume(&req.id).await?;
        let mut t = self.lock()?;
        let c = t.get_mut(&req.id)?;
        if c.init.status == Status::Paused {
            c.init.status = Status::Running;
        }
        let mut ev = TaskResumed::new();
        ev.container_id = req.id.clone();
        self.events.publish(TASK_RESUMED_EVENT_TOPIC, &ev);
        Ok(())
    }

    pub async fn update(&self, req: UpdateTaskRequest) -> Result<()> {
        let runc = {
            let t = self.lock()?;
            let c = t.get(&req.id)?;
            if c.init.status == Status::Stopped || c.init_gone() {
                return Err(Error::State("cannot update a stopped container".into()));
            }
            c.runc.clone()
        };
        let res = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("resources are required".into()))?;
        serde_json::from_slice::<serde_json::Value>(&res.value)
            .map_err(|e| Error::InvalidArgument(format!("resources JSON: {e}")))?;
        runc.update(&req.id, res.value.clone()).await
    }

    pub async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let mut rx = {
            let t = self.lock()?;
            t.get(&req.id)?.process(&req.exec_id)?.exited.subscribe()
        };
        let (status, at) = loop {
            if let Some(v) = *rx.borrow_and_update() {
                break v;
            }
            if rx.changed().await.is_err() {
                // The process record was removed (deleted) while we waited.
                break (0, SystemTime::now());
            }
        };
        let mut r = WaitResponse::new();
        r.exit_status = status;
        r.exited_at = Some(timestamp(at)).into();
        Ok(r)
    }

    pub fn stats(&self, req: StatsRequest, detail: Detail) -> Result<StatsResponse> {
        let cg = self.lock()?.get(&req.id)?.cgroup.clone();
        let cg = cg.ok_or_else(|| Error::NotFound("cgroup does not exist".into()))?;
        let mut r = StatsResponse::new();
        r.stats = Some(cg.metrics(detail)?).into();
        Ok(r)
    }

    pub fn resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let t = self.lock()?;
        let p = t.get(&req.id)?.process(&req.exec_id)?;
        if p.status == Status::Stopped {
            return Err(Error::State("cannot resize a stopped process".into()));
        }
        match &p.io {
            Some(io) => io.resize(req.width, req.height),
            None => Ok(()),
        }
    }

    pub fn close_io(&self, req: CloseIORequest) -> Result<()> {
        let mut t = self.lock()?;
        let p = t.get_mut(&req.id)?.process_mut(&req.exec_id)?;
        if let Some(io) = p.io.as_mut() {
            io.close_stdin();
        }
        Ok(())
    }

    pub async fn checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
        let (runc, bundle) = {
            let t = self.lock()?;
            let c = t.get(&req.id)?;
            if !matches!(c.init.status, Status::Running | Status::Paused) {
                return Err(Error::State(
                    "cannot checkpoint a container that is not running".into(),
                ));
            }
            (c.runc.clone(), c.bundle.clone())
        };
        let opts = match req.options.as_ref() {
            Some(a) if a.type_url.ends_with("containerd.runc.v1.CheckpointOptions") => {
                CheckpointOptions::parse_from_bytes(&a.value)
                    .map_err(|e| Error::proto("decode CheckpointOptions", e))?
            }
            _ => CheckpointOptions::new(),
        };
        let image = if opts.image_path.is_empty() {
            req.path.clone()
        } else {
            opts.image_path.clone()
        };
        if image.is_empty() {
            return Err(Error::InvalidArgument(
                "checkpoint image path is required".into(),
            ));
        }
        let (work, temp_work) = if opts.work_path.is_empty() {
            (bundle.join("work").join("criu-work"), true)
        } else {
            (std::path::PathBuf::from(&opts.work_path), false)
        };
        let _ = std::fs::create_dir_all(&work);
        let mut a: Vec<String> = vec![
            "--image-path".into(),
            image,
            "--work-path".into(),
            work.display().to_string(),
        ];
        if !opts.exit {
            a.push("--leave-running".into());
        }
        if opts.open_tcp {
            a.push("--tcp-established".into());
        }
        if opts.external_unix_sockets {
            a.push("--ext-unix-sk".into());
        }
        if opts.terminal {
            a.push("--shell-job".into());
        }
        if opts.file_locks {
            a.push("--file-locks".into());
        }
        for ns in &opts.empty_namespaces {
            a.extend(["--empty-ns".into(), ns.clone()]);
        }
        if !opts.cgroups_mode.is_empty() {
            a.extend(["--manage-cgroups-mode".into(), opts.cgroups_mode.clone()]);
        }
        let r = runc.checkpoint(&req.id, a).await;
        if r.is_err() {
            let _ = std::fs::copy(work.join("dump.log"), bundle.join("criu-dump.log"));
        }
        if temp_work {
            let _ = std::fs::remove_dir_all(&work);
        }
        r
    }

    pub fn connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        let t = self.lock()?;
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = t
            .containers
            .get(&req.id)
            .map(|c| c.init.pid.max(0) as u32)
            .unwrap_or(0);
        Ok(r)
    }

    pub fn shutdown(&self, _req: ShutdownRequest) -> Result<()> {
        if self.lock()?.containers.is_empty() {
            self.shutdown.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_errors_map_like_go() {
        let nf = |m: &str| matches!(kill_error(Error::Runtime(m.into())), Error::NotFound(_));
        assert!(nf("OCI runtime kill failed: container not running"));
        assert!(nf("kill failed: No such process"));
        assert!(nf("os: process already finished"));
        assert!(nf("container \"x\" does not exist"));
        assert!(matches!(
            kill_error(Error::Runtime("permission denied".into())),
            Error::Runtime(_)
        ));
    }

    #[test]
    fn zero_time_is_go_zero() {
        assert_eq!(go_zero_time().seconds, -62135596800);
    }
}
