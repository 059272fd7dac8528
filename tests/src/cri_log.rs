//! Decoding the CRI log format the shim writes: berthd's client library's decoder
//! (`berthd::cri::client::log`), which `berthctl logs` uses too.

pub use berthd::cri::client::log::{stream, text};
