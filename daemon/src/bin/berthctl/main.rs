//! berthctl: a command-line CRI client for node operators (crictl's core commands; Debian
//! does not package crictl). It speaks only CRI, through berthd's client library
//! (`berthd::cri::client`, the one the black-box tests use), to berthd's socket or any
//! runtime's (`--endpoint`). docs/berthctl.md is its manual.
//!
//! Modules: `ctx` (the connection, bounded calls, errors), `show` (tables, ages, sizes,
//! JSON), `pods`, `containers`, `images`, `run`, `logs`, `remote` (exec, attach) over
//! `term` (the local terminal), `events`.

mod containers;
mod ctx;
mod events;
mod images;
mod logs;
mod pods;
mod remote;
mod run;
mod show;
mod term;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use ctx::Ctx;
use show::Format;

/// berthd's CRI socket (`[server] socket` in its default config).
pub const DEFAULT_ENDPOINT: &str = "unix:///run/berth/berth.sock";

#[derive(Parser)]
#[command(
    name = "berthctl",
    version,
    about = "A CRI client for Berth (and any CRI runtime): pods, containers, images, logs, exec",
    after_help = "Examples:\n  berthctl run --name hello localhost/busybox -- sh -c 'echo hello; sleep 3600'\n  berthctl logs -f hello\n  berthctl exec -it hello sh\n  berthctl --endpoint unix:///run/containerd/containerd.sock pods"
)]
struct Cli {
    /// The runtime's CRI socket, unix:///path or /path.
    #[arg(long, global = true, env = "BERTHCTL_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// Output: a table (or plain text), or JSON (field names as the CRI's protobuf JSON).
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Seconds each CRI call may take (a pull, an event stream, logs -f and a remote
    /// command are not bounded by it).
    #[arg(long, global = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The runtime's name, version and conditions (RuntimeReady, NetworkReady).
    Info,
    /// List pod sandboxes.
    Pods(pods::ListArgs),
    /// Stop pod sandboxes (their containers too).
    Stopp(pods::IdsArgs),
    /// Stop and remove pod sandboxes (their containers too).
    Rmp(pods::RemoveArgs),
    /// A pod sandbox's status, with the runtime's verbose info (JSON).
    Inspectp(pods::IdsArgs),
    /// List containers (running ones unless -a).
    Ps(containers::ListArgs),
    /// Stop containers.
    Stop(containers::StopArgs),
    /// Remove containers.
    Rm(containers::RemoveArgs),
    /// A container's status, with the runtime's verbose info (JSON).
    Inspect(containers::IdsArgs),
    /// Containers' CPU, memory and writable-layer usage.
    Stats(containers::StatsArgs),
    /// List images.
    Images(images::ListArgs),
    /// Pull an image (a progress line while it runs, on a terminal).
    Pull(images::PullArgs),
    /// Remove images.
    Rmi(images::RemoveArgs),
    /// Run a container in a new pod sandbox: one step from an image and a command.
    Run(run::RunArgs),
    /// Print a container's log (from the CRI log file its status names).
    Logs(logs::LogsArgs),
    /// Run a command in a running container.
    Exec(remote::ExecArgs),
    /// Attach to a running container's stdio.
    Attach(remote::AttachArgs),
    /// Follow container events (GetContainerEvents) until interrupted.
    Events,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("tokio runtime")),
    };
    let res = rt.block_on(dispatch(cli));
    // A remote command's stdin reader may still sit in a read of the terminal: the
    // runtime is not waited for.
    rt.shutdown_background();
    match res {
        Ok(Outcome::Print(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

/// What a command leaves for `main`: text to print once the runtime is done (no blocking
/// writes on its workers), or an exit code (streaming commands wrote as they went).
pub enum Outcome {
    Print(String),
    Exit(u8),
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("berthctl: {e:#}");
    ExitCode::FAILURE
}

async fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let ctx = Ctx::connect(
        &cli.endpoint,
        cli.output,
        Duration::from_secs(cli.request_timeout),
    )
    .await?;
    match cli.command {
        Command::Info => pods::info(&ctx).await,
        Command::Pods(a) => pods::list(&ctx, a).await,
        Command::Stopp(a) => pods::stop(&ctx, a).await,
        Command::Rmp(a) => pods::remove(&ctx, a).await,
        Command::Inspectp(a) => pods::inspect(&ctx, a).await,
        Command::Ps(a) => containers::list(&ctx, a).await,
        Command::Stop(a) => containers::stop(&ctx, a).await,
        Command::Rm(a) => containers::remove(&ctx, a).await,
        Command::Inspect(a) => containers::inspect(&ctx, a).await,
        Command::Stats(a) => containers::stats(&ctx, a).await,
        Command::Images(a) => images::list(&ctx, a).await,
        Command::Pull(a) => images::pull(&ctx, a).await,
        Command::Rmi(a) => images::remove(&ctx, a).await,
        Command::Run(a) => run::run(&ctx, a).await,
        Command::Logs(a) => logs::logs(&ctx, a).await,
        Command::Exec(a) => remote::exec(&ctx, a).await,
        Command::Attach(a) => remote::attach(&ctx, a).await,
        Command::Events => events::follow(&ctx).await,
    }
}
