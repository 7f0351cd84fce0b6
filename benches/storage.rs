//! File storage benchmarks: append throughput with one sync per batch (batch sizes 1, 16 and
//! 256 of 256-byte entries), sync latency percentiles, and recovery time for a log of a
//! configurable size. Commands and measured numbers are in `docs/storage.md`.
//!
//! Environment:
//! - `KEYVAL_BENCH_DIR`: where data directories are created (default: the system temp dir;
//!   put it on the disk you want to measure — tmpfs makes fsync free).
//! - `KEYVAL_BENCH_RECOVERY_MIB`: size of the recovered log in MiB (default 64; 1024 for the
//!   1 GiB figure).
//! - `KEYVAL_BENCH_SYNC_SAMPLES`: single-entry syncs timed for the percentiles (default 500;
//!   0 skips them).
//! - `KEYVAL_BENCH_PREALLOCATE=1`: build the recovered log in preallocated segments, as the
//!   `keyval` node writes it (each segment zero-filled ahead of its records).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use keyval::storage::file::{FileOptions, FileStorage, FsyncPolicy, Preallocation};
use keyval::storage::Storage;
use keyval::{Entry, EntryId, EntryPayload, LogIndex, Term};

const ENTRY_PAYLOAD_BYTES: usize = 256;
const BATCH_SIZES: [u64; 3] = [1, 16, 256];

fn environment_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("KEYVAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).expect("create the bench directory");
    tempfile::tempdir_in(parent).expect("create a temporary data directory")
}

fn entry(index: u64) -> Entry {
    Entry {
        id: EntryId::new(Term(1), LogIndex(index)),
        payload: EntryPayload::Command(vec![(index % 251) as u8; ENTRY_PAYLOAD_BYTES]),
    }
}

fn append_with_sync_per_batch(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("append_sync_per_batch");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for batch_size in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch_size));
        group.bench_with_input(
            BenchmarkId::from_parameter(batch_size),
            &batch_size,
            |bencher, &batch_size| {
                let dir = bench_dir();
                let mut storage =
                    FileStorage::open(dir.path(), FileOptions::default()).expect("open");
                let mut next = 1u64;
                bencher.iter_batched(
                    || {
                        let batch: Vec<Entry> = (next..next + batch_size).map(entry).collect();
                        next += batch_size;
                        batch
                    },
                    |batch| {
                        storage.append(&batch).expect("append");
                        storage.sync().expect("sync");
                    },
                    criterion::BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

/// Writes a log of about `bytes` bytes (without fsync, then one sync) and returns its dir.
fn build_log(bytes: u64) -> tempfile::TempDir {
    let dir = bench_dir();
    let preallocate = if environment_number("KEYVAL_BENCH_PREALLOCATE", 0) == 1 {
        Preallocation::Inline
    } else {
        Preallocation::Off
    };
    let options = FileOptions {
        fsync: FsyncPolicy::Never,
        preallocate,
        ..FileOptions::default()
    };
    let mut storage = FileStorage::open(dir.path(), options).expect("open");
    let per_entry = (ENTRY_PAYLOAD_BYTES + 16) as u64;
    let count = bytes / per_entry;
    let mut next = 1u64;
    while next <= count {
        let batch: Vec<Entry> = (next..(next + 1024).min(count + 1)).map(entry).collect();
        next += batch.len() as u64;
        storage.append(&batch).expect("append");
    }
    storage.sync().expect("sync");
    dir
}

fn recovery(criterion: &mut Criterion) {
    let mebibytes = environment_number("KEYVAL_BENCH_RECOVERY_MIB", 64);
    let bytes = mebibytes * 1024 * 1024;
    let dir = build_log(bytes);
    let mut group = criterion.benchmark_group("recovery");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    // Open alone scans and verifies every record; `recover` also hands every entry back.
    group.bench_function(
        BenchmarkId::new("open", format!("{mebibytes}MiB")),
        |bencher| {
            bencher.iter(|| FileStorage::open(dir.path(), FileOptions::default()).expect("open"))
        },
    );
    group.bench_function(
        BenchmarkId::new("open_and_recover", format!("{mebibytes}MiB")),
        |bencher| {
            bencher.iter(|| {
                let mut storage =
                    FileStorage::open(dir.path(), FileOptions::default()).expect("open");
                storage.recover().expect("recover").entries.len()
            })
        },
    );
    group.finish();
}

/// Times single-entry append + sync and prints latency percentiles (criterion reports means).
fn sync_latency_percentiles() {
    let samples = environment_number("KEYVAL_BENCH_SYNC_SAMPLES", 500);
    if samples == 0 {
        return;
    }
    let dir = bench_dir();
    let mut storage = FileStorage::open(dir.path(), FileOptions::default()).expect("open");
    let mut latencies = Vec::with_capacity(samples as usize);
    for index in 1..=samples {
        storage.append(&[entry(index)]).expect("append");
        let start = Instant::now();
        storage.sync().expect("sync");
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let percentile = |fraction: f64| {
        let slot = ((latencies.len() as f64 * fraction) as usize).min(latencies.len() - 1);
        latencies[slot]
    };
    println!(
        "sync latency over {samples} syncs of one {ENTRY_PAYLOAD_BYTES}-byte entry: \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0)
    );
}

criterion_group!(benches, append_with_sync_per_batch, recovery);

fn main() {
    sync_latency_percentiles();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
