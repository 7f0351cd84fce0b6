//! One error enum per layer, each `#[non_exhaustive]` so that layers can grow without breaking
//! callers, and an umbrella [`Error`] for callers that do not care which layer failed.

use std::path::PathBuf;

use crate::types::{LogIndex, NodeId};

/// Encoding or decoding a value failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes do not decode to a value of the expected type.
    #[error("malformed encoding: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
    /// A value or frame is larger than the limit for its kind.
    #[error("{what} of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The value decoded but bytes were left over.
    #[error("{extra} trailing bytes after the encoded value")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// A record's checksum does not match its payload.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum stored with the record.
        stored: u32,
        /// The checksum of the payload as read.
        computed: u32,
    },
    /// Encoding failed (a value serde cannot represent).
    #[error("cannot encode: {reason}")]
    Encode {
        /// What the encoder said.
        reason: String,
    },
}

/// A configuration is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration breaks a rule; `reason` says which.
    #[error("invalid configuration: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// Durable storage failed. After [`StorageError::Poisoned`] the storage refuses all work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O call failed.
    #[error("{operation} on {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Data on disk is damaged at a place where it cannot safely be repaired.
    #[error("corrupt data in {file} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// The byte offset of the damage.
        offset: u64,
        /// What was found.
        reason: String,
    },
    /// A file was written by an unknown format version.
    #[error("{file} has format version {found}; this build reads version {supported}")]
    UnknownVersion {
        /// The file.
        file: PathBuf,
        /// The version found in its header.
        found: u32,
        /// The version this build understands.
        supported: u32,
    },
    /// Another process holds the data directory's lock.
    #[error("data directory {dir} is locked by another process")]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// An earlier sync failed; nothing more may be written or trusted (the fsyncgate lesson).
    #[error("storage is poisoned by an earlier failed sync: {reason}")]
    Poisoned {
        /// The original failure.
        reason: String,
    },
    /// The storage belongs to a node instance that has crashed (test harness only).
    #[error("storage instance was crashed")]
    Crashed,
    /// A request asked for entries that are not (or no longer) in the log.
    #[error("entries {from}..{to} are outside the stored log {first}..={last}")]
    OutOfRange {
        /// First index asked for.
        from: LogIndex,
        /// One past the last index asked for.
        to: LogIndex,
        /// The first stored index.
        first: LogIndex,
        /// The last stored index.
        last: LogIndex,
    },
    /// A caller broke the storage contract (a gap in appended indexes, say).
    #[error("storage misuse: {reason}")]
    Misuse {
        /// What was wrong.
        reason: String,
    },
}

/// Why a proposal was not accepted or its outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; `leader_hint` is the leader it knows of, if any. The
    /// proposal was not appended and may safely be sent to the leader.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The current leader as far as this node knows.
        leader_hint: Option<NodeId>,
    },
    /// The leader is refusing proposals for now (too many uncommitted bytes, or a leadership
    /// transfer in progress). Nothing was appended; retry later.
    #[error("leader is busy: {reason}")]
    Busy {
        /// Why.
        reason: &'static str,
    },
    /// The command is larger than the limit. Nothing was appended.
    #[error("command of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Command size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The entry was appended but then overwritten by another leader's entry: it will never
    /// commit. Safe to retry.
    #[error("the proposal was dropped by a leader change and will never commit")]
    Dropped,
    /// The deadline passed before the outcome was known. **The entry may still commit**;
    /// retry only with a request id the state machine deduplicates.
    #[error("timed out; the proposal may still commit")]
    Timeout,
    /// The outcome is unknown and this node cannot learn it: it installed a snapshot from the
    /// leader that covers the entry's index (so it cannot tell whether its entry or another one
    /// committed there), or it was removed from the cluster and hears no more of the log.
    #[error("outcome unknown: a snapshot covered the proposal's index, or this node was removed")]
    Indeterminate,
    /// The node shut down before the outcome was known; the entry may still commit.
    #[error("node is shutting down; the proposal may still commit")]
    Shutdown,
    /// Storage failed; the node has stopped serving.
    #[error("storage failed: {reason}")]
    Storage {
        /// The storage error.
        reason: String,
    },
}

/// Why a linearizable read could not be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// This node is not the leader.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The current leader as far as this node knows.
        leader_hint: Option<NodeId>,
    },
    /// Leadership could not be confirmed before the deadline (or leadership was lost).
    #[error("timed out confirming leadership")]
    Timeout,
    /// Too many reads are waiting.
    #[error("too many pending reads")]
    Busy,
    /// The node is shutting down.
    #[error("node is shutting down")]
    Shutdown,
    /// Lease reads are not enabled or the lease is not currently held.
    #[error("no valid lease")]
    NoLease,
}

/// Why a leadership transfer did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// This node is not the leader.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The current leader as far as this node knows.
        leader_hint: Option<NodeId>,
    },
    /// The target is not a voting member of the cluster.
    #[error("{target} is not a voting member")]
    NotAVoter {
        /// The requested target.
        target: NodeId,
    },
    /// The target did not take over within the deadline (or an election timeout): the transfer
    /// was abandoned and this node (or another) leads.
    #[error("the transfer did not complete in time")]
    Timeout,
    /// The node is shutting down.
    #[error("node is shutting down")]
    Shutdown,
}

/// Why a membership change was refused, or what became of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// This node is not the leader. Nothing was appended.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The current leader as far as this node knows.
        leader_hint: Option<NodeId>,
    },
    /// Another change is still in progress, the new leader has not yet committed an entry of
    /// its own term, or a leadership transfer is under way. Nothing was appended; retry.
    #[error("membership change refused for now: {reason}")]
    Busy {
        /// Why.
        reason: &'static str,
    },
    /// The change makes no sense against the current configuration (adding a member twice,
    /// removing a non-member, removing every voter...). Nothing was appended.
    #[error("invalid membership change: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The learner to promote has not caught up with the leader's log yet. Nothing was
    /// appended; retry once it has.
    #[error("{id} is not caught up: it holds the log to {matched}, the leader to {last}")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// What it holds.
        matched: LogIndex,
        /// The leader's last index.
        last: LogIndex,
    },
    /// The new configuration could not reach a quorum with the members that are healthy now
    /// (heard from within an election timeout), so the cluster would stall. Nothing was
    /// appended.
    #[error("refused: the new voters {voters:?} would have no quorum among the healthy members {healthy:?}")]
    WouldLoseQuorum {
        /// The voters the change would leave (both halves while joint).
        voters: Vec<NodeId>,
        /// The members heard from recently.
        healthy: Vec<NodeId>,
    },
    /// The change was appended but overwritten by another leader: it will never take effect.
    #[error("the change was dropped by a leader change and will never take effect")]
    Dropped,
    /// The deadline passed before the change completed. **It may still complete.**
    #[error("timed out; the change may still complete")]
    Timeout,
    /// The node is shutting down; the change may still complete.
    #[error("node is shutting down; the change may still complete")]
    Shutdown,
}

/// Sending to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is not reachable now; the messages were dropped (Raft retries).
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// The peer id is not known to the transport.
    #[error("unknown peer {peer}")]
    UnknownPeer {
        /// The peer.
        peer: NodeId,
    },
    /// A frame could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Any keyval error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`CodecError`].
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// See [`StorageError`].
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// See [`ProposeError`].
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// See [`ReadError`].
    #[error(transparent)]
    Read(#[from] ReadError),
    /// See [`TransportError`].
    #[error(transparent)]
    Transport(#[from] TransportError),
}
