//! The `log-writer` thread: persists Readys with one sync per drained batch (group commit),
//! then releases the messages that waited for that durability and reports it to the core.
//! It also makes snapshots durable — received ones before the entries after them, local ones
//! before the log is compacted behind them. The steps themselves are the shared driver's
//! ([`super::driver::Persister`]); this thread decides only when they run.

use std::time::Instant;

use crossbeam_channel::{select, Receiver};

use crate::error::StorageError;
use crate::node::driver::Persister;
use crate::node::Shared;
use crate::storage::Storage;

pub(super) fn run<M>(
    shared: &Shared<M>,
    mut storage: Box<dyn Storage>,
    mut persister: Persister,
    wake: &Receiver<()>,
    shutdown: &Receiver<()>,
) {
    loop {
        select! {
            recv(wake) -> _ => {}
            recv(shutdown) -> _ => return,
        }
        let (batch, local_snapshot, members_update) = {
            let mut core = shared.core.lock();
            (
                std::mem::take(&mut core.persist_outbox),
                core.local_snapshot.take(),
                core.members_update.take(),
            )
        };
        if let Some(membership) = members_update {
            shared.transport.update_members(&membership);
        }
        if !batch.is_empty() {
            let entries: usize = batch.iter().map(|request| request.entries.len()).sum();
            let started = Instant::now();
            let released = persister.persist_batch(storage.as_mut(), batch);
            let Some(released) = check(shared, released) else {
                return;
            };
            shared
                .metrics
                .log_fsync_duration
                .observe(started.elapsed().as_secs_f64());
            shared
                .metrics
                .log_fsync_batch_entries
                .observe(entries as f64);
            // Acks and commit progress go out before any local snapshot is written: they
            // depend only on this batch's sync.
            for message in released.messages {
                shared.transport.send(message);
            }
            if let Some(last) = released.last_entry {
                let mut core = shared.core.lock();
                core.raft.on_persisted(last);
                shared.route(&mut core);
            }
        }
        if let Some(local) = local_snapshot {
            let saved = persister.save_local_snapshot(storage.as_mut(), local);
            let Some(saved) = check(shared, saved) else {
                return;
            };
            if let Some(local) = saved {
                let index = local.snapshot.meta.last.index.0;
                let through = local.compact_through.0;
                let compacted = {
                    let mut core = shared.core.lock();
                    let compacted = core.raft.compact(local.snapshot, local.compact_through);
                    shared.route(&mut core);
                    compacted
                };
                // Freed elsewhere: neither the core's lock nor the next fsync waits for it.
                super::snapshotter::dispose(shared, compacted);
                tracing::debug!(snapshot = index, through, "log compacted behind a snapshot");
            }
            super::snapshotter::done(shared);
        }
    }
}

/// The value of a storage step, or `None` when the log writer must stop: storage failed (the
/// node stops serving), the harness crashed this instance (its successor owns the disk), or
/// the node is shutting down.
fn check<M, T>(shared: &Shared<M>, outcome: Result<T, StorageError>) -> Option<T> {
    match outcome {
        Ok(value) if shared.is_serving() => Some(value),
        Ok(_) | Err(StorageError::Crashed) => None,
        Err(error) => {
            shared.fail(error.to_string());
            None
        }
    }
}
