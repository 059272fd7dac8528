//! Remote command (`kubectl exec`) over a session: the streams of remotecommand v2–v4
//! ([`ExecSession`]), running one to its end ([`exec`]) and what it delivered ([`ExecOutput`]).

use super::session::Session;
use super::stream::Stream;
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// Remote command protocols in kubectl's order of preference.
pub const EXEC_PROTOCOLS: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];

/// What an exec session delivered.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub protocol: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's bytes as sent.
    pub error: Vec<u8>,
    /// v4: the error stream parsed as a Status object (Null when empty).
    pub status: serde_json::Value,
    /// The server's GOAWAY, if it sent one.
    pub goaway: Option<(u32, u32)>,
}

impl ExecOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The exit code a v4 Status reports: 0 for Success, the ExitCode cause for
    /// NonZeroExitCode; None for anything else.
    pub fn exit_code(&self) -> Option<i32> {
        berthd::cri::client::ws::exit_code(&self.status)
    }
}

/// The streams of one exec, opened as kubectl opens them: error, then stdin (when
/// wanted), stdout, stderr (not with a terminal), resize (terminal, v3+).
pub struct ExecSession {
    pub session: Session,
    pub error: Stream,
    pub stdin: Option<Stream>,
    pub stdout: Stream,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

impl ExecSession {
    /// Connects to an exec URL (whose ExecRequest had stdout set, stdin = `stdin`,
    /// tty = `tty` and stderr = !`tty`) and opens its streams.
    pub async fn start(url: &str, protocols: &[&str], stdin: bool, tty: bool) -> Result<Self> {
        let session = Session::connect(url, protocols).await?;
        let open = |t: &'static str| {
            let s = &session;
            async move { s.open(&[("streamtype", t)]).await }
        };
        let error = open("error").await?;
        let stdin = if stdin {
            Some(open("stdin").await?)
        } else {
            None
        };
        let stdout = open("stdout").await?;
        let stderr = if tty {
            None
        } else {
            Some(open("stderr").await?)
        };
        let resize = if tty && session.protocol() != "v2.channel.k8s.io" {
            Some(open("resize").await?)
        } else {
            None
        };
        Ok(ExecSession {
            session,
            error,
            stdin,
            stdout,
            stderr,
            resize,
        })
    }

    /// Sends a terminal size on the resize stream.
    pub async fn resize(&self, width: u16, height: u16) -> Result<()> {
        let r = self
            .resize
            .as_ref()
            .context("no resize stream (no terminal, or protocol v2)")?;
        let msg = serde_json::json!({"Width": width, "Height": height}).to_string();
        r.tx.write(msg.as_bytes()).await
    }

    /// Sends `input` on stdin then its end (FIN), reads stdout, stderr and the error
    /// stream to their ends and waits for the server to close the session, all within
    /// `within`. Stdin is fed beside the reading; what the server never takes is dropped.
    pub async fn finish(self, input: Option<Vec<u8>>, within: Duration) -> Result<ExecOutput> {
        let ExecSession {
            session,
            mut error,
            stdin,
            mut stdout,
            stderr,
            resize,
        } = self;
        let feeder = stdin.map(|s| {
            let tx = s.tx.clone();
            tokio::spawn(async move {
                if let Some(data) = input {
                    tx.write(&data).await?;
                }
                tx.close().await
            })
        });
        let collected = tokio::time::timeout(within, async {
            let out = stdout.rx.read_to_end();
            let err = async {
                match stderr {
                    Some(mut s) => s.rx.read_to_end().await,
                    None => Ok(Vec::new()),
                }
            };
            let status = error.rx.read_to_end();
            let (out, err, status) = tokio::join!(out, err, status);
            Ok::<_, anyhow::Error>((out?, err?, status?))
        })
        .await;
        let (stdout, stderr, error) = match collected {
            Ok(r) => r.context("exec streams")?,
            Err(_) => bail!("exec streams still open after {within:?}"),
        };
        session.wait_end(Duration::from_secs(10)).await?;
        if let Some(f) = feeder {
            f.abort();
        }
        drop(resize);
        let status = if session.protocol() == "v4.channel.k8s.io" && !error.is_empty() {
            serde_json::from_slice(&error).with_context(|| {
                format!(
                    "error stream is not a Status: {:?}",
                    String::from_utf8_lossy(&error)
                )
            })?
        } else {
            serde_json::Value::Null
        };
        Ok(ExecOutput {
            protocol: session.protocol().to_string(),
            stdout,
            stderr,
            error,
            status,
            goaway: session.goaway(),
        })
    }
}

/// Runs an exec URL to its end as `kubectl exec [-i] [-t]` would: `stdin` is sent then
/// closed (the ExecRequest must have stdin set exactly when it is Some), a terminal of
/// `tty` = (width, height) is announced on the resize stream first. Bounded to 60 s.
pub async fn exec(
    url: &str,
    stdin: Option<Vec<u8>>,
    tty: Option<(u16, u16)>,
) -> Result<ExecOutput> {
    let s = ExecSession::start(url, &EXEC_PROTOCOLS, stdin.is_some(), tty.is_some()).await?;
    if let Some((w, h)) = tty {
        s.resize(w, h).await?;
    }
    s.finish(stdin, Duration::from_secs(60)).await
}
