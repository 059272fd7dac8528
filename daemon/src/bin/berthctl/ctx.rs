//! What every command works with: the two CRI clients, the output format, calls bounded
//! by `--request-timeout` whose failures name the call, its gRPC status code and message, and
//! resolving the id prefixes the tables show to whole ids.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use berth_cri::v1 as cri;
use berthd::cri::client::{connect_endpoint, Is, Rs};

use crate::show::Format;

pub struct Ctx {
    pub rs: Rs,
    pub is: Is,
    pub format: Format,
    pub timeout: Duration,
}

/// A CRI call that failed: its name and the runtime's status.
#[derive(Debug)]
pub struct CallFailed {
    pub call: &'static str,
    pub status: tonic::Status,
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed: code {:?}: {}",
            self.call,
            self.status.code(),
            self.status.message()
        )
    }
}

impl std::error::Error for CallFailed {}

impl Ctx {
    pub async fn connect(endpoint: &str, format: Format, timeout: Duration) -> Result<Ctx> {
        // No per-call bound on the channel: a pull or an event stream may rightly take
        // long; `call` bounds the others.
        let (rs, is) = connect_endpoint(endpoint, None).await?;
        Ok(Ctx {
            rs,
            is,
            format,
            timeout,
        })
    }

    /// Awaits the call `name` within `--request-timeout` plus `extra`; its answer's message.
    pub async fn call_with<T>(
        &self,
        name: &'static str,
        extra: Duration,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout + extra, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(CallFailed { call: name, status }.into()),
            Err(_) => bail!(
                "{name}: no answer within {:?} (--request-timeout)",
                self.timeout + extra
            ),
        }
    }

    /// [`Ctx::call_with`] without extra time.
    pub async fn call<T>(
        &self,
        name: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.call_with(name, Duration::ZERO, fut).await
    }

    pub async fn list_pods(&self) -> Result<Vec<cri::PodSandbox>> {
        let req = cri::ListPodSandboxRequest::default();
        Ok(self
            .call("ListPodSandbox", self.rs.clone().list_pod_sandbox(req))
            .await?
            .items)
    }

    pub async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let req = cri::ListContainersRequest { filter };
        Ok(self
            .call("ListContainers", self.rs.clone().list_containers(req))
            .await?
            .containers)
    }

    /// The whole id of the container `arg` names: an id, a unique id prefix, or a unique
    /// container name. What matches nothing is passed on as given (the runtime's
    /// NotFound then says so).
    pub async fn container_id(&self, arg: &str) -> Result<String> {
        let all = self.list_containers(None).await?;
        let found: Vec<(&str, &str)> = all
            .iter()
            .map(|c| {
                let name = c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
                (c.id.as_str(), name)
            })
            .collect();
        pick(arg, "container", &found)
    }

    /// The whole id of the pod sandbox `arg` names (id, unique id prefix or unique name).
    pub async fn pod_id(&self, arg: &str) -> Result<String> {
        let all = self.list_pods().await?;
        let found: Vec<(&str, &str)> = all
            .iter()
            .map(|p| {
                let name = p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
                (p.id.as_str(), name)
            })
            .collect();
        pick(arg, "pod", &found)
    }
}

/// `arg` among (id, name) pairs: the exact id, else the one id it prefixes, else the one
/// name it equals; ambiguity is an error, no match is `arg` itself.
fn pick(arg: &str, what: &str, found: &[(&str, &str)]) -> Result<String> {
    if arg.is_empty() {
        bail!("an empty {what} id");
    }
    if found.iter().any(|(id, _)| *id == arg) {
        return Ok(arg.to_string());
    }
    for matches in [
        found
            .iter()
            .filter(|(id, _)| id.starts_with(arg))
            .collect::<Vec<_>>(),
        found.iter().filter(|(_, name)| *name == arg).collect(),
    ] {
        match matches.as_slice() {
            [] => {}
            [(id, _)] => return Ok(id.to_string()),
            many => bail!(
                "{arg:?} names {} {what}s ({}): give more of the id",
                many.len(),
                many.iter()
                    .map(|(id, _)| &id[..id.len().min(13)])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(arg.to_string())
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn ids_prefixes_and_names() {
        let found = [("abc123", "web"), ("abd456", "db"), ("ff00", "abc")];
        assert_eq!(pick("abc123", "pod", &found).unwrap(), "abc123");
        assert_eq!(pick("abd", "pod", &found).unwrap(), "abd456");
        assert_eq!(pick("web", "pod", &found).unwrap(), "abc123");
        // A prefix wins over a name.
        assert_eq!(pick("abc", "pod", &found).unwrap(), "abc123");
        let e = pick("ab", "pod", &found).unwrap_err().to_string();
        assert!(e.contains("2 pods"), "{e}");
        assert_eq!(pick("nothing", "pod", &found).unwrap(), "nothing");
        assert!(pick("", "pod", &found).is_err());
    }
}
