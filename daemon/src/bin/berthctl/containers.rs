//! Containers: `ps`, `stop`, `rm`, `inspect`, `stats`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use berth_cri::v1 as cri;
use serde_json::json;

use crate::ctx::Ctx;
use crate::pods::one_or_many;
use crate::show::{self, cri_json, Format, States, Table};
use crate::Outcome;

#[derive(clap::Args)]
pub struct ListArgs {
    /// All containers, not only running ones.
    #[arg(short, long)]
    all: bool,
    /// Only the ids.
    #[arg(short, long)]
    quiet: bool,
    /// Only the containers of this pod (id, unique id prefix or name).
    #[arg(short, long)]
    pod: Option<String>,
    /// Only containers whose name contains this.
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct IdsArgs {
    /// Container ids (or unique id prefixes, or names).
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds the container has to exit after SIGTERM before it is killed.
    #[arg(short, long, default_value_t = 10)]
    timeout: i64,
    /// Container ids (or unique id prefixes, or names).
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// Stop running containers first (else removing one fails).
    #[arg(short, long)]
    force: bool,
    /// Container ids (or unique id prefixes, or names).
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Only these containers (ids, unique id prefixes or names); all when none.
    containers: Vec<String>,
    /// Only the containers of this pod.
    #[arg(short, long)]
    pod: Option<String>,
}

pub fn state_name(s: i32) -> &'static str {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

pub async fn list(ctx: &Ctx, a: ListArgs) -> Result<Outcome> {
    let mut filter = cri::ContainerFilter::default();
    if let Some(p) = &a.pod {
        filter.pod_sandbox_id = ctx.pod_id(p).await?;
    }
    if !a.all {
        filter.state = Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        });
    }
    let mut ctrs = ctx.list_containers(Some(filter)).await?;
    if let Some(n) = &a.name {
        ctrs.retain(|c| {
            c.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains(n.as_str()))
        });
    }
    ctrs.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    if a.quiet {
        return Ok(Outcome::Print(
            ctrs.iter().map(|c| format!("{}\n", c.id)).collect(),
        ));
    }
    if ctx.format == Format::Json {
        let v = cri_json(
            &cri::ListContainersResponse { containers: ctrs },
            States::Container,
        );
        return Ok(Outcome::Print(show::pretty(&v)));
    }
    let pod_names: HashMap<String, String> = ctx
        .list_pods()
        .await?
        .into_iter()
        .map(|p| (p.id, p.metadata.map(|m| m.name).unwrap_or_default()))
        .collect();
    let mut t = Table::new(&[
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
        "POD",
    ]);
    for c in &ctrs {
        let m = c.metadata.clone().unwrap_or_default();
        let image = c.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
        let image = if image.is_empty() {
            &c.image_ref
        } else {
            image
        };
        t.row(vec![
            show::short(&c.id).into(),
            image.to_string(),
            show::age(c.created_at),
            state_name(c.state).into(),
            m.name,
            m.attempt.to_string(),
            show::short(&c.pod_sandbox_id).into(),
            pod_names
                .get(&c.pod_sandbox_id)
                .cloned()
                .unwrap_or_default(),
        ]);
    }
    Ok(Outcome::Print(t.render()))
}

pub async fn stop(ctx: &Ctx, a: StopArgs) -> Result<Outcome> {
    let mut out = String::new();
    for arg in &a.containers {
        let id = ctx.container_id(arg).await?;
        stop_one(ctx, &id, a.timeout).await?;
        out.push_str(&format!("{id}\n"));
    }
    Ok(Outcome::Print(out))
}

async fn stop_one(ctx: &Ctx, id: &str, grace: i64) -> Result<()> {
    let req = cri::StopContainerRequest {
        container_id: id.into(),
        timeout: grace,
    };
    // The call lasts as long as the grace period may.
    let extra = Duration::from_secs(grace.max(0) as u64);
    ctx.call_with("StopContainer", extra, ctx.rs.clone().stop_container(req))
        .await?;
    Ok(())
}

pub async fn remove(ctx: &Ctx, a: RemoveArgs) -> Result<Outcome> {
    let mut out = String::new();
    for arg in &a.containers {
        let id = ctx.container_id(arg).await?;
        if a.force {
            stop_one(ctx, &id, 0).await?;
        }
        let req = cri::RemoveContainerRequest {
            container_id: id.clone(),
        };
        ctx.call("RemoveContainer", ctx.rs.clone().remove_container(req))
            .await?;
        out.push_str(&format!("{id}\n"));
    }
    Ok(Outcome::Print(out))
}

pub async fn inspect(ctx: &Ctx, a: IdsArgs) -> Result<Outcome> {
    let mut all = Vec::new();
    for arg in &a.containers {
        let id = ctx.container_id(arg).await?;
        let req = cri::ContainerStatusRequest {
            container_id: id,
            verbose: true,
        };
        let st = ctx
            .call("ContainerStatus", ctx.rs.clone().container_status(req))
            .await?;
        all.push(json!({
            "status": cri_json(&st.status, States::Container),
            "info": show::info_map(&st.info),
        }));
    }
    Ok(Outcome::Print(show::pretty(&one_or_many(all))))
}

/// How far apart the two samples a CPU percentage is computed from are.
const CPU_WINDOW: Duration = Duration::from_secs(1);

pub async fn stats(ctx: &Ctx, a: StatsArgs) -> Result<Outcome> {
    let mut filter = cri::ContainerStatsFilter::default();
    if let Some(p) = &a.pod {
        filter.pod_sandbox_id = ctx.pod_id(p).await?;
    }
    let mut wanted = Vec::new();
    for c in &a.containers {
        wanted.push(ctx.container_id(c).await?);
    }
    let first = list_stats(ctx, &filter, &wanted).await?;
    if ctx.format == Format::Json {
        let v = cri_json(
            &cri::ListContainerStatsResponse { stats: first },
            States::Container,
        );
        return Ok(Outcome::Print(show::pretty(&v)));
    }
    // CPU use is a rate: from the runtime's own (usage_nano_cores) when it gives one,
    // else from the cumulative usage of a second sample a moment later.
    let needs_second = first.iter().any(|s| nano_cores(s).is_none());
    let second = if needs_second {
        tokio::time::sleep(CPU_WINDOW).await;
        list_stats(ctx, &filter, &wanted).await?
    } else {
        Vec::new()
    };
    let mut t = Table::new(&["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]);
    for s in &first {
        let attrs = s.attributes.clone().unwrap_or_default();
        let later = second
            .iter()
            .find(|l| l.attributes.as_ref().is_some_and(|a| a.id == attrs.id));
        let cpu = nano_cores(s)
            .map(|n| n as f64 / 1e7)
            .or_else(|| cpu_between(s, later?))
            .map(|p| format!("{p:.2}"))
            .unwrap_or_else(|| "-".into());
        let mem = s
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map(|v| show::size(v.value))
            .unwrap_or_else(|| "-".into());
        let layer = s.writable_layer.as_ref();
        let disk = layer
            .and_then(|l| l.used_bytes.as_ref())
            .map(|v| show::size(v.value))
            .unwrap_or_else(|| "-".into());
        let inodes = layer
            .and_then(|l| l.inodes_used.as_ref())
            .map(|v| v.value.to_string())
            .unwrap_or_else(|| "-".into());
        t.row(vec![
            show::short(&attrs.id).into(),
            attrs.metadata.map(|m| m.name).unwrap_or_default(),
            cpu,
            mem,
            disk,
            inodes,
        ]);
    }
    Ok(Outcome::Print(t.render()))
}

async fn list_stats(
    ctx: &Ctx,
    filter: &cri::ContainerStatsFilter,
    wanted: &[String],
) -> Result<Vec<cri::ContainerStats>> {
    let req = cri::ListContainerStatsRequest {
        filter: Some(filter.clone()),
    };
    let mut stats = ctx
        .call(
            "ListContainerStats",
            ctx.rs.clone().list_container_stats(req),
        )
        .await?
        .stats;
    if !wanted.is_empty() {
        stats.retain(|s| {
            s.attributes
                .as_ref()
                .is_some_and(|a| wanted.contains(&a.id))
        });
    }
    Ok(stats)
}

fn nano_cores(s: &cri::ContainerStats) -> Option<u64> {
    s.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value)
}

/// CPU % (100 = one core) between two samples of cumulative usage.
fn cpu_between(a: &cri::ContainerStats, b: &cri::ContainerStats) -> Option<f64> {
    let (a, b) = (a.cpu.as_ref()?, b.cpu.as_ref()?);
    let used = b.usage_core_nano_seconds.as_ref()?.value as f64
        - a.usage_core_nano_seconds.as_ref()?.value as f64;
    let elapsed = (b.timestamp - a.timestamp) as f64;
    (elapsed > 0.0 && used >= 0.0).then(|| used / elapsed * 100.0)
}
