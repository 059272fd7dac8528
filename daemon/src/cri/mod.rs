//! The CRI v1 gRPC face of berthd: the unix socket server and thin tonic services that
//! decode, open a span, call the domain core and encode, plus the streaming server's
//! backend over the same core. Conversions live next to the service that needs them.
//! `client` is the other side: a CRI client (berthctl's, and the black-box tests').

pub mod client;
mod container;
pub mod convert;
mod events;
#[cfg(test)]
mod fuzz;
pub mod image_service;
mod list_stream;
mod metrics;
mod pod;
pub mod runtime_service;
pub mod server;
mod stats;
pub mod store_upgrade;
mod streaming;
