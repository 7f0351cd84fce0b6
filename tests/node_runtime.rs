//! The threaded runtime at its edges, one `Node` at a time with the test playing its peers:
//! how it starts from what its storage holds (it must seed its state exactly as the
//! simulation does, through the shared driver, or what it does next — snapshots, the
//! configuration it stamps on them — diverges from what the simulation checks), and how it
//! stops when its storage fails.

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

/// Issue #11 item 8 (PITFALLS #25): after a failed fsync the node stops serving and says so —
/// it no longer reports itself leader (clients and operators would keep sending it work) and
/// every later proposal and read fails with the reason.
#[test]
fn a_node_whose_storage_failed_stops_acting_on_its_role() {
    let disk = MemDisk::new();
    let (_inbound_tx, inbound) = keyval::transport::inbound_channel();
    let node = Node::start(NodeOptions {
        config: Config::new(NodeId(1)),
        membership: Membership::new([NodeId(1)]),
        storage: Box::new(disk.open()),
        transport: Arc::new(Nowhere),
        inbound,
        state_machine: Counter::default(),
        seed: 3,
    })
    .expect("node starts");
    wait_for("a leader", || {
        node.status().role == keyval::raft::RoleKind::Leader
    });
    let deadline = || Instant::now() + Duration::from_secs(30);
    node.propose(b"before".to_vec(), deadline())
        .expect("a write before the failure commits");
    disk.fail_next_sync();
    let error = node
        .propose(b"lost".to_vec(), deadline())
        .expect_err("a write whose sync failed is not acknowledged");
    assert!(
        matches!(error, keyval::ProposeError::Storage { .. }),
        "{error:?}"
    );
    let status = node.status();
    assert!(status.failed);
    assert_eq!(status.role, keyval::raft::RoleKind::Follower, "{status:?}");
    assert_eq!(status.leader, None, "{status:?}");
    assert!(node
        .failure()
        .is_some_and(|reason| reason.contains("injected")));
    assert!(node.read_barrier(deadline()).is_err());
    assert!(node.propose(b"after".to_vec(), deadline()).is_err());
}

/// Issue #11 item 5: the bootstrap configuration is recorded at the first start. A later
/// start with another one is refused before anything runs; an empty one uses the recorded.
#[test]
fn a_restart_with_another_bootstrap_configuration_is_refused() {
    let three = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let disk = MemDisk::new();
    let start = |membership: Membership| {
        let (_inbound_tx, inbound) = keyval::transport::inbound_channel();
        let mut config = Config::new(NodeId(1));
        config.election_ticks = 1_000;
        Node::start(NodeOptions {
            config,
            membership,
            storage: Box::new(disk.open()),
            transport: Arc::new(Nowhere),
            inbound,
            state_machine: Counter::default(),
            seed: 5,
        })
    };
    let node = start(three.clone()).expect("first start");
    node.shutdown();
    drop(node);
    match start(Membership::new([NodeId(1)])) {
        Err(keyval::node::StartError::BootstrapConflict(conflict)) => {
            assert_eq!(conflict.recorded, three);
            assert_eq!(conflict.given, Membership::new([NodeId(1)]));
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(node) => panic!(
            "started with a one-voter configuration on a three-voter cluster's data: {:?}",
            node.members()
        ),
    }
    let node = start(Membership::default()).expect("an empty configuration uses the recorded");
    assert_eq!(node.members(), three);
    node.shutdown();
    drop(node);
    start(three).expect("the recorded configuration again");
}

/// A state machine whose snapshots serialize only when the test lets them.
struct SlowToSerialize {
    applied: u64,
    release: crossbeam_channel::Receiver<()>,
}

impl StateMachine for SlowToSerialize {
    fn apply(&mut self, _id: EntryId, _command: &[u8]) -> Vec<u8> {
        self.applied += 1;
        Vec::new()
    }
    fn snapshot(&mut self) -> Vec<u8> {
        self.applied.to_le_bytes().to_vec()
    }
    fn snapshot_writer(&mut self) -> keyval::state_machine::SnapshotWriter {
        let frozen = self.applied;
        let release = self.release.clone();
        Box::new(move || {
            let _ = release.recv_timeout(Duration::from_secs(60));
            frozen.to_le_bytes().to_vec()
        })
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), keyval::state_machine::RestoreError> {
        let bytes: [u8; 8] = data.try_into().map_err(|_| "not a counter")?;
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }
}

/// Issue #12: serializing a snapshot never stops the applier. While a snapshot's
/// serialization is held up, writes keep committing and applying; the snapshot lands once it
/// is released, carrying the state as it was frozen.
#[test]
fn writes_apply_while_a_snapshot_is_being_serialized() {
    let (release_tx, release) = crossbeam_channel::bounded(1);
    let (_inbound_tx, inbound) = keyval::transport::inbound_channel();
    let node = Node::start(NodeOptions {
        config: Config::new(NodeId(1)),
        membership: Membership::new([NodeId(1)]),
        storage: Box::new(MemDisk::new().open()),
        transport: Arc::new(Nowhere),
        inbound,
        state_machine: SlowToSerialize {
            applied: 0,
            release,
        },
        seed: 9,
    })
    .expect("node starts");
    wait_for("a leader", || {
        node.status().role == keyval::raft::RoleKind::Leader
    });
    let deadline = || Instant::now() + Duration::from_secs(30);
    node.propose(b"one".to_vec(), deadline()).unwrap();
    node.request_snapshot();
    // The snapshot is frozen at the next apply and then waits in serialization.
    node.propose(b"two".to_vec(), deadline()).unwrap();
    for k in 0..20 {
        node.propose(format!("more-{k}").into_bytes(), deadline())
            .expect("a write applies while a snapshot serializes");
    }
    assert!(node.latest_snapshot().is_none());
    assert_eq!(node.with_state_machine(|state| state.applied), 22);
    release_tx.send(()).unwrap();
    wait_for("the snapshot", || node.latest_snapshot().is_some());
    let snapshot = node.latest_snapshot().unwrap();
    let frozen = u64::from_le_bytes(snapshot.data[..8].try_into().unwrap());
    assert!(
        (1..=2).contains(&frozen),
        "the snapshot holds {frozen} commands, not the state at the request"
    );
    assert!(snapshot.meta.last.index < node.status().applied);
}

/// Quorum-loss recovery through the library, as `keyval --force-new-cluster` runs it: the
/// survivor's storage is forced, then the node starts through the ordinary recovery path. It
/// elects itself, applies every entry it held (the old tail included), takes writes, and a
/// restart stays a one-member cluster: the old configuration is refused. A power cut after the
/// operation's first durable step leaves the old cluster, and running it again finishes it.
#[test]
fn a_forced_survivor_starts_alone_with_its_whole_log_and_stays_alone() {
    use keyval::node::{force_new_cluster, ForceOptions};

    let three = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let disk = MemDisk::new();
    {
        let mut storage = disk.open();
        storage.save_bootstrap(&three).unwrap();
        let log: Vec<Entry> = (1..=5)
            .map(|index| Entry {
                id: EntryId::new(Term(2), LogIndex(index)),
                payload: EntryPayload::Command(vec![index as u8]),
            })
            .collect();
        storage.append(&log).unwrap();
        storage
            .save_hard_state(HardState {
                term: Term(3),
                vote: Some(NodeId(2)),
            })
            .unwrap();
        storage.sync().unwrap();
    }
    let start = |membership: Membership| {
        let (_inbound_tx, inbound) = keyval::transport::inbound_channel();
        Node::start(NodeOptions {
            config: Config::new(NodeId(1)),
            membership,
            storage: Box::new(disk.open()),
            transport: Arc::new(Nowhere),
            inbound,
            state_machine: Counter::default(),
            seed: 9,
        })
    };
    let options = ForceOptions {
        id: NodeId(1),
        peer_address: None,
        client_address: None,
        forced_before: false,
    };
    // The power goes out at the second durable step (the configuration entry's sync).
    disk.cut_power_after(1);
    assert!(force_new_cluster(&mut disk.open(), &options).is_err());
    disk.restore_power();
    let node = start(Membership::default()).expect("start after the cut");
    assert_eq!(
        node.members(),
        three,
        "a cut before the entry leaves the old cluster"
    );
    node.shutdown();
    drop(node);

    let forced = force_new_cluster(&mut disk.open(), &options).expect("forced");
    let node = start(Membership::default()).expect("forced start");
    assert_eq!(node.members(), forced.membership);
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_for("a write after the forced start", || {
        node.propose(b"after".to_vec(), deadline).is_ok()
    });
    assert_eq!(
        node.with_state_machine(|counter| counter.0),
        6,
        "every old entry applied, then the new write"
    );
    node.shutdown();
    drop(node);

    match start(three) {
        Err(keyval::node::StartError::BootstrapConflict(conflict)) => {
            assert_eq!(conflict.current, forced.membership);
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(node) => panic!("the old configuration was accepted: {:?}", node.members()),
    }
    let node = start(Membership::default()).expect("restart");
    assert_eq!(node.members(), forced.membership);
    wait_for("a write after the restart", || {
        node.propose(b"again".to_vec(), deadline).is_ok()
    });
    assert_eq!(node.with_state_machine(|counter| counter.0), 7);
    node.shutdown();
}
