//! Running one CNI plugin binary: lookup in the bin dirs, the CNI_* environment, the config
//! on stdin, a bounded wait, and the plugin's error JSON turned into a message.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// The longest plugin output quoted in an error message.
const MAX_QUOTE: usize = 2048;

/// What stays the same for every plugin of one ADD or DEL.
pub(super) struct Call<'a> {
    /// "ADD" or "DEL".
    pub command: &'static str,
    pub container_id: &'a str,
    /// None: CNI_NETNS is empty (DEL after the netns is gone, as the spec allows).
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub cni_args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// The plugin error every CNI plugin prints on stdout when it fails.
#[derive(Deserialize)]
struct PluginError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The plugin binary `plugin_type` in the first bin dir that has it.
pub(super) fn find_plugin(bin_dirs: &[PathBuf], plugin_type: &str) -> Result<PathBuf> {
    bin_dirs
        .iter()
        .map(|d| d.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Network(format!(
                "CNI plugin {plugin_type:?} not found in {}",
                join_paths(bin_dirs)
            ))
        })
}

/// Runs `bin` for `plugin_type` with `conf` on stdin; its stdout on success.
pub(super) async fn run(
    call: &Call<'_>,
    plugin_type: &str,
    bin: &Path,
    conf: &[u8],
) -> Result<Vec<u8>> {
    let what = format!("CNI plugin {plugin_type:?} {}", call.command);
    let netns = call.netns.map(|p| p.as_os_str()).unwrap_or_default();
    let mut child = tokio::process::Command::new(bin)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.cni_args)
        .env("CNI_PATH", join_paths(call.bin_dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a plugin that is a script (or forks) is killed whole.
        .process_group(0)
        // On timeout (or a cancelled request) the future is dropped: kill the plugin
        // rather than leave it running unobserved; tokio reaps it in the background.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Network(format!("{what}: cannot start {}: {e}", bin.display())))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Network(format!("{what}: no stdin pipe")))?;
    let feed = async move {
        // A plugin that exits without reading (EPIPE) is judged by its exit, not this write.
        let _ = stdin.write_all(conf).await;
        drop(stdin);
    };
    let group = child.id().map(|pid| pid as i32);
    let output = async {
        let ((), out) = tokio::join!(feed, child.wait_with_output());
        out
    };
    tokio::pin!(output);
    // Declared after `output`, so dropped before it: the group is killed while its leader
    // is not yet reaped (its pid, the group's id, cannot have been reused).
    let mut killer = GroupKiller(group);
    let output = tokio::time::timeout(call.timeout, &mut output).await;
    if output.is_ok() {
        // Ended by itself: the group's id may be free again, so nothing is sent to it.
        killer.0 = None;
    }
    let output = output
        .map_err(|_| Error::Network(format!("{what} timed out after {:?}", call.timeout)))?
        .map_err(|e| Error::Network(format!("{what}: wait: {e}")))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let status = match output.status.code() {
        Some(c) => format!("exit status {c}"),
        None => output.status.to_string(),
    };
    let why = match serde_json::from_slice::<PluginError>(&output.stdout) {
        Ok(pe) if !pe.msg.is_empty() => {
            let details = if pe.details.is_empty() {
                String::new()
            } else {
                format!(": {}", pe.details)
            };
            format!("{}{details} (code {})", pe.msg, pe.code)
        }
        _ => {
            let text = if output.stderr.is_empty() {
                &output.stdout
            } else {
                &output.stderr
            };
            format!("{status}: {}", quote(text))
        }
    };
    Err(Error::Network(format!("{what} failed: {why}")))
}

/// SIGKILLs a plugin's process group when dropped armed (a timeout, a cancelled call).
struct GroupKiller(Option<i32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|p| *p > 1) {
            // SAFETY: kill(2) on the process group this call created; no memory touched.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":")
}

/// Plugin output for a message: trimmed, cut to MAX_QUOTE bytes on a char boundary.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut end = text.len().min(MAX_QUOTE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn call(bin_dirs: &[PathBuf], timeout: Duration) -> Call<'_> {
        Call {
            command: "ADD",
            container_id: "c1",
            netns: None,
            ifname: "eth0",
            cni_args: "IgnoreUnknown=1",
            bin_dirs,
            timeout,
        }
    }

    #[tokio::test]
    async fn stdout_stdin_and_env() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "echo",
            r#"in=$(cat); printf '{"in":%s,"env":"%s|%s|%s|%s|%s"}' "$in" "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_PATH""#,
        );
        let dirs = vec![d.path().join("nope"), d.path().to_path_buf()];
        let bin = find_plugin(&dirs, "echo").unwrap();
        assert_eq!(bin, d.path().join("echo"));
        let out = run(
            &call(&dirs, Duration::from_secs(10)),
            "echo",
            &bin,
            b"{\"a\":1}",
        )
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["in"]["a"], 1);
        let want = format!("ADD|c1||eth0|{}", join_paths(&dirs));
        assert_eq!(v["env"], want.as_str());
    }

    #[tokio::test]
    async fn plugin_error_json_becomes_the_message() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "bad",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"no bridge"}'; exit 1"#,
        );
        script(d.path(), "crash", "echo 'panic: oops' >&2; exit 2");
        let dirs = vec![d.path().to_path_buf()];
        let c = call(&dirs, Duration::from_secs(10));
        let e = run(&c, "bad", &d.path().join("bad"), b"{}")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "network: CNI plugin \"bad\" ADD failed: invalid config: no bridge (code 7)"
        );
        let e = run(&c, "crash", &d.path().join("crash"), b"{}")
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("\"crash\" ADD failed: exit status 2: panic: oops"),
            "{e}"
        );
        let e = find_plugin(&dirs, "missing").unwrap_err();
        assert!(e.to_string().contains("\"missing\" not found"), "{e}");
    }

    #[tokio::test]
    async fn a_hung_plugin_is_killed_at_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "hang", "exec sleep 30");
        let dirs = vec![d.path().to_path_buf()];
        let start = Instant::now();
        let e = run(
            &call(&dirs, Duration::from_millis(300)),
            "hang",
            &d.path().join("hang"),
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_hung_script_is_killed_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("child.pid");
        // The shell waits on a child (no exec): killing the shell alone would leave it.
        script(
            d.path(),
            "hang",
            &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        );
        let dirs = vec![d.path().to_path_buf()];
        let e = run(
            &call(&dirs, Duration::from_millis(500)),
            "hang",
            &d.path().join("hang"),
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The child was SIGKILLed with its group; once reaped (by init) it is gone.
        let mut alive = true;
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            alive = !stat.is_empty() && !stat.contains(") Z ");
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive, "the plugin's child {pid} outlived the timeout");
    }
}
