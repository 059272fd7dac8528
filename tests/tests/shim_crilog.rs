//! `cri-log://` (Berth's extension): the shim writes the CRI log format itself, so every
//! line of stdout and stderr lands in one file with the time it was produced, in order,
//! with `F` for whole lines and `P` for the chunks of lines over 16 KiB.

use anyhow::{ensure, Context, Result};
use berth_proto::api;
use berth_tests::direct::Direct;
use berth_tests::task_api;
use berth_tests::task_reqs;

#[test]
fn cri_log_lines_are_timestamped_and_tagged() -> Result<()> {
    let d = Direct::new()?;
    // 3 short lines on stdout, one on stderr, one 40000-byte line, and a last line
    // without its newline.
    let script = "echo one; echo two >&2; echo three; head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail";
    d.bundle("c1", &["sh", "-c", script], &[])?;
    let addr = d.start_ok("c1", "c1")?;
    let log = d.dir.join("logs/c1/0.log");
    let uri = format!("cri-log://{}", log.display());
    let before = std::time::SystemTime::now();
    let res = task_api::block_on(async {
        let cl = task_api::connect(&addr).await?;
        d.rpc::<_, api::CreateTaskResponse>(&cl, "Create", &d.create_req("c1", &uri, &uri))
            .await
            .context("Create")?;
        d.rpc::<_, api::StartResponse>(&cl, "Start", &task_reqs::start_req("c1", ""))
            .await
            .context("Start")?;
        let w: api::WaitResponse = d
            .rpc(&cl, "Wait", &task_reqs::wait_req("c1", ""))
            .await
            .context("Wait")?;
        // Delete waits for the log copies to drain.
        d.rpc::<_, api::DeleteResponse>(&cl, "Delete", &task_reqs::delete_req("c1", ""))
            .await
            .context("Delete")?;
        let _ = d
            .rpc::<_, api::Empty>(&cl, "Shutdown", &task_reqs::shutdown_req("c1"))
            .await;
        Ok::<_, anyhow::Error>(w.exit_status)
    })?;
    ensure!(res? == 0, "exit status");
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("{} not written", log.display()))?;
    let recs: Vec<(&str, &str, &str, &str)> = text
        .lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            (
                it.next().unwrap_or(""),
                it.next().unwrap_or(""),
                it.next().unwrap_or(""),
                it.next().unwrap_or(""),
            )
        })
        .collect();
    let stdout: Vec<(&str, String)> = recs
        .iter()
        .filter(|r| r.1 == "stdout")
        .map(|r| {
            (
                r.2,
                if r.3.len() > 20 {
                    format!("x*{}", r.3.len())
                } else {
                    r.3.to_string()
                },
            )
        })
        .collect();
    ensure!(
        stdout
            == vec![
                ("F", "one".to_string()),
                ("F", "three".to_string()),
                ("P", "x*16384".to_string()),
                ("P", "x*16384".to_string()),
                ("F", "x*7232".to_string()),
                ("F", "tail".to_string()),
            ],
        "stdout records: {stdout:?}\n{}",
        &text[..text.len().min(400)]
    );
    ensure!(
        recs.iter()
            .any(|r| r.1 == "stderr" && r.2 == "F" && r.3 == "two"),
        "no stderr line"
    );
    // Every record carries a UTC RFC 3339 time from this run, in order.
    let mut last = String::new();
    for r in &recs {
        ensure!(
            r.0.len() == 30 && r.0.ends_with('Z') && r.0.as_bytes()[10] == b'T',
            "timestamp {:?}",
            r.0
        );
        ensure!(
            r.0 >= last.as_str(),
            "timestamps out of order: {} after {last}",
            r.0
        );
        last = r.0.to_string();
    }
    let start_secs = before.duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let first_year: u64 = recs[0].0[..4].parse()?;
    ensure!(
        first_year >= 1970 + start_secs / 31_557_600,
        "timestamp year {first_year}"
    );
    d.finish()
}
