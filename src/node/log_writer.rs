//! The `log-writer` thread: persists Readys with one sync per drained batch (group commit),
//! then releases the messages that waited for that durability and reports it to the core.

use crossbeam_channel::{select, Receiver};

use crate::error::StorageError;
use crate::node::Shared;
use crate::storage::Storage;

pub(super) fn run<M>(
    shared: &Shared<M>,
    mut storage: Box<dyn Storage>,
    wake: &Receiver<()>,
    shutdown: &Receiver<()>,
) {
    loop {
        select! {
            recv(wake) -> _ => {}
            recv(shutdown) -> _ => return,
        }
        let batch = std::mem::take(&mut shared.core.lock().persist_outbox);
        if batch.is_empty() {
            continue;
        }
        let mut last_entry = None;
        let mut messages = Vec::new();
        let outcome = (|| -> Result<(), StorageError> {
            for request in batch {
                if let Some(hard_state) = request.hard_state {
                    storage.save_hard_state(hard_state)?;
                }
                if let Some(last) = request.entries.last() {
                    storage.append(&request.entries)?;
                    last_entry = Some(last.id);
                }
                messages.extend(request.messages);
            }
            storage.sync()
        })();
        match outcome {
            Ok(()) => {}
            // The harness crashed this instance: its successor owns the disk now.
            Err(StorageError::Crashed) => return,
            Err(error) => {
                shared.fail(error.to_string());
                return;
            }
        }
        if !shared.is_serving() {
            return;
        }
        for message in messages {
            shared.transport.send(message);
        }
        if let Some(last) = last_entry {
            let mut core = shared.core.lock();
            core.raft.on_persisted(last);
            shared.route(&mut core);
        }
    }
}
