//! Property-based fuzzing of the streaming server's parsers of client bytes: SPDY frames
//! and compressed header blocks, terminal resize messages, WebSocket port-forward channel
//! framing. No panic; a parse never claims more bytes than it was given; a header block
//! never decodes past its bound.

use proptest::prelude::*;
use tokio_tungstenite::tungstenite::Message;

use super::exec::parse_sizes;
use super::spdy::frame::{self, HeaderCodec};
use super::ws_portforward::decode;

/// Valid SPDY traffic (a SYN_STREAM with a compressed header block, DATA), then mutated.
fn spdy_like() -> impl Strategy<Value = Vec<u8>> {
    let mut codec = HeaderCodec::default();
    let block = codec
        .encode(&vec![
            ("streamtype".into(), "stdout".into()),
            ("port".into(), "80".into()),
        ])
        .unwrap();
    let mut syn = 1u32.to_be_bytes().to_vec();
    syn.extend_from_slice(&0u32.to_be_bytes());
    syn.extend_from_slice(&[0, 0]);
    syn.extend_from_slice(&block);
    let mut base = frame::control(1, 0, &syn);
    base.extend(frame::data(1, 0, b"hello"));
    (
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(move |(edits, tail)| {
            let mut b = base.clone();
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            b.extend(tail);
            b
        })
}

proptest! {
    #![proptest_config(crate::fuzz::config())]

    #[test]
    fn spdy_frames_parse_without_panic_or_overrun(
        buf in prop_oneof![spdy_like(), proptest::collection::vec(any::<u8>(), 0..256)]
    ) {
        let mut rest = &buf[..];
        let mut codec = HeaderCodec::default();
        while let Ok(Some((f, used))) = frame::parse(rest) {
            prop_assert!(used > 0 && used <= rest.len());
            // Header blocks of control frames go through the shared inflate state.
            if let frame::Frame::Control { body, .. } = &f {
                if body.len() > 10 {
                    let _ = codec.decode(&body[10..]);
                }
            }
            rest = &rest[used..];
        }
    }

    #[test]
    fn header_blocks_decode_without_panic(
        blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..128), 1..4),
        text in proptest::collection::vec(("[a-z-]{0,12}", "[ -~]{0,40}"), 0..6),
    ) {
        let mut codec = HeaderCodec::default();
        for b in &blocks {
            let _ = codec.decode(b);
        }
        // A well-formed block round-trips.
        let (mut enc, mut dec) = (HeaderCodec::default(), HeaderCodec::default());
        let block = enc.encode(&text).unwrap();
        let back = dec.decode(&block).unwrap();
        let want: Vec<(String, String)> =
            text.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        prop_assert_eq!(back, want);
    }

    #[test]
    fn resize_messages_parse_without_panic_or_overrun(
        buf in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "(\\{\"Width\":[0-9]{1,6},\"Height\":[0-9]{1,6}\\}){0,4}[{}\":,0-9a-zA-Z ]{0,20}"
                .prop_map(String::into_bytes),
        ]
    ) {
        let (sizes, used, _err) = parse_sizes(&buf);
        prop_assert!(used <= buf.len());
        prop_assert!(sizes.len() <= buf.len() / 2 + 1);
    }

    #[test]
    fn websocket_port_forward_frames_decode_without_panic(
        bin in proptest::collection::vec(any::<u8>(), 0..64),
        text in any::<String>(),
    ) {
        if let Some((_, data)) = decode(false, Message::Binary(bin.clone().into())) {
            prop_assert_eq!(data.len() + 1, bin.len());
        }
        let _ = decode(true, Message::Text(text.into()));
        let _ = decode(true, Message::Binary(bin.into()));
    }
}
