//! Readers layer unpacking needs beyond flate2: zstd (every frame of a stream, skippable
//! frames skipped; pure-Rust `ruzstd`, so no C library to build) and a tar tail that
//! tolerates archives ending without padding or trailer blocks, as Go's archive/tar does.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

/// Decodes a zstd stream of one or more frames.
pub struct ZstdFrames<R: BufRead> {
    dec: Option<StreamingDecoder<R, FrameDecoder>>,
    src: Option<R>,
}

impl<R: BufRead> ZstdFrames<R> {
    pub fn new(src: R) -> Self {
        ZstdFrames {
            dec: None,
            src: Some(src),
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(d) = self.dec.as_mut() {
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.src = self.dec.take().map(StreamingDecoder::into_inner);
            }
            let Some(mut src) = self.src.take() else {
                return Ok(0);
            };
            let head = src.fill_buf()?;
            if head.is_empty() {
                self.src = Some(src);
                return Ok(0);
            }
            if head.len() >= 4 {
                let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
                    let mut hdr = [0u8; 8];
                    src.read_exact(&mut hdr)?;
                    let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as u64;
                    let skipped = io::copy(&mut (&mut src).take(len), &mut io::sink())?;
                    if skipped != len {
                        return Err(invalid("truncated skippable frame"));
                    }
                    self.src = Some(src);
                    continue;
                }
            }
            self.dec = Some(StreamingDecoder::new(src).map_err(invalid)?);
        }
    }
}

/// Passes a tar stream through and, at its end, supplies the zero padding and trailer
/// blocks a writer left out (only those: 512-byte alignment plus two empty blocks), so
/// an archive whose last entry is complete but unpadded still reads to its end.
pub struct TarTail<R> {
    inner: R,
    seen: u64,
    /// Zero bytes still to supply once `inner` is exhausted.
    tail: Option<u64>,
}

impl<R: Read> TarTail<R> {
    pub fn new(inner: R) -> Self {
        TarTail {
            inner,
            seen: 0,
            tail: None,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for TarTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tail.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.seen += n as u64;
                return Ok(n);
            }
            self.tail = Some((512 - self.seen % 512) % 512 + 1024);
        }
        let left = self.tail.unwrap_or(0);
        let n = (left.min(buf.len() as u64)) as usize;
        buf[..n].fill(0);
        self.tail = Some(left - n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpadded_tar_reads_to_its_end() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"hello"[..]).unwrap();
        let mut full = b.into_inner().unwrap();
        full.truncate(512 + 5); // header + data: no padding, no trailer
        let mut ar = tar::Archive::new(TarTail::new(&full[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn zstd_frames_are_all_decoded() {
        let a = ruzstd::encoding::compress_to_vec(
            &b"first "[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let b = ruzstd::encoding::compress_to_vec(
            &b"second"[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut stream = a;
        // A skippable frame between the two.
        stream.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
        stream.extend_from_slice(&3u32.to_le_bytes());
        stream.extend_from_slice(b"xyz");
        stream.extend_from_slice(&b);
        let mut out = String::new();
        ZstdFrames::new(io::BufReader::new(&stream[..]))
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "first second");
    }
}
