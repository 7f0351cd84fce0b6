//! The runtime: a fixed set of named threads around one lock-guarded consensus core.
//!
//! ```text
//!  transport ──inbound──► [n1-inbound] ──step──┐
//!  [n1-ticker] ──────────────────────tick──────┤
//!  client threads ───────propose / read────────┤   core lock (Raft + outboxes), held only to
//!                                              ▼   step and route a Ready: never across I/O
//!                           ┌───── persist outbox ──► [n1-log-writer] append, ONE sync per
//!                           │                          drained batch, then send the acks it
//!                           │                          held back and report `on_persisted`
//!                           ├───── apply outbox ────► [n1-applier] apply in order, answer
//!                           │                          proposals and reads
//!                           └───── messages ─────────► transport (non-blocking)
//! ```
//!
//! Outboxes live inside the core lock and wake their thread through a one-slot channel, so
//! routing a Ready never blocks and a persist request is never dropped; each worker drains
//! everything queued at once, which is what makes group commit and batched apply happen.

mod applier;
pub(crate) mod driver;
mod force;
mod inbound;
mod log_writer;
mod observer;
mod snapshotter;
mod ticker;
mod waiters;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::config::Config;
use crate::error::{MembershipError, ProposeError, ReadError, StorageError, TransferError};
use crate::metrics::NodeMetrics;
use crate::raft::{MemberChange, Raft, RoleKind, SnapshotData};
use crate::state_machine::StateMachine;
use crate::storage::Storage;
use crate::transport::Transport;
use crate::types::{EntryId, LogIndex, MemberAddress, Membership, NodeId, Term};

use driver::{ApplyItem, LocalSnapshot, PendingSnapshot, PersistRequest, SnapshotPolicy};
pub use force::{
    configuration_in_force, force_new_cluster, ForceError, ForceOptions, ForcedCluster,
};
use waiters::Waiters;
pub use waiters::{Completion, CompletionSender, ProposalCompletion, ReadCompletion, Wake};

/// Everything a node is started from.
pub struct NodeOptions<M: StateMachine> {
    /// Timing, batching and safety settings; `config.id` is the node's id.
    pub config: Config,
    /// The configuration of a new cluster. Recorded in storage at the first start
    /// ([`Storage::save_bootstrap`]); later starts use the recorded one and refuse a different
    /// one ([`StartError::BootstrapConflict`]) unless it is the configuration in force now.
    /// Empty (`Membership::default()`): use what storage recorded, or know no configuration
    /// (a node that joins an existing cluster learns it from the leader).
    pub membership: Membership,
    /// Durable storage.
    pub storage: Box<dyn Storage>,
    /// Sends to peers.
    pub transport: Arc<dyn Transport>,
    /// Messages from peers (the receiving end of [`crate::transport::inbound_channel`]).
    pub inbound: Receiver<crate::transport::Inbound>,
    /// The replicated state machine.
    pub state_machine: M,
    /// Seed of the core's randomness (election timeouts).
    pub seed: u64,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::error::ConfigError),
    /// Storage could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The snapshot could not be restored into the state machine.
    #[error("restoring the snapshot failed: {reason}")]
    Restore {
        /// What the state machine said.
        reason: String,
    },
    /// The node was told to start a cluster other than the one its storage records (a
    /// restart with different flags): nothing was started.
    #[error("{0}")]
    BootstrapConflict(Box<BootstrapConflict>),
    /// A thread could not be spawned.
    #[error("spawning thread {name}: {source}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The configurations behind a [`StartError::BootstrapConflict`].
#[derive(Debug, thiserror::Error)]
#[error(
    "this node's storage records that its cluster was created as {recorded} (and is now \
     {current}), but it was started with {given}; start it with the recorded configuration \
     or none (the recorded one is used), or give it an empty data directory to make it a new \
     node"
)]
pub struct BootstrapConflict {
    /// What the storage recorded at the first start.
    pub recorded: Membership,
    /// The configuration in force now (from the log or snapshot).
    pub current: Membership,
    /// What this start was given.
    pub given: Membership,
}

/// The core and its outboxes. Guarded by one mutex, held only to step the core and route its
/// Ready onto the outboxes and the transport — never across I/O or a blocking send.
struct Core {
    raft: Raft,
    persist_outbox: Vec<PersistRequest>,
    apply_outbox: Vec<ApplyItem>,
    /// At most one local snapshot waits for the log writer.
    local_snapshot: Option<LocalSnapshot>,
    /// A new configuration for the log writer to hand the transport (outside the lock: an
    /// address may need resolving).
    members_update: Option<Membership>,
    /// Role, leader and configuration changes, for the ticker to log outside the lock.
    observer: observer::Observer,
}

/// State shared by the node's threads and its handle.
///
/// **Lock order**: `core` → `waiters` → `applied`, and `state_machine` → `applied`. Never take
/// `core` or `waiters` while holding `state_machine` or `applied` (the applier releases the
/// state machine before it publishes `applied` and answers waiters). `core` is held only to
/// step the core and route its Ready onto queues — never across I/O or a blocking send.
///
/// **Completion contract**: every proposal and read handed to `waiters` gets exactly one
/// completion (see [`Waiters`]); a completion is never dropped: the applier answers applied
/// entries, `route` answers what a removed node can no longer learn, a snapshot install
/// answers what it covers, a storage failure ([`Shared::fail`]) and shutdown answer the rest.
struct Shared<M> {
    id: NodeId,
    core: Mutex<Core>,
    state_machine: Mutex<M>,
    /// The highest index applied to the state machine, with a condvar for readers.
    applied: Mutex<LogIndex>,
    applied_changed: Condvar,
    waiters: Mutex<Waiters>,
    transport: Arc<dyn Transport>,
    persist_wake: Sender<()>,
    apply_wake: Sender<()>,
    next_read_context: AtomicU64,
    /// An operator asked for a snapshot now.
    snapshot_requested: AtomicBool,
    /// Frozen states for the snapshot thread to serialize (at most one in flight).
    snapshot_tx: Sender<PendingSnapshot>,
    /// What compaction took out of the core, for the snapshot thread to free (see
    /// [`snapshotter::dispose`]).
    disposal_tx: Sender<crate::raft::Compacted>,
    /// A snapshot is being serialized or saved; set by the applier, cleared by the log writer.
    snapshot_in_flight: AtomicBool,
    /// Snapshot policy, from the configuration.
    snapshot_policy: SnapshotPolicy,
    /// Set when storage failed: the node stops serving.
    failed: Mutex<Option<String>>,
    stopped: AtomicBool,
    /// The origin of the monotonic clock readings handed to the core (the node's start).
    clock_origin: Instant,
    /// What the threads record for `/metrics`.
    metrics: NodeMetrics,
    /// Woken by the applier after each batch it applied ([`Node::on_applied`]).
    apply_listeners: Mutex<Vec<Arc<dyn Wake>>>,
}

impl<M> Shared<M> {
    /// Routes the core's Ready: messages to the transport, durable work and committed entries
    /// onto the outboxes, read states to their waiters. Call with the core lock held; it only
    /// pushes onto queues.
    fn route(&self, core: &mut Core) {
        while core.raft.has_ready() {
            let routed = driver::split(core.raft.take_ready());
            if let Some(membership) = routed.membership {
                core.observer.membership_changed(&membership);
                core.members_update = Some(membership);
                let _ = self.persist_wake.try_send(());
            }
            for message in routed.messages {
                core.observer.message_sent(&message);
                self.transport.send(message);
            }
            if let Some(request) = routed.persist {
                core.persist_outbox.push(request);
                let _ = self.persist_wake.try_send(());
            }
            if !routed.apply.is_empty() {
                core.apply_outbox.extend(routed.apply);
                let _ = self.apply_wake.try_send(());
            }
            if !routed.read_states.is_empty() {
                let mut waiters = self.waiters.lock();
                // Read under the waiters lock: the applier publishes `applied` before it
                // takes this lock to release waiting reads, so no read is left behind.
                let applied = *self.applied.lock();
                waiters.complete_reads(routed.read_states, applied);
            }
        }
        core.observer.observe(&core.raft);
        // A node removed from the cluster hears nothing more about entries past its commit
        // index (a leader that removed itself appended some): their proposers learn now that
        // the outcome is unknown, instead of at their deadlines.
        if !core.raft.is_leader() && !core.raft.membership().contains(self.id) {
            let committed = core.raft.log().committed();
            self.waiters.lock().complete_unknowable_after(committed);
        }
    }

    fn is_serving(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst)
    }

    /// Storage failed: stop serving (the node falls silent so the cluster moves on) and fail
    /// every waiter.
    fn fail(&self, reason: String) {
        tracing::error!(node = %self.id, reason = %reason, "storage failed, node stops serving");
        *self.failed.lock() = Some(reason.clone());
        self.stopped.store(true, Ordering::SeqCst);
        self.waiters.lock().fail_all(&reason);
    }

    fn storage_error(&self) -> Option<ProposeError> {
        self.failed
            .lock()
            .as_ref()
            .map(|reason| ProposeError::Storage {
                reason: reason.clone(),
            })
    }
}

/// What a node reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: RoleKind,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub committed: LogIndex,
    /// The highest index applied to its state machine.
    pub applied: LogIndex,
    /// Its last log index.
    pub last_index: LogIndex,
    /// The highest index durable in its storage.
    pub persisted: LogIndex,
    /// The configuration in force.
    pub membership: Membership,
    /// Whether it stopped serving after a storage failure.
    pub failed: bool,
}

/// A running node: a blocking handle over its threads. Dropping it shuts the node down.
///
/// A `Node` is `Sync`: share it (in an `Arc`) between client threads.
pub struct Node<M: StateMachine> {
    shared: Arc<Shared<M>>,
    tick: std::time::Duration,
    /// The shortest election timeout: `election_ticks` ticks.
    election_timeout: std::time::Duration,
    shutdown_tx: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<M: StateMachine> Node<M> {
    /// Recovers from storage, restores the snapshot, and starts the node's threads:
    /// `n{id}-ticker`, `n{id}-inbound`, `n{id}-log-writer`, `n{id}-applier`.
    pub fn start(options: NodeOptions<M>) -> Result<Node<M>, StartError> {
        let NodeOptions {
            config,
            membership,
            mut storage,
            transport,
            inbound,
            mut state_machine,
            seed,
        } = options;
        config.validate()?;
        let id = config.id;
        let tick = config.tick;
        let election_timeout = config
            .tick
            .saturating_mul(u32::try_from(config.election_ticks).unwrap_or(u32::MAX));
        let snapshot_policy = SnapshotPolicy {
            entries: config.snapshot_entries,
            bytes: config.snapshot_bytes,
            margin_entries: config.snapshot_margin_entries,
            phase_quarters: SnapshotPolicy::phase_of(config.id),
        };
        let driver::Recovery {
            raft,
            applier,
            persister,
        } = driver::recover(
            config,
            storage.as_mut(),
            membership,
            &mut state_machine,
            seed,
        )?;
        transport.update_members(raft.membership());
        let stager = storage.snapshot_stager();
        let (persist_wake, persist_wake_rx) = crossbeam_channel::bounded(1);
        let (apply_wake, apply_wake_rx) = crossbeam_channel::bounded(1);
        let (snapshot_tx, snapshot_rx) = crossbeam_channel::bounded(1);
        let (disposal_tx, disposal_rx) = crossbeam_channel::bounded(4);
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let metrics = NodeMetrics::default();
        let shared = Arc::new(Shared {
            id,
            core: Mutex::new(Core {
                observer: observer::Observer::new(&raft, &metrics),
                raft,
                persist_outbox: Vec::new(),
                apply_outbox: Vec::new(),
                local_snapshot: None,
                members_update: None,
            }),
            state_machine: Mutex::new(state_machine),
            applied: Mutex::new(applier.last_applied().index),
            applied_changed: Condvar::new(),
            waiters: Mutex::new(Waiters::new(metrics.clone())),
            transport,
            persist_wake,
            apply_wake,
            next_read_context: AtomicU64::new(1),
            snapshot_requested: AtomicBool::new(false),
            snapshot_tx,
            disposal_tx,
            snapshot_in_flight: AtomicBool::new(false),
            snapshot_policy,
            failed: Mutex::new(None),
            stopped: AtomicBool::new(false),
            clock_origin: Instant::now(),
            metrics,
            apply_listeners: Mutex::new(Vec::new()),
        });
        let node = Node {
            shared: Arc::clone(&shared),
            tick,
            election_timeout,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            threads: Mutex::new(Vec::new()),
        };
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{id}-{name}"))
                .spawn(body)
                .map_err(|source| StartError::Spawn {
                    name: format!("{id}-{name}"),
                    source,
                })
        };
        {
            let mut threads = node.threads.lock();
            let (s, r) = (Arc::clone(&shared), shutdown_rx.clone());
            threads.push(spawn(
                "log-writer",
                Box::new(move || log_writer::run(&s, storage, persister, &persist_wake_rx, &r)),
            )?);
            let (s, r) = (Arc::clone(&shared), shutdown_rx.clone());
            threads.push(spawn(
                "applier",
                Box::new(move || applier::run(&s, applier, &apply_wake_rx, &r)),
            )?);
            let (s, r) = (Arc::clone(&shared), shutdown_rx.clone());
            threads.push(spawn(
                "snapshot",
                Box::new(move || snapshotter::run(&s, stager, &snapshot_rx, &disposal_rx, &r)),
            )?);
            let (s, r) = (Arc::clone(&shared), shutdown_rx.clone());
            threads.push(spawn(
                "inbound",
                Box::new(move || inbound::run(&s, &inbound, &r)),
            )?);
            let (s, r) = (Arc::clone(&shared), shutdown_rx);
            threads.push(spawn(
                "ticker",
                Box::new(move || ticker::run(&s, tick, &r)),
            )?);
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The shortest election timeout (`election_ticks` ticks): how long followers wait
    /// without hearing from a leader before one of them campaigns.
    pub fn election_timeout(&self) -> std::time::Duration {
        self.election_timeout
    }

    /// A target for a transport's reader threads that steps the messages they read straight
    /// into the core (see [`TcpTransport::deliver_directly`](crate::transport::tcp::TcpTransport::deliver_directly)),
    /// instead of queueing them for this node's `inbound` thread: one thread fewer to wake for
    /// every batch a peer sends, on the path of every write (the followers' appends, the
    /// leader's acknowledgements). It holds the node weakly and drops what arrives once the
    /// node is gone or stopped.
    pub fn peer_delivery(&self) -> Arc<dyn crate::transport::Deliver<crate::raft::Message>> {
        Arc::new(inbound::PeerDelivery {
            shared: Arc::downgrade(&self.shared),
        })
    }

    /// What the node's threads record (register it in a metrics registry).
    pub fn metrics(&self) -> &NodeMetrics {
        &self.shared.metrics
    }

    /// Proposals waiting on this node for their outcome.
    pub fn proposals_pending(&self) -> usize {
        self.shared.waiters.lock().proposals_pending()
    }

    /// Proposes `command` and waits until it is committed and applied, returning the state
    /// machine's response.
    ///
    /// Errors: `NotLeader` and `Busy` mean nothing was appended; `Dropped` means it was
    /// appended but will never commit; **`Timeout` and `Shutdown` mean the outcome is unknown**
    /// — the command may still commit, so retry only with a request id the state machine
    /// deduplicates.
    pub fn propose(&self, command: Vec<u8>, deadline: Instant) -> Result<Vec<u8>, ProposeError> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let id = self.submit_proposal(command, 0, &sender.into())?;
        match receiver.recv_deadline(deadline) {
            Ok(completion) => completion.outcome,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                self.shared.waiters.lock().remove_proposal(id);
                Err(ProposeError::Timeout)
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(ProposeError::Shutdown),
        }
    }

    /// Proposes `command` without waiting. Its outcome arrives later on `completions` as a
    /// [`ProposalCompletion`] carrying `tag` (the same outcomes as [`propose`](Node::propose),
    /// except that the caller keeps its own deadline). An error here means the proposal was
    /// not appended. `completions` must have room for every request the caller keeps in
    /// flight: a completion that does not fit is dropped.
    pub fn submit_proposal(
        &self,
        command: Vec<u8>,
        tag: u64,
        completions: &CompletionSender<Result<Vec<u8>, ProposeError>>,
    ) -> Result<EntryId, ProposeError> {
        if let Some(error) = self.shared.storage_error() {
            return Err(error);
        }
        if !self.shared.is_serving() {
            return Err(ProposeError::Shutdown);
        }
        let mut core = self.shared.core.lock();
        let id = core.raft.propose(command)?;
        self.shared
            .waiters
            .lock()
            .add_proposal(id, tag, completions.clone());
        self.shared.route(&mut core);
        Ok(id)
    }

    /// Proposes a batch of `(command, tag)` pairs under one core lock, routed once: one
    /// AppendEntries per follower and one persist request for the whole batch, instead of one
    /// per command. Returns, per command in order, its tag and entry id or why it was not
    /// appended; outcomes arrive on `completions` as with
    /// [`submit_proposal`](Node::submit_proposal).
    pub fn submit_proposals(
        &self,
        batch: Vec<(Vec<u8>, u64)>,
        completions: &CompletionSender<Result<Vec<u8>, ProposeError>>,
    ) -> Vec<(u64, Result<EntryId, ProposeError>)> {
        let refusal = self
            .shared
            .storage_error()
            .or_else(|| (!self.shared.is_serving()).then_some(ProposeError::Shutdown));
        if let Some(error) = refusal {
            return batch
                .into_iter()
                .map(|(_, tag)| (tag, Err(error.clone())))
                .collect();
        }
        let mut core = self.shared.core.lock();
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut waiters = self.shared.waiters.lock();
            for (command, tag) in batch {
                let outcome = core.raft.propose(command);
                if let Ok(id) = outcome {
                    waiters.add_proposal(id, tag, completions.clone());
                }
                outcomes.push((tag, outcome));
            }
        }
        self.shared.route(&mut core);
        outcomes
    }

    /// A linearizable read barrier (ReadIndex): returns once this node, as leader, has
    /// confirmed its leadership with a quorum **and** applied everything committed when the
    /// barrier was asked for. State read after it is at least as new as any write
    /// acknowledged before the call.
    pub fn read_barrier(&self, deadline: Instant) -> Result<LogIndex, ReadError> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let context = self.submit_read(0, &sender.into())?;
        match receiver.recv_deadline(deadline) {
            Ok(completion) => completion.outcome,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                self.shared.waiters.lock().remove_read(context);
                Err(ReadError::Timeout)
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(ReadError::Shutdown),
        }
    }

    /// Starts a read barrier without waiting; a [`ReadCompletion`] carrying `tag` arrives on
    /// `completions` once leadership is confirmed and the read point applied (then read the
    /// state machine with [`with_state_machine`](Node::with_state_machine)), or when the read
    /// fails. Returns the read's context.
    pub fn submit_read(
        &self,
        tag: u64,
        completions: &CompletionSender<Result<LogIndex, ReadError>>,
    ) -> Result<u64, ReadError> {
        if !self.shared.is_serving() {
            return Err(ReadError::Shutdown);
        }
        let context = self
            .shared
            .next_read_context
            .fetch_add(1, Ordering::Relaxed);
        let mut core = self.shared.core.lock();
        self.shared
            .waiters
            .lock()
            .add_read(context, tag, completions.clone());
        if let Err(error) = core.raft.read_index(context) {
            self.shared.waiters.lock().remove_read(context);
            return Err(error);
        }
        self.shared.route(&mut core);
        Ok(context)
    }

    /// Runs `read` on the state machine as it is now (after a barrier, this is a linearizable
    /// read).
    pub fn with_state_machine<R>(&self, read: impl FnOnce(&M) -> R) -> R {
        read(&self.shared.state_machine.lock())
    }

    /// A lease read barrier: like [`read_barrier`](Node::read_barrier) without a round trip,
    /// valid only while the leader holds a lease (requires `lease_reads`). A node whose storage
    /// failed, or that is shutting down, holds none (`Shutdown`).
    pub fn lease_barrier(&self, deadline: Instant) -> Result<LogIndex, ReadError> {
        let index = self.lease_read_index()?;
        self.wait_applied(index, deadline)?;
        Ok(index)
    }

    /// The read point of a lease read now, if this node holds a lease.
    fn lease_read_index(&self) -> Result<LogIndex, ReadError> {
        let core = self.shared.core.lock();
        if !self.shared.is_serving() {
            return Err(ReadError::Shutdown);
        }
        // The time of the read, read under the lock: not the last time the core was told.
        core.raft
            .lease_read(ticker::clock_reading(self.shared.clock_origin))
    }

    /// Starts a lease read without waiting: checks the lease now (like
    /// [`lease_barrier`](Node::lease_barrier)) and, if it holds, a [`ReadCompletion`] carrying
    /// `tag` arrives on `completions` once the state machine has applied the read point — at
    /// once if it has already. An error means the lease does not hold (nothing arrives).
    pub fn submit_lease_read(
        &self,
        tag: u64,
        completions: &CompletionSender<Result<LogIndex, ReadError>>,
    ) -> Result<(), ReadError> {
        let index = self.lease_read_index()?;
        let mut waiters = self.shared.waiters.lock();
        // Read under the waiters lock: the applier publishes `applied` before it takes this
        // lock to release waiting reads, so the read is released either here or there.
        let applied = *self.shared.applied.lock();
        waiters.add_read_at(index, applied, tag, completions.clone());
        Ok(())
    }

    /// Waits until the state machine has applied `index`.
    pub fn wait_applied(&self, index: LogIndex, deadline: Instant) -> Result<(), ReadError> {
        let mut applied = self.shared.applied.lock();
        while *applied < index {
            if !self.shared.is_serving() {
                return Err(ReadError::Shutdown);
            }
            if self
                .shared
                .applied_changed
                .wait_until(&mut applied, deadline)
                .timed_out()
                && *applied < index
            {
                return Err(ReadError::Timeout);
            }
        }
        Ok(())
    }

    /// A linearizable read: a read barrier, then `read` on the state machine.
    pub fn read<R>(&self, deadline: Instant, read: impl FnOnce(&M) -> R) -> Result<R, ReadError> {
        self.read_barrier(deadline)?;
        Ok(read(&self.shared.state_machine.lock()))
    }

    /// A read of this node's state machine as it is, with no barrier: possibly stale. Returns
    /// the applied index with the result so the caller knows how far behind it may be.
    pub fn read_local<R>(&self, read: impl FnOnce(&M) -> R) -> (LogIndex, R) {
        let state_machine = self.shared.state_machine.lock();
        let applied = *self.shared.applied.lock();
        (applied, read(&state_machine))
    }

    /// Why the node stopped serving, if its storage failed. A failed node answers nothing
    /// (proposals and reads fail with the reason), reports itself as a follower that knows no
    /// leader, and stays silent to its peers; restart it once the disk is fixed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    /// The node's current status. A node whose storage failed reports `failed`, the role
    /// `Follower` and no leader: it no longer acts on its role.
    pub fn status(&self) -> NodeStatus {
        let status = self.shared.core.lock().raft.status();
        let failed = self.shared.failed.lock().is_some();
        NodeStatus {
            id: status.id,
            role: if failed {
                RoleKind::Follower
            } else {
                status.role
            },
            term: status.term,
            leader: if failed { None } else { status.leader },
            committed: status.committed,
            applied: *self.shared.applied.lock(),
            last_index: status.last_index,
            persisted: status.persisted,
            membership: status.membership,
            failed,
        }
    }

    /// Registers `listener` to be woken by the applier thread after each batch of entries it
    /// applied (or snapshot it restored), once `applied` is published: a watch server looks
    /// at the state machine then. `wake` runs on the applier thread and must not block.
    pub fn on_applied(&self, listener: Arc<dyn Wake>) {
        self.shared.apply_listeners.lock().push(listener);
    }

    /// Asks the applier to take a snapshot now and compact the log behind it (operators:
    /// `kvctl snapshot`). Returns at once; the snapshot is taken after the next apply.
    pub fn request_snapshot(&self) {
        self.shared.snapshot_requested.store(true, Ordering::SeqCst);
        let _ = self.shared.apply_wake.try_send(());
    }

    /// The latest durable snapshot, if any (a consistent backup: `kvctl snapshot save`).
    pub fn latest_snapshot(&self) -> Option<SnapshotData> {
        self.shared.core.lock().raft.snapshot().cloned()
    }

    /// Hands leadership to `target` (thesis §3.10) and waits until this node sees it lead.
    /// Meanwhile this leader refuses proposals and its lease is void; the transfer is
    /// abandoned after an election timeout (`Timeout`).
    pub fn transfer_leadership(
        &self,
        target: NodeId,
        deadline: Instant,
    ) -> Result<(), TransferError> {
        if !self.shared.is_serving() {
            return Err(TransferError::Shutdown);
        }
        let start_term = {
            let mut core = self.shared.core.lock();
            core.raft.transfer_leadership(target)?;
            self.shared.route(&mut core);
            core.raft.term()
        };
        if target == self.shared.id {
            return Ok(());
        }
        loop {
            {
                let core = self.shared.core.lock();
                if core.raft.term() > start_term && core.raft.leader() == Some(target) {
                    return Ok(());
                }
                if core.raft.is_leader() && core.raft.transfer_target().is_none() {
                    return Err(TransferError::Timeout); // abandoned
                }
            }
            if Instant::now() >= deadline {
                return Err(TransferError::Timeout);
            }
            if !self.shared.is_serving() {
                return Err(TransferError::Shutdown);
            }
            std::thread::sleep(self.tick);
        }
    }

    /// If this node leads, hands leadership to the most up-to-date voter (graceful shutdown:
    /// the cluster does not wait an election timeout for a new leader). Returns the new leader.
    pub fn hand_over_leadership(&self, deadline: Instant) -> Result<Option<NodeId>, TransferError> {
        let target = {
            let core = self.shared.core.lock();
            if !core.raft.is_leader() {
                return Ok(None);
            }
            core.raft.most_up_to_date_voter()
        };
        match target {
            Some(target) => self
                .transfer_leadership(target, deadline)
                .map(|()| Some(target)),
            None => Ok(None), // a single voter: nobody to hand over to
        }
    }

    /// The cluster's configuration as this node knows it (the leader's is authoritative).
    pub fn members(&self) -> Membership {
        self.shared.core.lock().raft.membership().clone()
    }

    /// Changes the membership (joint consensus; see [`crate::raft::membership`]) and waits
    /// until the final configuration is committed, returning it.
    ///
    /// Errors: `NotLeader`, `Busy`, `Invalid`, `NotCaughtUp` and `WouldLoseQuorum` mean nothing
    /// was appended; `Dropped` means the change will never take effect; **`Timeout` and
    /// `Shutdown` mean it may still complete** (look at [`members`](Node::members)).
    pub fn change_membership(
        &self,
        changes: &[MemberChange],
        deadline: Instant,
    ) -> Result<Membership, MembershipError> {
        if !self.shared.is_serving() {
            return Err(MembershipError::Shutdown);
        }
        let started = {
            let mut core = self.shared.core.lock();
            let started = core.raft.propose_membership(changes)?;
            self.shared.route(&mut core);
            started
        };
        loop {
            {
                let core = self.shared.core.lock();
                let raft = &core.raft;
                if raft.log().committed() >= started.index {
                    match raft.log().term(started.index) {
                        Some(term) if term != started.term => return Err(MembershipError::Dropped),
                        Some(_) if !raft.membership_change_pending() => {
                            return Ok(raft.membership().clone());
                        }
                        // Committed; C(new) is on its way.
                        Some(_) => {}
                        // Compacted away before we looked: the outcome is unknown here.
                        None => return Err(MembershipError::Timeout),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(MembershipError::Timeout);
            }
            if !self.shared.is_serving() {
                return Err(MembershipError::Shutdown);
            }
            std::thread::sleep(self.tick);
        }
    }

    /// Adds member `id` (a learner first; with `voter`, promoted once it has caught up) and
    /// waits for it. Idempotent: adding a member that is already there (at the same address)
    /// succeeds, so a node that restarts its join is harmless. While another change is in
    /// progress or the learner is catching up, it retries until `deadline`.
    pub fn add_member(
        &self,
        id: NodeId,
        address: Option<MemberAddress>,
        voter: bool,
        deadline: Instant,
    ) -> Result<Membership, MembershipError> {
        let current = self.members();
        if current.contains(id) {
            if let (Some(wanted), Some(known)) = (&address, current.addresses.get(&id)) {
                if wanted != known {
                    return Err(MembershipError::Invalid {
                        reason: format!(
                            "{id} is already a member at peer {} / client {}; remove it first \
                             or pick another id",
                            known.peer, known.client
                        ),
                    });
                }
            }
        } else {
            let change = MemberChange::AddLearner { id, address };
            self.retry_while_busy(std::slice::from_ref(&change), deadline)?;
        }
        if voter && !self.members().is_voter(id) {
            return self.promote_member(id, deadline);
        }
        Ok(self.members())
    }

    /// Promotes learner `id` to voter once it has caught up, retrying until `deadline`.
    /// Promoting a member that already votes succeeds.
    pub fn promote_member(
        &self,
        id: NodeId,
        deadline: Instant,
    ) -> Result<Membership, MembershipError> {
        if self.members().is_voter(id) {
            return Ok(self.members());
        }
        self.retry_while_busy(&[MemberChange::Promote(id)], deadline)
    }

    /// Removes member `id` (voter or learner; the leader itself included, which then hands
    /// over and steps down) and waits until the change is committed.
    pub fn remove_member(
        &self,
        id: NodeId,
        deadline: Instant,
    ) -> Result<Membership, MembershipError> {
        self.retry_while_busy(&[MemberChange::Remove(id)], deadline)
    }

    /// Runs a change, retrying while the leader is busy with another one, the learner to
    /// promote is catching up, or a member the new configuration needs has not been heard from
    /// lately (a slow moment, or a node still starting); returns the last refusal when the
    /// deadline passes.
    fn retry_while_busy(
        &self,
        changes: &[MemberChange],
        deadline: Instant,
    ) -> Result<Membership, MembershipError> {
        loop {
            match self.change_membership(changes, deadline) {
                Err(
                    error @ (MembershipError::Busy { .. }
                    | MembershipError::NotCaughtUp { .. }
                    | MembershipError::WouldLoseQuorum { .. }),
                ) => {
                    if Instant::now() + self.tick >= deadline {
                        return Err(error);
                    }
                    std::thread::sleep(self.tick);
                }
                outcome => return outcome,
            }
        }
    }

    /// Makes this node campaign now (tests and operators).
    pub fn campaign(&self) {
        let mut core = self.shared.core.lock();
        core.raft.start_election();
        self.shared.route(&mut core);
    }

    /// Stops every thread and waits for them; idempotent. Waiting and later callers get
    /// `Shutdown`.
    pub fn shutdown(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shutdown_tx.lock().take();
        {
            // Taking the lock orders this notify after any waiter's check of `stopped`.
            let _applied = self.shared.applied.lock();
            self.shared.applied_changed.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
        self.shared.waiters.lock().shut_down();
    }
}

impl<M: StateMachine> Drop for Node<M> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
