//! The faults the harness injects (`--faults LIST`): each iteration takes the next one of
//! the list. Every fault's injection and its own checks live in a `fault_<name>.rs`.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the daemon at a random moment (and the failpoints, `--failpoints`).
    Kill,
    /// SIGKILL, then the daemon's state store deleted, truncated or garbled (in turn)
    /// before the restart (`fault_store`).
    Store,
}

impl Fault {
    /// A comma-separated list of fault names.
    pub fn parse(list: &str) -> Result<Vec<Fault>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(match name {
                "kill" => Fault::Kill,
                "store" => Fault::Store,
                other => bail!("unknown fault {other:?} (known: kill, store)"),
            });
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
        assert_eq!(Fault::parse("kill").unwrap(), [Fault::Kill]);
        assert_eq!(
            Fault::parse("kill,store").unwrap(),
            [Fault::Kill, Fault::Store]
        );
        assert!(Fault::parse("kill,flood").is_err());
        assert!(Fault::parse("").is_err());
    }
}
