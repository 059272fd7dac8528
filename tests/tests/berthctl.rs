//! berthctl, the CRI command line, as an operator uses it: the built binary against a
//! berthd of the fixture. `run` makes a pod (pod network) and a busybox container in one
//! step; `pods` and `ps` list them (tables and `-o json`); `logs` shows what it wrote;
//! `exec` runs commands (exit codes, stdin, and a terminal that has the window's size
//! from the start and follows a resize); `attach -it` reaches a container's shell and
//! detaches; `inspect` is JSON; `stats` lists it; `events` shows a container started
//! meanwhile, and watching takes no event from kubelet; `stop`, `rm` and `rmp` clean up; an unknown id fails with the CRI code;
//! `pull` shows its progress on a terminal, `images` and `rmi` follow. `--endpoint`
//! reaches containerd's CRI socket too.

use anyhow::{ensure, Context, Result};
use berth_cri::v1 as cri;
use berth_tests::berthctl::{Ctl, Pty};
use berth_tests::berthd::{berthd_test, Berthd};
use berth_tests::image::BUSYBOX_IMAGE;
use berth_tests::procs;
use berth_tests::registry::Registry;
use berth_tests::slow_proxy::SlowProxy;
use berth_tests::{Instance, Runtime, Setup};
use serde_json::Value;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// Polls `f` (every 100 ms, `WITHIN` at most) until it gives Some.
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> Result<T> {
    procs::poll(WITHIN, what, f)
}

#[test]
fn run_list_logs_exec_inspect_stats_then_clean_up() -> Result<()> {
    berthd_test(Berthd::builder().busybox().default_network(0), async |d| {
        let ctl = Ctl::new(&d.socket);
        let log_root = d.dir.path().join("podlogs");
        let info = ctl.ok(&["info"])?;
        ensure!(
            info.contains("RuntimeReady: true") && info.contains("NetworkReady: true"),
            "{info}"
        );

        let script = "echo hello-from-berthctl; echo to-stderr >&2; exec sleep 100000";
        let cid = ctl.ok(&[
            "run",
            "--name",
            "hello",
            "--log-root",
            &log_root.display().to_string(),
            BUSYBOX_IMAGE,
            "--",
            "sh",
            "-c",
            script,
        ])?;
        let cid = cid.trim().to_string();
        ensure!(cid.len() == 64, "run printed {cid:?}, not a container id");
        let short = &cid[..13];

        // Tables and JSON.
        let pods = ctl.ok(&["pods"])?;
        let row = pods
            .lines()
            .find(|l| l.contains("hello"))
            .context(pods.clone())?;
        ensure!(row.contains("Ready") && row.contains("default"), "{pods}");
        let pods_json = json(&ctl.ok(&["pods", "-o", "json"])?)?;
        let pod = &pods_json["items"][0];
        ensure!(
            pod["metadata"]["name"] == "hello" && pod["state"] == "SANDBOX_READY",
            "{pods_json}"
        );
        let pod_id = pod["id"].as_str().context("pod id")?.to_string();
        let ps = ctl.ok(&["ps"])?;
        ensure!(
            ps.lines().any(|l| l.starts_with(short)
                && l.contains("Running")
                && l.contains(BUSYBOX_IMAGE)),
            "{ps}"
        );
        let ps_json = json(&ctl.ok(&["ps", "-o", "json"])?)?;
        ensure!(
            ps_json["containers"][0]["id"] == cid.as_str()
                && ps_json["containers"][0]["state"] == "CONTAINER_RUNNING",
            "{ps_json}"
        );
        ensure!(ctl.ok(&["ps", "-q"])?.trim() == cid, "ps -q");

        // The log, by name: stdout to stdout, stderr to stderr.
        let logs = eventually("the container's log", || {
            let o = ctl.run(&["logs", "hello"]).ok()?;
            (o.stdout.contains("hello-from-berthctl") && o.stderr.contains("to-stderr"))
                .then_some(o)
        })?;
        ensure!(
            logs.code == 0 && !logs.stdout.contains("to-stderr"),
            "{logs:?}"
        );

        // exec: output, exit code, stdin.
        let o = ctl.run(&[
            "exec",
            short,
            "sh",
            "-c",
            "echo in-exec; echo oops >&2; exit 3",
        ])?;
        ensure!(
            o.code == 3 && o.stdout == "in-exec\n" && o.stderr == "oops\n",
            "exec: {o:?}"
        );
        let o = ctl.run_with_input(&["exec", "-i", "hello", "cat"], b"typed line\n")?;
        ensure!(o.code == 0 && o.stdout == "typed line\n", "exec -i: {o:?}");

        // inspect: JSON with the id and the runtime's verbose info.
        let st = json(&ctl.ok(&["inspect", "hello"])?)?;
        ensure!(
            st["status"]["id"] == cid.as_str()
                && st["status"]["state"] == "CONTAINER_RUNNING"
                && st["info"].is_object(),
            "{st}"
        );
        let stats = ctl.ok(&["stats"])?;
        ensure!(
            stats
                .lines()
                .any(|l| l.starts_with(short) && l.contains("hello")),
            "{stats}"
        );

        // stop, rm, rmp: nothing left, the pod's log directory included.
        ctl.ok(&["stop", "-t", "1", "hello"])?;
        let ps = ctl.ok(&["ps", "-a"])?;
        ensure!(
            ps.lines()
                .any(|l| l.starts_with(short) && l.contains("Exited")),
            "{ps}"
        );
        ctl.ok(&["rm", short])?;
        ensure!(
            !ctl.ok(&["ps", "-a"])?.contains(short),
            "rm left the container"
        );
        ctl.ok(&["rmp", &pod_id])?;
        ensure!(
            ctl.ok(&["pods", "-q"])?.trim().is_empty(),
            "rmp left the pod"
        );
        let left: Vec<_> = std::fs::read_dir(&log_root)?
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(left.is_empty(), "pod log dirs left: {left:?}");

        // An unknown id: the CRI code and message, a failing exit.
        let o = ctl.run(&["inspect", "0123456789abcdef"])?;
        ensure!(
            o.code != 0 && o.stderr.contains("NotFound") && o.stderr.contains("0123456789abcdef"),
            "unknown id: {o:?}"
        );
        Ok(())
    })
}

#[test]
fn exec_with_a_terminal_has_its_size_and_follows_a_resize() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let ctl = Ctl::new(&d.socket);
        let log_root = d.dir.path().join("podlogs").display().to_string();
        ctl.ok(&[
            "run",
            "--host-network",
            "--name",
            "term",
            "--log-root",
            &log_root,
            BUSYBOX_IMAGE,
            "--",
            "sleep",
            "100000",
        ])?;

        // A command that reads its size as it starts.
        let mut p = Pty::spawn(
            ctl.command(&["exec", "-it", "term", "stty", "size"])?,
            97,
            31,
        )?;
        let code = p.wait(WITHIN)?;
        let seen = String::from_utf8_lossy(&p.seen).into_owned();
        ensure!(
            code == 0 && seen.contains("31 97"),
            "exit {code}, terminal: {seen:?}"
        );

        // A shell: its prompt, then the window resized, then its size asked again.
        let mut p = Pty::spawn(ctl.command(&["exec", "-it", "term", "sh"])?, 80, 24)?;
        p.read_until(0, "# ", WITHIN)?;
        let mark = p.seen.len();
        p.type_in(b"stty size\r")?;
        p.read_until(mark, "24 80", WITHIN)?;
        p.resize(120, 40)?;
        let mark = p.seen.len();
        // The new size reaches the remote terminal as the resize message arrives; the
        // shell is asked until it shows (each answer is a line of its own).
        eventually("the resized terminal", || {
            p.type_in(b"stty size\r").ok()?;
            p.read_until(mark, "40 120", Duration::from_millis(500))
                .ok()
        })?;
        p.type_in(b"exit 5\r")?;
        let code = p.wait(WITHIN)?;
        ensure!(code == 5, "the shell's exit 5 came back as {code}");

        // attach -it to a container's own shell, then detach: the container runs on.
        ctl.ok(&[
            "run",
            "--host-network",
            "-i",
            "-t",
            "--name",
            "shell",
            "--log-root",
            &log_root,
            BUSYBOX_IMAGE,
            "--",
            "sh",
        ])?;
        let mut p = Pty::spawn(ctl.command(&["attach", "-i", "-t", "shell"])?, 90, 30)?;
        p.read_until(0, "detach with ctrl-p ctrl-q", WITHIN)?;
        let mark = p.seen.len();
        p.type_in(b"echo attached-$((40+2))\r")?;
        p.read_until(mark, "attached-42", WITHIN)?;
        p.type_in(&[0x10, 0x11])?;
        let code = p.wait(WITHIN)?;
        let seen = String::from_utf8_lossy(&p.seen).into_owned();
        ensure!(
            code == 0 && seen.contains("detached"),
            "exit {code}: {seen:?}"
        );
        let ps = ctl.ok(&["ps", "--name", "shell"])?;
        ensure!(ps.contains("Running"), "after detaching: {ps}");
        Ok(())
    })
}

#[test]
fn events_show_a_container_started_meanwhile() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let ctl = Ctl::new(&d.socket);
        let log_root = d.dir.path().join("podlogs").display().to_string();
        let events = ctl.spawn(&["events"])?;
        // The header is printed once the runtime has answered the subscription.
        events.wait_line(WITHIN, |l| l.starts_with("TIME"))?;
        let cid = ctl.ok(&[
            "run",
            "--host-network",
            "--name",
            "later",
            "--log-root",
            &log_root,
            BUSYBOX_IMAGE,
            "--",
            "true",
        ])?;
        let short = &cid.trim()[..13];
        for kind in [
            "CONTAINER_CREATED_EVENT",
            "CONTAINER_STARTED_EVENT",
            "CONTAINER_STOPPED_EVENT",
        ] {
            events.wait_line(WITHIN, |l| {
                l.contains(kind) && l.contains(short) && l.contains("(later)")
            })?;
        }
        drop(events);

        // As JSON, one object a line.
        let json_events = ctl.spawn(&["events", "-o", "json"])?;
        ctl.ok(&["rm", short])?;
        let line = json_events.wait_line(WITHIN, |l| l.contains("CONTAINER_DELETED_EVENT"))?;
        let e = json(&line)?;
        ensure!(e["containerId"] == cid.trim(), "{e}");
        Ok(())
    })
}

/// `berthctl run` of a host-network busybox `true` named `name`: its container id.
fn run_true(ctl: &Ctl, d: &Berthd, name: &str) -> Result<String> {
    let log_root = d.dir.path().join("podlogs").display().to_string();
    let cid = ctl.ok(&[
        "run",
        "--host-network",
        "--name",
        name,
        "--log-root",
        &log_root,
        BUSYBOX_IMAGE,
        "--",
        "true",
    ])?;
    Ok(cid.trim().to_string())
}

/// The first `n` events kubelet's next GetContainerEvents subscription gets for `cid`.
async fn kubelet_events(d: &Berthd, cid: &str, n: usize) -> Result<Vec<cri::ContainerEventType>> {
    let (rs, _) = d.client().await?;
    let mut stream = rs
        .clone()
        .get_container_events(cri::GetEventsRequest {})
        .await?
        .into_inner();
    let mut got = Vec::new();
    while got.len() < n {
        let e = tokio::time::timeout(WITHIN, stream.message())
            .await
            .with_context(|| format!("no more events for the container after {got:?}"))??
            .context("the event stream ended")?;
        if e.container_id == cid {
            got.push(cri::ContainerEventType::try_from(e.container_event_type)?);
        }
    }
    Ok(got)
}

#[test]
fn events_watched_with_berthctl_still_reach_kubelet_also_after_a_crash() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let ctl = Ctl::new(&d.socket);
        // Nobody subscribed (kubelet is away): the container's events wait for a subscriber.
        let cid = run_true(&ctl, d, "kept")?;
        let short = &cid[..13];
        // The operator watches them go by...
        let events = ctl.spawn(&["events"])?;
        for kind in ["CONTAINER_CREATED_EVENT", "CONTAINER_STOPPED_EVENT"] {
            events.wait_line(WITHIN, |l| l.contains(kind) && l.contains(short))?;
        }
        drop(events);
        // ...and kubelet, subscribing after a crash of berthd, still gets every one of them.
        d.kill9()?;
        d.restart()?;
        let got = kubelet_events(d, &cid, 3).await?;
        use cri::ContainerEventType as T;
        ensure!(
            got == [
                T::ContainerCreatedEvent,
                T::ContainerStartedEvent,
                T::ContainerStoppedEvent
            ],
            "kubelet got {got:?}"
        );
        Ok(())
    })
}

#[test]
fn events_only_berthctl_watched_live_still_reach_kubelet() -> Result<()> {
    berthd_test(Berthd::builder().busybox(), async |d| {
        let ctl = Ctl::new(&d.socket);
        let cid = run_true(&ctl, d, "watched")?;
        let short = &cid[..13];
        // Only the operator watches while the container is removed: the DELETED event is
        // emitted with an observer as berthd's only subscriber.
        let events = ctl.spawn(&["events"])?;
        events.wait_line(WITHIN, |l| {
            l.contains("CONTAINER_STOPPED_EVENT") && l.contains(short)
        })?;
        ctl.ok(&["rm", &cid])?;
        events.wait_line(WITHIN, |l| {
            l.contains("CONTAINER_DELETED_EVENT") && l.contains(short)
        })?;
        drop(events);
        // kubelet, subscribing next (no crash in between), gets the whole life.
        let got = kubelet_events(d, &cid, 4).await?;
        use cri::ContainerEventType as T;
        ensure!(
            got == [
                T::ContainerCreatedEvent,
                T::ContainerStartedEvent,
                T::ContainerStoppedEvent,
                T::ContainerDeletedEvent
            ],
            "kubelet got {got:?}"
        );
        Ok(())
    })
}

#[test]
fn pull_shows_its_progress_on_a_terminal_then_images_and_rmi() -> Result<()> {
    let (reg, _) = Registry::with_busybox("library/busybox:1")?;
    // The layer (about 1 MB) at 256 KiB/s: the pull lasts seconds, a progress line shows.
    let proxy = SlowProxy::start(reg.port, 256 << 10)?;
    let image = format!("127.0.0.1:{}/library/busybox:1", proxy.port);
    berthd_test(Berthd::builder(), async |d| {
        let ctl = Ctl::new(&d.socket);
        let mut p = Pty::spawn(ctl.command(&["pull", &image])?, 120, 30)?;
        let code = p.wait(Duration::from_secs(120))?;
        let seen = String::from_utf8_lossy(&p.seen).into_owned();
        ensure!(
            code == 0
                && seen.contains(&format!("pulling {image}: "))
                && seen.contains("Image is up to date for sha256:"),
            "exit {code}, terminal: {seen:?}"
        );
        let images = ctl.ok(&["images"])?;
        let repo = format!("127.0.0.1:{}/library/busybox", proxy.port);
        ensure!(
            images
                .lines()
                .any(|l| l.starts_with(&format!("{repo} ")) && l.contains(" 1 ")),
            "{images}"
        );
        let listed = json(&ctl.ok(&["images", "-o", "json"])?)?;
        ensure!(
            listed["images"][0]["repoTags"][0] == image.as_str(),
            "{listed}"
        );

        // Not on a terminal: no progress line, only the answer.
        let o = ctl.run(&["pull", &image])?;
        ensure!(
            o.code == 0 && o.stderr.is_empty() && o.stdout.starts_with("Image is up to date for "),
            "{o:?}"
        );
        ctl.ok(&["rmi", &image])?;
        ensure!(
            ctl.ok(&["images", "-q"])?.trim().is_empty(),
            "rmi left the image"
        );
        Ok(())
    })
}

#[test]
fn endpoint_reaches_containerds_cri_socket() -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth).with_cri())?;
    let ctl = Ctl {
        endpoint: format!("unix://{}", inst.address),
    };
    let info = ctl.ok(&["info"])?;
    ensure!(
        info.contains("Runtime: containerd") && info.contains("RuntimeReady: true"),
        "{info}"
    );
    let pods = ctl.ok(&["pods"])?;
    ensure!(pods.starts_with("POD ID"), "{pods}");
    let listed = json(&ctl.ok(&["pods", "-o", "json"])?)?;
    ensure!(
        listed["items"].as_array().is_some_and(|a| a.is_empty()),
        "{listed}"
    );
    let images = ctl.ok(&["images"])?;
    ensure!(images.contains("berth.test/busybox"), "{images}");
    let o = ctl.run(&["inspectp", "nosuchpod"])?;
    ensure!(o.code != 0 && o.stderr.contains("NotFound"), "{o:?}");
    inst.finish()
}
