//! The consensus algorithm as a deterministic state machine.
//!
//! **Pure:** no threads, clocks, files or sockets. Time arrives as [`Raft::tick`], randomness
//! from a seeded RNG, messages through [`Raft::step`], and everything the core wants done comes
//! back from [`Raft::take_ready`] as a [`Ready`] value. A simulator can therefore replay any run
//! from its seed, and the runtime never holds the core's lock across I/O.
//!
//! Implements Raft §5 plus pre-vote and check-quorum (thesis §9.6, §6.2), a no-op entry on
//! taking office (§8), pipelined replication with flow control, fast log backtracking,
//! ReadIndex and leases (thesis §6.4), all through [`Membership`]'s quorum arithmetic.

mod clock;
mod election;
pub mod log;
pub mod membership;
pub mod message;
pub mod progress;
pub mod quorum;
pub mod ready;
mod replication;
pub mod snapshot;

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::error::{ConfigError, ProposeError, ReadError, TransferError};
use crate::limits;
use crate::storage::Recovered;
use crate::types::{Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, NodeId, Term};

pub use clock::Monotonic;
pub use log::RaftLog;
pub use membership::MemberChange;
pub use message::{AppendResponse, Message, MessageBody};
pub use progress::{Progress, ProgressState};
pub use ready::{ReadState, Ready, RoleKind, Status};
pub use snapshot::{Compacted, InstalledSnapshot, SnapshotData, Transfer};

/// Why a message was ignored. Ignoring is always safe in Raft; the reason is for logs,
/// counters and tests.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The message is addressed to another node.
    #[error("message for {to} delivered to {id}")]
    WrongRecipient {
        /// This node.
        id: NodeId,
        /// The addressee.
        to: NodeId,
    },
    /// The message's term is older than ours.
    #[error("stale term {message_term} < {term}")]
    StaleTerm {
        /// The message's term.
        message_term: Term,
        /// Ours.
        term: Term,
    },
    /// A vote request arrived while we heard from a leader within the election timeout.
    #[error("vote request from {from} ignored: a leader is active")]
    LeaderActive {
        /// The candidate.
        from: NodeId,
    },
    /// The sender may not take part (a vote from a non-voter, say).
    #[error("message from non-member {from} ignored")]
    NotAMember {
        /// The sender.
        from: NodeId,
    },
    /// The message breaks the protocol's shape (non-contiguous entries, a term from the
    /// future inside it, an attempt to overwrite committed entries).
    #[error("malformed message from {from}: {reason}")]
    Malformed {
        /// The sender.
        from: NodeId,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A read waiting for a heartbeat round to confirm leadership.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    context: u64,
    index: LogIndex,
    round: u64,
}

/// The data only a leader has.
#[derive(Debug)]
struct LeaderState {
    /// Every other member's progress.
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_elapsed: u64,
    /// The latest heartbeat round broadcast, and the clock when recent rounds were sent,
    /// oldest first. Invariant: consecutive rounds ending at `round`.
    round: u64,
    rounds_sent_at: VecDeque<(u64, Monotonic)>,
    /// The latest round a quorum has answered.
    quorum_round: u64,
    /// Lease reads are valid while the clock at the read is before this: the send time of the
    /// latest round a quorum answered plus [`Config::lease_duration`]. Zero when void.
    lease_expires_at: Monotonic,
    /// Only rounds after this one can earn a lease (set when the lease is voided, so that a
    /// round sent before a transfer or a configuration change cannot restore it).
    lease_rounds_after: u64,
    /// No lease read until the commit index reaches this: the no-op appended when a transfer
    /// was abandoned (see `fence_abandoned_transfer`).
    lease_fence: LogIndex,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its own term (§8).
    reads_awaiting_commit: Vec<u64>,
    /// Reads wait for a heartbeat round that has not been sent yet. It goes out with the next
    /// Ready once no round is in flight (see [`LeaderState::read_round_due`]).
    read_round_needed: bool,
    /// New entries or a new commit index must go out with the next Ready.
    append_needed: bool,
    commit_news: bool,
    uncommitted_bytes: u64,
    /// A leadership transfer in progress: (target, ticks since it started).
    transfer: Option<(NodeId, u64)>,
    /// The tick at which this leader saw the latest configuration committed (removed members
    /// are replicated to for a grace period after it, so they learn of their removal).
    config_committed_at: Option<u64>,
    /// Whether this leader's term is known durable. A leader elected by other voters is (they
    /// were asked only after the sync); one that elected itself alone is not until an entry of
    /// its term is persisted, and until then everything it sends waits for the sync: after a
    /// crash before it, the node would lead the same term again and give other entries the
    /// ids it already sent.
    term_durable: bool,
}

impl LeaderState {
    /// Whether a heartbeat round for waiting reads should go out now. One round is in flight
    /// at a time: reads that arrive meanwhile wait for the next, which leaves when the current
    /// one is answered by a quorum — one round for the lot, as etcd's read loop batches them,
    /// instead of a round per Ready. Under load that is a few rounds per millisecond fewer to
    /// send, answer and count on every member. A round that is lost is replaced by the next
    /// heartbeat (every [`Config::heartbeat_ticks`]), which confirms the waiting reads too.
    fn read_round_due(&self) -> bool {
        self.read_round_needed && self.quorum_round >= self.round
    }

    /// Voids the lease; only a round sent from now on can earn a new one.
    fn void_lease(&mut self) {
        self.lease_expires_at = Monotonic::default();
        self.lease_rounds_after = self.round;
    }

    /// When `round` was sent, if it is still remembered.
    fn round_sent_at(&self, round: u64) -> Option<Monotonic> {
        let &(first, _) = self.rounds_sent_at.front()?;
        let offset = usize::try_from(round.checked_sub(first)?).ok()?;
        let &(found, sent_at) = self.rounds_sent_at.get(offset)?;
        debug_assert_eq!(found, round, "rounds are remembered consecutively");
        Some(sent_at)
    }
}

/// A node's role, owning the data that only that role has.
#[derive(Debug)]
enum Role {
    Follower { leader: Option<NodeId> },
    PreCandidate { votes: BTreeMap<NodeId, bool> },
    Candidate { votes: BTreeMap<NodeId, bool> },
    Leader(Box<LeaderState>),
}

/// Heartbeat rounds remembered for lease accounting.
const ROUNDS_REMEMBERED_MAX: usize = 1024;

/// The consensus core of one node. See the module docs.
#[derive(Debug)]
pub struct Raft {
    id: NodeId,
    config: Config,
    /// Invariant: never decreases.
    term: Term,
    /// The vote cast in `term`; cleared only when the term rises.
    vote: Option<NodeId>,
    role: Role,
    log: RaftLog,
    /// The configuration in force: always `configs.latest()`.
    membership: Membership,
    configs: membership::ConfigHistory,
    /// Counts changes of `membership`; compared with the count last handed out in a Ready
    /// (cheaper than comparing configurations on every step).
    membership_version: u64,
    membership_version_handed: u64,
    election_elapsed: u64,
    randomized_election_timeout: u64,
    /// While `ticks` is below this, this node counts as having heard from a leader within the
    /// election timeout and grants no vote or pre-vote (thesis §4.2.3): set one election
    /// timeout ahead whenever it hears from the leader of its term. Kept by the node whatever
    /// happens to its role or term meanwhile (a stale message may raise its term and forget
    /// the leader; the silence a lease relies on must not end with it). A node that restarts
    /// with durable state starts with it set too, as if it had heard from a leader at startup
    /// (thesis §6.4.1): it may have answered a heartbeat just before it crashed, and that
    /// leader's lease may still hold. Zero for a node that starts empty.
    leader_heard_until: u64,
    /// Ticks since this core was created. Invariant: `ticks == clock / tick`.
    ticks: u64,
    /// The latest reading of the runtime's monotonic clock (see [`Raft::advance_clock`]).
    /// Invariant: never decreases.
    clock: Monotonic,
    rng: StdRng,
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    /// The hard state last handed to storage.
    hard_state_handed: HardState,
    /// The latest local snapshot (what a leader streams to followers that need it).
    snapshot: Option<SnapshotData>,
    /// A snapshot being received from the leader.
    incoming: Option<snapshot::IncomingSnapshot>,
    /// A snapshot received and installed, for the next Ready.
    installed_snapshot: Option<InstalledSnapshot>,
}

impl Raft {
    /// A core starting from durable state. The configuration is the latest membership entry in
    /// the log, else the snapshot's, else `initial_membership` (a new cluster's bootstrap).
    pub fn new(
        config: Config,
        recovered: Recovered,
        initial_membership: Membership,
        seed: u64,
    ) -> Result<Raft, ConfigError> {
        config.validate()?;
        let snapshot = recovered
            .snapshot
            .as_ref()
            .map(|meta| meta.last)
            .unwrap_or_default();
        let base_membership = recovered
            .snapshot
            .as_ref()
            .map(|meta| meta.membership.clone())
            .unwrap_or(initial_membership);
        // Anything durable means this node ran before. (A node that never made its term
        // durable was never counted toward a lease: see `advance_quorum_round`.)
        let restarted = recovered.hard_state != HardState::default()
            || snapshot.index > LogIndex(0)
            || !recovered.entries.is_empty();
        // The stored log may overlap the snapshot by the compaction margin: keep only what
        // follows it. An entry at the snapshot's index with another term would mean the rest
        // does not continue the snapshot; drop it all (the leader will resend it).
        let mut entries = recovered.entries;
        if let Some(position) = entries
            .iter()
            .position(|entry| entry.index() == snapshot.index)
        {
            if entries[position].term() != snapshot.term {
                entries.clear();
            } else {
                entries.drain(..=position);
            }
        }
        entries.retain(|entry| entry.index() > snapshot.index);
        if entries
            .first()
            .is_some_and(|first| first.index() != snapshot.index.next())
        {
            return Err(ConfigError::Invalid {
                reason: format!(
                    "the stored log starts at {} but the snapshot ends at {}",
                    entries[0].index(),
                    snapshot.index
                ),
            });
        }
        let mut configs = membership::ConfigHistory::new(base_membership);
        configs.record(&entries);
        let membership = configs.latest().clone();
        let mut raft = Raft {
            id: config.id,
            term: recovered.hard_state.term,
            vote: recovered.hard_state.vote,
            role: Role::Follower { leader: None },
            log: RaftLog::new(snapshot, entries),
            membership_version: 0,
            membership_version_handed: 0,
            membership,
            configs,
            election_elapsed: 0,
            randomized_election_timeout: config.election_ticks,
            leader_heard_until: if restarted { config.election_ticks } else { 0 },
            ticks: 0,
            clock: Monotonic::default(),
            rng: StdRng::seed_from_u64(seed),
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            hard_state_handed: recovered.hard_state,
            snapshot: None,
            incoming: None,
            installed_snapshot: None,
            config,
        };
        raft.reset_election_timer();
        Ok(raft)
    }

    /// Tells the core the time: `now` is a reading of the runtime's monotonic clock (since the
    /// node started). Runs one [`tick`](Raft::tick) for every tick boundary passed since the
    /// last reading, so election timeouts, heartbeats and check-quorum see a pause as long as
    /// it was; after a very long pause only the last [`catch_up_ticks_max`] are run (a timer
    /// fires at most once per election timeout anyway) and heartbeats go out once, at the end.
    /// Readings older than the latest are ignored.
    ///
    /// The runtime calls this before every `tick`-like wakeup **and before stepping
    /// messages**: a follower must date what it hears from a leader no earlier than it heard
    /// it, or ticks that elapsed before would count after (the lease depends on that silence).
    ///
    /// [`catch_up_ticks_max`]: Raft::catch_up_ticks_max
    pub fn advance_clock(&mut self, now: Monotonic) {
        if now <= self.clock {
            return;
        }
        let tick_nanos = self.config.tick_nanos();
        let due = clock::ticks_due(self.ticks, now, tick_nanos);
        let run = due.min(self.catch_up_ticks_max());
        // Ticks beyond the catch-up bound pass uncounted by the timers, and first.
        self.ticks += due - run;
        for k in 1..=run {
            let tick_end = Monotonic((self.ticks + 1).saturating_mul(tick_nanos));
            self.run_tick(tick_end, k == run);
        }
        self.clock = now;
    }

    /// The most ticks one [`advance_clock`](Raft::advance_clock) runs: two election
    /// timeouts, enough for a follower's randomized timeout to fire and for a leader's
    /// check-quorum to look at a whole period with nobody heard.
    pub fn catch_up_ticks_max(&self) -> u64 {
        2 * self.config.election_ticks
    }

    /// The latest time the core knows of.
    pub fn clock(&self) -> Monotonic {
        self.clock
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader this node knows of (itself when leading).
    pub fn leader(&self) -> Option<NodeId> {
        match &self.role {
            Role::Follower { leader } => *leader,
            Role::Leader(_) => Some(self.id),
            Role::PreCandidate { .. } | Role::Candidate { .. } => None,
        }
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The log.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The configuration in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The role, without its data.
    pub fn role(&self) -> RoleKind {
        match &self.role {
            Role::Follower { .. } => RoleKind::Follower,
            Role::PreCandidate { .. } => RoleKind::PreCandidate,
            Role::Candidate { .. } => RoleKind::Candidate,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// A leader's view of a follower's progress (for tests and status pages).
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        match &self.role {
            Role::Leader(leader) => leader.progress.get(&id),
            _ => None,
        }
    }

    /// A consistent picture of the core.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role(),
            term: self.term,
            leader: self.leader(),
            committed: self.log.committed(),
            persisted: self.log.persisted(),
            applied: self.log.applied_handed(),
            last_index: self.log.last_index(),
            membership: self.membership.clone(),
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }

    /// Proposes a command. Only a leader accepts; the returned id identifies the entry, which
    /// commits if and only if an entry with that id is later applied.
    pub fn propose(&mut self, command: Vec<u8>) -> Result<EntryId, ProposeError> {
        let bytes = command.len() as u64;
        if bytes > limits::COMMAND_BYTES_MAX {
            return Err(ProposeError::TooLarge {
                bytes,
                limit: limits::COMMAND_BYTES_MAX,
            });
        }
        let leader_hint = self.leader();
        let term = self.term;
        let index = self.log.last_index().next();
        let uncommitted_bytes_max = self.config.uncommitted_bytes_max;
        let Role::Leader(leader) = &mut self.role else {
            return Err(ProposeError::NotLeader { leader_hint });
        };
        if leader.transfer.is_some() {
            // Thesis §3.10: stop accepting proposals while handing over.
            return Err(ProposeError::Busy {
                reason: "leadership transfer in progress",
            });
        }
        let entry = Entry {
            id: EntryId::new(term, index),
            payload: EntryPayload::Command(command),
        };
        let size = entry.size_bytes();
        if leader.uncommitted_bytes > 0 && leader.uncommitted_bytes + size > uncommitted_bytes_max {
            return Err(ProposeError::Busy {
                reason: "too many uncommitted bytes",
            });
        }
        leader.uncommitted_bytes += size;
        leader.append_needed = true;
        let id = entry.id;
        self.log.append_own(entry);
        Ok(id)
    }

    /// Asks for a linearizable read point (thesis §6.4). The answer arrives as a
    /// [`ReadState`] with the same `context` in a later Ready, once a heartbeat round sent
    /// after this call has been answered by a quorum; the read may be served when the state
    /// machine has applied the returned index.
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadError> {
        let leader_hint = self.leader();
        let committed_in_term = self.committed_in_current_term();
        let Role::Leader(leader) = &mut self.role else {
            return Err(ReadError::NotLeader { leader_hint });
        };
        if leader.pending_reads.len() + leader.reads_awaiting_commit.len()
            >= limits::PENDING_READS_MAX
        {
            return Err(ReadError::Busy);
        }
        if !committed_in_term {
            leader.reads_awaiting_commit.push(context);
            return Ok(());
        }
        self.start_read(context);
        Ok(())
    }

    /// A lease read: the index to wait for, if this leader holds a valid lease. Requires
    /// `lease_reads` (and so check-quorum); the lease runs [`Config::lease_duration`] from the
    /// send time of the latest heartbeat round a quorum answered (counting followers that hold
    /// this term durably), is void during a leadership transfer, after a configuration change
    /// until a later round is answered, and after an abandoned transfer until its fence
    /// commits, and it dies with the leadership.
    ///
    /// `now` is the caller's monotonic clock read **at the moment of the read** (under the
    /// same lock as this call): a leader that was paused past its lease refuses even if it has
    /// not yet been told the time since (its ticker may not have run). An older `now` than the
    /// core's clock counts as the core's clock.
    pub fn lease_read(&self, now: Monotonic) -> Result<LogIndex, ReadError> {
        let now = now.max(self.clock);
        let Role::Leader(leader) = &self.role else {
            return Err(ReadError::NotLeader {
                leader_hint: self.leader(),
            });
        };
        // A lease is void the moment a transfer starts: the target may win before the lease
        // would have run out (PITFALLS #6).
        if !self.config.lease_reads
            || !self.committed_in_current_term()
            || self.log.committed() < leader.lease_fence
            || now >= leader.lease_expires_at
            || leader.transfer.is_some()
        {
            return Err(ReadError::NoLease);
        }
        Ok(self.log.committed())
    }

    /// Starts handing leadership to `target` (thesis §3.10): proposals are refused meanwhile,
    /// the lease is void, the target is brought up to date and then told to campaign at once
    /// (`TimeoutNow`). Abandoned after an election timeout. Transferring to itself is a no-op.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        let leader_hint = self.leader();
        if target == self.id && self.is_leader() {
            return Ok(());
        }
        if !self.membership.is_voter(target) {
            return Err(TransferError::NotAVoter { target });
        }
        let Role::Leader(leader) = &mut self.role else {
            return Err(TransferError::NotLeader { leader_hint });
        };
        leader.transfer = Some((target, 0));
        leader.void_lease();
        self.maybe_send_timeout_now(target);
        if self.transfer_target() == Some(target) {
            self.send_append(target, true);
        }
        Ok(())
    }

    /// The voter (other than this leader) that holds the most of the log: the best target for
    /// handing leadership over.
    pub fn most_up_to_date_voter(&self) -> Option<NodeId> {
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        leader
            .progress
            .iter()
            .filter(|(&id, _)| self.membership.is_voter(id))
            .max_by_key(|(_, progress)| progress.matched)
            .map(|(&id, _)| id)
    }

    /// The target of a leadership transfer in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(leader) => leader.transfer.map(|(target, _)| target),
            _ => None,
        }
    }

    /// Sends `TimeoutNow` to the transfer target once it holds the whole log.
    pub(crate) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let last = self.log.last_index();
        let term = self.term;
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let caught_up = leader.transfer.is_some_and(|(target, _)| target == from)
            && leader
                .progress
                .get(&from)
                .is_some_and(|progress| progress.matched == last);
        if caught_up {
            let last = self.log.last_id();
            self.send(from, term, MessageBody::TimeoutNow { last });
        }
    }

    /// A transfer was abandoned, but a TimeoutNow sent for it may still arrive and make the
    /// target campaign with votes that skip the heard-from-a-leader check — while this leader,
    /// its lease earned again, serves lease reads. Appends a no-op, the fence, and holds lease
    /// reads back until it commits: a target that holds the fence no longer ends its log at the
    /// TimeoutNow's `last` and ignores it, and a target that lacks it cannot win, as a quorum
    /// holds a longer log of the same term (and if it won first, the fence can never commit).
    fn fence_abandoned_transfer(&mut self) {
        let fence = Entry {
            id: EntryId::new(self.term, self.log.last_index().next()),
            payload: EntryPayload::Noop,
        };
        let index = fence.id.index;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.lease_fence = index;
        leader.append_needed = true;
        self.log.append_own(fence);
        self.maybe_commit(); // a single voter commits by itself
    }

    /// Whether the leader has committed an entry of its own term: until then its commit index
    /// may lag the true one, so it must not serve reads (Raft §8).
    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    /// Storage reports that every entry up to `last` is durable.
    pub fn on_persisted(&mut self, last: EntryId) {
        let term = self.term;
        if let Role::Leader(leader) = &mut self.role {
            if last.term == term && self.log.matches(last) {
                leader.term_durable = true;
            }
        }
        if self.log.on_persisted(last) && self.is_leader() {
            self.maybe_commit();
        }
    }

    /// Whether a Ready has anything in it.
    pub fn has_ready(&self) -> bool {
        let leader_work = match &self.role {
            Role::Leader(leader) => {
                leader.append_needed || leader.commit_news || leader.read_round_due()
            }
            _ => false,
        };
        leader_work
            || self.hard_state() != self.hard_state_handed
            || self.log.has_unpersisted()
            || self.log.has_committed()
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || !self.read_states.is_empty()
            || self.installed_snapshot.is_some()
            || self.membership_version != self.membership_version_handed
    }

    /// Takes the work accumulated since the last call. See [`Ready`] for what to do with it.
    pub fn take_ready(&mut self) -> Ready {
        self.flush_leader_broadcasts();
        let hard_state = self.hard_state();
        let hard_state = if hard_state != self.hard_state_handed {
            self.hard_state_handed = hard_state;
            Some(hard_state)
        } else {
            None
        };
        let membership = if self.membership_version != self.membership_version_handed {
            self.membership_version_handed = self.membership_version;
            Some(self.membership.clone())
        } else {
            None
        };
        let mut messages = std::mem::take(&mut self.messages);
        let mut persisted_messages = std::mem::take(&mut self.persisted_messages);
        if matches!(&self.role, Role::Leader(leader) if !leader.term_durable) {
            persisted_messages.append(&mut messages);
        }
        Ready {
            membership,
            hard_state,
            snapshot: self.installed_snapshot.take(),
            entries: self.log.take_unpersisted(),
            messages,
            persisted_messages,
            committed: self
                .log
                .take_committed(limits::COMMITTED_BYTES_PER_READY_MAX),
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.config.election_ticks;
        self.randomized_election_timeout = self.rng.random_range(base..2 * base);
    }

    fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.messages.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        self.persisted_messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Checks the cross-field invariants in debug builds.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        if cfg!(debug_assertions) {
            debug_assert_eq!(
                self.ticks,
                self.clock.0 / self.config.tick_nanos(),
                "a tick is counted for every tick of the clock"
            );
            if let Role::Leader(leader) = &self.role {
                debug_assert_eq!(self.vote, Some(self.id), "a leader voted for itself");
                for (id, progress) in &leader.progress {
                    debug_assert!(progress.matched < progress.next, "{id}: matched < next");
                    debug_assert!(progress.matched <= self.log.last_index());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
