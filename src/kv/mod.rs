//! The replicated key-value state machine.
//!
//! Keys and values are bytes. Writes travel through the Raft log as an encoded [`Command`]: one
//! or more [`Operation`]s (put, delete, compare-and-swap, range delete) applied atomically in
//! one log entry, or one transaction ([`Command::txn`]: `if compares then ops else ops`, see
//! [`Txn`] and `docs/api.md`). Reads never touch the log: after a linearizable read barrier the
//! server calls [`KvStore::get`], [`KvStore::scan`] or [`KvStore::read`] directly.
//!
//! Every key carries etcd-style [`Metadata`]: `create_revision` and `mod_revision` are the log
//! indexes of the entries that created and last modified it, and `version` counts modifications
//! since creation. Using log indexes as revisions makes them identical on every replica and
//! monotonic without any extra counter.
//!
//! # Leases
//!
//! A lease ([`Command::lease_grant`]) is a TTL that keys can be attached to
//! ([`Command::put_with_lease`], a transaction put with a lease); revoking it
//! ([`Command::lease_revoke`]) deletes every attached key in one entry, at one revision. The
//! store holds each lease's TTL and the keys attached to it, and nothing about time: which
//! lease expires when is decided by the leader's lease keeper (`server::leases`), which
//! proposes the revoke. So apply stays deterministic and a follower never expires anything.
//!
//! # Exactly-once writes
//!
//! A client first registers a session through the log ([`Command::register_session`], Raft
//! thesis §6.3); the store answers [`Response::SessionRegistered`] with the session's client
//! id, which is the log index of the registration, so every replica gives the same id and no
//! two sessions ever share one. Each write then carries a [`SessionId`] `(client_id,
//! sequence)`, sequences from 1 up. Per session the store remembers the highest applied
//! sequence and its encoded response:
//!
//! - the same sequence again returns the cached response without applying anything;
//! - an older sequence is rejected with [`KvError::StaleSequence`];
//! - a newer sequence is applied and becomes the cached one (gaps are allowed);
//! - a write from a client the store holds no session for is rejected with
//!   [`KvError::SessionExpired`], whatever its sequence: the session was evicted or never
//!   registered. An unknown client is never taken for a new one — that would apply the retry
//!   of a first write twice once its session had been evicted. If the refused write was a
//!   retry, an earlier attempt may have been applied before the eviction: its outcome is
//!   unknown. Register a new session for later writes.
//!
//! At most [`SESSIONS_MAX`] sessions holding at most [`SESSION_CACHE_BYTES_MAX`] bytes of cached
//! responses are kept; beyond that the session used least recently (by log index; registering
//! counts as a use) is evicted. Eviction depends only on the applied log, so all replicas
//! agree. Sessions are carried in snapshots. A client that keeps several writes in flight
//! under one client id may see [`KvError::StaleSequence`] for an earlier one that a leader
//! change reordered behind a later one; that error means "not applied now, earlier outcome
//! unknown", never a guess.
//!
//! # Limits
//!
//! The constants below bound keys, values, batches, responses, scans and sessions, and are
//! checked both by [`Command::validate`] (before proposing, for a clear error) and again in
//! `apply` (deterministic rejection). Because `apply` enforces them, they are part of the
//! replicated semantics: every node of a cluster must run with the same values.
//!
//! # Example
//!
//! ```
//! use keyval::kv::{Command, KvStore, Response};
//! use keyval::{EntryId, LogIndex, StateMachine, Term};
//!
//! let mut store = KvStore::new();
//! let bytes = Command::put(b"color".to_vec(), b"blue".to_vec()).encode().unwrap();
//! let answer = store.apply(EntryId::new(Term(1), LogIndex(1)), &bytes);
//! assert!(matches!(Response::decode(&answer).unwrap(), Response::Written { .. }));
//! let versioned = store.get(b"color").unwrap();
//! assert_eq!(versioned.value, b"blue");
//! assert_eq!(versioned.metadata.mod_revision, LogIndex(1));
//! ```

pub mod auth;
mod command;
mod history;
mod key;
mod legacy;
mod response;
mod session;
mod snapshot;
mod store;
mod stored;
mod txn;

pub use command::{
    Command, CommandSession, Expect, KeyRange, KvError, Operation, ReadRequest, SessionId,
};
pub use history::{
    Compacted, Event, EventKind, HistoryLimits, Revision, CHANGE_OVERHEAD_BYTES,
    HISTORY_BYTES_DEFAULT, HISTORY_REVISIONS_DEFAULT,
};
pub use response::{
    LeaseId, Metadata, ReadResponse, Response, ScanPage, TxnOpResponse, TxnResponse, Versioned,
    WriteOutcome,
};
pub use snapshot::SnapshotError;
pub use store::{KvStore, LeaseTable};
pub use txn::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnPart};

// The byte-string serde adapter, for `#[serde(with = "super::bytes")]` in the submodules.
use crate::codec::bytes;
use crate::limits::{COMMAND_BYTES_MAX, FRAME_BYTES_MAX};

/// The largest key, in bytes. Keys must also be non-empty.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// The largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// The most operations one command (one atomic batch) may hold.
pub const BATCH_OPERATIONS_MAX: usize = 256;

/// The most items in each list of a transaction: its compares, its `then` operations, its
/// `otherwise` operations (etcd's default `--max-txn-ops`). A longer list is refused with
/// [`KvError::TxnTooLarge`].
pub const TXN_OPERATIONS_MAX: usize = 128;

/// The most key, value and expected-value bytes, summed over its operations, one command may
/// hold. Chosen so that any command that passes [`Command::validate`] encodes within
/// [`COMMAND_BYTES_MAX`].
pub const COMMAND_PAYLOAD_BYTES_MAX: usize = COMMAND_BYTES_MAX as usize - 64 * 1024;

/// An upper bound on the bytes one [`Operation`] adds to its encoding beyond its keys and values
/// (variant tags and varint lengths; the real figure is at most about 30).
pub const OPERATION_ENCODING_OVERHEAD_BYTES: usize = 64;

/// An upper bound on the bytes a [`Command`] adds to its encoding beyond its operations.
pub const COMMAND_ENCODING_OVERHEAD_BYTES: usize = 64;

/// The most bytes of data one write may return: previous values when it asks for them
/// ([`Command::return_previous`]), and in a transaction everything its operations return
/// (previous values; keys and values read or deleted, each entry counted with
/// [`SCAN_ENTRY_OVERHEAD_BYTES`] as a scan counts it). A write that would return more is
/// rejected, unapplied, with [`KvError::ResponseTooLarge`].
pub const PREVIOUS_VALUES_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An upper bound on the bytes one operation's answer ([`WriteOutcome`], [`TxnOpResponse`])
/// adds to a response beyond the data counted against [`PREVIOUS_VALUES_BYTES_MAX`] (two
/// metadata of at most 38 bytes each, tags and lengths; the real figure is at most about 95).
pub const OUTCOME_ENCODING_OVERHEAD_BYTES: usize = 128;

/// An upper bound on the encoded size of any write [`Response`].
pub const RESPONSE_BYTES_MAX: usize = PREVIOUS_VALUES_BYTES_MAX
    + VALUE_BYTES_MAX
    + KEY_BYTES_MAX
    + BATCH_OPERATIONS_MAX * OUTCOME_ENCODING_OVERHEAD_BYTES
    + COMMAND_ENCODING_OVERHEAD_BYTES;

/// The most entries one scan returns.
pub const SCAN_LIMIT_MAX: usize = 10_000;

/// The most key and value bytes one scan returns; a scan stops early (with `more`) rather than
/// exceed it, but always returns at least one entry when one is in range.
pub const SCAN_RESPONSE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The bytes one scanned entry is counted for beyond its key and value.
pub const SCAN_ENTRY_OVERHEAD_BYTES: usize = 64;

/// The most client sessions kept for exactly-once writes.
pub const SESSIONS_MAX: usize = 16 * 1024;

/// The most bytes of cached responses kept over all sessions.
pub const SESSION_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The longest lease TTL a grant may ask for, in seconds (etcd's `MaxLeaseTTL`). A grant
/// asking for more, or for 0, is refused with [`KvError::InvalidLeaseTtl`].
pub const LEASE_TTL_SECONDS_MAX: u64 = 9_000_000_000;

/// The most leases the store holds at once; a grant beyond is refused with
/// [`KvError::TooManyLeases`].
pub const LEASES_MAX: usize = 1024 * 1024;

/// The longest reason text a [`KvError::Malformed`] carries.
pub const ERROR_REASON_BYTES_MAX: usize = 256;

// Any valid command encodes within the proposal limit.
const _: () = assert!(
    COMMAND_PAYLOAD_BYTES_MAX
        + BATCH_OPERATIONS_MAX * OPERATION_ENCODING_OVERHEAD_BYTES
        + COMMAND_ENCODING_OVERHEAD_BYTES
        <= COMMAND_BYTES_MAX as usize
);
// Any valid transaction encodes within the proposal limit: three lists of at most
// TXN_OPERATIONS_MAX items, each within OPERATION_ENCODING_OVERHEAD_BYTES of its payload.
const _: () = assert!(
    COMMAND_PAYLOAD_BYTES_MAX
        + 3 * TXN_OPERATIONS_MAX * OPERATION_ENCODING_OVERHEAD_BYTES
        + 2 * COMMAND_ENCODING_OVERHEAD_BYTES
        <= COMMAND_BYTES_MAX as usize
);
// An auth-checked proposal (a valid command with its auth revision in front) fits too.
const _: () = assert!(
    COMMAND_PAYLOAD_BYTES_MAX
        + 3 * TXN_OPERATIONS_MAX * OPERATION_ENCODING_OVERHEAD_BYTES
        + 2 * COMMAND_ENCODING_OVERHEAD_BYTES
        + auth::AUTH_CHECKED_OVERHEAD_BYTES
        <= COMMAND_BYTES_MAX as usize
);
// A transaction's answer is bounded like a batch's.
const _: () = assert!(TXN_OPERATIONS_MAX <= BATCH_OPERATIONS_MAX);
// A single maximal compare-and-swap (key, expected value, new value) is a valid command.
const _: () = assert!(KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX <= COMMAND_PAYLOAD_BYTES_MAX);
// A batch of maximal keys is a valid command.
const _: () = assert!(BATCH_OPERATIONS_MAX * KEY_BYTES_MAX <= COMMAND_PAYLOAD_BYTES_MAX);
// A single operation may always return its previous value.
const _: () = assert!(PREVIOUS_VALUES_BYTES_MAX >= VALUE_BYTES_MAX);
// Any response fits a frame, with room for the client protocol's own header.
const _: () = assert!(RESPONSE_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX as usize);
// A scan page always has room for one maximal entry, and fits a frame.
const _: () =
    assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + SCAN_ENTRY_OVERHEAD_BYTES <= SCAN_RESPONSE_BYTES_MAX);
// (Each entry's encoding overhead is counted inside SCAN_RESPONSE_BYTES_MAX.)
const _: () = assert!(SCAN_RESPONSE_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX as usize);
// The session cache always has room for the response just recorded.
const _: () = assert!(SESSION_CACHE_BYTES_MAX >= RESPONSE_BYTES_MAX);
const _: () = assert!(SESSIONS_MAX >= 1);
