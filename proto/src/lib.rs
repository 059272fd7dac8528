//! Berth's API bindings: re-exports containerd's shim protos and adds what they lack.
//!
//! `containerd-shim-protos` ships the task API v3 service, events, runc options and the
//! 2.3 bootstrap params. The v2 task service has byte-identical messages under another
//! package name, so it is served by registering the same handlers twice
//! ([`task_services`]). `runtimeoptions.v1.Options` is generated here at build time.
//! What the shim and berthd share beyond containerd's API is defined here once: Berth's
//! extension services (`berth_shim`), the exit record (`exit`), idmapped mounts (`idmap`)
//! and the SPDY framing.

pub use containerd_shim_protos::{
    api, bootstrap_api, cgroups, cgroups_v2, events, protobuf, shim, shim_async, topics, ttrpc,
    types,
};

/// A module of generated code from `OUT_DIR` (ttrpc-codegen's output carries none of
/// our lints' expectations).
macro_rules! generated {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        #[allow(
            clippy::all,
            unused_mut,
            unused_qualifications,
            unused_imports,
            missing_docs,
            unused_attributes,
            nonstandard_style
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), $file));
        }
    };
}

generated!(
    /// `runtimeoptions.v1.Options`, sent by containerd's CRI for non-runc runtime types.
    runtimeoptions,
    "/runtimeoptions.rs"
);

/// Berth's shim extension (`berth.shim.v1`): attaching to a running process's output, and
/// the shim's event journal. Served beside the task service; containerd never calls it.
pub mod berth_shim {
    generated!(attach, "/attach.rs");
    generated!(attach_ttrpc, "/attach_ttrpc.rs");
    generated!(journal, "/journal.rs");
    generated!(journal_ttrpc, "/journal_ttrpc.rs");

    pub use attach::{AttachRequest, AttachResponse};
    pub use attach_ttrpc::{create_attach, Attach, AttachClient};
    pub use journal::{Entry, ReadRequest, ReadResponse};
    pub use journal_ttrpc::{create_journal, Journal, JournalClient};

    /// The service name the shim registers.
    pub const ATTACH: &str = "berth.shim.v1.Attach";

    /// ttrpc metadata on a task Stats call: with the value [`STATS_CRI`], the shim reads
    /// only what CRI's ContainerStats carries (CPU time, memory usage, `memory.stat`)
    /// instead of every figure of the Metrics type. Absent (containerd): every figure.
    pub const STATS_DETAIL: &str = "berth-stats-detail";
    pub const STATS_CRI: &str = "cri";
}

pub mod exit;
pub mod idmap;
pub mod spdy;

use std::collections::HashMap;
use std::sync::Arc;

/// Service name containerd 1.6–2.x dials for a shim that printed a plain address.
pub const TASK_V2: &str = "containerd.task.v2.Task";
/// Service name containerd 2.x uses once a shim reports version 3.
pub const TASK_V3: &str = "containerd.task.v3.Task";

/// Builds the ttrpc service table serving one task implementation as both
/// `containerd.task.v2.Task` and `containerd.task.v3.Task` (identical messages).
pub fn task_services<T>(task: Arc<T>) -> HashMap<String, ttrpc::r#async::Service>
where
    T: shim_async::Task + Send + Sync + 'static,
{
    let mut out = shim_async::create_task(task.clone());
    let mut v2 = shim_async::create_task(task);
    if let Some(svc) = v2.remove(TASK_V3) {
        out.insert(TASK_V2.to_string(), svc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    struct Nop;
    impl shim_async::Task for Nop {}

    #[test]
    fn both_task_versions_are_registered() {
        let s = task_services(Arc::new(Nop));
        assert!(s.contains_key(TASK_V2), "{:?}", s.keys());
        assert!(s.contains_key(TASK_V3), "{:?}", s.keys());
    }

    #[test]
    fn runtimeoptions_round_trip() {
        let mut o = runtimeoptions::Options::new();
        o.type_url = "x".into();
        o.config_body = b"BinaryName = \"crun\"".to_vec();
        let b = o.write_to_bytes().unwrap();
        let back = runtimeoptions::Options::parse_from_bytes(&b).unwrap();
        assert_eq!(back.config_body, o.config_body);
    }
}
