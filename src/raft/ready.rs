//! What the core hands back after a step: work for the runtime to do, as a value.

use crate::error::ReadError;
use crate::raft::message::Message;
use crate::raft::snapshot::InstalledSnapshot;
use crate::types::{Entry, HardState, LogIndex, Membership, NodeId, Term};

/// The outcome of a read-index request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context, as passed to `read_index`.
    pub context: u64,
    /// The index the state machine must reach before the read may be served, or why the read
    /// failed (leadership lost).
    pub outcome: Result<LogIndex, ReadError>,
}

/// Work the runtime must do, in this order:
/// 1. persist `hard_state`, `snapshot` (save it, then compact or reset the stored log) and
///    `entries` (one sync), **then** send `persisted_messages` and report the last entry to
///    [`crate::raft::Raft::on_persisted`]; restore `snapshot` into the state machine before
///    applying anything after it;
/// 2. send `messages` at once (they do not depend on this Ready's persistence);
/// 3. apply `committed` in order;
/// 4. answer the reads in `read_states` once applied reaches their index.
#[derive(Debug, Default)]
#[must_use = "a Ready carries messages and entries that must be handled"]
pub struct Ready {
    /// The new term/vote, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader and installed in the core.
    pub snapshot: Option<InstalledSnapshot>,
    /// Entries to append (replacing any stored suffix from the first one's index).
    pub entries: Vec<Entry>,
    /// Messages that may be sent now.
    pub messages: Vec<Message>,
    /// Messages that may be sent only after `hard_state` and `entries` are durable (vote grants,
    /// append acknowledgements, vote requests).
    pub persisted_messages: Vec<Message>,
    /// Committed (and locally durable) entries to apply, in order.
    pub committed: Vec<Entry>,
    /// Completed or failed read-index requests.
    pub read_states: Vec<ReadState>,
    /// The configuration in force, when it changed since the last Ready (appended, truncated
    /// away, or installed with a snapshot): the runtime tells the transport how to reach new
    /// members.
    pub membership: Option<Membership>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.read_states.is_empty()
            && self.membership.is_none()
    }

    /// Whether the log writer has work in this Ready.
    pub fn needs_persist(&self) -> bool {
        self.hard_state.is_some()
            || self.snapshot.is_some()
            || !self.entries.is_empty()
            || !self.persisted_messages.is_empty()
    }
}

/// The role a node plays, without the role's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RoleKind {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win an election, without raising its term.
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// Leading.
    Leader,
}

/// A consistent picture of the core's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: RoleKind,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub committed: LogIndex,
    /// The highest index durable in its storage.
    pub persisted: LogIndex,
    /// The highest index handed to its applier.
    pub applied: LogIndex,
    /// Its last log index.
    pub last_index: LogIndex,
    /// The configuration in force.
    pub membership: Membership,
}
