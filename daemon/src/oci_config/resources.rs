//! The asked-for resources → `linux.resources` (cpu shares/quota/period, cpuset,
//! memory and swap, hugepages, unified) and `process.oomScoreAdj`.

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroup, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxResources, LinuxResourcesBuilder,
};

use super::{invalid, oci};
use crate::error::Result;
use crate::workload::Resources;

/// containerd's cpu shares for the infra (pause) process.
pub(crate) const SANDBOX_CPU_SHARES: u64 = 2;

fn non_negative(what: &str, v: i64) -> Result<i64> {
    if v < 0 {
        return Err(invalid(format!("{what} {v} must not be negative")));
    }
    Ok(v)
}

/// Fields left at 0 / empty are not set, as containerd's `WithResources`.
pub(crate) fn linux_resources(
    r: Option<&Resources>,
    devices: Vec<LinuxDeviceCgroup>,
) -> Result<LinuxResources> {
    let mut b = LinuxResourcesBuilder::default().devices(devices);
    let Some(r) = r else { return oci(b.build()) };

    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if non_negative("cpu_period", r.cpu_period)? != 0 {
        cpu = cpu.period(r.cpu_period as u64);
        any_cpu = true;
    }
    if r.cpu_quota != 0 {
        if r.cpu_quota < -1 {
            return Err(invalid(format!("cpu_quota {} is invalid", r.cpu_quota)));
        }
        cpu = cpu.quota(r.cpu_quota);
        any_cpu = true;
    }
    if non_negative("cpu_shares", r.cpu_shares)? != 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
        any_cpu = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
        any_cpu = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
        any_cpu = true;
    }
    if any_cpu {
        b = b.cpu(oci(cpu.build())?);
    }

    let mut mem = LinuxMemoryBuilder::default();
    let mut any_mem = false;
    if non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)? != 0 {
        mem = mem.limit(r.memory_limit_in_bytes);
        any_mem = true;
    }
    if r.memory_swap_limit_in_bytes != 0 {
        if r.memory_swap_limit_in_bytes < -1 {
            return Err(invalid(format!(
                "memory_swap_limit_in_bytes {} is invalid",
                r.memory_swap_limit_in_bytes
            )));
        }
        mem = mem.swap(r.memory_swap_limit_in_bytes);
        any_mem = true;
    }
    if any_mem {
        b = b.memory(oci(mem.build())?);
    }

    if !r.hugepage_limits.is_empty() {
        let mut pages = Vec::new();
        for h in &r.hugepage_limits {
            if h.page_size.is_empty() {
                return Err(invalid("hugepage limit without a page_size"));
            }
            let limit = i64::try_from(h.limit)
                .map_err(|_| invalid(format!("hugepage limit {} is out of range", h.limit)))?;
            pages.push(oci(LinuxHugepageLimitBuilder::default()
                .page_size(h.page_size.clone())
                .limit(limit)
                .build())?);
        }
        b = b.hugepage_limits(pages);
    }
    if !r.unified.is_empty() {
        b = b.unified(r.unified.clone());
    }
    oci(b.build())
}

/// `process.oomScoreAdj` from CRI, kept as sent (kubelet computes it) but range-checked.
pub(crate) fn oom_score_adj(r: Option<&Resources>) -> Result<Option<i32>> {
    let Some(r) = r else { return Ok(None) };
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(format!(
            "oom_score_adj {} is outside [-1000, 1000]",
            r.oom_score_adj
        )));
    }
    Ok(Some(r.oom_score_adj as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::HugepageLimit;

    #[test]
    fn resources_table() {
        let r = Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            oom_score_adj: 500,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 21,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
        };
        let lr = linux_resources(Some(&r), vec![]).unwrap();
        let cpu = lr.cpu().clone().unwrap();
        assert_eq!(
            (cpu.period(), cpu.quota(), cpu.shares()),
            (Some(100_000), Some(50_000), Some(512))
        );
        assert_eq!(
            (cpu.cpus().as_deref(), cpu.mems().as_deref()),
            (Some("0-1"), Some("0"))
        );
        let mem = lr.memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(128 << 20)));
        let hp = lr.hugepage_limits().clone().unwrap();
        assert_eq!(
            (hp[0].page_size().as_str(), hp[0].limit()),
            ("2MB", 4 << 21)
        );
        assert_eq!(lr.unified().as_ref().unwrap()["memory.high"], "1000000");
        assert_eq!(oom_score_adj(Some(&r)).unwrap(), Some(500));
    }

    #[test]
    fn zero_fields_are_unset() {
        let lr = linux_resources(Some(&Resources::default()), vec![]).unwrap();
        assert!(lr.cpu().is_none() && lr.memory().is_none() && lr.hugepage_limits().is_none());
        assert!(lr.unified().is_none());
        assert_eq!(oom_score_adj(None).unwrap(), None);
        assert_eq!(oom_score_adj(Some(&Resources::default())).unwrap(), Some(0));
    }

    #[test]
    fn quota_minus_one_is_unlimited() {
        let r = Resources {
            cpu_quota: -1,
            ..Default::default()
        };
        let lr = linux_resources(Some(&r), vec![]).unwrap();
        assert_eq!(lr.cpu().clone().unwrap().quota(), Some(-1));
    }

    #[test]
    fn bad_resources_are_invalid() {
        let bad = [
            Resources {
                cpu_shares: -2,
                ..Default::default()
            },
            Resources {
                cpu_period: -1,
                ..Default::default()
            },
            Resources {
                cpu_quota: -5,
                ..Default::default()
            },
            Resources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            },
            Resources {
                memory_swap_limit_in_bytes: -3,
                ..Default::default()
            },
            Resources {
                hugepage_limits: vec![HugepageLimit {
                    page_size: String::new(),
                    limit: 1,
                }],
                ..Default::default()
            },
            Resources {
                hugepage_limits: vec![HugepageLimit {
                    page_size: "2MB".into(),
                    limit: u64::MAX,
                }],
                ..Default::default()
            },
        ];
        for r in &bad {
            assert!(linux_resources(Some(r), vec![]).is_err(), "{r:?}");
        }
        let oom = Resources {
            oom_score_adj: 1001,
            ..Default::default()
        };
        assert!(oom_score_adj(Some(&oom)).is_err());
    }
}
