//! Short forms of the CRI runtime calls: berthd's client library's (`berthd::cri::client::calls`),
//! which berthctl uses too.

pub use berthd::cri::client::calls::*;
