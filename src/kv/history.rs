//! The watch history: every change the store applied, by revision, for a bounded window.
//!
//! Each command that changes keys leaves one [`Revision`]: its log index and every key it
//! put or deleted, in the order it did so, with what each key held before. The history keeps
//! the newest revisions up to [`HistoryLimits`] (a count of revisions and a byte budget); the
//! oldest go first, and [`History::compacted`] says up to which revision the history is gone.
//! A watch that starts at or before it cannot be served without a gap and is refused
//! (`Compacted`), never served partially.
//!
//! The history is part of the store's state: it is recorded by `apply` (so every replica and
//! the simulation record the same), carried in snapshots (format 5 on), and cloned in O(1)
//! with the store (a persistent vector of shared revisions).

use std::sync::Arc;

use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

use super::command::KeyRange;
use super::key::Key;
use super::response::{Metadata, Versioned};
use super::stored::Stored;

/// Default bound on revisions kept for watchers (see [`HistoryLimits`]).
pub const HISTORY_REVISIONS_DEFAULT: usize = 50_000;

/// Default bound on bytes kept for watchers: keys, values and previous values of the
/// changes, each change counted with [`CHANGE_OVERHEAD_BYTES`] more.
pub const HISTORY_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;

/// What one change is counted for beyond its keys and values (its metadata and pointers).
pub const CHANGE_OVERHEAD_BYTES: u64 = 128;

/// How much history the store keeps for watchers. The newest revision is always kept, even
/// when it alone is larger than `bytes`, so a watcher that keeps up never misses a large
/// change; `revisions: 0` keeps no history at all (every watch starts now).
///
/// Like the store's other limits these shape what the store holds, so every node of a
/// cluster should use the same values; a node with a smaller window only refuses old start
/// revisions sooner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most revisions kept.
    pub revisions: usize,
    /// The most bytes kept (keys and values of the changes and of what they replaced).
    pub bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> HistoryLimits {
        HistoryLimits {
            revisions: HISTORY_REVISIONS_DEFAULT,
            bytes: HISTORY_BYTES_DEFAULT,
        }
    }
}

/// Whether a change wrote or removed its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted (by a delete, a range delete, or the revoke of its lease).
    Delete,
}

/// One change as a watcher receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The revision (log index) of the command that made the change: every change of one
    /// command (a batch, a transaction, a lease revoke) has the same revision.
    pub revision: LogIndex,
    /// The key.
    #[serde(with = "super::bytes")]
    pub key: Vec<u8>,
    /// The value written; empty for a delete.
    #[serde(with = "super::bytes")]
    pub value: Vec<u8>,
    /// The key's metadata after a put; `None` after a delete.
    pub metadata: Option<Metadata>,
    /// What the key held before, when the watch asked for it (`prev_kv`) and the key
    /// existed.
    pub previous: Option<Versioned>,
}

/// One key changed by a command, with shared bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(super) key: Key,
    /// What the key holds after the change; `None` if it was deleted.
    pub(super) current: Option<Stored>,
    /// What it held before, if it existed.
    pub(super) previous: Option<Stored>,
}

impl Change {
    /// The key changed.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    fn bytes(&self) -> u64 {
        let value = |stored: &Option<Stored>| stored.as_ref().map_or(0, |s| s.value().len() as u64);
        self.key.len() as u64 + value(&self.current) + value(&self.previous) + CHANGE_OVERHEAD_BYTES
    }

    /// The change as a watcher receives it, with its previous value if `previous`.
    pub(crate) fn event(&self, revision: LogIndex, previous: bool) -> Event {
        let (kind, value, metadata) = match &self.current {
            Some(stored) => (
                EventKind::Put,
                stored.value().to_vec(),
                Some(stored.metadata()),
            ),
            None => (EventKind::Delete, Vec::new(), None),
        };
        Event {
            kind,
            revision,
            key: self.key.to_vec(),
            value,
            metadata,
            previous: self
                .previous
                .as_ref()
                .filter(|_| previous)
                .map(Stored::to_versioned),
        }
    }

    /// Whether it is a put.
    pub(crate) fn is_put(&self) -> bool {
        self.current.is_some()
    }
}

/// Every change one command made, at one revision. Shared (`Arc`) between the store, its
/// frozen copies and the watchers being served.
#[derive(Debug, PartialEq, Eq)]
pub struct Revision {
    revision: LogIndex,
    changes: Vec<Change>,
    bytes: u64,
}

impl Revision {
    pub(crate) fn new(revision: LogIndex, changes: Vec<Change>) -> Revision {
        let bytes = changes.iter().map(Change::bytes).sum();
        Revision {
            revision,
            changes,
            bytes,
        }
    }

    /// The revision (the command's log index).
    pub fn revision(&self) -> LogIndex {
        self.revision
    }

    /// How many keys it changed.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether it changed nothing (never, for a revision in the history).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub(crate) fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The changes to keys of `range`, as events (with previous values if `previous`).
    pub fn events(&self, range: &KeyRange, previous: bool) -> Vec<Event> {
        self.changes
            .iter()
            .filter(|change| range.contains(&change.key))
            .map(|change| change.event(self.revision, previous))
            .collect()
    }
}

/// The watch history. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct History {
    /// Oldest first; revisions strictly ascending, all after `compacted`.
    revisions: Vector<Arc<Revision>>,
    /// Every revision up to this one is gone (0: nothing was ever dropped).
    compacted: LogIndex,
    /// Bytes of `revisions` (the sum of their `bytes`).
    bytes: u64,
    limits: HistoryLimits,
}

impl Default for History {
    fn default() -> History {
        History::new(HistoryLimits::default(), LogIndex(0))
    }
}

/// A watch asked for revisions the history no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// Every revision up to this one is gone: a watch must start after it.
    pub compact_revision: LogIndex,
}

impl History {
    /// An empty history that holds nothing at or before `compacted`.
    pub(crate) fn new(limits: HistoryLimits, compacted: LogIndex) -> History {
        History {
            revisions: Vector::new(),
            compacted,
            bytes: 0,
            limits,
        }
    }

    pub(crate) fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Changes the bounds, dropping what no longer fits.
    pub(crate) fn set_limits(&mut self, limits: HistoryLimits) {
        self.limits = limits;
        self.trim();
    }

    pub(crate) fn compacted(&self) -> LogIndex {
        self.compacted
    }

    pub(crate) fn len(&self) -> usize {
        self.revisions.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records the changes of the command at `revision` (after every recorded one).
    pub(crate) fn record(&mut self, revision: LogIndex, changes: Vec<Change>) {
        debug_assert!(!changes.is_empty());
        debug_assert!(self.newest().is_none_or(|newest| newest < revision));
        debug_assert!(revision > self.compacted);
        if self.limits.revisions == 0 {
            self.compacted = revision;
            return;
        }
        let entry = Revision::new(revision, changes);
        self.bytes += entry.bytes;
        self.revisions.push_back(Arc::new(entry));
        self.trim();
    }

    /// Restores one revision read from a snapshot (checked by the caller to come after every
    /// one restored so far). No trimming: the caller trims once at the end.
    pub(crate) fn restore(&mut self, entry: Revision) {
        self.bytes += entry.bytes;
        self.revisions.push_back(Arc::new(entry));
    }

    /// Drops the oldest revisions until the history is within its bounds, always keeping the
    /// newest one.
    pub(crate) fn trim(&mut self) {
        if self.limits.revisions == 0 {
            if let Some(newest) = self.newest() {
                self.compacted = newest;
            }
            self.revisions = Vector::new();
            self.bytes = 0;
            return;
        }
        while self.revisions.len() > self.limits.revisions
            || (self.bytes > self.limits.bytes && self.revisions.len() > 1)
        {
            let Some(oldest) = self.revisions.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
            self.compacted = oldest.revision;
        }
    }

    /// The newest revision held.
    pub(crate) fn newest(&self) -> Option<LogIndex> {
        self.revisions.back().map(|entry| entry.revision)
    }

    /// Every revision held, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Revision>> {
        self.revisions.iter()
    }

    /// At most `max` revisions from `from` on (oldest first), or [`Compacted`] if some
    /// revision at or after `from` may be gone.
    pub(crate) fn since(
        &self,
        from: LogIndex,
        max: usize,
    ) -> Result<Vec<Arc<Revision>>, Compacted> {
        if from <= self.compacted {
            return Err(Compacted {
                compact_revision: self.compacted,
            });
        }
        // The first position whose revision is at or after `from`.
        let (mut low, mut high) = (0, self.revisions.len());
        while low < high {
            let middle = (low + high) / 2;
            if self.revisions[middle].revision < from {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(self.revisions.iter().skip(low).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, value: &str, index: u64) -> Change {
        Change {
            key: key.as_bytes().into(),
            current: Some(Stored::new(
                value.as_bytes(),
                Metadata::created(LogIndex(index)),
            )),
            previous: None,
        }
    }

    #[test]
    fn the_window_drops_the_oldest_revisions_and_reports_the_compaction_point() {
        let limits = HistoryLimits {
            revisions: 3,
            bytes: u64::MAX,
        };
        let mut history = History::new(limits, LogIndex(0));
        for index in [2, 4, 5, 9] {
            history.record(LogIndex(index), vec![change("k", "v", index)]);
        }
        assert_eq!(history.compacted(), LogIndex(2));
        assert_eq!(
            history.since(LogIndex(2), 10),
            Err(Compacted {
                compact_revision: LogIndex(2)
            })
        );
        let revisions: Vec<u64> = history
            .since(LogIndex(3), 10)
            .unwrap()
            .iter()
            .map(|entry| entry.revision().0)
            .collect();
        assert_eq!(revisions, [4, 5, 9]);
        let from_six: Vec<u64> = history
            .since(LogIndex(6), 10)
            .unwrap()
            .iter()
            .map(|entry| entry.revision().0)
            .collect();
        assert_eq!(from_six, [9]);
        assert!(history.since(LogIndex(10), 10).unwrap().is_empty());
        assert_eq!(history.since(LogIndex(3), 2).unwrap().len(), 2);
    }

    #[test]
    fn the_byte_bound_keeps_the_newest_revision_even_when_it_alone_is_larger() {
        let limits = HistoryLimits {
            revisions: 100,
            bytes: 10,
        };
        let mut history = History::new(limits, LogIndex(0));
        history.record(LogIndex(1), vec![change("a", "1", 1)]);
        history.record(LogIndex(2), vec![change("b", "2", 2)]);
        assert_eq!(history.len(), 1);
        assert_eq!(history.compacted(), LogIndex(1));
        assert_eq!(history.since(LogIndex(2), 10).unwrap().len(), 1);
    }

    #[test]
    fn no_history_means_every_past_revision_is_compacted() {
        let limits = HistoryLimits {
            revisions: 0,
            bytes: 0,
        };
        let mut history = History::new(limits, LogIndex(0));
        history.record(LogIndex(7), vec![change("a", "1", 7)]);
        assert_eq!(history.len(), 0);
        assert!(history.since(LogIndex(7), 1).is_err());
        assert!(history.since(LogIndex(8), 1).unwrap().is_empty());
    }
}
