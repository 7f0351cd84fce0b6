//! A crash-faithful in-memory [`Storage`].
//!
//! A [`MemDisk`] plays the part of the disk: it outlives node instances. [`MemDisk::open`] gives
//! a new [`MemStorage`] instance and makes every earlier instance dead, so that a crashed node's
//! threads, still running for a moment, cannot write to the disk of its successor (late writes
//! of the dead instance are discarded). Appends and hard-state saves reach the disk only at
//! `sync`; a crash loses everything after the last successful sync.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::StorageError;
use crate::storage::{Recovered, Storage};
use crate::types::{Entry, HardState, LogIndex, Membership, SnapshotMeta};

/// The state as it would be on disk.
#[derive(Clone, Debug, Default)]
struct MemState {
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// The index just before `entries[0]` (the snapshot's last index, or 0).
    /// Invariant: `entries[k].index == offset + 1 + k`.
    offset: LogIndex,
    entries: Vec<Entry>,
    /// The recorded bootstrap configuration.
    bootstrap: Option<Membership>,
}

impl MemState {
    fn last_index(&self) -> LogIndex {
        LogIndex(self.offset.0 + self.entries.len() as u64)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let first_index = first.index();
        if first_index <= self.offset || first_index > self.last_index().next() {
            return Err(StorageError::Misuse {
                reason: format!(
                    "append at {first_index} to a log holding {}..={}",
                    self.offset.next(),
                    self.last_index()
                ),
            });
        }
        for (k, entry) in entries.iter().enumerate() {
            if entry.index().0 != first_index.0 + k as u64 {
                return Err(StorageError::Misuse {
                    reason: format!("appended entries are not contiguous at {}", entry.index()),
                });
            }
        }
        self.entries
            .truncate((first_index.0 - self.offset.0 - 1) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn reset(&mut self, after: LogIndex) {
        self.entries.clear();
        self.offset = after;
    }

    fn compact(&mut self, through: LogIndex) {
        if through <= self.offset {
            return;
        }
        let remove = (through.0 - self.offset.0).min(self.entries.len() as u64) as usize;
        self.entries.drain(..remove);
        self.offset = through;
        if self.entries.is_empty() {
            return;
        }
        debug_assert_eq!(self.entries[0].index(), through.next());
    }
}

/// One write not yet made durable.
#[derive(Debug)]
enum PendingWrite {
    Append(Vec<Entry>),
    HardState(HardState),
}

#[derive(Debug, Default)]
struct DiskInner {
    durable: MemState,
    /// The instance allowed to write; older instances are dead.
    generation: u64,
    /// Fault injection: the next sync fails.
    fail_next_sync: bool,
    /// Fault injection: the power goes out instead of the durable operation (sync, compact,
    /// reset, snapshot save) that follows this many more.
    power_cut_after: Option<u64>,
}

/// The "disk" behind one node's in-memory storage. Cheap to clone; clones share the disk.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    inner: Arc<Mutex<DiskInner>>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// A new storage instance over this disk. Every earlier instance is dead from now on: its
    /// syncs fail with [`StorageError::Crashed`] and change nothing.
    pub fn open(&self) -> MemStorage {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        MemStorage {
            disk: self.clone(),
            generation: inner.generation,
            volatile: inner.durable.clone(),
            pending: Vec::new(),
            poisoned: None,
        }
    }

    /// Makes the next sync of the live instance fail (and latch), as a failed fsync would.
    pub fn fail_next_sync(&self) {
        self.inner.lock().fail_next_sync = true;
    }

    /// The power goes out instead of the durable operation (a sync, compaction, log reset or
    /// snapshot save) that follows `operations` more successful ones: the live instance dies
    /// there ([`StorageError::Crashed`]) with only the operations before it durable — a crash
    /// at an exact step. Disarmed by [`restore_power`](MemDisk::restore_power) or by firing.
    pub fn cut_power_after(&self, operations: u64) {
        self.inner.lock().power_cut_after = Some(operations);
    }

    /// Disarms [`cut_power_after`](MemDisk::cut_power_after).
    pub fn restore_power(&self) {
        self.inner.lock().power_cut_after = None;
    }

    /// The durable hard state.
    pub fn durable_hard_state(&self) -> HardState {
        self.inner.lock().durable.hard_state
    }

    /// The durable last log index.
    pub fn durable_last_index(&self) -> LogIndex {
        self.inner.lock().durable.last_index()
    }
}

/// A crash-faithful in-memory storage instance; see the module docs.
#[derive(Debug)]
pub struct MemStorage {
    disk: MemDisk,
    generation: u64,
    /// What this instance sees: the durable state plus its unsynced writes.
    volatile: MemState,
    pending: Vec<PendingWrite>,
    poisoned: Option<String>,
}

impl MemStorage {
    /// A fresh storage on a new, empty disk.
    pub fn new() -> MemStorage {
        MemDisk::new().open()
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs `change` on the durable state if this instance is still the live one.
    fn with_live_disk<T>(
        &mut self,
        change: impl FnOnce(&mut DiskInner) -> T,
    ) -> Result<T, StorageError> {
        let mut inner = self.disk.inner.lock();
        if inner.generation != self.generation {
            return Err(StorageError::Crashed);
        }
        match inner.power_cut_after {
            Some(0) => {
                // The power goes out: this instance is dead and this operation never happened.
                inner.power_cut_after = None;
                inner.generation += 1;
                return Err(StorageError::Crashed);
            }
            Some(remaining) => inner.power_cut_after = Some(remaining - 1),
            None => {}
        }
        Ok(change(&mut inner))
    }
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage::new()
    }
}

impl Storage for MemStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        self.check_poisoned()?;
        Ok(Recovered {
            hard_state: self.volatile.hard_state,
            snapshot: self
                .volatile
                .snapshot
                .as_ref()
                .map(|(meta, _)| meta.clone()),
            entries: self.volatile.entries.clone(),
        })
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.volatile.append(entries)?;
        self.pending.push(PendingWrite::Append(entries.to_vec()));
        Ok(())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.volatile.hard_state = hard_state;
        self.pending.push(PendingWrite::HardState(hard_state));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let pending = std::mem::take(&mut self.pending);
        let outcome = self.with_live_disk(|inner| {
            if std::mem::take(&mut inner.fail_next_sync) {
                return Err("injected sync failure".to_string());
            }
            for write in pending {
                match write {
                    PendingWrite::Append(entries) => inner
                        .durable
                        .append(&entries)
                        .map_err(|error| error.to_string())?,
                    PendingWrite::HardState(hard_state) => inner.durable.hard_state = hard_state,
                }
            }
            Ok(())
        })?;
        outcome.map_err(|reason| {
            self.poisoned = Some(reason.clone());
            StorageError::Poisoned { reason }
        })
    }

    fn entries(&mut self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.check_poisoned()?;
        let first = self.volatile.offset.next();
        let last = self.volatile.last_index();
        if from < first || to > last.next() || from > to {
            return Err(StorageError::OutOfRange {
                from,
                to,
                first,
                last,
            });
        }
        let start = (from.0 - first.0) as usize;
        let end = (to.0 - first.0) as usize;
        Ok(self.volatile.entries[start..end].to_vec())
    }

    fn compact(&mut self, through: LogIndex) -> Result<(), StorageError> {
        self.check_poisoned()?;
        // Unsynced appends may still be pending; make them durable first so the durable log
        // and the volatile view compact the same prefix.
        self.sync()?;
        self.volatile.compact(through);
        self.with_live_disk(|inner| inner.durable.compact(through))
    }

    fn reset_log(&mut self, after: LogIndex) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.sync()?;
        self.volatile.reset(after);
        self.with_live_disk(|inner| inner.durable.reset(after))
    }

    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let snapshot = Some((meta.clone(), data.to_vec()));
        self.volatile.snapshot = snapshot.clone();
        self.with_live_disk(|inner| inner.durable.snapshot = snapshot)
    }

    fn load_snapshot(&mut self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        self.check_poisoned()?;
        Ok(self.volatile.snapshot.clone())
    }

    fn snapshot_stager(&self) -> Box<dyn crate::storage::SnapshotStager> {
        Box::new(MemStager)
    }

    fn commit_snapshot(
        &mut self,
        staged: crate::storage::StagedSnapshot,
    ) -> Result<(), StorageError> {
        match staged.place {
            crate::storage::StagedPlace::Memory(data) => self.save_snapshot(&staged.meta, &data),
            crate::storage::StagedPlace::File(path) => Err(StorageError::Misuse {
                reason: format!("a file staged at {} committed to memory", path.display()),
            }),
        }
    }

    fn discard_staged(
        &mut self,
        _staged: crate::storage::StagedSnapshot,
    ) -> Result<(), StorageError> {
        Ok(())
    }

    fn load_bootstrap(&mut self) -> Result<Option<Membership>, StorageError> {
        self.check_poisoned()?;
        Ok(self.volatile.bootstrap.clone())
    }

    fn save_bootstrap(&mut self, membership: &Membership) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.volatile.bootstrap = Some(membership.clone());
        let bootstrap = self.volatile.bootstrap.clone();
        self.with_live_disk(|inner| inner.durable.bootstrap = bootstrap)
    }
}

/// The in-memory storage's stager: keeps the bytes; the commit saves them.
struct MemStager;

impl crate::storage::SnapshotStager for MemStager {
    fn stage(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<crate::storage::StagedSnapshot, StorageError> {
        Ok(crate::storage::StagedSnapshot {
            meta: meta.clone(),
            place: crate::storage::StagedPlace::Memory(data.to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryId, EntryPayload, NodeId, Term};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            payload: EntryPayload::Command(vec![index as u8]),
        }
    }

    #[test]
    fn unsynced_writes_are_lost_at_a_crash() {
        let disk = MemDisk::new();
        let mut storage = disk.open();
        storage.append(&[entry(1, 1), entry(1, 2)]).unwrap();
        storage.sync().unwrap();
        storage.append(&[entry(1, 3)]).unwrap();
        storage
            .save_hard_state(HardState {
                term: Term(2),
                vote: Some(NodeId(1)),
            })
            .unwrap();
        let mut reopened = disk.open();
        let recovered = reopened.recover().unwrap();
        assert_eq!(recovered.entries, vec![entry(1, 1), entry(1, 2)]);
        assert_eq!(recovered.hard_state, HardState::default());
    }

    #[test]
    fn a_dead_instance_cannot_write() {
        let disk = MemDisk::new();
        let mut old = disk.open();
        let _new = disk.open();
        old.append(&[entry(1, 1)]).unwrap();
        assert!(matches!(old.sync(), Err(StorageError::Crashed)));
        assert_eq!(disk.durable_last_index(), LogIndex(0));
    }

    #[test]
    fn conflicting_append_replaces_the_suffix() {
        let mut storage = MemStorage::new();
        storage
            .append(&[entry(1, 1), entry(1, 2), entry(1, 3)])
            .unwrap();
        storage.append(&[entry(2, 2)]).unwrap();
        storage.sync().unwrap();
        let all = storage.entries(LogIndex(1), LogIndex(3)).unwrap();
        assert_eq!(all, vec![entry(1, 1), entry(2, 2)]);
    }

    #[test]
    fn failed_sync_latches() {
        let disk = MemDisk::new();
        let mut storage = disk.open();
        storage.append(&[entry(1, 1)]).unwrap();
        disk.fail_next_sync();
        assert!(matches!(storage.sync(), Err(StorageError::Poisoned { .. })));
        assert!(matches!(storage.sync(), Err(StorageError::Poisoned { .. })));
        assert!(storage.append(&[entry(1, 2)]).is_err());
    }

    #[test]
    fn gaps_are_refused() {
        let mut storage = MemStorage::new();
        assert!(storage.append(&[entry(1, 2)]).is_err());
    }
}
