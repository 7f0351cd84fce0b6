//! How a node starts from what its storage holds: the runtime must seed its state exactly as
//! the simulation does (through the shared driver), or what it does next — snapshots, the
//! configuration it stamps on them — diverges from what the simulation checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyval::node::{Node, NodeOptions};
use keyval::raft::{Message, MessageBody};
use keyval::storage::mem::MemDisk;
use keyval::storage::Storage;
use keyval::transport::Transport;
use keyval::{
    Config, Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, NodeId, StateMachine,
    Term,
};

/// A state machine that remembers how many commands it applied.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    fn apply(&mut self, _id: EntryId, _command: &[u8]) -> Vec<u8> {
        self.0 += 1;
        Vec::new()
    }
    fn snapshot(&mut self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), keyval::state_machine::RestoreError> {
        let bytes: [u8; 8] = data.try_into().map_err(|_| "not a counter")?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

/// A transport that drops everything: the test plays the leader by hand.
struct Nowhere;

impl Transport for Nowhere {
    fn send(&self, _message: Message) {}
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// PITFALLS #20. A node restarts holding a configuration entry that never committed (here a
/// one-voter configuration at index 2), then snapshots at index 1. The snapshot must carry
/// the configuration in force at index 1 — the bootstrap's three voters — not the newest one
/// in the log: the uncommitted entry may be truncated by the real leader, and a snapshot
/// stamped with it would later make this node a one-voter cluster of its own (split brain).
#[test]
fn a_snapshot_after_a_restart_carries_the_configuration_at_its_index() {
    let bootstrap = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let disk = MemDisk::new();
    {
        let mut storage = disk.open();
        storage
            .append(&[
                Entry {
                    id: EntryId::new(Term(1), LogIndex(1)),
                    payload: EntryPayload::Command(b"first".to_vec()),
                },
                Entry {
                    id: EntryId::new(Term(1), LogIndex(2)),
                    payload: EntryPayload::Membership(Membership::new([NodeId(1)])),
                },
            ])
            .unwrap();
        storage
            .save_hard_state(HardState {
                term: Term(1),
                vote: Some(NodeId(2)),
            })
            .unwrap();
        storage.sync().unwrap();
    }
    let (inbound_tx, inbound) = keyval::transport::inbound_channel();
    let mut config = Config::new(NodeId(1));
    // No election while the test plays the leader.
    config.election_ticks = 1_000;
    let node = Node::start(NodeOptions {
        config,
        membership: bootstrap.clone(),
        storage: Box::new(disk.open()),
        transport: Arc::new(Nowhere),
        inbound,
        state_machine: Counter::default(),
        seed: 7,
    })
    .expect("node starts");
    // The leader of term 5 (n2) commits index 1 only.
    let append = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(5),
        body: MessageBody::AppendEntries {
            prev: EntryId::new(Term(1), LogIndex(1)),
            entries: Vec::new(),
            leader_commit: LogIndex(1),
        },
    };
    inbound_tx.send((NodeId(2), append)).unwrap();
    wait_for("index 1 applied", || node.status().applied >= LogIndex(1));
    node.request_snapshot();
    wait_for("a local snapshot", || node.latest_snapshot().is_some());
    let snapshot = node.latest_snapshot().unwrap();
    assert_eq!(snapshot.meta.last, EntryId::new(Term(1), LogIndex(1)));
    assert_eq!(
        snapshot.meta.membership, bootstrap,
        "the snapshot at index 1 carries a configuration that was only appended at index 2"
    );
}
