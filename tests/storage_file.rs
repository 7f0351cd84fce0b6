//! File storage on the real file system: round trips, many segments, truncation and compaction
//! at and across segment boundaries, snapshots, the directory lock and version refusal. Every
//! test reopens the directory and compares against what was written.

use std::path::Path;

use keyval::storage::file::format::{self, encode_segment_header};
use keyval::storage::file::{FileOptions, FileStorage, FsyncPolicy, Preallocation};
use keyval::storage::Storage;
use keyval::types::SnapshotMeta;
use keyval::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, NodeId, StorageError, Term,
};

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        id: EntryId::new(Term(term), LogIndex(index)),
        payload: EntryPayload::Command(format!("command {index} of term {term}").into_bytes()),
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|index| entry(term, index)).collect()
}

/// Small segments so a few hundred entries span many files; a tiny cache so reads hit the disk.
fn small_options() -> FileOptions {
    FileOptions {
        segment_bytes_max: 1024,
        cache_bytes_max: 512,
        ..FileOptions::default()
    }
}

fn open(dir: &Path) -> FileStorage {
    FileStorage::open(dir, small_options()).expect("open")
}

fn all_entries(storage: &mut FileStorage) -> Vec<Entry> {
    storage.recover().expect("recover").entries
}

#[test]
fn round_trip_of_entries_and_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    let hard_state = HardState {
        term: Term(3),
        vote: Some(NodeId(2)),
    };
    {
        let mut storage = open(dir.path());
        assert_eq!(storage.recover().unwrap(), Default::default());
        storage.append(&entries(1, 1..=5)).unwrap();
        storage.save_hard_state(hard_state).unwrap();
        storage.sync().unwrap();
        assert_eq!(
            storage.entries(LogIndex(2), LogIndex(4)).unwrap(),
            entries(1, 2..=3)
        );
    }
    let mut storage = open(dir.path());
    let recovered = storage.recover().unwrap();
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(recovered.entries, entries(1, 1..=5));
    assert_eq!(storage.recovery_report().torn_tail, None);
}

#[test]
fn thousands_of_entries_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let expected = entries(1, 1..=3000);
    {
        let mut storage = open(dir.path());
        for batch in expected.chunks(37) {
            storage.append(batch).unwrap();
            storage.sync().unwrap();
        }
        assert!(storage.segment_count() > 50, "{}", storage.segment_count());
        assert_eq!(all_entries(&mut storage), expected);
    }
    let mut storage = open(dir.path());
    assert!(storage.segment_count() > 50);
    assert_eq!(all_entries(&mut storage), expected);
    // Ranges straddling segment boundaries, served from the files.
    for from in (1..2900).step_by(97) {
        let got = storage
            .entries(LogIndex(from), LogIndex(from + 100))
            .unwrap();
        assert_eq!(got, expected[(from - 1) as usize..(from + 99) as usize]);
    }
}

/// The first index of every segment, from the file names.
fn segment_starts(dir: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .filter_map(|item| {
            let name = item.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    starts.sort();
    starts
}

#[test]
fn conflicting_append_truncates_at_and_across_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path());
    storage.append(&entries(1, 1..=200)).unwrap();
    storage.sync().unwrap();
    let starts = segment_starts(dir.path());
    assert!(starts.len() > 5);
    // 1. exactly at a segment's first index, several segments before the end;
    // 2. in the middle of a segment; 3. one past a boundary.
    let cuts = [starts[starts.len() - 4], starts[2] + 3, starts[1] + 1];
    let mut model = entries(1, 1..=200);
    for (round, cut) in cuts.into_iter().enumerate() {
        let term = 2 + round as u64;
        let replacement = entries(term, cut..=cut + 10);
        storage.append(&replacement).unwrap();
        storage.sync().unwrap();
        model.truncate((cut - 1) as usize);
        model.extend(replacement);
        assert_eq!(all_entries(&mut storage), model);
        drop(storage);
        storage = open(dir.path());
        assert_eq!(
            all_entries(&mut storage),
            model,
            "after reopen, cut at {cut}"
        );
        // The segments after the cut were deleted, not left behind.
        let starts = segment_starts(dir.path());
        assert!(starts.iter().all(|&start| start <= cut + 10), "{starts:?}");
    }
}

#[test]
fn compaction_at_and_across_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path());
    storage.append(&entries(1, 1..=300)).unwrap();
    storage.sync().unwrap();
    let starts = segment_starts(dir.path());
    // The last index of segment 2 (a boundary), then the middle of a later segment.
    for through in [starts[2] - 1, starts[5] + 2] {
        storage.compact(LogIndex(through)).unwrap();
        let remaining = segment_starts(dir.path());
        assert!(
            remaining[0] <= through + 1,
            "entry {} was lost",
            through + 1
        );
        assert!(remaining.len() > 1 && remaining[1] > through + 1);
        assert_eq!(all_entries(&mut storage), entries(1, through + 1..=300));
        drop(storage);
        storage = open(dir.path());
        assert_eq!(storage.first_index(), LogIndex(through + 1));
        assert_eq!(all_entries(&mut storage), entries(1, through + 1..=300));
        assert!(matches!(
            storage.entries(LogIndex(through), LogIndex(through + 1)),
            Err(StorageError::OutOfRange { .. })
        ));
    }
}

#[test]
fn compaction_past_the_end_empties_the_log_and_appends_resume_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(dir.path());
    storage.append(&entries(1, 1..=50)).unwrap();
    storage.compact(LogIndex(80)).unwrap();
    assert!(segment_starts(dir.path()).is_empty());
    drop(storage);
    let mut storage = open(dir.path());
    assert_eq!(all_entries(&mut storage), vec![]);
    assert_eq!(storage.last_index(), LogIndex(80));
    assert!(storage.append(&[entry(2, 80)]).is_err());
    assert!(storage.append(&[entry(2, 82)]).is_err());
    storage.append(&entries(2, 81..=90)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let mut storage = open(dir.path());
    assert_eq!(all_entries(&mut storage), entries(2, 81..=90));
}

#[test]
fn snapshot_replaces_the_previous_one_and_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let meta = |term, index| SnapshotMeta {
        last: EntryId::new(Term(term), LogIndex(index)),
        membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
    };
    {
        let mut storage = open(dir.path());
        assert_eq!(storage.load_snapshot().unwrap(), None);
        storage.save_snapshot(&meta(1, 10), b"first").unwrap();
        storage.save_snapshot(&meta(2, 20), b"second").unwrap();
        let files = std::fs::read_dir(dir.path().join("snapshot"))
            .unwrap()
            .count();
        assert_eq!(files, 1);
    }
    let mut storage = open(dir.path());
    assert_eq!(storage.recover().unwrap().snapshot, Some(meta(2, 20)));
    assert_eq!(
        storage.load_snapshot().unwrap(),
        Some((meta(2, 20), b"second".to_vec()))
    );
    drop(storage);
    // A flipped bit in the data is caught by the checksum.
    let path = dir.path().join("snapshot").join("2-20.snap");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let error = FileStorage::open(dir.path(), small_options()).unwrap_err();
    assert!(
        matches!(&error, StorageError::Corrupt { file, .. } if *file == path),
        "{error}"
    );
}

#[test]
fn directory_lock_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let error = FileStorage::open(dir.path(), small_options()).unwrap_err();
    assert!(matches!(error, StorageError::Locked { .. }), "{error}");
    drop(first);
    open(dir.path());
}

#[test]
fn unknown_format_versions_are_refused() {
    for file in ["state", "segment"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = open(dir.path());
            storage.append(&entries(1, 1..=3)).unwrap();
            storage.save_hard_state(HardState::default()).unwrap();
            storage.sync().unwrap();
        }
        let path = match file {
            "state" => dir.path().join("state"),
            _ => dir.path().join("wal").join(format!("{:020}.seg", 1)),
        };
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let error = FileStorage::open(dir.path(), small_options()).unwrap_err();
        assert!(
            matches!(&error, StorageError::UnknownVersion { found: 7, supported: format::FORMAT_VERSION, file: found } if *found == path),
            "{file}: {error}"
        );
    }
}

#[test]
fn fsync_never_still_round_trips_without_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileOptions {
        fsync: FsyncPolicy::Never,
        ..small_options()
    };
    {
        let mut storage = FileStorage::open(dir.path(), options.clone()).unwrap();
        storage.append(&entries(1, 1..=100)).unwrap();
        storage.sync().unwrap();
    }
    let mut storage = FileStorage::open(dir.path(), options).unwrap();
    assert_eq!(all_entries(&mut storage), entries(1, 1..=100));
}

#[test]
fn a_segment_holding_only_its_header_is_removed_and_recreated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = open(dir.path());
        storage.append(&entries(1, 1..=20)).unwrap();
        storage.sync().unwrap();
    }
    // A crash right after a roll leaves the next segment with its header only.
    let orphan = dir.path().join("wal").join(format!("{:020}.seg", 21));
    std::fs::write(&orphan, encode_segment_header(LogIndex(21))).unwrap();
    let mut storage = open(dir.path());
    assert_eq!(
        storage.recovery_report().removed_files,
        vec![orphan.clone()]
    );
    assert_eq!(all_entries(&mut storage), entries(1, 1..=20));
    storage.append(&entries(1, 21..=400)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let mut storage = open(dir.path());
    assert_eq!(all_entries(&mut storage), entries(1, 1..=400));
}

/// Open verifies and decodes every entry and keeps them for the first `recover` (one pass over
/// the log at a restart); a later `recover`, or one after the log changed, reads the segments
/// back. Both must hand back the same log, compaction point included.
#[test]
fn the_first_recover_after_open_and_a_read_back_agree() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = open(dir.path());
        storage.append(&entries(1, 1..=300)).unwrap();
        storage.compact(LogIndex(57)).unwrap();
        storage.sync().unwrap();
    }
    let mut storage = open(dir.path());
    assert!(storage.segment_count() > 5);
    let expected = entries(1, 58..=300);
    assert_eq!(all_entries(&mut storage), expected, "kept by open");
    assert_eq!(all_entries(&mut storage), expected, "read back");

    let mut storage_changed = {
        drop(storage);
        open(dir.path())
    };
    storage_changed.append(&entries(2, 250..=260)).unwrap();
    let mut expected_changed = entries(1, 58..=249);
    expected_changed.extend(entries(2, 250..=260));
    assert_eq!(all_entries(&mut storage_changed), expected_changed);
    drop(storage_changed);
    let mut storage = open(dir.path());
    storage.compact(LogIndex(100)).unwrap();
    assert_eq!(all_entries(&mut storage), expected_changed[101 - 58..]);
}

/// With `remove_in_background`, compaction and snapshot saves return before the obsolete
/// files are unlinked (the log writer must not wait for a 64 MiB unlink), and the files still
/// go; what the process leaves behind is removed at the next open.
#[test]
fn obsolete_files_are_removed_in_the_background_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileOptions {
        remove_in_background: true,
        ..small_options()
    };
    let mut storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    storage.append(&entries(1, 1..=300)).unwrap();
    storage.sync().unwrap();
    let starts = segment_starts(dir.path());
    assert!(starts.len() > 3, "{starts:?}");
    let through = starts[3] - 1;
    storage.compact(LogIndex(through)).unwrap();
    let meta = |index| SnapshotMeta {
        last: EntryId::new(Term(1), LogIndex(index)),
        membership: Membership::new([NodeId(1)]),
    };
    storage.save_snapshot(&meta(10), b"first").unwrap();
    storage.save_snapshot(&meta(20), b"second").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let segments_gone = segment_starts(dir.path())[0] > through;
        let snapshots = std::fs::read_dir(dir.path().join("snapshot"))
            .unwrap()
            .count();
        if segments_gone && snapshots == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "obsolete files were never removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(all_entries(&mut storage), entries(1, through + 1..=300));
    drop(storage);
    let mut storage = FileStorage::open(dir.path(), options).unwrap();
    assert_eq!(all_entries(&mut storage), entries(1, through + 1..=300));
}

/// With `Preallocation::Background`, the next segment is zero-filled ahead of time and a
/// roll writes its records into that space; the zeros after the records are the end of the
/// log at the next open, and writing goes on over them.
#[test]
fn segments_are_preallocated_in_the_background_and_recover() {
    const SEGMENT: u64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let options = FileOptions {
        segment_bytes_max: SEGMENT,
        preallocate: Preallocation::Background,
        ..FileOptions::default()
    };
    // Records that end in a non-zero byte, so that a segment that grew with its records
    // cannot look like one written into zeroed space.
    let entry = |index: u64| Entry {
        id: EntryId::new(Term(1), LogIndex(index)),
        payload: EntryPayload::Command(vec![0xab; 200]),
    };
    // A segment written into prepared space: the whole segment's length, zeros at the end.
    let preallocated = |dir: &Path| -> usize {
        segment_starts(dir)
            .into_iter()
            .filter(|&first| {
                let path = dir
                    .join("wal")
                    .join(format::segment_file_name(LogIndex(first)));
                let bytes = std::fs::read(path).unwrap();
                bytes.len() as u64 == SEGMENT && bytes.last() == Some(&0)
            })
            .count()
    };
    let mut storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    let mut next = 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // Rolls that find the next segment still being prepared create it the old way; the
    // thread catches up between batches.
    while preallocated(dir.path()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no roll used a prepared segment by entry {next}"
        );
        let batch: Vec<Entry> = (next..next + 20).map(entry).collect();
        storage.append(&batch).unwrap();
        storage.sync().unwrap();
        next += 20;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let written: Vec<Entry> = (1..next).map(entry).collect();
    assert_eq!(all_entries(&mut storage), written);
    drop(storage);
    let mut storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    assert_eq!(storage.recovery_report().torn_tail, None);
    assert_eq!(storage.recovery_report().repaired, None);
    assert_eq!(all_entries(&mut storage), written);
    let more: Vec<Entry> = (next..next + 300).map(entry).collect();
    storage.append(&more).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let mut storage = FileStorage::open(dir.path(), options).unwrap();
    let everything: Vec<Entry> = (1..next + 300).map(entry).collect();
    assert_eq!(all_entries(&mut storage), everything);
}
