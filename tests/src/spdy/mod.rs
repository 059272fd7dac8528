//! A SPDY/3.1 client for the CRI streaming server, written apart from berthd's server side
//! so that each checks the other: the HTTP/1.1 upgrade (`Upgrade: SPDY/3.1`, protocol
//! negotiation through `X-Stream-Protocol-Version`), SYN_STREAM / SYN_REPLY, DATA with FIN,
//! RST_STREAM, PING and GOAWAY; header blocks go through one zlib stream per direction
//! preset with the SPDY/3 dictionary. No flow-control windows (as moby/spdystream).
//!
//! On top of it: [`exec()`] / [`ExecSession`] (remotecommand v2–v4, the streams kubectl exec
//! opens) and [`PortForward`] (`portforward.k8s.io`, an error and a data stream per
//! forwarded connection).
//!
//! Modules, lowest first: `frame` (frame layout), `headers` (header blocks and their zlib
//! streams), `http` (the upgrade handshake), `wire` (the reader and writer tasks), `stream`,
//! `session`, then `exec` and `portforward`.

mod exec;
mod frame;
mod headers;
mod http;
mod portforward;
mod session;
mod stream;
mod wire;

pub use exec::{exec, ExecOutput, ExecSession, EXEC_PROTOCOLS};
pub use headers::{header, Headers};
pub use http::Refused;
pub use portforward::{port_forward, Forwarded, PortForward, PORT_FORWARD_PROTOCOL};
pub use session::{Session, Upgrade};
pub use stream::{Stream, StreamReader, StreamWriter};
pub use wire::End;
