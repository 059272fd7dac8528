//! ExecSync with large output and a timeout, as an exec probe or `crictl exec -s` sees it:
//! output larger than a pipe comes back whole (it is read while the process runs), output
//! past 16 MiB per stream is cut there without blocking the process, and a timeout ends the
//! call with DeadlineExceeded (kubelet's probe-timeout code) and kills the process.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::cri::{container_config, pod_config};
use berth_tests::cri_calls::CriCalls;
use berth_tests::image;
use berth_tests::pod::Pod;
use tonic::Code;

/// kubelet's cap on each of an ExecSync's streams.
const CAP: usize = 16 << 20;

#[test]
fn exec_sync_returns_large_output_cuts_it_at_16_mib_and_honours_its_timeout() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let (rs, _) = d.client().await?;
        let pod = Pod::run(d, pod_config("execout", &d.dir.path().join("logs"))).await?;
        let id = pod
            .start(container_config(
                "execout",
                image::BUSYBOX_IMAGE,
                &["sleep", "3600"],
            ))
            .await?;

        // 200 KB: three times what a pipe holds. Before the fix the process blocked on
        // its full pipe and the call failed at its timeout with no output.
        let t = Instant::now();
        let r = rs
            .exec_sync_of(
                &id,
                &["sh", "-c", "head -c 200000 /dev/zero; echo done >&2"],
                10,
            )
            .await?;
        println!("ExecSync of 200 KB: {:?}", t.elapsed());
        ensure!(
            r.exit_code == 0 && r.stdout.len() == 200_000 && r.stderr == b"done\n",
            "200 KB: exit {} stdout {} bytes stderr {:?}",
            r.exit_code,
            r.stdout.len(),
            String::from_utf8_lossy(&r.stderr)
        );

        // 20 MB on stdout: cut at 16 MiB; the process is not blocked (it writes to stderr
        // after stdout and exits 3). A 16 MiB answer is over gRPC's default 4 MiB limit
        // (and kubelet's 16 MiB, which sees ResourceExhausted, as with containerd): this
        // client takes larger messages to check what berthd sends.
        let r = rs
            .clone()
            .max_decoding_message_size(64 << 20)
            .exec_sync_of(
                &id,
                &[
                    "sh",
                    "-c",
                    "head -c 20000000 /dev/zero; echo done >&2; exit 3",
                ],
                30,
            )
            .await?;
        ensure!(
            r.exit_code == 3 && r.stdout.len() == CAP && r.stderr == b"done\n",
            "20 MB: exit {} stdout {} bytes stderr {:?}",
            r.exit_code,
            r.stdout.len(),
            String::from_utf8_lossy(&r.stderr)
        );
        ensure!(r.stdout.iter().all(|b| *b == 0), "stdout content changed");

        // A timeout: DeadlineExceeded after about the timeout, not after the process' 60 s,
        // and the process is gone (no `sleep 60` left in the container).
        let t = Instant::now();
        let r = rs.exec_sync_of(&id, &["sleep", "60"], 2).await;
        let took = t.elapsed();
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::DeadlineExceeded),
            "timeout: {r:?}"
        );
        ensure!(
            took < Duration::from_secs(30),
            "timed out exec returned after {took:?}"
        );
        let ps = rs.exec_sync_of(&id, &["ps", "-o", "args"], 10).await?;
        let ps = String::from_utf8_lossy(&ps.stdout).to_string();
        ensure!(
            !ps.contains("sleep 60"),
            "the timed-out process still runs:\n{ps}"
        );

        // The container and berthd are fine afterwards.
        let r = rs.exec_sync_of(&id, &["echo", "ok"], 10).await?;
        ensure!(r.stdout == b"ok\n", "{r:?}");
        pod.remove().await?;
        anyhow::Ok(())
    })
}
