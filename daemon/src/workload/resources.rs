//! Linux resources of a container or a pod (CRI's `LinuxContainerResources`), kept as
//! sent: zero means "not set", ranges are checked where the OCI spec is made.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 keys and values.
    pub unified: HashMap<String, String>,
    pub memory_swap_limit_in_bytes: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageLimit {
    /// E.g. "2MB".
    pub page_size: String,
    pub limit: u64,
}
