//! Snapshot cost for a store of 1 million keys (16-byte keys, 100-byte values):
//! - `take`: serialize the key-value state machine;
//! - `save`: write the snapshot file with fsync (keyval's file storage);
//! - `load_and_restore`: read and verify the file, then restore a fresh state machine (what a
//!   follower does to install it, and a node at restart).
//!
//! Run: `cargo bench --bench snapshot` (`KEYVAL_BENCH_KEYS` changes the key count).

use std::sync::OnceLock;

use criterion::{criterion_group, criterion_main, Criterion};
use keyval::kv::{Command, KvStore};
use keyval::storage::file::{FileOptions, FileStorage};
use keyval::storage::Storage;
use keyval::{EntryId, LogIndex, Membership, NodeId, StateMachine, Term};

fn keys() -> u64 {
    std::env::var("KEYVAL_BENCH_KEYS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000)
}

/// The populated store and its snapshot bytes, built once.
fn populated() -> &'static (KvStore, Vec<u8>) {
    static STORE: OnceLock<(KvStore, Vec<u8>)> = OnceLock::new();
    STORE.get_or_init(|| {
        let mut store = KvStore::new();
        for k in 0..keys() {
            let key = format!("{k:016}").into_bytes();
            let command = Command::put(key, vec![b'v'; 100]).encode().expect("valid");
            store.apply(EntryId::new(Term(1), LogIndex(k + 1)), &command);
        }
        let bytes = store.snapshot();
        eprintln!(
            "snapshot of {} keys: {} bytes ({:.1} MiB)",
            keys(),
            bytes.len(),
            bytes.len() as f64 / (1024.0 * 1024.0)
        );
        (store, bytes)
    })
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_1m_keys");
    group.sample_size(10);
    let (store, bytes) = populated();
    let mut store = store.clone();
    group.bench_function("take", |b| b.iter(|| store.snapshot()));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut storage = FileStorage::open(dir.path(), FileOptions::default()).expect("open");
    let meta = keyval::types::SnapshotMeta {
        last: EntryId::new(Term(1), LogIndex(keys())),
        membership: Membership::new([NodeId(1)]),
    };
    group.bench_function("save", |b| {
        b.iter(|| storage.save_snapshot(&meta, bytes).expect("save"))
    });
    group.bench_function("load_and_restore", |b| {
        b.iter(|| {
            let (_, data) = storage.load_snapshot().expect("load").expect("present");
            let mut fresh = KvStore::new();
            fresh.restore(&data).expect("restore");
            fresh
        })
    });
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
