//! Image reference parsing and normalization (`busybox` → `docker.io/library/busybox:latest`),
//! following the distribution reference grammar without a regex engine.

use std::fmt;

use crate::error::{Error, Result};

const DEFAULT_DOMAIN: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
/// The grammar's limit on the repository name (domain + path).
const MAX_NAME_LEN: usize = 255;

/// A normalized reference: always a domain, and a tag unless it was given by digest only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path`, the repository without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path@digest` when the reference has a digest.
    pub fn repo_digest(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.name()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn invalid(r: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("invalid image reference {r:?}: {why}"))
}

/// Parses and normalizes `r`: the docker.io domain and `library/` for single-component
/// names on it, `:latest` when neither tag nor digest is given.
pub fn parse(r: &str) -> Result<Reference> {
    if r.is_empty() {
        return Err(invalid(r, "empty"));
    }
    let (rest, digest) = match r.split_once('@') {
        Some((n, d)) => {
            check_digest(d).map_err(|why| invalid(r, why))?;
            (n, Some(d.to_string()))
        }
        None => (r, None),
    };
    // A tag is after the last ':' that follows the last '/' (a ':' before is a port).
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let (n, t) = rest.split_at(last_slash + i);
            (n, Some(&t[1..]))
        }
        None => (rest, None),
    };
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(invalid(r, "bad tag"));
        }
    }
    let (domain, path) = split_domain(name);
    if let Some(d) = domain {
        if !valid_domain(d) {
            return Err(invalid(r, "bad registry host"));
        }
    }
    if path.is_empty() || !path.split('/').all(valid_component) {
        let why = if path.chars().any(|c| c.is_ascii_uppercase()) {
            "repository name must be lowercase"
        } else {
            "bad repository name"
        };
        return Err(invalid(r, why));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(r, "repository name too long"));
    }
    let domain = match domain {
        None | Some("index.docker.io") => DEFAULT_DOMAIN,
        Some(d) => d,
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (None, Some(_)) => None,
    };
    Ok(Reference {
        domain: domain.to_string(),
        path,
        tag,
        digest,
    })
}

/// The first component is a registry host when it looks like one (a dot, a port,
/// `localhost`, or uppercase, which a repository path can never have).
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let w = |c: char| c.is_ascii_alphanumeric() || c == '_';
    t.len() <= 128
        && t.chars().next().is_some_and(w)
        && t.chars().all(|c| w(c) || c == '.' || c == '-')
}

/// Hostname labels separated by dots or a `[v6]` literal, then an optional numeric port.
fn valid_domain(d: &str) -> bool {
    let (host_ok, port) = if let Some(v6) = d.strip_prefix('[') {
        let Some((addr, rest)) = v6.split_once(']') else {
            return false;
        };
        let addr_ok = !addr.is_empty() && addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
        match rest.strip_prefix(':') {
            Some(p) => (addr_ok, Some(p)),
            None => (addr_ok && rest.is_empty(), None),
        }
    } else {
        let (h, p) = match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        let labels_ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        (labels_ok, p)
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `algorithm:encoded`; sha256 must be 64 lowercase hex digits, as every digest we verify.
pub fn check_digest(d: &str) -> std::result::Result<(), &'static str> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err("digest without algorithm");
    };
    match alg {
        "sha256" if hex.len() == 64 && is_lower_hex(hex) => Ok(()),
        "sha256" => Err("sha256 digest must be 64 lowercase hex digits"),
        _ => Err("unsupported digest algorithm (only sha256)"),
    }
}

pub fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_table() {
        let cases: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1", "docker.io/library/busybox:1"),
            ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("user/app", "docker.io/user/app:latest"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1"),
            ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
            ("[::1]:5000/busybox:x", "[::1]:5000/busybox:x"),
            ("a__b-c---d/e.f_g", "docker.io/a__b-c---d/e.f_g:latest"),
        ];
        for (input, want) in cases {
            let r = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *want, "{input}");
        }
    }

    #[test]
    fn digests_table() {
        let r = parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(
            r.repo_digest().unwrap(),
            format!("docker.io/library/busybox@{D}")
        );
        let r = parse(&format!("localhost:5000/x:1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("localhost:5000/x:1@{D}"));
        assert_eq!(r.name(), "localhost:5000/x");
    }

    #[test]
    fn invalid_table() {
        let bad = [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            ":tag",
            "/busybox",
            "busybox/",
            "a//b",
            "a..b",
            "host:port/x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "busybox@",
            "a:b:c",
            "ex ample",
            "-x",
            "bad_host.io/x",
            "host:99999999/x",
        ];
        for r in bad {
            assert!(
                matches!(parse(r), Err(Error::InvalidArgument(_))),
                "{r:?} must be InvalidArgument, got {:?}",
                parse(r)
            );
        }
        let long = format!("x/{}", "a".repeat(300));
        assert!(matches!(parse(&long), Err(Error::InvalidArgument(_))));
    }
}
