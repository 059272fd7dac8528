//! The ttrpc client of a shim's task API (and Berth's Attach and Journal services on the
//! same connection): the one place task API messages are built and read.

use std::path::PathBuf;
use std::time::Duration;

use berth_proto::api;
use berth_proto::berth_shim::{AttachClient, AttachRequest, JournalClient, ReadRequest};
use berth_proto::events::task::TaskExit;
use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::well_known_types::timestamp::Timestamp;
use berth_proto::protobuf::Message;
use berth_proto::shim_async::{Client, TaskClient};
use berth_proto::topics::TASK_EXIT_EVENT_TOPIC;
use berth_proto::ttrpc::context;

use crate::error::{Error, Result};

use super::{
    Detail, ExecIo, Exit, JournalEntry, JournalRead, NewTask, ProcessExit, Sample, TaskOptions,
    TaskShim, TaskState, TaskStatus,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls that run the OCI runtime on real work (create, start, delete with its output drain,
/// update) on a loaded node.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls a healthy shim answers at once (state, signals, registering an exec, resizes,
/// stats). A shim that takes longer is hung (stopped, wedged): the caller gets
/// DeadlineExceeded, and a stop or removal puts the shim down (`Shims::put_down`).
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected shim.
#[derive(Clone)]
pub struct Shim {
    address: String,
    client: TaskClient,
    attach: AttachClient,
    journal: JournalClient,
}

/// A protobuf timestamp in ns since the epoch. A process that has not exited carries
/// Go's zero time (year 1), which is no time at all: 0, as CRI reads an unset time.
fn ts_ns(t: &Timestamp) -> i64 {
    if t.seconds < 0 {
        return 0;
    }
    t.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.nanos))
}

fn ctx() -> context::Context {
    context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

fn quick() -> context::Context {
    context::with_timeout(QUICK_TIMEOUT.as_nanos() as i64)
}

/// The wire's exec id: "" is the init process.
fn wire(exec: Option<&str>) -> String {
    exec.unwrap_or_default().to_string()
}

/// Names a call for its error: the init's or an exec's.
fn what(init: &'static str, exec_call: &'static str, exec: Option<&str>) -> &'static str {
    if exec.is_some() {
        exec_call
    } else {
        init
    }
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
        T::RpcStatus(s) if s.code() == Code::DEADLINE_EXCEEDED => {
            Error::DeadlineExceeded(format!("{what}: {}", s.message()))
        }
        T::RpcStatus(s) => Error::Internal(format!("{what}: {}", s.message())),
        // ttrpc's own deadline (the request's timeout) ran out: the shim did not answer.
        T::Others(m) if m == "Request deadline elapsed" => Error::DeadlineExceeded(format!(
            "{what}: the pod's shim did not answer in time (hung or stopped)"
        )),
        other => Error::Internal(format!("{what}: {other}")),
    }
}

fn status(s: berth_proto::types::task::Status) -> TaskStatus {
    use berth_proto::types::task::Status as W;
    match s {
        W::CREATED => TaskStatus::Created,
        W::RUNNING => TaskStatus::Running,
        W::STOPPED => TaskStatus::Stopped,
        W::PAUSED => TaskStatus::Paused,
        W::PAUSING => TaskStatus::Pausing,
        W::UNKNOWN => TaskStatus::Unknown,
    }
}

fn options_any(o: &TaskOptions) -> Any {
    let opts = berth_proto::shim::oci::Options {
        binary_name: o.binary.clone(),
        systemd_cgroup: o.systemd_cgroup,
        ..Default::default()
    };
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: opts.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

fn json_any(type_url: &str, value: Vec<u8>) -> Any {
    Any {
        type_url: type_url.into(),
        value,
        ..Default::default()
    }
}

/// A journal entry berthd acts on: process exits, decoded; every other topic is kept
/// only for its number.
fn journal_entry(e: &berth_proto::berth_shim::Entry) -> JournalEntry {
    let exit = (e.topic == TASK_EXIT_EVENT_TOPIC)
        .then(|| TaskExit::parse_from_bytes(&e.event).ok())
        .flatten()
        .map(|ev| ProcessExit {
            exec_id: (ev.id != ev.container_id).then(|| ev.id.clone()),
            container_id: ev.container_id,
            exit: Exit {
                status: ev.exit_status,
                at: ev.exited_at.as_ref().map(ts_ns).unwrap_or_default(),
            },
        });
    JournalEntry { seq: e.seq, exit }
}

impl Shim {
    /// A Stats call with `ctx` (its metadata may ask for less), decoded.
    async fn sample(&self, id: &str, ctx: context::Context) -> Result<Sample> {
        let req = api::StatsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let r = self
            .client
            .stats(ctx, &req)
            .await
            .map_err(|e| rpc("stats", e))?;
        let any = r
            .stats
            .into_option()
            .ok_or_else(|| Error::Internal("shim returned no stats".into()))?;
        Sample::decode(&any.type_url, &any.value)
    }

    pub async fn connect(address: &str) -> Result<Shim> {
        let c = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(address))
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
}

#[async_trait::async_trait]
impl TaskShim for Shim {
    fn address(&self) -> &str {
        &self.address
    }

    async fn create(&self, t: &NewTask) -> Result<u32> {
        let req = api::CreateTaskRequest {
            id: t.id.clone(),
            bundle: t.bundle.display().to_string(),
            rootfs: t
                .rootfs
                .iter()
                .map(|m| berth_proto::types::mount::Mount {
                    type_: m.fstype.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                    ..Default::default()
                })
                .collect(),
            stdin: t.io.stdin.clone(),
            stdout: t.io.stdout.clone(),
            stderr: t.io.stderr.clone(),
            terminal: t.io.terminal,
            options: Some(options_any(&t.options)).into(),
            ..Default::default()
        };
        Ok(self
            .client
            .create(ctx(), &req)
            .await
            .map_err(|e| rpc("create task", e))?
            .pid)
    }

    async fn start(&self, id: &str, exec: Option<&str>) -> Result<u32> {
        let req = api::StartRequest {
            id: id.to_string(),
            exec_id: wire(exec),
            ..Default::default()
        };
        Ok(self
            .client
            .start(ctx(), &req)
            .await
            .map_err(|e| rpc(what("start task", "start exec", exec), e))?
            .pid)
    }

    async fn kill(&self, id: &str, exec: Option<&str>, signal: u32, all: bool) -> Result<()> {
        let req = api::KillRequest {
            id: id.to_string(),
            exec_id: wire(exec),
            signal,
            all,
            ..Default::default()
        };
        self.client
            .kill(quick(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc(what("kill task", "kill exec", exec), e))
    }

    async fn wait(&self, id: &str, exec: Option<&str>, limit: Duration) -> Result<Exit> {
        let req = api::WaitRequest {
            id: id.to_string(),
            exec_id: wire(exec),
            ..Default::default()
        };
        let ctx = context::with_timeout(limit.as_nanos() as i64);
        let r = self
            .client
            .wait(ctx, &req)
            .await
            .map_err(|e| rpc(what("wait task", "wait exec", exec), e))?;
        Ok(Exit {
            status: r.exit_status,
            at: ts_ns(&r.exited_at),
        })
    }

    async fn state(&self, id: &str) -> Result<TaskState> {
        let req = api::StateRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let r = self
            .client
            .state(quick(), &req)
            .await
            .map_err(|e| rpc("task state", e))?;
        Ok(TaskState {
            status: r
                .status
                .enum_value()
                .map(status)
                .unwrap_or(TaskStatus::Unknown),
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: ts_ns(&r.exited_at),
        })
    }

    async fn delete(&self, id: &str, exec: Option<&str>) -> Result<()> {
        let req = api::DeleteRequest {
            id: id.to_string(),
            exec_id: wire(exec),
            ..Default::default()
        };
        match self.client.delete(ctx(), &req).await {
            Ok(_) => Ok(()),
            Err(e) => match rpc(what("delete task", "delete exec", exec), e) {
                // A task already gone is deleted; an exec that vanished is the caller's news
                // (its container was removed under it).
                Error::NotFound(_) if exec.is_none() => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn exec(&self, id: &str, exec_id: &str, spec: Vec<u8>, io: &ExecIo) -> Result<()> {
        let req = api::ExecProcessRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            spec: Some(json_any(
                "types.containerd.io/opencontainers/runtime-spec/1/Process",
                spec,
            ))
            .into(),
            ..Default::default()
        };
        self.client
            .exec(quick(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("exec", e))
    }

    async fn close_stdin(&self, id: &str, exec: Option<&str>) -> Result<()> {
        let req = api::CloseIORequest {
            id: id.to_string(),
            exec_id: wire(exec),
            stdin: true,
            ..Default::default()
        };
        self.client
            .close_io(quick(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("close stdin", e))
    }

    async fn resize(&self, id: &str, exec: Option<&str>, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: id.to_string(),
            exec_id: wire(exec),
            width,
            height,
            ..Default::default()
        };
        self.client
            .resize_pty(quick(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("resize", e))
    }

    async fn attach(&self, id: &str, exec: Option<&str>, stdout: &str, stderr: &str) -> Result<()> {
        let req = AttachRequest {
            id: id.to_string(),
            exec_id: wire(exec),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            ..Default::default()
        };
        self.attach
            .attach(quick(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("attach", e))
    }

    async fn stats(&self, id: &str, detail: Detail) -> Result<Sample> {
        use berth_proto::berth_shim::{STATS_CRI, STATS_DETAIL};
        let mut ctx = quick();
        if detail == Detail::Cri {
            ctx.add(STATS_DETAIL.to_string(), STATS_CRI.to_string());
        }
        self.sample(id, ctx).await
    }

    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let req = api::UpdateTaskRequest {
            id: id.to_string(),
            resources: Some(json_any(
                "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                resources_json,
            ))
            .into(),
            ..Default::default()
        };
        self.client
            .update(ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| rpc("update", e))
    }

    async fn read_journal(&self, after: u64, wait: Duration) -> Result<JournalRead> {
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
        Ok(JournalRead {
            entries: r.entries.iter().map(journal_entry).collect(),
            first: r.first,
        })
    }

    async fn shutdown(&self, wait: bool) {
        let req = api::ShutdownRequest::default();
        let _ = self.client.shutdown(quick(), &req).await;
        if !wait {
            return;
        }
        let path = PathBuf::from(
            self.address
                .strip_prefix("unix://")
                .unwrap_or(&self.address),
        );
        // The shim removes its socket as it exits; callers wait for that so no shim
        // outlives the pod's removal. Fine-grained: an idle shim goes in a few ms. A shim
        // that nobody listens for any more (killed: its socket stays) is not waited for
        // (a stop racing a shim's death waited the whole bound here).
        for _ in 0..1500 {
            if !path.exists() || tokio::net::UnixStream::connect(&path).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, topic: &str, ev: &TaskExit) -> berth_proto::berth_shim::Entry {
        berth_proto::berth_shim::Entry {
            seq,
            topic: topic.into(),
            event: ev.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn journal_exits_are_decoded_and_other_topics_kept_by_number() {
        let mut ev = TaskExit::new();
        ev.container_id = "c1".into();
        ev.id = "c1".into();
        ev.exit_status = 137;
        ev.exited_at = Some(Timestamp {
            seconds: 2,
            nanos: 5,
            ..Default::default()
        })
        .into();
        let init = journal_entry(&entry(7, TASK_EXIT_EVENT_TOPIC, &ev));
        assert_eq!(init.seq, 7);
        let x = init.exit.unwrap();
        assert_eq!(x.container_id, "c1");
        assert_eq!(x.exec_id, None);
        assert_eq!(
            x.exit,
            Exit {
                status: 137,
                at: 2_000_000_005
            }
        );
        ev.id = "exec-1".into();
        let exec = journal_entry(&entry(8, TASK_EXIT_EVENT_TOPIC, &ev));
        assert_eq!(exec.exit.unwrap().exec_id.as_deref(), Some("exec-1"));
        let other = journal_entry(&entry(9, "/tasks/start", &ev));
        assert_eq!((other.seq, other.exit), (9, None));
    }

    #[test]
    fn go_zero_time_is_no_time() {
        let t = Timestamp {
            seconds: -62_135_596_800,
            ..Default::default()
        };
        assert_eq!(ts_ns(&t), 0);
    }

    #[test]
    fn task_statuses_map_one_to_one() {
        assert_eq!(
            status(berth_proto::types::task::Status::RUNNING),
            TaskStatus::Running
        );
        assert_eq!(
            status(berth_proto::types::task::Status::STOPPED),
            TaskStatus::Stopped
        );
        assert_eq!(
            status(berth_proto::types::task::Status::CREATED),
            TaskStatus::Created
        );
        assert_eq!(
            status(berth_proto::types::task::Status::PAUSED),
            TaskStatus::Paused
        );
    }
}
