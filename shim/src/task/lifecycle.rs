//! Create, Start, Exec and Delete: the operations that run the OCI runtime and move a
//! process through Created → Running → Stopped → deleted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_proto::api::{
    CreateTaskRequest, DeleteRequest, DeleteResponse, ExecProcessRequest, StartRequest,
};
use berth_proto::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskStart,
};
use berth_proto::topics::*;

use crate::args::validate_component;
use crate::error::{Error, Result};
use crate::events::timestamp;
use crate::io::{IoOwner, Prepared, StdioSpec};
use crate::options::RuncOptions;
use crate::runc::{read_pid, Runc, SpawnOpts};

use super::exits;
use super::state::{Container, Process, Status};
use super::Service;

/// How long Delete waits for the stdio copies to drain (containerd 2.x uses 10 s).
const IO_DRAIN: Duration = Duration::from_secs(10);

impl Service {
    pub async fn create(&self, req: CreateTaskRequest) -> Result<u32> {
        validate_component("container id", &req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "bundle path must be absolute: {}",
                req.bundle
            )));
        }
        if self.lock()?.containers.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let opts = RuncOptions::from_any(req.options.as_ref())?;
        opts.persist(&bundle)?;
        let rootfs = bundle.join("rootfs");
        // berthd's idmapped volumes travel with the rootfs entries; they are not layers.
        let (mounts, volumes) = crate::mount::split_volumes(&req.rootfs)?;
        if !mounts.is_empty() {
            crate::mount::mount_rootfs(&mounts, &rootfs, &self.reaper).await?;
        }
        if let Err(e) = crate::mount::attach_volumes(&volumes, &bundle) {
            if !mounts.is_empty() {
                let _ = crate::mount::unmount_all(&rootfs);
            }
            return Err(e);
        }
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.lock()?.in_flight += 1;
        let res = self.create_inner(&req, &bundle, &opts, &stdio).await;
        // runc made the container's binds of the idmapped volumes (or failed): the host's
        // attachments can go. A restore binds at Start: its volumes stay until Delete.
        if res.is_err() || req.checkpoint.is_empty() {
            crate::mount::detach_volumes(&bundle);
        }
        let mut t = self.lock()?;
        let (runc, io, pid, cgroup) = match res {
            Ok(v) => v,
            Err(e) => {
                t.end_in_flight();
                drop(t);
                if !mounts.is_empty() {
                    let _ = crate::mount::unmount_all(&rootfs);
                }
                return Err(e);
            }
        };
        let mut init = Process::new(&req.id, stdio);
        init.pid = pid;
        init.io = io;
        let checkpoint = (!req.checkpoint.is_empty())
            .then(|| (req.checkpoint.clone(), req.parent_checkpoint.clone()));
        let c = Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            kill_all_on_exit: crate::spec::should_kill_all_on_exit(&bundle),
            opts,
            runc,
            init,
            execs: Default::default(),
            running_execs: 0,
            pending_init_exit: None,
            cgroup,
            rootfs_mounted: !mounts.is_empty(),
            checkpoint,
        };
        t.containers.insert(req.id.clone(), c);
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        ev.io = Some(tio).into();
        ev.checkpoint = req.checkpoint.clone();
        ev.pid = pid as u32;
        self.events.publish(TASK_CREATE_EVENT_TOPIC, &ev);
        tracing::info!(container_id = %req.id, pid, "created");
        // An init that died during Create is handled now, after TaskCreate.
        let job = t
            .take_early_exit(pid)
            .and_then(|e| exits::deliver(&mut t, &self.events, e));
        t.end_in_flight();
        drop(t);
        self.spawn_init_job(job);
        Ok(pid as u32)
    }

    async fn create_inner(
        &self,
        req: &CreateTaskRequest,
        bundle: &Path,
        opts: &RuncOptions,
        stdio: &StdioSpec,
    ) -> Result<(
        Runc,
        Option<crate::io::ProcessIo>,
        i32,
        Option<crate::cgroup::Cgroup>,
    )> {
        let runc = Runc::new(opts, &self.namespace, bundle, self.reaper.clone());
        if !req.checkpoint.is_empty() {
            // Restored at Start; nothing runs yet.
            return Ok((runc, None, 0, None));
        }
        let owner = IoOwner {
            uid: opts.io_uid,
            gid: opts.io_gid,
        };
        let mut prep = Prepared::new(stdio, &req.id, &self.namespace, owner, &self.reaper).await?;
        let so = SpawnOpts {
            pid_file: bundle.join("init.pid"),
            console_socket: prep.console_socket.as_ref().map(|s| s.path().to_path_buf()),
            no_pivot: opts.no_pivot_root,
            no_new_keyring: opts.no_new_keyring,
        };
        let rstdio = std::mem::take(&mut prep.stdio);
        if let Err(e) = runc.create(&req.id, bundle, &so, rstdio).await {
            let _ = runc.delete(&req.id, true).await;
            return Err(e);
        }
        crate::failpoint!("shim.create.after_runtime");
        let io = match prep.finish().await {
            Ok(io) => io,
            Err(e) => {
                let _ = runc.delete(&req.id, true).await;
                return Err(e);
            }
        };
        let pid = read_pid(&so.pid_file)?;
        let cgroup = crate::cgroup::Cgroup::for_pid(pid).ok();
        Ok((runc, Some(io), pid, cgroup))
    }

    pub async fn start(&self, req: StartRequest) -> Result<u32> {
        if req.exec_id.is_empty() {
            self.start_init(&req.id).await
        } else {
            self.start_exec(&req.id, &req.exec_id).await
        }
    }

    async fn start_init(&self, id: &str) -> Result<u32> {
        let (runc, checkpoint, bundle, opts, stdio) = {
            let mut t = self.lock()?;
            let c = t.get_mut(id)?;
            if c.init.status != Status::Created {
                return Err(Error::State(
                    format!("cannot start a {:?} process", c.init.status).to_lowercase(),
                ));
            }
            if c.init.starting {
                return Err(Error::State("process is already starting".into()));
            }
            c.init.starting = true;
            let v = (
                c.runc.clone(),
                c.checkpoint.clone(),
                c.bundle.clone(),
                c.opts.clone(),
                c.init.stdio.clone(),
            );
            t.in_flight += 1;
            v
        };
        let res = match &checkpoint {
            None => runc.start(id).await.map(|_| None),
            Some((image, parent)) => self
                .restore(id, &runc, &bundle, &opts, &stdio, image, parent)
                .await
                .map(Some),
        };
        if res.is_ok() {
            crate::failpoint!("shim.start.after_runtime");
        }
        let mut t = self.lock()?;
        let Ok(c) = t.get_mut(id) else {
            t.end_in_flight();
            return Err(Error::NotFound("container not created".into()));
        };
        c.init.starting = false;
        let restored = match res {
            Ok(r) => r,
            Err(e) => {
                t.end_in_flight();
                return Err(e);
            }
        };
        if let Some((pid, io)) = restored {
            c.init.pid = pid;
            c.init.io = Some(io);
            c.cgroup = crate::cgroup::Cgroup::for_pid(pid).ok();
            c.checkpoint = None;
        }
        let pid = c.init.pid;
        if c.init.status == Status::Created {
            c.init.status = Status::Running;
        }
        let cg = c.cgroup.clone();
        let mut ev = TaskStart::new();
        ev.container_id = id.to_string();
        ev.pid = pid as u32;
        self.events.publish(TASK_START_EVENT_TOPIC, &ev);
        tracing::info!(container_id = id, pid, "started");
        let job = t
            .take_early_exit(pid)
            .and_then(|e| exits::deliver(&mut t, &self.events, e));
        t.end_in_flight();
        drop(t);
        self.spawn_init_job(job);
        if let Some(cg) = cg {
            let events = self.events.clone();
            let cid = id.to_string();
            let watched = crate::oom::watch(&cg, move || {
                let mut ev = berth_proto::events::task::TaskOOM::new();
                ev.container_id = cid.clone();
                tracing::info!(container_id = %cid, "oom");
                events.publish(TASK_OOM_EVENT_TOPIC, &ev);
            });
            if let Err(e) = watched {
                tracing::warn!(container_id = id, error = %e, "cannot watch for OOM");
            }
        }
        Ok(pid as u32)
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore(
        &self,
        id: &str,
        runc: &Runc,
        bundle: &Path,
        opts: &RuncOptions,
        stdio: &StdioSpec,
        image: &str,
        parent: &str,
    ) -> Result<(i32, crate::io::ProcessIo)> {
        let owner = IoOwner {
            uid: opts.io_uid,
            gid: opts.io_gid,
        };
        let mut prep = Prepared::new(stdio, id, &self.namespace, owner, &self.reaper).await?;
        let pid_file = bundle.join("init.pid");
        let work = if opts.criu_work_path.is_empty() {
            bundle.join("work").display().to_string()
        } else {
            opts.criu_work_path.clone()
        };
        let mut a: Vec<String> = vec![
            "--pid-file".into(),
            pid_file.display().to_string(),
            "--image-path".into(),
            image.into(),
            "--work-path".into(),
            work,
        ];
        if !parent.is_empty() {
            a.extend(["--parent-path".into(), parent.into()]);
        }
        if opts.no_pivot_root {
            a.push("--no-pivot".into());
        }
        if let Some(s) = &prep.console_socket {
            a.extend(["--console-socket".into(), s.path().display().to_string()]);
        }
        a.extend(["--bundle".into(), bundle.display().to_string()]);
        let rstdio = std::mem::take(&mut prep.stdio);
        runc.restore(id, a, rstdio).await?;
        let io = prep.finish().await?;
        Ok((read_pid(&pid_file)?, io))
    }

    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (runc, bundle, spec, stdio, opts) = {
            let mut t = self.lock()?;
            let c = t.get_mut(id)?;
            if c.init_gone() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} init process is not running"
                )));
            }
            let (runc, bundle, opts) = (c.runc.clone(), c.bundle.clone(), c.opts.clone());
            let x = c.process_mut(exec_id)?;
            if x.status != Status::Created || x.starting || x.pid != 0 {
                return Err(Error::State(
                    "cannot start a process that is not created".into(),
                ));
            }
            x.starting = true;
            let v = (
                runc,
                bundle,
                x.spec.clone().unwrap_or_default(),
                x.stdio.clone(),
                opts,
            );
            t.in_flight += 1;
            v
        };
        let res = self
            .exec_runtime(id, exec_id, &runc, &bundle, &spec, &stdio, &opts)
            .await;
        let mut t = self.lock()?;
        let found = t
            .get_mut(id)
            .and_then(|c| c.process_mut(exec_id).map(|_| ()));
        if found.is_err() {
            t.end_in_flight();
            return Err(Error::NotFound(format!("process does not exist {exec_id}")));
        }
        let c = t.get_mut(id)?;
        let x = c.process_mut(exec_id)?;
        x.starting = false;
        let (pid, io) = match res {
            Ok(v) => v,
            Err(e) => {
                // Go quirk kept: a failed exec start releases its waiters with status 0.
                x.set_exited(0, SystemTime::now());
                t.end_in_flight();
                return Err(e);
            }
        };
        x.pid = pid;
        x.io = Some(io);
        x.status = Status::Running;
        c.running_execs += 1;
        let mut ev = TaskExecStarted::new();
        ev.container_id = id.to_string();
        ev.exec_id = exec_id.to_string();
        ev.pid = pid as u32;
        self.events.publish(TASK_EXEC_STARTED_EVENT_TOPIC, &ev);
        tracing::info!(container_id = id, exec_id, pid, "exec started");
        let job = t
            .take_early_exit(pid)
            .and_then(|e| exits::deliver(&mut t, &self.events, e));
        t.end_in_flight();
        drop(t);
        self.spawn_init_job(job);
        Ok(pid as u32)
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_runtime(
        &self,
        id: &str,
        exec_id: &str,
        runc: &Runc,
        bundle: &Path,
        spec: &[u8],
        stdio: &StdioSpec,
        opts: &RuncOptions,
    ) -> Result<(i32, crate::io::ProcessIo)> {
        let owner = IoOwner {
            uid: opts.io_uid,
            gid: opts.io_gid,
        };
        let mut prep = Prepared::new(stdio, id, &self.namespace, owner, &self.reaper).await?;
        let process_file = bundle.join(format!(".{exec_id}.process.json"));
        crate::socket::write_atomic(bundle, &format!(".{exec_id}.process.json"), spec)?;
        let so = SpawnOpts {
            pid_file: bundle.join(format!("{exec_id}.pid")),
            console_socket: prep.console_socket.as_ref().map(|s| s.path().to_path_buf()),
            ..Default::default()
        };
        let rstdio = std::mem::take(&mut prep.stdio);
        let r = runc.exec(id, &process_file, &so, rstdio).await;
        let _ = std::fs::remove_file(&process_file);
        r?;
        let io = prep.finish().await?;
        Ok((read_pid(&so.pid_file)?, io))
    }

    pub fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        validate_component("exec id", &req.exec_id)?;
        let mut t = self.lock()?;
        let c = t.get_mut(&req.id)?;
        if c.execs.contains_key(&req.exec_id) || req.exec_id == req.id {
            return Err(Error::AlreadyExists(format!("id {}", req.exec_id)));
        }
        match c.init.status {
            Status::Created | Status::Running if !c.init_gone() => {}
            s => {
                return Err(Error::State(
                    format!("cannot exec in a {s:?} state").to_lowercase(),
                ))
            }
        }
        if c.checkpoint.is_some() {
            return Err(Error::State("cannot exec in a restoring container".into()));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec spec is required".into()))?;
        let mut v: serde_json::Value =
            serde_json::from_slice(&spec.value).map_err(|e| Error::json("exec process spec", e))?;
        if !v.is_object() {
            return Err(Error::InvalidArgument(
                "exec process spec must be a JSON object".into(),
            ));
        }
        v["terminal"] = serde_json::Value::Bool(req.terminal);
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut p = Process::new(&req.exec_id, stdio);
        p.spec = Some(serde_json::to_vec(&v).map_err(|e| Error::json("exec process spec", e))?);
        c.execs.insert(req.exec_id.clone(), p);
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.events.publish(TASK_EXEC_ADDED_EVENT_TOPIC, &ev);
        Ok(())
    }

    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return self.delete_exec(&req.id, &req.exec_id).await;
        }
        let (runc, mut io, created) = {
            let mut t = self.lock()?;
            let c = t.get_mut(&req.id)?;
            match c.init.status {
                Status::Created | Status::Stopped => {}
                s => {
                    return Err(Error::State(
                        format!("cannot delete a {s:?} process").to_lowercase(),
                    ))
                }
            }
            if c.init.starting {
                return Err(Error::State("cannot delete a starting process".into()));
            }
            let created = c.init.status == Status::Created;
            (c.runc.clone(), c.init.io.take(), created)
        };
        // An exited process's output is drained first. A never-started one (runc init
        // still holding its stdio) only lets go once the runtime deletes it: draining
        // first would wait out the whole drain bound for nothing.
        if !created {
            if let Some(io) = io.as_mut() {
                io.close(IO_DRAIN).await;
            }
        }
        if let Err(e) = runc.delete(&req.id, false).await {
            if !e.to_string().contains("does not exist") {
                tracing::warn!(container_id = %req.id, error = %e, "runtime delete");
                let _ = runc.delete(&req.id, true).await;
            }
        }
        if created {
            if let Some(io) = io.as_mut() {
                io.close(IO_DRAIN).await;
            }
        }
        let mut t = self.lock()?;
        let c = t
            .containers
            .remove(&req.id)
            .ok_or_else(|| Error::NotFound("container not created".into()))?;
        drop(t);
        if c.rootfs_mounted {
            if let Err(e) = crate::mount::unmount_all(&c.bundle.join("rootfs")) {
                tracing::warn!(container_id = %req.id, error = %e, "unmount rootfs");
            }
        }
        crate::mount::detach_volumes(&c.bundle);
        let (status, at) = c.init.exit.unwrap_or((0, SystemTime::now()));
        let mut resp = DeleteResponse::new();
        resp.pid = c.init.pid as u32;
        resp.exit_status = status;
        resp.exited_at = Some(timestamp(at)).into();
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.pid = resp.pid;
        ev.exit_status = status;
        ev.exited_at = resp.exited_at.clone();
        self.events.publish(TASK_DELETE_EVENT_TOPIC, &ev);
        tracing::info!(container_id = %req.id, "deleted");
        Ok(resp)
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let (mut io, bundle) = {
            let mut t = self.lock()?;
            let c = t.get_mut(id)?;
            let bundle = c.bundle.clone();
            let x = c.process_mut(exec_id)?;
            if x.status != Status::Created && x.status != Status::Stopped {
                return Err(Error::State(
                    format!("cannot delete a {:?} process", x.status).to_lowercase(),
                ));
            }
            if x.starting {
                return Err(Error::State("cannot delete a starting process".into()));
            }
            (x.io.take(), bundle)
        };
        if let Some(io) = io.as_mut() {
            io.close(IO_DRAIN).await;
        }
        let _ = std::fs::remove_file(bundle.join(format!("{exec_id}.pid")));
        let mut t = self.lock()?;
        let c = t.get_mut(id)?;
        let x = c
            .execs
            .remove(exec_id)
            .ok_or_else(|| Error::NotFound(format!("process does not exist {exec_id}")))?;
        let (status, at) = x.exit.unwrap_or((0, SystemTime::now()));
        let mut resp = DeleteResponse::new();
        resp.pid = x.pid as u32;
        resp.exit_status = status;
        resp.exited_at = Some(timestamp(at)).into();
        Ok(resp)
    }

    /// Runs an init job returned by exit delivery outside the lock.
    fn spawn_init_job(&self, job: Option<exits::InitJob>) {
        if let Some(job) = job {
            job.spawn(self.table.clone(), self.events.clone());
        }
    }
}
