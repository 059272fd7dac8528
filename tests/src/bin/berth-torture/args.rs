//! berth-torture's command line: the options, their defaults, the usage line and
//! `--help`.

use crate::faults::Fault;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: berth-torture --socket PATH --daemon CMDLINE --image IMAGE \
[--iterations N] [--faults kill,store,shim-kill,reboot] [--failpoints all|none|NAME,...] [--pod-network] [--userns] [--root DIR] [--state DIR] \
[--cgroup-parent PATH] [--ipam-dir DIR] [--runc-root DIR] [--pull IMAGE] [--counters N] [--seed N] [--work DIR]
[--churners N] [--duration D] [--sample-every S]
Try 'berth-torture --help' for what each option does.";

/// `--help`: what the harness does to the node, each option, and how it ends.
const HELP: &str = "\
berth-torture: crash-recovery testing of a CRI runtime on this node.

Starts the runtime's daemon (--daemon), runs pods and containers through its CRI socket,
kills the daemon at random moments (SIGKILL) or makes it die at each failpoint in turn,
restarts it and checks that nothing was lost or leaked: containers keep running with the
same pid and every line they print, exits that happened while the daemon was down are
reported with their real codes and times, GetContainerEvents announces every transition
once and in order, and everything it made can be removed, leaving no shim, mount, netns,
cgroup, runtime state, IP allocation, snapshot or blob behind.

Run it as root on a node (or a test machine) where no kubelet uses the runtime: it owns
the daemon while it runs, and removes only what it made. docs/crash-recovery.md has more.

USAGE:
    berth-torture --socket PATH --daemon CMDLINE --image IMAGE [OPTIONS]

REQUIRED:
    --socket PATH         The CRI socket the daemon serves (e.g. /run/berth/berth.sock).
    --daemon CMDLINE      How to start the daemon, split on spaces
                          (e.g. \"berthd --config /etc/berth/config.toml\").
    --image IMAGE         An image with busybox's sh, sleep and echo that the runtime
                          already has (it is not pulled), e.g. docker.io/library/busybox.

OPTIONS:
    --iterations N        Kill-restart-check rounds with a random kill moment [20]; also
                          the number of rounds of a phase fault (reboot).
    --faults LIST         The faults, separated by commas [kill]. Round faults share the
                          daemon-kill rounds in turn: kill (SIGKILL of the daemon at a
                          random moment), store (the same, then the daemon's state store
                          <root>/berth.redb is deleted, truncated or garbled, in turn,
                          while it is down; needs --root). shim-kill joins every round:
                          SIGKILL of a running churn pod's shim at a random moment (its
                          container must end with a reason and the pod become NotReady).
                          Phase faults run their own rounds after them: reboot (a simulated node reboot: every
                          shim and container killed -9, the state dir unmounted and
                          emptied, netns pins gone; checks that old pods are NotReady,
                          their containers exited with a reason, their IPs released,
                          everything removable, nothing left, new pods run).
    --failpoints LIST     Also make the daemon (or new pods' shims) die at failpoints, each
                          once: all, none, or names separated by commas. Berth only: armed
                          through BERTH_FAILPOINTS / BERTH_SHIM_FAILPOINTS [none].
    --pod-network         Pods get the runtime's pod network (CNI) instead of the host's.
    --userns              Every other churn pod gets a user namespace of its own (CRI
                          userns_options mode POD, ids 0-65535 mapped to 589824-655359,
                          as kubelet's hostUsers: false); needs --pod-network.
    --root DIR            The daemon's persistent root (paths.root), checked for leftover
                          pod and container dirs, snapshots, blobs and downloads.
    --state DIR           The daemon's state dir (paths.state), checked for leftover
                          bundles and netns pins.
    --cgroup-parent PATH  The pods' parent cgroup, checked for leftover cgroups [/berth].
    --ipam-dir DIR        The CNI host-local data dir, checked for leaked IPs.
    --runc-root DIR       The OCI runtime's state root, checked for leftover containers
                          whose cgroup is under --cgroup-parent (other daemons on the
                          node share it) [/run/containerd/runc/berth].
    --pull IMAGE[,IMAGE...]
                          A loop pulls and removes the first IMAGE (an image of its own:
                          removing it must not touch --image); churner i pulls the
                          (i+2)-th, runs its container from it and removes it each cycle.
    --churners N          Parallel churn loops, each making a pod, running a container,
                          ExecSync, reading its log, ContainerStats, PodSandboxStats,
                          ListContainerStats, then removing everything [2]. Every error
                          they see is explained by an injected fault or a violation.
    --duration D          Run random iterations for this long (90s, 30m, 1h) instead of
                          --iterations; the kill moment is then 1-10 s into each one.
    --sample-every S      Seconds between samples of the daemon's RSS and fds, and its
                          shims' count and PSS (samples.csv and samples.svg in --work) [5].
    --counters N          Long-lived counter containers whose every line is checked [3].
    --seed N              Seed of the kill moments, to replay a run [the time].
    --work DIR            Where logs and the daemon's output go [a new temp dir].
    -h, --help            This text.

EXIT STATUS:
    0 when every check passed; 1 on any violation (a table of violations by kind is
    printed) or when the daemon could not be started.
";

/// berthd's failpoints (daemon/src/failpoints.rs) and the shim's (shim/src/failpoints.rs)
/// that the workload passes through.
const FAILPOINTS: &[&str] = &[
    "pod.run.after_record",
    "pod.run.after_netns",
    "pod.run.after_pins",
    "pod.run.after_infra",
    "ctr.create.after_record",
    "ctr.create.after_bundle",
    "ctr.create.after_task",
    "ctr.start.before_task",
    "ctr.start.after_task",
    "ctr.stop.after_kill",
    "ctr.remove.after_delete",
    "pod.stop.after_containers",
    "pod.stop.after_infra",
    "pod.remove.after_stop",
    // Only on the workload's path with --pull.
    "image.pull.after_blobs",
    // The shim's (BERTH_SHIM_FAILPOINTS): churn pods' shims die there, the daemon lives.
    "shim.create.after_runtime",
    "shim.start.after_runtime",
    "shim.exit.before_record",
    "shim.exit.after_record",
];

pub struct Args {
    pub socket: String,
    pub daemon: String,
    pub image: String,
    pub iterations: usize,
    pub faults: Vec<Fault>,
    pub failpoints: Vec<String>,
    pub pod_network: bool,
    /// `--userns`: every other churn pod is user-namespaced.
    pub userns: bool,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub cgroup_parent: String,
    pub ipam_dir: Option<PathBuf>,
    pub runc_root: PathBuf,
    /// `--pull`: the pull loop's image, then the churners' own images.
    pub pull: Vec<String>,
    pub counters: usize,
    pub seed: u64,
    pub work: Option<PathBuf>,
    pub churners: usize,
    pub duration: Option<Duration>,
    pub sample_every: Duration,
}

/// `90s`, `30m`, `1h` or plain seconds.
fn duration(v: &str) -> Result<Duration> {
    let (n, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map_or((v, ""), |i| v.split_at(i));
    let n: u64 = n.parse().with_context(|| format!("bad duration {v:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("bad duration {v:?} (e.g. 90s, 30m, 1h)"),
    };
    Ok(Duration::from_secs(secs))
}

pub fn parse() -> Result<Args> {
    let mut a = Args {
        socket: String::new(),
        daemon: String::new(),
        image: String::new(),
        iterations: 20,
        faults: vec![Fault::Kill],
        failpoints: Vec::new(),
        pod_network: false,
        userns: false,
        root: None,
        state: None,
        cgroup_parent: "/berth".into(),
        ipam_dir: None,
        runc_root: "/run/containerd/runc/berth".into(),
        pull: Vec::new(),
        counters: 3,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        work: None,
        churners: 2,
        duration: None,
        sample_every: Duration::from_secs(5),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .with_context(|| format!("{k} needs a value\n{USAGE}"))
        };
        match k.as_str() {
            "--socket" => a.socket = v()?,
            "--daemon" => a.daemon = v()?,
            "--image" => a.image = v()?,
            "--iterations" => a.iterations = v()?.parse()?,
            "--faults" => a.faults = Fault::parse(&v()?)?,
            "--failpoints" => {
                a.failpoints = match v()?.as_str() {
                    "all" => FAILPOINTS.iter().map(|s| s.to_string()).collect(),
                    "none" => Vec::new(),
                    list => list.split(',').map(String::from).collect(),
                }
            }
            "--pod-network" => a.pod_network = true,
            "--userns" => a.userns = true,
            "--root" => a.root = Some(v()?.into()),
            "--state" => a.state = Some(v()?.into()),
            "--cgroup-parent" => a.cgroup_parent = v()?,
            "--ipam-dir" => a.ipam_dir = Some(v()?.into()),
            "--runc-root" => a.runc_root = v()?.into(),
            "--pull" => a.pull = v()?.split(',').map(String::from).collect(),
            "--counters" => a.counters = v()?.parse()?,
            "--seed" => a.seed = v()?.parse()?,
            "--work" => a.work = Some(v()?.into()),
            "--churners" => a.churners = v()?.parse()?,
            "--duration" => a.duration = Some(duration(&v()?)?),
            "--sample-every" => a.sample_every = duration(&v()?)?.max(Duration::from_secs(1)),
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.pull.is_empty() {
        a.failpoints.retain(|f| !f.starts_with("image.pull."));
    }
    if a.socket.is_empty() || a.daemon.is_empty() || a.image.is_empty() {
        bail!("--socket, --daemon and --image are required\n{USAGE}");
    }
    if a.userns && !a.pod_network {
        bail!("--userns needs --pod-network (a user-namespaced pod has its own network)");
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(super::duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(super::duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(super::duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(super::duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(super::duration("1d").is_err());
        assert!(super::duration("m").is_err());
    }
}
