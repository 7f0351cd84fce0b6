//! The `applier` thread: applies committed entries (and snapshots from the leader) in order,
//! answers their proposers and waiting reads, and takes snapshots by policy. What applying
//! and snapshotting mean is the shared driver's ([`super::driver::ApplierState`]); this
//! thread decides when, and whom to answer.

use std::sync::atomic::Ordering;
use std::time::Instant;

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
            let started = Instant::now();
            {
                let mut state_machine = shared.state_machine.lock();
                for item in items {
                    let snapshot_started = Instant::now();
                    match applier.apply(&mut *state_machine, item) {
                        Ok(Applied::Entry { id, output }) => outputs.push((id, output)),
                        Ok(Applied::Snapshot { last }) => {
                            let took = snapshot_started.elapsed();
                            shared
                                .metrics
                                .snapshot_install_duration
                                .observe(took.as_secs_f64());
                            tracing::info!(
                                index = last.index.0,
                                term = last.term.0,
                                ms = took.as_millis() as u64,
                                "snapshot from the leader installed"
                            );
                            restored = Some(last.index);
                        }
                        Err(reason) => {
                            drop(state_machine);
                            shared.fail(reason);
                            return;
                        }
                    }
                }
            }
            shared
                .metrics
                .apply_duration
                .observe(started.elapsed().as_secs_f64());
            shared
                .metrics
                .apply_batch_entries
                .observe(outputs.len() as f64);
            let last_applied = applier.last_applied().index;
            *shared.applied.lock() = last_applied;
            shared.applied_changed.notify_all();
            for listener in shared.apply_listeners.lock().iter() {
                listener.wake();
            }
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

/// Freezes the state machine for a snapshot when the policy says so (or an operator asked),
/// and hands it to the snapshot thread, which serializes it; the log writer then makes it
/// durable and compacts the log behind it.
///
/// Only the freeze holds the state machine's lock ([`StateMachine::snapshot_writer`]: O(1)
/// for a copy-on-write state such as the key-value store's), so applying and reads do not wait
/// for serialization.
fn maybe_take_snapshot<M: StateMachine>(shared: &Shared<M>, applier: &mut ApplierState) {
    let requested = shared.snapshot_requested.load(Ordering::SeqCst);
    if !applier.snapshot_due(&shared.snapshot_policy, requested) {
        return;
    }
    if shared.snapshot_in_flight.swap(true, Ordering::SeqCst) {
        return; // the previous one is still being written; try after the next apply
    }
    shared.snapshot_requested.store(false, Ordering::SeqCst);
    let pending = applier.take_snapshot(
        &mut *shared.state_machine.lock(),
        shared.snapshot_policy.margin_entries,
    );
    if shared.snapshot_tx.try_send(pending).is_err() {
        // The snapshot thread is gone (shutting down).
        shared.snapshot_in_flight.store(false, Ordering::SeqCst);
    }
}
