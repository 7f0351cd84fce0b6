//! The one driver of the core's output (STYLE 16): how a node starts from storage, how a
//! `Ready` is split by destination, how its durable part is persisted and what that releases,
//! how committed entries and snapshots are applied, and how local snapshots are taken and made
//! durable. The threaded runtime ([`crate::node`]), the deterministic simulation
//! ([`crate::testkit::simulation`]) and the core test network ([`crate::testkit::CoreNetwork`])
//! all run this code; only *when* each step happens differs (threads, a seeded scheduler, or
//! at once), so a crash the simulation injects lands in the runtime's real code path.
//!
//! ```text
//!   recover ──► Raft + ApplierState            (storage reconciled, snapshot restored)
//!   Ready ──split──► messages ─────────────────► transport
//!              ├──► PersistRequest ──Persister::persist_batch──► released messages,
//!              │                                                 on_persisted(last entry)
//!              ├──► ApplyItems ──ApplierState::apply──► outputs for proposers
//!              └──► read states, configuration changes
//!   ApplierState::take_snapshot ──► LocalSnapshot ──Persister::save_local_snapshot──► compact
//! ```

use std::sync::Arc;

use crate::config::Config;
use crate::error::StorageError;
use crate::raft::{InstalledSnapshot, Message, Raft, ReadState, Ready, SnapshotData};
use crate::state_machine::{SnapshotWriter, StateMachine};
use crate::storage::{self, StagedSnapshot, Storage};
use crate::types::{Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, SnapshotMeta};

use super::StartError;

/// One persist request: a Ready's durable part and the messages that wait for it.
#[derive(Debug)]
pub(crate) struct PersistRequest {
    pub(crate) hard_state: Option<HardState>,
    pub(crate) snapshot: Option<InstalledSnapshot>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) messages: Vec<Message>,
}

/// Work for the applier, in log order.
#[derive(Debug)]
pub(crate) enum ApplyItem {
    Entry(Entry),
    /// A snapshot from the leader: replace the state machine's state.
    Snapshot(SnapshotData),
}

/// A snapshot the applier took, to be made durable before the log is compacted behind it.
#[derive(Debug)]
pub(crate) struct LocalSnapshot {
    pub(crate) snapshot: SnapshotData,
    pub(crate) compact_through: LogIndex,
    /// Its bytes already written beside the storage (the runtime's snapshot thread stages
    /// them), so saving it is a rename; `None`: the log writer writes them.
    pub(crate) staged: Option<StagedSnapshot>,
}

/// A Ready split by where each part goes.
#[derive(Debug, Default)]
pub(crate) struct RoutedReady {
    /// Send now.
    pub(crate) messages: Vec<Message>,
    /// For the log writer.
    pub(crate) persist: Option<PersistRequest>,
    /// For the applier, in log order: an installed snapshot first, then committed entries.
    pub(crate) apply: Vec<ApplyItem>,
    /// For the read waiters.
    pub(crate) read_states: Vec<ReadState>,
    /// A new configuration for the transport.
    pub(crate) membership: Option<Membership>,
}

/// Splits a Ready by destination (the order of work is [`Ready`]'s contract).
pub(crate) fn split(ready: Ready) -> RoutedReady {
    let needs_persist = ready.needs_persist();
    // No allocation for the common Ready that commits nothing.
    let mut apply = Vec::new();
    if let Some(installed) = &ready.snapshot {
        apply.push(ApplyItem::Snapshot(installed.snapshot.clone()));
    }
    apply.extend(ready.committed.into_iter().map(ApplyItem::Entry));
    RoutedReady {
        messages: ready.messages,
        persist: needs_persist.then_some(PersistRequest {
            hard_state: ready.hard_state,
            snapshot: ready.snapshot,
            entries: ready.entries,
            messages: ready.persisted_messages,
        }),
        apply,
        read_states: ready.read_states,
        membership: ready.membership,
    }
}

/// What a node starts from.
pub(crate) struct Recovery {
    pub(crate) raft: Raft,
    pub(crate) applier: ApplierState,
    pub(crate) persister: Persister,
}

/// Recovers a node: reads storage back (reconciling the log with the snapshot, durably:
/// [`storage::recover_consistent`]), settles the bootstrap configuration (recorded at the
/// first start, used and enforced at every later one), restores the snapshot into
/// `state_machine`, builds the core, and seeds the applier with what the restored state
/// reflects — the snapshot's last entry and **its** configuration, or nothing and the
/// bootstrap — never the newest configuration in the log, which may be uncommitted and later
/// truncated (a local snapshot stamped with it would resurrect it).
pub(crate) fn recover<M: StateMachine>(
    config: Config,
    storage: &mut dyn Storage,
    given: Membership,
    state_machine: &mut M,
    seed: u64,
) -> Result<Recovery, StartError> {
    let recovered = storage::recover_consistent(storage)?;
    let recorded = storage.load_bootstrap()?;
    let bootstrap = match &recorded {
        Some(recorded) => recorded.clone(),
        None if given.is_empty() => given.clone(),
        None => {
            storage.save_bootstrap(&given)?;
            given.clone()
        }
    };
    let mut snapshot = None;
    if recovered.snapshot.is_some() {
        if let Some((meta, data)) = storage.load_snapshot()? {
            state_machine
                .restore(&data)
                .map_err(|error| StartError::Restore {
                    reason: error.to_string(),
                })?;
            snapshot = Some(SnapshotData::new(meta, Arc::new(data)));
        }
    }
    let mut raft = Raft::new(config, recovered, bootstrap.clone(), seed)?;
    if let Some(recorded) = recorded {
        let current = raft.membership();
        if !given.is_empty() && !given.same_members(&recorded) && !given.same_members(current) {
            return Err(StartError::BootstrapConflict(Box::new(
                super::BootstrapConflict {
                    recorded,
                    current: current.clone(),
                    given,
                },
            )));
        }
    }
    let (applier, persister) = match snapshot {
        Some(snapshot) => {
            let last = snapshot.meta.last;
            let applier = ApplierState::new(last, snapshot.meta.membership.clone());
            raft.compact(snapshot, last.index);
            (applier, Persister::new(last.index))
        }
        None => (
            ApplierState::new(EntryId::default(), bootstrap),
            Persister::new(LogIndex(0)),
        ),
    };
    Ok(Recovery {
        raft,
        applier,
        persister,
    })
}

/// What a persisted batch releases: the held-back messages and the last entry written (to be
/// reported to [`Raft::on_persisted`]).
#[derive(Debug, Default)]
pub(crate) struct Released {
    pub(crate) messages: Vec<Message>,
    pub(crate) last_entry: Option<EntryId>,
}

/// The log writer's memory between batches.
#[derive(Debug)]
pub(crate) struct Persister {
    /// The newest snapshot saved: an older local snapshot must never replace it.
    saved_snapshot: LogIndex,
    /// The last index written (debug check: batches never leave a gap).
    last_written: Option<LogIndex>,
}

impl Persister {
    pub(crate) fn new(saved_snapshot: LogIndex) -> Persister {
        Persister {
            saved_snapshot,
            last_written: None,
        }
    }

    /// Writes a batch of persist requests in order and syncs once (group commit). Installed
    /// snapshots are saved and the log reset or compacted behind them
    /// ([`storage::install_snapshot`]) before the entries that follow them.
    pub(crate) fn persist_batch(
        &mut self,
        storage: &mut dyn Storage,
        batch: Vec<PersistRequest>,
    ) -> Result<Released, StorageError> {
        let mut released = Released::default();
        for request in batch {
            if let Some(hard_state) = request.hard_state {
                storage.save_hard_state(hard_state)?;
            }
            if let Some(installed) = request.snapshot {
                let snapshot = &installed.snapshot;
                let index = snapshot.meta.last.index;
                storage::install_snapshot(
                    storage,
                    &snapshot.meta,
                    &snapshot.data,
                    installed.keep_suffix,
                )?;
                self.saved_snapshot = self.saved_snapshot.max(index);
                if !installed.keep_suffix {
                    self.last_written = Some(index);
                }
            }
            if let (Some(first), Some(last)) = (request.entries.first(), request.entries.last()) {
                debug_assert!(
                    request
                        .entries
                        .windows(2)
                        .all(|pair| pair[1].index() == pair[0].index().next()),
                    "a persist request's entries are not contiguous"
                );
                debug_assert!(
                    self.last_written
                        .is_none_or(|written| first.index() <= written.next()),
                    "persist batches left a gap: {} after {:?}",
                    first.index(),
                    self.last_written
                );
                storage.append(&request.entries)?;
                self.last_written = Some(last.index());
                released.last_entry = Some(last.id);
            }
            released.messages.extend(request.messages);
        }
        storage.sync()?;
        Ok(released)
    }

    /// Makes a local snapshot durable, then compacts the stored log behind it. Returns it for
    /// the core to compact its log too ([`Raft::compact`]), unless a newer snapshot was saved
    /// meanwhile.
    pub(crate) fn save_local_snapshot(
        &mut self,
        storage: &mut dyn Storage,
        local: LocalSnapshot,
    ) -> Result<Option<LocalSnapshot>, StorageError> {
        let index = local.snapshot.meta.last.index;
        let mut local = local;
        if index <= self.saved_snapshot {
            if let Some(staged) = local.staged.take() {
                storage.discard_staged(staged)?;
            }
            return Ok(None);
        }
        match local.staged.take() {
            Some(staged) => storage.commit_snapshot(staged)?,
            None => storage.save_snapshot(&local.snapshot.meta, &local.snapshot.data)?,
        }
        self.saved_snapshot = index;
        storage.compact(local.compact_through)?;
        Ok(Some(local))
    }
}

/// What applying one item did.
#[derive(Debug)]
pub(crate) enum Applied {
    /// An entry was applied; `output` is the state machine's response to a command.
    Entry {
        id: EntryId,
        output: Option<Vec<u8>>,
    },
    /// A snapshot from the leader replaced the state.
    Snapshot { last: EntryId },
}

/// When to take a local snapshot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SnapshotPolicy {
    /// Every this many applied entries (0: never by count).
    pub(crate) entries: u64,
    /// Every this many bytes of applied commands (0: never by size).
    pub(crate) bytes: u64,
    /// Entries kept in the log behind a snapshot.
    pub(crate) margin_entries: u64,
    /// The first automatic snapshot after a start waits this many quarters of a threshold
    /// more (0 to 3, from the node id), so that the members of a cluster, which apply at the
    /// same pace, do not all serialize a snapshot at the same moment: on a small machine
    /// three nodes serializing at once starve the commit path.
    pub(crate) phase_quarters: u64,
}

impl SnapshotPolicy {
    /// The phase of node `id` (see [`SnapshotPolicy::phase_quarters`]).
    pub(crate) fn phase_of(id: crate::types::NodeId) -> u64 {
        id.0.saturating_sub(1) % 4
    }
}

/// The applier's memory: what the state machine reflects.
///
/// Invariant: `last_applied` is the last entry (or snapshot) given to the state machine and
/// `membership` is the configuration in force at `last_applied` — what a snapshot taken now
/// must carry.
#[derive(Debug)]
pub(crate) struct ApplierState {
    last_applied: EntryId,
    membership: Membership,
    last_snapshot: LogIndex,
    /// Bytes of commands applied since the last snapshot.
    applied_bytes: u64,
    /// Whether this process took a snapshot yet (the first one waits for the phase).
    took_snapshot: bool,
}

impl ApplierState {
    pub(crate) fn new(last_applied: EntryId, membership: Membership) -> ApplierState {
        ApplierState {
            last_applied,
            membership,
            last_snapshot: last_applied.index,
            applied_bytes: 0,
            took_snapshot: false,
        }
    }

    /// The last entry the state machine reflects.
    pub(crate) fn last_applied(&self) -> EntryId {
        self.last_applied
    }

    /// The configuration as of [`last_applied`](ApplierState::last_applied).
    pub(crate) fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Applies one item to the state machine. Entries must come in log order, each right
    /// after the last applied one; a snapshot replaces everything. A snapshot the state
    /// machine cannot restore is an error: the node must stop.
    pub(crate) fn apply<M: StateMachine>(
        &mut self,
        state_machine: &mut M,
        item: ApplyItem,
    ) -> Result<Applied, String> {
        match item {
            ApplyItem::Entry(entry) => {
                debug_assert_eq!(
                    entry.index(),
                    self.last_applied.index.next(),
                    "applied out of order"
                );
                let output = match &entry.payload {
                    EntryPayload::Command(command) => {
                        self.applied_bytes += command.len() as u64;
                        Some(state_machine.apply(entry.id, command))
                    }
                    EntryPayload::Membership(latest) => {
                        self.membership = latest.clone();
                        None
                    }
                    EntryPayload::Noop => None,
                };
                self.last_applied = entry.id;
                Ok(Applied::Entry {
                    id: entry.id,
                    output,
                })
            }
            ApplyItem::Snapshot(snapshot) => {
                state_machine.restore(&snapshot.data).map_err(|error| {
                    format!(
                        "restoring the snapshot at {} failed: {error}",
                        snapshot.meta.last
                    )
                })?;
                self.last_applied = snapshot.meta.last;
                self.membership = snapshot.meta.membership.clone();
                self.last_snapshot = self.last_applied.index;
                self.applied_bytes = 0;
                Ok(Applied::Snapshot {
                    last: self.last_applied,
                })
            }
        }
    }

    /// Whether the policy (or an operator's request) calls for a snapshot now.
    pub(crate) fn snapshot_due(&self, policy: &SnapshotPolicy, requested: bool) -> bool {
        if self.last_applied.index == LogIndex(0) {
            return false;
        }
        let stretch = |threshold: u64| {
            if self.took_snapshot {
                threshold
            } else {
                threshold.saturating_add(threshold / 4 * policy.phase_quarters)
            }
        };
        let due_by_entries = policy.entries > 0
            && self.last_applied.index.0 >= self.last_snapshot.0 + stretch(policy.entries);
        let due_by_bytes = policy.bytes > 0 && self.applied_bytes >= stretch(policy.bytes);
        requested || due_by_entries || due_by_bytes
    }

    /// Freezes the state machine as of the last applied entry, stamped with the configuration
    /// in force there, keeping `margin_entries` of log behind it. The returned snapshot is
    /// serialized by [`PendingSnapshot::write`], which may run on another thread.
    pub(crate) fn take_snapshot<M: StateMachine>(
        &mut self,
        state_machine: &mut M,
        margin_entries: u64,
    ) -> PendingSnapshot {
        let writer = state_machine.snapshot_writer();
        let meta = SnapshotMeta {
            last: self.last_applied,
            membership: self.membership.clone(),
        };
        self.last_snapshot = self.last_applied.index;
        self.applied_bytes = 0;
        self.took_snapshot = true;
        PendingSnapshot {
            writer,
            meta,
            compact_through: LogIndex(self.last_applied.index.0.saturating_sub(margin_entries)),
        }
    }
}

/// A frozen state machine and what its snapshot will say, not serialized yet.
pub(crate) struct PendingSnapshot {
    writer: SnapshotWriter,
    meta: SnapshotMeta,
    compact_through: LogIndex,
}

impl std::fmt::Debug for PendingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSnapshot")
            .field("meta", &self.meta)
            .field("compact_through", &self.compact_through)
            .finish_non_exhaustive()
    }
}

impl PendingSnapshot {
    /// Serializes it: the slow part, off the applier's path.
    pub(crate) fn write(self) -> LocalSnapshot {
        let data = (self.writer)();
        LocalSnapshot {
            snapshot: SnapshotData::new(self.meta, Arc::new(data)),
            compact_through: self.compact_through,
            staged: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{NodeId, Term};

    fn policy(id: u64) -> SnapshotPolicy {
        SnapshotPolicy {
            entries: 100,
            bytes: 0,
            margin_entries: 0,
            phase_quarters: SnapshotPolicy::phase_of(NodeId(id)),
        }
    }

    fn at(index: u64) -> ApplierState {
        let mut state =
            ApplierState::new(EntryId::new(Term(1), LogIndex(0)), Membership::default());
        state.last_applied = EntryId::new(Term(1), LogIndex(index));
        state
    }

    #[test]
    fn members_take_their_first_snapshot_a_quarter_apart_then_every_threshold() {
        // Node 1 at the threshold, node 2 a quarter later, node 3 half later, node 5 as 1.
        assert!(at(100).snapshot_due(&policy(1), false));
        assert!(!at(124).snapshot_due(&policy(2), false));
        assert!(at(125).snapshot_due(&policy(2), false));
        assert!(!at(149).snapshot_due(&policy(3), false));
        assert!(at(150).snapshot_due(&policy(3), false));
        assert!(at(100).snapshot_due(&policy(5), false));
        // After its first snapshot a node keeps the plain threshold (so the offset stays).
        let mut state = at(150);
        state.took_snapshot = true;
        state.last_snapshot = LogIndex(150);
        state.last_applied = EntryId::new(Term(1), LogIndex(250));
        assert!(state.snapshot_due(&policy(3), false));
        // An operator's request is never delayed.
        assert!(at(1).snapshot_due(&policy(4), true));
    }
}
