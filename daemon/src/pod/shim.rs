//! A pod's shim: starting `containerd-shim-berth-v2` for the pod (its `start` action) and
//! the ttrpc task client berthd drives it with.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_proto::api;
use berth_proto::berth_shim::{AttachClient, AttachRequest, JournalClient, ReadRequest};
use berth_proto::shim_async::{Client, TaskClient};
use berth_proto::ttrpc::context;

use crate::error::{Error, Result};

/// The containerd namespace berthd's shims run in (it names their runc root subdir).
pub const NAMESPACE: &str = "berth";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the shim binary: the configured path, else next to berthd, else on $PATH.
pub fn locate(configured: &str) -> Result<PathBuf> {
    if !configured.is_empty() {
        let p = PathBuf::from(configured);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Config(format!("shim {configured} does not exist")))
        };
    }
    let name = "containerd-shim-berth-v2";
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| Error::Config(format!("{name} not found next to berthd or on $PATH")))
}

/// What every task of berthd's runs with: the OCI runtime binary and cgroup driver
/// (sent as `containerd.runc.v1.Options`, as containerd's CRI does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOptions {
    pub binary: String,
    pub systemd_cgroup: bool,
}

impl TaskOptions {
    fn to_any(&self) -> berth_proto::protobuf::well_known_types::any::Any {
        use berth_proto::protobuf::Message;
        let o = berth_proto::shim::oci::Options {
            binary_name: self.binary.clone(),
            systemd_cgroup: self.systemd_cgroup,
            ..Default::default()
        };
        berth_proto::protobuf::well_known_types::any::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// A process's stdio as the shim takes it: stdin a FIFO path, stdout/stderr FIFO paths
/// or a `cri-log://` URI ("" = none), and whether it has a terminal.
#[derive(Debug, Clone, Default)]
pub struct ExecIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A connected shim.
#[derive(Clone)]
pub struct Shim {
    pub address: String,
    client: TaskClient,
    /// Berth's extension services on the same connection (`berth.shim.v1.Attach`,
    /// `berth.shim.v1.Journal`).
    attach: AttachClient,
    journal: JournalClient,
}

/// A protobuf timestamp in ns since the epoch; saturating, because a process that has
/// not exited carries Go's zero time (year 1), which overflows i64 nanoseconds.
pub fn ts_ns(t: &berth_proto::protobuf::well_known_types::timestamp::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.nanos))
}

fn ctx() -> context::Context {
    context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

fn rpc(what: &str, e: berth_proto::ttrpc::Error) -> Error {
    use berth_proto::ttrpc::{Code, Error as T};
    match e {
        T::RpcStatus(s) if s.code() == Code::NOT_FOUND => {
            Error::NotFound(format!("{what}: {}", s.message()))
        }
        T::RpcStatus(s) if s.code() == Code::FAILED_PRECONDITION => {
            Error::FailedPrecondition(format!("{what}: {}", s.message()))
        }
        T::RpcStatus(s) if s.code() == Code::ALREADY_EXISTS => {
            Error::AlreadyExists(format!("{what}: {}", s.message()))
        }
        T::RpcStatus(s) => Error::Internal(format!("{what}: {}", s.message())),
        other => Error::Internal(format!("{what}: {other}")),
    }
}

impl Shim {
    /// Runs the shim's `start` action in `bundle` (grouping by the config's sandbox-id
    /// annotation makes every container of a pod share one shim) and connects to it.
    /// `grpc_address` must be the same for every container of a pod: the socket name
    /// is derived from it.
    pub async fn start(
        binary: &Path,
        bundle: &Path,
        id: &str,
        grpc_address: &Path,
    ) -> Result<Shim> {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(["-namespace", NAMESPACE, "-id", id, "-address"])
            .arg(grpc_address)
            .arg("start")
            .current_dir(bundle)
            // No TTRPC_ADDRESS: berthd learns of exits through Wait, not forwarded events.
            .env_remove("TTRPC_ADDRESS")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
            .await
            .map_err(|_| Error::Internal(format!("shim start for {id} timed out")))?
            .map_err(|e| Error::io(format!("run {}", binary.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::Internal(format!(
                "shim start for {id} failed: {} {}",
                text,
                err.trim()
            )));
        }
        Shim::connect(&text).await
    }

    pub async fn connect(address: &str) -> Result<Shim> {
        let c = tokio::time::timeout(Duration::from_secs(5), Client::connect(address))
            .await
            .map_err(|_| Error::Internal(format!("connect {address}: timed out")))?
            .map_err(|e| Error::Internal(format!("connect {address}: {e}")))?;
        Ok(Shim {
            address: address.to_string(),
            client: TaskClient::new(c.clone()),
            attach: AttachClient::new(c.clone()),
            journal: JournalClient::new(c),
        })
    }

    /// Creates a task; the shim mounts `rootfs` (if any) at the bundle's rootfs and wires
    /// its stdio as `io` says (all empty = null IO).
    pub async fn create_with_rootfs(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: Vec<api::Mount>,
        io: &ExecIo,
        opts: &TaskOptions,
    ) -> Result<u32> {
        let req = api::CreateTaskRequest {
            id: id.to_string(),
            bundle: bundle.display().to_string(),
            rootfs,
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            options: Some(opts.to_any()).into(),
            ..Default::default()
        };
        Ok(self
            .client
            .create(ctx(), &req)
            .await
            .map_err(|e| rpc("create task", e))?
            .pid)
    }

    /// Adds FIFOs (read ends open, "" = none) that get a copy of a running process's
    /// output from now on; the shim closes them when the output ends.
    pub async fn attach(&self, id: &str, exec_id: &str, stdout: &str, stderr: &str) -> Result<()> {
        let req = AttachRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            ..Default::default()
        };
        self.attach
            .attach(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("attach", e))
    }

    pub async fn start_task(&self, id: &str) -> Result<u32> {
        self.start_exec(id, "").await
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        self.kill_process(id, "", signal, all).await
    }

    /// Waits for the task's exit; `limit` bounds the wait. Returns (status, exit time ns).
    pub async fn wait(&self, id: &str, limit: Duration) -> Result<(u32, i64)> {
        let r = self.wait_process(id, "", limit).await?;
        Ok((r.exit_status, ts_ns(&r.exited_at)))
    }

    pub async fn state(&self, id: &str) -> Result<api::StateResponse> {
        let req = api::StateRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.client
            .state(ctx(), &req)
            .await
            .map_err(|e| rpc("task state", e))
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        let req = api::DeleteRequest {
            id: id.to_string(),
            ..Default::default()
        };
        match self.client.delete(ctx(), &req).await {
            Ok(_) => Ok(()),
            Err(e) => match rpc("delete task", e) {
                Error::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Registers an exec process with all of its stdio (FIFO paths, "" = none) and tty.
    pub async fn exec_io(&self, id: &str, exec_id: &str, spec: Vec<u8>, io: &ExecIo) -> Result<()> {
        let mut any = berth_proto::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = spec;
        let req = api::ExecProcessRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            spec: Some(any).into(),
            ..Default::default()
        };
        self.client
            .exec(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("exec", e))
    }

    /// Closes a process's stdin (the shim holds the FIFO open until told).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = api::CloseIORequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
            ..Default::default()
        };
        self.client
            .close_io(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("close stdin", e))
    }

    /// Resizes an exec process's terminal.
    pub async fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        self.client
            .resize_pty(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("resize", e))
    }

    pub async fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        Ok(self
            .client
            .start(ctx(), &req)
            .await
            .map_err(|e| {
                rpc(
                    if exec_id.is_empty() {
                        "start task"
                    } else {
                        "start exec"
                    },
                    e,
                )
            })?
            .pid)
    }

    pub async fn wait_exec(&self, id: &str, exec_id: &str, limit: Duration) -> Result<u32> {
        Ok(self.wait_process(id, exec_id, limit).await?.exit_status)
    }

    /// Wait for the init (`exec_id` "") or an exec, bounded by `limit`.
    async fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        limit: Duration,
    ) -> Result<api::WaitResponse> {
        let req = api::WaitRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let ctx = context::with_timeout(limit.as_nanos() as i64);
        let what = if exec_id.is_empty() {
            "wait task"
        } else {
            "wait exec"
        };
        self.client.wait(ctx, &req).await.map_err(|e| rpc(what, e))
    }

    /// The shim's journal entries after `after` (waiting up to `wait` for one), and the
    /// oldest number it still keeps.
    pub async fn read_journal(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<(Vec<berth_proto::berth_shim::Entry>, u64)> {
        let req = ReadRequest {
            after,
            wait_ms: wait.as_millis() as u32,
            ..Default::default()
        };
        let ctx = context::with_timeout((wait + CALL_TIMEOUT).as_nanos() as i64);
        let r = self
            .journal
            .read(ctx, &req)
            .await
            .map_err(|e| rpc("read journal", e))?;
        Ok((r.entries, r.first))
    }

    pub async fn kill_exec(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        self.kill_process(id, exec_id, signal, false).await
    }

    /// Kill for the init (`exec_id` "", optionally every process) or an exec.
    async fn kill_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = api::KillRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        let what = if exec_id.is_empty() {
            "kill task"
        } else {
            "kill exec"
        };
        self.client
            .kill(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc(what, e))
    }

    pub async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = api::DeleteRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.client
            .delete(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("delete exec", e))
    }

    /// The task's cgroup metrics (an Any of containerd's cgroups v1 or v2 Metrics).
    pub async fn stats(
        &self,
        id: &str,
    ) -> Result<berth_proto::protobuf::well_known_types::any::Any> {
        let req = api::StatsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let r = self
            .client
            .stats(ctx(), &req)
            .await
            .map_err(|e| rpc("stats", e))?;
        r.stats
            .into_option()
            .ok_or_else(|| Error::Internal("shim returned no stats".into()))
    }

    /// Applies new resources (OCI LinuxResources JSON) to a running task.
    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let mut any = berth_proto::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = resources_json;
        let req = api::UpdateTaskRequest {
            id: id.to_string(),
            resources: Some(any).into(),
            ..Default::default()
        };
        self.client
            .update(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("update", e))
    }

    /// Asks the shim to exit (it does only once it serves no container). With `wait`
    /// (the caller knows no task is left), waits (bounded) until its socket is gone, so
    /// callers never return with a shim still winding down.
    pub async fn shutdown(self, wait: bool) {
        let req = api::ShutdownRequest::default();
        let _ = self.client.shutdown(ctx(), &req).await;
        let path = PathBuf::from(
            self.address
                .strip_prefix("unix://")
                .unwrap_or(&self.address),
        );
        drop(self.client);
        if !wait {
            return;
        }
        // The shim removes its socket as it exits; callers wait for that so no shim
        // outlives the pod's removal. Fine-grained: an idle shim goes in a few ms.
        for _ in 0..1500 {
            if !path.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
