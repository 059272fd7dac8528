//! The runtime and its pod sandboxes: `info`, `pods`, `stopp`, `rmp`, `inspectp`.

use anyhow::Result;
use berth_cri::v1 as cri;
use serde_json::json;

use crate::ctx::Ctx;
use crate::show::{self, cri_json, Format, States, Table};
use crate::Outcome;

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only the ids.
    #[arg(short, long)]
    quiet: bool,
    /// Only pods whose name contains this.
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct IdsArgs {
    /// Pod ids (or unique id prefixes, or names).
    #[arg(required = true)]
    pods: Vec<String>,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// Pod ids (or unique id prefixes, or names).
    #[arg(required_unless_present = "all")]
    pods: Vec<String>,
    /// Every pod of the runtime.
    #[arg(short, long, conflicts_with = "pods")]
    all: bool,
}

/// The annotation `run` gives a pod whose log directory it made: `rmp` removes that
/// directory with the pod.
pub const LOG_DIR_ANNOTATION: &str = "berthctl.berth.io/log-directory";

pub async fn info(ctx: &Ctx) -> Result<Outcome> {
    let version = ctx
        .call(
            "Version",
            ctx.rs.clone().version(cri::VersionRequest::default()),
        )
        .await?;
    let status = ctx
        .call(
            "Status",
            ctx.rs.clone().status(cri::StatusRequest { verbose: true }),
        )
        .await?;
    if ctx.format == Format::Json {
        let v = json!({
            "version": show::cri_json(&version, States::Pod),
            "status": show::cri_json(&status.status, States::Pod),
            "info": show::info_map(&status.info),
        });
        return Ok(Outcome::Print(show::pretty(&v)));
    }
    let mut out = format!(
        "Runtime: {} {} (CRI {})\n",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );
    for c in status.status.map(|s| s.conditions).unwrap_or_default() {
        out.push_str(&format!("{}: {}", c.r#type, c.status));
        if !c.reason.is_empty() || !c.message.is_empty() {
            out.push_str(&format!(" ({}: {})", c.reason, c.message));
        }
        out.push('\n');
    }
    Ok(Outcome::Print(out))
}

fn pod_state(s: i32) -> &'static str {
    match cri::PodSandboxState::try_from(s) {
        Ok(cri::PodSandboxState::SandboxReady) => "Ready",
        Ok(cri::PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

pub async fn list(ctx: &Ctx, a: ListArgs) -> Result<Outcome> {
    let mut pods = ctx.list_pods().await?;
    if let Some(n) = &a.name {
        pods.retain(|p| {
            p.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains(n.as_str()))
        });
    }
    pods.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    if a.quiet {
        return Ok(Outcome::Print(
            pods.iter().map(|p| format!("{}\n", p.id)).collect(),
        ));
    }
    if ctx.format == Format::Json {
        let v = cri_json(&cri::ListPodSandboxResponse { items: pods }, States::Pod);
        return Ok(Outcome::Print(show::pretty(&v)));
    }
    let mut t = Table::new(&[
        "POD ID",
        "CREATED",
        "STATE",
        "NAME",
        "NAMESPACE",
        "ATTEMPT",
        "RUNTIME",
    ]);
    for p in &pods {
        let m = p.metadata.clone().unwrap_or_default();
        let handler = if p.runtime_handler.is_empty() {
            "(default)"
        } else {
            &p.runtime_handler
        };
        t.row(vec![
            show::short(&p.id).into(),
            show::age(p.created_at),
            pod_state(p.state).into(),
            m.name,
            m.namespace,
            m.attempt.to_string(),
            handler.into(),
        ]);
    }
    Ok(Outcome::Print(t.render()))
}

pub async fn stop(ctx: &Ctx, a: IdsArgs) -> Result<Outcome> {
    let mut out = String::new();
    for arg in &a.pods {
        let id = ctx.pod_id(arg).await?;
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        ctx.call("StopPodSandbox", ctx.rs.clone().stop_pod_sandbox(req))
            .await?;
        out.push_str(&format!("Stopped pod {id}\n"));
    }
    Ok(Outcome::Print(out))
}

pub async fn remove(ctx: &Ctx, a: RemoveArgs) -> Result<Outcome> {
    let ids = if a.all {
        ctx.list_pods().await?.into_iter().map(|p| p.id).collect()
    } else {
        let mut ids = Vec::new();
        for arg in &a.pods {
            ids.push(ctx.pod_id(arg).await?);
        }
        ids
    };
    let mut out = String::new();
    for id in ids {
        // The pod's log directory, when `run` made it (read before the pod is gone).
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        };
        let log_dir = ctx
            .call("PodSandboxStatus", ctx.rs.clone().pod_sandbox_status(req))
            .await?
            .status
            .and_then(|s| s.annotations.get(LOG_DIR_ANNOTATION).cloned());
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        ctx.call("StopPodSandbox", ctx.rs.clone().stop_pod_sandbox(req))
            .await?;
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        ctx.call("RemovePodSandbox", ctx.rs.clone().remove_pod_sandbox(req))
            .await?;
        if let Some(dir) = log_dir {
            crate::run::remove_log_dir(&dir).await?;
        }
        out.push_str(&format!("Removed pod {id}\n"));
    }
    Ok(Outcome::Print(out))
}

pub async fn inspect(ctx: &Ctx, a: IdsArgs) -> Result<Outcome> {
    let mut all = Vec::new();
    for arg in &a.pods {
        let id = ctx.pod_id(arg).await?;
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id,
            verbose: true,
        };
        let st = ctx
            .call("PodSandboxStatus", ctx.rs.clone().pod_sandbox_status(req))
            .await?;
        all.push(json!({
            "status": cri_json(&st.status, States::Pod),
            "info": show::info_map(&st.info),
        }));
    }
    Ok(Outcome::Print(show::pretty(&one_or_many(all))))
}

/// One document as itself, several as an array.
pub fn one_or_many(mut v: Vec<serde_json::Value>) -> serde_json::Value {
    if v.len() == 1 {
        v.remove(0)
    } else {
        serde_json::Value::Array(v)
    }
}
