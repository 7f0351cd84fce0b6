//! The consensus core's view of the replicated log.
//!
//! The core holds the log from the last snapshot onwards in memory (compaction keeps that
//! bounded) and tracks four positions that only the core may move:
//!
//! ```text
//!  snapshot.index < applied_handed <= committed, applied_handed <= persisted
//!                   persisted < persist_from <= last_index + 1
//! ```
//!
//! - `persist_from`: entries from here on have not yet been handed to storage.
//! - `persisted`: the highest index storage has reported durable (term-checked).
//! - `committed`: the highest index known committed.
//! - `applied_handed`: the highest committed entry handed to the applier. Only durable entries
//!   are handed over, so nothing is applied that a crash could take back from this node.

use crate::types::{Entry, EntryId, LogIndex, Term};

/// The in-memory log; see the module docs for its positions.
#[derive(Debug)]
pub struct RaftLog {
    /// The entry just before `entries[0]`: the snapshot's last entry, or (0, 0).
    snapshot: EntryId,
    /// Invariant: `entries[k].index == snapshot.index + 1 + k`, terms non-decreasing.
    entries: Vec<Entry>,
    /// Invariant: `committed <= last_index()`.
    committed: LogIndex,
    /// Invariant: `persisted < persist_from`.
    persisted: LogIndex,
    persist_from: LogIndex,
    /// Invariant: `applied_handed <= min(committed, persisted)`.
    applied_handed: LogIndex,
}

/// Why an `AppendEntries` could not be applied to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendRejection {
    /// The log does not hold `prev`; the hint helps the leader back up.
    Mismatch {
        /// Where the leader should search from.
        hint: EntryId,
    },
    /// The message would overwrite a committed entry: a corrupt or hostile message.
    WouldOverwriteCommitted,
}

impl RaftLog {
    /// A log recovered from storage: entries after `snapshot`, all durable.
    pub fn new(snapshot: EntryId, entries: Vec<Entry>) -> RaftLog {
        let persisted = LogIndex(snapshot.index.0 + entries.len() as u64);
        let log = RaftLog {
            snapshot,
            entries,
            committed: snapshot.index,
            persisted,
            persist_from: persisted.next(),
            applied_handed: snapshot.index,
        };
        log.check_invariants();
        log
    }

    /// Checks the invariants in debug builds.
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            for (k, entry) in self.entries.iter().enumerate() {
                debug_assert_eq!(entry.index().0, self.snapshot.index.0 + 1 + k as u64);
            }
            debug_assert!(self.committed <= self.last_index());
            debug_assert!(self.persisted < self.persist_from);
            debug_assert!(self.persist_from <= self.last_index().next());
            debug_assert!(self.applied_handed <= self.committed.min(self.persisted));
            debug_assert!(self.snapshot.index <= self.applied_handed);
        }
    }

    /// The first index held in memory.
    pub fn first_index(&self) -> LogIndex {
        self.snapshot.index.next()
    }

    /// The last index of the log (the snapshot's if the log is empty).
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot.index.0 + self.entries.len() as u64)
    }

    /// The id of the last entry.
    pub fn last_id(&self) -> EntryId {
        match self.entries.last() {
            Some(entry) => entry.id,
            None => self.snapshot,
        }
    }

    /// The snapshot the log starts after.
    pub fn snapshot(&self) -> EntryId {
        self.snapshot
    }

    /// The commit index.
    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    /// The highest index known durable.
    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The highest index handed to the applier.
    pub fn applied_handed(&self) -> LogIndex {
        self.applied_handed
    }

    /// The term of the entry at `index`, if it is known (`None` when compacted or beyond).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(Entry::term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        self.entries
            .get((index.0 - self.snapshot.index.0 - 1) as usize)
    }

    /// Whether the log holds the entry `id`.
    pub fn matches(&self, id: EntryId) -> bool {
        self.term(id.index) == Some(id.term)
    }

    /// Whether a candidate whose last entry is `last` is at least as up to date as this log
    /// (Raft §5.4.1): a later last term wins, equal terms compare by length.
    pub fn is_up_to_date(&self, last: EntryId) -> bool {
        let own = self.last_id();
        (last.term, last.index) >= (own.term, own.index)
    }

    /// Entries from `from` on, at most `bytes_max` bytes but at least one entry.
    pub fn entries_from(&self, from: LogIndex, bytes_max: u64) -> Vec<Entry> {
        self.entries_between(from, self.last_index(), bytes_max)
    }

    /// Entries from `from` through `to`, at most `bytes_max` bytes but at least one entry.
    fn entries_between(&self, from: LogIndex, to: LogIndex, bytes_max: u64) -> Vec<Entry> {
        let to = to.min(self.last_index());
        if from <= self.snapshot.index || from > to {
            return Vec::new();
        }
        let start = (from.0 - self.snapshot.index.0 - 1) as usize;
        let end = (to.0 - self.snapshot.index.0) as usize;
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in &self.entries[start..end] {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Appends an entry created by this node as leader.
    pub fn append_own(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index(), self.last_index().next());
        debug_assert!(entry.term() >= self.last_id().term);
        self.entries.push(entry);
    }

    /// Applies an `AppendEntries` (Raft §5.3). Entries the log already holds are skipped; only
    /// a real conflict (same index, different term) truncates, so a stale or reordered message
    /// can never remove entries. Returns the last index the message proves to match.
    pub fn maybe_append(
        &mut self,
        prev: EntryId,
        entries: &[Entry],
        leader_commit: LogIndex,
    ) -> Result<LogIndex, AppendRejection> {
        if !self.matches(prev) {
            return Err(AppendRejection::Mismatch {
                hint: self.conflict_hint(prev),
            });
        }
        let conflict = entries.iter().position(|entry| !self.matches(entry.id));
        if let Some(position) = conflict {
            let first_new = entries[position].index();
            if first_new <= self.committed {
                return Err(AppendRejection::WouldOverwriteCommitted);
            }
            if first_new <= self.last_index() {
                self.truncate_from(first_new);
            }
            self.entries.extend_from_slice(&entries[position..]);
        }
        let last_new = LogIndex(prev.index.0 + entries.len() as u64);
        self.commit_to(leader_commit.min(last_new));
        self.check_invariants();
        Ok(last_new)
    }

    /// Drops entries from `index` on (a conflict with the leader's log).
    fn truncate_from(&mut self, index: LogIndex) {
        debug_assert!(index > self.committed, "truncating committed entry {index}");
        self.entries
            .truncate((index.0 - self.snapshot.index.0 - 1) as usize);
        self.persisted = self.persisted.min(index.prev());
        self.persist_from = self.persist_from.min(index);
    }

    /// The hint a follower sends with a rejection of `prev`: its last entry at or below
    /// `prev.index` whose term is at most `prev.term`. Everything after the hint's index may
    /// be skipped by the leader (the etcd "find conflict by term" optimisation).
    pub fn conflict_hint(&self, prev: EntryId) -> EntryId {
        let mut index = prev.index.min(self.last_index());
        while index > self.snapshot.index {
            match self.term(index) {
                Some(term) if term <= prev.term => return EntryId::new(term, index),
                _ => index = index.prev(),
            }
        }
        self.snapshot
    }

    /// The leader's side of fast backtracking: the last index at or below `hint.index` whose
    /// term is at most `hint.term`.
    pub fn find_conflict_by_term(&self, hint: EntryId) -> LogIndex {
        let mut index = hint.index.min(self.last_index());
        while index > self.snapshot.index {
            match self.term(index) {
                Some(term) if term <= hint.term => return index,
                _ => index = index.prev(),
            }
        }
        self.snapshot.index
    }

    /// Raises the commit index to `index` if that is higher. Never moves it backwards.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Drops the entries up to and including `through`, which must be applied (a local
    /// snapshot covers them), and returns them; `None` when `through` is not in the log.
    ///
    /// Only the entries kept are moved: the removed ones (a whole snapshot interval, ~100k
    /// entries by default) are handed back in their old allocation for the caller to free
    /// where that holds nobody up — freeing them here took 8–15 ms under the node's lock.
    pub fn compact(&mut self, through: LogIndex) -> Option<Vec<Entry>> {
        if through <= self.snapshot.index || through > self.applied_handed {
            return None;
        }
        let term = self.term(through)?;
        let remove = (through.0 - self.snapshot.index.0) as usize;
        let kept = self.entries.split_off(remove);
        let removed = std::mem::replace(&mut self.entries, kept);
        self.snapshot = EntryId::new(term, through);
        self.check_invariants();
        Some(removed)
    }

    /// Installs a snapshot received from the leader (Raft §7): if the log holds the snapshot's
    /// last entry the entries after it are kept, otherwise the whole log is discarded. The
    /// snapshot counts as durable and applied: the runtime persists and restores it before
    /// anything later. Returns whether the suffix was kept.
    pub fn restore(&mut self, last: EntryId) -> bool {
        debug_assert!(last.index > self.committed);
        let keep_suffix = self.matches(last);
        if keep_suffix {
            let remove = (last.index.0 - self.snapshot.index.0) as usize;
            self.entries.drain(..remove);
        } else {
            self.entries.clear();
        }
        self.snapshot = last;
        self.committed = last.index;
        self.applied_handed = last.index;
        if keep_suffix {
            self.persisted = self.persisted.max(last.index);
            self.persist_from = self.persist_from.max(last.index.next());
        } else {
            // Entries already handed to storage after the snapshot are discarded with the log
            // (the runtime resets the stored log); a late report about them fails the term
            // check in `on_persisted`.
            self.persisted = last.index;
            self.persist_from = last.index.next();
        }
        self.check_invariants();
        keep_suffix
    }

    /// Entries not yet handed to storage; marks them handed.
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let out = self.entries_from(self.persist_from, u64::MAX);
        self.persist_from = self.last_index().next();
        out
    }

    /// Whether entries wait to be handed to storage.
    pub fn has_unpersisted(&self) -> bool {
        self.persist_from <= self.last_index()
    }

    /// Storage reports `id` durable. Ignored unless the log still holds `id` (an answer about
    /// an entry since overwritten must not count) and it was handed to storage.
    pub fn on_persisted(&mut self, id: EntryId) -> bool {
        if id.index > self.persisted && id.index < self.persist_from && self.matches(id) {
            self.persisted = id.index;
            true
        } else {
            false
        }
    }

    /// Committed, durable entries not yet handed to the applier, at most `bytes_max` bytes (at
    /// least one entry); marks them handed.
    pub fn take_committed(&mut self, bytes_max: u64) -> Vec<Entry> {
        let until = self.committed.min(self.persisted);
        if until <= self.applied_handed {
            return Vec::new();
        }
        // Only the committed range is copied (not the uncommitted tail, to drop it after).
        let out = self.entries_between(self.applied_handed.next(), until, bytes_max);
        if let Some(last) = out.last() {
            self.applied_handed = last.index();
        }
        out
    }

    /// Whether committed entries wait for the applier.
    pub fn has_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applied_handed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            payload: EntryPayload::Noop,
        }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, &term)| entry(term, k as u64 + 1))
            .collect();
        RaftLog::new(EntryId::default(), entries)
    }

    fn id(term: u64, index: u64) -> EntryId {
        EntryId::new(Term(term), LogIndex(index))
    }

    #[test]
    fn compaction_hands_back_exactly_the_entries_it_removed() {
        let mut log = log_of(&[1, 1, 2, 2, 2]);
        // Not applied yet: nothing can go.
        assert_eq!(log.compact(LogIndex(2)), None);
        log.commit_to(LogIndex(4));
        assert_eq!(log.take_committed(u64::MAX).len(), 4);
        assert_eq!(
            log.compact(LogIndex(3)),
            Some(vec![entry(1, 1), entry(1, 2), entry(2, 3)])
        );
        assert_eq!(log.first_index(), LogIndex(4));
        assert_eq!(log.entry(LogIndex(4)), Some(&entry(2, 4)));
        assert_eq!(log.term(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.last_id(), id(2, 5));
        // Already compacted, or past what was applied: nothing more goes.
        assert_eq!(log.compact(LogIndex(3)), None);
        assert_eq!(log.compact(LogIndex(5)), None);
    }

    #[test]
    fn stale_shorter_append_does_not_truncate() {
        let mut log = log_of(&[1, 1, 1, 1]);
        let last = log
            .maybe_append(id(1, 1), &[entry(1, 2)], LogIndex(0))
            .unwrap();
        assert_eq!(last, LogIndex(2));
        assert_eq!(log.last_index(), LogIndex(4));
    }

    #[test]
    fn real_conflict_truncates_and_resets_persisted() {
        let mut log = log_of(&[1, 1, 1, 1]);
        log.maybe_append(id(1, 2), &[entry(2, 3)], LogIndex(0))
            .unwrap();
        assert_eq!(log.last_id(), id(2, 3));
        assert_eq!(log.persisted(), LogIndex(2));
        assert_eq!(log.take_unpersisted(), vec![entry(2, 3)]);
    }

    #[test]
    fn follower_commit_is_capped_by_last_new_entry() {
        let mut log = log_of(&[1, 1, 1, 1]);
        log.maybe_append(id(1, 1), &[], LogIndex(4)).unwrap();
        assert_eq!(log.committed(), LogIndex(1));
    }

    #[test]
    fn overwrite_of_committed_entry_is_refused() {
        let mut log = log_of(&[1, 1, 1]);
        log.commit_to(LogIndex(3));
        assert_eq!(
            log.maybe_append(id(1, 1), &[entry(2, 2)], LogIndex(0)),
            Err(AppendRejection::WouldOverwriteCommitted)
        );
        assert_eq!(log.last_id(), id(1, 3));
    }

    #[test]
    fn late_persist_report_for_overwritten_entry_is_ignored() {
        let mut log = log_of(&[1]);
        log.append_own(entry(1, 2));
        let _ = log.take_unpersisted();
        log.maybe_append(id(1, 1), &[entry(2, 2)], LogIndex(0))
            .unwrap();
        let _ = log.take_unpersisted();
        assert!(
            !log.on_persisted(id(1, 2)),
            "ABA: old entry's ack must not count"
        );
        assert!(log.on_persisted(id(2, 2)));
    }

    #[test]
    fn committed_entries_wait_for_durability() {
        let mut log = log_of(&[]);
        log.append_own(entry(1, 1));
        log.commit_to(LogIndex(1));
        assert!(log.take_committed(u64::MAX).is_empty());
        let _ = log.take_unpersisted();
        log.on_persisted(id(1, 1));
        assert_eq!(log.take_committed(u64::MAX), vec![entry(1, 1)]);
    }

    #[test]
    fn conflict_hint_skips_whole_terms() {
        let log = log_of(&[1, 1, 2, 2, 2, 3, 3]);
        assert_eq!(log.conflict_hint(id(2, 7)), id(2, 5));
        assert_eq!(log.conflict_hint(id(5, 20)), id(3, 7));
        assert_eq!(log.find_conflict_by_term(id(1, 6)), LogIndex(2));
    }
}
