//! `events`: GetContainerEvents followed until interrupted or the runtime ends the
//! stream, one line an event (time, type, container, pod), or one JSON object a line.
//!
//! berthd first sends a copy of the events no subscriber has received yet (kept for
//! kubelet's evented PLEG, which still gets them: berthctl subscribes as an observer and
//! takes nothing from it), then live ones.

use anyhow::{Context, Result};
use berth_cri::v1 as cri;
use tokio::io::AsyncWriteExt;

use crate::ctx::Ctx;
use crate::show::{self, Format, States};
use crate::Outcome;

pub async fn follow(ctx: &Ctx) -> Result<Outcome> {
    // As an observer: berthd keeps undelivered events for kubelet and marks nothing
    // delivered to us (berthd's cri/events.rs).
    let mut req = tonic::Request::new(cri::GetEventsRequest::default());
    req.metadata_mut().insert(
        "berth-observer",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let mut stream = ctx
        .call(
            "GetContainerEvents",
            ctx.rs.clone().get_container_events(req),
        )
        .await?;
    let mut out = tokio::io::stdout();
    if ctx.format == Format::Table {
        out.write_all(
            b"TIME                          TYPE                       CONTAINER       POD\n",
        )
        .await?;
        out.flush().await?;
    }
    while let Some(e) = stream
        .message()
        .await
        .map_err(|status| crate::ctx::CallFailed {
            call: "GetContainerEvents",
            status,
        })?
    {
        let line = match ctx.format {
            Format::Json => {
                let v = show::cri_json(&e, States::Container);
                serde_json::to_string(&v).context("event as JSON")? + "\n"
            }
            Format::Table => line(&e),
        };
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(Outcome::Exit(0))
}

fn line(e: &cri::ContainerEventResponse) -> String {
    let kind = cri::ContainerEventType::try_from(e.container_event_type)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN");
    let pod = e
        .pod_sandbox_status
        .as_ref()
        .map(|p| {
            let name = p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
            format!("{} ({name})", show::short(&p.id))
        })
        .unwrap_or_default();
    format!(
        "{:<30}{:<27}{:<16}{pod}\n",
        show::rfc3339(e.created_at),
        kind,
        show::short(&e.container_id)
    )
}
