//! PullImage: a reference is resolved through its registry's mirrors, then the registry
//! itself; the manifest (the host platform's, from an index), the config and the layers
//! go into the content store, each verified against its digest, layers streamed to disk
//! (memory stays flat whatever their size). The image is then unpacked and recorded
//! exactly as an import is. Pulls of the same image, and fetches of the same layer, are
//! coalesced; blobs of a pull in flight are leased so no sweep removes them. Every read
//! from a registry is bounded in size and time (`fetch`): manifests, indexes and configs
//! at 8 MiB, tokens at 1 MiB, each small exchange within `registry.timeout`, and a blob
//! stream failed once a `registry.timeout` passes with less than 16 KiB of it.

mod clients;
mod fetch;
mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

pub use registry::Credentials;
use registry::{chain, Endpoint};

use super::content::{hex, sha256_digest, MAX_JSON_BLOB};
use super::oci::{self, Descriptor, Index, Manifest};
use super::reference::{self, Reference};
use super::{import, ImageRecord, ImageStore};
use crate::config::Registry as RegistryConfig;
use crate::error::{Error, RegistryLimit, Result};
use crate::metrics::PullMetrics;

const ACCEPT: [&str; 4] = [
    oci::OCI_MANIFEST,
    oci::OCI_INDEX,
    oci::DOCKER_MANIFEST,
    oci::DOCKER_LIST,
];

/// Layer blobs fetched at once by one pull.
const PARALLEL_FETCHES: usize = 3;

/// Times a cut blob body is resumed in a row without a byte of progress (containerd's
/// `maxRetry` for the same).
const MAX_RESUMES: u32 = 3;

/// Registry access for pulls: the configured endpoints and their clients.
pub struct Puller {
    cfg: RegistryConfig,
    clients: clients::Clients,
    metrics: PullMetrics,
}

impl Puller {
    pub fn new(cfg: RegistryConfig, metrics: PullMetrics) -> Puller {
        Puller {
            cfg,
            clients: Default::default(),
            metrics,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout.max(1))
    }
}

/// Keeps blobs from being swept until the pull that fetched them has recorded its image.
struct Lease<'a> {
    leases: &'a Mutex<HashMap<String, usize>>,
    digests: Vec<String>,
}

impl Lease<'_> {
    fn add(&mut self, digest: &str) {
        *self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_string())
            .or_default() += 1;
        self.digests.push(digest.to_string());
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut m = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        for d in &self.digests {
            if let Some(n) = m.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    m.remove(d);
                }
            }
        }
    }
}

/// Where one pull reads from: an endpoint's connection and the image's name there.
struct Source<'a> {
    conn: Arc<fetch::Conn>,
    host: &'a str,
    path: &'a str,
    /// The reference as asked for, for messages.
    image: &'a str,
    /// Where the bytes received are counted.
    metrics: &'a PullMetrics,
}

impl Source<'_> {
    /// A manifest or index by tag or digest: its bytes (at most 8 MiB, capped as they
    /// stream) and their (checked) digest.
    async fn manifest(&self, reference: &str, want: Option<&str>) -> Result<(Vec<u8>, String)> {
        let what = format!("manifest of {}", self.image);
        let body = self
            .conn
            .manifest(self.path, reference, &ACCEPT, &what, MAX_JSON_BLOB)
            .await?;
        let got = sha256_digest(&body);
        if let Some(want) = want {
            if got != want {
                return Err(Error::InvalidArgument(format!(
                    "digest mismatch for manifest {want} from {}: content hashes to {got}",
                    self.host
                )));
            }
        }
        Ok((body, got))
    }
}

impl ImageStore {
    /// Pulls `reference` and records it (tagged, and with its repo digest).
    pub async fn pull(
        &self,
        puller: &Puller,
        reference: &str,
        creds: &Credentials,
    ) -> Result<ImageRecord> {
        let r = reference::parse(reference)?;
        let key = format!("image:{r}");
        let gate = self.gate(&key);
        let began = std::time::Instant::now();
        let res = {
            let _turn = gate.lock().await;
            // Unpacking and recording write under the root too: a full disk there is
            // reported with the space left.
            (self.pull_endpoints(puller, &r, creds).await).map_err(|e| e.on_full_fs(&self.root))
        };
        self.release_gate(&key, gate);
        let failed = res
            .as_ref()
            .err()
            .map(|e| crate::metrics::code_name(e.code() as i32));
        puller
            .metrics
            .finished(began.elapsed().as_secs_f64(), failed);
        if res.is_err() {
            // What a failed pull fetched (its leases are gone now) is not kept.
            if let Err(e) = tokio::task::block_in_place(|| self.gc()) {
                tracing::warn!(error = %e, "sweep after a failed pull");
            }
        }
        res
    }

    async fn pull_endpoints(
        &self,
        puller: &Puller,
        r: &Reference,
        creds: &Credentials,
    ) -> Result<ImageRecord> {
        let mut errors = Vec::new();
        for ep in registry::endpoints(&puller.cfg, &r.domain) {
            match self.pull_from(puller, &ep, r, creds).await {
                Ok(rec) => return Ok(rec),
                Err(e) => {
                    tracing::warn!(image = %r, endpoint = %ep.host, mirror = ep.mirror, error = %e, "pull attempt failed");
                    errors.push(e);
                }
            }
        }
        // A definite answer (not found, refused credentials, bad content) from any
        // endpoint says more than an unreachable one.
        let definite = errors.iter().position(|e| {
            !matches!(
                e,
                Error::Registry(_) | Error::RegistryLimit(RegistryLimit::Stalled { .. })
            )
        });
        Err(match definite {
            Some(i) => errors.swap_remove(i),
            None => errors
                .pop()
                .unwrap_or_else(|| Error::Internal("no registry endpoint".into())),
        })
    }

    async fn pull_from(
        &self,
        puller: &Puller,
        ep: &Endpoint,
        r: &Reference,
        creds: &Credentials,
    ) -> Result<ImageRecord> {
        let image = r.to_string();
        let src = Source {
            conn: puller.clients.get(ep, creds, puller.timeout())?,
            host: &ep.host,
            path: &r.path,
            image: &image,
            metrics: &puller.metrics,
        };
        let top_ref = match (&r.digest, &r.tag) {
            (Some(d), _) => d.clone(),
            (None, tag) => tag.clone().unwrap_or_else(|| "latest".into()),
        };
        let mut lease = Lease {
            leases: &self.leases,
            digests: Vec::new(),
        };
        let (body, top_digest) = src.manifest(&top_ref, r.digest.as_deref()).await?;
        self.store_small(&mut lease, &top_digest, &body)?;
        let mut mdesc = Descriptor {
            media_type: String::new(),
            digest: top_digest.clone(),
            size: body.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        let declared = |b: &[u8]| -> String {
            serde_json::from_slice::<serde_json::Value>(b)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let mut body = body;
        for _ in 0..4 {
            if !oci::is_index(&declared(&body), &body)? {
                break;
            }
            let idx: Index = oci::parse("index", &mdesc.digest, &body)?;
            let host = oci::host_platform();
            let pick = oci::pick_platform(&idx.manifests, &host).ok_or_else(|| {
                Error::NotFound(format!(
                    "image {r} has no manifest for {}/{}",
                    host.os, host.architecture
                ))
            })?;
            let (b, d) = src.manifest(&pick.digest, Some(&pick.digest)).await?;
            self.store_small(&mut lease, &d, &b)?;
            mdesc = pick.clone();
            body = b;
        }
        if oci::is_index(&declared(&body), &body)? {
            return Err(Error::InvalidArgument(format!(
                "image {r}: indexes nested too deeply"
            )));
        }
        let m: Manifest = oci::parse("manifest", &mdesc.digest, &body)?;
        // The config is read whole later (`read_small`): refused here, before a byte of
        // it is fetched, when its descriptor says it is over that bound.
        if m.config.size > MAX_JSON_BLOB {
            return Err(RegistryLimit::TooLarge {
                host: ep.host.clone(),
                what: format!("config of {image} ({} bytes)", m.config.size),
                limit: MAX_JSON_BLOB,
            }
            .into());
        }
        self.fetch_blob(&src, &m.config, &mut lease).await?;
        for l in &m.layers {
            oci::layer_kind(&l.media_type)?;
            super::content::parse_digest(&l.digest)?;
            lease.add(&l.digest);
        }
        // Layers come down a few at a time, as containerd fetches them.
        type Fetch<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;
        let jobs: Vec<Fetch<'_>> = m
            .layers
            .iter()
            .map(|l| Box::pin(self.fetch_leased(&src, l)) as Fetch<'_>)
            .collect();
        let mut fetches = futures_util::stream::iter(jobs).buffer_unordered(PARALLEL_FETCHES);
        while let Some(r) = fetches.next().await {
            r?;
        }
        drop(fetches);
        crate::failpoint!("image.pull.after_blobs");
        let names = [r.clone()];
        tokio::task::block_in_place(|| {
            let _g = self.locked();
            let rec = import::build_record(self, &mdesc)?;
            import::name_record(self, rec, &names, &top_digest)
        })
    }

    fn store_small(&self, lease: &mut Lease<'_>, digest: &str, body: &[u8]) -> Result<()> {
        lease.add(digest);
        tokio::task::block_in_place(|| self.content.ingest(digest, body))?;
        Ok(())
    }

    /// Fetches one blob into the content store unless it is there; another pull fetching
    /// the same digest is waited for, not repeated.
    async fn fetch_blob(
        &self,
        src: &Source<'_>,
        d: &Descriptor,
        lease: &mut Lease<'_>,
    ) -> Result<()> {
        super::content::parse_digest(&d.digest)?;
        lease.add(&d.digest);
        self.fetch_leased(src, d).await
    }

    /// Fetches a blob the caller has already leased.
    async fn fetch_leased(&self, src: &Source<'_>, d: &Descriptor) -> Result<()> {
        let key = format!("blob:{}", d.digest);
        let gate = self.gate(&key);
        let res = async {
            let _turn = gate.lock().await;
            if self.content.contains(&d.digest)? {
                return Ok(());
            }
            self.download(src, d).await
        }
        .await;
        self.release_gate(&key, gate);
        res
    }

    /// Streams one blob to an ingest file, hashing it. It may not be longer than its
    /// descriptor says, and each `registry.timeout` must bring `MIN_PROGRESS` of it (or
    /// its end): a registry that stalls or trickles fails the pull instead of holding it.
    /// A body the connection cuts (a reset, an early close) is resumed where it broke
    /// with a Range request, as containerd does, up to `MAX_RESUMES` times in a row
    /// without a byte of progress; a registry that answers the range with the whole blob
    /// is read again from its start. Any early return drops the ingest guard, which
    /// removes the partial file.
    async fn download(&self, src: &Source<'_>, d: &Descriptor) -> Result<()> {
        let what = format!("blob {}", d.digest);
        let (tmp, guard) = self.content.new_ingest();
        // A full disk is reported with the space left where the blob was being written.
        let dir = tmp.parent().unwrap_or(&tmp).to_path_buf();
        let io = |e: std::io::Error| Error::io_at(format!("write {what}"), &dir, e);
        let too_long = || {
            Error::InvalidArgument(format!(
                "{what} from {} is larger than its descriptor's {} bytes",
                src.host, d.size
            ))
        };
        let mut resp = src.conn.blob(src.path, &d.digest, &what, 0).await?;
        if resp.content_length().is_some_and(|n| n > d.size) {
            return Err(too_long());
        }
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let timeout = src.conn.timeout;
        let mut h = Sha256::new();
        let mut n: u64 = 0;
        // Resumes since the last byte that arrived.
        let mut resumes = 0;
        // The current progress window: when it began and what it has brought.
        let (mut since, mut window) = (tokio::time::Instant::now(), 0u64);
        loop {
            let stalled = |got| RegistryLimit::Stalled {
                host: src.host.to_string(),
                what: what.clone(),
                got,
                after: timeout,
            };
            let chunk = match tokio::time::timeout_at(since + timeout, resp.chunk()).await {
                Err(_) => return Err(stalled(window).into()),
                // reqwest's read_timeout (the same length) beat the deadline: a stall.
                Ok(Err(e)) if e.is_timeout() => return Err(stalled(window).into()),
                Ok(Err(e)) if resumes < MAX_RESUMES && n < d.size => {
                    resumes += 1;
                    tracing::info!(digest = %d.digest, host = %src.host, at = n, error = %chain(&e), "blob download cut; resuming");
                    src.metrics.resumes.inc();
                    resp = src.conn.blob(src.path, &d.digest, &what, n).await?;
                    if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                        // The whole blob again: start over.
                        f.flush().await.map_err(io)?;
                        f.set_len(0).await.map_err(io)?;
                        f.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                        (h, n) = (Sha256::new(), 0);
                    }
                    if resp.content_length().is_some_and(|c| n + c > d.size) {
                        return Err(too_long());
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(Error::Registry(format!(
                        "{what} from {}: {}{}",
                        src.host,
                        chain(&e),
                        if resumes > 0 {
                            format!(" (after {resumes} resumes without progress)")
                        } else {
                            String::new()
                        }
                    )))
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if !chunk.is_empty() {
                resumes = 0;
            }
            n += chunk.len() as u64;
            src.metrics.bytes.inc_by(chunk.len() as u64);
            if n > d.size {
                return Err(too_long());
            }
            window += chunk.len() as u64;
            if window >= fetch::MIN_PROGRESS {
                (since, window) = (tokio::time::Instant::now(), 0);
            }
            h.update(&chunk);
            f.write_all(&chunk).await.map_err(io)?;
        }
        if n != d.size {
            return Err(Error::Registry(format!(
                "{what} from {}: got {n} of {} bytes",
                src.host, d.size
            )));
        }
        f.sync_all().await.map_err(io)?;
        drop(f);
        let computed = format!("sha256:{}", hex(&h.finalize()));
        self.content.commit(&tmp, guard, &d.digest, &computed)?;
        tracing::debug!(digest = %d.digest, bytes = n, host = %src.host, "blob fetched");
        Ok(())
    }

    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Drops the gate's map entry once nobody else holds or waits on it.
    fn release_gate(&self, key: &str, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else is waiting.
        if Arc::strong_count(&gate) == 2 {
            m.remove(key);
        }
    }
}
