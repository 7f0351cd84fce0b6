//! Moving Raft messages between nodes: the [`Transport`] contract, with a simulated network
//! ([`sim`]) for the harness and std TCP for real deployments.

pub mod sim;
pub mod tcp;

use crossbeam_channel::{Receiver, Sender};

use crate::limits;
use crate::raft::Message;
use crate::types::NodeId;

/// Sends messages to peers. Implementations never block the caller: a message that cannot be
/// queued is dropped (Raft retransmits), and counted.
pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for `message.to`.
    fn send(&self, message: Message);
}

/// An inbound message with the sender as the transport authenticated it (the TCP handshake's
/// node id). The node drops a message whose `from` differs, so a peer cannot speak for another.
pub type Inbound = (NodeId, Message);

/// The bounded queue through which a transport hands inbound messages to a node.
pub fn inbound_channel() -> (Sender<Inbound>, Receiver<Inbound>) {
    crossbeam_channel::bounded(limits::INBOUND_QUEUE_CAPACITY)
}

impl Transport for tcp::TcpTransport<Message> {
    fn send(&self, message: Message) {
        tcp::TcpTransport::send(self, message.to, message);
    }
}
