//! The pull phase: PullImage from the reference env's registry (127.0.0.1:5000, plain HTTP
//! for both runtimes) of two images this bench builds and pushes there once:
//!
//! - `berth-bench/busybox:1`: the test suite's busybox layer plus one bench-only file (so
//!   berthd's imported `berth.test/busybox:1` shares no layer with it), gzip, ~1 MB;
//!   median of N pulls; then N more with the image left in place (nothing to fetch but
//!   the manifest).
//! - `berth-bench/big:1`: 20 gzip layers of 10 MiB of incompressible bytes each (10 files
//!   of 1 MiB, generated from a fixed seed; stored deflate blocks, as zlib and Go's gzip
//!   write such data, framed by the test crate itself, so a rerun builds the same blobs
//!   whatever flate2 backend is built in, and pushes nothing); pull + unpack wall time, and
//!   the daemon's VmRSS sampled every 5 ms while the pull runs.
//!
//! Every pull is preceded by a RemoveImage and a check that the daemon's content store no
//! longer holds the image's first layer, so each one really fetches and unpacks. Both
//! images are removed from both runtimes at the end, also after an error; the pushed
//! repositories stay in the (shared) registry.

use super::*;
use berth_tests::cri::ImageServiceClient;
use berth_tests::image::{self, ImageDef, LayerCompression, LayerTar, Layout};
use berth_tests::{cri_images, http, registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tonic::transport::Channel;

type Is = ImageServiceClient<Channel>;

/// The reference env's registry (containerd reaches it through its hosts.toml; berthd
/// treats loopback registries as plain HTTP by itself).
const REGISTRY_PORT: u16 = 5000;
const SMALL_REPO: &str = "berth-bench/busybox";
const BIG_REPO: &str = "berth-bench/big";
const TAG: &str = "1";
/// The big image: layers × files × bytes.
pub(crate) const BIG_LAYERS: usize = 20;
const FILES_PER_LAYER: usize = 10;
const FILE_BYTES: usize = 1 << 20;
/// Seed of the big image's bytes; changing it (or the shape above) pushes a new image.
const SEED: u64 = 0x6265_7274_6862_6967;
/// containerd's content store (the reference env's root).
const CONTAINERD_BLOBS: &str =
    "/var/lib/anchor-containerd/io.containerd.content.v1.content/blobs/sha256";
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Quiet time before the idle reading of a big pull (Go GC, lazy frees of the removal).
const SETTLE: Duration = Duration::from_secs(2);

/// Compressed sizes of the two images' layers (bytes), once built: for the report.
pub(crate) static SIZES: OnceLock<(u64, u64)> = OnceLock::new();

pub(crate) fn small_ref() -> String {
    format!("127.0.0.1:{REGISTRY_PORT}/{SMALL_REPO}:{TAG}")
}

pub(crate) fn big_ref() -> String {
    format!("127.0.0.1:{REGISTRY_PORT}/{BIG_REPO}:{TAG}")
}

/// Memory of a process from /proc/<pid>/status, kB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mem {
    pub(crate) rss: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
    /// VmHWM: the resident peak since start (or since the last clear_refs 5).
    pub(crate) hwm: u64,
}

pub(crate) fn mem(pid: i32) -> Result<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| berth_tests::procs::field_kb(&s, name);
    Ok(Mem {
        rss: field("VmRSS:").with_context(|| format!("no VmRSS for pid {pid}"))?,
        anon: field("RssAnon:").unwrap_or(0),
        file: field("RssFile:").unwrap_or(0),
        hwm: field("VmHWM:").unwrap_or(0),
    })
}

/// CPU time (user + system, all threads) the process has used, ms.
fn cpu_ms(pid: i32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) + ticks(12)) as f64 * 1e3 / hz)
}

/// One timed pull of the big image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BigPull {
    pub(crate) ms: f64,
    /// Just before the PullImage call, after the settle.
    pub(crate) before: Mem,
    /// The sample with the highest VmRSS.
    pub(crate) peak: Mem,
    pub(crate) samples: usize,
    /// CPU time the daemon used during the pull (10 ms ticks).
    pub(crate) cpu_ms: f64,
    /// berthd only: VmHWM after the pull, the peak having been reset just before it.
    pub(crate) hwm: Option<u64>,
}

impl BigPull {
    pub(crate) fn growth(&self) -> u64 {
        self.peak.rss.saturating_sub(self.before.rss)
    }
}

/// The images as built and pushed.
struct Images {
    small: Layout,
    big: Layout,
}

/// The busybox layer with one extra file: a layer of its own.
fn small_layer() -> Result<Vec<u8>> {
    let raw = image::busybox_layer()?;
    let mut out = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(&raw[..]);
    for e in ar.entries()? {
        let mut e = e?;
        let h = e.header().clone();
        out.append(&h, &mut e)?;
    }
    let body = b"berthd-bench pull image\n";
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(body.len() as u64);
    h.set_mtime(1);
    h.set_uid(0);
    h.set_gid(0);
    out.append_data(&mut h, "etc/berthd-bench", &body[..])?;
    Ok(out.into_inner()?)
}

fn big_layers() -> Result<Vec<Vec<u8>>> {
    (0..BIG_LAYERS)
        .map(|l| {
            let mut t = LayerTar::new();
            t.dir("data", 0o755)?.dir(&format!("data/{l:02}"), 0o755)?;
            for f in 0..FILES_PER_LAYER {
                // random_bytes ignores bit 0 of its seed.
                let seed = SEED.wrapping_add(((l * FILES_PER_LAYER + f) as u64 + 1) << 1);
                let body = image::random_bytes(FILE_BYTES, seed);
                t.file(&format!("data/{l:02}/{f:02}.bin"), 0o644, &body)?;
            }
            t.finish()
        })
        .collect()
}

/// The manifest digest the registry serves for `repo:TAG` (None when it has none).
fn registry_digest(repo: &str) -> Option<String> {
    let (status, headers, _) = http::http_get(
        REGISTRY_PORT,
        &format!("/v2/{repo}/manifests/{TAG}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        None,
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    headers
        .into_iter()
        .find(|(k, _)| k == "docker-content-digest")
        .map(|(_, v)| v)
}

/// Pushes `layout` as `repo:TAG` unless the registry already serves that very manifest.
fn push_once(layout: &Layout, repo: &str, tmp: &Path) -> Result<()> {
    if registry_digest(repo).as_deref() == Some(layout.digest.as_str()) {
        eprintln!(
            "[bench]   {repo}:{TAG} already in the registry ({})",
            layout.digest
        );
        return Ok(());
    }
    let pushed = registry::skopeo_push(
        &format!("127.0.0.1:{REGISTRY_PORT}"),
        None,
        &layout.path,
        &format!("{repo}:{TAG}"),
        &["--preserve-digests"],
        tmp,
    )?;
    ensure!(
        pushed == layout.digest,
        "pushed {repo}:{TAG} as {pushed}, built {}",
        layout.digest
    );
    eprintln!("[bench]   pushed {repo}:{TAG} ({pushed})");
    Ok(())
}

/// Builds both images in a temp dir under `tmp` and pushes what the registry lacks.
fn prepare(tmp: &Path) -> Result<Images> {
    let ok = http::http_get(REGISTRY_PORT, "/v2/", &[], None).is_ok_and(|r| r.0 == 200);
    if !ok {
        reference::env_up()?;
    }
    let dir = tempfile::Builder::new()
        .prefix("pull-images-")
        .tempdir_in(tmp)?;
    let cfg = |what: &str| serde_json::json!({"Cmd": ["sh"], "Env": [image::PATH], "Labels": {"berthd-bench": what}});
    let small = image::layout(
        dir.path(),
        "berth-bench-busybox",
        TAG,
        &[ImageDef::new(cfg("busybox"), vec![small_layer()?])],
        LayerCompression::Gzip,
    )?;
    push_once(&small, SMALL_REPO, dir.path())?;
    let big = image::layout(
        dir.path(),
        "berth-bench-big",
        TAG,
        &[ImageDef::new(cfg("big"), big_layers()?)],
        // Not flate2's output: that changes with its backend, and the blobs must not.
        LayerCompression::GzipPortable,
    )?;
    push_once(&big, BIG_REPO, dir.path())?;
    let size = |l: &Layout| l.host().layer_sizes.iter().sum::<u64>();
    let _ = SIZES.set((size(&small), size(&big)));
    Ok(Images { small, big })
}

/// Samples a process's VmRSS every [`SAMPLE_EVERY`] until stopped; keeps the highest.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Mem, usize)>,
}

impl Sampler {
    fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut n) = (Mem::default(), 0);
            loop {
                // Read after the flag, so the last sample is taken once the pull is done.
                let last = flag.load(Ordering::SeqCst);
                if let Ok(m) = mem(pid) {
                    n += 1;
                    if m.rss > peak.rss {
                        peak = m;
                    }
                }
                if last {
                    return (peak, n);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> (Mem, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// Where a side's daemon keeps layer blobs.
fn blob_dir(s: &Side) -> Option<PathBuf> {
    match &s.daemon {
        Daemon::Berthd(d) => Some(d.dir.path().join("root/content/blobs/sha256")),
        Daemon::Reference(_) => Some(PathBuf::from(CONTAINERD_BLOBS)),
        Daemon::Gone => None,
    }
}

/// RemoveImage, then a check that the image and its first layer blob are gone.
async fn remove_checked(s: &Side, is: &Is, reference: &str, layout: &Layout) -> Result<()> {
    cri_images::remove(is, reference)
        .await
        .with_context(|| format!("RemoveImage {reference}"))?;
    ensure!(
        cri_images::status(is, reference).await?.is_none(),
        "{reference} still listed after RemoveImage"
    );
    let layer = &layout.host().layers[0];
    if let Some(dir) = blob_dir(s) {
        let blob = dir.join(layer.trim_start_matches("sha256:"));
        ensure!(
            !blob.exists(),
            "layer {layer} still in the content store after RemoveImage ({}): the pull \
             would not fetch it",
            blob.display()
        );
    }
    Ok(())
}

/// PullImage, timed; the image id it answers must be the built config's digest.
async fn pull_timed(is: &Is, reference: &str, layout: &Layout) -> Result<Duration> {
    let t0 = Instant::now();
    let id = cri_images::pull(is, reference, None)
        .await
        .with_context(|| format!("PullImage {reference}"))?;
    let took = t0.elapsed();
    let want = &layout.host().config;
    ensure!(
        id == *want || id.ends_with(want.trim_start_matches("sha256:")),
        "PullImage {reference} answered {id}, expected {want}"
    );
    Ok(took)
}

/// One big pull: remove, settle, idle reading, then the pull with the sampler running.
async fn big_pull(s: &Side, is: &Is, layout: &Layout) -> Result<BigPull> {
    let reference = big_ref();
    remove_checked(s, is, &reference, layout).await?;
    tokio::time::sleep(SETTLE).await;
    let pid = s.daemon.pid();
    let own = matches!(s.daemon, Daemon::Berthd(_));
    if own {
        // Our private berthd: reset its VmHWM so the kernel's own peak covers this pull.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .with_context(|| format!("reset VmHWM of {pid}"))?;
    }
    let before = mem(pid)?;
    let cpu0 = cpu_ms(pid)?;
    let sampler = Sampler::start(pid);
    let took = pull_timed(is, &reference, layout).await;
    let (peak, samples) = sampler.finish();
    let ms = took?.as_secs_f64() * 1e3;
    let cpu_ms = cpu_ms(pid)? - cpu0;
    let hwm = if own { Some(mem(pid)?.hwm) } else { None };
    Ok(BigPull {
        ms,
        before,
        peak,
        samples,
        cpu_ms,
        hwm,
    })
}

/// Builds and pushes the images (in a temp dir, gone before the first pull), then the
/// timed pulls, alternating who goes first ([`cleanup`] removes the images afterwards).
/// Sides whose daemon is gone sit out; a side whose pull fails sits out the rest of this
/// phase (an earlier phase's failure does not keep a live daemon from pulling).
pub(crate) async fn measure(sides: &mut [Side], plan: &Plan, tmp: &Path) {
    let imgs = match phase("build and push the pull images", || prepare(tmp)) {
        Ok(i) => i,
        Err(e) => {
            for s in sides.iter_mut() {
                s.note("pull images", Err::<(), _>(anyhow::anyhow!("{e:#}")));
            }
            return;
        }
    };
    // The idle reading the big pulls' peaks are also compared with (the pod phases take it
    // when they run).
    if sides.iter().any(|s| s.fig.rss_idle.is_none()) {
        tokio::time::sleep(SETTLE).await;
        for s in sides.iter_mut().filter(|s| s.fig.rss_idle.is_none()) {
            if !matches!(s.daemon, Daemon::Gone) {
                s.fig.rss_idle = mem(s.daemon.pid()).ok().map(|m| m.rss);
            }
        }
    }
    let mut clients: Vec<Option<Is>> = Vec::new();
    for s in sides.iter_mut() {
        let c = match s.daemon {
            Daemon::Gone => None,
            _ => s.note("pull: connect", connect(&s.socket).await.map(|c| c.1)),
        };
        clients.push(c);
    }
    let small = small_ref();
    eprintln!("[bench] {} pulls of {small}", plan.pulls);
    for r in 0..plan.pulls {
        for i in phases::order(r, sides.len()) {
            let Some(is) = clients[i].clone() else {
                continue;
            };
            let s = &mut sides[i];
            let res = async {
                remove_checked(s, &is, &small, &imgs.small).await?;
                pull_timed(&is, &small, &imgs.small).await
            }
            .await;
            match s.note("pull busybox", res) {
                Some(d) => s.fig.pull_small.push(d.as_secs_f64() * 1e3),
                None => clients[i] = None,
            }
        }
    }
    // The same pulls with the image still there: what a PullImage costs when it fetches
    // nothing but the manifest (kubelet's IfNotPresent does not even call it).
    for r in 0..plan.pulls {
        for i in phases::order(r, sides.len()) {
            let Some(is) = clients[i].clone() else {
                continue;
            };
            let s = &mut sides[i];
            let res = pull_timed(&is, &small, &imgs.small).await;
            match s.note("pull busybox (present)", res) {
                Some(d) => s.fig.pull_present.push(d.as_secs_f64() * 1e3),
                None => clients[i] = None,
            }
        }
    }
    eprintln!("[bench] {} pulls of {}", plan.big_pulls, big_ref());
    for r in 0..plan.big_pulls {
        for i in phases::order(r, sides.len()) {
            let Some(is) = clients[i].clone() else {
                continue;
            };
            let s = &mut sides[i];
            let res = big_pull(s, &is, &imgs.big).await;
            match s.note("pull big image", res) {
                Some(b) => {
                    eprintln!(
                        "[bench]   {}: {:.0} ms, VmRSS {} → {} kB",
                        s.name(),
                        b.ms,
                        b.before.rss,
                        b.peak.rss
                    );
                    s.fig.pull_big.push(b);
                }
                None => clients[i] = None,
            }
        }
    }
}

/// Removes both bench images from every side whose daemon still runs.
pub(crate) async fn cleanup(sides: &mut [Side]) {
    for s in sides.iter_mut() {
        if matches!(s.daemon, Daemon::Gone) {
            continue;
        }
        let r = async {
            let (_, is) = connect(&s.socket).await?;
            for reference in [small_ref(), big_ref()] {
                cri_images::remove(&is, &reference)
                    .await
                    .with_context(|| format!("RemoveImage {reference}"))?;
                ensure!(
                    cri_images::status(&is, &reference).await?.is_none(),
                    "{reference} still listed after RemoveImage"
                );
            }
            Ok(())
        }
        .await;
        s.note("remove the pulled images", r);
    }
}
