//! `logs [-f]`: the container's CRI log file (the path its ContainerStatus names, on this
//! node), decoded: stdout lines to stdout, stderr lines to stderr, optionally with their
//! times. Following polls the file, starts over when it was rotated (another file at the
//! path, or a shorter one), and ends once the container has exited and all is read.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;
use berthd::cri::client::log;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::ctx::Ctx;
use crate::Outcome;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Keep printing what the container writes until it exits.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines (all when not given).
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Prefix each line with its time (RFC 3339).
    #[arg(long)]
    timestamps: bool,
    /// The container (id, unique id prefix or name).
    container: String,
}

/// How often a followed log is looked at for more.
const POLL: Duration = Duration::from_millis(200);

pub async fn logs(ctx: &Ctx, a: LogsArgs) -> Result<Outcome> {
    let id = ctx.container_id(&a.container).await?;
    let st = status(ctx, &id).await?;
    if st.log_path.is_empty() {
        bail!("container {id} has no log file (its pod or container config names none)");
    }
    let path = PathBuf::from(&st.log_path);
    if !path.is_absolute() {
        bail!(
            "the log path {:?} the runtime gave is not absolute",
            st.log_path
        );
    }
    let mut out = Printer {
        timestamps: a.timestamps,
        stdout: tokio::io::stdout(),
        stderr: tokio::io::stderr(),
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => Some(f),
        // A container that never ran may have no log yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && a.follow => None,
        Err(e) => return Err(e).with_context(|| format!("open the log {}", path.display())),
    };
    let mut pending = Vec::new();
    if let Some(f) = file.as_mut() {
        let mut raw = Vec::new();
        f.read_to_end(&mut raw)
            .await
            .with_context(|| format!("read {}", path.display()))?;
        // Only whole lines now; a partial last one waits for its end when following.
        let cut = raw.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        pending = raw.split_off(cut);
        let text = String::from_utf8_lossy(&raw);
        let mut lines: Vec<&str> = text.lines().collect();
        if let Some(n) = a.tail {
            lines = lines.split_off(lines.len().saturating_sub(n));
        }
        for l in lines {
            out.line(l).await?;
        }
    }
    if !a.follow {
        if !pending.is_empty() {
            out.line(&String::from_utf8_lossy(&pending)).await?;
        }
        out.flush().await?;
        return Ok(Outcome::Exit(0));
    }
    follow(ctx, &id, &path, file, pending, &mut out).await?;
    Ok(Outcome::Exit(0))
}

async fn status(ctx: &Ctx, id: &str) -> Result<cri::ContainerStatus> {
    let req = cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    };
    ctx.call("ContainerStatus", ctx.rs.clone().container_status(req))
        .await?
        .status
        .with_context(|| format!("no status for container {id}"))
}

async fn follow(
    ctx: &Ctx,
    id: &str,
    path: &std::path::Path,
    mut file: Option<tokio::fs::File>,
    mut pending: Vec<u8>,
    out: &mut Printer,
) -> Result<()> {
    let mut exited_seen = false;
    let mut polls = 0u32;
    loop {
        let mut got = false;
        if let Some(f) = file.as_mut() {
            let mut chunk = Vec::new();
            f.read_to_end(&mut chunk).await?;
            got = !chunk.is_empty();
            pending.extend_from_slice(&chunk);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                out.line(String::from_utf8_lossy(&line[..i]).as_ref())
                    .await?;
            }
            out.flush().await?;
        }
        if !got {
            if exited_seen {
                return Ok(());
            }
            if rotated(path, file.as_mut()).await {
                file = tokio::fs::File::open(path).await.ok();
                pending.clear();
                continue;
            }
            // The container's state, every few idle polls: once it has exited, one
            // more read takes what it wrote last.
            polls += 1;
            if polls == 5 {
                polls = 0;
                let st = status(ctx, id).await?;
                exited_seen = st.state == cri::ContainerState::ContainerExited as i32;
                if exited_seen {
                    continue;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whether the file at `path` is no longer the one being read (rotated away, or
/// truncated below what was read), or has appeared since.
async fn rotated(path: &std::path::Path, file: Option<&mut tokio::fs::File>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(now) = tokio::fs::metadata(path).await else {
        return false;
    };
    let Some(f) = file else {
        return true;
    };
    let (Ok(open), Ok(pos)) = (f.metadata().await, f.stream_position().await) else {
        return false;
    };
    open.ino() != now.ino() || open.dev() != now.dev() || now.len() < pos
}

/// Writes decoded log lines to this process's stdout and stderr.
struct Printer {
    timestamps: bool,
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
}

impl Printer {
    async fn line(&mut self, raw: &str) -> Result<()> {
        let Some(l) = log::parse(raw) else {
            return Ok(());
        };
        let mut text = String::new();
        if self.timestamps {
            text.push_str(l.time);
            text.push(' ');
        }
        text.push_str(&l.written());
        if l.stream == "stderr" {
            self.stderr.write_all(text.as_bytes()).await?;
        } else {
            self.stdout.write_all(text.as_bytes()).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.stdout.flush().await?;
        self.stderr.flush().await?;
        Ok(())
    }
}
