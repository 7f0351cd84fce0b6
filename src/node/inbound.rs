//! The `inbound` thread: steps batches of peer messages into the core under one lock.

use crossbeam_channel::{select, Receiver};

use crate::node::Shared;
use crate::transport::Inbound;

/// Messages stepped per lock hold at most.
const STEP_BATCH_MAX: usize = 512;

pub(super) fn run<M>(shared: &Shared<M>, inbound: &Receiver<Inbound>, shutdown: &Receiver<()>) {
    let mut batch = Vec::with_capacity(STEP_BATCH_MAX);
    loop {
        select! {
            recv(inbound) -> message => match message {
                Ok(message) => batch.push(message),
                Err(_) => return,
            },
            recv(shutdown) -> _ => return,
        }
        while batch.len() < STEP_BATCH_MAX {
            match inbound.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        if !shared.is_serving() {
            batch.clear();
            continue;
        }
        let mut core = shared.core.lock();
        // The time before the step: what is heard from a leader is dated no earlier than heard.
        core.raft
            .advance_clock(super::ticker::clock_reading(shared.clock_origin));
        for (sender, message) in batch.drain(..) {
            if sender != message.from {
                continue; // a peer speaking for another node
            }
            core.observer.message_received(&message);
            // Ignored messages are normal in Raft (stale terms after an election, say).
            let _ = core.raft.step(message);
        }
        shared.route(&mut core);
    }
}
