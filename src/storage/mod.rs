//! Durable state of one node: the log, the hard state (term, vote) and the latest snapshot.
//!
//! [`Storage`] is the contract; [`mem::MemStorage`] is the crash-faithful in-memory twin used by
//! the harness and the simulator (what was not synced is lost at a crash), and the file
//! implementation lives beside it. Storage knows entries, hard state and snapshot metadata —
//! never Raft messages or roles.

pub mod file;
pub mod mem;

use crate::error::StorageError;
use crate::types::{Entry, EntryId, HardState, LogIndex, Membership, SnapshotMeta};

/// Everything durable that a node starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last saved term and vote.
    pub hard_state: HardState,
    /// The latest snapshot's metadata; its data is read with [`Storage::load_snapshot`].
    pub snapshot: Option<SnapshotMeta>,
    /// The log after the snapshot (or from index 1), contiguous.
    pub entries: Vec<Entry>,
}

/// Durable storage for one node.
///
/// # Durability
/// Everything passed to [`append`](Storage::append) and
/// [`save_hard_state`](Storage::save_hard_state) before a successful [`sync`](Storage::sync)
/// survives a crash. Anything not yet synced may be lost (whole or as a prefix of the appended
/// entries, never a hole). [`save_snapshot`](Storage::save_snapshot) and
/// [`compact`](Storage::compact) are durable on return.
///
/// # Failure
/// A failed sync **latches**: that call and every later call return an error, because after a
/// failed fsync the kernel may have dropped the dirty pages and a retry would lie.
pub trait Storage: Send + 'static {
    /// Reads back the durable state. Called once, before any other method.
    fn recover(&mut self) -> Result<Recovered, StorageError>;

    /// Appends contiguous `entries`. If the first entry's index is at or below the last stored
    /// index, the stored suffix from that index on is replaced first (a log conflict).
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Records the term and vote; durable after the next `sync`.
    fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError>;

    /// Makes every earlier append and hard-state save durable. One call per batch.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// Reads the entries with indexes in `from..to`.
    fn entries(&mut self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError>;

    /// Removes every entry with index `<= through`, which a durable snapshot must cover. When
    /// `through` is at or past the last index the log becomes empty and the next append starts
    /// at `through + 1`.
    fn compact(&mut self, through: LogIndex) -> Result<(), StorageError>;

    /// Discards the whole log and continues it after `after`: used when a snapshot received
    /// from the leader does not match the local log (Raft §7). The snapshot must already be
    /// saved. Durable on return; the next append starts at `after + 1`.
    fn reset_log(&mut self, after: LogIndex) -> Result<(), StorageError>;

    /// Durably replaces the snapshot.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError>;

    /// Reads the latest snapshot, verified.
    fn load_snapshot(&mut self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError>;

    /// A handle that writes snapshots durably beside the storage without borrowing it, so the
    /// slow part of saving a large snapshot (writing and syncing its bytes) runs on another
    /// thread while this storage keeps appending; [`commit_snapshot`](Storage::commit_snapshot)
    /// then makes a staged snapshot the snapshot.
    fn snapshot_stager(&self) -> Box<dyn SnapshotStager>;

    /// Makes a staged snapshot the snapshot, durably on return (like
    /// [`save_snapshot`](Storage::save_snapshot), but its bytes are already on disk).
    fn commit_snapshot(&mut self, staged: StagedSnapshot) -> Result<(), StorageError>;

    /// Throws a staged snapshot away (a newer one was saved meanwhile).
    fn discard_staged(&mut self, staged: StagedSnapshot) -> Result<(), StorageError>;

    /// The configuration this node's cluster was created with, as recorded at its first start
    /// ([`save_bootstrap`](Storage::save_bootstrap)); `None` if none was recorded.
    fn load_bootstrap(&mut self) -> Result<Option<Membership>, StorageError>;

    /// Records the configuration a new cluster starts from, durably on return. Recorded once,
    /// at a node's first start: later starts use it instead of whatever they are told, so a
    /// member restarted with other flags cannot form a cluster of its own on its old data.
    fn save_bootstrap(&mut self, membership: &Membership) -> Result<(), StorageError>;
}

/// Reads back the durable state and makes the log agree with the snapshot, durably, before
/// anything is written on top of it. Every node start goes through here.
///
/// Installing a snapshot from the leader is two durable steps: save the snapshot, then reset
/// the log behind it ([`install_snapshot`]). A crash between them leaves the new snapshot beside
/// the old log: a log that ends before the snapshot (the first append after it would be a
/// gap: the node could never make progress again), or one whose entry at the snapshot's index
/// has another term (stale entries that a later restart would find and clear, taking with them
/// whatever was acknowledged on top). Both mean the log is not a continuation of the
/// snapshot, so it is reset after the snapshot's last entry — the step the crash interrupted.
/// A log that holds the snapshot's last entry (same index and term) is kept: that is the
/// compaction margin, or a snapshot taken locally whose compaction was interrupted.
pub fn recover_consistent(storage: &mut dyn Storage) -> Result<Recovered, StorageError> {
    let mut recovered = storage.recover()?;
    let Some(meta) = recovered.snapshot.as_ref() else {
        return Ok(recovered);
    };
    let last = meta.last;
    if recovered
        .entries
        .first()
        .is_some_and(|first| first.index() > last.index.next())
    {
        return Err(StorageError::Misuse {
            reason: format!(
                "the log starts at {} but the snapshot ends at {}: entries in between are lost",
                recovered.entries[0].index(),
                last.index
            ),
        });
    }
    let continues_snapshot = match recovered.entries.last() {
        // An empty log: make sure it continues right after the snapshot.
        None => false,
        Some(tail) if tail.index() < last.index => false,
        Some(_) => recovered
            .entries
            .iter()
            .find(|entry| entry.index() == last.index)
            .is_none_or(|entry| entry.id == last),
    };
    if !continues_snapshot {
        storage.reset_log(last.index)?;
        recovered.entries.clear();
    }
    Ok(recovered)
}

/// Installs a snapshot received from the leader: saves it durably, then either compacts the
/// log behind it (`keep_suffix`: the log holds the snapshot's last entry, so what follows is
/// still valid) or discards the whole log and continues it after the snapshot. A crash between
/// the two steps is repaired by [`recover_consistent`] at the next start.
pub fn install_snapshot(
    storage: &mut dyn Storage,
    meta: &SnapshotMeta,
    data: &[u8],
    keep_suffix: bool,
) -> Result<(), StorageError> {
    let last: EntryId = meta.last;
    storage.save_snapshot(meta, data)?;
    if keep_suffix {
        storage.compact(last.index)
    } else {
        storage.reset_log(last.index)
    }
}

/// Writes a snapshot's bytes durably where they are not yet the snapshot (a temporary file):
/// see [`Storage::snapshot_stager`]. A crash leaves at most a temporary file, removed at the
/// next open.
pub trait SnapshotStager: Send {
    /// Writes and syncs `data` for the snapshot `meta`.
    fn stage(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<StagedSnapshot, StorageError>;
}

/// A snapshot written by a [`SnapshotStager`], for [`Storage::commit_snapshot`].
#[derive(Debug)]
pub struct StagedSnapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// Where its bytes are.
    pub(crate) place: StagedPlace,
}

/// Where a staged snapshot's bytes are.
#[derive(Debug)]
pub(crate) enum StagedPlace {
    /// A synced temporary file (file storage).
    File(std::path::PathBuf),
    /// In memory (the in-memory storage, whose saves are instant anyway).
    Memory(Vec<u8>),
}
