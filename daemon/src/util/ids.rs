//! Ids, the clock and the check of CRI-given names that become paths or keys.

use crate::error::{Error, Result};

/// Nanoseconds since the epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A fresh 64-hex-digit id, as kubelet expects from containerd.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("read /dev/urandom", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Checks a CRI-given name that becomes part of a path or key.
pub fn validate_name(what: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if v.contains('/') || v.contains('\0') || v == "." || v == ".." || v.len() > 253 {
        return Err(Error::InvalidArgument(format!("invalid {what} {v:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_digits_and_differ() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn names_that_would_leave_their_dir_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(validate_name("x", bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("x", &"a".repeat(254)).is_err());
        assert!(validate_name("x", "nginx-1.2_a").is_ok());
    }
}
