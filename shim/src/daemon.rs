//! The long-running shim daemon: process setup that must happen before tokio starts
//! (subreaper, signals, log FIFO), then the ttrpc server until Shutdown or SIGTERM.

use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::ttrpc::r#async::Server;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::Args;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::task::Service;

/// Runs the daemon to completion. Called from `main` before any runtime or thread exists.
pub fn run(args: &Args) -> Result<()> {
    // Why before tokio: container inits re-parent to us after runc exits, and a
    // subreaper flag or signal disposition set after threads exist would race them.
    // SAFETY: plain prctl/signal calls on our own single-threaded process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        // Writes to a FIFO whose reader (containerd) is gone must fail with EPIPE, not
        // kill the shim.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    redirect_stderr_to_log_fifo();
    init_tracing(args.debug);
    crate::failpoints::arm_from_env().map_err(Error::InvalidArgument)?;
    let address = std::env::var("BERTH_SHIM_SOCKET")
        .ok()
        .or_else(|| std::fs::read_to_string("address").ok())
        .unwrap_or_default();
    let listener = if !args.socket.is_empty() {
        let p = crate::socket::socket_path(&args.socket);
        UnixListener::bind(&p).map_err(|e| Error::io(format!("bind {}", p.display()), e))?
    } else {
        // SAFETY: `start` passes the bound, listening socket as fd 3 and nothing else
        // owns fd 3 in this fresh process.
        unsafe { UnixListener::from_raw_fd(3) }
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("listener", e))?;
    // Why: fd 3 arrives without close-on-exec (it had to survive the exec from `start`).
    // Left so, every child (runc, its init, mount helpers, loggers) would inherit the
    // listening socket: one that outlives the shim keeps accepting the manager's
    // connections that nobody answers, so a killed shim would never look gone.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| Error::sys("close-on-exec on the listening socket", e))?;
    // One malloc arena for every thread: the shim serves from one thread, and each short
    // blocking thread (file reads, runc waits) would otherwise get an arena of its own
    // whose pages stay resident in every shim of the node.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator tunable; no allocation is in flight here
    // that another thread could race with (the runtime is not built yet).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let res = rt.block_on(serve(args, listener));
    let _ = std::fs::remove_file(crate::socket::socket_path(&address));
    tracing::info!("shim exited");
    res
}

async fn serve(args: &Args, listener: UnixListener) -> Result<()> {
    let reaper = Reaper::start().map_err(|e| Error::io("SIGCHLD handler", e))?;
    let exits = reaper.subscribe();
    let ttrpc = std::env::var("TTRPC_ADDRESS").ok();
    let (events, forwarder) = Publisher::start(ttrpc, args.namespace.clone());
    let service = Arc::new(Service::new(
        events.clone(),
        reaper.clone(),
        args.namespace.clone(),
    ));
    let exit_loop = tokio::spawn(crate::task::run_exit_loop(
        service.table.clone(),
        events.clone(),
        exits,
    ));
    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|e| Error::io("ttrpc listener", e))?;
    let mut services = berth_proto::task_services(service.clone());
    services.extend(berth_proto::berth_shim::create_attach(service.clone()));
    services.extend(berth_proto::berth_shim::create_journal(service.clone()));
    let known: Vec<String> = services.keys().cloned().collect();
    services.insert(
        crate::transport::UNKNOWN_SERVICE.to_string(),
        crate::transport::unknown_service(),
    );
    let mut server = Server::new()
        .add_listener(crate::transport::listener(listener, known))
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| Error::Runtime(format!("ttrpc server: {e}")))?;
    tracing::info!(pid = std::process::id(), namespace = %args.namespace, "shim serving");
    let trim = tokio::spawn(crate::trim::run());
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let shutdown = service.shutdown.clone();
    tokio::select! {
        _ = shutdown.notified() => tracing::info!("shutdown requested"),
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    // Readers waiting on the journal (berthd's) answer now, or they would hold the
    // server's shutdown up.
    events.journal().close();
    // Give the Shutdown reply a moment to leave before connections close.
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Clients (containerd, berthd) close their connections after Shutdown; don't wait long.
    let _ = tokio::time::timeout(Duration::from_millis(500), server.shutdown()).await;
    exit_loop.abort();
    trim.abort();
    events.close();
    drop(service);
    drop(events);
    forwarder.drain().await;
    Ok(())
}

/// The Go shim writes its log into `./log`, a FIFO containerd reads. Opened non-blocking
/// so a missing reader (our own daemon may start us without one) is not fatal; without
/// the FIFO, logs go nowhere.
fn redirect_stderr_to_log_fifo() {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    if let Ok(f) = f {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2 of our own process; `f` stays valid for the call.
        unsafe {
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

fn init_tracing(debug: bool) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        // Why: on a write error (no reader on the log FIFO while containerd is down) the
        // default reports through eprintln!, which panics when stderr itself is broken.
        .log_internal_errors(false)
        .try_init();
}
