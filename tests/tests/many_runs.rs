//! 200 runs of a container that exits at once never hang and always report 0.

use anyhow::{ensure, Result};
use berth_tests::{Instance, Runtime, Setup};
use std::time::{Duration, Instant};

#[test]
fn two_hundred_quick_runs_exit_zero() -> Result<()> {
    let inst = Instance::start(Setup::new(Runtime::Berth))?;
    let ctr = inst.ctr();
    let started = Instant::now();
    for i in 0..200 {
        let id = inst.new_id("quick");
        let out = ctr.run_rm(&[], &id, &["true"], Duration::from_secs(30))?;
        ensure!(
            out.code == 0,
            "run {i} ({id}) returned {out:?}\n{}",
            inst.log_tail(40)
        );
    }
    eprintln!("200 runs in {:?}", started.elapsed());
    inst.finish()
}
