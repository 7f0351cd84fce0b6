//! The `log-writer` thread: persists Readys with one sync per drained batch (group commit),
//! then releases the messages that waited for that durability and reports it to the core.
//! It also makes snapshots durable — received ones before the entries after them, local ones
//! before the log is compacted behind them.

use crossbeam_channel::{select, Receiver};

use crate::error::StorageError;
use crate::node::{LocalSnapshot, PersistRequest, Shared};
use crate::storage::Storage;
use crate::types::{EntryId, LogIndex};

pub(super) fn run<M>(
    shared: &Shared<M>,
    mut storage: Box<dyn Storage>,
    wake: &Receiver<()>,
    shutdown: &Receiver<()>,
) {
    // The newest snapshot saved: an older local snapshot must never replace it.
    let mut saved_snapshot = shared
        .core
        .lock()
        .raft
        .snapshot()
        .map_or(LogIndex(0), |snapshot| snapshot.meta.last.index);
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
            let released = persist_batch(storage.as_mut(), batch, &mut saved_snapshot);
            let Some((messages, last_entry)) = check(shared, released) else {
                return;
            };
            // Acks and commit progress go out before any local snapshot is written: they
            // depend only on this batch's sync.
            for message in messages {
                shared.transport.send(message);
            }
            if let Some(last) = last_entry {
                let mut core = shared.core.lock();
                core.raft.on_persisted(last);
                shared.route(&mut core);
            }
        }
        if let Some(local) = local_snapshot {
            let saved = save_local_snapshot(storage.as_mut(), local, &mut saved_snapshot);
            let Some(saved) = check(shared, saved) else {
                return;
            };
            if let Some(local) = saved {
                let mut core = shared.core.lock();
                core.raft.compact(local.snapshot, local.compact_through);
                shared.route(&mut core);
            }
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

/// What a persisted batch releases: the held-back messages and the last entry written.
type Released = (Vec<crate::raft::Message>, Option<EntryId>);

/// Writes a batch of Readys and syncs once.
fn persist_batch(
    storage: &mut dyn Storage,
    batch: Vec<PersistRequest>,
    saved_snapshot: &mut LogIndex,
) -> Result<Released, StorageError> {
    let mut last_entry = None;
    let mut messages = Vec::new();
    for request in batch {
        if let Some(hard_state) = request.hard_state {
            storage.save_hard_state(hard_state)?;
        }
        if let Some(installed) = request.snapshot {
            let snapshot = &installed.snapshot;
            let index = snapshot.meta.last.index;
            storage.save_snapshot(&snapshot.meta, &snapshot.data)?;
            if installed.keep_suffix {
                storage.compact(index)?;
            } else {
                storage.reset_log(index)?;
            }
            *saved_snapshot = (*saved_snapshot).max(index);
        }
        if let Some(last) = request.entries.last() {
            storage.append(&request.entries)?;
            last_entry = Some(last.id);
        }
        messages.extend(request.messages);
    }
    storage.sync()?;
    Ok((messages, last_entry))
}

/// Makes a local snapshot durable, then compacts the stored log behind it. Returns it for
/// the core to compact its log too, unless a newer snapshot was saved meanwhile.
fn save_local_snapshot(
    storage: &mut dyn Storage,
    local: LocalSnapshot,
    saved_snapshot: &mut LogIndex,
) -> Result<Option<LocalSnapshot>, StorageError> {
    let index = local.snapshot.meta.last.index;
    if index <= *saved_snapshot {
        return Ok(None);
    }
    storage.save_snapshot(&local.snapshot.meta, &local.snapshot.data)?;
    *saved_snapshot = index;
    storage.compact(local.compact_through)?;
    Ok(Some(local))
}
