//! Shared harness for Berth black-box tests: private containerd instances driving the shim
//! under test, and the berthd fixture (`berthd::Berthd::builder`, `pod::Pod`, one CRI
//! client in `cri` (its calls in short form in `cri_calls`), one CRI log decoder in `cri_log`,
//! the `berthctl` binary driven in `berthctl`).
//!
//! Set `BERTH_TEST_REFERENCE=1` to run the same tests against the Go `containerd-shim-runc-v2`
//! shipped with the containerd under test (validates the tests), or `BERTH_SHIM=<path>` to
//! pick another build of ours. Suites run against containerd 1.6 (Debian 12) and, where
//! they say so, containerd 2.1 (`containerd_version`, `tests/containerd2.sh`).

pub mod berthctl;
pub mod berthd;
pub mod caps;
pub mod cleanup;
pub mod cmd;
pub mod cni;
pub mod config;
pub mod containerd;
pub mod containerd_version;
pub mod cri;
pub mod cri_calls;
pub mod cri_images;
pub mod cri_log;
pub mod ctr;
pub mod direct;
pub mod direct_steps;
pub mod events;
pub mod fault_proxy;
pub mod faulty_cni;
pub mod fifo;
pub mod host;
pub mod hostile_registry;
pub mod http;
pub mod image;
pub mod leaks;
pub mod nri_plugin;
pub mod pod;
pub mod procs;
pub mod reboot;
pub mod registry;
pub mod shim;
pub mod slow_proxy;
pub mod spdy;
pub mod streaming;
pub mod task_api;
pub mod task_reqs;
pub mod torture;
pub mod userns;
pub mod ws;

pub use containerd::{Instance, Setup};
pub use containerd_version::Containerd;
pub use shim::{Oci, Runtime};

/// Every runtime set-up the `ctr` suites run against: berth.v2, and the drop-in with runc and crun.
pub const ALL_RUNTIMES: [Runtime; 3] = [
    Runtime::Berth,
    Runtime::DropIn(Oci::Runc),
    Runtime::DropIn(Oci::Crun),
];

/// Mounts the v1 hugetlb hierarchy crun 1.8 needs when hugetlb sits on cgroup2 (idempotent).
pub fn ensure_hugetlb_v1() {
    let d = std::path::Path::new("/sys/fs/cgroup/hugetlb");
    if d.join("cgroup.procs").exists() {
        return;
    }
    let _ = std::fs::create_dir_all(d);
    let _ = cmd::run(
        std::process::Command::new("mount")
            .args(["-t", "cgroup", "-o", "hugetlb", "cgroup"])
            .arg(d),
        std::time::Duration::from_secs(10),
    );
}
