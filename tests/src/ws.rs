//! The WebSocket client of the streaming suites: berthd's client library's
//! (`berthd::cri::client::ws`, written apart from its server side), which berthctl uses too.

pub use berthd::cri::client::ws::*;
