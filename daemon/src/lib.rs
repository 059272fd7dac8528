//! berthd, Berth's CRI manager daemon, as a library: `main.rs` only parses the command
//! line and wires these modules together. docs/architecture.md maps the rooms.

pub mod cdi;
pub mod config;
pub mod container;
pub mod core;
pub mod cri;
pub mod error;
pub mod events;
pub mod failpoints;
pub mod image;
pub mod intent;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod node;
pub mod nri;
pub mod oci_config;
pub mod pod;
pub mod records;
pub mod recovery;
pub mod salvage;
pub mod shim_client;
pub mod store;
pub mod stream;
pub mod systemd;
#[cfg(test)]
mod testkit;
pub mod util;
pub mod workload;

#[cfg(test)]
mod fuzz;
