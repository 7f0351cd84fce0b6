//! Fault injection through the file layer: failed writes and fsyncs latch, unsynced bytes are
//! lost at a crash, torn writes and torn tails are cut back to the last whole record, and
//! damage in the middle of the log is refused with the file and offset (or cut with `repair`).
//! Each test crashes the simulated disk and reopens, checking what recovery sees.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyval::storage::file::faulty::FaultyFileSystem;
use keyval::storage::file::format::SEGMENT_HEADER_BYTES;
use keyval::storage::file::{FileOptions, FileStorage, Preallocation};
use keyval::storage::Storage;
use keyval::{Entry, EntryId, EntryPayload, HardState, LogIndex, NodeId, StorageError, Term};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIR: &str = "/node";

fn entry(term: u64, index: u64, bytes: usize) -> Entry {
    Entry {
        id: EntryId::new(Term(term), LogIndex(index)),
        payload: EntryPayload::Command(vec![index as u8; bytes]),
    }
}

fn entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|index| entry(1, index, 20)).collect()
}

fn options() -> FileOptions {
    FileOptions {
        segment_bytes_max: 512,
        cache_bytes_max: 256,
        ..FileOptions::default()
    }
}

fn open(disk: &FaultyFileSystem, options: FileOptions) -> Result<FileStorage, StorageError> {
    FileStorage::open_with_file_system(DIR, options, Arc::new(disk.current()))
}

fn reopen_after_crash(disk: &FaultyFileSystem, storage: FileStorage) -> FileStorage {
    reopen_after_crash_with(disk, storage, options())
}

fn reopen_after_crash_with(
    disk: &FaultyFileSystem,
    storage: FileStorage,
    options: FileOptions,
) -> FileStorage {
    drop(storage);
    disk.crash();
    open(disk, options).expect("reopen after crash")
}

fn log(storage: &mut FileStorage) -> Vec<Entry> {
    storage.recover().expect("recover").entries
}

fn segments(disk: &FaultyFileSystem) -> Vec<PathBuf> {
    disk.paths()
        .into_iter()
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect()
}

fn assert_poisoned<T: std::fmt::Debug>(result: Result<T, StorageError>) {
    assert!(
        matches!(result, Err(StorageError::Poisoned { .. })),
        "{result:?}"
    );
}

#[test]
fn unsynced_entries_and_hard_state_are_lost_at_a_crash() {
    let disk = FaultyFileSystem::new();
    // One segment: no roll seals the unsynced entries early.
    let one_segment = FileOptions {
        segment_bytes_max: 1 << 20,
        ..options()
    };
    let mut storage = open(&disk, one_segment.clone()).unwrap();
    let voted = HardState {
        term: Term(1),
        vote: Some(NodeId(1)),
    };
    storage.append(&entries(1..=10)).unwrap();
    storage.save_hard_state(voted).unwrap();
    storage.sync().unwrap();
    storage.append(&entries(11..=40)).unwrap();
    storage
        .save_hard_state(HardState {
            term: Term(2),
            vote: None,
        })
        .unwrap();
    drop(storage);
    disk.crash();
    let mut storage = open(&disk, one_segment).unwrap();
    let recovered = storage.recover().unwrap();
    assert_eq!(recovered.entries, entries(1..=10));
    assert_eq!(recovered.hard_state, voted);
}

#[test]
fn failed_write_latches_and_loses_only_unsynced_entries() {
    let disk = FaultyFileSystem::new();
    let mut storage = open(&disk, options()).unwrap();
    storage.append(&entries(1..=10)).unwrap();
    storage.sync().unwrap();
    disk.fail_next_write();
    assert_poisoned(storage.append(&entries(11..=12)));
    assert_poisoned(storage.append(&entries(11..=12)));
    assert_poisoned(storage.sync());
    assert_poisoned(storage.entries(LogIndex(1), LogIndex(2)));
    let mut storage = reopen_after_crash(&disk, storage);
    assert_eq!(log(&mut storage), entries(1..=10));
}

#[test]
fn failed_fsync_latches_and_is_never_retried() {
    let disk = FaultyFileSystem::new();
    let mut storage = open(&disk, options()).unwrap();
    storage.append(&entries(1..=10)).unwrap();
    storage.sync().unwrap();
    storage.append(&entries(11..=15)).unwrap();
    disk.fail_next_sync();
    assert_poisoned(storage.sync());
    let (_, syncs_after_failure) = disk.counts();
    // The second sync must not reach the disk: a retried fsync "succeeds" and lies.
    assert_poisoned(storage.sync());
    assert_poisoned(storage.append(&entries(16..=16)));
    assert_poisoned(storage.compact(LogIndex(3)));
    assert_poisoned(storage.save_hard_state(HardState::default()));
    assert_eq!(disk.counts().1, syncs_after_failure);
    let mut storage = reopen_after_crash(&disk, storage);
    assert_eq!(log(&mut storage), entries(1..=10));
}

#[test]
fn failed_fsync_of_the_state_file_keeps_the_old_hard_state() {
    let disk = FaultyFileSystem::new();
    let mut storage = open(&disk, options()).unwrap();
    let first = HardState {
        term: Term(1),
        vote: Some(NodeId(3)),
    };
    storage.save_hard_state(first).unwrap();
    storage.sync().unwrap();
    storage
        .save_hard_state(HardState {
            term: Term(2),
            vote: Some(NodeId(2)),
        })
        .unwrap();
    disk.fail_next_sync();
    assert_poisoned(storage.sync());
    let mut storage = reopen_after_crash(&disk, storage);
    assert_eq!(storage.recover().unwrap().hard_state, first);
}

/// A power cut in the middle of a write, at every kind of byte: the log after recovery is the
/// synced prefix plus whole records that reached the disk, and it accepts new appends.
/// Tears a write at a random byte, 200 times; returns how many recoveries cut a torn tail.
fn torn_writes_at_random_bytes(preallocate: Preallocation) -> usize {
    let options = FileOptions {
        preallocate,
        ..options()
    };
    let mut random = StdRng::seed_from_u64(0x5eed);
    let mut torn_tails = 0;
    for round in 0..200 {
        let disk = FaultyFileSystem::new();
        let mut storage = open(&disk, options.clone()).unwrap();
        let synced = random.random_range(1..=40u64);
        storage.append(&entries(1..=synced)).unwrap();
        storage.sync().unwrap();
        let batch = random.random_range(1..=8u64);
        let batch_entries = entries(synced + 1..=synced + batch);
        disk.tear_next_write(random.random_range(0..=batch as usize * 30));
        let outcome = storage.append(&batch_entries).and_then(|()| storage.sync());
        let mut storage = reopen_after_crash_with(&disk, storage, options.clone());
        let recovered = log(&mut storage);
        torn_tails += usize::from(storage.recovery_report().torn_tail.is_some());
        let whole = entries(1..=synced + batch);
        assert!(
            recovered.len() as u64 >= synced && whole.starts_with(&recovered),
            "round {round}: {} entries recovered of {synced} synced; write outcome {outcome:?}",
            recovered.len()
        );
        let next = recovered.len() as u64 + 1;
        storage.append(&entries(next..=next + 2)).unwrap();
        storage.sync().unwrap();
        let mut storage = reopen_after_crash_with(&disk, storage, options.clone());
        assert_eq!(log(&mut storage), entries(1..=next + 2), "round {round}");
        assert_eq!(storage.recovery_report().torn_tail, None);
    }
    torn_tails
}

#[test]
fn torn_write_at_a_random_byte_recovers_a_prefix() {
    let torn_tails = torn_writes_at_random_bytes(Preallocation::Off);
    // Most tears land inside a record; the test must have exercised the truncation.
    assert!(
        torn_tails > 100,
        "only {torn_tails} torn tails in 200 rounds"
    );
}

#[test]
fn torn_write_into_preallocated_segments_recovers_a_prefix() {
    // A tear in a record followed by the segment's zeros is a torn tail too; a tear in the
    // zeros of a roll's preparation leaves the log as it was.
    let torn_tails = torn_writes_at_random_bytes(Preallocation::Inline);
    assert!(
        torn_tails > 50,
        "only {torn_tails} torn tails in 200 rounds"
    );
}

#[test]
fn preallocated_segments_are_written_in_place_and_recover() {
    let disk = FaultyFileSystem::new();
    let options = FileOptions {
        preallocate: Preallocation::Inline,
        ..options()
    };
    let mut storage = open(&disk, options.clone()).unwrap();
    storage.append(&entries(1..=40)).unwrap();
    storage.sync().unwrap();
    let written = segments(&disk);
    assert!(written.len() >= 3, "{written:?}");
    for path in &written {
        // Every segment has its whole space; the records sit at its start.
        assert_eq!(disk.file_bytes(path).map(|bytes| bytes.len()), Some(512));
    }
    // Entries written into the space but not synced are lost at a crash; the zeros after the
    // synced records are the end of the log, not a torn tail.
    storage.append(&entries(41..=42)).unwrap();
    let mut storage = reopen_after_crash_with(&disk, storage, options.clone());
    assert_eq!(log(&mut storage), entries(1..=40));
    assert_eq!(storage.recovery_report().torn_tail, None);
    assert_eq!(storage.recovery_report().repaired, None);
    // Appends go on where the records end, over the zeros, across more rolls.
    storage.append(&entries(41..=70)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let mut storage = open(&disk, options).unwrap();
    assert_eq!(log(&mut storage), entries(1..=70));
    assert!(disk
        .paths()
        .iter()
        .all(|path| !path.ends_with(keyval::storage::file::PREPARED_FILE_NAME)));
}

/// Writes 1..=60 in several 512-byte segments and returns the disk and the segment paths.
fn disk_with_segments() -> (FaultyFileSystem, Vec<PathBuf>) {
    let disk = FaultyFileSystem::new();
    let mut storage = open(&disk, options()).unwrap();
    storage.append(&entries(1..=60)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let paths = segments(&disk);
    assert!(paths.len() >= 4, "{paths:?}");
    (disk, paths)
}

/// The byte offset of each record in a segment, walking the length prefixes.
fn record_offsets(disk: &FaultyFileSystem, path: &Path) -> Vec<u64> {
    let bytes = disk.file_bytes(path).unwrap();
    let mut offsets = Vec::new();
    let mut position = SEGMENT_HEADER_BYTES;
    while position < bytes.len() {
        offsets.push(position as u64);
        let mut length = [0u8; 4];
        length.copy_from_slice(&bytes[position..position + 4]);
        position += 8 + u32::from_le_bytes(length) as usize;
    }
    offsets
}

#[test]
fn flipped_bit_in_the_middle_is_refused_with_file_and_offset() {
    // A segment in the middle, and the middle of the last segment (records follow the damage,
    // so it cannot be a torn tail).
    for pick in [1usize, usize::MAX] {
        let (disk, paths) = disk_with_segments();
        let damaged = paths[pick.min(paths.len() - 1)].clone();
        let offsets = record_offsets(&disk, &damaged);
        assert!(offsets.len() >= 3);
        let record = offsets[1];
        assert!(disk.flip_bit(&damaged, record + 10, 3));
        match open(&disk, options()) {
            Err(StorageError::Corrupt { file, offset, .. }) => {
                assert_eq!((file, offset), (damaged.clone(), record));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // The refusal changed nothing: it is refused again.
        assert!(open(&disk, options()).is_err());
    }
}

#[test]
fn repair_option_truncates_at_mid_log_damage() {
    let (disk, paths) = disk_with_segments();
    let damaged = paths[1].clone();
    let offsets = record_offsets(&disk, &damaged);
    assert!(disk.flip_bit(&damaged, offsets[1] + 9, 0));
    let repair = FileOptions {
        repair: true,
        ..options()
    };
    let mut storage = open(&disk, repair).unwrap();
    let repaired = storage.recovery_report().repaired.clone().unwrap();
    assert_eq!((repaired.file, repaired.offset), (damaged, offsets[1]));
    // Everything before the damaged record survives; everything after is gone.
    let first_of_damaged = record_offsets(&disk, &paths[0]).len() as u64 + 1;
    assert_eq!(log(&mut storage), entries(1..=first_of_damaged));
    assert_eq!(segments(&disk), paths[..2].to_vec());
    // The repaired log is clean and extendable.
    storage
        .append(&entries(first_of_damaged + 1..=first_of_damaged + 5))
        .unwrap();
    storage.sync().unwrap();
    let mut storage = reopen_after_crash(&disk, storage);
    assert_eq!(log(&mut storage), entries(1..=first_of_damaged + 5));
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    {
        let mut storage = FileStorage::open(dir.path(), options.clone()).unwrap();
        storage.append(&entries(1..=60)).unwrap();
        storage.sync().unwrap();
    }
    let mut wal: Vec<PathBuf> = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|item| item.unwrap().path())
        .collect();
    wal.sort();
    let last = wal.last().unwrap().clone();
    let length = std::fs::metadata(&last).unwrap().len();
    // Cut inside the last record, then add garbage that fails its checksum.
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(length - 5).unwrap();
    drop(file);
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0xAB; 3]);
    std::fs::write(&last, &bytes).unwrap();
    let mut storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    let torn = storage.recovery_report().torn_tail.clone().unwrap();
    assert_eq!(torn.file, last);
    assert_eq!(log(&mut storage), entries(1..=59));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), torn.offset);
    drop(storage);
    let storage = FileStorage::open(dir.path(), options).unwrap();
    assert_eq!(storage.recovery_report().torn_tail, None);
}

#[test]
fn damage_at_the_end_of_an_earlier_segment_is_not_a_torn_tail() {
    let (disk, paths) = disk_with_segments();
    let offsets = record_offsets(&disk, &paths[0]);
    let last_record = *offsets.last().unwrap();
    assert!(disk.flip_bit(&paths[0], last_record + 9, 1));
    match open(&disk, options()) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (paths[0].clone(), last_record))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn an_instance_from_before_a_crash_cannot_write() {
    let disk = FaultyFileSystem::new();
    let mut old = open(&disk, options()).unwrap();
    old.append(&entries(1..=5)).unwrap();
    old.sync().unwrap();
    disk.crash();
    let mut new = open(&disk, options()).unwrap();
    // The crashed node's storage is still around for a moment: its writes go nowhere.
    assert_poisoned(old.append(&entries(6..=9)));
    assert_poisoned(old.sync());
    drop(old); // and dropping it does not release the successor's lock
    assert!(matches!(
        open(&disk, options()),
        Err(StorageError::Locked { .. })
    ));
    assert_eq!(log(&mut new), entries(1..=5));
    new.append(&entries(6..=7)).unwrap();
    let mut new = reopen_after_crash(&disk, new);
    assert_eq!(log(&mut new), entries(1..=5));
}

/// Crashes at every step of `operation` in turn (the power goes out instead of the n-th
/// file mutation), reopens, and hands the reopened storage to `check`; with segments that
/// grow as they are written, then again with preallocated ones (zero-filled at each roll).
/// Returns the number of steps the operation took with growing segments.
fn crash_at_every_step(
    prepare: impl Fn(&mut FileStorage),
    operation: impl Fn(&mut FileStorage) -> Result<(), StorageError>,
    check: impl Fn(u64, &mut FileStorage),
) -> u64 {
    let mut steps = Vec::new();
    for preallocate in [Preallocation::Off, Preallocation::Inline] {
        let options = FileOptions {
            preallocate,
            ..options()
        };
        for step in 0.. {
            let disk = FaultyFileSystem::new();
            let mut storage = open(&disk, options.clone()).unwrap();
            prepare(&mut storage);
            disk.cut_power_after(step);
            let finished = operation(&mut storage).is_ok();
            drop(storage);
            disk.crash();
            let mut storage = open(&disk, options.clone()).unwrap_or_else(|error| {
                panic!("{preallocate:?}: reopen after a crash at step {step}: {error}")
            });
            check(step, &mut storage);
            if finished {
                steps.push(step);
                break;
            }
        }
    }
    steps[0]
}

#[test]
fn a_crash_at_any_step_of_a_conflict_leaves_a_recoverable_prefix() {
    let old = entries(1..=60);
    let replacement: Vec<Entry> = (20..=25).map(|index| entry(2, index, 20)).collect();
    let mut new = old[..19].to_vec();
    new.extend(replacement.iter().cloned());
    let steps = crash_at_every_step(
        |storage| {
            storage.append(&old).unwrap();
            storage.sync().unwrap();
        },
        |storage| {
            storage.append(&replacement)?;
            storage.sync()
        },
        |step, storage| {
            let recovered = log(storage);
            assert!(
                recovered.len() >= 19
                    && (old.starts_with(&recovered) || new.starts_with(&recovered)),
                "crash at step {step}: {} entries, not a prefix of the old or the new log",
                recovered.len()
            );
        },
    );
    assert!(steps >= 4, "the conflict took only {steps} file mutations");
}

#[test]
fn a_crash_at_any_step_of_compaction_snapshot_and_hard_state_is_recoverable() {
    let hard_state = HardState {
        term: Term(4),
        vote: Some(NodeId(1)),
    };
    let meta = keyval::types::SnapshotMeta {
        last: EntryId::new(Term(1), LogIndex(30)),
        membership: keyval::Membership::new([NodeId(1)]),
    };
    crash_at_every_step(
        |storage| {
            storage.append(&entries(1..=60)).unwrap();
            storage.sync().unwrap();
        },
        |storage| {
            storage.save_snapshot(&meta, b"snapshot")?;
            storage.compact(LogIndex(30))?;
            storage.save_hard_state(hard_state)?;
            storage.sync()
        },
        |step, storage| {
            let recovered = storage.recover().unwrap();
            let first = storage.first_index().0;
            assert!(
                first == 1 || first == 31,
                "step {step}: log starts at {first}"
            );
            assert_eq!(recovered.entries, entries(first..=60), "step {step}");
            if first == 31 {
                assert_eq!(recovered.snapshot.as_ref(), Some(&meta), "step {step}");
            }
            if let Some(snapshot) = recovered.snapshot {
                let (loaded, data) = storage.load_snapshot().unwrap().unwrap();
                assert_eq!((loaded, data), (snapshot, b"snapshot".to_vec()));
            }
            assert!(
                recovered.hard_state == hard_state || recovered.hard_state == HardState::default(),
                "step {step}"
            );
        },
    );
}

#[test]
fn a_crash_at_any_step_of_appends_across_rolls_keeps_the_synced_prefix() {
    let all = entries(1..=80);
    crash_at_every_step(
        |storage| {
            storage.append(&all[..20]).unwrap();
            storage.sync().unwrap();
        },
        |storage| {
            storage.append(&all[20..50])?;
            storage.append(&all[50..])?;
            storage.sync()
        },
        |step, storage| {
            let recovered = log(storage);
            assert!(
                recovered.len() >= 20 && all.starts_with(&recovered),
                "crash at step {step}: {} entries",
                recovered.len()
            );
        },
    );
}

#[test]
fn a_crash_at_any_step_of_recovery_itself_is_recoverable() {
    for step in 0.. {
        let disk = FaultyFileSystem::new();
        let mut storage = open(&disk, options()).unwrap();
        storage.append(&entries(1..=30)).unwrap();
        storage.sync().unwrap();
        disk.tear_next_write(13);
        assert!(storage.append(&entries(31..=33)).is_err());
        drop(storage);
        disk.crash();
        // Recovery cuts the torn tail; the power goes out somewhere in it.
        disk.cut_power_after(step);
        let finished = open(&disk, options()).is_ok();
        disk.crash();
        let mut storage = open(&disk, options()).unwrap();
        assert_eq!(log(&mut storage), entries(1..=30), "crash at step {step}");
        if finished {
            assert!(step > 2, "recovery took only {step} file mutations");
            break;
        }
    }
}

/// Installing a snapshot from the leader saves it, then resets the log behind it: two durable
/// steps. A crash at any file operation of the pair must leave a node that can append after
/// the snapshot and keeps what it appended across the next restart (PITFALLS #18).
#[test]
fn a_crash_at_any_step_of_installing_a_snapshot_never_wedges_or_forgets_entries() {
    // (stored log, snapshot's last entry): a log that ends before the snapshot, and a log that
    // holds the snapshot's index with an older term.
    let cases = [
        (
            (1..=5).map(|index| entry(1, index, 20)).collect::<Vec<_>>(),
            (2, 10),
        ),
        ((1..=12).map(|index| entry(1, index, 20)).collect(), (2, 10)),
    ];
    for (old_log, (snapshot_term, snapshot_index)) in cases {
        let meta = keyval::types::SnapshotMeta {
            last: EntryId::new(Term(snapshot_term), LogIndex(snapshot_index)),
            membership: keyval::Membership::new([NodeId(1)]),
        };
        let after: Vec<Entry> = (snapshot_index + 1..=snapshot_index + 3)
            .map(|index| entry(snapshot_term, index, 20))
            .collect();
        let steps = crash_at_every_step(
            |storage| {
                storage.append(&old_log).unwrap();
                storage.sync().unwrap();
            },
            |storage| keyval::storage::install_snapshot(storage, &meta, b"snapshot", false),
            |step, storage| {
                let recovered = keyval::storage::recover_consistent(storage)
                    .unwrap_or_else(|error| panic!("step {step}: {error}"));
                if recovered.snapshot.is_none() {
                    // The crash came before the snapshot was durable: the old log is intact
                    // and the leader will send the snapshot again.
                    assert_eq!(recovered.entries, old_log, "step {step}");
                    return;
                }
                assert_eq!(recovered.snapshot.as_ref(), Some(&meta), "step {step}");
                // The node acknowledges entries after the snapshot...
                storage.append(&after).unwrap_or_else(|error| {
                    panic!("step {step}: append after the snapshot: {error}")
                });
                storage.sync().unwrap();
            },
        );
        assert!(steps >= 3, "installing took only {steps} file mutations");
        // ...and still holds them after the next ordinary restart, whichever step crashed.
        for step in 0..=steps {
            let disk = FaultyFileSystem::new();
            let mut storage = open(&disk, options()).unwrap();
            storage.append(&old_log).unwrap();
            storage.sync().unwrap();
            disk.cut_power_after(step);
            let finished =
                keyval::storage::install_snapshot(&mut storage, &meta, b"snapshot", false).is_ok();
            let mut storage = reopen_after_crash(&disk, storage);
            let recovered = keyval::storage::recover_consistent(&mut storage).unwrap();
            if recovered.snapshot.is_none() {
                assert!(!finished);
                continue;
            }
            storage.append(&after).unwrap();
            storage.sync().unwrap();
            let mut storage = reopen_after_crash(&disk, storage);
            let recovered = keyval::storage::recover_consistent(&mut storage).unwrap();
            assert_eq!(recovered.snapshot.as_ref(), Some(&meta), "step {step}");
            assert_eq!(
                recovered.entries, after,
                "step {step}: entries acknowledged after the snapshot were lost"
            );
        }
    }
}

/// A local snapshot is written beside the storage by another thread (staged: temporary file,
/// fsync) and then renamed into place by the log writer. A crash at any file operation of
/// stage + commit + compaction leaves either the old state or the new snapshot, never a
/// snapshot that is not whole, and no temporary file survives the next open.
#[test]
fn a_crash_at_any_step_of_a_staged_snapshot_save_is_recoverable() {
    let steps = crash_at_every_step_of_a_staged_save(b"staged snapshot");
    assert!(
        steps >= 3,
        "staging and committing took only {steps} file mutations"
    );
    // A staged snapshot that is never committed leaves nothing behind after the next open.
    let meta = staged_meta();
    let disk = FaultyFileSystem::new();
    let storage = open(&disk, options()).unwrap();
    storage.snapshot_stager().stage(&meta, b"orphan").unwrap();
    let mut storage = reopen_after_crash(&disk, storage);
    assert!(storage.recover().unwrap().snapshot.is_none());
    assert!(
        disk.paths()
            .iter()
            .all(|path| !path.to_string_lossy().ends_with(".tmp")),
        "{:?}",
        disk.paths()
    );
}

/// The same for a snapshot the stager writes and syncs in several pieces (the header, then
/// the data in 1 MiB chunks straight from the serialized state): a crash between any two
/// pieces never leaves a snapshot that loads with part of its data.
#[test]
fn a_crash_at_any_step_of_a_staged_save_in_several_pieces_is_recoverable() {
    let data: Vec<u8> = (0..2 * 1024 * 1024 + 17).map(|k| (k % 251) as u8).collect();
    let steps = crash_at_every_step_of_a_staged_save(&data);
    assert!(
        steps >= 7,
        "three chunks written and synced took only {steps} file mutations"
    );
}

fn staged_meta() -> keyval::types::SnapshotMeta {
    keyval::types::SnapshotMeta {
        last: EntryId::new(Term(1), LogIndex(30)),
        membership: keyval::Membership::new([NodeId(1)]),
    }
}

/// Stages `data` as a snapshot, commits it and compacts, with a crash at every file
/// operation in turn; after each, recovery finds the old state or the whole new snapshot.
/// Returns the number of file operations.
fn crash_at_every_step_of_a_staged_save(data: &[u8]) -> u64 {
    let meta = staged_meta();
    crash_at_every_step(
        |storage| {
            storage.append(&entries(1..=60)).unwrap();
            storage.sync().unwrap();
        },
        |storage| {
            let staged = storage.snapshot_stager().stage(&meta, data)?;
            storage.commit_snapshot(staged)?;
            storage.compact(LogIndex(30))
        },
        |step, storage| {
            let recovered = keyval::storage::recover_consistent(storage).unwrap();
            match &recovered.snapshot {
                None => assert_eq!(recovered.entries, entries(1..=60), "step {step}"),
                Some(snapshot) => {
                    assert_eq!(snapshot, &meta, "step {step}");
                    let (_, loaded) = storage.load_snapshot().unwrap().unwrap();
                    assert!(loaded == data, "step {step}: the snapshot's data differs");
                    let first = recovered.entries.first().map(|entry| entry.index().0);
                    assert!(
                        matches!(first, Some(1) | Some(31)),
                        "step {step}: {first:?}"
                    );
                }
            }
        },
    )
}

/// `force_new_cluster` writes three durable steps (term, configuration entry, bootstrap
/// record). A crash at any file operation leaves either the old cluster (its whole log, its
/// configuration) or the one-member one with the whole log — never a lost entry — and running
/// the operation again (the operator repeats the command) always ends in the one-member
/// cluster with exactly one configuration entry appended.
#[test]
fn a_crash_at_any_step_of_forcing_a_new_cluster_keeps_the_log_and_a_rerun_finishes_it() {
    use keyval::node::{force_new_cluster, ForceOptions};
    use keyval::{MemberAddress, Membership};

    let three = Membership::with_addresses(
        (1..=3)
            .map(|id| {
                let address = MemberAddress {
                    peer: format!("127.0.0.1:{}", 5400 + id),
                    client: format!("127.0.0.1:{}", 5450 + id),
                };
                (NodeId(id), address)
            })
            .collect(),
    );
    let old_log = entries(1..=30);
    let options = ForceOptions {
        id: NodeId(1),
        peer_address: None,
        client_address: None,
        forced_before: false,
    };
    // The configuration in force as a restart settles it: the log's newest, else the bootstrap.
    let in_force = |storage: &mut FileStorage| -> (Vec<Entry>, Membership) {
        let recovered = keyval::storage::recover_consistent(storage).unwrap();
        let from_log = recovered
            .entries
            .iter()
            .rev()
            .find_map(|entry| match &entry.payload {
                EntryPayload::Membership(membership) => Some(membership.clone()),
                _ => None,
            });
        let membership = from_log
            .or(storage.load_bootstrap().unwrap())
            .expect("a configuration");
        (recovered.entries, membership)
    };
    let steps = crash_at_every_step(
        |storage| {
            storage.save_bootstrap(&three).unwrap();
            storage.append(&old_log).unwrap();
            storage
                .save_hard_state(HardState {
                    term: Term(2),
                    vote: Some(NodeId(2)),
                })
                .unwrap();
            storage.sync().unwrap();
        },
        |storage| {
            force_new_cluster(storage, &options)
                .map(|_| ())
                .map_err(|error| match error {
                    keyval::node::ForceError::Storage(error) => error,
                    other => panic!("{other}"),
                })
        },
        |step, storage| {
            let (log, membership) = in_force(storage);
            assert_eq!(log[..30], old_log[..], "step {step}: an old entry was lost");
            if membership.same_members(&three) {
                assert_eq!(log.len(), 30, "step {step}");
            } else {
                assert_eq!(membership.voters, [NodeId(1)].into(), "step {step}");
                assert_eq!(log.len(), 31, "step {step}");
            }
            // The operator runs it again: it finishes, appending at most one entry in all.
            force_new_cluster(storage, &options)
                .unwrap_or_else(|error| panic!("step {step}: rerun: {error}"));
            let (log, membership) = in_force(storage);
            assert_eq!(log.len(), 31, "step {step}");
            assert_eq!(log[..30], old_log[..], "step {step}");
            assert_eq!(membership.voters, [NodeId(1)].into(), "step {step}");
            assert_eq!(
                storage.load_bootstrap().unwrap().as_ref(),
                Some(&membership),
                "step {step}: the bootstrap record names the new cluster"
            );
            let hard_state = storage.recover().unwrap().hard_state;
            assert_eq!(hard_state.term, log[30].term(), "step {step}");
            assert_eq!(hard_state.vote, Some(NodeId(1)), "step {step}");
        },
    );
    assert!(steps >= 4, "forcing took only {steps} file mutations");
}
