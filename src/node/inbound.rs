//! Peer messages into the core: the `inbound` thread steps batches from the transport's queue
//! under one lock hold; a transport that delivers directly ([`PeerDelivery`]) has its reader
//! threads run the same step themselves, one wake-up fewer per batch.

use std::sync::{Arc, Weak};

use crossbeam_channel::{select, Receiver};

use crate::node::Shared;
use crate::raft::Message;
use crate::transport::{Deliver, Inbound};
use crate::types::NodeId;

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
        step(shared, batch.drain(..));
    }
}

/// Steps `messages` into the core under one lock hold and routes what they produce: the
/// inbound thread's work, and a transport reader's when the transport delivers directly
/// ([`PeerDelivery`]).
fn step<M>(shared: &Shared<M>, messages: impl Iterator<Item = Inbound>) {
    if !shared.is_serving() {
        return; // dropping the messages: a stopped node hears nothing
    }
    let mut core = shared.core.lock();
    // The time before the step: what is heard from a leader is dated no earlier than heard.
    core.raft
        .advance_clock(super::ticker::clock_reading(shared.clock_origin));
    for (sender, message) in messages {
        if sender != message.from {
            continue; // a peer speaking for another node
        }
        core.observer.message_received(&message);
        // Ignored messages are normal in Raft (stale terms after an election, say).
        let _ = core.raft.step(message);
    }
    shared.route(&mut core);
}

/// Steps peer messages into the core on the transport's reader thread
/// ([`crate::node::Node::peer_delivery`]). Holds the node weakly: the transport outlives
/// nothing it should not, and a node that is gone drops what arrives.
pub(super) struct PeerDelivery<M> {
    pub(super) shared: Weak<Shared<M>>,
}

impl<M: Send + 'static> Deliver<Message> for PeerDelivery<M> {
    fn deliver(&self, from: NodeId, messages: &mut Vec<Message>) {
        let Some(shared) = self.shared.upgrade() else {
            messages.clear();
            return;
        };
        step(&shared, messages.drain(..).map(|message| (from, message)));
        // The node may have gone while this reader stepped into it. Its last reference must
        // not be dropped here: dropping the node can drop the transport, whose shutdown joins
        // this very thread.
        if let Some(last) = Arc::into_inner(shared) {
            drop_elsewhere(last);
        }
    }
}

/// Drops `value` on a thread of its own; leaks it if no thread can be started (never drops
/// it on the calling thread).
fn drop_elsewhere<T: Send + 'static>(value: T) {
    let holder = Arc::new(parking_lot::Mutex::new(Some(value)));
    let theirs = Arc::clone(&holder);
    let spawned = std::thread::Builder::new()
        .name("node-release".to_string())
        .spawn(move || drop(theirs.lock().take()));
    if spawned.is_err() {
        std::mem::forget(holder);
    }
}
