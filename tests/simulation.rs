//! Deterministic simulation over many seeds: pure cores, asynchronous crash-faithful
//! persistence, loss, duplication, reordering, partitions, crashes, snapshots and membership
//! changes; Raft's safety properties checked after every step and liveness after healing.
//!
//! `KEYVAL_SIM_SEEDS=N` runs N seeds (default 1000); `KEYVAL_SIM_SEED=S` replays one seed;
//! `KEYVAL_SIM_FIRST=F` starts the range at F (for soak runs across machines).

use std::collections::BTreeMap;

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
    let mut changes_proposed = 0;
    let mut changes_committed = 0;
    let mut promoted = 0;
    let mut joins = 0;
    let mut power_cuts = 0;
    let mut pauses = 0;
    let mut lease_steps = 0;
    let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
    for &seed in &seeds {
        match simulation::run(seed) {
            Ok(report) => {
                if seeds.len() == 1 {
                    eprintln!("{report:?}");
                }
                acknowledged += report.acknowledged;
                crashes += report.crashes;
                elections += report.elections;
                snapshots += report.snapshots;
                installs += report.snapshot_installs;
                changes_proposed += report.membership_proposed;
                changes_committed += report.membership_committed;
                promoted += report.learners_promoted;
                joins += report.joins;
                power_cuts += report.power_cuts;
                pauses += report.pauses;
                lease_steps += report.lease_steps;
                for (reason, count) in report.membership_refused {
                    *refused.entry(reason).or_default() += count;
                }
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    eprintln!(
        "simulation: {} seeds, {acknowledged} acknowledged proposals, {elections} elections, \
         {crashes} crashes, {snapshots} snapshots, {installs} snapshot installs, membership \
         changes: {changes_proposed} accepted, {changes_committed} committed, {promoted} \
         learners promoted, {joins} empty nodes joined, refused {refused:?}; {power_cuts} power \
         cuts inside a persist, {pauses} pauses, {lease_steps} steps with a lease held — no \
         violation",
        seeds.len()
    );
    assert!(
        acknowledged > seeds.len() as u64,
        "the simulation made too little progress"
    );
    if seeds.len() >= 100 {
        assert!(
            changes_committed > seeds.len() as u64 / 4,
            "too few membership changes committed"
        );
        assert!(
            power_cuts > 0 && pauses > 0 && lease_steps > seeds.len() as u64,
            "the faults and checks did not happen: {power_cuts} power cuts, {pauses} pauses, \
             {lease_steps} steps with a lease"
        );
    }
}
