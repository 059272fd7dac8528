//! A pre-installed NRI plugin for the tests: the runtime starts it with its end of a
//! socket pair as fd 3 (`NRI_PLUGIN_SOCKET=3`) and its name and index in the
//! environment. It adds the `KEY=VALUE` lines of its configuration to every container's
//! env, and exits when the runtime closes the connection.

use std::os::fd::FromRawFd;

use anyhow::{Context, Result};
use berth_tests::nri_plugin::{Behavior, TestPlugin};

fn main() -> Result<()> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let fd: i32 = var("NRI_PLUGIN_SOCKET")?.parse()?;
    let (name, idx) = (var("NRI_PLUGIN_NAME")?, var("NRI_PLUGIN_IDX")?);
    // SAFETY: the runtime handed this fd over for this process's use alone.
    let sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    sock.set_nonblocking(true)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let trunk = tokio::net::UnixStream::from_std(sock)?;
            let behavior = Behavior {
                env_from_config: true,
                ..Default::default()
            };
            let p = TestPlugin::over(trunk, &name, &idx, behavior).await?;
            p.closed().await;
            Ok(())
        })
}
