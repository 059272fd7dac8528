//! Header blocks: the name/value pairs of SYN_STREAM, SYN_REPLY and HEADERS frames, and the
//! zlib stream per direction (preset with the SPDY/3 dictionary) they travel through.

use super::frame::FRAME_LIMIT;
use anyhow::{bail, ensure, Context, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The SPDY/3 header compression dictionary: protocol data both ends share.
use berth_proto::spdy::header_dictionary;

/// Name/value pairs of a header block.
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (names are lowercase on the wire).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Our direction's header compressor: one zlib stream for the session, sync-flushed per block.
pub(super) struct HeaderWriter(Compress);

impl HeaderWriter {
    pub(super) fn new() -> Result<HeaderWriter> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&header_dictionary())
            .context("zlib dictionary (flate2 needs its zlib-rs feature)")?;
        Ok(HeaderWriter(z))
    }

    pub(super) fn block(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for part in [k.to_ascii_lowercase().as_bytes(), v.as_bytes()] {
                raw.extend((part.len() as u32).to_be_bytes());
                raw.extend_from_slice(part);
            }
        }
        let mut out = Vec::new();
        let mut scratch = [0u8; 4096];
        let mut rest = &raw[..];
        loop {
            let (in0, out0) = (self.0.total_in(), self.0.total_out());
            self.0
                .compress(rest, &mut scratch, FlushCompress::Sync)
                .context("deflate header block")?;
            let consumed = (self.0.total_in() - in0) as usize;
            let produced = (self.0.total_out() - out0) as usize;
            rest = &rest[consumed..];
            out.extend_from_slice(&scratch[..produced]);
            // The sync flush is complete once the input is in and output space was left over.
            if rest.is_empty() && produced < scratch.len() {
                return Ok(out);
            }
        }
    }
}

/// The server's direction: its zlib stream asks for the dictionary before its first block.
pub(super) struct HeaderReader {
    z: Decompress,
    dict: Vec<u8>,
}

impl HeaderReader {
    pub(super) fn new() -> HeaderReader {
        HeaderReader {
            z: Decompress::new(true),
            dict: header_dictionary(),
        }
    }

    pub(super) fn block(&mut self, compressed: &[u8]) -> Result<Headers> {
        let mut raw = Vec::new();
        let mut scratch = [0u8; 4096];
        let mut rest = compressed;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self.z.decompress(rest, &mut scratch, FlushDecompress::Sync);
            let consumed = (self.z.total_in() - in0) as usize;
            let produced = (self.z.total_out() - out0) as usize;
            rest = &rest[consumed..];
            raw.extend_from_slice(&scratch[..produced]);
            match r {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&self.dict)
                        .context("server's header stream: dictionary")?;
                    continue;
                }
                Err(e) => bail!("inflate the server's header block: {e}"),
                Ok(_) => {}
            }
            if rest.is_empty() && produced < scratch.len() {
                break;
            }
            ensure!(
                consumed > 0 || produced > 0,
                "inflate made no progress on a header block"
            );
            ensure!(raw.len() < FRAME_LIMIT, "header block inflates past 16 MiB");
        }
        parse_header_block(&raw)
    }
}

fn parse_header_block(raw: &[u8]) -> Result<Headers> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
            ensure!(self.0.len() >= n, "header block cut short");
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn u32(&mut self) -> Result<usize> {
            let b = self.bytes(4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        fn string(&mut self) -> Result<String> {
            let n = self.u32()?;
            Ok(String::from_utf8(self.bytes(n)?.to_vec())?)
        }
    }
    let mut c = Cursor(raw);
    let pairs = c.u32()?;
    let mut h = Vec::new();
    for _ in 0..pairs {
        let k = c.string()?;
        let v = c.string()?;
        h.push((k, v));
    }
    ensure!(
        c.0.is_empty(),
        "{} stray bytes after a header block",
        c.0.len()
    );
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_share_one_zlib_stream() {
        let (mut w, mut r) = (HeaderWriter::new().unwrap(), HeaderReader::new());
        for i in 0..4 {
            let h: Headers = vec![
                ("streamtype".into(), "data".into()),
                ("port".into(), (8000 + i).to_string()),
                ("requestid".into(), i.to_string()),
            ];
            assert_eq!(r.block(&w.block(&h).unwrap()).unwrap(), h);
        }
        // A large block crosses the 4 KiB scratch buffers both ways.
        let big: Headers = vec![("x-big".into(), "y".repeat(50_000))];
        assert_eq!(r.block(&w.block(&big).unwrap()).unwrap(), big);
    }
}
