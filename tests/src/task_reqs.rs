//! Task API requests built in one line (exec, start, wait, delete, kill, shutdown, runc
//! options in an Any) and protobuf timestamps, for suites that talk to a shim directly.

use anyhow::{Context, Result};
use berth_proto::api;
use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::{Message, MessageField};
use serde_json::json;

/// An exec process spec (OCI `Process` JSON in an Any, as containerd sends it).
pub fn exec_req(id: &str, exec_id: &str, args: &[&str]) -> api::ExecProcessRequest {
    let spec = json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
    });
    api::ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: spec.to_string().into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `containerd.runc.v1.Options` in an Any, as containerd puts it on `start`'s stdin and
/// into `CreateTaskRequest.options` (type_url without the googleapis prefix).
pub fn runc_options(o: &berth_proto::shim::oci::Options) -> Result<Any> {
    Ok(Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: o.write_to_bytes().context("encode runc options")?,
        ..Default::default()
    })
}

/// Request builders for the common id/exec_id messages.
pub fn start_req(id: &str, exec_id: &str) -> api::StartRequest {
    api::StartRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn wait_req(id: &str, exec_id: &str) -> api::WaitRequest {
    api::WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn delete_req(id: &str, exec_id: &str) -> api::DeleteRequest {
    api::DeleteRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn kill_req(id: &str, exec_id: &str, signal: i32) -> api::KillRequest {
    api::KillRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        signal: signal as u32,
        ..Default::default()
    }
}

pub fn shutdown_req(id: &str) -> api::ShutdownRequest {
    api::ShutdownRequest {
        id: id.into(),
        ..Default::default()
    }
}

/// Seconds since the epoch of a protobuf timestamp field (0 when unset).
pub fn ts_secs(
    t: &MessageField<berth_proto::protobuf::well_known_types::timestamp::Timestamp>,
) -> i64 {
    t.as_ref().map(|t| t.seconds).unwrap_or(0)
}

/// Seconds since the epoch now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
