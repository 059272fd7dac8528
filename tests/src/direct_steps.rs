//! Steps of a task's life on a shim started directly with runc options: `start` with the
//! options on stdin, Create + Start, Wait + Delete + Shutdown, the daemon serving an id, and
//! a conclusion that runs the leak-checking teardown whatever the scenario found.

use anyhow::{bail, ensure, Context, Result};
use berth_proto::api;
use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::{Message, MessageField};
use berth_proto::ttrpc;
use std::time::Duration;

use crate::direct::Direct;
use crate::procs;
use crate::task_reqs;

/// Runs the leak-checking teardown whatever happened; the scenario's error comes first.
pub fn conclude(d: Direct, res: Result<()>) -> Result<()> {
    let what = format!("namespace {} dir {}", d.namespace, d.dir.display());
    let fin = d.finish();
    match (res, fin) {
        (Ok(()), fin) => fin,
        (Err(e), Ok(())) => Err(e.context(what)),
        (Err(e), Err(f)) => Err(e.context(format!("{what}; teardown also failed: {f:#}"))),
    }
}

/// `start` with `opts` on stdin (as containerd 1.6–2.2 sends them): exit 0, exactly the address.
pub fn start_with_options(d: &Direct, id: &str, opts: &Any) -> Result<String> {
    let s = d.start(id, &opts.write_to_bytes()?, Duration::from_secs(2))?;
    let want = d.expected_address(id);
    ensure!(
        s.code == 0 && s.output == want.as_bytes(),
        "start {id} with runc options: exit {} output {:?}, want exit 0 and {want:?}",
        s.code,
        s.text()
    );
    Ok(want)
}

/// The one daemon serving `id` (its argv carries `-id <id>`).
pub fn daemon_of(d: &Direct, id: &str) -> Result<i32> {
    let all = d.daemons();
    let mine: Vec<i32> = all
        .iter()
        .filter(|p| p.argv.windows(2).any(|w| w[0] == "-id" && w[1] == id))
        .map(|p| p.pid)
        .collect();
    match mine.as_slice() {
        [pid] => Ok(*pid),
        _ => bail!("expected one shim daemon for {id}, found {all:#?}"),
    }
}

pub fn daemon_gone(pid: i32) -> Result<()> {
    procs::poll(
        Duration::from_secs(5),
        "shim daemon to exit after Shutdown",
        || (!procs::alive(pid)).then_some(()),
    )
}

/// Create `id` with `opts` in CreateTaskRequest.options, then Start it; returns the init pid.
pub async fn create_start(
    d: &Direct,
    client: &ttrpc::r#async::Client,
    id: &str,
    stdin: &str,
    stdout: &str,
    stderr: &str,
    opts: &Any,
) -> Result<u32> {
    let mut req = d.create_req(id, stdout, stderr);
    req.stdin = stdin.into();
    req.options = MessageField::some(opts.clone());
    let c: api::CreateTaskResponse = d
        .rpc(client, "Create", &req)
        .await
        .with_context(|| format!("Create {id} with runc options"))?;
    ensure!(c.pid > 0, "Create pid {}", c.pid);
    let s: api::StartResponse = d
        .rpc(client, "Start", &task_reqs::start_req(id, ""))
        .await
        .with_context(|| format!("Start {id}"))?;
    ensure!(
        s.pid == c.pid,
        "Start pid {} != Create pid {}",
        s.pid,
        c.pid
    );
    Ok(c.pid)
}

/// Wait (exit `code`), Delete, Shutdown.
pub async fn wait_delete_shutdown(
    d: &Direct,
    client: &ttrpc::r#async::Client,
    id: &str,
    code: u32,
) -> Result<()> {
    let w: api::WaitResponse = d
        .rpc(client, "Wait", &task_reqs::wait_req(id, ""))
        .await
        .with_context(|| format!("Wait {id}"))?;
    ensure!(w.exit_status == code, "{id} exit status {w:?}, want {code}");
    let del: api::DeleteResponse = d
        .rpc(client, "Delete", &task_reqs::delete_req(id, ""))
        .await
        .with_context(|| format!("Delete {id}"))?;
    ensure!(del.exit_status == code, "Delete {id}: {del:?}");
    shutdown(d, client, id).await;
    Ok(())
}

/// Shutdown with nothing left: the reply may race with the daemon's exit (containerd ignores
/// that too), so only the daemon's exit is checked afterwards.
pub async fn shutdown(d: &Direct, client: &ttrpc::r#async::Client, id: &str) {
    let _ = d
        .rpc::<_, api::Empty>(client, "Shutdown", &task_reqs::shutdown_req(id))
        .await;
}
