//! containerd's Go `flag`-style command line: `-name value`, `-name=value`, `--name`,
//! boolean flags, then the action (`start`, `delete`, or none for the daemon).

use crate::error::{Error, Result};

/// What containerd (or our own daemon) asked this binary to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start,
    Delete,
    /// No action: run as the long-lived shim daemon.
    Serve,
}

/// The parsed command line. Unknown flags are rejected, as Go's `flag` package does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    pub info: bool,
    pub action: Action,
}

const VALUE_FLAGS: &[&str] = &[
    "namespace",
    "id",
    "address",
    "publish-binary",
    "bundle",
    "socket",
    "debug-socket",
];
const BOOL_FLAGS: &[&str] = &["debug", "v", "info"];

impl Args {
    pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args> {
        let mut a = Args {
            namespace: String::new(),
            id: String::new(),
            address: String::new(),
            publish_binary: String::new(),
            bundle: String::new(),
            socket: String::new(),
            debug: false,
            version: false,
            info: false,
            action: Action::Serve,
        };
        let mut it = argv.into_iter();
        let mut positional = Vec::new();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                positional.push(arg);
                // Go's flag package stops at the first positional argument.
                positional.extend(it.by_ref());
                break;
            };
            if flag.is_empty() {
                positional.extend(it.by_ref());
                break;
            }
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if BOOL_FLAGS.contains(&name) {
                let on = match inline.as_deref() {
                    None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") => true,
                    Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") => false,
                    Some(v) => {
                        return Err(Error::InvalidArgument(format!(
                            "invalid boolean {v:?} for -{name}"
                        )))
                    }
                };
                match name {
                    "debug" => a.debug = on,
                    "v" => a.version = on,
                    _ => a.info = on,
                }
                continue;
            }
            if !VALUE_FLAGS.contains(&name) {
                return Err(Error::InvalidArgument(format!(
                    "flag provided but not defined: -{name}"
                )));
            }
            let value = match inline {
                Some(v) => v,
                None => it.next().ok_or_else(|| {
                    Error::InvalidArgument(format!("flag needs an argument: -{name}"))
                })?,
            };
            match name {
                "namespace" => a.namespace = value,
                "id" => a.id = value,
                "address" => a.address = value,
                "publish-binary" => a.publish_binary = value,
                "bundle" => a.bundle = value,
                "socket" => a.socket = value,
                _ => {} // -debug-socket: accepted, unused
            }
        }
        a.action = match positional.first().map(String::as_str) {
            None => Action::Serve,
            Some("start") => Action::Start,
            Some("delete") => Action::Delete,
            Some(other) => return Err(Error::InvalidArgument(format!("unknown action {other:?}"))),
        };
        Ok(a)
    }

    /// Namespace and id become path components: refuse anything that could escape.
    pub fn validate(&self) -> Result<()> {
        if self.namespace.is_empty() {
            return Err(Error::InvalidArgument(
                "shim namespace cannot be empty".into(),
            ));
        }
        validate_component("namespace", &self.namespace)?;
        if !self.id.is_empty() {
            validate_component("id", &self.id)?;
        }
        Ok(())
    }
}

/// Checks an identifier that becomes one path component (container id, exec id, namespace).
pub fn validate_component(what: &str, v: &str) -> Result<()> {
    let bad = v.is_empty()
        || v == "."
        || v == ".."
        || v.len() > 255
        || v.contains('/')
        || v.contains('\0');
    if bad {
        return Err(Error::InvalidArgument(format!("invalid {what} {v:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args> {
        Args::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn containerd_16_start_line() {
        let a = p(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(a.namespace, "k8s.io");
        assert_eq!(a.address, "/run/containerd/containerd.sock");
        assert_eq!(a.id, "abc");
        assert!(a.debug);
        assert_eq!(a.action, Action::Start);
    }

    #[test]
    fn delete_with_bundle_and_equals_form() {
        let a = p(&["-namespace=default", "--id=x", "-bundle", "/b/x", "delete"]).unwrap();
        assert_eq!(a.bundle, "/b/x");
        assert_eq!(a.action, Action::Delete);
        assert!(!a.debug);
    }

    #[test]
    fn daemon_has_no_action() {
        let a = p(&["-namespace", "n", "-id", "i", "-address", "/a"]).unwrap();
        assert_eq!(a.action, Action::Serve);
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(p(&["-nope", "x"]).is_err());
        assert!(p(&["-id"]).is_err());
        assert!(p(&["-namespace", "n", "frobnicate"]).is_err());
        assert!(p(&["-namespace", "../x", "-id", "i"])
            .unwrap()
            .validate()
            .is_err());
        assert!(p(&["-namespace", "n", "-id", "a/b"])
            .unwrap()
            .validate()
            .is_err());
        assert!(p(&["-id", "i"]).unwrap().validate().is_err());
    }
}
