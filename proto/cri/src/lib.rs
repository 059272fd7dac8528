//! The Kubernetes Container Runtime Interface, `runtime.v1`, as Berth serves it: messages,
//! the RuntimeService and ImageService servers (berthd) and clients (berthctl, the tests).
//!
//! Generated from the `api.proto` of Kubernetes 1.36 (k8s.io/cri-api v0.36.3, copied
//! unchanged into `protos/`). Why not a crate from crates.io: the only one (`k8s-cri` 0.11)
//! carries an older api.proto without `Mount.image_sub_path`, `ImageSpec.image_ref`, the
//! stop signal and the newer RuntimeService calls. To move to a newer Kubernetes release,
//! replace `protos/api.proto` and follow the compiler.

/// `runtime.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs, rustdoc::all)]
    tonic::include_proto!("runtime.v1");

    /// The secrets api.proto marks `debug_redact` never reach a log line.
    impl std::fmt::Debug for AuthConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            fn redacted(s: &str) -> &'static str {
                if s.is_empty() {
                    ""
                } else {
                    "<redacted>"
                }
            }
            f.debug_struct("AuthConfig")
                .field("username", &self.username)
                .field("password", &redacted(&self.password))
                .field("auth", &redacted(&self.auth))
                .field("server_address", &self.server_address)
                .field("identity_token", &redacted(&self.identity_token))
                .field("registry_token", &redacted(&self.registry_token))
                .finish()
        }
    }
}

/// Serde for `KeyValue.value`: bytes written as a (lossy UTF-8) string, read from a string.
mod bytes_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{AuthConfig, KeyValue};

    #[test]
    fn an_env_value_is_a_string_in_json() {
        let kv = KeyValue {
            key: "A".into(),
            value: b"b c".to_vec(),
        };
        let json = serde_json::to_string(&kv).unwrap();
        assert_eq!(json, r#"{"key":"A","value":"b c"}"#);
        assert_eq!(serde_json::from_str::<KeyValue>(&json).unwrap(), kv);
    }

    #[test]
    fn auth_secrets_are_redacted_in_debug_output() {
        let a = AuthConfig {
            username: "u".into(),
            password: "hunter2".into(),
            auth: "dTpodW50ZXIy".into(),
            identity_token: "tok".into(),
            registry_token: "rtok".into(),
            server_address: "reg".into(),
        };
        let s = format!("{a:?}");
        for secret in ["hunter2", "dTpodW50ZXIy", "tok\"", "rtok"] {
            assert!(!s.contains(secret), "{secret} in {s}");
        }
        assert!(s.contains("\"u\"") && s.contains("\"reg\""), "{s}");
    }
}
