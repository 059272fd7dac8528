//! Images: `images`, `pull` (with a progress line), `rmi`.
//!
//! PullImage is one unary call that answers when the image is whole: CRI reports no
//! progress. While it runs, a terminal on stderr gets a spinner with the time so far and
//! how much the image filesystem has grown (ImageFsInfo, polled), which is what a large
//! pull adds as its layers arrive.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use berth_cri::v1 as cri;
use tokio::io::AsyncWriteExt;

use crate::ctx::Ctx;
use crate::show::{self, cri_json, Format, States, Table};
use crate::Outcome;

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only the ids.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// The image reference (e.g. registry.example/app:1.0; unqualified means docker.io).
    image: String,
    /// Registry credentials as USER:PASSWORD.
    #[arg(long)]
    creds: Option<String>,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// Image references or ids.
    #[arg(required = true)]
    images: Vec<String>,
}

pub async fn list(ctx: &Ctx, a: ListArgs) -> Result<Outcome> {
    let req = cri::ListImagesRequest::default();
    let mut images = ctx
        .call("ListImages", ctx.is.clone().list_images(req))
        .await?
        .images;
    images.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags));
    if a.quiet {
        return Ok(Outcome::Print(
            images.iter().map(|i| format!("{}\n", i.id)).collect(),
        ));
    }
    if ctx.format == Format::Json {
        let v = cri_json(&cri::ListImagesResponse { images }, States::Container);
        return Ok(Outcome::Print(show::pretty(&v)));
    }
    let mut t = Table::new(&["IMAGE", "TAG", "IMAGE ID", "SIZE"]);
    for i in &images {
        let size = show::size(i.size);
        let id = show::short(&i.id).to_string();
        if i.repo_tags.is_empty() {
            let repo = i
                .repo_digests
                .first()
                .and_then(|d| d.split('@').next())
                .unwrap_or("<none>");
            t.row(vec![repo.into(), "<none>".into(), id, size]);
            continue;
        }
        for tag in &i.repo_tags {
            let (repo, tag) = split_tag(tag);
            t.row(vec![repo.into(), tag.into(), id.clone(), size.clone()]);
        }
    }
    Ok(Outcome::Print(t.render()))
}

/// `repo:tag` → (repo, tag); the colon of a registry port is not a tag's.
fn split_tag(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "<none>"),
    }
}

pub async fn pull(ctx: &Ctx, a: PullArgs) -> Result<Outcome> {
    let image_ref = pull_image(ctx, &a.image, a.creds.as_deref()).await?;
    if ctx.format == Format::Json {
        let v = serde_json::json!({ "imageRef": image_ref });
        return Ok(Outcome::Print(show::pretty(&v)));
    }
    Ok(Outcome::Print(format!(
        "Image is up to date for {image_ref}\n"
    )))
}

/// PullImage of `image` with its progress line; the image's id (ref).
pub async fn pull_image(ctx: &Ctx, image: &str, creds: Option<&str>) -> Result<String> {
    let auth = match creds {
        None => None,
        Some(c) => match c.split_once(':') {
            Some((u, p)) if !u.is_empty() => Some(cri::AuthConfig {
                username: u.into(),
                password: p.into(),
                ..Default::default()
            }),
            _ => bail!("--creds {c:?} is not USER:PASSWORD"),
        },
    };
    let req = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        auth,
        sandbox_config: None,
    };
    let mut rs = ctx.is.clone();
    let call = rs.pull_image(req);
    tokio::pin!(call);
    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    let base = if progress { fs_used(ctx).await } else { None };
    let mut grown = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut frame = 0usize;
    let mut next_fs = 5usize;
    let mut err = tokio::io::stderr();
    let answer = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tick.tick(), if progress => {
                frame += 1;
                // The image filesystem is walked by the runtime: once a second is enough.
                if frame >= next_fs {
                    next_fs = frame + 5;
                    if let (Some(b), Some(now)) = (base, fs_used(ctx).await) {
                        grown = Some(now.saturating_sub(b));
                    }
                }
                let line = progress_line(image, frame, start.elapsed(), grown);
                let _ = err.write_all(line.as_bytes()).await;
            }
        }
    };
    if progress {
        // Clears the progress line.
        let _ = err.write_all(b"\r\x1b[K").await;
    }
    let r = answer.map_err(|status| crate::ctx::CallFailed {
        call: "PullImage",
        status,
    })?;
    Ok(r.into_inner().image_ref)
}

fn progress_line(image: &str, frame: usize, took: Duration, grown: Option<u64>) -> String {
    const SPIN: [char; 4] = ['|', '/', '-', '\\'];
    let mut line = format!(
        "\r\x1b[K{} pulling {image}: {:.1}s",
        SPIN[frame % SPIN.len()],
        took.as_secs_f64()
    );
    if let Some(g) = grown {
        line.push_str(&format!(", image filesystem +{}", show::size(g)));
    }
    line
}

/// Bytes the image filesystems use (ImageFsInfo), when the runtime says.
async fn fs_used(ctx: &Ctx) -> Option<u64> {
    let mut is = ctx.is.clone();
    let call = is.image_fs_info(cri::ImageFsInfoRequest::default());
    let r = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()?
        .ok()?
        .into_inner();
    Some(
        r.image_filesystems
            .iter()
            .filter_map(|f| f.used_bytes.as_ref().map(|u| u.value))
            .sum(),
    )
}

/// Whether the runtime has `image` (ImageStatus).
pub async fn present(ctx: &Ctx, image: &str) -> Result<bool> {
    let req = cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        verbose: false,
    };
    let r = ctx
        .call("ImageStatus", ctx.is.clone().image_status(req))
        .await?;
    Ok(r.image.is_some())
}

pub async fn remove(ctx: &Ctx, a: RemoveArgs) -> Result<Outcome> {
    let mut out = String::new();
    for image in &a.images {
        let req = cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        };
        ctx.call("RemoveImage", ctx.is.clone().remove_image(req))
            .await?;
        out.push_str(&format!("Deleted: {image}\n"));
    }
    Ok(Outcome::Print(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_off_but_not_ports() {
        assert_eq!(
            split_tag("docker.io/library/busybox:1.36"),
            ("docker.io/library/busybox", "1.36")
        );
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app", "<none>")
        );
        assert_eq!(
            split_tag("localhost:5000/app:v1"),
            ("localhost:5000/app", "v1")
        );
    }

    #[test]
    fn the_progress_line_says_time_and_growth() {
        let l = progress_line("busybox", 1, Duration::from_millis(2500), Some(3_000_000));
        assert!(
            l.contains("pulling busybox: 2.5s, image filesystem +3.00MB"),
            "{l}"
        );
    }
}
