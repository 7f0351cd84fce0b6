//! Opening a data directory: lock it, read the state file and the newest snapshot, scan every
//! segment, cut a torn tail, and refuse (or, with `repair`, cut at) damage anywhere else.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::StorageError;
use crate::types::{Entry, LogIndex, SnapshotMeta};

use super::format::{self, StateRecord, SEGMENT_HEADER_BYTES};
use super::io::FileSystem;
use super::segment::{scan_segment, Damage, Segment};
use super::{FileOptions, FileStorage, FsyncPolicy, RecoveryReport, Truncation};

/// The name of the lock file in a data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// The largest first index a segment name may carry, so that index arithmetic cannot overflow.
const SEGMENT_FIRST_INDEX_MAX: u64 = u64::MAX / 2;

/// The state of an open in progress.
struct Recovery<'a> {
    file_system: &'a dyn FileSystem,
    options: &'a FileOptions,
    report: RecoveryReport,
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

impl Recovery<'_> {
    fn list(&self, dir: &Path) -> Result<Vec<String>, StorageError> {
        self.file_system
            .list_dir(dir)
            .map_err(|error| io_error("list", dir, error))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, StorageError> {
        self.file_system
            .read(path)
            .map_err(|error| io_error("read", path, error))
    }

    fn remove(&mut self, path: &Path) -> Result<(), StorageError> {
        self.file_system
            .remove_file(path)
            .map_err(|error| io_error("remove", path, error))?;
        self.report.removed_files.push(path.to_path_buf());
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> Result<(), StorageError> {
        if self.options.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        self.file_system
            .sync_file(path)
            .map_err(|error| io_error("fsync", path, error))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StorageError> {
        if self.options.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        self.file_system
            .sync_dir(dir)
            .map_err(|error| io_error("fsync directory", dir, error))
    }

    /// Reads the state file, removing a temporary left by a crash mid-replace.
    fn load_state(&mut self, dir: &Path) -> Result<StateRecord, StorageError> {
        let names = self.list(dir)?;
        if names.iter().any(|name| name == "state.tmp") {
            self.remove(&dir.join("state.tmp"))?;
        }
        if !names.iter().any(|name| name == "state") {
            return Ok(StateRecord::default());
        }
        let path = dir.join("state");
        let bytes = self.read(&path)?;
        format::decode_state(&path, &bytes)
    }

    /// Finds and verifies the newest snapshot; removes temporaries and older snapshots.
    fn load_snapshot(
        &mut self,
        snapshot_dir: &Path,
    ) -> Result<Option<(SnapshotMeta, PathBuf)>, StorageError> {
        let mut found = Vec::new();
        for name in self.list(snapshot_dir)? {
            let path = snapshot_dir.join(&name);
            if name.ends_with(".tmp") {
                self.remove(&path)?;
            } else if let Some(id) = format::parse_snapshot_file_name(&name) {
                found.push((id.index, id.term, path));
            }
        }
        found.sort();
        let Some((index, term, path)) = found.pop() else {
            return Ok(None);
        };
        let bytes = self.read(&path)?;
        let (meta, _) = format::decode_snapshot(&path, &bytes)?;
        if meta.last.index != index || meta.last.term != term {
            return Err(StorageError::Corrupt {
                file: path,
                offset: 0,
                reason: format!("the header says {}, the name disagrees", meta.last),
            });
        }
        // The newest is verified, so older ones (left by a crash before their removal) can go.
        for (_, _, old) in found {
            self.remove(&old)?;
        }
        Ok(Some((meta, path)))
    }

    /// Mid-log damage: refused, or with `repair`, cut.
    fn refuse_or_repair(&self, path: &Path, damage: &Damage) -> Result<(), StorageError> {
        if self.options.repair {
            return Ok(());
        }
        Err(StorageError::Corrupt {
            file: path.to_path_buf(),
            offset: damage.offset,
            reason: damage.reason.clone(),
        })
    }

    /// Scans the segments in `wal_dir` and returns the valid log and all of its entries (the
    /// scan has verified and decoded every one; the caller keeps them for `recover`).
    fn load_segments(
        &mut self,
        wal_dir: &Path,
        compacted_through: LogIndex,
    ) -> Result<(Vec<Segment>, Vec<Entry>), StorageError> {
        let mut named = Vec::new();
        for name in self.list(wal_dir)? {
            if let Some(first) = format::parse_segment_file_name(&name) {
                named.push((first, wal_dir.join(name)));
            } else if name == super::PREPARED_FILE_NAME {
                // Zeros prepared for a roll that had not come (it is prepared again).
                self.remove(&wal_dir.join(name))?;
            }
        }
        named.sort();
        let mut segments: Vec<Segment> = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut stop: Option<(usize, Truncation, bool)> = None;
        let mut dir_changed = false;
        for (slot, (first, path)) in named.iter().enumerate() {
            let is_last = slot + 1 == named.len();
            // Wholly compacted: a crash came between the state file and the removal.
            if !is_last && named[slot + 1].0 <= compacted_through.next() {
                self.remove(path)?;
                dir_changed = true;
                continue;
            }
            let expected = match segments.last() {
                Some(previous) => previous.last_index().next(),
                None => (*first).min(compacted_through.next()),
            };
            let damage = if first.0 == 0 || first.0 > SEGMENT_FIRST_INDEX_MAX {
                Some(Damage {
                    offset: 0,
                    reason: format!("impossible first index {first}"),
                    torn: false,
                })
            } else if *first != expected {
                Some(Damage {
                    offset: 0,
                    reason: format!("log gap: segment starts at {first}, expected {expected}"),
                    torn: false,
                })
            } else {
                None
            };
            let bytes = self.read(path)?;
            let (scan_segment_found, damage) = match damage {
                Some(damage) => (None, Some(damage)),
                None => {
                    let scan = scan_segment(path, &bytes, *first, is_last)?;
                    let damage = scan.damage.clone();
                    (Some(scan), damage)
                }
            };
            if let Some(scan) = scan_segment_found {
                let compacted = scan
                    .entries
                    .partition_point(|entry| entry.index() <= compacted_through);
                if entries.is_empty() {
                    // Most segments are whole: take the scan's vector instead of moving its
                    // entries one by one.
                    entries = scan.entries;
                    entries.drain(..compacted);
                } else {
                    entries.extend(scan.entries.into_iter().skip(compacted));
                }
                if !scan.segment.offsets.is_empty() {
                    segments.push(scan.segment);
                } else if scan.damage.is_none() {
                    // A header and nothing else: a crash right after a roll. Remove it so
                    // that the next roll creates the file afresh.
                    self.remove(path)?;
                    dir_changed = true;
                    continue;
                }
            }
            let Some(damage) = damage else {
                continue;
            };
            if !damage.torn {
                self.refuse_or_repair(path, &damage)?;
            }
            let truncation = Truncation {
                file: path.clone(),
                offset: damage.offset,
                reason: damage.reason.clone(),
                bytes_discarded: (bytes.len() as u64).saturating_sub(damage.offset),
            };
            stop = Some((slot, truncation, damage.torn));
            break;
        }
        if let Some((slot, mut truncation, torn)) = stop {
            // Remove every later segment, durably, then cut the damaged one (or remove it when
            // nothing valid is left): in the other order a crash could leave a gap.
            for (_, later) in &named[slot + 1..] {
                truncation.bytes_discarded += self.read(later)?.len() as u64;
                self.remove(later)?;
            }
            if slot + 1 < named.len() {
                self.sync_dir(wal_dir)?;
            }
            let path = named[slot].1.clone();
            let kept = segments.last().is_some_and(|segment| segment.path == path);
            if kept && truncation.offset >= SEGMENT_HEADER_BYTES as u64 {
                self.file_system
                    .truncate(&path, truncation.offset)
                    .map_err(|error| io_error("truncate", &path, error))?;
                self.sync_file(&path)?;
            } else {
                self.remove(&path)?;
                dir_changed = true;
            }
            let file = truncation.file.display();
            if torn {
                // A write the crash cut short: expected after a crash, never acknowledged.
                tracing::info!(
                    file = %file,
                    offset = truncation.offset,
                    reason = %truncation.reason,
                    bytes_discarded = truncation.bytes_discarded,
                    "storage recovery: torn tail discarded"
                );
            } else {
                tracing::warn!(
                    file = %file,
                    offset = truncation.offset,
                    reason = %truncation.reason,
                    bytes_discarded = truncation.bytes_discarded,
                    "storage recovery: REPAIRED damage"
                );
            }
            if torn {
                self.report.torn_tail = Some(truncation);
            } else {
                self.report.repaired = Some(truncation);
            }
        }
        // The last segment may hold only compacted entries.
        if segments
            .last()
            .is_some_and(|segment| segment.last_index() <= compacted_through)
        {
            for segment in std::mem::take(&mut segments) {
                self.remove(&segment.path)?;
            }
            entries.clear();
            dir_changed = true;
        }
        // What we recovered may be bytes an earlier process wrote but never synced (it exited
        // or was killed; the page cache still has them). The caller will treat the recovered
        // log as durable, so make it so.
        for segment in &segments {
            self.sync_file(&segment.path)?;
        }
        if dir_changed || !segments.is_empty() {
            self.sync_dir(wal_dir)?;
        }
        Ok((segments, entries))
    }
}

/// Opens and recovers the data directory `dir`.
pub fn open(
    dir: &Path,
    options: FileOptions,
    file_system: Arc<dyn FileSystem>,
) -> Result<FileStorage, StorageError> {
    let wal_dir = dir.join("wal");
    let snapshot_dir = dir.join("snapshot");
    for path in [dir, &wal_dir, &snapshot_dir] {
        file_system
            .create_dir_all(path)
            .map_err(|error| io_error("create directory", path, error))?;
    }
    let lock_path = dir.join(LOCK_FILE_NAME);
    let lock = file_system
        .try_lock(&lock_path)
        .map_err(|error| io_error("lock", &lock_path, error))?
        .ok_or_else(|| StorageError::Locked {
            dir: dir.to_path_buf(),
        })?;
    let mut recovery = Recovery {
        file_system: file_system.as_ref(),
        options: &options,
        report: RecoveryReport::default(),
    };
    let state = recovery.load_state(dir)?;
    let snapshot = recovery.load_snapshot(&snapshot_dir)?;
    let (segments, entries) = recovery.load_segments(&wal_dir, state.compacted_through)?;
    let mut report = recovery.report;
    // The cache holds copies of the newest entries within its budget (at least one).
    let mut cache = VecDeque::new();
    let mut cache_bytes = 0u64;
    for entry in entries.iter().rev() {
        if !cache.is_empty() && cache_bytes + entry.size_bytes() > options.cache_bytes_max {
            break;
        }
        cache_bytes += entry.size_bytes();
        cache.push_front(entry.clone());
    }
    let mut storage = FileStorage {
        dir: dir.to_path_buf(),
        wal_dir,
        snapshot_dir,
        options,
        file_system,
        _lock: lock,
        state,
        pending_hard_state: None,
        segments,
        unsynced_segments: BTreeSet::new(),
        wal_dir_unsynced: false,
        cache,
        cache_bytes,
        recovered_entries: Some(entries),
        snapshot,
        report: RecoveryReport::default(),
        poisoned: None,
        remover: None,
        preallocator: None,
    };
    report.segments = storage.segments.len();
    report.first_index = storage.first_index();
    report.last_index = storage.last_index();
    storage.report = report;
    if storage.options.remove_in_background {
        storage.remover = super::remover::Remover::start(Arc::clone(&storage.file_system));
    }
    if storage.options.preallocate == super::Preallocation::Background {
        storage.preallocator = super::preallocate::Preallocator::start(
            Arc::clone(&storage.file_system),
            storage.wal_dir.join(super::PREPARED_FILE_NAME),
            storage.options.segment_bytes_max,
            storage.options.fsync == FsyncPolicy::Always,
        );
    }
    storage.check_invariants();
    Ok(storage)
}
