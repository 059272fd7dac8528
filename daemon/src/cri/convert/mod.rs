//! CRI messages ↔ Berth's own types (`workload`): the one place where a CRI config
//! becomes a [`PodSpec`]/[`ContainerSpec`] and back. Unknown enum numbers are
//! InvalidArgument here, so nothing below the adapter sees a raw protobuf value; fields
//! Berth does not act on (Windows, SELinux labels) are dropped.

mod auth;
mod container;
mod pod;
mod resources;
mod security;

pub use auth::credentials_from_cri;
pub use container::{
    container_from_cri, container_metadata, container_to_cri, mount_to_cri, stop_signal_to_cri,
};
pub use pod::{pod_from_cri, pod_metadata, pod_to_cri};
pub use resources::{resources_from_cri, resources_to_cri};
pub use security::namespaces_to_cri;

#[cfg(test)]
pub(crate) use pod::tests::full_pod;
#[cfg(test)]
pub(crate) use tests::full_container;

use crate::error::{Error, Result};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// A CRI enum field's value as a Berth enum, or InvalidArgument naming the field.
fn known<T: TryFrom<i32>>(what: &str, v: i32) -> Result<T> {
    T::try_from(v).map_err(|_| invalid(format!("unknown {what} {v}")))
}

#[cfg(test)]
mod tests;
