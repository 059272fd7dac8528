//! Memory of the shim processes: RSS/PSS from /proc.

use super::*;

/// Memory of one process or a sum over processes, in kB as /proc reports it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mem {
    pub(crate) rss: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
    pub(crate) hwm: u64,
    pub(crate) pss: u64,
    pub(crate) threads: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss + o.rss,
            anon: self.anon + o.anon,
            file: self.file + o.file,
            hwm: self.hwm + o.hwm,
            pss: self.pss + o.pss,
            threads: self.threads + o.threads,
        }
    }
}

/// VmRSS/RssAnon/RssFile/VmHWM/Threads from /proc/<pid>/status, Pss from smaps_rollup.
pub(crate) fn mem_of(pid: i32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    let f = |k: &str| field_kb(&status, k).with_context(|| format!("no {k} for pid {pid}"));
    Ok(Mem {
        rss: f("VmRSS:")?,
        anon: f("RssAnon:")?,
        file: f("RssFile:")? + field_kb(&status, "RssShmem:").unwrap_or(0),
        hwm: f("VmHWM:")?,
        threads: f("Threads:")?,
        pss: field_kb(&rollup, "Pss:").with_context(|| format!("no Pss for pid {pid}"))?,
    })
}

pub(crate) struct Ctx {
    pub(crate) inst: Instance,
    pub(crate) berth_exe: PathBuf,
    pub(crate) go_exe: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) parallel: usize,
    /// CRI pods still to tear down (also on error paths).
    pub(crate) pods: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    pub(crate) fn exe(&self, w: Which) -> &Path {
        match w {
            Which::Berth => &self.berth_exe,
            Which::Go => &self.go_exe,
        }
    }

    /// Pids of this containerd's shims running the binary of `w`.
    pub(crate) fn shim_pids(&self, w: Which) -> Vec<i32> {
        let want = self.exe(w);
        self.inst
            .shims()
            .into_iter()
            .filter(|p| p.exe.as_deref() == Some(want))
            .map(|p| p.pid)
            .collect()
    }

    pub(crate) fn ctr(&self) -> Ctr {
        self.inst.ctr()
    }

    pub(crate) fn remember_pod(&self, id: &str) {
        self.inst.track_key(id);
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.into());
    }

    pub(crate) fn forget_pod(&self, id: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != id);
    }
}

/// Growth from `a` to `b` in percent.
pub(crate) fn growth(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) * 100.0 / a.max(1) as f64
}

pub(crate) fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}
