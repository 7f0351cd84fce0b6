//! keyval's own file storage: a segmented append-only log, the hard-state file and the snapshot
//! file, with crash recovery. Byte layouts and recovery rules are in `docs/storage.md`.
//!
//! ```text
//! <dir>/LOCK                              held (flock) while a FileStorage is open
//! <dir>/state                             hard state + compaction point, replaced atomically
//! <dir>/node-id                           the node's id as decimal text, replaced atomically
//! <dir>/wal/<first index, 20 digits>.seg  log segments, rolled at segment_bytes_max
//! <dir>/snapshot/<term>-<index>.snap      the latest snapshot
//! ```
//!
//! # Durability
//! Appends are written at once but made durable only by [`Storage::sync`] (group commit: one
//! fsync per touched segment per batch, plus the `wal` directory when a segment was created).
//! Three rare events fsync outside `sync`, to keep recovery unambiguous: a segment is fsynced
//! when it fills up and the log rolls to the next one (so only the newest segment can ever
//! have a torn tail), a log conflict's truncation is fsynced before new entries overwrite the
//! old bytes (so stale records can never reappear behind new ones), and `compact` and
//! `save_snapshot` are durable on return.
//!
//! # Failure
//! Any failed write, truncation or fsync **latches**: that call and every later one return
//! [`StorageError::Poisoned`]. The node must stop and restart; recovery then reads what the
//! disk really holds.

mod preallocate;
mod recovery;
mod remover;

pub mod faulty;
pub mod format;
pub mod io;
pub mod segment;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{self, RecordRead};
use crate::error::StorageError;
use crate::limits::RECORD_BYTES_MAX;
use crate::storage::{Recovered, Storage};
use crate::types::{Entry, HardState, LogIndex, Membership, NodeId, SnapshotMeta};

use self::format::{StateRecord, SEGMENT_HEADER_BYTES};
use self::io::{DirectoryLock, FileSystem, RealFileSystem};
use self::segment::Segment;

pub use self::preallocate::{Preallocation, PREPARED_FILE_NAME};

/// The file in the data directory that records which node the directory belongs to.
pub const NODE_ID_FILE_NAME: &str = "node-id";
/// The file in the data directory that records the cluster id (see
/// [`FileStorage::record_cluster_id`]).
pub const CLUSTER_ID_FILE_NAME: &str = "cluster-id";
/// The file in the data directory that records that `keyval --force-new-cluster` made this
/// node a one-member cluster: the index of the configuration entry it appended, in decimal.
pub const FORCED_FILE_NAME: &str = "forced";
/// The file in the data directory that records the configuration the cluster was created
/// with ([`Storage::save_bootstrap`]): one checksummed record.
pub const BOOTSTRAP_FILE_NAME: &str = "bootstrap";

/// The smallest `segment_bytes_max` accepted: a header and a few small records.
pub const SEGMENT_BYTES_MIN: u64 = 256;
/// The default size at which a segment is rolled.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// The default budget of the cache of recent entries.
pub const CACHE_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;

const _: () = assert!(SEGMENT_BYTES_MIN > SEGMENT_HEADER_BYTES as u64);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);

/// When data is forced to the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync on every `sync`, compaction and snapshot. The durability guarantees of Raft
    /// depend on it.
    #[default]
    Always,
    /// Never fsync. **Unsafe**: a power loss loses acknowledged entries and votes. For
    /// benchmarks only.
    Never,
}

/// How a [`FileStorage`] is opened.
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// When to fsync; see [`FsyncPolicy`].
    pub fsync: FsyncPolicy,
    /// A segment is rolled once adding a record would take it past this size (a segment always
    /// takes at least one record, however large).
    pub segment_bytes_max: u64,
    /// Recent entries kept in memory (by [`Entry::size_bytes`]); older ones are read back from
    /// their segment.
    pub cache_bytes_max: u64,
    /// Operator option: at damage in the middle of the log, truncate the log there instead of
    /// refusing to open. **This may discard entries this node acknowledged**, which Raft
    /// assumes never happens; use it only when the other nodes hold the data.
    pub repair: bool,
    /// Remove obsolete files (compacted segments, superseded snapshots) on a thread of the
    /// storage's own instead of in `compact` and snapshot saves: unlinking a 64 MiB segment
    /// took 65–82 ms, which every write waited for at each snapshot. Recovery removes what a
    /// crash leaves behind. Off by default, so that a caller sees the files gone when the call
    /// returns; the `keyval` node turns it on.
    pub remove_in_background: bool,
    /// Write log segments into space already zero-filled and synced (see [`Preallocation`]):
    /// a log fsync then writes data only, instead of also committing the file's new size
    /// through the file system's journal. Off by default; the `keyval` node prepares segments
    /// in the background.
    pub preallocate: Preallocation,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            fsync: FsyncPolicy::Always,
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            cache_bytes_max: CACHE_BYTES_DEFAULT,
            repair: false,
            remove_in_background: false,
            preallocate: Preallocation::Off,
        }
    }
}

/// A cut made to the log at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment that was cut.
    pub file: PathBuf,
    /// Where: everything from this byte offset on was discarded.
    pub offset: u64,
    /// What was found there.
    pub reason: String,
    /// Bytes discarded, in this file and in later segments that were removed.
    pub bytes_discarded: u64,
}

/// What recovery found and did when the storage was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments holding the log after recovery.
    pub segments: usize,
    /// The first and last index of the log after recovery (`last < first` when it is empty).
    pub first_index: LogIndex,
    /// See `first_index`.
    pub last_index: LogIndex,
    /// A torn tail of the last segment that was truncated (an interrupted write: normal after
    /// a crash; only unsynced entries are lost).
    pub torn_tail: Option<Truncation>,
    /// Mid-log damage truncated because [`FileOptions::repair`] was set.
    pub repaired: Option<Truncation>,
    /// Leftover files removed: temporary files, superseded snapshots, compacted segments.
    pub removed_files: Vec<PathBuf>,
}

/// The storage of one node in one data directory; see the module docs.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    wal_dir: PathBuf,
    snapshot_dir: PathBuf,
    options: FileOptions,
    file_system: Arc<dyn FileSystem>,
    /// What the state file holds.
    state: StateRecord,
    /// A hard state saved but not yet synced.
    pending_hard_state: Option<HardState>,
    /// The log, oldest first. Invariant: every segment holds at least one record, segments are
    /// contiguous, and the last one ends after `state.compacted_through`.
    segments: Vec<Segment>,
    /// Segments written since the last sync.
    unsynced_segments: BTreeSet<PathBuf>,
    /// Whether a segment was created since the last sync of the `wal` directory.
    wal_dir_unsynced: bool,
    /// The newest entries. Invariant: contiguous and ending at the last index.
    cache: VecDeque<Entry>,
    /// Sum of `size_bytes` over `cache`.
    cache_bytes: u64,
    /// Every entry of the log as open verified and decoded it, kept for the first `recover`
    /// so that a restart reads and decodes the log once, not twice. Dropped by `recover` and by
    /// anything that changes the log. Invariant: when `Some`, exactly `first_index..=last_index`.
    recovered_entries: Option<Vec<Entry>>,
    /// The latest snapshot's metadata and file.
    snapshot: Option<(SnapshotMeta, PathBuf)>,
    report: RecoveryReport,
    /// Set by the first failed write or sync; see the module docs.
    poisoned: Option<String>,
    /// Removes obsolete files off the caller's thread (real file system only).
    remover: Option<remover::Remover>,
    /// Prepares the next segment ([`Preallocation::Background`]).
    preallocator: Option<preallocate::Preallocator>,
    /// The data directory's lock. Declared last, so dropped last: the helper threads above
    /// stop (their drops join them) before another instance may open the directory.
    _lock: DirectoryLock,
}

impl FileStorage {
    /// Opens (creating if needed) the data directory `dir` on the real file system and
    /// recovers it; see [`RecoveryReport`] for what recovery did.
    pub fn open(dir: impl AsRef<Path>, options: FileOptions) -> Result<FileStorage, StorageError> {
        FileStorage::open_with_file_system(dir, options, Arc::new(RealFileSystem::new()))
    }

    /// Opens `dir` on the given file system (tests pass a
    /// [`FaultyFileSystem`](faulty::FaultyFileSystem)).
    pub fn open_with_file_system(
        dir: impl AsRef<Path>,
        options: FileOptions,
        file_system: Arc<dyn FileSystem>,
    ) -> Result<FileStorage, StorageError> {
        if options.segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(StorageError::Misuse {
                reason: format!(
                    "segment_bytes_max {} is below the minimum {SEGMENT_BYTES_MIN}",
                    options.segment_bytes_max
                ),
            });
        }
        recovery::open(dir.as_ref(), options, file_system)
    }

    /// What recovery found and did at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first index in the log (one past the compaction point).
    pub fn first_index(&self) -> LogIndex {
        self.state.compacted_through.next()
    }

    /// The last index in the log, or the compaction point when the log is empty.
    pub fn last_index(&self) -> LogIndex {
        match self.segments.last() {
            Some(segment) => segment.last_index().max(self.state.compacted_through),
            None => self.state.compacted_through,
        }
    }

    /// The number of segment files holding the log.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether the directory holds no state at all: no term or vote, no snapshot, no entry
    /// (a node that has never run, or a node about to join a cluster).
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.last_index() == LogIndex(0)
            && self.pending_hard_state.unwrap_or(self.state.hard_state) == HardState::default()
    }

    /// The node id recorded in the directory's `node-id` file, if any (see
    /// [`record_node_id`](FileStorage::record_node_id)). A file that does not hold a node id is
    /// reported as corrupt.
    pub fn node_id(&self) -> Result<Option<NodeId>, StorageError> {
        Ok(self
            .read_id_file(NODE_ID_FILE_NAME, "a node id")?
            .map(NodeId))
    }

    /// Records `id` as the identity of the node this directory belongs to, atomically and
    /// durably (temporary file, fsync, rename, directory fsync), so that a later start with
    /// another id can be refused.
    pub fn record_node_id(&mut self, id: NodeId) -> Result<(), StorageError> {
        self.record_id_file(NODE_ID_FILE_NAME, id.0)
    }

    /// The cluster id recorded in the directory's `cluster-id` file, if any.
    pub fn cluster_id(&self) -> Result<Option<u64>, StorageError> {
        self.read_id_file(CLUSTER_ID_FILE_NAME, "a cluster id")
    }

    /// Records the id of the cluster this directory's node belongs to, atomically and durably,
    /// so that a later start with another cluster id can be refused.
    pub fn record_cluster_id(&mut self, id: u64) -> Result<(), StorageError> {
        self.record_id_file(CLUSTER_ID_FILE_NAME, id)
    }

    /// The index of the configuration entry `--force-new-cluster` appended, if this directory
    /// was ever forced into a new cluster (its `forced` file).
    pub fn forced_at(&self) -> Result<Option<LogIndex>, StorageError> {
        Ok(self
            .read_id_file(FORCED_FILE_NAME, "a log index")?
            .map(LogIndex))
    }

    /// Records that this directory was forced into a new cluster at `index`, atomically and
    /// durably, so that the flag left on a command line cannot force it again unnoticed.
    pub fn record_forced_at(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.record_id_file(FORCED_FILE_NAME, index.0)
    }

    /// Reads a file holding one positive decimal number.
    fn read_id_file(&self, name: &str, what: &str) -> Result<Option<u64>, StorageError> {
        let Some((path, bytes)) = self.read_optional_file(name)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| FileStorage::corrupt_file(&path, reason);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| corrupt(format!("the {name} file is not text")))?;
        match text.trim().parse::<u64>() {
            Ok(id) if id > 0 => Ok(Some(id)),
            _ => Err(corrupt(format!(
                "the {name} file holds {:?}, not {what}",
                text.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// The snapshot at `path` (durable) replaces the previous one, which only now may go.
    fn replace_snapshot(&mut self, meta: &SnapshotMeta, path: PathBuf) -> Result<(), StorageError> {
        if let Some((_, old_path)) = self.snapshot.take() {
            if old_path != path {
                self.remove_obsolete(old_path)?;
            }
        }
        self.snapshot = Some((meta.clone(), path));
        Ok(())
    }

    /// Removes a file made obsolete by state already durable, whose name is never used again
    /// (a compacted segment, a superseded snapshot): on the remover thread if there is one.
    /// Returns whether it was handed over (nothing to sync here then).
    fn remove_obsolete(&mut self, path: PathBuf) -> Result<bool, StorageError> {
        let path = match &self.remover {
            Some(remover) => match remover.remove(path) {
                Ok(()) => return Ok(true),
                Err(path) => path,
            },
            None => path,
        };
        self.mutate("remove", &path, |file_system| {
            file_system.remove_file(&path)
        })?;
        Ok(false)
    }

    /// A small file of the data directory does not hold what it should.
    fn corrupt_file(path: &Path, reason: String) -> StorageError {
        StorageError::Corrupt {
            file: path.to_path_buf(),
            offset: 0,
            reason,
        }
    }

    /// The path and bytes of the data directory's file `name`, or `None` if it does not
    /// exist.
    fn read_optional_file(&self, name: &str) -> Result<Option<(PathBuf, Vec<u8>)>, StorageError> {
        let path = self.dir.join(name);
        match self.file_system.read(&path) {
            Ok(bytes) => Ok(Some((path, bytes))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FileStorage::io_error("read", &path, source)),
        }
    }

    fn record_id_file(&mut self, name: &str, id: u64) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let (path, dir) = (self.dir.join(name), self.dir.clone());
        self.write_atomically(&path, "tmp", &dir, format!("{id}\n").as_bytes())
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Latches the storage after a failed write or sync.
    fn poison(&mut self, error: std::io::Error, operation: &str, path: &Path) -> StorageError {
        let reason = format!("{operation} {}: {error}", path.display());
        self.poisoned = Some(reason.clone());
        StorageError::Poisoned { reason }
    }

    fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> StorageError {
        StorageError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }

    fn fsync_enabled(&self) -> bool {
        self.options.fsync == FsyncPolicy::Always
    }

    /// Runs a mutating file operation, latching on failure.
    fn mutate(
        &mut self,
        operation: &str,
        path: &Path,
        action: impl FnOnce(&dyn FileSystem) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        match action(self.file_system.as_ref()) {
            Ok(()) => Ok(()),
            Err(error) => Err(self.poison(error, operation, path)),
        }
    }

    fn sync_file(&mut self, path: &Path) -> Result<(), StorageError> {
        if !self.fsync_enabled() {
            return Ok(());
        }
        self.mutate("fsync", path, |file_system| file_system.sync_file(path))
    }

    fn sync_dir(&mut self, dir: &Path) -> Result<(), StorageError> {
        if !self.fsync_enabled() {
            return Ok(());
        }
        self.mutate("fsync directory", dir, |file_system| {
            file_system.sync_dir(dir)
        })
    }

    /// Replaces the state file atomically and durably: temp file, fsync, rename, fsync dir.
    fn write_state(&mut self, record: StateRecord) -> Result<(), StorageError> {
        let bytes = format::encode_state(&record)?;
        let (path, dir) = (self.dir.join("state"), self.dir.clone());
        self.write_atomically(&path, "tmp", &dir, &bytes)?;
        self.state = record;
        Ok(())
    }

    /// Writes `bytes` as `path` atomically and durably: a temporary file beside it (with
    /// `extension`), fsync, rename over `path`, fsync of the directory `dir`.
    fn write_atomically(
        &mut self,
        path: &Path,
        extension: &str,
        dir: &Path,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let temporary = path.with_extension(extension);
        self.mutate("write", &temporary, |file_system| {
            file_system.write_new(&temporary, bytes)
        })?;
        self.sync_file(&temporary)?;
        self.mutate("rename", &temporary, |file_system| {
            file_system.rename(&temporary, path)
        })?;
        self.sync_dir(dir)
    }

    fn push_cache(&mut self, entry: Entry) {
        self.cache_bytes += entry.size_bytes();
        self.cache.push_back(entry);
        while self.cache_bytes > self.options.cache_bytes_max && self.cache.len() > 1 {
            if let Some(old) = self.cache.pop_front() {
                self.cache_bytes -= old.size_bytes();
            }
        }
    }

    /// Removes every entry from `index` on (a log conflict), durably before anything new is
    /// written over the old bytes.
    fn truncate_suffix(&mut self, index: LogIndex) -> Result<(), StorageError> {
        let Some(slot) = self
            .segments
            .iter()
            .position(|segment| segment.contains(index))
        else {
            return Ok(());
        };
        let keep = if self.segments[slot].first_index < index {
            slot + 1
        } else {
            slot
        };
        // Later segments go first, durably: were the cut durable and a removal not, a crash
        // would leave a gap between the cut segment and a resurrected later one.
        let removed: Vec<Segment> = self.segments.drain(keep..).collect();
        for segment in &removed {
            self.unsynced_segments.remove(&segment.path);
            self.mutate("remove", &segment.path, |file_system| {
                file_system.remove_file(&segment.path)
            })?;
        }
        if !removed.is_empty() {
            let wal_dir = self.wal_dir.clone();
            self.sync_dir(&wal_dir)?;
            self.wal_dir_unsynced = false;
        }
        if keep > slot {
            let segment = &mut self.segments[slot];
            let length = segment.truncate_from(index);
            let path = segment.path.clone();
            self.mutate("truncate", &path, |file_system| {
                file_system.truncate(&path, length)
            })?;
            self.sync_file(&path)?;
            self.unsynced_segments.remove(&path);
        }
        while self
            .cache
            .back()
            .is_some_and(|entry| entry.index() >= index)
        {
            if let Some(old) = self.cache.pop_back() {
                self.cache_bytes -= old.size_bytes();
            }
        }
        Ok(())
    }

    /// Writes `bytes` at the end of the newest segment.
    fn write_to_active(&mut self, bytes: &mut Vec<u8>) -> Result<(), StorageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        // At the segment's end by offset, not by the file's length: a preallocated segment's
        // file is longer than its records (`end` already counts `bytes`).
        let Some((path, offset)) = self
            .segments
            .last()
            .map(|segment| (segment.path.clone(), segment.end - bytes.len() as u64))
        else {
            return Ok(());
        };
        self.mutate("write", &path, |file_system| {
            file_system.write_at(&path, offset, bytes)
        })?;
        bytes.clear();
        self.unsynced_segments.insert(path);
        Ok(())
    }

    /// Makes the prepared, zero-filled file the new segment `path` if there is one (preparing
    /// it now with [`Preallocation::Inline`]): its header is written and synced before the
    /// rename, so a file with a segment's name always has its header. Returns false when
    /// there is none (the caller creates the segment the old way).
    fn take_prepared(&mut self, path: &Path, header: &[u8]) -> Result<bool, StorageError> {
        let prepared = self.wal_dir.join(PREPARED_FILE_NAME);
        let ready = match self.options.preallocate {
            Preallocation::Off => false,
            Preallocation::Inline => {
                let (fsync, len) = (self.fsync_enabled(), self.options.segment_bytes_max);
                self.mutate("preallocate", &prepared, |file_system| {
                    preallocate::zero_fill(
                        file_system,
                        &prepared,
                        len,
                        fsync,
                        std::time::Duration::ZERO,
                        &std::sync::atomic::AtomicBool::new(false),
                    )
                })?;
                true
            }
            Preallocation::Background => self
                .preallocator
                .as_ref()
                .is_some_and(preallocate::Preallocator::take),
        };
        if !ready {
            return Ok(false);
        }
        self.mutate("write", &prepared, |file_system| {
            file_system.write_at(&prepared, 0, header)
        })?;
        self.sync_file(&prepared)?;
        self.mutate("rename", &prepared, |file_system| {
            file_system.rename(&prepared, path)
        })?;
        Ok(true)
    }

    /// Reads the records of `from..to` back from the segments (none of them in the cache).
    fn read_from_segments(
        &self,
        from: LogIndex,
        to: LogIndex,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        let mut next = from;
        for segment in &self.segments {
            if next >= to {
                break;
            }
            if !segment.contains(next) {
                continue;
            }
            let end = to.min(segment.last_index().next());
            let (start_byte, end_byte) = segment.byte_range(next, end);
            let bytes = self
                .file_system
                .read_at(&segment.path, start_byte, (end_byte - start_byte) as usize)
                .map_err(|error| Self::io_error("read", &segment.path, error))?;
            let mut position = 0usize;
            while next < end {
                let offset = start_byte + position as u64;
                let corrupt = |reason: String| StorageError::Corrupt {
                    file: segment.path.clone(),
                    offset,
                    reason,
                };
                let payload = match codec::read_record(&bytes[position..], RECORD_BYTES_MAX) {
                    Ok(RecordRead::Complete { payload, consumed }) => {
                        position += consumed;
                        payload
                    }
                    Ok(RecordRead::Incomplete { .. }) => {
                        return Err(corrupt("record cut short on read-back".into()))
                    }
                    Err(error) => return Err(corrupt(error.to_string())),
                };
                let entry: Entry =
                    codec::decode(payload).map_err(|error| corrupt(error.to_string()))?;
                if entry.index() != next {
                    return Err(corrupt(format!("read {} for {next}", entry.index())));
                }
                out.push(entry);
                next = next.next();
            }
        }
        if next < to {
            return Err(StorageError::Misuse {
                reason: format!("segment index has no record for {next}"),
            });
        }
        Ok(())
    }

    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            for pair in self.segments.windows(2) {
                assert_eq!(pair[0].last_index().next(), pair[1].first_index);
            }
            for segment in &self.segments {
                assert!(!segment.offsets.is_empty(), "{segment:?} holds no record");
            }
            if let (Some(front), Some(back)) = (self.cache.front(), self.cache.back()) {
                assert_eq!(back.index(), self.last_index());
                assert_eq!(
                    back.index().0 - front.index().0 + 1,
                    self.cache.len() as u64
                );
                assert!(front.index() > self.state.compacted_through);
            }
            if let Some(entries) = &self.recovered_entries {
                assert_eq!(
                    entries.first().map(Entry::index),
                    (!self.segments.is_empty()).then(|| self.first_index())
                );
                assert_eq!(
                    entries.len() as u64,
                    self.last_index().next().0 - self.first_index().0
                );
            }
        }
    }
}

impl Storage for FileStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        self.check_poisoned()?;
        let entries = match self.recovered_entries.take() {
            Some(entries) => entries,
            None => self.entries(self.first_index(), self.last_index().next())?,
        };
        Ok(Recovered {
            hard_state: self.pending_hard_state.unwrap_or(self.state.hard_state),
            snapshot: self.snapshot.as_ref().map(|(meta, _)| meta.clone()),
            entries,
        })
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.recovered_entries = None;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let first_index = first.index();
        let last_index = self.last_index();
        if first_index <= self.state.compacted_through || first_index > last_index.next() {
            return Err(StorageError::Misuse {
                reason: format!(
                    "append at {first_index} to a log holding {}..={last_index}",
                    self.first_index(),
                ),
            });
        }
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index().0 != first_index.0 + offset as u64 {
                return Err(StorageError::Misuse {
                    reason: format!("appended entries are not contiguous at {}", entry.index()),
                });
            }
        }
        // Encode everything before touching the disk, so an unencodable entry changes nothing.
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut record = Vec::new();
            codec::write_value_record(entry, &mut record).map_err(|error| {
                StorageError::Misuse {
                    reason: format!("cannot encode entry {}: {error}", entry.index()),
                }
            })?;
            if (record.len() - codec::RECORD_HEADER_BYTES) as u64 > RECORD_BYTES_MAX {
                return Err(StorageError::Misuse {
                    reason: format!("entry {} exceeds the record limit", entry.index()),
                });
            }
            records.push(record);
        }
        if first_index <= last_index {
            self.truncate_suffix(first_index)?;
        }
        let mut pending = Vec::new();
        for (entry, record) in entries.iter().zip(records) {
            let record_bytes = record.len() as u64;
            let roll = match self.segments.last() {
                None => true,
                Some(active) => active.end + record_bytes > self.options.segment_bytes_max,
            };
            if roll {
                self.write_to_active(&mut pending)?;
                // Seal the full segment so that only the newest can ever have a torn tail.
                if let Some(path) = self.segments.last().map(|segment| segment.path.clone()) {
                    self.sync_file(&path)?;
                    self.unsynced_segments.remove(&path);
                }
                let path = self.wal_dir.join(format::segment_file_name(entry.index()));
                let header = format::encode_segment_header(entry.index());
                if !self.take_prepared(&path, &header)? {
                    // Created (or emptied) with its header, so no stale bytes can precede it.
                    self.mutate("create", &path, |file_system| {
                        file_system.write_new(&path, &header)
                    })?;
                }
                self.segments
                    .push(Segment::new(path.clone(), entry.index()));
                self.unsynced_segments.insert(path);
                self.wal_dir_unsynced = true;
            }
            pending.extend_from_slice(&record);
            if let Some(active) = self.segments.last_mut() {
                active.push_record(record_bytes);
            }
            self.push_cache(entry.clone());
        }
        self.write_to_active(&mut pending)?;
        // The next segment is prepared once this one is a quarter full: in time for its roll
        // at any rate this machine writes (64 MiB take 1–2 s to zero), and never for a node
        // whose log grows slowly or that lives briefly (a test's).
        if let (Some(preallocator), Some(active)) = (&self.preallocator, self.segments.last()) {
            if active.end >= self.options.segment_bytes_max / 4 {
                preallocator.request();
            }
        }
        self.check_invariants();
        Ok(())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.pending_hard_state = Some(hard_state);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.check_poisoned()?;
        for path in std::mem::take(&mut self.unsynced_segments) {
            self.sync_file(&path)?;
        }
        if self.wal_dir_unsynced {
            let wal_dir = self.wal_dir.clone();
            self.sync_dir(&wal_dir)?;
            self.wal_dir_unsynced = false;
        }
        if let Some(hard_state) = self.pending_hard_state.take() {
            let record = StateRecord {
                hard_state,
                ..self.state
            };
            self.write_state(record)?;
        }
        Ok(())
    }

    fn entries(&mut self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.check_poisoned()?;
        let first = self.first_index();
        let last = self.last_index();
        if from < first || to > last.next() || from > to {
            return Err(StorageError::OutOfRange {
                from,
                to,
                first,
                last,
            });
        }
        let mut out = Vec::with_capacity((to.0 - from.0) as usize);
        let cache_first = self.cache.front().map_or(to, Entry::index);
        if from < cache_first {
            self.read_from_segments(from, to.min(cache_first), &mut out)?;
        }
        let skip = from.0.saturating_sub(cache_first.0) as usize;
        let take = (to.0 - from.0) as usize - out.len();
        out.extend(self.cache.iter().skip(skip).take(take).cloned());
        debug_assert_eq!(out.len() as u64, to.0 - from.0);
        Ok(out)
    }

    fn compact(&mut self, through: LogIndex) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.recovered_entries = None;
        self.sync()?;
        if through <= self.state.compacted_through {
            return Ok(());
        }
        let last_index = self.last_index();
        self.write_state(StateRecord {
            compacted_through: through,
            ..self.state
        })?;
        let removable = if through >= last_index {
            self.segments.len()
        } else {
            self.segments
                .iter()
                .take_while(|segment| segment.last_index() <= through)
                .count()
        };
        let removed: Vec<Segment> = self.segments.drain(..removable).collect();
        let mut removed_here = false;
        for segment in removed {
            self.unsynced_segments.remove(&segment.path);
            removed_here |= !self.remove_obsolete(segment.path)?;
        }
        if removed_here {
            let wal_dir = self.wal_dir.clone();
            self.sync_dir(&wal_dir)?;
        }
        while self
            .cache
            .front()
            .is_some_and(|entry| entry.index() <= through)
        {
            if let Some(old) = self.cache.pop_front() {
                self.cache_bytes -= old.size_bytes();
            }
        }
        self.check_invariants();
        Ok(())
    }

    fn reset_log(&mut self, after: LogIndex) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.recovered_entries = None;
        self.sync()?;
        // Everything after `after` goes (durably), then everything up to it.
        self.truncate_suffix(after.next())?;
        self.sync()?;
        self.compact(after)
    }

    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let bytes = format::encode_snapshot(meta, data)?;
        let path = self
            .snapshot_dir
            .join(format::snapshot_file_name(meta.last));
        let snapshot_dir = self.snapshot_dir.clone();
        self.write_atomically(&path, "snap.tmp", &snapshot_dir, &bytes)?;
        self.replace_snapshot(meta, path)
    }

    fn snapshot_stager(&self) -> Box<dyn crate::storage::SnapshotStager> {
        Box::new(FileStager {
            file_system: Arc::clone(&self.file_system),
            snapshot_dir: self.snapshot_dir.clone(),
            fsync: self.fsync_enabled(),
        })
    }

    fn commit_snapshot(
        &mut self,
        staged: crate::storage::StagedSnapshot,
    ) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let temporary = match staged.place {
            crate::storage::StagedPlace::File(temporary) => temporary,
            crate::storage::StagedPlace::Memory(data) => {
                return self.save_snapshot(&staged.meta, &data);
            }
        };
        let path = self
            .snapshot_dir
            .join(format::snapshot_file_name(staged.meta.last));
        self.mutate("rename", &temporary, |file_system| {
            file_system.rename(&temporary, &path)
        })?;
        let snapshot_dir = self.snapshot_dir.clone();
        self.sync_dir(&snapshot_dir)?;
        self.replace_snapshot(&staged.meta, path)
    }

    fn discard_staged(
        &mut self,
        staged: crate::storage::StagedSnapshot,
    ) -> Result<(), StorageError> {
        match staged.place {
            crate::storage::StagedPlace::File(temporary) => {
                self.mutate("remove", &temporary, |file_system| {
                    file_system.remove_file(&temporary)
                })
            }
            crate::storage::StagedPlace::Memory(_) => Ok(()),
        }
    }

    fn load_bootstrap(&mut self) -> Result<Option<Membership>, StorageError> {
        self.check_poisoned()?;
        let Some((path, bytes)) = self.read_optional_file(BOOTSTRAP_FILE_NAME)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| FileStorage::corrupt_file(&path, reason);
        match codec::read_record(&bytes, RECORD_BYTES_MAX) {
            Ok(RecordRead::Complete { payload, consumed }) if consumed == bytes.len() => {
                codec::decode(payload)
                    .map(Some)
                    .map_err(|error| corrupt(format!("the bootstrap configuration: {error}")))
            }
            Ok(_) => Err(corrupt(
                "the bootstrap file is truncated or has trailing bytes".into(),
            )),
            Err(error) => Err(corrupt(format!("the bootstrap file: {error}"))),
        }
    }

    fn save_bootstrap(&mut self, membership: &Membership) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let mut bytes = Vec::new();
        codec::write_value_record(membership, &mut bytes).map_err(|error| {
            StorageError::Misuse {
                reason: format!("cannot encode the bootstrap configuration: {error}"),
            }
        })?;
        let (path, dir) = (self.dir.join(BOOTSTRAP_FILE_NAME), self.dir.clone());
        self.write_atomically(&path, "tmp", &dir, &bytes)
    }

    fn load_snapshot(&mut self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        self.check_poisoned()?;
        let Some((meta, path)) = &self.snapshot else {
            return Ok(None);
        };
        let bytes = self
            .file_system
            .read(path)
            .map_err(|error| Self::io_error("read", path, error))?;
        let (loaded, data) = format::decode_snapshot(path, &bytes)?;
        if &loaded != meta {
            return Err(StorageError::Corrupt {
                file: path.clone(),
                offset: 0,
                reason: format!("snapshot covers {}, expected {}", loaded.last, meta.last),
            });
        }
        Ok(Some((loaded, data)))
    }
}

/// Writes snapshots into the snapshot directory's temporary files on the file system the
/// storage uses, from another thread ([`Storage::snapshot_stager`]).
/// A staged snapshot is written and synced this many bytes at a time. The log's fsyncs share
/// the device with these: a log fsync that arrives while a piece is being written waits for
/// it. Measured (3 nodes, 100k keys, 64 clients putting, 5 ms latency trace against each
/// member's snapshot phases): with 4 MiB pieces, 23–24 % of the intervals while a member
/// wrote its 45–59 MB snapshot had a request over 6 ms and a third of the usual
/// completions; with 1 MiB pieces 0.3 % and the usual rate (p99 of the run 5.2–5.7 ms →
/// 3.4–3.5). 256 KiB was no better and syncs four times as often.
const STAGE_SYNC_BYTES: usize = 1024 * 1024;

struct FileStager {
    file_system: Arc<dyn FileSystem>,
    snapshot_dir: PathBuf,
    fsync: bool,
}

impl crate::storage::SnapshotStager for FileStager {
    fn stage(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<crate::storage::StagedSnapshot, StorageError> {
        let head = format::encode_snapshot_head(meta, data)?;
        // Its own temporary name: a snapshot received from the leader is saved as
        // `.snap.tmp` by the log writer meanwhile. Any `.tmp` is removed at open.
        let temporary = self
            .snapshot_dir
            .join(format::snapshot_file_name(meta.last))
            .with_extension("staged.tmp");
        // Written and synced a MiB at a time: on ext4 (data=ordered) a journal commit —
        // the log writer's next fsync — must first write out the data of files whose blocks
        // it allocated, so one 30 MB write synced at the end held the log's fsync (every
        // client's write) for 100–200 ms. Small synced pieces bound what it can wait for.
        // The header goes first and the data after it straight from the serialized state
        // (no second copy of a snapshot that may be hundreds of MB).
        let sync = || {
            if !self.fsync {
                return Ok(());
            }
            self.file_system
                .sync_file(&temporary)
                .map_err(|source| FileStorage::io_error("fsync", &temporary, source))
        };
        self.file_system
            .write_new(&temporary, &head)
            .map_err(|source| FileStorage::io_error("write", &temporary, source))?;
        for chunk in data.chunks(STAGE_SYNC_BYTES) {
            self.file_system
                .append(&temporary, chunk)
                .map_err(|source| FileStorage::io_error("write", &temporary, source))?;
            sync()?;
        }
        if data.is_empty() {
            sync()?;
        }
        Ok(crate::storage::StagedSnapshot {
            meta: meta.clone(),
            place: crate::storage::StagedPlace::File(temporary),
        })
    }
}
