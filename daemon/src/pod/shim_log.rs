//! A pod shim's own log: the shim writes its stderr into the `log` FIFO in the pod's
//! bundle (as containerd provides it); berthd reads it into its own log, tagged with the
//! pod id, and opens it again after a restart. While berthd is down nobody reads and the
//! shim's lines are dropped (it writes non-blocking): the shim never blocks on its log.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

/// How often a silent log checks whether its pod is gone.
const CHECK: Duration = Duration::from_secs(5);

/// Creates the FIFO if needed (before the shim starts: it opens it at startup) and
/// follows it until the pod's bundle is removed.
pub fn follow(bundle: &Path, pod_id: &str) {
    let path = bundle.join("log");
    if !path.exists() {
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        if let Err(e) = nix::unistd::mkfifo(&path, mode) {
            tracing::warn!(pod_id, error = %e, "cannot make the shim's log FIFO");
            return;
        }
    }
    // Read-write: berthd holds a write end too, so the FIFO never reads as ended between
    // two shim writes (or before the shim opens it); the task ends once the bundle goes.
    let rx = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(pod_id, error = %e, "cannot open the shim's log FIFO");
            return;
        }
    };
    let pod_id = pod_id.to_string();
    tokio::spawn(async move {
        // A small buffer: a shim logs a few lines in its life, and 200 pods' followers
        // with the default 8 KiB each held 1.6 MB of berthd's memory for nothing (a
        // longer line is still read whole).
        let mut lines = tokio::io::BufReader::with_capacity(512, rx).lines();
        loop {
            match tokio::time::timeout(CHECK, lines.next_line()).await {
                Ok(Ok(Some(line))) => tracing::info!(target: "shim", pod_id = %pod_id, "{line}"),
                Ok(_) => return,
                Err(_) if !path.exists() => return,
                Err(_) => {}
            }
        }
    });
}
