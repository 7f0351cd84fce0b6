//! Deterministic simulation over many seeds: pure cores, asynchronous crash-faithful
//! persistence, loss, duplication, reordering, partitions, crashes; Raft's safety properties
//! checked after every step and liveness after healing.
//!
//! `KEYVAL_SIM_SEEDS=N` runs N seeds (default 1000); `KEYVAL_SIM_SEED=S` replays one seed;
//! `KEYVAL_SIM_FIRST=F` starts the range at F (for soak runs across machines).

use keyval::testkit::simulation;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

#[test]
fn simulation_seeds_hold_every_safety_property() {
    let seeds: Vec<u64> = match env_u64("KEYVAL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("KEYVAL_SIM_FIRST").unwrap_or(0);
            let count = env_u64("KEYVAL_SIM_SEEDS").unwrap_or(1000);
            (first..first + count).collect()
        }
    };
    let mut acknowledged = 0;
    let mut crashes = 0;
    let mut elections = 0;
    let mut snapshots = 0;
    let mut installs = 0;
    for &seed in &seeds {
        match simulation::run(seed) {
            Ok(report) => {
                acknowledged += report.acknowledged;
                crashes += report.crashes;
                elections += report.elections;
                snapshots += report.snapshots;
                installs += report.snapshot_installs;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    eprintln!(
        "simulation: {} seeds, {acknowledged} acknowledged proposals, {elections} elections, \
         {crashes} crashes, {snapshots} snapshots, {installs} snapshot installs — no violation",
        seeds.len()
    );
    assert!(
        acknowledged > seeds.len() as u64,
        "the simulation made too little progress"
    );
}
