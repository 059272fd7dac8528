//! Image references, OCI manifests/indexes/image configs and the config TOML.

use proptest::prelude::*;

use crate::config::Config;
use crate::image::oci::{self, ImageJson, Index, Manifest};
use crate::image::reference;

/// Reference-like strings: the alphabet references use, plus the odd byte.
fn reference_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._/:@+-]{0,80}",
        "[a-z0-9]{1,10}(\\.[a-z]{2,5})?(:[0-9]{1,6})?/[a-z0-9/_.-]{1,30}(:[a-zA-Z0-9_.-]{1,20})?(@sha256:[0-9a-f]{64})?",
        any::<String>(),
    ]
}

/// A valid manifest/index/config document, then mutated bytes of it.
fn json_like() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        Just(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":10}]}"#.to_vec()),
        Just(br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":7,"platform":{"architecture":"amd64","os":"linux"}}]}"#.to_vec()),
        Just(br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=b"],"Cmd":["sh"],"User":"1:2"},"rootfs":{"type":"layers","diff_ids":["sha256:3333333333333333333333333333333333333333333333333333333333333333"]}}"#.to_vec()),
    ];
    (
        base,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    )
        .prop_map(|(mut b, edits)| {
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            b
        })
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn references_parse_without_panic_and_round_trip(s in reference_like()) {
        if let Ok(r) = reference::parse(&s) {
            let again = reference::parse(&r.to_string()).expect("a parsed reference parses again");
            prop_assert_eq!(again.to_string(), r.to_string());
        }
    }

    #[test]
    fn manifests_indexes_and_configs_parse_without_panic(body in json_like()) {
        let _ = oci::parse::<Manifest>("manifest", "sha256:x", &body);
        let _ = oci::parse::<Index>("index", "sha256:x", &body);
        let _ = oci::parse::<ImageJson>("config", "sha256:x", &body);
        let _ = oci::is_index("application/vnd.oci.image.index.v1+json", &body);
        let _ = oci::is_index("", &body);
    }

    #[test]
    fn the_config_toml_parses_without_panic(
        text in prop_oneof![
            any::<String>(),
            (any::<prop::sample::Index>(), "[\\[\\]=\"a-z0-9_.\\n -]{0,40}").prop_map(|(i, ins)| {
                let base = crate::config::DEFAULT_TOML;
                let mut at = i.index(base.len() + 1);
                while !base.is_char_boundary(at) {
                    at -= 1;
                }
                format!("{}{}{}", &base[..at], ins, &base[at..])
            }),
        ]
    ) {
        let _ = Config::from_toml(&text);
    }
}
