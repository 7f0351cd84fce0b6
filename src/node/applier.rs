//! The `applier` thread: applies committed entries in order and answers their proposers.

use crossbeam_channel::{select, Receiver};

use crate::node::Shared;
use crate::state_machine::StateMachine;
use crate::types::EntryPayload;

pub(super) fn run<M: StateMachine>(
    shared: &Shared<M>,
    wake: &Receiver<()>,
    shutdown: &Receiver<()>,
) {
    loop {
        select! {
            recv(wake) -> _ => {}
            recv(shutdown) -> _ => return,
        }
        let entries = std::mem::take(&mut shared.core.lock().apply_outbox);
        let Some(last) = entries.last().map(|entry| entry.index()) else {
            continue;
        };
        let mut outputs = Vec::with_capacity(entries.len());
        {
            let mut state_machine = shared.state_machine.lock();
            for entry in &entries {
                let output = match &entry.payload {
                    EntryPayload::Command(command) => Some(state_machine.apply(entry.id, command)),
                    EntryPayload::Noop | EntryPayload::Membership(_) => None,
                };
                outputs.push((entry.id, output));
            }
        }
        *shared.applied.lock() = last;
        shared.applied_changed.notify_all();
        let mut waiters = shared.waiters.lock();
        waiters.complete_applied(last);
        for (id, output) in outputs {
            waiters.complete_proposal(id, output);
        }
    }
}
