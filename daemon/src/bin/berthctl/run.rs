//! `run`: a pod sandbox and one container in it, started, in one step (as `crictl run`
//! or `kubectl run`), from an image and a command, with the defaults kubelet would give:
//! pod network (or the host's), the pod's own IPC, the container's own PID namespace,
//! a log directory under `/var/log/pods/<namespace>_<pod>_<uid>`. The image is pulled
//! when the runtime lacks it. A failure after the pod exists removes the pod.

use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;

use crate::ctx::Ctx;
use crate::images;
use crate::pods::LOG_DIR_ANNOTATION;
use crate::show::{self, Format};
use crate::Outcome;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The container's name (default: the image's name).
    #[arg(long)]
    name: Option<String>,
    /// The pod's name (default: the container's).
    #[arg(long)]
    pod: Option<String>,
    /// The pod's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Share the host's network instead of a pod network.
    #[arg(long)]
    host_network: bool,
    /// Environment variables, KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The container's working directory.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Keep the container's stdin open (for `berthctl attach -i`).
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a terminal (for `berthctl attach -it`).
    #[arg(short, long)]
    tty: bool,
    /// The runtime handler (RuntimeClass) to run the pod with.
    #[arg(long, default_value = "")]
    runtime: String,
    /// Where pod log directories are made.
    #[arg(long, default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// Pull the image: when missing, always, or never.
    #[arg(long, value_enum, default_value_t = Pull::Missing)]
    pull: Pull,
    /// The image to run.
    image: String,
    /// The command (replacing the image's entrypoint) and its arguments; the image's
    /// own when none.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Pull {
    Missing,
    Always,
    Never,
}

pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<Outcome> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => name_of_image(&a.image),
    };
    check_name(&name, "--name")?;
    let pod_name = a.pod.clone().unwrap_or_else(|| name.clone());
    check_name(&pod_name, "--pod")?;
    check_name(&a.namespace, "--namespace")?;
    let mut envs = Vec::new();
    for e in &a.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => envs.push(cri::KeyValue {
                key: k.into(),
                value: v.into(),
            }),
            _ => bail!("--env {e:?} is not KEY=VALUE"),
        }
    }
    let wanted = match a.pull {
        Pull::Always => true,
        Pull::Never => false,
        Pull::Missing => !images::present(ctx, &a.image).await?,
    };
    if wanted {
        images::pull_image(ctx, &a.image, None).await?;
    }

    let uid = new_uid();
    let log_dir = a.log_root.join(format!("{}_{pod_name}_{uid}", a.namespace));
    tokio::fs::create_dir_all(&log_dir)
        .await
        .with_context(|| format!("create the pod log directory {}", log_dir.display()))?;
    let pod_cfg = pod_config(&a, &pod_name, &uid, &log_dir);
    let req = cri::RunPodSandboxRequest {
        config: Some(pod_cfg.clone()),
        runtime_handler: a.runtime.clone(),
    };
    let pod_id = match ctx
        .call("RunPodSandbox", ctx.rs.clone().run_pod_sandbox(req))
        .await
    {
        Ok(r) => r.pod_sandbox_id,
        Err(e) => {
            let _ = remove_log_dir(&log_dir.display().to_string()).await;
            return Err(e);
        }
    };
    let ctr_cfg = container_config(&a, &name, envs);
    match start_container(ctx, &pod_id, pod_cfg, ctr_cfg).await {
        Ok(cid) => {
            if ctx.format == Format::Json {
                let v = serde_json::json!({"podSandboxId": pod_id, "containerId": cid});
                return Ok(Outcome::Print(show::pretty(&v)));
            }
            Ok(Outcome::Print(format!("{cid}\n")))
        }
        Err(e) => {
            // Nothing half-made stays: the pod (and a container created in it) goes.
            let stop = cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            };
            let _ = ctx
                .call("StopPodSandbox", ctx.rs.clone().stop_pod_sandbox(stop))
                .await;
            let rm = cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            };
            let _ = ctx
                .call("RemovePodSandbox", ctx.rs.clone().remove_pod_sandbox(rm))
                .await;
            let _ = remove_log_dir(&log_dir.display().to_string()).await;
            Err(e.context(format!("the pod {pod_id} was removed again")))
        }
    }
}

async fn start_container(
    ctx: &Ctx,
    pod_id: &str,
    pod_cfg: cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> Result<String> {
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(cfg),
        sandbox_config: Some(pod_cfg),
    };
    let cid = ctx
        .call("CreateContainer", ctx.rs.clone().create_container(req))
        .await?
        .container_id;
    let req = cri::StartContainerRequest {
        container_id: cid.clone(),
    };
    ctx.call("StartContainer", ctx.rs.clone().start_container(req))
        .await?;
    Ok(cid)
}

fn pod_config(a: &RunArgs, name: &str, uid: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    let network = if a.host_network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: a.namespace.clone(),
            attempt: 0,
        }),
        // A host-network pod has the host's UTS namespace: no hostname of its own.
        hostname: if a.host_network {
            String::new()
        } else {
            name.into()
        },
        log_directory: log_dir.display().to_string(),
        annotations: [(
            LOG_DIR_ANNOTATION.to_string(),
            log_dir.display().to_string(),
        )]
        .into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: network as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(a: &RunArgs, name: &str, envs: Vec<cri::KeyValue>) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: a.image.clone(),
            ..Default::default()
        }),
        command: a.command.clone(),
        working_dir: a.workdir.clone().unwrap_or_default(),
        envs,
        stdin: a.interactive,
        tty: a.tty,
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: if a.host_network {
                        cri::NamespaceMode::Node as i32
                    } else {
                        cri::NamespaceMode::Pod as i32
                    },
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `registry/path/app:tag@digest` → `app`, as a DNS label (lower case, `-` for others).
fn name_of_image(image: &str) -> String {
    let base = image.split('@').next().unwrap_or(image);
    let last = base.rsplit('/').next().unwrap_or(base);
    let last = last.split(':').next().unwrap_or(last);
    let n: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let n = n.trim_matches('-');
    if n.is_empty() {
        "ctr".into()
    } else {
        n.chars().take(63).collect()
    }
}

/// Names become hostnames and file names: a DNS label.
fn check_name(name: &str, flag: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{flag} {name:?}: a name is 1-63 lower-case letters, digits and '-', not at either end"
        );
    }
    Ok(())
}

/// A pod uid unique on this node: the time in nanoseconds and this process's id.
fn new_uid() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{:x}", std::process::id())
}

/// Removes a pod log directory `run` made (named `<namespace>_<pod>_<uid>`, absolute,
/// no `..`): anything else an annotation might name is left alone.
pub async fn remove_log_dir(dir: &str) -> Result<()> {
    let p = Path::new(dir);
    let plain = p.is_absolute() && p.components().all(|c| !matches!(c, Component::ParentDir));
    let named = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.split('_').count() == 3);
    if !plain || !named {
        bail!("not removing the log directory {dir:?}: not one berthctl run makes");
    }
    match tokio::fs::remove_dir_all(p).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove the log directory {dir}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_images() {
        assert_eq!(name_of_image("berth.test/busybox:1"), "busybox");
        assert_eq!(name_of_image("localhost:5000/My_App@sha256:ab"), "my-app");
        assert_eq!(name_of_image("::"), "ctr");
        assert!(check_name("busybox", "--name").is_ok());
        assert!(check_name("Bad_Name", "--name").is_err());
        assert!(check_name("-x", "--name").is_err());
    }
}
