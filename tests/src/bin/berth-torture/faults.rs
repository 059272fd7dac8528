//! The faults berth-torture injects (`--faults LIST`): each a variant here, its injection
//! and its own checks in a `fault_<name>.rs` of its own.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the daemon at a random moment (and `--failpoints`): the iterations.
    Kill,
    /// A simulated node reboot (`fault_reboot`): every shim and container killed, the
    /// state dir emptied, the netns pins gone, then the daemon started.
    Reboot,
}

impl Fault {
    /// A comma-separated list ("kill,reboot"); each fault once, in the order given.
    pub fn parse(list: &str) -> Result<Vec<Fault>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let f = match name {
                "kill" => Fault::Kill,
                "reboot" => Fault::Reboot,
                other => bail!("unknown fault {other:?} (kill, reboot)"),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(Fault::parse("kill").unwrap(), vec![Fault::Kill]);
        assert_eq!(
            Fault::parse("reboot, kill,reboot").unwrap(),
            vec![Fault::Reboot, Fault::Kill]
        );
        assert!(Fault::parse("").is_err());
        assert!(Fault::parse("kill,nap").is_err());
    }
}
