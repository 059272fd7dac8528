//! containerd-shim-berth-v2: Berth's per-pod shim, a drop-in for containerd's
//! `containerd-shim-runc-v2`. `main` parses containerd's Go-style flags and dispatches to
//! the `start`/`delete` actions or the long-running daemon. Nothing here starts a thread:
//! the daemon must set up its process state before tokio exists.

mod args;
mod bootstrap;
mod cgroup;
mod daemon;
mod delete;
mod error;
mod events;
mod failpoints;
mod info;
mod io;
mod journal;
mod mount;
mod oom;
mod options;
mod reaper;
mod runc;
mod socket;
mod spec;
mod start;
mod task;
mod transport;
mod trim;

#[cfg(test)]
mod fuzz;

use std::io::Write;

use args::{Action, Args};

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => fail(&e),
    };
    if args.version {
        println!(
            "containerd-shim-berth-v2:\n  Version: {}\n  Runtime: io.containerd.runc.v2 compatible",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if args.info {
        let argv0 = std::env::args().next().unwrap_or_default();
        match info::run(&argv0) {
            Ok(bytes) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(&bytes);
                let _ = out.flush();
                return;
            }
            Err(e) => fail(&e),
        }
    }
    if let Err(e) = args.validate() {
        fail(&e);
    }
    match args.action {
        Action::Start => match start::run(&args) {
            // containerd reads stdout and stderr as one buffer: print the address only.
            Ok(addr) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(addr.as_bytes());
                let _ = out.flush();
            }
            Err(e) => fail(&e),
        },
        Action::Delete => match delete::run(&args) {
            Ok(bytes) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
            Err(e) => fail(&e),
        },
        Action::Serve => {
            if let Err(e) = daemon::run(&args) {
                tracing::error!(error = %e, "shim daemon failed");
                std::process::exit(1);
            }
        }
    }
}

fn fail(e: &error::Error) -> ! {
    eprintln!("containerd-shim-berth-v2: {e}");
    std::process::exit(1);
}
