//! Pod networking: pinned network namespaces and the CNI plugins that wire them (ADD/DEL).

pub mod builtin;
mod cni;
mod conf;
mod exec;
mod netns;
mod result;
#[cfg(test)]
mod tests;

pub use cni::Cni;
pub use conf::NetworkConfigList;
pub use netns::NetNs;

/// One CRI port mapping, handed to plugins that declare the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    /// "tcp", "udp" or "sctp" (any case; lowered before it reaches the plugin).
    pub protocol: String,
    /// Empty: every host address.
    pub host_ip: String,
}

/// The pod's DNS settings, handed to plugins that declare the `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsArgs {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What berthd knows about a pod when it asks CNI to wire (or unwire) it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetArgs {
    /// CNI_CONTAINERID: letters, digits, `_`, `.` and `-` only (the CNI spec's rule).
    pub sandbox_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    /// The pod's interface, "eth0" for kubelet.
    pub ifname: String,
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsArgs>,
    /// "" or the CIDR from UpdateRuntimeConfig; the `ipRanges` capability when declared.
    pub pod_cidr: String,
}
