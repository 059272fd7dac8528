//! Who adjusted what, for one container's creation: NRI's field ownership. A field (an
//! NRI `Field`, with a key for the compound ones: an annotation key, a mount
//! destination, an env name...) is set by one plugin at most; a second plugin setting
//! it fails the creation, naming both. A removal frees the field. OCI hooks are not
//! owned: every plugin may add some, and all of them are recorded (as NRI does).
//! The validators are shown the owners as NRI's `OwningPlugins`.

use std::collections::{BTreeMap, HashMap};

use berth_nri::api::{self, Field};

use crate::error::{Error, Result};

#[derive(Default)]
pub struct Owners {
    fields: BTreeMap<(i32, String), String>,
}

/// How a field reads in an error (`env "B"`, `memory limit`).
fn describe(field: Field, key: &str) -> String {
    let what = match field {
        Field::Annotations => "annotation",
        Field::Mounts => "mount",
        Field::Devices => "device",
        Field::CdiDevices => "CDI device",
        Field::Env => "env",
        Field::Args => "args",
        Field::MemLimit => "memory limit",
        Field::MemReservation => "memory reservation",
        Field::MemSwapLimit => "memory swap limit",
        Field::MemSwappiness => "memory swappiness",
        Field::MemDisableOomKiller => "memory OOM killer",
        Field::CPUShares => "CPU shares",
        Field::CPUQuota => "CPU quota",
        Field::CPUPeriod => "CPU period",
        Field::CPURealtimeRuntime => "CPU realtime runtime",
        Field::CPURealtimePeriod => "CPU realtime period",
        Field::CPUSetCPUs => "cpuset CPUs",
        Field::CPUSetMems => "cpuset memory nodes",
        Field::PidsLimit => "pids limit",
        Field::HugepageLimits => "hugepage limit",
        Field::CgroupsUnified => "cgroup v2",
        Field::CgroupsPath => "cgroups path",
        Field::OomScoreAdj => "OOM score adjustment",
        Field::Rlimits => "rlimit",
        Field::IoPriority => "I/O priority",
        Field::SeccompPolicy => "the seccomp policy",
        Field::Namespace => "namespace",
        Field::Sysctl => "sysctl",
        _ => "a field",
    };
    match (field, key) {
        (_, "") => what.to_string(),
        (Field::Rlimits, k) => format!("{what} {k}"),
        (_, k) => format!("{what} {k:?}"),
    }
}

impl Owners {
    /// `plugin` sets `field` (`key` "" for a simple field): a conflict if another
    /// plugin set it.
    pub fn claim(&mut self, field: Field, key: &str, plugin: &str) -> Result<()> {
        let k = (field as i32, key.to_string());
        match self.fields.get(&k) {
            Some(other) if other != plugin => Err(Error::FailedPrecondition(format!(
                "NRI plugins {other} and {plugin} both adjust {}",
                describe(field, key)
            ))),
            _ => {
                self.fields.insert(k, plugin.to_string());
                Ok(())
            }
        }
    }

    /// A removal: the field is free again.
    pub fn clear(&mut self, field: Field, key: &str) {
        self.fields.remove(&(field as i32, key.to_string()));
    }

    /// A field every plugin may add to (OCI hooks): its owners, comma-separated.
    pub fn accumulate(&mut self, field: Field, plugin: &str) {
        let e = self
            .fields
            .entry((field as i32, String::new()))
            .or_default();
        if !e.split(',').any(|p| p == plugin) {
            if !e.is_empty() {
                e.push(',');
            }
            e.push_str(plugin);
        }
    }

    /// Who set `field` (`key` "" for a simple field), if anyone.
    pub fn owner(&self, field: Field, key: &str) -> Option<&str> {
        self.fields
            .get(&(field as i32, key.to_string()))
            .map(String::as_str)
    }

    /// The keys of a compound field that were set, with their owners.
    pub fn owned(&self, field: Field) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .filter(move |((f, k), _)| *f == field as i32 && !k.is_empty())
            .map(|((_, k), p)| (k.as_str(), p.as_str()))
    }

    /// NRI's `OwningPlugins` of container `id`, as validators are shown them.
    pub fn to_proto(&self, id: &str) -> api::OwningPlugins {
        let mut f = api::FieldOwners::new();
        let mut compound: HashMap<i32, api::CompoundFieldOwners> = HashMap::new();
        for ((field, key), plugin) in &self.fields {
            if key.is_empty() {
                f.simple.insert(*field, plugin.clone());
            } else {
                compound
                    .entry(*field)
                    .or_default()
                    .owners
                    .insert(key.clone(), plugin.clone());
            }
        }
        f.compound = compound;
        let mut o = api::OwningPlugins::new();
        o.owners.insert(id.to_string(), f);
        o
    }
}
