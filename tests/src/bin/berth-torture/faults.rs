//! The faults berth-torture injects (`--faults LIST`): each variant's injection and its
//! own checks live in a `fault_<name>.rs` of their own.

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the daemon at a random moment of each iteration (today's default).
    Kill,
    /// kill -9 of a running churn pod's shim at a random moment of each iteration
    /// (fault_shim_kill.rs).
    ShimKill,
}

impl Fault {
    /// `kill,shim-kill`: comma-separated names, each at most once.
    pub fn parse(list: &str) -> Result<Vec<Fault>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let f = match name {
                "kill" => Fault::Kill,
                "shim-kill" => Fault::ShimKill,
                other => bail!("unknown fault {other:?} (known: kill, shim-kill)"),
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
    fn parses_lists() {
        assert_eq!(Fault::parse("kill").unwrap(), vec![Fault::Kill]);
        assert_eq!(
            Fault::parse("kill,shim-kill,kill").unwrap(),
            vec![Fault::Kill, Fault::ShimKill]
        );
        assert!(Fault::parse("kill,reboot!").is_err());
        assert!(Fault::parse("").is_err());
    }
}
