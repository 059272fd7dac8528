//! The connections pulls share: one bounded `fetch::Conn` per endpoint and credentials, so
//! tokens are kept across pulls that present the same credentials, and only by those.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fetch::Conn;
use super::registry::{Credentials, Endpoint};
use crate::error::Result;

/// How many endpoint/credential connections are kept: every pull with new credentials
/// (kubelet sends each pod's pull secrets) would otherwise add one forever.
const MAX_CONNS: usize = 64;

/// Connections by endpoint and credentials, so tokens are reused across pulls that
/// present the same credentials, and only by those; the least recently used beyond
/// [`MAX_CONNS`] is dropped.
pub struct Clients {
    by_endpoint: Mutex<lru::LruCache<String, Arc<Conn>>>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            by_endpoint: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_CONNS).expect("non-zero"),
            )),
        }
    }
}

impl Clients {
    pub fn get(&self, e: &Endpoint, creds: &Credentials, timeout: Duration) -> Result<Arc<Conn>> {
        let key = format!(
            "{}|{}|{}|{}",
            e.host,
            e.plain_http,
            e.skip_verify,
            creds.key()
        );
        let mut m = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(Conn::new(e, creds, timeout)?);
        m.put(key, c.clone());
        Ok(c)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_endpoint.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pull::registry::endpoints;

    #[test]
    fn connections_are_bounded_however_many_credentials_come() {
        let clients = Clients::default();
        let cfg = crate::config::Config::from_toml("").unwrap().registry;
        let e = &endpoints(&cfg, "reg.example")[0];
        for i in 0..(MAX_CONNS * 3) {
            let creds = Credentials {
                username: format!("user{i}"),
                password: "p".into(),
                token: String::new(),
            };
            clients.get(e, &creds, Duration::from_secs(1)).unwrap();
        }
        assert_eq!(clients.len(), MAX_CONNS);
    }
}
