//! Talking to registries: which endpoints serve a registry (its mirrors, then itself),
//! one `oci-client` client per endpoint (plain HTTP / skip-verify per host, token cache
//! kept across pulls), CRI credentials, and registry failures mapped to berthd errors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::config::Registry as RegistryConfig;
use crate::error::Error;

/// One place a registry's content can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    pub plain_http: bool,
    pub skip_verify: bool,
    pub mirror: bool,
}

/// Registries on the loopback interface speak plain HTTP (as containerd and docker
/// assume for localhost): nothing leaves the node, and local test registries have no TLS.
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The mirrors configured for `domain` in order, then the registry itself.
pub fn endpoints(cfg: &RegistryConfig, domain: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for e in cfg.mirrors.get(domain).into_iter().flatten() {
        let (plain, host) = match e.strip_prefix("http://") {
            Some(h) => (true, h),
            None => (false, e.strip_prefix("https://").unwrap_or(e)),
        };
        out.push(Endpoint {
            host: host.to_string(),
            plain_http: plain || cfg.plain_http.iter().any(|p| p == host),
            skip_verify: cfg.skip_verify.iter().any(|p| p == host),
            mirror: true,
        });
    }
    out.push(Endpoint {
        host: domain.to_string(),
        plain_http: is_loopback(domain) || cfg.plain_http.iter().any(|p| p == domain),
        skip_verify: cfg.skip_verify.iter().any(|p| p == domain),
        mirror: false,
    });
    out
}

/// Registry credentials from a CRI AuthConfig. Debug never shows secrets.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// A registry (bearer) token used as is.
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, ***)", self.username)
    }
}

impl Credentials {
    /// From the CRI fields: username/password, `auth` (base64 "user:password"), or a
    /// registry token. An identity token (OAuth refresh token) is used as a bearer token.
    pub fn from_cri(a: &k8s_cri::v1::AuthConfig) -> Result<Credentials, Error> {
        let mut c = Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            token: if a.registry_token.is_empty() {
                a.identity_token.clone()
            } else {
                a.registry_token.clone()
            },
        };
        if c.username.is_empty() && !a.auth.is_empty() {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .map_err(|_| Error::InvalidArgument("auth is not valid base64".into()))?;
            let text = String::from_utf8(raw)
                .map_err(|_| Error::InvalidArgument("auth is not UTF-8".into()))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| Error::InvalidArgument("auth is not \"user:password\"".into()))?;
            c.username = u.to_string();
            c.password = p.to_string();
        }
        Ok(c)
    }

    pub fn registry_auth(&self) -> RegistryAuth {
        if !self.token.is_empty() {
            RegistryAuth::Bearer(self.token.clone())
        } else if !self.username.is_empty() {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        } else {
            RegistryAuth::Anonymous
        }
    }

    /// Identifies the credentials without holding them: clients are kept per
    /// credentials, so a pull never rides on tokens another pull's secret obtained.
    fn key(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for part in [&self.username, &self.password, &self.token] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        format!("{:x}", h.finalize())
    }
}

/// Clients by endpoint and credentials, so tokens are reused across pulls that present
/// the same credentials, and only by those.
#[derive(Default)]
pub struct Clients {
    by_endpoint: Mutex<HashMap<String, Client>>,
}

impl Clients {
    pub fn get(&self, e: &Endpoint, creds: &Credentials, timeout: Duration) -> Client {
        let key = format!(
            "{}|{}|{}|{}",
            e.host,
            e.plain_http,
            e.skip_verify,
            creds.key()
        );
        let mut m = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key)
            .or_insert_with(|| {
                Client::new(ClientConfig {
                    protocol: if e.plain_http {
                        ClientProtocol::Http
                    } else {
                        ClientProtocol::Https
                    },
                    accept_invalid_certificates: e.skip_verify,
                    connect_timeout: Some(timeout),
                    read_timeout: Some(timeout),
                    // No proxies from berthd's environment: pulls go where the config says.
                    user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
                    ..Default::default()
                })
            })
            .clone()
    }
}

/// A registry failure as a berthd error naming the registry (`host`) and what failed.
pub fn map_err(host: &str, what: &str, e: OciDistributionError) -> Error {
    use OciDistributionError as E;
    let code = match &e {
        E::ServerError { code, .. } => Some(*code),
        _ => None,
    };
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Error::Unauthenticated(
            format!("authentication failed for registry {host} ({what})"),
        ),
        _ if matches!(code, Some(401) | Some(403)) => Error::Unauthenticated(format!(
            "authentication failed for registry {host} ({what})"
        )),
        E::ImageManifestNotFoundError(_) => Error::NotFound(format!("{what} not found ({host})")),
        _ if code == Some(404) => Error::NotFound(format!("{what} not found ({host})")),
        E::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                Error::Unauthenticated(format!(
                    "authentication failed for registry {host} ({what})"
                ))
            } else if codes().any(|c| {
                matches!(
                    c,
                    C::BlobUnknown | C::ManifestUnknown | C::NameUnknown | C::NotFound
                )
            }) {
                Error::NotFound(format!("{what} not found ({host})"))
            } else {
                Error::Registry(format!("{what} from {host}: {envelope}"))
            }
        }
        E::DigestError(d) => Error::InvalidArgument(format!("{what} from {host}: {d}")),
        other => Error::Registry(format!("{what} from {host}: {}", chain(&other))),
    }
}

/// An error with its causes (reqwest hides "connection refused" in its source chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> RegistryConfig {
        crate::config::Config::from_toml(toml).unwrap().registry
    }

    #[test]
    fn mirrors_come_first_and_keep_their_scheme() {
        let c = cfg("[registry]\nplain_http = [\"reg.local:5000\"]\n[registry.mirrors]\n\"registry.k8s.io\" = [\"http://127.0.0.1:5000\", \"https://m.example\"]\n");
        let e = endpoints(&c, "registry.k8s.io");
        let hosts: Vec<(&str, bool, bool)> = e
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http, e.mirror))
            .collect();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1:5000", true, true),
                ("m.example", false, true),
                ("registry.k8s.io", false, false)
            ]
        );
        assert!(endpoints(&c, "reg.local:5000")[0].plain_http);
        assert!(endpoints(&c, "127.0.0.1:5000")[0].plain_http);
        assert!(endpoints(&c, "localhost")[0].plain_http);
        assert!(!endpoints(&c, "docker.io")[0].plain_http);
    }

    #[test]
    fn cri_credentials() {
        let a = k8s_cri::v1::AuthConfig {
            auth: "dXNlcjpwYXNzOndvcmQ=".into(), // user:pass:word
            ..Default::default()
        };
        let c = Credentials::from_cri(&a).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pass:word")
        );
        assert!(!format!("{c:?}").contains("pass"));
        let bad = k8s_cri::v1::AuthConfig {
            auth: "%%%".into(),
            ..Default::default()
        };
        assert!(matches!(
            Credentials::from_cri(&bad),
            Err(Error::InvalidArgument(_))
        ));
        let tok = k8s_cri::v1::AuthConfig {
            registry_token: "t0k".into(),
            ..Default::default()
        };
        assert!(matches!(
            Credentials::from_cri(&tok).unwrap().registry_auth(),
            RegistryAuth::Bearer(t) if t == "t0k"
        ));
    }
}
