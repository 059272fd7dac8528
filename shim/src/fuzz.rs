//! Property-based fuzzing (proptest) of the shim's parsers of bytes from outside: task API
//! requests as ttrpc delivers them (protobuf), the runtime options inside them (runc
//! options, runtimeoptions TOML), STDIO URIs, and the CRI log writer's line splitting and
//! record format. No panic; the log writer keeps every byte, in well-formed records.
//! `PROPTEST_CASES` sets the case count (docs/security.md has the long run).

use berth_proto::api::{
    CloseIORequest, CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, PidsRequest,
    ResizePtyRequest, StartRequest, StateRequest, UpdateTaskRequest, WaitRequest,
};
use berth_proto::protobuf::Message;
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::io::crilog::{record, split, MAX_LINE};
use crate::options::RuncOptions;

fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// A realistic CreateTaskRequest's bytes (runc options, CRI log stdout), to mutate.
fn create_request() -> Vec<u8> {
    let mut r = CreateTaskRequest::new();
    r.id = "c1".into();
    r.bundle = "/run/berth/containers/c1".into();
    r.stdout = "cri-log:///var/log/pods/ns_p_uid/c/0.log".into();
    r.stderr = r.stdout.clone();
    r.terminal = false;
    let mut any = berth_proto::protobuf::well_known_types::any::Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = vec![0x12, 0x04, b'r', b'u', b'n', b'c', 0x48, 0x01];
    r.options = Some(any).into();
    r.write_to_bytes().unwrap()
}

fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6).prop_map(
        move |edits| {
            let mut b = base.clone();
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            b
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn task_requests_decode_without_panic(
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), mutated(create_request())]
    ) {
        if let Ok(r) = CreateTaskRequest::parse_from_bytes(&bytes) {
            let _ = RuncOptions::from_any(r.options.as_ref());
            let _ = crate::io::scheme(&r.stdout);
            let _ = crate::args::validate_component("id", &r.id);
        }
        let _ = ExecProcessRequest::parse_from_bytes(&bytes);
        let _ = StartRequest::parse_from_bytes(&bytes);
        let _ = DeleteRequest::parse_from_bytes(&bytes);
        let _ = KillRequest::parse_from_bytes(&bytes);
        let _ = UpdateTaskRequest::parse_from_bytes(&bytes);
        let _ = StateRequest::parse_from_bytes(&bytes);
        let _ = WaitRequest::parse_from_bytes(&bytes);
        let _ = PidsRequest::parse_from_bytes(&bytes);
        let _ = ResizePtyRequest::parse_from_bytes(&bytes);
        let _ = CloseIORequest::parse_from_bytes(&bytes);
    }

    #[test]
    fn runtime_options_toml_and_stdio_uris_parse_without_panic(
        text in prop_oneof![
            any::<String>(),
            "(BinaryName|Root|SystemdCgroup|NoPivotRoot) = (\"[a-z/]{0,10}\"|true|[0-9]{1,3})\n{0,3}",
        ],
        uri in "([a-z-]{0,8}://)?[ -~]{0,40}",
    ) {
        let _ = RuncOptions::from_toml(&text);
        let _ = crate::io::scheme(&uri);
    }

    #[test]
    fn the_cri_log_writer_keeps_every_byte_in_well_formed_records(
        chunks in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'x')], 0..64),
                (1usize..3).prop_map(|n| vec![b'y'; MAX_LINE * n + 7]),
            ],
            0..12,
        )
    ) {
        let input: Vec<u8> = chunks.concat();
        let mut buf = Vec::new();
        let mut records = Vec::new();
        for c in &chunks {
            buf.extend_from_slice(c);
            records.extend(split(&mut buf, false));
        }
        records.extend(split(&mut buf, true));
        prop_assert!(buf.is_empty());
        let mut rebuilt = Vec::new();
        for (partial, content) in &records {
            prop_assert!(content.len() <= MAX_LINE || !partial);
            prop_assert!(!content.contains(&b'\n'));
            rebuilt.extend_from_slice(content);
            if !partial {
                rebuilt.push(b'\n');
            }
            let line = record(std::time::SystemTime::UNIX_EPOCH, "stdout", *partial, content);
            let tag: &[u8] = if *partial { b" stdout P " } else { b" stdout F " };
            prop_assert_eq!(&line[30..40], tag);
            prop_assert_eq!(line.last(), Some(&b'\n'));
        }
        let mut want = input.clone();
        if !want.is_empty() && want.last() != Some(&b'\n') {
            want.push(b'\n');
        }
        prop_assert_eq!(rebuilt, want);
    }
}
