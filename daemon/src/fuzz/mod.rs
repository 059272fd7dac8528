//! Property-based fuzzing (proptest, stable Rust) of every berthd parser that takes bytes
//! from outside: image references, manifests/indexes/configs, layer tars and the config
//! TOML. CRI requests are fuzzed inside the CRI adapter (`cri::fuzz`), the only room
//! that reads CRI types. Each property: no panic, typed errors, and for the tar
//! unpacker nothing written outside its directory.
//!
//! CI runs proptest's default case count per target; the long run sets `PROPTEST_CASES`
//! (see docs/security.md). No regression files are written into the source tree.

mod image;
mod unpack;

use proptest::test_runner::Config;

/// proptest's config with the case count from `PROPTEST_CASES` (default 256) and no
/// failure persistence (a failing input is printed, not written into the repository).
pub(crate) fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// The same, with at most `cap` cases, for a target whose case is costly (the tar
/// unpacker writes a tree per case).
pub(crate) fn costly(cap: u32) -> Config {
    let c = config();
    Config {
        cases: c.cases.min(cap),
        ..c
    }
}
