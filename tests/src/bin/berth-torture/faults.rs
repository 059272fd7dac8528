//! The faults berth-torture injects (`--faults LIST`): each a variant here, its injection
//! and its own checks in a `fault_<name>.rs` of its own. Round faults (kill, store) share
//! the daemon-kill rounds in turn; shim-kill joins every round; a phase fault (reboot) runs
//! its own rounds after them.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the daemon at a random moment (and the failpoints, `--failpoints`).
    Kill,
    /// SIGKILL, then the daemon's state store deleted, truncated or garbled (in turn)
    /// before the restart (`fault_store`).
    Store,
    /// A simulated node reboot (`fault_reboot`): every shim and container killed, the
    /// state dir emptied, the netns pins gone, then the daemon started.
    Reboot,
    /// kill -9 of a running churn pod's shim at a random moment of each round
    /// (`fault_shim_kill`).
    ShimKill,
}

impl Fault {
    /// A comma-separated list ("kill,store,shim-kill,reboot"); each fault once, in order.
    pub fn parse(list: &str) -> Result<Vec<Fault>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let f = match name {
                "kill" => Fault::Kill,
                "store" => Fault::Store,
                "reboot" => Fault::Reboot,
                "shim-kill" => Fault::ShimKill,
                other => {
                    bail!("unknown fault {other:?} (known: kill, store, reboot, shim-kill)")
                }
            };
            if !out.contains(&f) {
                out.push(f);
            }
        }
        if out.is_empty() {
            bail!("--faults needs at least one fault");
        }
        Ok(out)
    }

    /// A fault of the daemon-kill rounds (taken in turn by them).
    pub fn per_round(self) -> bool {
        matches!(self, Fault::Kill | Fault::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(Fault::parse("kill").unwrap(), vec![Fault::Kill]);
        assert_eq!(
            Fault::parse("reboot, kill,store,shim-kill,reboot").unwrap(),
            vec![Fault::Reboot, Fault::Kill, Fault::Store, Fault::ShimKill]
        );
        assert!(Fault::parse("").is_err());
        assert!(Fault::parse("kill,nap").is_err());
        assert!(Fault::Store.per_round() && !Fault::Reboot.per_round());
        assert!(!Fault::ShimKill.per_round());
    }
}
