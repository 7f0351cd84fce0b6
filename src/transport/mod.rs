//! Moving Raft messages between nodes: the [`Transport`] contract, with a simulated network
//! ([`sim`]) for the harness and std TCP for real deployments.

pub mod sim;
pub mod tcp;

use crossbeam_channel::{Receiver, Sender};

use crate::limits;
use crate::raft::Message;
use crate::types::{Membership, NodeId};

/// Sends messages to peers. Implementations never block the caller: a message that cannot be
/// queued is dropped (Raft retransmits), and counted.
pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for `message.to`.
    fn send(&self, message: Message);

    /// The configuration changed: learn the addresses of new members. Called outside the core
    /// lock. Transports that need no addresses (the simulated network) ignore it.
    fn update_members(&self, membership: &Membership) {
        let _ = membership;
    }
}

/// An inbound message with the sender as the transport authenticated it (the TCP handshake's
/// node id). The node drops a message whose `from` differs, so a peer cannot speak for another.
pub type Inbound = (NodeId, Message);

/// Takes inbound messages on the transport's own reader threads, instead of a queue to another
/// thread: one wake-up fewer for every batch a peer sends ([`crate::node::Node::peer_delivery`]
/// steps them straight into the core). A transport that has one calls it for every batch it
/// reads; before it has one (or without one) it uses its queue.
pub trait Deliver<M>: Send + Sync + 'static {
    /// Takes every message of `messages` (leaving it empty), all sent by `from` and read
    /// together off one connection, in the order sent. It may wait briefly for a lock (a
    /// busy node slows its peers down through TCP) but never for I/O.
    fn deliver(&self, from: NodeId, messages: &mut Vec<M>);
}

/// The bounded queue through which a transport hands inbound messages to a node.
pub fn inbound_channel() -> (Sender<Inbound>, Receiver<Inbound>) {
    crossbeam_channel::bounded(limits::INBOUND_QUEUE_CAPACITY)
}

impl Transport for tcp::TcpTransport<Message> {
    fn send(&self, message: Message) {
        tcp::TcpTransport::send(self, message.to, message);
    }

    /// Learns (or updates) the peer address of every member that carries one. Members that
    /// leave keep their address: the leader still tells them of their removal.
    fn update_members(&self, membership: &Membership) {
        let known = self.peers();
        for (&id, address) in &membership.addresses {
            if id == self.id() || address.peer.is_empty() {
                continue;
            }
            use std::net::ToSocketAddrs;
            // A literal `ip:port` resolves without a lookup.
            let resolved = address
                .peer
                .to_socket_addrs()
                .ok()
                .and_then(|mut resolved| resolved.next());
            let Some(resolved) = resolved else {
                crate::log::warn(
                    "cannot resolve a member's peer address",
                    &[("member", &id), ("address", &address.peer)],
                );
                continue;
            };
            if known.get(&id) != Some(&resolved) {
                if let Err(error) = self.set_peer_address(id, resolved) {
                    crate::log::warn(
                        "cannot use a member's peer address",
                        &[("member", &id), ("error", &error)],
                    );
                }
            }
        }
    }
}
