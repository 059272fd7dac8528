//! The `delete` action: clean up one container after its shim died or was shut down,
//! touching only that container (the pod's daemon may still serve others).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use berth_proto::api::DeleteResponse;
use berth_proto::protobuf::Message;

use crate::args::Args;
use crate::error::{Error, Result};
use crate::options::RuncOptions;

/// containerd gives the whole cleanup 5 s; keep well inside it.
const RUNTIME_DELETE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `delete`; returns the encoded `DeleteResponse` for stdout. Warnings go to stderr,
/// which containerd logs as cleanup warnings.
pub fn run(args: &Args) -> Result<Vec<u8>> {
    let bundle = if !args.bundle.is_empty() {
        PathBuf::from(&args.bundle)
    } else {
        let cwd = std::env::current_dir().map_err(|e| Error::io("getcwd", e))?;
        cwd.parent().map(|p| p.join(&args.id)).unwrap_or(cwd)
    };
    let opts = RuncOptions::load(&bundle);
    let root = opts.runtime_root(&args.namespace);
    let log = bundle.join("log.json");
    let mut cmd = Command::new(opts.binary());
    cmd.args(["--root", &root, "--log"])
        .arg(&log)
        .args(["--log-format", "json", "delete", "--force", &args.id])
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(mut child) => {
            let deadline = Instant::now() + RUNTIME_DELETE_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(st)) if !st.success() => {
                        eprintln!(
                            "warning: {} delete --force {} exited with {st}",
                            opts.binary(),
                            args.id
                        );
                        break;
                    }
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        eprintln!("warning: runtime delete timed out");
                        break;
                    }
                }
            }
        }
        Err(e) => eprintln!("warning: cannot run {}: {e}", opts.binary()),
    }
    if let Err(e) = crate::mount::unmount_all(&bundle.join("rootfs")) {
        eprintln!("warning: unmount rootfs: {e}");
    }
    crate::mount::detach_volumes(&bundle);
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let mut resp = DeleteResponse::new();
    resp.pid = pid;
    resp.exit_status = 128 + libc::SIGKILL as u32;
    resp.exited_at = Some(crate::events::timestamp(SystemTime::now())).into();
    resp.write_to_bytes()
        .map_err(|e| Error::proto("encode DeleteResponse", e))
}
