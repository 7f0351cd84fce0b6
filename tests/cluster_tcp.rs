//! Threaded node runtimes over the real std-TCP peer transport on loopback: election,
//! replication, and failover when the leader is shut down — two nodes with the transport's
//! readers stepping messages into the core themselves (as the `keyval` binary runs), one
//! through the inbound queue and thread.

mod server_support;

use std::sync::Arc;
use std::time::Instant;

use keyval::node::{Node, NodeOptions};
use keyval::raft::RoleKind;
use keyval::storage::mem::MemStorage;
use keyval::testkit::CommandLog;
use keyval::transport::Transport;
use keyval::{Config, Membership, NodeId};
use server_support::{wait_for, WAIT};

#[test]
fn three_nodes_over_tcp_elect_replicate_and_fail_over() {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let membership = Membership::new(ids.iter().copied());
    let (transports, receivers) = server_support::tcp_mesh(&ids);
    let mut nodes: Vec<Option<Node<CommandLog>>> = Vec::new();
    for (k, inbound) in receivers.into_iter().enumerate() {
        let transport: Arc<dyn Transport> = transports[k].clone();
        let node = Node::start(NodeOptions {
            config: Config::new(ids[k]),
            membership: membership.clone(),
            storage: Box::new(MemStorage::new()),
            transport,
            inbound,
            state_machine: CommandLog::default(),
            seed: k as u64,
        })
        .unwrap();
        if k < 2 {
            assert!(transports[k].deliver_directly(node.peer_delivery()));
            assert!(
                !transports[k].deliver_directly(node.peer_delivery()),
                "a second target is refused"
            );
        }
        nodes.push(Some(node));
    }
    let leader_index = |nodes: &[Option<Node<CommandLog>>]| {
        nodes.iter().position(|node| {
            node.as_ref()
                .is_some_and(|node| node.status().role == RoleKind::Leader)
        })
    };
    assert!(
        wait_for(|| leader_index(&nodes).is_some()),
        "no leader over TCP"
    );
    let leader = leader_index(&nodes).unwrap();
    for k in 0..20u8 {
        let node = nodes[leader].as_ref().unwrap();
        node.propose(vec![k], Instant::now() + WAIT).unwrap();
    }
    // Every node applies all twenty.
    assert!(wait_for(|| nodes.iter().flatten().all(|node| {
        node.read_local(|log| log.commands.len()).1 == 20
    })));
    // Stop the leader: the other two elect a new one and keep committing.
    nodes[leader].take().unwrap().shutdown();
    transports[leader].stats();
    assert!(wait_for(|| leader_index(&nodes).is_some()), "no failover");
    let new_leader = leader_index(&nodes).unwrap();
    assert_ne!(new_leader, leader);
    let node = nodes[new_leader].as_ref().unwrap();
    node.propose(b"after failover".to_vec(), Instant::now() + WAIT)
        .unwrap();
    let commands = node
        .read(Instant::now() + WAIT, |log| log.commands.clone())
        .unwrap();
    assert_eq!(commands.len(), 21);
    assert_eq!(commands.last().unwrap(), b"after failover");
    // The nodes now hold their transports alone: dropping a node drops its transport, whose
    // readers may be stepping into that very node at the time. It must not hang.
    drop(transports);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for node in nodes.into_iter().flatten() {
            drop(node);
        }
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(WAIT).is_ok(),
        "dropping the nodes (and with them their transports) hung"
    );
}
