//! berthd's command line: parses flags, loads the configuration and wires the library's
//! pieces together (`berthd config default` prints the defaults). Everything else is
//! the `berthd` library.

use std::path::PathBuf;

use berthd::{
    config, core, cri, error, failpoints, image, logging, metrics, salvage, store, stream,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "Berth: a CRI runtime for Kubernetes nodes"
)]
struct Cli {
    /// Configuration file (default /etc/berth/config.toml if it exists, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// CRI socket, overriding server.socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Persistent root, overriding paths.root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state dir, overriding paths.state.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Log level, overriding log.level.
    #[arg(long)]
    log_level: Option<String>,
    /// Log format ("text" or "json"), overriding log.format.
    #[arg(long)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Offline image handling (for air-gapped nodes and tests).
    Image {
        #[command(subcommand)]
        what: ImageCommand,
    },
    /// The state store.
    Store {
        #[command(subcommand)]
        what: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Check that the state store (PATH, else the configured one) can be read through:
    /// exit 0, or 1 with what is wrong, or 2 when another process holds it. berthd runs
    /// this on its store before each start.
    Check { path: Option<PathBuf> },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import the images of OCI image-layout archives (run while berthd is stopped).
    Import { files: Vec<PathBuf> },
    /// Export images (by tag, digest or id) as one OCI image-layout archive (run while
    /// berthd is stopped).
    Export {
        /// The archive to write.
        #[arg(short, long)]
        output: PathBuf,
        images: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the built-in default configuration (every key, documented).
    Default,
    /// Print the effective configuration after the file and flags are applied.
    Check,
}

/// Marks every descriptor berthd inherited beyond stdio close-on-exec. Why: whatever
/// started berthd (a shell, a test harness, a service manager) may leave descriptors open
/// without the flag, and every shim berthd starts would inherit them and hold them for
/// the pod's life (a pipe whose reader waits for its end would never see it). Before any
/// thread exists, so no descriptor berthd opens itself is touched by anything but this.
fn cloexec_inherited() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;
    // SAFETY: close_range only sets a flag on descriptors; no memory is involved.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: one descriptor at a time.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: as above; a descriptor closed meanwhile (the dir's own) fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn main() {
    let began = std::time::Instant::now();
    cloexec_inherited();
    let cli = Cli::parse();
    if let Some(Command::Config {
        what: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", config::DEFAULT_TOML);
        return;
    }
    // Before the configuration: berthd's own startup check names the file.
    if let Some(Command::Store {
        what: StoreCommand::Check { path: Some(p) },
    }) = &cli.command
    {
        check_store(p);
    }
    let mut cfg = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    if let Some(s) = cli.socket {
        cfg.server.socket = s;
    }
    if let Some(r) = cli.root {
        cfg.paths.root = r;
    }
    if let Some(s) = cli.state {
        cfg.paths.state = s;
    }
    if let Some(l) = cli.log_level {
        cfg.log.level = l;
    }
    if let Some(f) = cli.log_format {
        cfg.log.format = match f.as_str() {
            "text" => config::LogFormat::Text,
            "json" => config::LogFormat::Json,
            other => fail(&error::Error::Config(format!(
                "--log-format {other:?} is not \"text\" or \"json\""
            ))),
        };
    }
    if let Some(Command::Config {
        what: ConfigCommand::Check,
    }) = cli.command
    {
        println!("{cfg:#?}");
        return;
    }
    // The level was validated with the config (a --log-level is checked here).
    let level = match cfg.log.level.parse() {
        Ok(l) => l,
        Err(_) => fail(&error::Error::Config(format!(
            "log level {:?} is not one of error, warn, info, debug, trace",
            cfg.log.level
        ))),
    };
    logging::init(level, cfg.log.format);
    if let Err(e) = failpoints::arm_from_env() {
        fail(&error::Error::Config(e));
    }
    if let Some(Command::Store {
        what: StoreCommand::Check { path: None },
    }) = &cli.command
    {
        check_store(&cfg.store_path());
    }
    if let Some(Command::Image { what }) = cli.command {
        let res = match what {
            ImageCommand::Import { files } => import_images(&cfg, &files),
            ImageCommand::Export { output, images } => export_images(&cfg, &images, &output),
        };
        if let Err(e) = res {
            fail(&e);
        }
        return;
    }
    stream::limits::raise_nofile_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BERTH_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&error::Error::io("tokio runtime", e)),
    };
    let socket = cfg.server.socket.clone();
    let res = rt.block_on(async move {
        // The socket first: a live one means another berthd owns this node's state.
        let listener = cri::server::bind(&cfg.server.socket, &cfg.server.socket_group)?;
        // A store from an older berthd holds CRI messages: the CRI adapter upgrades it
        // before the core reads a record.
        // The other listeners next, so a port in use fails the start before anything else.
        let opened = stream::Streaming::bind(&cfg.streaming).and_then(|s| {
            let ep = match cfg.metrics.address.as_str() {
                "" => None,
                a => Some(metrics::bind(a)?),
            };
            // A store that is gone or cannot be read is rebuilt from the record copies
            // before anything reads it (the socket above keeps a second berthd out).
            let exe = std::env::current_exe().map_err(|e| error::Error::io("current_exe", e))?;
            let probes = core::NodeProbes::start(&cfg)?;
            salvage::prepare(&cfg, &exe)?;
            cri::store_upgrade::upgrade(&cfg.store_path())?;
            Ok((s, ep, core::Core::open(cfg, probes)?))
        });
        let (streaming, metrics_ep, core) = match opened {
            Ok((s, ep, r)) => (std::sync::Arc::new(s), ep, r),
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        };
        if let Some(ep) = metrics_ep {
            let m = core.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(ep, m).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        let opened = began.elapsed();
        core.recovery.recover().await?;
        // NRI plugins are started and accepted once the pods and containers are
        // recovered (they are synchronized with them).
        core.nri.start().await?;
        // Where a start's time went: the store checked and opened with the node's state
        // (`opened`), then the recovery (its own line says more).
        let ms = |d: std::time::Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        tracing::info!(opened_ms = %ms(opened), ready_ms = %ms(began.elapsed()), "started");
        let stream_metrics = core.metrics.streaming.clone();
        let backend: std::sync::Arc<dyn stream::Backend> = core.clone();
        let tokens = streaming.clone();
        tokio::spawn(async move {
            if let Err(e) = stream::serve(tokens, backend, stream_metrics).await {
                tracing::error!(error = %e, "streaming server stopped");
            }
        });
        cri::server::serve(core, streaming, listener).await
    });
    // What is still running (streaming sessions, blocking reads) is not waited for long:
    // the shims own the containers, nothing of a pod depends on this process.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Err(e) = res {
        tracing::error!(error = %e, "berthd failed");
        fail(&e);
    }
}

fn import_images(cfg: &config::Config, files: &[PathBuf]) -> error::Result<()> {
    let store = std::sync::Arc::new(store::Store::open(&cfg.store_path())?);
    let images = image::ImageStore::open(&cfg.paths.root, store)?;
    for f in files {
        for rec in images.import_oci_archive(f)? {
            println!("{} {}", rec.id, rec.repo_tags.join(","));
        }
    }
    Ok(())
}

fn export_images(
    cfg: &config::Config,
    refs: &[String],
    out: &std::path::Path,
) -> error::Result<()> {
    let store = std::sync::Arc::new(store::Store::open(&cfg.store_path())?);
    let images = image::ImageStore::open(&cfg.paths.root, store)?;
    for rec in images.export_oci_archive(refs, out)? {
        println!("{} {}", rec.id, rec.repo_tags.join(","));
    }
    Ok(())
}

/// `berthd store check`: exits with the verdict (may abort inside redb on garbage, which
/// is what the caller's check is for).
fn check_store(path: &std::path::Path) -> ! {
    match salvage::check::verify(path) {
        Ok(()) => {
            println!("{}: readable", path.display());
            std::process::exit(0)
        }
        Err((in_use, why)) => {
            eprintln!("{}: {why}", path.display());
            std::process::exit(if in_use {
                salvage::check::EXIT_IN_USE
            } else {
                salvage::check::EXIT_DAMAGED
            })
        }
    }
}

fn fail(e: &error::Error) -> ! {
    eprintln!("berthd: {e}");
    std::process::exit(1);
}
