//! A deterministic, single-threaded network of pure Raft cores with crash-faithful storage.
//!
//! No threads, no clocks: the test decides when each node ticks and when messages move. Used
//! by the paper-named core tests and as the engine of the seeded simulator.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::Config;
use crate::node::driver::{self, ApplyItem, LocalSnapshot, Persister};
use crate::raft::{Message, Raft, ReadState};
use crate::state_machine::{RestoreError, StateMachine};
use crate::storage::mem::{MemDisk, MemStorage};
use crate::storage::Storage;
use crate::types::{Entry, EntryId, EntryPayload, LogIndex, Membership, NodeId};

/// The core tests have no state machine: snapshots carry whatever bytes the test gives.
struct Opaque;

impl StateMachine for Opaque {
    fn apply(&mut self, _id: EntryId, _command: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn snapshot(&mut self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _data: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// One node of a [`CoreNetwork`].
#[derive(Debug)]
pub struct CoreNode {
    /// The consensus core.
    pub raft: Raft,
    disk: MemDisk,
    storage: MemStorage,
    /// The shared driver's log-writer state.
    persister: Persister,
    /// Every committed entry handed to this node's applier, in order, across restarts.
    pub applied: Vec<Entry>,
    /// Read states received.
    pub read_states: Vec<ReadState>,
    /// Snapshots received from a leader and installed, in order.
    pub installed_snapshots: Vec<crate::types::EntryId>,
}

/// N pure cores joined by an in-memory message queue with cuttable links.
#[derive(Debug)]
pub struct CoreNetwork {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, CoreNode>,
    membership: Membership,
    /// Nodes added after the start, which boot knowing no configuration (they learn it from
    /// the leader, as a joining node does).
    joined: BTreeSet<NodeId>,
    make_config: fn(NodeId) -> Config,
    /// Messages sent and not yet delivered, oldest first.
    pub in_flight: VecDeque<Message>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    seed: u64,
    restarts: u64,
}

impl CoreNetwork {
    /// `size` nodes with ids 1..=size and default configuration.
    pub fn new(size: u64, seed: u64) -> CoreNetwork {
        CoreNetwork::with_config(size, seed, Config::new)
    }

    /// `size` nodes whose configurations `make_config` builds.
    pub fn with_config(size: u64, seed: u64, make_config: fn(NodeId) -> Config) -> CoreNetwork {
        let ids: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let membership = Membership::new(ids.iter().copied());
        let mut network = CoreNetwork {
            nodes: BTreeMap::new(),
            membership,
            joined: BTreeSet::new(),
            make_config,
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            seed,
            restarts: 0,
        };
        for id in ids {
            let disk = MemDisk::new();
            let node = network.open_node(id, disk);
            network.nodes.insert(id, node);
        }
        network
    }

    fn open_node(&mut self, id: NodeId, disk: MemDisk) -> CoreNode {
        let mut storage = disk.open();
        self.restarts += 1;
        let seed = self.seed ^ (id.0 << 32) ^ self.restarts;
        let bootstrap = if self.joined.contains(&id) {
            Membership::default()
        } else {
            self.membership.clone()
        };
        let recovery = driver::recover(
            (self.make_config)(id),
            &mut storage,
            bootstrap,
            &mut Opaque,
            seed,
        )
        .unwrap_or_else(|error| panic!("{id}: recovery failed: {error}"));
        CoreNode {
            raft: recovery.raft,
            disk,
            storage,
            persister: recovery.persister,
            applied: Vec::new(),
            read_states: Vec::new(),
            installed_snapshots: Vec::new(),
        }
    }

    /// Starts a new, empty node `id` that knows no configuration: it does nothing until a
    /// leader adds it and replicates to it (as `keyval --join` does).
    pub fn add_node(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "{id} exists");
        self.joined.insert(id);
        let node = self.open_node(id, MemDisk::new());
        self.nodes.insert(id, node);
    }

    /// Proposes a membership change on `id` and runs the network until it is quiet.
    pub fn change(
        &mut self,
        id: NodeId,
        changes: &[crate::raft::MemberChange],
    ) -> Result<crate::types::EntryId, crate::error::MembershipError> {
        let started = self.node(id).propose_membership(changes)?;
        self.process_ready(id);
        self.stabilize();
        Ok(started)
    }

    /// Runs `ticks` rounds of ticking every node and delivering everything.
    pub fn run(&mut self, ticks: u64) {
        self.run_with(ticks, |_| true);
    }

    /// The node `id`.
    pub fn node(&mut self, id: NodeId) -> &mut Raft {
        &mut self.nodes.get_mut(&id).expect("no such node").raft
    }

    /// Ticks every node once and handles their Readys.
    pub fn tick_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.node(id).tick();
            self.process_ready(id);
        }
    }

    /// Handles `id`'s Ready with the runtime's driver, all at once: persist and sync, report
    /// persistence, then queue its messages and record committed entries and read states.
    pub fn process_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("no such node");
        if !node.raft.has_ready() {
            return;
        }
        let routed = driver::split(node.raft.take_ready());
        self.in_flight.extend(routed.messages);
        if let Some(request) = routed.persist {
            if let Some(installed) = &request.snapshot {
                node.installed_snapshots.push(installed.snapshot.meta.last);
            }
            let released = node
                .persister
                .persist_batch(&mut node.storage, vec![request])
                .unwrap_or_else(|error| panic!("{id}: persist: {error}"));
            if let Some(last) = released.last_entry {
                node.raft.on_persisted(last);
            }
            self.in_flight.extend(released.messages);
        }
        node.applied
            .extend(routed.apply.into_iter().filter_map(|item| match item {
                ApplyItem::Entry(entry) => Some(entry),
                ApplyItem::Snapshot(_) => None,
            }));
        node.read_states.extend(routed.read_states);
    }

    /// Delivers one message if its link is up. Returns false when nothing is in flight.
    pub fn deliver_one(&mut self) -> bool {
        let Some(message) = self.in_flight.pop_front() else {
            return false;
        };
        let to = message.to;
        if self.cut.contains(&(message.from, to)) || !self.nodes.contains_key(&to) {
            return true;
        }
        let _ = self.node(to).step(message);
        self.process_ready(to);
        true
    }

    /// Processes every Ready and delivers messages until the network is quiet.
    pub fn stabilize(&mut self) {
        for _ in 0..1_000_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.process_ready(id);
            }
            if !self.deliver_one() {
                return;
            }
        }
        panic!("network did not stabilize");
    }

    /// Runs `ticks` rounds of: tick every node, then deliver everything in flight (including
    /// what the deliveries send) one message at a time through `intercept`, which may inspect
    /// or alter a message and returns whether to deliver it (false drops it).
    pub fn run_with(&mut self, ticks: u64, mut intercept: impl FnMut(&mut Message) -> bool) {
        for _ in 0..ticks {
            self.tick_all();
            while let Some(mut message) = self.in_flight.pop_front() {
                if !intercept(&mut message) || self.cut.contains(&(message.from, message.to)) {
                    continue;
                }
                let to = message.to;
                if !self.nodes.contains_key(&to) {
                    continue;
                }
                let _ = self.node(to).step(message);
                self.process_ready(to);
            }
        }
    }

    /// Rounds of ticking every node and delivering everything, until some node leads or
    /// `ticks_max` rounds have passed. Returns whether a node leads.
    pub fn tick_until_leader(&mut self, ticks_max: u64) -> bool {
        for _ in 0..ticks_max {
            self.tick_all();
            self.stabilize();
            if !self.leaders().is_empty() {
                return true;
            }
        }
        false
    }

    /// Makes `id` campaign and runs the network until it is quiet.
    pub fn elect(&mut self, id: NodeId) {
        self.node(id).start_election();
        self.process_ready(id);
        self.stabilize();
    }

    /// Proposes `command` on `id` and runs the network until it is quiet.
    pub fn propose(&mut self, id: NodeId, command: &[u8]) -> Result<(), crate::ProposeError> {
        self.node(id).propose(command.to_vec())?;
        self.process_ready(id);
        self.stabilize();
        Ok(())
    }

    /// Takes a snapshot on `id` at its applied index with `data` as the state machine's bytes,
    /// saves it, and compacts storage and the core's log through `compact_through`.
    pub fn snapshot(&mut self, id: NodeId, data: Vec<u8>, compact_through: LogIndex) {
        let node = self.nodes.get_mut(&id).expect("no such node");
        let last_index = node.raft.log().applied_handed();
        let term = node
            .raft
            .log()
            .term(last_index)
            .expect("applied entry is held");
        let meta = crate::types::SnapshotMeta {
            last: crate::types::EntryId::new(term, last_index),
            // As of the snapshot's last entry: the latest configuration may be uncommitted.
            membership: node
                .raft
                .membership_at(last_index)
                .expect("the applied index is in the log"),
        };
        let local = LocalSnapshot {
            snapshot: crate::raft::SnapshotData::new(meta, std::sync::Arc::new(data)),
            compact_through: compact_through.min(last_index),
            staged: None,
        };
        let saved = node
            .persister
            .save_local_snapshot(&mut node.storage, local)
            .unwrap_or_else(|error| panic!("{id}: saving a snapshot: {error}"));
        if let Some(local) = saved {
            node.raft.compact(local.snapshot, local.compact_through);
        }
    }

    /// Drops every message on the directed link `from -> to`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `id` (losing everything not synced and every message in flight to it) and
    /// restarts it from its disk.
    pub fn crash_and_restart(&mut self, id: NodeId) {
        let old = self.nodes.remove(&id).expect("no such node");
        self.in_flight.retain(|message| message.to != id);
        let mut node = self.open_node(id, old.disk);
        node.applied = old.applied;
        // A restarted node re-applies from its snapshot (here: from the start).
        node.applied.clear();
        self.nodes.insert(id, node);
    }

    /// Replaces `id` with a node whose durable log holds entries of the given terms (index 1
    /// on) and whose term is `term` — for setting up the paper's figures.
    pub fn set_log(&mut self, id: NodeId, terms: &[u64], term: u64) {
        let disk = MemDisk::new();
        let mut storage = disk.open();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(k, &entry_term)| Entry {
                id: crate::types::EntryId::new(
                    crate::types::Term(entry_term),
                    LogIndex(k as u64 + 1),
                ),
                payload: EntryPayload::Command(format!("{id}-{k}").into_bytes()),
            })
            .collect();
        storage.append(&entries).expect("append");
        storage
            .save_hard_state(crate::types::HardState {
                term: crate::types::Term(term),
                vote: None,
            })
            .expect("hard state");
        storage.sync().expect("sync");
        self.in_flight.retain(|message| message.to != id);
        let node = self.open_node(id, disk);
        self.nodes.insert(id, node);
    }

    /// The ids of nodes that believe they lead, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, crate::types::Term)> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.raft.is_leader())
            .map(|(&id, node)| (id, node.raft.term()))
            .collect()
    }

    /// The commands applied by `id`, in order (no-ops left out).
    pub fn applied_commands(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.nodes[&id]
            .applied
            .iter()
            .filter_map(|entry| match &entry.payload {
                EntryPayload::Command(command) => Some(command.clone()),
                _ => None,
            })
            .collect()
    }

    /// The commit index of `id`.
    pub fn committed(&self, id: NodeId) -> LogIndex {
        self.nodes[&id].raft.log().committed()
    }
}
