//! SPDY/3.1 framing as Kubernetes' streaming clients speak it (moby/spdystream): control
//! frames (SYN_STREAM, SYN_REPLY, RST_STREAM, PING, GOAWAY, HEADERS; SETTINGS and
//! WINDOW_UPDATE are read and ignored) and data frames, with header blocks compressed by one zlib stream per
//! direction that starts from the SPDY/3 dictionary.
//!
//! Written here because no maintained Rust crate speaks SPDY/3.1; HTTP/2 crates do not
//! help, the framing and header compression differ.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, Result};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;

pub const FLAG_FIN: u8 = 0x01;
/// Frames larger than this are refused (data frames are written far smaller).
pub const MAX_FRAME: usize = 1 << 20;
/// A decompressed header block larger than this is refused: Kubernetes' streams carry a
/// handful of short headers, and zlib inflates up to 1032:1 (a 1 MiB frame could
/// otherwise become a gigabyte).
pub const MAX_HEADER_BLOCK: usize = 64 << 10;

/// Header name → values (SPDY joins several values of one name with NUL).
pub type Headers = Vec<(String, String)>;

pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One direction's header compression state (a zlib stream shared by every frame).
pub struct HeaderCodec {
    deflate: Compress,
    inflate: Decompress,
    dict: Vec<u8>,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        let dict = berth_proto::spdy::header_dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        // The writer presets the dictionary before its first byte.
        let _ = deflate.set_dictionary(&dict);
        HeaderCodec {
            deflate,
            inflate: Decompress::new(true),
            dict,
        }
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("spdy: {}", what.into()))
}

impl HeaderCodec {
    pub fn encode(&mut self, h: &Headers) -> Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(h.len() as u32).to_be_bytes());
        for (k, v) in h {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| bad(format!("deflate: {e}")))?;
            let used = (self.deflate.total_in() - before) as usize;
            input = &input[used..];
            // A sync flush is complete once all input is in and output space remained.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    pub fn decode(&mut self, block: &[u8]) -> Result<Headers> {
        let mut raw = Vec::with_capacity((block.len() * 4 + 64).min(MAX_HEADER_BLOCK));
        let mut input = block;
        loop {
            // The output never grows past the bound: inflate writes only into the spare
            // capacity reserved here.
            if raw.len() >= MAX_HEADER_BLOCK {
                return Err(bad("header block too large"));
            }
            raw.reserve_exact((MAX_HEADER_BLOCK - raw.len()).min(1024));
            let before = self.inflate.total_in();
            let res = self
                .inflate
                .decompress_vec(input, &mut raw, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match res {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && raw.len() < raw.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(|e| bad(format!("dictionary: {e}")))?;
                }
                Err(e) => return Err(bad(format!("inflate: {e}"))),
            }
        }
        parse_block(&raw)
    }
}

fn parse_block(raw: &[u8]) -> Result<Headers> {
    let mut r = raw;
    let mut take = |n: usize| -> Result<&[u8]> {
        if r.len() < n {
            return Err(bad("truncated header block"));
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a)
    };
    let u32_of = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = u32_of(take(4)?);
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = u32_of(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).into_owned();
        let n = u32_of(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

/// A frame as read off the wire (header blocks still compressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Control {
        kind: u16,
        flags: u8,
        body: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        body: Vec<u8>,
    },
}

/// Splits one frame off the front of `buf`, if a whole one is there.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("frame of {len} bytes")));
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let flags = buf[4];
    let body = buf[8..8 + len].to_vec();
    let frame = if buf[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([buf[0] & 0x7f, buf[1]]);
        if version != 3 {
            return Err(bad(format!("version {version}")));
        }
        Frame::Control {
            kind: u16::from_be_bytes([buf[2], buf[3]]),
            flags,
            body,
        }
    } else {
        Frame::Data {
            stream: u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) & 0x7fff_ffff,
            flags,
            body,
        }
    };
    Ok(Some((frame, 8 + len)))
}

pub fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&[0x80, 3]);
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

pub fn data(stream: u32, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// The 31-bit stream id at the start of a control frame's body.
pub fn stream_id(body: &[u8]) -> Result<u32> {
    if body.len() < 4 {
        return Err(bad("short control frame"));
    }
    Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let (mut tx, mut rx) = (HeaderCodec::default(), HeaderCodec::default());
        for i in 0..3 {
            let h: Headers = vec![
                ("streamtype".into(), "stdout".into()),
                ("port".into(), format!("{}", 8000 + i)),
            ];
            let block = tx.encode(&h).unwrap();
            assert_eq!(rx.decode(&block).unwrap(), h);
        }
    }

    #[test]
    fn a_header_block_that_inflates_past_the_bound_is_refused() {
        let mut tx = HeaderCodec::default();
        let h: Headers = vec![("x".into(), "a".repeat(MAX_HEADER_BLOCK))];
        let block = tx.encode(&h).unwrap();
        assert!(block.len() < 4096, "compresses well: {}", block.len());
        let err = HeaderCodec::default().decode(&block).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn frames_parse_back() {
        let c = control(SYN_REPLY, FLAG_FIN, &[0, 0, 0, 5, 1, 2]);
        let (f, n) = parse(&c).unwrap().unwrap();
        assert_eq!(n, c.len());
        assert_eq!(
            f,
            Frame::Control {
                kind: SYN_REPLY,
                flags: FLAG_FIN,
                body: vec![0, 0, 0, 5, 1, 2]
            }
        );
        assert_eq!(stream_id(&[0, 0, 0, 5]).unwrap(), 5);
        let d = data(7, 0, b"hello");
        assert!(parse(&d[..10]).unwrap().is_none());
        let (f, _) = parse(&d).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Data {
                stream: 7,
                flags: 0,
                body: b"hello".to_vec()
            }
        );
    }
}
