//! The `applier` thread: applies committed entries (and snapshots from the leader) in order,
//! answers their proposers and waiting reads, and takes snapshots by policy. What applying
//! and snapshotting mean is the shared driver's ([`super::driver::ApplierState`]); this
//! thread decides when, and whom to answer.

use std::sync::atomic::Ordering;

use crossbeam_channel::{select, Receiver};

use crate::node::driver::{Applied, ApplierState};
use crate::node::Shared;
use crate::state_machine::StateMachine;

pub(super) fn run<M: StateMachine>(
    shared: &Shared<M>,
    mut applier: ApplierState,
    wake: &Receiver<()>,
    shutdown: &Receiver<()>,
) {
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
                    match applier.apply(&mut *state_machine, item) {
                        Ok(Applied::Entry { id, output }) => outputs.push((id, output)),
                        Ok(Applied::Snapshot { last }) => restored = Some(last.index),
                        Err(reason) => {
                            drop(state_machine);
                            shared.fail(reason);
                            return;
                        }
                    }
                }
            }
            let last_applied = applier.last_applied().index;
            *shared.applied.lock() = last_applied;
            shared.applied_changed.notify_all();
            let mut waiters = shared.waiters.lock();
            for (id, output) in outputs {
                waiters.complete_proposal(id, output);
            }
            if let Some(index) = restored {
                waiters.complete_covered_by_snapshot(index);
            }
            waiters.complete_applied(last_applied);
        }
        maybe_take_snapshot(shared, &mut applier);
    }
}

/// Takes a snapshot when the policy says so (or an operator asked), and hands it to the log
/// writer, which makes it durable and then compacts the log behind it.
///
/// The state machine is serialized under its lock: writes keep committing meanwhile (the log
/// writer and the core are not involved), while applying and reads wait for it.
fn maybe_take_snapshot<M: StateMachine>(shared: &Shared<M>, applier: &mut ApplierState) {
    let requested = shared.snapshot_requested.load(Ordering::SeqCst);
    if !applier.snapshot_due(&shared.snapshot_policy, requested) {
        return;
    }
    if shared.core.lock().local_snapshot.is_some() {
        return; // the previous one is still being written; try after the next apply
    }
    shared.snapshot_requested.store(false, Ordering::SeqCst);
    let local = applier.take_snapshot(
        &mut *shared.state_machine.lock(),
        shared.snapshot_policy.margin_entries,
    );
    shared.core.lock().local_snapshot = Some(local);
    let _ = shared.persist_wake.try_send(());
}
