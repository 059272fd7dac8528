//! Registries as configured: which endpoints serve a registry (its mirrors, then itself,
//! plain HTTP / skip-verify per host), the credentials a pull presents, and error chains.

use crate::config::Registry as RegistryConfig;

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

/// Registry credentials (the CRI adapter makes them from an AuthConfig). Debug never
/// shows secrets.
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
    /// Identifies the credentials without holding them: clients are kept per
    /// credentials, so a pull never rides on tokens another pull's secret obtained.
    pub fn key(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for part in [&self.username, &self.password, &self.token] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        format!("{:x}", h.finalize())
    }
}

/// An error with its causes (reqwest hides "connection refused" in its source chain).
pub fn chain(e: &dyn std::error::Error) -> String {
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
}
