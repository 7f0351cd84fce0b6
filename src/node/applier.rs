//! The `applier` thread: applies committed entries (and snapshots from the leader) in order,
//! answers their proposers and waiting reads, and takes snapshots by policy.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{select, Receiver};

use crate::node::{ApplyItem, LocalSnapshot, Shared};
use crate::raft::SnapshotData;
use crate::state_machine::StateMachine;
use crate::types::{EntryId, EntryPayload, LogIndex, Membership, SnapshotMeta};

/// Where the applier starts: what the restored state machine already reflects.
pub(super) struct ApplierStart {
    pub(super) last_applied: EntryId,
    pub(super) membership: Membership,
}

pub(super) fn run<M: StateMachine>(
    shared: &Shared<M>,
    start: ApplierStart,
    wake: &Receiver<()>,
    shutdown: &Receiver<()>,
) {
    let mut last_applied = start.last_applied;
    let mut membership = start.membership;
    let mut last_snapshot = last_applied.index;
    // Bytes of commands applied since the last snapshot (the byte threshold of the policy).
    let mut applied_bytes: u64 = 0;
    loop {
        select! {
            recv(wake) -> _ => {}
            recv(shutdown) -> _ => return,
        }
        let items = std::mem::take(&mut shared.core.lock().apply_outbox);
        if !items.is_empty() {
            let mut outputs = Vec::with_capacity(items.len());
            let mut restored = None;
            {
                let mut state_machine = shared.state_machine.lock();
                for item in items {
                    match item {
                        ApplyItem::Entry(entry) => {
                            let output = match &entry.payload {
                                EntryPayload::Command(command) => {
                                    applied_bytes += command.len() as u64;
                                    Some(state_machine.apply(entry.id, command))
                                }
                                EntryPayload::Membership(latest) => {
                                    membership = latest.clone();
                                    None
                                }
                                EntryPayload::Noop => None,
                            };
                            last_applied = entry.id;
                            outputs.push((entry.id, output));
                        }
                        ApplyItem::Snapshot(snapshot) => {
                            if let Err(error) = state_machine.restore(&snapshot.data) {
                                drop(state_machine);
                                shared.fail(format!(
                                    "restoring the snapshot at {} failed: {error}",
                                    snapshot.meta.last
                                ));
                                return;
                            }
                            last_applied = snapshot.meta.last;
                            membership = snapshot.meta.membership.clone();
                            last_snapshot = last_applied.index;
                            applied_bytes = 0;
                            restored = Some(last_applied.index);
                        }
                    }
                }
            }
            *shared.applied.lock() = last_applied.index;
            shared.applied_changed.notify_all();
            let mut waiters = shared.waiters.lock();
            for (id, output) in outputs {
                waiters.complete_proposal(id, output);
            }
            if let Some(index) = restored {
                waiters.complete_covered_by_snapshot(index);
            }
            waiters.complete_applied(last_applied.index);
        }
        if maybe_take_snapshot(
            shared,
            last_applied,
            &membership,
            &mut last_snapshot,
            applied_bytes,
        ) {
            applied_bytes = 0;
        }
    }
}

/// Takes a snapshot when the policy says so (or an operator asked), and hands it to the log
/// writer, which makes it durable and then compacts the log behind it.
///
/// The state machine is serialized under its lock: writes keep committing meanwhile (the log
/// writer and the core are not involved), while applying and reads wait for it.
fn maybe_take_snapshot<M: StateMachine>(
    shared: &Shared<M>,
    last_applied: EntryId,
    membership: &Membership,
    last_snapshot: &mut LogIndex,
    applied_bytes: u64,
) -> bool {
    let requested = shared.snapshot_requested.load(Ordering::SeqCst);
    let due_by_entries = shared.snapshot_entries > 0
        && last_applied.index.0 >= last_snapshot.0 + shared.snapshot_entries;
    let due_by_bytes = shared.snapshot_bytes > 0 && applied_bytes >= shared.snapshot_bytes;
    if !(requested || due_by_entries || due_by_bytes) || last_applied.index == LogIndex(0) {
        return false;
    }
    if shared.core.lock().local_snapshot.is_some() {
        return false; // the previous one is still being written; try after the next apply
    }
    shared.snapshot_requested.store(false, Ordering::SeqCst);
    let data = shared.state_machine.lock().snapshot();
    let meta = SnapshotMeta {
        last: last_applied,
        membership: membership.clone(),
    };
    let compact_through = LogIndex(
        last_applied
            .index
            .0
            .saturating_sub(shared.snapshot_margin_entries),
    );
    shared.core.lock().local_snapshot = Some(LocalSnapshot {
        snapshot: SnapshotData::new(meta, Arc::new(data)),
        compact_through,
    });
    let _ = shared.persist_wake.try_send(());
    *last_snapshot = last_applied.index;
    true
}
