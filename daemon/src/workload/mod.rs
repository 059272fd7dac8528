//! What kubelet asked for, in Berth's own types: a pod ([`PodSpec`]) and a container
//! ([`ContainerSpec`]) as the services, the OCI spec generation and the state store see
//! them. The CRI adapter (`cri::convert`) is the only place that turns CRI messages into
//! these and back; enum values arrive here already checked, so nothing below the adapter
//! handles an unknown protobuf number. The store keeps these types as they are (record
//! format 3), so a change here is a store format change (see `records::migrate`).

mod container;
mod pod;
mod resources;
mod security;
pub mod signal;

pub use container::{Capabilities, ContainerSecurity, ContainerSpec, Device, Mount, Propagation};
pub use pod::{Dns, PodSecurity, PodSpec, PortMapping, Protocol};
pub use resources::{HugepageLimit, Resources};
pub use security::{
    IdMapping, NamespaceMode, Namespaces, Profile, SupplementalGroupsPolicy, UserNamespace,
};
