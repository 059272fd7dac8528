//! SPDY/3 frame layout: control frame types, flags and statuses, and the builders of the
//! control and DATA frames this client writes.

use anyhow::{ensure, Result};

/// Control frame types (SPDY/3 §2.6).
pub(super) mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}
pub(super) const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status REFUSED_STREAM.
pub(super) const REFUSED_STREAM: u32 = 3;
/// Largest frame accepted from the server (its own limit is far lower).
pub(super) const FRAME_LIMIT: usize = 16 << 20;

pub(super) fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut f = vec![0x80, 0x03];
    f.extend(kind.to_be_bytes());
    f.push(flags);
    f.extend(&len.to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

pub(super) fn data_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    f.push(flags);
    f.extend(&len.to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub(super) fn be32(b: &[u8]) -> Result<u32> {
    ensure!(b.len() >= 4, "control frame body of {} bytes", b.len());
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_laid_out_as_the_spec_says() {
        assert_eq!(
            control_frame(kind::PING, 0, &7u32.to_be_bytes()),
            [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]
        );
        assert_eq!(
            data_frame(5, FLAG_FIN, b"ab"),
            [0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']
        );
    }
}
