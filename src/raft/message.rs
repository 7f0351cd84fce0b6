//! Messages between Raft peers.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, EntryId, LogIndex, NodeId, SnapshotMeta, Term};

/// One message from one node to another, stamped with the sender's term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// A candidate asks for a vote (Raft §5.2), or a pre-candidate asks whether it could win
    /// (thesis §9.6) without disturbing anyone's term.
    RequestVote {
        /// Whether this is a pre-vote.
        pre_vote: bool,
        /// The candidate's last log entry, for the election restriction (§5.4.1).
        last_log: EntryId,
        /// Set by a leadership transfer: bypasses the "heard from a leader recently" check.
        transfer: bool,
    },
    /// The answer to a `RequestVote`.
    RequestVoteResponse {
        /// Whether it answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// The leader replicates entries after `prev` (Raft §5.3).
    AppendEntries {
        /// The entry just before `entries`; the follower must hold it.
        prev: EntryId,
        /// Entries with indexes `prev.index + 1 ..`, contiguous.
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: LogIndex,
    },
    /// The answer to an `AppendEntries`.
    AppendEntriesResponse(AppendResponse),
    /// A leader's heartbeat. `commit` is capped at what the follower is known to match, so a
    /// heartbeat can never commit a divergent entry on a follower.
    Heartbeat {
        /// The commit index the follower may adopt.
        commit: LogIndex,
        /// The heartbeat round, echoed back; confirms leadership for read-index and leases.
        round: u64,
    },
    /// The answer to a `Heartbeat`.
    HeartbeatResponse {
        /// The round being answered.
        round: u64,
    },
    /// Leadership transfer: the receiver should campaign now (thesis §3.10) — if its log still
    /// ends at `last`. A TimeoutNow that arrives after its transfer was abandoned finds the
    /// receiver past `last` (the leader appends a no-op on abandoning, its fence) and is
    /// ignored.
    TimeoutNow {
        /// The leader's last entry when it sent this; the target held all of it.
        last: EntryId,
    },
    /// One chunk of a snapshot the follower needs because the entries it lacks were compacted
    /// away (Raft §7). Chunks go one at a time; each is acknowledged.
    InstallSnapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// Where this chunk starts in the snapshot's bytes.
        offset: u64,
        /// The snapshot's length in bytes.
        total: u64,
        /// CRC-32 of the whole snapshot, verified before it is installed.
        checksum: u32,
        /// The chunk.
        data: Vec<u8>,
    },
    /// The follower holds the first `next_offset` bytes of the snapshot ending at `last`
    /// (resume point; 0 asks the leader to start over).
    InstallSnapshotResponse {
        /// The snapshot's last entry.
        last: EntryId,
        /// The next byte the follower needs.
        next_offset: u64,
    },
}

/// The outcome of an `AppendEntries` on the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResponse {
    /// The follower's log matches the leader's up to and including `matched`. Carrying the
    /// term as well as the index means a late answer about an entry since overwritten cannot be
    /// mistaken for a current one.
    Success {
        /// The last entry known to match.
        matched: EntryId,
    },
    /// The follower does not hold `rejected_prev`; `hint` is the last entry of its log at or
    /// below `rejected_prev` whose term is at most the leader's `prev` term (fast backtracking).
    Reject {
        /// The `prev.index` of the rejected message.
        rejected_prev: LogIndex,
        /// Where the leader should look for the match point.
        hint: EntryId,
    },
}

impl Message {
    /// A short name of the message kind, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse(_) => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::TimeoutNow { .. } => "TimeoutNow",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
        }
    }

    /// Approximate size in bytes, for counters and batching.
    pub fn size_bytes(&self) -> u64 {
        match &self.body {
            MessageBody::AppendEntries { entries, .. } => {
                64 + entries.iter().map(Entry::size_bytes).sum::<u64>()
            }
            MessageBody::InstallSnapshot { data, .. } => 128 + data.len() as u64,
            _ => 48,
        }
    }
}
