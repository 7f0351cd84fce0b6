//! The client protocol: what travels between a [`Client`](crate::client::Client) and a
//! [`Server`](crate::server::Server), and the framing both ends share.
//!
//! Every message is one [`codec`] record — `[len u32][crc32 u32][payload]` — whose payload is
//! one encoded [`RequestFrame`] (client → server) or [`ResponseFrame`] (server → client), at
//! most [`FRAME_BYTES_MAX`] bytes. A connection carries many requests at once (pipelining):
//! responses come back as they complete, not in request order, and carry the request's id.
//!
//! ```text
//! client ── RequestFrame { request_id: 7, timeout_ms, body: Write(put k v) } ──► server
//! client ── RequestFrame { request_id: 8, timeout_ms, body: Read(get k) }    ──► server
//! client ◄── ResponseFrame { request_id: 8, result: Ok(Read { .. }) }        ── server
//! client ◄── ResponseFrame { request_id: 7, result: Ok(Written(..)) }        ── server
//! ```

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{self, RecordRead};
use crate::error::CodecError;
use crate::kv::{Command, KeyRange, KvError, LeaseId, ReadRequest, ReadResponse, Response};
use crate::limits::{FRAME_BYTES_MAX, SNAPSHOT_CHUNK_BYTES};
use crate::raft::RoleKind;
mod assembler;
pub mod budget;
pub use assembler::FrameAssembler;

use crate::types::{EntryId, LogIndex, MemberAddress, Membership, NodeId, SnapshotMeta, Term};
use budget::{ByteBudget, Reservation};

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable (the default): the leader confirms its leadership with a quorum
    /// (ReadIndex) and serves the read once it has applied everything committed before it.
    #[default]
    Linearizable,
    /// The leader serves from its lease without a quorum round trip; linearizable only while
    /// clocks drift less than the configured margin. Needs `lease_reads` on the node.
    Lease,
    /// Any node serves from its own state as it is; may be stale. The reply says how far
    /// behind the node's known commit index it is.
    Stale,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// A write, proposed to the log. Carry a registered session for exactly-once retries;
    /// a session is registered by proposing [`Command::register_session`] the same way.
    Write(Command),
    /// A read.
    Read {
        /// What to read.
        request: ReadRequest,
        /// How fresh.
        consistency: Consistency,
    },
    /// The node's status.
    Status,
    /// Take a snapshot now and compact the log behind it (`kvctl snapshot`). Answered at once
    /// with [`ResponseBody::SnapshotRequested`]; the snapshot is durable once
    /// [`StatusReply::snapshot`] reaches the index in that answer.
    TakeSnapshot,
    /// One chunk of the node's latest snapshot (`kvctl snapshot save`). Start with
    /// `last: None, offset: 0`; ask for the rest with `last` set to the snapshot's id from the
    /// first answer, so every chunk comes from the same snapshot (the connection pins it).
    SnapshotChunk {
        /// The snapshot being downloaded; `None` means the latest one.
        last: Option<EntryId>,
        /// The first byte wanted.
        offset: u64,
    },
    /// The cluster's configuration as the leader knows it (`kvctl member list`). Served by
    /// the leader; other nodes redirect.
    Members,
    /// Adds member `id` as a learner and, with `voter`, promotes it once it has caught up
    /// (`kvctl member add`, `keyval --join`). Idempotent: adding a member that is already
    /// there at the same addresses succeeds. Served by the leader; may take until the
    /// request's deadline (the change must commit, and a new voter must catch up first).
    AddMember {
        /// The new member's id: never reuse the id of a removed node that may still run.
        id: NodeId,
        /// Where it listens for peers and for clients.
        address: MemberAddress,
        /// Promote it to voter once caught up (else it stays a learner).
        voter: bool,
    },
    /// Promotes learner `id` to voter once it has caught up (`kvctl member promote`).
    /// Promoting a voter succeeds.
    PromoteMember {
        /// The learner.
        id: NodeId,
    },
    /// Removes member `id`, voter or learner, the leader included (`kvctl member remove`).
    RemoveMember {
        /// The member.
        id: NodeId,
    },
    /// Hands leadership to voter `target` and waits until it leads (`kvctl transfer-leader`).
    TransferLeader {
        /// The voter to take over.
        target: NodeId,
    },
    /// Renews `lease`: the leader gives it its full TTL again from now. Served by the leader
    /// after a read barrier (so every grant acknowledged before is known); answered with
    /// [`ResponseBody::LeaseKeptAlive`], or [`ServerError::Invalid`] with
    /// [`KvError::LeaseNotFound`] for a lease that is gone (revoked, expired, never granted).
    /// Keep-alives do not go through the log (see `docs/design.md`, "Leases").
    LeaseKeepAlive {
        /// The lease.
        lease: LeaseId,
    },
    /// A lease's granted TTL, the time it has left on the leader's clock and, with `keys`,
    /// the keys attached. Served by the leader like a keep-alive; answered with
    /// [`ResponseBody::LeaseTimeToLive`].
    LeaseTimeToLive {
        /// The lease.
        lease: LeaseId,
        /// Whether to list the attached keys.
        keys: bool,
    },
    /// Every lease, in id order. Served by the leader after a read barrier; answered with
    /// [`ResponseBody::Leases`].
    LeaseList,
    /// Opens a watch: a stream of every change to the watched keys, in revision order. The
    /// watch's id is this request's id. Answered with [`ResponseBody::WatchCreated`] (or an
    /// error, [`ServerError::Compacted`] when the start is no longer in the history); then
    /// frames with the same request id carry [`ResponseBody::WatchEvents`] until the watch
    /// ends with [`ResponseBody::WatchCanceled`] or an error. Served by any member from its
    /// applied state. See `docs/api.md`, "Watch".
    Watch(WatchRequest),
    /// Ends the watch opened by request `watch` on this connection. Answered with
    /// [`ResponseBody::WatchCanceled`]; the watch's own stream ends with one too.
    WatchCancel {
        /// The watch (its request id).
        watch: u64,
    },
    /// Asks every watch of this connection for a progress notification: each sends a
    /// [`ResponseBody::WatchEvents`] without events once it has delivered everything the
    /// node has applied. Answered at once with [`ResponseBody::WatchProgressRequested`].
    WatchProgress,
}

/// What a watch delivers, and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The keys watched (one key is a range of one: [`KeyRange::single`]).
    pub range: KeyRange,
    /// The first revision to deliver; `None`: changes after the node's applied state at
    /// creation (with `linearizable`, after a linearizable read point). A start at or before
    /// the history's compaction point is refused with [`ServerError::Compacted`].
    pub start: Option<LogIndex>,
    /// Send each event with what the key held before.
    pub previous: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Send a progress notification (an event-less [`WatchEvents`]) when the watch has sent
    /// nothing for this long; 0 for none. Clamped to
    /// [`WATCH_PROGRESS_INTERVAL_MIN_MS`]..=[`WATCH_PROGRESS_INTERVAL_MAX_MS`].
    pub progress_interval_ms: u64,
    /// Start (when `start` is `None`) only once the node has applied everything committed
    /// when the watch was asked for: a confirmed linearizable point, so the watch misses
    /// nothing written before it was created. Needs a read barrier, which only the leader
    /// serves (`NotLeader` elsewhere); the `Client` instead takes the point itself and asks
    /// any member for a watch from there.
    pub linearizable: bool,
    /// End the watch (with [`ServerError::WatchCanceled`]) when the node has no leader, so
    /// the client moves to a member that is not cut off.
    pub require_leader: bool,
}

/// The shortest progress interval a watch may ask for, in milliseconds.
pub const WATCH_PROGRESS_INTERVAL_MIN_MS: u64 = 100;

/// The longest progress interval a watch may ask for, in milliseconds.
pub const WATCH_PROGRESS_INTERVAL_MAX_MS: u64 = 10 * 60 * 1000;

/// Changes pushed on a watch's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvents {
    /// The watch (its request id).
    pub watch: u64,
    /// Every change up to this revision has been delivered to the watch, with this frame
    /// (an event-less frame is a progress notification): resume after it.
    pub revision: LogIndex,
    /// The changes, in revision order; all changes of one revision come together (in one
    /// frame, or in consecutive frames marked `fragment` but the last).
    pub events: Vec<crate::kv::Event>,
    /// More changes of this frame's last revision follow in the next frame (a revision too
    /// large for one frame).
    pub fragment: bool,
}

/// The answer to [`RequestBody::Watch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCreated {
    /// The watch (its request id).
    pub watch: u64,
    /// The node serving it.
    pub node: NodeId,
    /// The node's applied index when the watch was created.
    pub revision: LogIndex,
    /// The first revision the watch delivers.
    pub start: LogIndex,
    /// The history's compaction point on that node: revisions up to it are gone.
    pub compact_revision: LogIndex,
}

/// One request on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the response; unique among the connection's requests
    /// in flight.
    pub request_id: u64,
    /// How long the server may work on it, in milliseconds (clamped by the server). A write
    /// still unresolved then is answered with [`ServerError::Indeterminate`].
    pub timeout_ms: u64,
    /// The request.
    pub body: RequestBody,
}

/// A read's answer with how fresh it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReply {
    /// The data.
    pub response: ReadResponse,
    /// The node that served it.
    pub node: NodeId,
    /// The index the node's state machine had applied when it served the read.
    pub applied: LogIndex,
    /// How many committed entries (as far as the node knew) were not yet applied: 0 for
    /// linearizable and lease reads.
    pub behind: u64,
}

/// A node's status as the server reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: RoleKind,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The leader's client address, when known.
    pub leader_client_address: Option<String>,
    /// Its commit index.
    pub committed: LogIndex,
    /// The highest index it applied.
    pub applied: LogIndex,
    /// Its last log index.
    pub last_index: LogIndex,
    /// The client address it advertises.
    pub client_address: String,
    /// Whether it stopped serving after a storage failure.
    pub failed: bool,
    /// The last entry its latest durable snapshot covers, if it has one.
    pub snapshot: Option<EntryId>,
}

/// The answer to [`RequestBody::TakeSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequested {
    /// The node.
    pub node: NodeId,
    /// The index the node had applied when asked: the snapshot it takes covers at least this.
    pub applied: LogIndex,
    /// Its latest snapshot when asked.
    pub previous: Option<EntryId>,
}

/// One chunk of a snapshot, the answer to [`RequestBody::SnapshotChunk`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunkReply {
    /// What the snapshot covers (the same in every chunk of one snapshot).
    pub meta: SnapshotMeta,
    /// The snapshot's size in bytes.
    pub total: u64,
    /// CRC-32 of the whole snapshot's bytes.
    pub checksum: u32,
    /// Where `data` starts.
    pub offset: u64,
    /// At most [`SNAPSHOT_CHUNK_BYTES`] bytes; empty only for an empty snapshot.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SnapshotChunkReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotChunkReply")
            .field("meta", &self.meta)
            .field("total", &self.total)
            .field("checksum", &format_args!("{:#010x}", self.checksum))
            .field("offset", &self.offset)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// The cluster's configuration, the answer to [`RequestBody::Members`] and to every
/// membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReply {
    /// The node that answered (the leader, when it answered as one).
    pub node: NodeId,
    /// The leader as far as that node knows.
    pub leader: Option<NodeId>,
    /// The configuration: voters (both halves while joint), learners and their addresses.
    /// After a change, the configuration the change ended in (committed).
    pub membership: Membership,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// The write was committed and applied; the state machine's answer (which may be a
    /// comparison failure or a deterministic rejection such as a stale session).
    Written(Response),
    /// A read's answer.
    Read(ReadReply),
    /// The node's status.
    Status(StatusReply),
    /// A snapshot was asked for.
    SnapshotRequested(SnapshotRequested),
    /// A chunk of the latest snapshot.
    SnapshotChunk(SnapshotChunkReply),
    /// The configuration (after a change: the committed configuration it ended in).
    Members(MembersReply),
    /// Leadership moved to `leader`.
    LeaderTransferred {
        /// The new leader.
        leader: NodeId,
    },
    /// A lease was renewed.
    LeaseKeptAlive {
        /// The lease.
        lease: LeaseId,
        /// Its TTL: it expires this long after the renewal unless renewed again.
        ttl_seconds: u64,
    },
    /// A lease's time to live.
    LeaseTimeToLive(LeaseTimeToLiveReply),
    /// Every lease, in id order.
    Leases(Vec<LeaseId>),
    /// A watch was opened.
    WatchCreated(WatchCreated),
    /// Changes (or a progress notification) on a watch's stream.
    WatchEvents(WatchEvents),
    /// A watch ended: the answer to [`RequestBody::WatchCancel`], and the last frame of the
    /// canceled watch's stream.
    WatchCanceled {
        /// The watch.
        watch: u64,
        /// Why.
        reason: String,
    },
    /// Every watch of the connection will send a progress notification.
    WatchProgressRequested,
}

/// The answer to [`RequestBody::LeaseTimeToLive`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimeToLiveReply {
    /// The lease.
    pub lease: LeaseId,
    /// The TTL it was granted (and is renewed to), in seconds.
    pub granted_ttl_seconds: u64,
    /// How long it has left on the leader's clock, in milliseconds; 0 once it expired (its
    /// revoke is then on its way through the log).
    pub remaining_ms: u64,
    /// The keys attached, in key order, when asked for; else empty.
    pub keys: Vec<Vec<u8>>,
}

/// Why a request was not served. Each variant says whether a write may have been applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// This node is not the leader. Nothing was done; ask the leader.
    #[error("not the leader (leader {leader_id:?} at {leader_client_address:?})")]
    NotLeader {
        /// The leader as far as this node knows.
        leader_id: Option<NodeId>,
        /// Its client address, when known.
        leader_client_address: Option<String>,
    },
    /// The node refuses work for now (overloaded, or a leadership transfer). Nothing was
    /// done; retry later.
    #[error("busy: {reason}")]
    Busy {
        /// Why.
        reason: String,
    },
    /// The request breaks a limit or is malformed. Nothing was done; do not retry as is.
    #[error("invalid request: {0}")]
    Invalid(KvError),
    /// The write was appended but a leader change discarded it: it will never commit. Safe
    /// to retry (with the same session).
    #[error("the write was dropped by a leader change and will never commit")]
    Dropped,
    /// **The write's outcome is unknown**: its deadline passed (or the node stopped) before
    /// it was known. It may still commit. Retry only with the same session.
    #[error("outcome unknown: {reason}")]
    Indeterminate {
        /// Why.
        reason: String,
    },
    /// A read could not be confirmed before its deadline. Nothing was changed; safe to retry.
    #[error("read timed out")]
    ReadTimeout,
    /// A lease read was asked for but the node holds no valid lease (or lease reads are off).
    #[error("no valid lease for a lease read")]
    NoLease,
    /// The node is shutting down or has failed. Nothing was done.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A snapshot chunk was asked for but the node has no snapshot yet (take one first).
    #[error("the node has no snapshot yet")]
    NoSnapshot,
    /// The snapshot being downloaded is gone (the node took a newer one and this connection
    /// did not pin the old one). Start the download again from offset 0.
    #[error(
        "snapshot {requested} is no longer available (latest: {current:?}); restart the download"
    )]
    SnapshotMoved {
        /// The snapshot asked for.
        requested: EntryId,
        /// The node's latest snapshot.
        current: Option<EntryId>,
    },
    /// A snapshot chunk was asked for past the snapshot's end.
    #[error("offset {offset} is past the end of the {total}-byte snapshot")]
    SnapshotOffset {
        /// The offset asked for.
        offset: u64,
        /// The snapshot's size.
        total: u64,
    },
    /// A membership change or leadership transfer was refused: it makes no sense against
    /// the current configuration (a member added twice at another address, a non-member
    /// removed, a transfer to a non-voter), or it would leave the new configuration without
    /// a healthy quorum. **Nothing was changed**; do not retry as is.
    #[error("refused, nothing was changed: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// A watch asked for a start revision the node's history no longer holds (or a watch
    /// fell so far behind that its next revision left the history). Nothing was delivered
    /// past the point the watch had reached; start again after `compact_revision` (and read
    /// the current state first, since changes were missed).
    #[error("revision compacted: the history starts after revision {compact_revision}")]
    Compacted {
        /// Every revision up to this one is gone.
        compact_revision: LogIndex,
    },
    /// The server ended a watch (its node lost its leader, is stopping or failed, or it
    /// was unknown). Resume from the last revision received, on this node or another.
    #[error("watch canceled: {reason}")]
    WatchCanceled {
        /// Why.
        reason: String,
    },
    /// A leadership transfer did not complete before its deadline and was abandoned.
    /// Leadership may nevertheless have moved meanwhile: look at the cluster's status.
    #[error("leadership transfer failed: {reason}")]
    TransferFailed {
        /// Why.
        reason: String,
    },
}

impl ServerError {
    /// Whether a write refused with this error may nevertheless have been applied.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ServerError::Indeterminate { .. })
    }
}

/// The longest member address (`host:port`) a membership request may carry.
pub const MEMBER_ADDRESS_BYTES_MAX: usize = 255;

/// Checks an address a client asks to add: non-empty `host:port` with a numeric port, at
/// most [`MEMBER_ADDRESS_BYTES_MAX`] bytes, no whitespace or control characters. Host names
/// are not resolved here (the members resolve them).
pub fn validate_member_address(what: &str, address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err(format!("the {what} address is empty"));
    }
    if address.len() > MEMBER_ADDRESS_BYTES_MAX {
        return Err(format!(
            "the {what} address is {} bytes long; at most {MEMBER_ADDRESS_BYTES_MAX}",
            address.len()
        ));
    }
    if address
        .chars()
        .any(|character| character.is_whitespace() || character.is_control())
    {
        return Err(format!(
            "the {what} address {address:?} holds whitespace or control characters"
        ));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("the {what} address {address:?} is not host:port")),
    }
}

/// One response on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The id of the request answered.
    pub request_id: u64,
    /// The answer.
    pub result: Result<ResponseBody, ServerError>,
}

// A chunk and its envelope must fit in one frame.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES * 2 <= FRAME_BYTES_MAX);

/// Appends `frame` to `out` as one framed record.
pub fn write_frame<T: Serialize>(frame: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    codec::write_value_record(frame, out)?;
    let bytes = (out.len() - start) as u64;
    if bytes > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(CodecError::TooLarge {
            what: "frame",
            bytes,
            limit: FRAME_BYTES_MAX,
        });
    }
    Ok(())
}

/// Why a stream of frames ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer closed the stream between frames.
    #[error("connection closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
    /// A frame is bad: oversized length, checksum mismatch, or a payload that does not decode.
    #[error("bad frame: {0}")]
    Bad(#[from] CodecError),
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The reader's buffer size; it grows only while a larger frame is being read (to exactly
/// that frame's length), and shrinks back once that frame is consumed.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How long [`FrameReader::read_frame`] waits for budget room before it tries again.
const BUDGET_WAIT_INTERVAL: Duration = Duration::from_millis(100);

/// What one [`FrameReader::fill`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// Bytes arrived.
    Bytes,
    /// The stream ended.
    End,
    /// Nothing was read: the frame being received is larger than the read buffer, and the
    /// reader's [`ByteBudget`] cannot cover it now. Try again once room is released
    /// ([`ByteBudget::wait_for_room`]).
    WaitingForBudget {
        /// The room the frame needs: its length with its header.
        bytes: u64,
    },
}

/// Splits a byte stream into frames, refusing lengths above [`FRAME_BYTES_MAX`] before
/// allocating for them. The buffer is zeroed once, not per read.
///
/// With a budget ([`FrameReader::with_budget`]), the buffer grows past its base size only for
/// a frame whose whole length is reserved first, and gives the reservation back once that
/// frame is consumed, or when the reader is dropped.
#[derive(Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Unconsumed bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
    budget: Option<Arc<ByteBudget>>,
    /// Invariant (with a budget): `buffer.len() <= READ_BUFFER_BYTES`, or this reservation
    /// covers exactly `buffer.len()` bytes.
    reservation: Option<Reservation>,
    /// Whether the frame being received has already been counted as waiting for the budget.
    counted_wait: bool,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// An empty reader whose frames larger than its read buffer must fit in `budget`.
    pub fn with_budget(budget: Arc<ByteBudget>) -> FrameReader {
        FrameReader {
            budget: Some(budget),
            ..FrameReader::default()
        }
    }

    /// Returns the next frame already buffered, without reading.
    pub fn next_buffered<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, FrameError> {
        match codec::read_record(&self.buffer[self.start..self.end], FRAME_BYTES_MAX)? {
            RecordRead::Complete { payload, consumed } => {
                let value = codec::decode(payload)?;
                self.start += consumed;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                    if self.buffer.len() > READ_BUFFER_BYTES {
                        // A large frame passed: give the memory and its reservation back.
                        self.buffer = vec![0; READ_BUFFER_BYTES];
                        self.reservation = None;
                    }
                }
                self.check_invariants();
                Ok(Some(value))
            }
            RecordRead::Incomplete { .. } => Ok(None),
        }
    }

    /// Whether part of a frame is buffered.
    pub fn has_partial(&self) -> bool {
        self.start < self.end
    }

    /// Bytes of a partial frame buffered.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads once from `source` into the buffer; take every whole frame
    /// ([`next_buffered`](FrameReader::next_buffered)) before. Timeouts (`WouldBlock`,
    /// `TimedOut`) are returned as [`FrameError::Io`] for the caller to judge.
    pub fn fill(&mut self, source: &mut impl Read) -> Result<Filled, FrameError> {
        if self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buffer.len() {
                if let Some(waiting) = self.grow()? {
                    return Ok(waiting);
                }
            }
        }
        let read = source.read(&mut self.buffer[self.end..])?;
        self.end += read;
        Ok(if read > 0 { Filled::Bytes } else { Filled::End })
    }

    /// Grows a full buffer: to the base size, or to the length of the one partial frame it
    /// holds (whose length prefix [`codec::read_record`] checks against the limit), reserved
    /// first when there is a budget. Returns [`Filled::WaitingForBudget`] if it cannot be.
    fn grow(&mut self) -> Result<Option<Filled>, FrameError> {
        let length = self.buffer.len();
        let target = if length < READ_BUFFER_BYTES {
            READ_BUFFER_BYTES
        } else {
            match codec::read_record(&self.buffer[..self.end], FRAME_BYTES_MAX)? {
                RecordRead::Incomplete {
                    needed: Some(needed),
                } if needed > length => needed,
                // Not expected: whole frames are taken before reading more.
                _ => 2 * length,
            }
        };
        if target > READ_BUFFER_BYTES {
            if let Some(budget) = &self.budget {
                let bytes = target as u64;
                match budget.reserve_for_frame(bytes, &mut self.counted_wait) {
                    // Replacing the reservation gives back the one for the old size.
                    Some(reservation) => self.reservation = Some(reservation),
                    None => return Ok(Some(Filled::WaitingForBudget { bytes })),
                }
            }
        }
        // A zeroed allocation: pages are touched only as bytes arrive, not at once.
        let mut grown = vec![0u8; target];
        grown[..self.end].copy_from_slice(&self.buffer[..self.end]);
        self.buffer = grown;
        self.check_invariants();
        Ok(None)
    }

    /// Reads until one whole frame is available (blocking on `source`, and on the budget if
    /// the reader has one) and decodes it.
    pub fn read_frame<T: serde::de::DeserializeOwned>(
        &mut self,
        source: &mut impl Read,
    ) -> Result<T, FrameError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(frame);
            }
            match self.fill(source)? {
                Filled::Bytes => {}
                Filled::End => {
                    return Err(if self.has_partial() {
                        FrameError::Truncated {
                            buffered: self.buffered(),
                        }
                    } else {
                        FrameError::Closed
                    })
                }
                Filled::WaitingForBudget { bytes } => {
                    if let Some(budget) = &self.budget {
                        budget.wait_for_room(bytes, BUDGET_WAIT_INTERVAL);
                    }
                }
            }
        }
    }

    fn check_invariants(&self) {
        debug_assert!(
            self.budget.is_none()
                || self.buffer.len() <= READ_BUFFER_BYTES
                || self.reservation.as_ref().map(Reservation::bytes)
                    == Some(self.buffer.len() as u64),
            "a buffer of {} bytes is not covered by its reservation {:?}",
            self.buffer.len(),
            self.reservation
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_reader_in_pieces() {
        let mut bytes = Vec::new();
        for request_id in 0..3 {
            let frame = RequestFrame {
                request_id,
                timeout_ms: 100,
                body: RequestBody::Write(Command::put(b"k".to_vec(), vec![7; 300])),
            };
            write_frame(&frame, &mut bytes).unwrap();
        }
        // Feed one byte at a time: the reader must reassemble every frame.
        let mut reader = FrameReader::new();
        let mut source = std::io::Cursor::new(bytes);
        struct OneByte<'a>(&'a mut std::io::Cursor<Vec<u8>>);
        impl Read for OneByte<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(&mut out[..1])
            }
        }
        for request_id in 0..3 {
            let frame: RequestFrame = reader.read_frame(&mut OneByte(&mut source)).unwrap();
            assert_eq!(frame.request_id, request_id);
        }
        assert!(matches!(
            reader.read_frame::<RequestFrame>(&mut source),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn a_budgeted_reader_reserves_a_large_frame_before_growing_and_returns_it() {
        let mut bytes = Vec::new();
        let large = RequestFrame {
            request_id: 1,
            timeout_ms: 1,
            body: RequestBody::Write(Command::put(b"k".to_vec(), vec![1; 3 * READ_BUFFER_BYTES])),
        };
        write_frame(&large, &mut bytes).unwrap();
        let frame_total = bytes.len() as u64;
        let budget = Arc::new(ByteBudget::new(frame_total + 10));
        let mut first = FrameReader::with_budget(Arc::clone(&budget));
        let mut second = FrameReader::with_budget(Arc::clone(&budget));
        let (mut first_source, mut second_source) = (bytes.as_slice(), bytes.as_slice());
        // Both fill their base buffer; the first to need more reserves the whole frame.
        assert_eq!(first.fill(&mut first_source).unwrap(), Filled::Bytes);
        assert_eq!(second.fill(&mut second_source).unwrap(), Filled::Bytes);
        assert_eq!(first.fill(&mut first_source).unwrap(), Filled::Bytes);
        assert_eq!(budget.reserved(), frame_total);
        assert_eq!(
            second.fill(&mut second_source).unwrap(),
            Filled::WaitingForBudget { bytes: frame_total }
        );
        assert_eq!(
            second.buffered(),
            READ_BUFFER_BYTES,
            "nothing more was read"
        );
        assert_eq!(budget.waits(), 1);
        let frame: RequestFrame = first.read_frame(&mut first_source).unwrap();
        assert_eq!(frame, large);
        assert_eq!(budget.reserved(), 0, "returned once the frame is consumed");
        let frame: RequestFrame = second.read_frame(&mut second_source).unwrap();
        assert_eq!(frame, large);
        assert_eq!(budget.waits(), 1, "one wait counted per frame");
        // A reader dropped mid-frame returns its reservation.
        let mut dropped = FrameReader::with_budget(Arc::clone(&budget));
        let mut source = &bytes[..bytes.len() - 1];
        assert!(dropped.read_frame::<RequestFrame>(&mut source).is_err());
        assert_eq!(budget.reserved(), frame_total);
        drop(dropped);
        assert_eq!(budget.reserved(), 0);
        assert_eq!(budget.reserved_max(), frame_total);
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let mut bytes = Vec::new();
        write_frame(
            &RequestFrame {
                request_id: 1,
                timeout_ms: 1,
                body: RequestBody::Status,
            },
            &mut bytes,
        )
        .unwrap();
        bytes.pop();
        let result = FrameReader::new().read_frame::<RequestFrame>(&mut bytes.as_slice());
        assert!(matches!(result, Err(FrameError::Truncated { .. })));
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 4]);
        let result = FrameReader::new().read_frame::<RequestFrame>(&mut huge.as_slice());
        assert!(matches!(result, Err(FrameError::Bad(_))));
    }

    #[test]
    fn a_full_snapshot_chunk_fits_one_frame_and_round_trips() {
        use crate::types::Membership;
        let request = RequestFrame {
            request_id: 9,
            timeout_ms: 0,
            body: RequestBody::SnapshotChunk {
                last: Some(EntryId::new(Term(u64::MAX), LogIndex(u64::MAX))),
                offset: u64::MAX,
            },
        };
        let mut bytes = Vec::new();
        write_frame(&request, &mut bytes).unwrap();
        let response = ResponseFrame {
            request_id: 9,
            result: Ok(ResponseBody::SnapshotChunk(SnapshotChunkReply {
                meta: SnapshotMeta {
                    last: EntryId::new(Term(4), LogIndex(1_000_000)),
                    membership: Membership::new((1..=7).map(NodeId)),
                },
                total: 5 * SNAPSHOT_CHUNK_BYTES,
                checksum: 0xdead_beef,
                offset: SNAPSHOT_CHUNK_BYTES,
                data: vec![0xff; SNAPSHOT_CHUNK_BYTES as usize],
            })),
        };
        write_frame(&response, &mut bytes).unwrap();
        let mut reader = FrameReader::new();
        let mut source = bytes.as_slice();
        assert_eq!(
            reader.read_frame::<RequestFrame>(&mut source).unwrap(),
            request
        );
        assert_eq!(
            reader.read_frame::<ResponseFrame>(&mut source).unwrap(),
            response
        );
    }
}
