//! Direct ttrpc access to a running shim's task service: v3 through berth-proto's generated
//! client, v2 by building the request by hand (same messages, other service name).

use anyhow::{Context, Result};
use berth_proto::protobuf::{Message, MessageField};
use berth_proto::{api, ttrpc};
use std::path::Path;
use std::time::Duration;

pub const TASK_V2: &str = "containerd.task.v2.Task";
pub const TASK_V3: &str = "containerd.task.v3.Task";

/// Bound for one direct call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The shim address of a bundle (e.g. `unix:///run/containerd/s/<hex>`): from containerd
/// 2.x's `bootstrap.json` when present, else the `address` file `start` wrote (containerd
/// 2.x's Go shim writes none).
pub fn address_of(bundle: &Path) -> Result<String> {
    Ok(bootstrap_of(bundle)?.address)
}

/// How containerd talks to a bundle's shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The task API version: 2 (`containerd.task.v2.Task`) or 3 (`containerd.task.v3.Task`).
    pub version: i64,
    pub address: String,
    pub protocol: String,
    /// True when read from containerd 2.x's `bootstrap.json` (which it writes for every shim
    /// it starts, from the shim's `start` output).
    pub from_json: bool,
}

impl Bootstrap {
    /// The task service containerd calls on this shim.
    pub fn task_service(&self) -> &'static str {
        if self.version >= 3 {
            TASK_V3
        } else {
            TASK_V2
        }
    }
}

/// Reads `bootstrap.json` (containerd 2.x), else the `address` file as containerd 2.x's own
/// migration does (version 2, ttrpc).
pub fn bootstrap_of(bundle: &Path) -> Result<Bootstrap> {
    let json = bundle.join("bootstrap.json");
    match std::fs::read(&json) {
        Ok(raw) => {
            let v: serde_json::Value = serde_json::from_slice(&raw)
                .with_context(|| format!("parse {}", json.display()))?;
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            Ok(Bootstrap {
                version: v.get("version").and_then(|x| x.as_i64()).unwrap_or(2),
                address: field("address")
                    .with_context(|| format!("no address in {}", json.display()))?,
                protocol: field("protocol").unwrap_or_else(|| "ttrpc".into()),
                from_json: true,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let p = bundle.join("address");
            let address =
                std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
            Ok(Bootstrap {
                version: 2,
                address: address.trim().to_string(),
                protocol: "ttrpc".into(),
                from_json: false,
            })
        }
        Err(e) => Err(e).with_context(|| format!("read {}", json.display())),
    }
}

/// Dials a shim socket (`unix://...`).
pub async fn connect(address: &str) -> Result<ttrpc::r#async::Client> {
    tokio::time::timeout(CALL_TIMEOUT, ttrpc::r#async::Client::connect(address))
        .await
        .with_context(|| format!("connect {address}: timed out"))?
        .with_context(|| format!("connect {address}"))
}

/// The v3 client from berth-proto (containerd-shim-protos).
pub fn v3(client: ttrpc::r#async::Client) -> berth_proto::shim_async::TaskClient {
    berth_proto::shim_async::TaskClient::new(client)
}

/// A context with the call bound and containerd's namespace metadata.
pub fn ctx(namespace: &str) -> ttrpc::context::Context {
    let mut c = ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64);
    c.add("containerd-namespace-ttrpc".into(), namespace.into());
    c
}

/// One unary call to `service/method` with protobuf messages, as containerd would send it.
pub async fn call<Req: Message, Resp: Message>(
    client: &ttrpc::r#async::Client,
    namespace: &str,
    service: &str,
    method: &str,
    req: &Req,
) -> std::result::Result<Resp, ttrpc::Error> {
    use ttrpc::proto::RequestInit;
    let c = ctx(namespace);
    let mut r = ttrpc::Request::init_request(
        service.into(),
        method.into(),
        c.timeout_nano,
        ttrpc::context::to_pb(c.metadata),
    );
    r.set_payload(
        req.write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(e.to_string()))?,
    );
    let resp = client.request(r).await?;
    Resp::parse_from_bytes(&resp.payload).map_err(|e| ttrpc::Error::Others(e.to_string()))
}

/// `State{id}` request.
pub fn state_req(id: &str) -> api::StateRequest {
    api::StateRequest {
        id: id.into(),
        ..Default::default()
    }
}

/// `Connect{id}` request.
pub fn connect_req(id: &str) -> api::ConnectRequest {
    api::ConnectRequest {
        id: id.into(),
        ..Default::default()
    }
}

/// `Update{id}` setting the memory limit (LinuxResources JSON, as containerd sends it).
pub fn memory_update_req(id: &str, limit: i64) -> api::UpdateTaskRequest {
    let any = berth_proto::protobuf::well_known_types::any::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
        value: format!(r#"{{"memory":{{"limit":{limit}}}}}"#).into_bytes(),
        ..Default::default()
    };
    api::UpdateTaskRequest {
        id: id.into(),
        resources: MessageField::some(any),
        ..Default::default()
    }
}

/// The ttrpc status code of an error, if it is a server status.
pub fn code_of(e: &ttrpc::Error) -> Option<ttrpc::Code> {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code.enum_value().ok(),
        _ => None,
    }
}

/// Runs `f` on a fresh current-thread tokio runtime (tests stay synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_json_wins_over_address_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("address"), "unix:///run/containerd/s/aa").unwrap();
        let b = bootstrap_of(d.path()).unwrap();
        assert_eq!(
            (b.version, b.address.as_str(), b.from_json),
            (2, "unix:///run/containerd/s/aa", false)
        );
        assert_eq!(b.task_service(), TASK_V2);
        std::fs::write(
            d.path().join("bootstrap.json"),
            r#"{"version":3,"address":"unix:///run/containerd/s/bb","protocol":"ttrpc"}"#,
        )
        .unwrap();
        let b = bootstrap_of(d.path()).unwrap();
        assert_eq!(
            (
                b.version,
                b.address.as_str(),
                b.protocol.as_str(),
                b.from_json
            ),
            (3, "unix:///run/containerd/s/bb", "ttrpc", true)
        );
        assert_eq!(b.task_service(), TASK_V3);
    }
}
