//! The key-value store's memory at scale and what a snapshot costs the applier, for issue
//! #12's targets: resident memory per key against the raw bytes of keys and values (target:
//! at most 2.5×), the time the applier is stopped to freeze a snapshot (O(1)), the time
//! the snapshot thread then spends serializing it, and what an overwrite of an existing key
//! costs the applier (what a put benchmark applies).
//!
//! Run: `cargo bench --bench store_memory` (`KEYVAL_BENCH_KEYS`, default 1,000,000 keys of 16
//! bytes; `KEYVAL_BENCH_VALUE_BYTES`, default 100; `KEYVAL_BENCH_ORDER=random` to load them in
//! a random order; `KEYVAL_BENCH_HISTORY_REVISIONS`, default 50,000, the watch history's
//! bound, 0 for none). Prints one line per figure.

mod support;

use support::env_or;

use std::time::Instant;

use keyval::kv::{Command, KvStore};
use keyval::{EntryId, LogIndex, StateMachine, Term};

/// Resident memory of this process in bytes (Linux `/proc/self/statm`).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let keys = env_or("KEYVAL_BENCH_KEYS", 1_000_000);
    let value_bytes = env_or("KEYVAL_BENCH_VALUE_BYTES", 100) as usize;
    let key_bytes = 16;
    // `KEYVAL_BENCH_ORDER=random` loads the keys in a random order instead of ascending: a
    // B-tree loaded in order splits full leaves in half and never fills them again, so the
    // ascending load is the larger figure.
    let random_order = std::env::var("KEYVAL_BENCH_ORDER").is_ok_and(|order| order == "random");
    let mut order: Vec<u64> = (0..keys).collect();
    if random_order {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(12));
    }
    // Commands are encoded up front so their buffers are not counted.
    let commands: Vec<Vec<u8>> = order
        .into_iter()
        .map(|k| {
            Command::put(format!("{k:016}").into_bytes(), vec![b'v'; value_bytes])
                .encode()
                .expect("valid")
        })
        .collect();
    let before = rss_bytes();
    // `KEYVAL_BENCH_HISTORY_REVISIONS` sets the watch history's bound (default 50,000; 0 keeps
    // none), to see what keeping it costs each write.
    let mut limits = keyval::kv::HistoryLimits::default();
    limits.revisions = env_or("KEYVAL_BENCH_HISTORY_REVISIONS", limits.revisions);
    let mut store = KvStore::with_history_limits(limits);
    let started = Instant::now();
    for (k, command) in commands.iter().enumerate() {
        store.apply(EntryId::new(Term(1), LogIndex(k as u64 + 1)), command);
    }
    let apply_seconds = started.elapsed().as_secs_f64();
    drop(commands);
    let after = rss_bytes();
    let raw = keys * (key_bytes + value_bytes as u64);
    let grown = after.saturating_sub(before);
    println!(
        "store_memory: {keys} keys of {key_bytes} + {value_bytes} bytes applied in {} order in \
         {apply_seconds:.2} s; RSS grew {:.1} MiB = {:.0} bytes per key = {:.2}x the raw {:.1} MiB",
        if random_order { "random" } else { "ascending" },
        grown as f64 / 1048576.0,
        grown as f64 / keys as f64,
        grown as f64 / raw as f64,
        raw as f64 / 1048576.0
    );
    let started = Instant::now();
    let writer = store.snapshot_writer();
    let freeze = started.elapsed();
    // Writes after the freeze copy only the paths they touch.
    let started = Instant::now();
    let writes = 10_000u64;
    for k in 0..writes {
        let key = format!("{:016}", (k * 7919) % keys).into_bytes();
        let command = Command::put(key, vec![b'w'; value_bytes])
            .encode()
            .expect("valid");
        store.apply(EntryId::new(Term(1), LogIndex(keys + k + 1)), &command);
    }
    let per_write_after_freeze = started.elapsed() / writes as u32;
    let started = Instant::now();
    let bytes = writer();
    let serialize = started.elapsed();
    println!(
        "store_memory: snapshot freeze (the applier's pause) {:.1} µs; writes after the freeze \
         {:.2} µs each; serialization off the applier {:.0} ms for {:.1} MiB",
        freeze.as_secs_f64() * 1e6,
        per_write_after_freeze.as_secs_f64() * 1e6,
        serialize.as_secs_f64() * 1e3,
        bytes.len() as f64 / 1048576.0
    );
    drop(bytes);
    // Overwrites of existing keys in random order: what `kvctl bench put` applies.
    let overwrites = 500_000u64;
    let commands: Vec<Vec<u8>> = (0..overwrites)
        .map(|k| {
            let key = format!("{:016}", (k * 104_729 + 13) % keys).into_bytes();
            Command::put(key, vec![b'o'; value_bytes])
                .encode()
                .expect("valid")
        })
        .collect();
    let first = keys + writes + 1;
    let started = Instant::now();
    for (k, command) in commands.iter().enumerate() {
        store.apply(EntryId::new(Term(1), LogIndex(first + k as u64)), command);
    }
    println!(
        "store_memory: {overwrites} overwrites of existing keys in random order, {:.2} µs each",
        started.elapsed().as_secs_f64() * 1e6 / overwrites as f64
    );
}
