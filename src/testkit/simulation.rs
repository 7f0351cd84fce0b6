//! Deterministic simulation: N pure Raft cores with crash-faithful in-memory storage over a
//! faulty simulated network, all in one thread, driven by one seeded RNG and virtual time.
//!
//! Persistence is asynchronous as in the real runtime: a Ready's durable part completes at a
//! later random step, and only then are its held-back messages released; a crash loses every
//! persist that had not completed. Faults: message loss, duplication, delay and reordering,
//! partitions (symmetric and one-way), crash and restart. Nodes take snapshots at random and
//! compact their logs with a random margin, so leaders stream snapshots to followers that fell
//! behind; a snapshot carries the ids of the entries it reflects, and each install is checked
//! against everything applied anywhere. Membership changes (see `membership`): nodes join
//! empty from a pool of ids, learners are added and promoted, voters added and removed, under
//! all of the above faults.
//!
//! Checked after every step: at most one leader per term; entries with the same index and
//! term carry the same command; a committed entry never changes; a new leader holds every
//! entry committed before it; no two nodes apply different entries at an index; term never
//! decreases (also across restarts), commit and applied never decrease within a life. Checked
//! periodically: log matching over whole logs. At the end, a liveness phase heals everything
//! and requires a configuration that is not joint, held by all of its members, and every
//! acknowledged proposal applied on each of them.
//!
//! Any failure names the seed; `run(seed)` replays it exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::error::StorageError;
use crate::node::driver::{self, Applied, ApplierState, ApplyItem, LocalSnapshot, Persister};
use crate::raft::{MemberChange, Message, MessageBody, Monotonic, Raft, SnapshotData};
use crate::state_machine::{RestoreError, StateMachine};
use crate::storage::mem::{MemDisk, MemStorage};
use crate::types::{Entry, EntryId, EntryPayload, LogIndex, Membership, NodeId, Term};

mod membership;

/// The knobs of one simulation run.
#[derive(Clone, Debug)]
pub struct SimulationOptions {
    /// Initial cluster size: nodes 1..=nodes are the first voters.
    pub nodes: u64,
    /// Node ids 1..=pool may be members; the ones beyond the initial cluster join (and leave)
    /// through membership changes.
    pub pool: u64,
    /// Per step probability of asking the leader for a membership change.
    pub membership: f64,
    /// Random steps in the fault phase.
    pub steps: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a delivered message is delivered again later.
    pub duplication: f64,
    /// Messages are delayed uniformly by up to this many ticks (reordering).
    pub delay_ticks_max: u64,
    /// Per step probability of crashing a node.
    pub crash: f64,
    /// Per step probability of changing the partition.
    pub partition: f64,
    /// Virtual ticks allowed for the liveness phase.
    pub liveness_ticks: u64,
    /// Per step probability of a node taking a snapshot and compacting its log.
    pub snapshot: f64,
    /// Probability that the power goes out at a random storage operation while a node's log
    /// writer completes a persist or a local snapshot (a crash between two durable steps).
    pub power_cut: f64,
    /// Per step probability of pausing a node (a process stopped: SIGSTOP, a VM pause, a long
    /// GC) for up to `pause_ticks_max` ticks: it neither ticks nor receives nor persists, and
    /// when it resumes its clock jumps to the present.
    pub pause: f64,
    /// The longest pause, in ticks.
    pub pause_ticks_max: u64,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        SimulationOptions {
            nodes: 5,
            pool: 8,
            membership: 0.08,
            steps: 6000,
            loss: 0.05,
            duplication: 0.02,
            delay_ticks_max: 8,
            crash: 0.0015,
            partition: 0.003,
            liveness_ticks: 3000,
            snapshot: 0.003,
            power_cut: 0.01,
            pause: 0.002,
            pause_ticks_max: 30,
        }
    }
}

/// What a successful run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimulationReport {
    /// The seed.
    pub seed: u64,
    /// Proposals acknowledged (applied on the node that accepted them).
    pub acknowledged: u64,
    /// Highest term reached.
    pub max_term: u64,
    /// Leaders elected.
    pub elections: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Of those, crashes in the middle of a persist (the power went out at a storage
    /// operation).
    pub power_cuts: u64,
    /// Pauses injected.
    pub pauses: u64,
    /// Steps at whose end some node held a lease (the lease check had something to check).
    pub lease_steps: u64,
    /// Local snapshots taken (and logs compacted).
    pub snapshots: u64,
    /// Snapshots streamed from a leader and installed by a follower.
    pub snapshot_installs: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Membership change requests the leader accepted (appended).
    pub membership_proposed: u64,
    /// Accepted membership change requests whose entry committed.
    pub membership_committed: u64,
    /// Membership change requests refused, by reason (busy, not caught up, would lose quorum,
    /// invalid, not leader).
    pub membership_refused: BTreeMap<&'static str, u64>,
    /// Learners made voters by a committed change.
    pub learners_promoted: u64,
    /// Nodes started empty to join.
    pub joins: u64,
    /// Members of the final configuration.
    pub final_members: u64,
}

/// A violated property, with everything needed to replay it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "simulation seed {seed} failed at step {step}: {violation} (replay: KEYVAL_SIM_SEED={seed})"
)]
pub struct SimulationFailure {
    /// The seed.
    pub seed: u64,
    /// The step at which the property broke.
    pub step: u64,
    /// What broke.
    pub violation: String,
}

/// Work queued for a node's log writer, completed in order at later random steps: the
/// runtime's persist outbox and local-snapshot slot.
enum Pending {
    Persist(driver::PersistRequest),
    LocalSnapshot(LocalSnapshot),
}

/// The simulated state machine: the ids of the commands it applied, in order (what its
/// snapshots carry, so every install can be checked against everything applied anywhere).
#[derive(Default)]
struct AppliedIds(Vec<EntryId>);

impl StateMachine for AppliedIds {
    fn apply(&mut self, id: EntryId, _command: &[u8]) -> Vec<u8> {
        self.0.push(id);
        Vec::new()
    }

    fn snapshot(&mut self) -> Vec<u8> {
        crate::codec::encode(&self.0).expect("entry ids encode")
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), RestoreError> {
        self.0 = crate::codec::decode(data)?;
        Ok(())
    }
}

struct SimNode {
    raft: Option<Raft>,
    disk: MemDisk,
    storage: MemStorage,
    pending: VecDeque<Pending>,
    /// The shared driver's log writer and applier state, as the runtime keeps them.
    persister: Persister,
    applier: ApplierState,
    state_machine: AppliedIds,
    /// The virtual time (in ticks) at which this incarnation started: its clock reads the
    /// ticks since then.
    clock_origin: u64,
    /// Paused until this virtual time (in ticks).
    paused_until: Option<u64>,
    committed: LogIndex,
    max_term: Term,
    restarts: u64,
    /// The configuration this node starts from when its disk holds none: the initial voters'
    /// for the first cluster, none for a node that joins.
    bootstrap: Membership,
    /// An incarnation exists (the node was started at least once on its current disk).
    started: bool,
    /// The node was in a configuration some leader appended: its id is never added again.
    ever_member: bool,
    /// In this life the node applied a configuration that contains it...
    member_applied: bool,
    /// ...and later one that does not (its removal), at this index (kept across restarts:
    /// the removal is committed).
    removed_applied: Option<LogIndex>,
    /// The configuration check's progress: (configuration index, log checked through, log
    /// start).
    config_scanned: Option<(LogIndex, EntryId, EntryId)>,
}

struct InFlight {
    deliver_at: u64,
    message: Message,
}

struct Simulation {
    seed: u64,
    options: SimulationOptions,
    rng: StdRng,
    now: u64,
    step: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    network: Vec<InFlight>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Global knowledge the invariants are checked against.
    leaders_by_term: BTreeMap<Term, NodeId>,
    committed: BTreeMap<LogIndex, EntryId>,
    applied: BTreeMap<LogIndex, EntryId>,
    commands: BTreeMap<EntryId, Vec<u8>>,
    /// Proposals: entry id -> proposing node; acknowledged once that node applies it.
    proposed: BTreeMap<EntryId, NodeId>,
    acknowledged: BTreeSet<EntryId>,
    next_command: u64,
    /// Accepted membership change requests, by the entry that starts them.
    membership_requests: BTreeMap<EntryId, Vec<MemberChange>>,
    report: SimulationReport,
}

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.election_ticks = 10;
    config.heartbeat_ticks = 2;
    config.inflight_messages_max = 8;
    // Tiny messages: a backlog of old-term entries spans several AppendEntries, which is
    // what exposes a commit of an old-term entry by counting (Figure 8).
    config.message_entries_bytes_max = 64;
    // Leases are tracked (and checked: at most one holder at any moment); nothing reads.
    config.lease_reads = true;
    config
}

impl Simulation {
    fn new(seed: u64, options: SimulationOptions) -> Simulation {
        let ids: Vec<NodeId> = (1..=options.nodes).map(NodeId).collect();
        let pool: Vec<NodeId> = (1..=options.pool.max(options.nodes)).map(NodeId).collect();
        let initial = Membership::new(ids.iter().copied());
        let mut simulation = Simulation {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            step: 0,
            nodes: BTreeMap::new(),
            network: Vec::new(),
            cut: BTreeSet::new(),
            leaders_by_term: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            commands: BTreeMap::new(),
            proposed: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            next_command: 0,
            membership_requests: BTreeMap::new(),
            report: SimulationReport {
                seed,
                ..SimulationReport::default()
            },
            options,
        };
        for id in pool {
            let member = ids.contains(&id);
            let bootstrap = if member {
                initial.clone()
            } else {
                Membership::default()
            };
            let disk = MemDisk::new();
            let storage = disk.open();
            simulation.nodes.insert(
                id,
                SimNode {
                    raft: None,
                    disk,
                    storage,
                    pending: VecDeque::new(),
                    persister: Persister::new(LogIndex(0)),
                    applier: ApplierState::new(EntryId::default(), bootstrap.clone()),
                    state_machine: AppliedIds::default(),
                    clock_origin: 0,
                    paused_until: None,
                    committed: LogIndex(0),
                    max_term: Term(0),
                    restarts: 0,
                    bootstrap,
                    started: false,
                    ever_member: member,
                    member_applied: false,
                    removed_applied: None,
                    config_scanned: None,
                },
            );
            if member {
                simulation.start(id);
            }
        }
        simulation
    }

    fn fail(&self, violation: String) -> SimulationFailure {
        SimulationFailure {
            seed: self.seed,
            step: self.step,
            violation,
        }
    }

    /// Starts (or restarts) a node from its disk through the runtime's recovery.
    fn start(&mut self, id: NodeId) {
        let seed = self.seed;
        let node = self.nodes.get_mut(&id).expect("known node");
        node.started = true;
        node.storage = node.disk.open();
        node.restarts += 1;
        let node_seed = seed ^ id.0.rotate_left(20) ^ node.restarts.rotate_left(40);
        node.state_machine = AppliedIds::default();
        node.clock_origin = self.now;
        node.paused_until = None;
        let recovery = driver::recover(
            config(id),
            &mut node.storage,
            node.bootstrap.clone(),
            &mut node.state_machine,
            node_seed,
        )
        .unwrap_or_else(|error| panic!("{id}: in-memory recovery failed: {error}"));
        node.pending.clear();
        node.persister = recovery.persister;
        node.applier = recovery.applier;
        node.committed = node.applier.last_applied().index;
        node.config_scanned = None;
        // Application starts over from the snapshot (or the start): a removal is a
        // configuration without the node applied after one with it, within one life.
        node.member_applied = node.applier.membership().contains(id);
        node.raft = Some(recovery.raft);
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.raft = None;
        node.pending.clear(); // unsynced writes are lost
                              // A term adopted in memory but never made durable (no vote was cast in it, or the
                              // grant would have waited for the sync) is legitimately lost with the crash.
        node.max_term = node.disk.durable_hard_state().term;
        drop(node.disk.open()); // and the dead instance can write nothing more
        self.report.crashes += 1;
    }

    fn alive(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.raft.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether `id` runs and is not paused.
    fn is_active(&self, id: NodeId) -> bool {
        let node = &self.nodes[&id];
        node.raft.is_some() && node.paused_until.is_none()
    }

    /// What `id`'s monotonic clock reads now: virtual ticks since its start.
    fn clock_of(&self, id: NodeId) -> Monotonic {
        let node = &self.nodes[&id];
        Monotonic((self.now - node.clock_origin) * config(id).tick_nanos())
    }

    /// Stops `id` for a while, as SIGSTOP does.
    fn pause(&mut self, id: NodeId) {
        let ticks = self.rng.random_range(1..=self.options.pause_ticks_max);
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.raft.is_some() && node.paused_until.is_none() {
            node.paused_until = Some(self.now + ticks);
            self.report.pauses += 1;
        }
    }

    /// Resumes the paused nodes whose pause is over. Their clocks jump to the present when
    /// they next run (`advance_clock`, as the runtime's threads do on waking); the checks run
    /// before that, so a lease that was still believed in at the moment of resuming is seen.
    fn resume_due(&mut self) -> Result<(), SimulationFailure> {
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.paused_until.is_some_and(|until| until <= self.now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.nodes.get_mut(&id).expect("known node").paused_until = None;
            self.check()?;
            let now = self.clock_of(id);
            if let Some(raft) = self.nodes.get_mut(&id).and_then(|node| node.raft.as_mut()) {
                raft.advance_clock(now);
            }
            self.drain_ready(id)?;
        }
        Ok(())
    }

    /// Moves a node's Ready into the world through the shared driver: messages onto the
    /// network, durable work onto its persist queue, committed entries and installed
    /// snapshots through the checks into its state machine.
    fn drain_ready(&mut self, id: NodeId) -> Result<(), SimulationFailure> {
        let Some(raft) = self.nodes.get_mut(&id).and_then(|node| node.raft.as_mut()) else {
            return Ok(());
        };
        if !raft.has_ready() {
            return Ok(());
        }
        let routed = driver::split(raft.take_ready());
        for message in routed.messages {
            self.send(message)?;
        }
        if let Some(request) = routed.persist {
            let node = self.nodes.get_mut(&id).expect("known node");
            node.pending.push_back(Pending::Persist(request));
        }
        for item in routed.apply {
            let mut configuration = false;
            match &item {
                ApplyItem::Snapshot(snapshot) => self.check_installed_snapshot(id, snapshot)?,
                ApplyItem::Entry(entry) => {
                    self.check_apply(id, entry)?;
                    configuration = matches!(entry.payload, EntryPayload::Membership(_));
                }
            }
            let node = self.nodes.get_mut(&id).expect("known node");
            let applied = node.applier.apply(&mut node.state_machine, item);
            match applied {
                Ok(Applied::Snapshot { .. }) => {
                    self.note_applied_membership(id);
                    self.report.snapshot_installs += 1;
                }
                Ok(Applied::Entry { id: entry, .. }) => {
                    if self.proposed.get(&entry) == Some(&id) {
                        self.acknowledged.insert(entry);
                    }
                    if configuration {
                        self.note_applied_membership(id);
                        self.note_committed_request(entry);
                    }
                }
                Err(reason) => return Err(self.fail(format!("{id}: {reason}"))),
            }
        }
        Ok(())
    }

    /// A snapshot from the leader is about to replace the node's state: what it carries must
    /// agree with everything applied anywhere (state-machine safety across snapshots).
    fn check_installed_snapshot(
        &mut self,
        id: NodeId,
        snapshot: &SnapshotData,
    ) -> Result<(), SimulationFailure> {
        let Ok(ids) = crate::codec::decode::<Vec<EntryId>>(&snapshot.data) else {
            return Err(self.fail(format!("{id} installed an undecodable snapshot")));
        };
        if ids
            .last()
            .is_some_and(|last| last.index > snapshot.meta.last.index)
        {
            return Err(self.fail(format!(
                "{id}: snapshot contents disagree with its metadata"
            )));
        }
        for entry in &ids {
            if let Some(other) = self.applied.get(&entry.index) {
                if *other != *entry {
                    return Err(self.fail(format!(
                        "state-machine safety: {id} installed a snapshot with {entry} where {other} was applied"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A node snapshots its state machine at its applied index, as the runtime's applier does,
    /// with a random compaction margin; its log writer makes it durable and compacts the log
    /// at a later step.
    fn take_snapshot(&mut self, id: NodeId) {
        let margin = self.rng.random_range(0..8);
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(raft) = node.raft.as_ref() else {
            return;
        };
        let applied = node.applier.last_applied().index;
        if applied == LogIndex(0) || applied <= raft.log().snapshot().index {
            return;
        }
        let local = node
            .applier
            .take_snapshot(&mut node.state_machine, margin)
            .write();
        node.pending.push_back(Pending::LocalSnapshot(local));
    }

    /// Entries become visible when they leave a node or reach its disk; an entry that was
    /// only ever in the memory of a node that crashed never existed. Entries with one id must
    /// carry one command.
    fn record_commands(&mut self, entries: &[Entry]) -> Result<(), SimulationFailure> {
        for entry in entries {
            if let EntryPayload::Command(command) = &entry.payload {
                match self.commands.get(&entry.id) {
                    Some(seen) if seen != command => {
                        return Err(self.fail(format!("two commands with id {}", entry.id)));
                    }
                    Some(_) => {}
                    None => {
                        self.commands.insert(entry.id, command.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, message: Message) -> Result<(), SimulationFailure> {
        if let MessageBody::AppendEntries { entries, .. } = &message.body {
            self.record_commands(entries)?;
        }
        if self.rng.random_bool(self.options.loss) {
            return Ok(());
        }
        let delay = self.rng.random_range(0..=self.options.delay_ticks_max);
        self.network.push(InFlight {
            deliver_at: self.now + delay,
            message,
        });
        Ok(())
    }

    /// An entry is about to be applied on `id`: in order, and the same entry every node
    /// applies at that index.
    fn check_apply(&mut self, id: NodeId, entry: &Entry) -> Result<(), SimulationFailure> {
        let applied = self.nodes[&id].applier.last_applied().index;
        if entry.index() != applied.next() {
            return Err(self.fail(format!("{id} applied {} after {applied}", entry.index())));
        }
        match self.applied.get(&entry.index()) {
            Some(other) if *other != entry.id => {
                return Err(self.fail(format!(
                    "state-machine safety: {id} applied {} where another node applied {other}",
                    entry.id
                )));
            }
            Some(_) => {}
            None => {
                self.applied.insert(entry.index(), entry.id);
            }
        }
        Ok(())
    }

    /// Completes the oldest pending persist of `id` through the shared driver: write, sync,
    /// release messages, report — or save a local snapshot and compact. Now and then the
    /// power goes out at a random storage operation inside it (between saving a received
    /// snapshot and resetting the log, say), and the node crashes there.
    fn complete_persist(&mut self, id: NodeId) -> Result<(), SimulationFailure> {
        let power_cut = self
            .rng
            .random_bool(self.options.power_cut)
            .then(|| self.rng.random_range(0..4));
        if !self.is_active(id) {
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(pending) = node.pending.pop_front() else {
            return Ok(());
        };
        if let Some(operations) = power_cut {
            node.disk.cut_power_after(operations);
        }
        let outcome = match pending {
            Pending::Persist(request) => {
                let durable_term = node.disk.durable_hard_state().term;
                if let Some(hard_state) = request.hard_state {
                    if hard_state.term < durable_term {
                        let violation = format!(
                            "{id} durable term would go back from {durable_term} to {}",
                            hard_state.term
                        );
                        return Err(self.fail(violation));
                    }
                }
                let entries = request.entries.clone();
                node.persister
                    .persist_batch(&mut node.storage, vec![request])
                    .map(|released| Some((released, entries)))
            }
            Pending::LocalSnapshot(local) => node
                .persister
                .save_local_snapshot(&mut node.storage, local)
                .map(|saved| {
                    if let (Some(local), Some(raft)) = (saved, node.raft.as_mut()) {
                        raft.compact(local.snapshot, local.compact_through);
                        self.report.snapshots += 1;
                    }
                    None
                }),
        };
        node.disk.restore_power();
        match outcome {
            Ok(Some((released, entries))) => {
                if let (Some(raft), Some(last)) = (node.raft.as_mut(), released.last_entry) {
                    raft.on_persisted(last);
                }
                self.record_commands(&entries)?;
                for message in released.messages {
                    self.send(message)?;
                }
            }
            Ok(None) => {}
            Err(StorageError::Crashed) => {
                self.report.power_cuts += 1;
                self.crash(id);
                return Ok(());
            }
            Err(error) => return Err(self.fail(format!("{id}: in-memory storage: {error}"))),
        }
        self.drain_ready(id)
    }

    fn deliver(&mut self) -> Result<(), SimulationFailure> {
        let ready: Vec<usize> = (0..self.network.len())
            .filter(|&k| {
                self.network[k].deliver_at <= self.now
                    && self
                        .nodes
                        .get(&self.network[k].message.to)
                        .is_none_or(|node| node.paused_until.is_none())
            })
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let pick = ready[self.rng.random_range(0..ready.len())];
        let message = if self.rng.random_bool(self.options.duplication) {
            self.network[pick].message.clone()
        } else {
            self.network.swap_remove(pick).message
        };
        if self.cut.contains(&(message.from, message.to)) {
            return Ok(());
        }
        let to = message.to;
        let Some(raft) = self.nodes.get_mut(&to).and_then(|node| node.raft.as_mut()) else {
            return Ok(());
        };
        let _ = raft.step(message);
        self.report.delivered += 1;
        self.drain_ready(to)
    }

    fn tick_all(&mut self) -> Result<(), SimulationFailure> {
        self.now += 1;
        self.resume_due()?;
        for id in self.alive() {
            if !self.is_active(id) {
                continue;
            }
            if let Some(raft) = self.nodes.get_mut(&id).and_then(|node| node.raft.as_mut()) {
                raft.tick();
            }
            self.drain_ready(id)?;
        }
        Ok(())
    }

    fn propose(&mut self) -> Result<(), SimulationFailure> {
        let alive = self.alive();
        let Some(&id) = alive.get(self.rng.random_range(0..alive.len().max(1))) else {
            return Ok(());
        };
        if !self.is_active(id) {
            return Ok(());
        }
        let command = format!("c{}", self.next_command).into_bytes();
        self.next_command += 1;
        let Some(raft) = self.nodes.get_mut(&id).and_then(|node| node.raft.as_mut()) else {
            return Ok(());
        };
        if let Ok(entry) = raft.propose(command) {
            self.proposed.insert(entry, id);
        }
        self.drain_ready(id)
    }

    fn change_partition(&mut self) {
        self.cut.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        match self.rng.random_range(0..3) {
            0 => {} // healed
            1 => {
                // Symmetric: a random minority side.
                for &a in &ids {
                    if self.rng.random_bool(0.4) {
                        for &b in &ids {
                            if a != b {
                                self.cut.insert((a, b));
                                self.cut.insert((b, a));
                            }
                        }
                    }
                }
            }
            _ => {
                // Asymmetric: random one-way links.
                for &a in &ids {
                    for &b in &ids {
                        if a != b && self.rng.random_bool(0.25) {
                            self.cut.insert((a, b));
                        }
                    }
                }
            }
        }
    }

    /// Checks the per-step invariants.
    fn check(&mut self) -> Result<(), SimulationFailure> {
        let ids: Vec<NodeId> = self.alive();
        // Lease safety: at any moment at most one node may serve lease reads (every node's
        // clock advances with the same virtual time).
        let holders: Vec<String> = ids
            .iter()
            .filter_map(|id| {
                let node = &self.nodes[id];
                let raft = node.raft.as_ref()?;
                raft.lease_read(self.clock_of(*id))
                    .is_ok()
                    .then(|| format!("{id} (leader of {})", raft.term()))
            })
            .collect();
        self.report.lease_steps += holders.len().min(1) as u64;
        if holders.len() > 1 {
            return Err(self.fail(format!(
                "lease safety: {} hold a lease at once",
                holders.join(" and ")
            )));
        }
        for id in ids {
            let node = &self.nodes[&id];
            let Some(raft) = node.raft.as_ref() else {
                continue;
            };
            let term = raft.term();
            if term < node.max_term {
                return Err(self.fail(format!(
                    "{id} term went back from {} to {term}",
                    node.max_term
                )));
            }
            let committed = raft.log().committed();
            if committed < node.committed {
                return Err(self.fail(format!("{id} commit went back to {committed}")));
            }
            if raft.is_leader() {
                match self.leaders_by_term.get(&term) {
                    Some(&other) if other != id => {
                        return Err(
                            self.fail(format!("election safety: {id} and {other} lead {term}"))
                        );
                    }
                    Some(_) => {}
                    None => {
                        self.leaders_by_term.insert(term, id);
                        self.report.elections += 1;
                        // Leader completeness: it holds everything committed so far.
                        for (&index, &entry) in &self.committed {
                            if !raft.log().matches(entry) && index > raft.log().snapshot().index {
                                return Err(self.fail(format!(
                                    "leader completeness: new leader {id} of {term} lacks committed {entry}"
                                )));
                            }
                        }
                    }
                }
            }
            // Record newly committed entries; they must never change.
            let mut newly = Vec::new();
            for index in node.committed.0 + 1..=committed.0 {
                if let Some(term) = raft.log().term(LogIndex(index)) {
                    newly.push(EntryId::new(term, LogIndex(index)));
                }
            }
            for entry in newly {
                match self.committed.get(&entry.index) {
                    Some(&other) if other != entry => {
                        return Err(self.fail(format!(
                            "committed entry {other} changed to {entry} on {id}"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(entry.index, entry);
                    }
                }
            }
            let node = self.nodes.get_mut(&id).expect("known node");
            node.max_term = term;
            node.committed = committed;
            self.report.max_term = self.report.max_term.max(term.0);
        }
        Ok(())
    }

    /// Log matching over whole logs: same (index, term) implies identical prefixes.
    fn check_log_matching(&self) -> Result<(), SimulationFailure> {
        let logs: Vec<(NodeId, Vec<EntryId>)> = self
            .nodes
            .iter()
            .filter_map(|(&id, node)| {
                let raft = node.raft.as_ref()?;
                let log = raft.log();
                let ids = (log.first_index().0..=log.last_index().0)
                    .filter_map(|index| {
                        log.term(LogIndex(index))
                            .map(|term| EntryId::new(term, LogIndex(index)))
                    })
                    .collect();
                Some((id, ids))
            })
            .collect();
        for (k, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in &logs[k + 1..] {
                let shared = log_a.len().min(log_b.len());
                if let Some(last_same) = (0..shared).rev().find(|&i| log_a[i] == log_b[i]) {
                    if log_a[..=last_same] != log_b[..=last_same] {
                        return Err(self.fail(format!("log matching broken between {a} and {b}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// A node picked at random among those that exist: ever started (initial or joined).
    /// Faults and work go only to them.
    fn random_started(&mut self) -> NodeId {
        let started = self.nodes.values().filter(|node| node.started).count();
        let pick = self.rng.random_range(0..started);
        self.nodes
            .iter()
            .filter(|(_, node)| node.started)
            .nth(pick)
            .map(|(&id, _)| id)
            .expect("a started node")
    }

    fn run(mut self) -> Result<SimulationReport, SimulationFailure> {
        for _ in 0..self.options.steps {
            self.step += 1;
            let roll: f64 = self.rng.random();
            if roll < 0.15 {
                self.tick_all()?;
            } else if roll < 0.55 {
                self.deliver()?;
            } else if roll < 0.80 {
                let id = self.random_started();
                if self.is_active(id) {
                    self.complete_persist(id)?;
                }
            } else if roll < 0.92 {
                self.propose()?;
            } else if self.rng.random_bool(self.options.snapshot * 12.0) {
                let id = self.random_started();
                self.take_snapshot(id);
            } else if self.rng.random_bool(self.options.crash * 12.0) {
                let id = self.random_started();
                if self.nodes[&id].raft.is_some() {
                    self.crash(id);
                } else if self.nodes[&id].started {
                    self.start(id);
                }
            } else if self.rng.random_bool(self.options.partition * 12.0) {
                self.change_partition();
            } else if self.rng.random_bool(self.options.pause * 12.0) {
                let id = self.random_started();
                self.pause(id);
            } else if self.rng.random_bool(self.options.membership * 12.0) {
                self.change_membership()?;
            }
            self.check()?;
            self.check_memberships()?;
            if self.step.is_multiple_of(100) {
                self.check_log_matching()?;
            }
        }
        self.liveness()
    }

    fn final_acknowledged(&self) -> bool {
        self.acknowledged.iter().any(|entry| {
            self.commands
                .get(entry)
                .is_some_and(|command| command.starts_with(b"final-"))
        })
    }

    /// Heal everything, restart every node that ever ran (no membership changes are asked
    /// for any more), and require progress: a leader, a configuration that is not joint held by
    /// every one of its members, and every acknowledged proposal applied on each of them.
    fn liveness(mut self) -> Result<SimulationReport, SimulationFailure> {
        self.cut.clear();
        self.options.loss = 0.0;
        self.options.duplication = 0.0;
        self.options.power_cut = 0.0;
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.started)
            .map(|(&id, _)| id)
            .collect();
        for &id in &ids {
            if self.nodes[&id].raft.is_none() {
                self.start(id);
            }
        }
        // One more proposal through the healed cluster, so everything before it commits. Like
        // a client, retry it (as a new command) while it is unacknowledged: a leader change
        // may overwrite it.
        let mut final_proposed = false;
        for tick in 0..self.options.liveness_ticks {
            if tick % 100 == 99 && !self.final_acknowledged() {
                final_proposed = false;
            }
            self.step += 1;
            self.tick_all()?;
            for _ in 0..64 {
                self.deliver()?;
                for &id in &ids {
                    self.complete_persist(id)?;
                }
            }
            self.check()?;
            self.check_memberships()?;
            if !final_proposed {
                if let Some(&leader) = ids.iter().find(|&&id| {
                    self.nodes[&id]
                        .raft
                        .as_ref()
                        .is_some_and(|raft| raft.is_leader())
                }) {
                    let raft = self
                        .nodes
                        .get_mut(&leader)
                        .and_then(|node| node.raft.as_mut())
                        .expect("alive");
                    let command = format!("final-{tick}").into_bytes();
                    if let Ok(entry) = raft.propose(command) {
                        self.proposed.insert(entry, leader);
                        final_proposed = true;
                    }
                    self.drain_ready(leader)?;
                }
            }
            let Some(members) = self.settled_configuration() else {
                continue;
            };
            let everyone_applied = self.acknowledged.iter().all(|entry| {
                members
                    .iter()
                    .all(|id| self.nodes[id].applier.last_applied().index >= entry.index)
            });
            let final_acknowledged = self.final_acknowledged();
            if final_proposed && final_acknowledged && everyone_applied {
                self.check_log_matching()?;
                self.check_no_outsider_leads(&members)?;
                self.report.acknowledged = self.acknowledged.len() as u64;
                self.report.final_members = members.len() as u64;
                return Ok(self.report);
            }
        }
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, node)| match &node.raft {
                Some(raft) => {
                    let status = raft.status();
                    format!(
                        "{id}: {:?} {} leader {:?} commit {} persisted {} last {} applied {} \
                         pending persists {} config {}",
                        status.role,
                        status.term,
                        status.leader,
                        status.committed,
                        status.persisted,
                        raft.log().last_id(),
                        node.applier.last_applied().index,
                        node.pending.len(),
                        membership::describe(raft.membership())
                    )
                }
                None => format!("{id}: down"),
            })
            .chain(self.nodes.iter().flat_map(|(leader, node)| {
                let raft = node.raft.as_ref().filter(|raft| raft.is_leader());
                self.nodes.keys().filter_map(move |&follower| {
                    let progress = raft?.progress(follower)?;
                    Some(format!(
                        "{leader} sees {follower}: {:?} matched {} next {} paused {} \
                         transfer {:?}",
                        progress.state,
                        progress.matched,
                        progress.next,
                        progress.is_paused(),
                        progress.transfer.as_ref().map(|transfer| (
                            transfer.snapshot.meta.last,
                            transfer.acknowledged,
                            transfer.snapshot.data.len()
                        ))
                    ))
                })
            }))
            .collect();
        Err(self.fail(format!(
            "liveness: after healing, {} acknowledged proposals were not applied on every member \
             of an agreed configuration that is not joint within {} ticks (final proposed: {final_proposed}); nodes: [{}]",
            self.acknowledged.len(),
            self.options.liveness_ticks,
            states.join("; ")
        )))
    }
}

impl SimulationOptions {
    /// The fault profile a seed runs under: even seeds start with three voters out of a pool
    /// of six and run longer with more crashes and partitions (the profile that finds Figure
    /// 8-style bugs most often, measured by mutation), odd seeds start with five voters out of
    /// a pool of eight under the defaults.
    pub fn for_seed(seed: u64) -> SimulationOptions {
        if seed.is_multiple_of(2) {
            SimulationOptions {
                nodes: 3,
                pool: 6,
                steps: 20_000,
                crash: 0.004,
                partition: 0.006,
                ..SimulationOptions::default()
            }
        } else {
            SimulationOptions::default()
        }
    }
}

/// Runs one simulation under the seed's profile ([`SimulationOptions::for_seed`]).
pub fn run(seed: u64) -> Result<SimulationReport, SimulationFailure> {
    run_with(seed, SimulationOptions::for_seed(seed))
}

/// Runs one simulation.
pub fn run_with(
    seed: u64,
    options: SimulationOptions,
) -> Result<SimulationReport, SimulationFailure> {
    Simulation::new(seed, options).run()
}
