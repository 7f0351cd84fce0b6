//! `Cluster`: N threaded nodes in one process over the simulated network, with fault controls,
//! crash/restart from durable state, and a record of what every node applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Config;
use crate::error::ProposeError;
use crate::node::{Node, NodeOptions, NodeStatus};

use crate::raft::RoleKind;
use crate::state_machine::{RestoreError, StateMachine};
use crate::storage::file::faulty::FaultyFileSystem;
use crate::storage::file::{FileOptions, FileStorage, Preallocation};
use crate::storage::mem::MemDisk;
use crate::storage::Storage;
use crate::testkit::recorder::{AppliedRecord, Recorded};
use crate::transport::sim::{NetworkCounters, SimNetwork, Unreliable};
use crate::transport::{inbound_channel, Transport};
use crate::types::{EntryId, LogIndex, Membership, NodeId};

/// Builds the state machine of a node (called again at every restart).
pub type StateMachineFactory<M> = Box<dyn Fn(NodeId) -> M + Send + Sync>;

/// Where harness nodes keep their durable state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// Crash-faithful memory ([`MemDisk`]): unsynced writes are lost at a crash.
    #[default]
    Memory,
    /// keyval's file storage over an in-memory disk with power-cut semantics: a crash loses
    /// every byte and name not made durable, and the dead instance can write nothing more.
    /// Small segments, so that rolling and compaction across files are exercised.
    FaultyFiles,
    /// keyval's file storage on the real disk with fsync, in a temporary directory per node.
    /// A crash drops the node and reopens its files (the OS page cache survives, so this
    /// checks the real I/O path rather than power loss).
    RealFiles,
}

/// Segment size of harness file storage: small, so tests roll many segments.
const HARNESS_SEGMENT_BYTES: u64 = 64 * 1024;

/// A harness node handle; shared, so clients keep working while faults happen.
pub type ClusterNode<M> = Arc<Node<Recorded<M>>>;

struct Slot<M: StateMachine> {
    node: Option<ClusterNode<M>>,
    disk: MemDisk,
    faulty_disk: FaultyFileSystem,
    record: Arc<Mutex<AppliedRecord>>,
    restarts: u64,
    /// Added with [`Cluster::add_node`]: boots knowing no configuration, like `--join`.
    joined: bool,
}

impl<M: StateMachine> Slot<M> {
    /// A node that has not run yet, with empty storage.
    fn new(joined: bool) -> Slot<M> {
        Slot {
            node: None,
            disk: MemDisk::new(),
            faulty_disk: FaultyFileSystem::new(),
            record: Arc::new(Mutex::new(AppliedRecord::default())),
            restarts: 0,
            joined,
        }
    }
}

/// Settings for a [`Cluster`].
pub struct ClusterBuilder<M: StateMachine> {
    size: u64,
    seed: u64,
    configure: Box<dyn Fn(&mut Config) + Send + Sync>,
    factory: StateMachineFactory<M>,
    storage: StorageKind,
}

impl<M: StateMachine> ClusterBuilder<M> {
    /// The seed of every random choice (election timeouts, network faults). Defaults to
    /// `KEYVAL_SEED` from the environment, else a random one; it is printed if a test fails.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Adjusts each node's configuration.
    pub fn configure(mut self, configure: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        self.configure = Box::new(configure);
        self
    }

    /// Where nodes keep their durable state (default: crash-faithful memory).
    pub fn storage(mut self, storage: StorageKind) -> Self {
        self.storage = storage;
        self
    }

    /// Starts the cluster.
    pub fn build(self) -> Cluster<M> {
        let network = SimNetwork::new(self.seed);
        let ids: Vec<NodeId> = (1..=self.size).map(NodeId).collect();
        let cluster = Cluster {
            ids: Mutex::new(ids.clone()),
            membership: Membership::new(ids.iter().copied()),
            slots: Mutex::new(BTreeMap::new()),
            network,
            seed: self.seed,
            configure: self.configure,
            factory: self.factory,
            storage: self.storage,
            files_root: tempfile_root(),
        };
        for id in ids {
            cluster.slots.lock().insert(id, Slot::new(false));
            cluster.restart(id);
        }
        cluster
    }
}

fn tempfile_root() -> std::path::PathBuf {
    let unique = format!(
        "keyval-cluster-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    );
    std::env::temp_dir().join(unique)
}

fn default_seed() -> u64 {
    std::env::var("KEYVAL_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random)
}

/// A state machine that records its commands: the default for harness tests.
#[derive(Debug, Default)]
pub struct CommandLog {
    /// Every command applied, in order.
    pub commands: Vec<Vec<u8>>,
}

impl StateMachine for CommandLog {
    fn apply(&mut self, id: EntryId, command: &[u8]) -> Vec<u8> {
        self.commands.push(command.to_vec());
        id.index.0.to_le_bytes().to_vec()
    }

    fn snapshot(&mut self) -> Vec<u8> {
        crate::codec::encode(&self.commands).unwrap_or_default()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), RestoreError> {
        self.commands = crate::codec::decode(data)?;
        Ok(())
    }
}

/// N nodes in one process. See the module docs.
pub struct Cluster<M: StateMachine> {
    /// Every node the harness runs or ran, initial and added.
    ids: Mutex<Vec<NodeId>>,
    membership: Membership,
    /// Locked only briefly: to look up, crash or restart a node.
    slots: Mutex<BTreeMap<NodeId, Slot<M>>>,
    network: SimNetwork,
    seed: u64,
    configure: Box<dyn Fn(&mut Config) + Send + Sync>,
    factory: StateMachineFactory<M>,
    storage: StorageKind,
    files_root: std::path::PathBuf,
}

impl Cluster<CommandLog> {
    /// `size` nodes with default settings and the [`CommandLog`] state machine.
    pub fn new(size: u64) -> Cluster<CommandLog> {
        Cluster::builder(size, |_| CommandLog::default()).build()
    }
}

impl<M: StateMachine> Cluster<M> {
    /// A builder for `size` nodes whose state machines `factory` makes.
    pub fn builder(
        size: u64,
        factory: impl Fn(NodeId) -> M + Send + Sync + 'static,
    ) -> ClusterBuilder<M> {
        ClusterBuilder {
            size,
            seed: default_seed(),
            configure: Box::new(|_| {}),
            factory: Box::new(factory),
            storage: StorageKind::Memory,
        }
    }

    /// The seed of this cluster's random choices.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The node ids: the initial ones and those added since.
    pub fn ids(&self) -> Vec<NodeId> {
        self.ids.lock().clone()
    }

    /// Starts a new node `id` with empty storage that knows no configuration (as a node
    /// started with `keyval --join` does): it does nothing until the leader adds it with
    /// [`Node::add_member`] and replicates to it.
    pub fn add_node(&self, id: NodeId) {
        {
            let mut slots = self.slots.lock();
            assert!(!slots.contains_key(&id), "{id} exists");
            slots.insert(id, Slot::new(true));
            self.ids.lock().push(id);
        }
        self.restart(id);
    }

    /// The data directory of node `id` on real files (`StorageKind::RealFiles`).
    pub fn data_dir(&self, id: NodeId) -> Option<std::path::PathBuf> {
        (self.storage == StorageKind::RealFiles).then(|| self.files_root.join(format!("{id}")))
    }

    /// The simulated network, for fault injection.
    pub fn network(&self) -> &SimNetwork {
        &self.network
    }

    /// The running node `id`, if it is not crashed.
    pub fn node(&self, id: NodeId) -> Option<ClusterNode<M>> {
        self.slots
            .lock()
            .get(&id)
            .and_then(|slot| slot.node.clone())
    }

    /// Whether `id` is running.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// Status of every running node.
    pub fn statuses(&self) -> Vec<NodeStatus> {
        let nodes: Vec<ClusterNode<M>> = self
            .slots
            .lock()
            .values()
            .filter_map(|slot| slot.node.clone())
            .collect();
        nodes.iter().map(|node| node.status()).collect()
    }

    /// The leader with the highest term among running nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.statuses()
            .into_iter()
            .filter(|status| status.role == RoleKind::Leader)
            .max_by_key(|status| status.term)
            .map(|status| status.id)
    }

    /// Polls `condition` until it holds or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, mut condition: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a leader that a majority of running nodes follow in its term; panics (with
    /// the seed) after `timeout`.
    pub fn wait_for_leader(&self, timeout: Duration) -> NodeId {
        let mut found = None;
        let ok = self.wait_for(timeout, |cluster| {
            found = cluster.stable_leader();
            found.is_some()
        });
        match (ok, found) {
            (true, Some(leader)) => leader,
            _ => panic!(
                "no leader within {timeout:?} (seed {}): {:#?}",
                self.seed,
                self.statuses()
            ),
        }
    }

    /// Waits for a stable leader other than `previous` (after disconnecting or crashing it,
    /// the others keep following it until their election timeout fires); panics (with the
    /// seed) after `timeout`.
    pub fn wait_for_new_leader(&self, previous: NodeId, timeout: Duration) -> NodeId {
        let mut found = None;
        let ok = self.wait_for(timeout, |cluster| {
            found = cluster.stable_leader().filter(|&leader| leader != previous);
            found.is_some()
        });
        match (ok, found) {
            (true, Some(leader)) => leader,
            _ => panic!(
                "no leader other than {previous} within {timeout:?} (seed {}): {:#?}",
                self.seed,
                self.statuses()
            ),
        }
    }

    /// A leader that a majority of its configuration's voters (counting itself) follow at
    /// its term.
    pub fn stable_leader(&self) -> Option<NodeId> {
        let statuses = self.statuses();
        let leader = statuses
            .iter()
            .filter(|status| status.role == RoleKind::Leader)
            .max_by_key(|status| status.term)?;
        let voters = &leader.membership.voters;
        let followers = statuses
            .iter()
            .filter(|status| {
                voters.contains(&status.id)
                    && status.term == leader.term
                    && status.leader == Some(leader.id)
            })
            .count();
        (followers > voters.len() / 2).then_some(leader.id)
    }

    /// Proposes on node `id` and waits up to `timeout` for the outcome.
    pub fn propose_on(
        &self,
        id: NodeId,
        command: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, ProposeError> {
        let node = self.node(id).ok_or(ProposeError::Shutdown)?;
        node.propose(command.to_vec(), Instant::now() + timeout)
    }

    /// Proposes on whichever node leads, retrying (only) the outcomes that say the command did
    /// not and will not commit (`NotLeader`, `Busy`, `Dropped`) until `timeout`.
    pub fn propose(&self, command: &[u8], timeout: Duration) -> Result<Vec<u8>, ProposeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let outcome = match self.leader() {
                Some(leader) => self.propose_on(
                    leader,
                    command,
                    deadline.saturating_duration_since(Instant::now()),
                ),
                None => Err(ProposeError::NotLeader { leader_hint: None }),
            };
            match outcome {
                Err(ProposeError::NotLeader { .. })
                | Err(ProposeError::Busy { .. })
                | Err(ProposeError::Dropped)
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Busy { .. }) => {
                    return Err(ProposeError::Timeout)
                }
                other => return other,
            }
        }
    }

    /// Crashes `id`: its threads stop, everything it had not synced is lost, and late writes
    /// and messages of the dead instance are discarded.
    pub fn crash(&self, id: NodeId) {
        let node = {
            let mut slots = self.slots.lock();
            let Some(slot) = slots.get_mut(&id) else {
                return;
            };
            self.network.remove(id);
            // Kill the dead instance's ability to write; what it had not synced is lost.
            match self.storage {
                StorageKind::Memory => drop(slot.disk.open()),
                StorageKind::FaultyFiles => slot.faulty_disk.crash(),
                StorageKind::RealFiles => {}
            }
            slot.node.take()
        };
        if let Some(node) = node {
            node.shutdown();
        }
    }

    /// Makes the next sync of `id`'s storage fail and latch, as a failed fsync would: the node
    /// stops serving. Crash-faithful memory and faulty files only (a real disk cannot be told
    /// to fail).
    pub fn fail_next_sync(&self, id: NodeId) {
        let slots = self.slots.lock();
        let Some(slot) = slots.get(&id) else {
            return;
        };
        match self.storage {
            StorageKind::Memory => slot.disk.fail_next_sync(),
            StorageKind::FaultyFiles => slot.faulty_disk.fail_next_sync(),
            StorageKind::RealFiles => panic!("real files cannot be made to fail"),
        }
    }

    /// Restarts `id` from its durable state (crashing it first if it is running).
    pub fn restart(&self, id: NodeId) {
        self.crash(id);
        let mut config = Config::new(id);
        (self.configure)(&mut config);
        let (inbound_tx, inbound_rx) = inbound_channel();
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(&id) else {
            return;
        };
        let transport: Arc<dyn Transport> = Arc::new(self.network.connect(id, inbound_tx));
        slot.restarts += 1;
        let dir = self.files_root.join(format!("{id}"));
        let options = FileOptions {
            segment_bytes_max: HARNESS_SEGMENT_BYTES,
            // The node's segment format (zero-filled space after the records), prepared at
            // the roll so that the fault-injecting disk sees every operation in order.
            preallocate: Preallocation::Inline,
            ..FileOptions::default()
        };
        let storage: Box<dyn Storage> = match self.storage {
            StorageKind::Memory => Box::new(slot.disk.open()),
            StorageKind::FaultyFiles => {
                let disk = Arc::new(slot.faulty_disk.current());
                match FileStorage::open_with_file_system(&dir, options, disk) {
                    Ok(storage) => Box::new(storage),
                    Err(error) => panic!("{id}: open failed (seed {}): {error}", self.seed),
                }
            }
            StorageKind::RealFiles => match FileStorage::open(&dir, options) {
                Ok(storage) => Box::new(storage),
                Err(error) => panic!("{id}: open failed (seed {}): {error}", self.seed),
            },
        };
        let state_machine = Recorded::new((self.factory)(id), Arc::clone(&slot.record));
        let bootstrap = if slot.joined {
            Membership::default()
        } else {
            self.membership.clone()
        };
        let options = NodeOptions {
            config,
            membership: bootstrap,
            storage,
            transport,
            inbound: inbound_rx,
            state_machine,
            seed: self.seed ^ id.0.rotate_left(17) ^ slot.restarts.rotate_left(40),
        };
        match Node::start(options) {
            Ok(node) => slot.node = Some(Arc::new(node)),
            Err(error) => panic!("{id}: restart failed (seed {}): {error}", self.seed),
        }
    }

    /// Cuts every link of `id`, both ways.
    pub fn disconnect(&self, id: NodeId) {
        self.network.isolate(id, &self.ids());
    }

    /// Restores the links of `id`.
    pub fn reconnect(&self, id: NodeId) {
        self.network.reconnect(id);
    }

    /// Splits the cluster into groups that cannot talk to each other.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        self.network.partition(groups);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.network.heal();
    }

    /// Turns random loss, delay and long reordering on or off.
    pub fn set_unreliable(&self, on: bool) {
        self.network.set_unreliable(on.then(Unreliable::default));
    }

    /// Message and byte counters.
    pub fn counters(&self) -> NetworkCounters {
        self.network.counters()
    }

    /// What node `id` applied at each index (across restarts).
    pub fn applied(&self, id: NodeId) -> BTreeMap<LogIndex, Vec<u8>> {
        let record = self
            .slots
            .lock()
            .get(&id)
            .map(|slot| Arc::clone(&slot.record));
        record
            .map(|record| record.lock().commands.clone())
            .unwrap_or_default()
    }

    /// Checks state-machine safety: no node ever applied two different commands at one index
    /// (also across its own restarts), and no two nodes applied different commands at the same
    /// index.
    pub fn check_applied_agreement(&self) -> Result<(), String> {
        let mut first: BTreeMap<LogIndex, (NodeId, Vec<u8>)> = BTreeMap::new();
        let records: Vec<(NodeId, Arc<Mutex<AppliedRecord>>)> = self
            .slots
            .lock()
            .iter()
            .map(|(&id, slot)| (id, Arc::clone(&slot.record)))
            .collect();
        for (id, record) in records {
            let record = record.lock();
            if let Some(violation) = &record.violation {
                return Err(format!("{id}: {violation} (seed {})", self.seed));
            }
            for (&index, command) in &record.commands {
                match first.get(&index) {
                    Some((other, seen)) if seen != command => {
                        return Err(format!(
                            "{id} and {other} applied different commands at {index} (seed {})",
                            self.seed
                        ));
                    }
                    Some(_) => {}
                    None => {
                        first.insert(index, (id, command.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until every running node has applied through `index`.
    pub fn wait_applied_everywhere(&self, index: LogIndex, timeout: Duration) -> bool {
        self.wait_for(timeout, |cluster| {
            cluster
                .statuses()
                .iter()
                .all(|status| status.applied >= index)
        })
    }
}

impl<M: StateMachine> Drop for Cluster<M> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "cluster seed: {} (replay with KEYVAL_SEED={})",
                self.seed, self.seed
            );
        }
        let nodes: Vec<ClusterNode<M>> = self
            .slots
            .lock()
            .values_mut()
            .filter_map(|slot| slot.node.take())
            .collect();
        for node in nodes {
            node.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.files_root);
    }
}
