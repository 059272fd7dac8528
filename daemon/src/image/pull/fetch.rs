//! Bounded exchanges with one registry endpoint: every body is capped while it streams
//! (by Content-Length, then by a running count) and every exchange has a deadline from
//! `registry.timeout`, so a hostile or broken registry can neither grow berthd's memory
//! nor hold a pull forever.
//!
//! Why not `oci-client` (0.18) for this: it reads manifest, token and error bodies whole
//! (`Response::bytes()`/`text()`) with no size knob, and its only time knob is reqwest's
//! `read_timeout`, which restarts on every read, so a body trickling 1 byte per second
//! never times out. Here reqwest is driven directly, one `chunk()` at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{RequestBuilder, Response, StatusCode};

use super::registry::{chain, Credentials, Endpoint};
use crate::error::{Error, RegistryLimit, Result};

/// A token response: a JWT is a few KiB; anything near this is not a token.
pub const MAX_TOKEN: u64 = 1 << 20;
/// Of an error answer, this much is read (for its message); the rest is dropped unread.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// A blob stream must bring at least this much per `registry.timeout` (or end): a trickle
/// below it is as good as a stall, and would otherwise hold the pull for ever.
pub const MIN_PROGRESS: u64 = 16 << 10;
/// How long a token is kept when the registry does not say (as `oci-client` did).
const DEFAULT_TOKEN_SECS: u64 = 60;

/// How requests to a repository are authorized.
#[derive(Clone)]
enum Authz {
    None,
    Basic(String, String),
    Bearer(String),
}

/// How many repositories' tokens one connection keeps.
const MAX_TOKENS: usize = 256;

/// One endpoint as one set of credentials reaches it: an HTTP client and the tokens it
/// obtained (per repository, until they expire).
pub struct Conn {
    http: reqwest::Client,
    scheme: &'static str,
    pub host: String,
    creds: Credentials,
    pub timeout: Duration,
    /// Tokens by repository, the least recently used beyond [`MAX_TOKENS`] dropped.
    tokens: Mutex<lru::LruCache<String, (Authz, Instant)>>,
}

/// A whole (small) answer: status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn new(e: &Endpoint, creds: &Credentials, timeout: Duration) -> Result<Conn> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            // Per read, restarting on each: a backstop only, the deadlines below bound
            // whole exchanges and blob progress.
            .read_timeout(timeout)
            .danger_accept_invalid_certs(e.skip_verify)
            // No proxies from berthd's environment: pulls go where the config says.
            .no_proxy()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("registry client: {}", chain(&e))))?;
        Ok(Conn {
            http,
            scheme: if e.plain_http { "http" } else { "https" },
            host: e.host.clone(),
            creds: creds.clone(),
            timeout,
            tokens: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_TOKENS).expect("non-zero"),
            )),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}/v2/{path}", self.scheme, self.host)
    }

    /// Sends `req` and reads its whole body, at most `limit` bytes (more is an error), all
    /// within `registry.timeout`. An error status comes back as an `Answer` too (its body
    /// cut at `MAX_ERROR_BODY`).
    async fn small(
        &self,
        req: RequestBuilder,
        host: &str,
        what: &str,
        limit: u64,
    ) -> Result<Answer> {
        // Counted outside the future, which the deadline drops, for the message.
        let got = AtomicU64::new(0);
        let exchange = async {
            let mut resp = req
                .send()
                .await
                .map_err(|e| send_err(host, what, self.timeout, e))?;
            let status = resp.status();
            let body = if status.is_success() {
                read_capped(&mut resp, limit, &got)
                    .await
                    .map_err(|e| send_err(host, what, self.timeout, e))?
                    .ok_or_else(|| RegistryLimit::TooLarge {
                        host: host.to_string(),
                        what: what.to_string(),
                        limit,
                    })?
            } else {
                read_prefix(&mut resp, MAX_ERROR_BODY, &got).await
            };
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(RegistryLimit::Stalled {
                host: host.to_string(),
                what: what.to_string(),
                got: got.load(Ordering::Relaxed),
                after: self.timeout,
            }
            .into()),
        }
    }

    /// A manifest or index of `repo` by tag or digest: its bytes, at most `limit`.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let authz = self.authorize(repo).await?;
        let req = self
            .http
            .get(self.url(&format!("{repo}/manifests/{reference}")))
            .header("Accept", accept.join(", "));
        let a = self
            .small(with_authz(req, &authz), &self.host, what, limit)
            .await?;
        if a.status != StatusCode::OK {
            return Err(status_error(&self.host, what, a.status, &a.body));
        }
        Ok(a.body)
    }

    /// A blob's response, its status checked, once its headers came (within
    /// `registry.timeout`); the caller reads the body under `MIN_PROGRESS`.
    ///
    /// From `offset` on when it is not 0 (resuming a body the connection cut): the answer
    /// is then 206 with the rest, or 200 with the whole blob from a registry that ignores
    /// the range (the caller starts over).
    pub async fn blob(
        &self,
        repo: &str,
        digest: &str,
        what: &str,
        offset: u64,
    ) -> Result<Response> {
        let authz = self.authorize(repo).await?;
        let mut req = self.http.get(self.url(&format!("{repo}/blobs/{digest}")));
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let req = with_authz(req, &authz);
        let got = AtomicU64::new(0);
        let exchange = async {
            let mut resp = req
                .send()
                .await
                .map_err(|e| send_err(&self.host, what, self.timeout, e))?;
            let ok = resp.status() == StatusCode::OK
                || (offset > 0 && resp.status() == StatusCode::PARTIAL_CONTENT);
            if !ok {
                let body = read_prefix(&mut resp, MAX_ERROR_BODY, &got).await;
                return Err(status_error(&self.host, what, resp.status(), &body));
            }
            Ok(resp)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(RegistryLimit::Stalled {
                    host: self.host.clone(),
                    what: what.to_string(),
                    got: got.load(Ordering::Relaxed),
                    after: self.timeout,
                }
                .into())
            })
    }

    /// How to authorize requests for `repo`: the caller's token as is, a cached token, or
    /// what the registry's challenge asks for (a token from its realm, or basic auth).
    async fn authorize(&self, repo: &str) -> Result<Authz> {
        if !self.creds.token.is_empty() {
            return Ok(Authz::Bearer(self.creds.token.clone()));
        }
        if let Some((a, until)) = self.lock().get(repo) {
            if Instant::now() < *until {
                return Ok(a.clone());
            }
        }
        let what = "authorization";
        // The probe's body is never read: only its status and challenge count.
        let probe = async { self.http.get(self.url("")).send().await };
        let resp = tokio::time::timeout(self.timeout, probe)
            .await
            .map_err(|_| RegistryLimit::Stalled {
                host: self.host.clone(),
                what: what.into(),
                got: 0,
                after: self.timeout,
            })?
            .map_err(|e| send_err(&self.host, what, self.timeout, e))?;
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        drop(resp);
        let basic = || match self.creds.username.is_empty() {
            true => Authz::None,
            false => Authz::Basic(self.creds.username.clone(), self.creds.password.clone()),
        };
        let (authz, secs) = match challenge.as_deref().and_then(bearer_challenge) {
            Some(params) => self.token(repo, &params).await?,
            None if challenge.is_some() => (basic(), DEFAULT_TOKEN_SECS),
            None => (Authz::None, DEFAULT_TOKEN_SECS),
        };
        // A little early, so a token never expires on its way.
        let until = Instant::now() + Duration::from_secs(secs.saturating_sub(5).max(1));
        self.lock().put(repo.to_string(), (authz.clone(), until));
        Ok(authz)
    }

    /// A pull token for `repo` from the challenge's realm, its body capped at `MAX_TOKEN`.
    async fn token(&self, repo: &str, challenge: &HashMap<String, String>) -> Result<(Authz, u64)> {
        let realm = challenge.get("realm").cloned().unwrap_or_default();
        let url = reqwest::Url::parse(&realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Error::Registry(format!(
                    "registry {} asks for a token from {realm:?}, not an http(s) URL",
                    self.host
                ))
            })?;
        let realm_host = url.host_str().unwrap_or_default().to_string();
        let scope = format!("repository:{repo}:pull");
        let mut query = vec![("scope", scope.as_str())];
        if let Some(s) = challenge.get("service") {
            query.push(("service", s));
        }
        let mut req = self.http.get(url).query(&query);
        if !self.creds.username.is_empty() {
            req = req.basic_auth(&self.creds.username, Some(&self.creds.password));
        }
        let what = format!("token for {}/{repo}", self.host);
        let a = self.small(req, &realm_host, &what, MAX_TOKEN).await?;
        if a.status != StatusCode::OK {
            return Err(status_error(&self.host, "authorization", a.status, &a.body));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            expires_in: Option<u64>,
        }
        let t: Token = serde_json::from_slice(&a.body).map_err(|e| {
            Error::Registry(format!("{what} from {realm_host}: not a token answer: {e}"))
        })?;
        let token = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if token.is_empty() {
            return Err(Error::Registry(format!(
                "{what} from {realm_host}: no token"
            )));
        }
        Ok((
            Authz::Bearer(token),
            t.expires_in.unwrap_or(DEFAULT_TOKEN_SECS),
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, (Authz, Instant)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn with_authz(req: RequestBuilder, a: &Authz) -> RequestBuilder {
    match a {
        Authz::None => req,
        Authz::Basic(u, p) => req.basic_auth(u, Some(p)),
        Authz::Bearer(t) => req.bearer_auth(t),
    }
}

/// The parameters of a `Bearer` challenge (`realm`, `service`, ...), None for any other.
fn bearer_challenge(h: &str) -> Option<HashMap<String, String>> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, v) = s.split_once('=')?;
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = match v.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (&q[..end], &q[end + 1..])
            }
            None => v.split_once(',').map_or((v, ""), |(a, b)| (a, b)),
        };
        out.insert(k, val.to_string());
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// The body, at most `limit` bytes: None once more has come (or is announced by the
/// Content-Length), without reading the rest. `got` counts what arrived.
async fn read_capped(
    resp: &mut Response,
    limit: u64,
    got: &AtomicU64,
) -> reqwest::Result<Option<Vec<u8>>> {
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    // The whole cap reserved at once (address space only: pages count when written):
    // growing by doubling would hold the old and the new buffer at once, 12 MiB for an
    // 8 MiB cap.
    let mut body = Vec::with_capacity(announced.unwrap_or(limit).min(limit) as usize);
    while let Some(chunk) = resp.chunk().await? {
        got.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    body.shrink_to_fit();
    Ok(Some(body))
}

/// The first `limit` bytes of an (error) body; errors end it early.
async fn read_prefix(resp: &mut Response, limit: u64, got: &AtomicU64) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        got.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let room = (limit as usize).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() as u64 >= limit {
            break;
        }
    }
    body
}

/// A failed exchange. reqwest's own `read_timeout` (the same `registry.timeout`) may fire
/// before the deadline around the exchange does: that is the registry going silent too,
/// and is reported as such (DeadlineExceeded), not as an unknown error.
fn send_err(host: &str, what: &str, after: Duration, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        return RegistryLimit::Stalled {
            host: host.to_string(),
            what: what.to_string(),
            got: 0,
            after,
        }
        .into();
    }
    Error::Registry(format!("{what} from {host}: {}", chain(&e)))
}

/// A registry's error answer as a berthd error: refused credentials, not found (by status
/// or by the OCI error codes in the body), or else the status and the registry's words.
pub fn status_error(host: &str, what: &str, status: StatusCode, body: &[u8]) -> Error {
    let auth = || {
        Error::Unauthenticated(format!(
            "authentication failed for registry {host} ({what})"
        ))
    };
    let missing = || Error::NotFound(format!("{what} not found ({host})"));
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return auth(),
        StatusCode::NOT_FOUND => return missing(),
        _ => {}
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        let has = |codes: &[&str]| env.errors.iter().any(|e| codes.contains(&e.code.as_str()));
        if has(&["UNAUTHORIZED", "DENIED"]) {
            return auth();
        }
        if has(&[
            "BLOB_UNKNOWN",
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
            "NOT_FOUND",
        ]) {
            return missing();
        }
        let words: Vec<String> = env
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect();
        return Error::Registry(format!(
            "{what} from {host}: {status}: {}",
            words.join("; ")
        ));
    }
    let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
    Error::Registry(format!("{what} from {host}: {status}: {}", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_and_others_do_not() {
        let p = bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        assert!(bearer_challenge(r#"Basic realm="Registry Realm""#).is_none());
        assert!(bearer_challenge("Bearer").is_none());
    }

    #[test]
    fn error_answers_map_by_status_and_oci_code() {
        let e = |s: u16, b: &str| {
            status_error(
                "r:1",
                "manifest of x",
                StatusCode::from_u16(s).unwrap(),
                b.as_bytes(),
            )
        };
        assert!(matches!(e(401, ""), Error::Unauthenticated(_)));
        assert!(matches!(e(404, ""), Error::NotFound(_)));
        let unknown = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"m"}]}"#;
        assert!(matches!(e(400, unknown), Error::NotFound(_)));
        let denied = r#"{"errors":[{"code":"DENIED","message":"m"}]}"#;
        assert!(matches!(e(400, denied), Error::Unauthenticated(_)));
        let m = e(500, "boom").to_string();
        assert!(
            m.contains("r:1") && m.contains("500") && m.contains("boom"),
            "{m}"
        );
    }
}
