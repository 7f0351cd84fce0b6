//! Moving Raft messages between nodes: the [`Transport`] contract, with a simulated network
//! ([`sim`]) for the harness and std TCP for real deployments.

pub mod sim;
pub mod tcp;

use crossbeam_channel::{Receiver, Sender};

use crate::limits;
use crate::raft::Message;

/// Sends messages to peers. Implementations never block the caller: a message that cannot be
/// queued is dropped (Raft retransmits), and counted.
pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for `message.to`.
    fn send(&self, message: Message);
}

/// The bounded queue through which a transport hands inbound messages to a node.
pub fn inbound_channel() -> (Sender<Message>, Receiver<Message>) {
    crossbeam_channel::bounded(limits::INBOUND_QUEUE_CAPACITY)
}
