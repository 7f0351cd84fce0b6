//! What clients send: write commands that travel through the log, read requests that do not,
//! their validation against the limits in [`crate::kv`], and the errors a request can meet.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::CodecError;
use crate::limits::COMMAND_BYTES_MAX;
use crate::types::LogIndex;

use super::auth::{AuthError, AuthOperation};
use super::response::LeaseId;
use super::txn::{Txn, TxnPart};
use super::{
    BATCH_OPERATIONS_MAX, COMMAND_PAYLOAD_BYTES_MAX, ERROR_REASON_BYTES_MAX, KEY_BYTES_MAX,
    LEASE_TTL_SECONDS_MAX, SCAN_LIMIT_MAX, VALUE_BYTES_MAX,
};

/// Identifies one write of one client for exactly-once application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId {
    /// The client: the id the store gave its session when it applied the client's
    /// [`Command::register_session`] (the log index of that entry).
    pub client_id: u64,
    /// The client's write counter: starts at 1 and increases with every new write. A retry
    /// reuses the sequence of the write it retries.
    pub sequence: u64,
}

/// The condition a compare-and-swap checks against the key's current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key exists and its value equals these bytes.
    Value(#[serde(with = "super::bytes")] Vec<u8>),
    /// The key does not exist.
    Absent,
    /// The key exists and its `mod_revision` equals this index (version-based CAS).
    ModRevision(LogIndex),
}

/// One write operation. Operations of one [`Command`] apply in order, all or none.
///
/// New variants are only ever added at the end, so that entries already in logs keep their
/// encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Sets `key` to `value`, creating the key if it does not exist.
    Put {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "super::bytes")]
        value: Vec<u8>,
    },
    /// Removes `key`; removing an absent key succeeds and changes nothing.
    Delete {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
    },
    /// If `expect` holds for `key` (as left by the earlier operations of the same command), sets
    /// it to `value`, or deletes it when `value` is `None`. If not, the whole command fails and
    /// nothing of it is applied.
    Cas {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
        /// The condition.
        expect: Expect,
        /// The new value, or `None` to delete the key.
        #[serde(with = "super::bytes::option")]
        value: Option<Vec<u8>>,
    },
    /// Removes every key in `range` (a prefix, say: [`KeyRange::prefix`]). Its outcome counts
    /// the keys removed in [`WriteOutcome::deleted`](super::WriteOutcome::deleted); it never
    /// returns previous values (a [`TxnOp::DeleteRange`](super::TxnOp::DeleteRange) can).
    DeleteRange {
        /// Which keys.
        range: KeyRange,
    },
    /// A transaction. It must be the only operation of its command and the command must not
    /// ask for previous values (each [`TxnOp`](super::TxnOp) says whether it wants them); build
    /// it with [`Command::txn`]. Answered with [`Response::Txn`](super::Response::Txn).
    Txn(Txn),
    /// Sets `key` to `value` attached to `lease`: the key is deleted when the lease is revoked
    /// or expires. Refused with [`KvError::LeaseNotFound`] (the whole command applying
    /// nothing) when the store holds no such lease. A later put without a lease detaches the
    /// key again, as in etcd.
    PutWithLease {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "super::bytes")]
        value: Vec<u8>,
        /// The lease to attach the key to.
        lease: LeaseId,
    },
    /// Grants a new lease of `ttl_seconds` (1 to [`LEASE_TTL_SECONDS_MAX`]). The id is the
    /// index of the entry that applies it, so every replica gives the same one and no id is
    /// ever 0 or given twice. It must be the only operation of its command; build it with
    /// [`Command::lease_grant`]. Answered with
    /// [`Response::LeaseGranted`](super::Response::LeaseGranted).
    ///
    /// The store keeps only the TTL; when a lease expires is decided by the leader, which
    /// proposes a [`Operation::LeaseRevoke`] (see `docs/design.md`, "Leases").
    LeaseGrant {
        /// The lease's time to live, in seconds.
        ttl_seconds: u64,
    },
    /// Revokes `lease` and deletes every key attached to it, all in this one entry (one
    /// revision). It must be the only operation of its command; build it with
    /// [`Command::lease_revoke`]. Answered with
    /// [`Response::LeaseRevoked`](super::Response::LeaseRevoked), or refused with
    /// [`KvError::LeaseNotFound`] when the lease does not exist (any more).
    LeaseRevoke {
        /// The lease.
        lease: LeaseId,
    },
    /// Changes the auth state (users, roles, permissions, enabled). It must be the only
    /// operation of its command. Only a server proposes it — it hashes passwords and makes
    /// the token secret first — and it refuses one sent by a client in a write. Answered
    /// with [`Response::AuthChanged`](super::Response::AuthChanged), or refused with
    /// [`KvError::Auth`].
    Auth(AuthOperation),
}

impl Operation {
    /// The single key the operation writes; `None` for a range delete or a transaction.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Operation::Put { key, .. }
            | Operation::Delete { key }
            | Operation::Cas { key, .. }
            | Operation::PutWithLease { key, .. } => Some(key),
            Operation::DeleteRange { .. }
            | Operation::Txn(_)
            | Operation::LeaseGrant { .. }
            | Operation::LeaseRevoke { .. }
            | Operation::Auth(_) => None,
        }
    }

    /// The key, value, expected-value and range-bound bytes the operation carries.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Operation::DeleteRange { range } => {
                range.start.len() + range.end.as_ref().map_or(0, Vec::len)
            }
            Operation::Txn(txn) => txn.payload_bytes(),
            Operation::Put { key, value } | Operation::PutWithLease { key, value, .. } => {
                key.len() + value.len()
            }
            Operation::Delete { key } => key.len(),
            Operation::LeaseGrant { .. } | Operation::LeaseRevoke { .. } => 0,
            Operation::Auth(operation) => operation.payload_bytes(),
            Operation::Cas { key, expect, value } => {
                let expected = match expect {
                    Expect::Value(bytes) => bytes.len(),
                    Expect::Absent | Expect::ModRevision(_) => 0,
                };
                key.len() + expected + value.as_ref().map_or(0, Vec::len)
            }
        }
    }

    /// Checks the operation's key and values against the limits; `position` is its place in
    /// its command, for the error.
    fn validate(&self, position: usize) -> Result<(), KvError> {
        match self {
            Operation::DeleteRange { range } => return range.validate(),
            Operation::Txn(txn) => return txn.validate(),
            Operation::LeaseGrant { ttl_seconds } => {
                if !(1..=LEASE_TTL_SECONDS_MAX).contains(ttl_seconds) {
                    return Err(KvError::InvalidLeaseTtl {
                        ttl_seconds: *ttl_seconds,
                        max: LEASE_TTL_SECONDS_MAX,
                    });
                }
                return Ok(());
            }
            Operation::LeaseRevoke { .. } => return Ok(()),
            Operation::Auth(operation) => return operation.validate().map_err(KvError::Auth),
            Operation::Put { key, .. }
            | Operation::Delete { key }
            | Operation::Cas { key, .. }
            | Operation::PutWithLease { key, .. } => {
                validate_key(key, Some(position))?;
            }
        }
        let check_value = |value: &[u8]| validate_value(value, position);
        match self {
            Operation::Put { value, .. } | Operation::PutWithLease { value, .. } => {
                check_value(value)
            }
            Operation::Delete { .. }
            | Operation::DeleteRange { .. }
            | Operation::Txn(_)
            | Operation::LeaseGrant { .. }
            | Operation::LeaseRevoke { .. }
            | Operation::Auth(_) => Ok(()),
            Operation::Cas { expect, value, .. } => {
                if let Expect::Value(expected) = expect {
                    check_value(expected)?;
                }
                value.as_deref().map_or(Ok(()), check_value)
            }
        }
    }
}

/// How a [`Command`] relates to the client session table; see the
/// [module docs](crate::kv#exactly-once-writes).
///
/// Encoded as the first field of a command: `None` as byte 0 and `Session` as byte 1 followed
/// by the [`SessionId`] — exactly the bytes of the `Option<SessionId>` this field was before
/// registration existed, so entries written by earlier builds decode unchanged — and
/// `Register` as byte 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandSession {
    /// No session: the operations apply every time the command is committed, so a retry may
    /// apply them again.
    None,
    /// One write of a registered session: applied at most once. The store refuses it with
    /// [`KvError::SessionExpired`] if it does not hold the session.
    Session(SessionId),
    /// Registers a new session and carries no operations. Answered with
    /// [`Response::SessionRegistered`](super::Response::SessionRegistered).
    Register,
}

/// A write: what a client proposes and every replica applies at the same log index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Exactly-once application, or the registration of a session; see the
    /// [module docs](crate::kv#exactly-once-writes).
    pub session: CommandSession,
    /// The operations, applied in order in one log entry, all or none.
    pub operations: Vec<Operation>,
    /// Whether the response carries each key's previous value.
    pub return_previous: bool,
}

impl Command {
    /// An atomic batch of `operations`, without a session.
    pub fn batch(operations: Vec<Operation>) -> Command {
        Command {
            session: CommandSession::None,
            operations,
            return_previous: false,
        }
    }

    /// Sets `key` to `value`.
    pub fn put(key: Vec<u8>, value: Vec<u8>) -> Command {
        Command::batch(vec![Operation::Put { key, value }])
    }

    /// Deletes `key`.
    pub fn delete(key: Vec<u8>) -> Command {
        Command::batch(vec![Operation::Delete { key }])
    }

    /// Sets `key` to `value` (or deletes it when `None`) if `expect` holds.
    pub fn cas(key: Vec<u8>, expect: Expect, value: Option<Vec<u8>>) -> Command {
        Command::batch(vec![Operation::Cas { key, expect, value }])
    }

    /// A transaction: if every compare holds, run its `then` operations, else its `otherwise`
    /// ones, atomically in one log entry. Send it [`with_session`](Command::with_session)
    /// like any write for exactly-once application.
    ///
    /// ```
    /// use keyval::kv::{Command, Compare, CompareOp, KvStore, Response, Txn, TxnOp};
    /// use keyval::{EntryId, LogIndex, StateMachine, Term};
    ///
    /// let mut store = KvStore::new();
    /// let txn = Txn::new()
    ///     .when([Compare::version("config", CompareOp::Equal, 0)])
    ///     .then([TxnOp::put("config", "v1")]);
    /// let bytes = Command::txn(txn).encode().unwrap();
    /// let answer = store.apply(EntryId::new(Term(1), LogIndex(1)), &bytes);
    /// let Ok(Response::Txn(response)) = Response::decode(&answer) else { panic!() };
    /// assert!(response.succeeded);
    /// assert_eq!(response.revision, LogIndex(1));
    /// ```
    pub fn txn(txn: Txn) -> Command {
        Command::batch(vec![Operation::Txn(txn)])
    }

    /// Sets `key` to `value` attached to `lease` (see [`Operation::PutWithLease`]).
    pub fn put_with_lease(key: Vec<u8>, value: Vec<u8>, lease: LeaseId) -> Command {
        Command::batch(vec![Operation::PutWithLease { key, value, lease }])
    }

    /// Grants a lease of `ttl_seconds` (see [`Operation::LeaseGrant`]).
    ///
    /// ```
    /// use keyval::kv::{Command, KvStore, LeaseId, Response};
    /// use keyval::{EntryId, LogIndex, StateMachine, Term};
    ///
    /// let mut store = KvStore::new();
    /// let grant = Command::lease_grant(10).encode().unwrap();
    /// let answer = store.apply(EntryId::new(Term(1), LogIndex(1)), &grant);
    /// let Ok(Response::LeaseGranted { lease, .. }) = Response::decode(&answer) else { panic!() };
    /// assert_eq!(lease, LeaseId(1));
    /// let put = Command::put_with_lease(b"k".to_vec(), b"v".to_vec(), lease).encode().unwrap();
    /// store.apply(EntryId::new(Term(1), LogIndex(2)), &put);
    /// let revoke = Command::lease_revoke(lease).encode().unwrap();
    /// store.apply(EntryId::new(Term(1), LogIndex(3)), &revoke);
    /// assert!(store.get(b"k").is_none());
    /// ```
    pub fn lease_grant(ttl_seconds: u64) -> Command {
        Command::batch(vec![Operation::LeaseGrant { ttl_seconds }])
    }

    /// Revokes `lease`, deleting every key attached to it (see [`Operation::LeaseRevoke`]).
    pub fn lease_revoke(lease: LeaseId) -> Command {
        Command::batch(vec![Operation::LeaseRevoke { lease }])
    }

    /// The lease a command grants (its TTL) if it is a [`Command::lease_grant`].
    pub fn lease_grant_ttl(&self) -> Option<u64> {
        match self.operations.as_slice() {
            [Operation::LeaseGrant { ttl_seconds }] => Some(*ttl_seconds),
            _ => None,
        }
    }

    /// Changes the auth state (see [`Operation::Auth`]).
    pub fn auth(operation: AuthOperation) -> Command {
        Command::batch(vec![Operation::Auth(operation)])
    }

    /// The auth change this command carries, if it is one.
    pub fn auth_operation(&self) -> Option<&AuthOperation> {
        match self.operations.as_slice() {
            [Operation::Auth(operation)] => Some(operation),
            _ => None,
        }
    }

    /// Whether any operation of the command changes the auth state.
    pub fn changes_auth(&self) -> bool {
        self.operations
            .iter()
            .any(|operation| matches!(operation, Operation::Auth(_)))
    }

    /// Deletes every key in `range`.
    pub fn delete_range(range: KeyRange) -> Command {
        Command::batch(vec![Operation::DeleteRange { range }])
    }

    /// The transaction this command carries, if it is one.
    pub fn as_txn(&self) -> Option<&Txn> {
        match self.operations.as_slice() {
            [Operation::Txn(txn)] => Some(txn),
            _ => None,
        }
    }

    /// Registers a new session. The store answers with
    /// [`Response::SessionRegistered`](super::Response::SessionRegistered) carrying the
    /// session's client id; its writes then go out with [`Command::with_session`], sequences
    /// from 1. Registering has no other effect, so a registration whose answer was lost may
    /// simply be sent again (the unused session is evicted in time).
    pub fn register_session() -> Command {
        Command {
            session: CommandSession::Register,
            operations: Vec::new(),
            return_previous: false,
        }
    }

    /// The same command, applied at most once for `(client_id, sequence)` of a registered
    /// session.
    pub fn with_session(mut self, client_id: u64, sequence: u64) -> Command {
        self.session = CommandSession::Session(SessionId {
            client_id,
            sequence,
        });
        self
    }

    /// The session write this command is, if it is one.
    pub fn session_id(&self) -> Option<SessionId> {
        match self.session {
            CommandSession::Session(id) => Some(id),
            CommandSession::None | CommandSession::Register => None,
        }
    }

    /// Whether this command registers a session.
    pub fn is_registration(&self) -> bool {
        self.session == CommandSession::Register
    }

    /// The same command, asking for previous values in the response.
    pub fn with_previous(mut self) -> Command {
        self.return_previous = true;
        self
    }

    /// The key and value bytes over all operations.
    pub fn payload_bytes(&self) -> usize {
        self.operations.iter().map(Operation::payload_bytes).sum()
    }

    /// Checks the command against every limit. The state machine runs the same check on apply,
    /// so a command that fails here would be rejected there; checking before proposing saves a
    /// trip through the log and gives the caller the same error.
    pub fn validate(&self) -> Result<(), KvError> {
        match self.session {
            CommandSession::Session(session) if session.sequence == 0 => {
                return Err(KvError::InvalidSequence {
                    client_id: session.client_id,
                });
            }
            CommandSession::Register => {
                if !self.operations.is_empty() || self.return_previous {
                    return Err(KvError::InvalidRegistration);
                }
                return Ok(());
            }
            CommandSession::None | CommandSession::Session(_) => {}
        }
        if self.operations.is_empty() {
            return Err(KvError::EmptyBatch);
        }
        if self.operations.len() > BATCH_OPERATIONS_MAX {
            return Err(KvError::BatchTooLarge {
                operations: self.operations.len(),
                limit: BATCH_OPERATIONS_MAX,
            });
        }
        let has_txn = self
            .operations
            .iter()
            .any(|operation| matches!(operation, Operation::Txn(_)));
        if has_txn && (self.operations.len() > 1 || self.return_previous) {
            return Err(KvError::TxnNotAlone);
        }
        let has_lease_operation = self.operations.iter().any(|operation| {
            matches!(
                operation,
                Operation::LeaseGrant { .. } | Operation::LeaseRevoke { .. }
            )
        });
        if has_lease_operation && (self.operations.len() > 1 || self.return_previous) {
            return Err(KvError::LeaseNotAlone);
        }
        if self.changes_auth() && (self.operations.len() > 1 || self.return_previous) {
            return Err(KvError::AuthNotAlone);
        }
        for (position, operation) in self.operations.iter().enumerate() {
            operation.validate(position)?;
        }
        let payload = self.payload_bytes();
        if payload > COMMAND_PAYLOAD_BYTES_MAX {
            return Err(KvError::PayloadTooLarge {
                bytes: payload,
                limit: COMMAND_PAYLOAD_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Validates and encodes the command into the bytes to propose.
    pub fn encode(&self) -> Result<Vec<u8>, KvError> {
        self.validate()?;
        let bytes = codec::encode(self).map_err(|error| KvError::malformed(&error))?;
        // Guaranteed by the compile-time relations between the limits in `kv`.
        assert!(
            bytes.len() as u64 <= COMMAND_BYTES_MAX,
            "a valid command encoded to {} bytes, above COMMAND_BYTES_MAX",
            bytes.len()
        );
        Ok(bytes)
    }

    /// Decodes proposed bytes, refusing oversized input before decoding. Does not validate.
    pub fn decode(bytes: &[u8]) -> Result<Command, KvError> {
        if bytes.len() as u64 > COMMAND_BYTES_MAX {
            return Err(KvError::CommandTooLarge {
                bytes: bytes.len(),
                limit: COMMAND_BYTES_MAX as usize,
            });
        }
        codec::decode(bytes).map_err(|error| KvError::malformed(&error))
    }
}

/// A contiguous range of keys in byte order: `start` inclusive, `end` exclusive (`None` runs to
/// the last key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// The first key in the range.
    #[serde(with = "super::bytes")]
    pub start: Vec<u8>,
    /// The first key after the range, or `None` for no upper bound.
    #[serde(with = "super::bytes::option")]
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange::default()
    }

    /// Keys from `start` (inclusive) to `end` (exclusive).
    pub fn between(start: Vec<u8>, end: Vec<u8>) -> KeyRange {
        KeyRange {
            start,
            end: Some(end),
        }
    }

    /// Exactly `key`: from `key` to the first key after it (`key` followed by a zero byte).
    pub fn single(key: &[u8]) -> KeyRange {
        let mut end = key.to_vec();
        end.push(0);
        KeyRange {
            start: key.to_vec(),
            end: Some(end),
        }
    }

    /// The one key this range holds, if it is a range of exactly one key
    /// ([`KeyRange::single`]).
    pub fn as_single(&self) -> Option<&[u8]> {
        match &self.end {
            Some(end)
                if end.len() == self.start.len() + 1
                    && end.last() == Some(&0)
                    && end.starts_with(&self.start) =>
            {
                Some(&self.start)
            }
            _ => None,
        }
    }

    /// Keys from `start` (inclusive) on.
    pub fn starting_at(start: Vec<u8>) -> KeyRange {
        KeyRange { start, end: None }
    }

    /// Keys that begin with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        // The first key after every key with this prefix: drop trailing 0xFF bytes, then
        // increment the last byte. A prefix of only 0xFF bytes (or none) has no upper bound.
        let mut end = prefix.to_vec();
        while end.last() == Some(&0xFF) {
            end.pop();
        }
        let end = end.last_mut().map(|last| *last += 1).map(|()| end);
        KeyRange {
            start: prefix.to_vec(),
            end,
        }
    }

    /// The rest of this range after `key`: where to continue a scan whose page ended at `key`.
    pub fn after(&self, key: &[u8]) -> KeyRange {
        let mut start = key.to_vec();
        start.push(0);
        KeyRange {
            start,
            end: self.end.clone(),
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let below_end = match &self.end {
            Some(end) => key < end.as_slice(),
            None => true,
        };
        key >= self.start.as_slice() && below_end
    }

    /// Checks the bounds' lengths (a bound may be one byte longer than a key, as
    /// [`KeyRange::after`] makes it).
    pub fn validate(&self) -> Result<(), KvError> {
        let bound_bytes = self.start.len().max(self.end.as_ref().map_or(0, Vec::len));
        if bound_bytes > KEY_BYTES_MAX + 1 {
            return Err(KvError::KeyTooLarge {
                operation: None,
                bytes: bound_bytes,
                limit: KEY_BYTES_MAX + 1,
            });
        }
        Ok(())
    }
}

/// A read, served from the store after a read barrier; never goes through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadRequest {
    /// The value and metadata of one key.
    Get {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
    },
    /// Keys in a range, in order, at most `limit` of them.
    Scan {
        /// Which keys.
        range: KeyRange,
        /// The most entries to return, 1 to [`SCAN_LIMIT_MAX`].
        limit: usize,
    },
}

impl ReadRequest {
    /// Checks the request against the limits.
    pub fn validate(&self) -> Result<(), KvError> {
        match self {
            ReadRequest::Get { key } => validate_key(key, None),
            ReadRequest::Scan { range, limit } => {
                if *limit == 0 || *limit > SCAN_LIMIT_MAX {
                    return Err(KvError::InvalidScanLimit {
                        limit: *limit,
                        max: SCAN_LIMIT_MAX,
                    });
                }
                range.validate()
            }
        }
    }
}

/// Why the store refused a request. Every refusal is deterministic: each replica refuses the
/// same command with the same error, and a refused write applied nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The command bytes do not decode.
    #[error("malformed command: {reason}")]
    Malformed {
        /// What the decoder said (at most [`ERROR_REASON_BYTES_MAX`] bytes).
        reason: String,
    },
    /// The encoded command is larger than the proposal limit.
    #[error("command of {bytes} bytes exceeds the limit of {limit} bytes")]
    CommandTooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The command has no operations.
    #[error("the command has no operations")]
    EmptyBatch,
    /// The command has too many operations.
    #[error("{operations} operations exceed the batch limit of {limit}")]
    BatchTooLarge {
        /// How many.
        operations: usize,
        /// The limit.
        limit: usize,
    },
    /// A key is empty.
    #[error("empty key (operation {operation:?})")]
    EmptyKey {
        /// The operation's position in its command, for writes.
        operation: Option<usize>,
    },
    /// A key (or range bound) is too long.
    #[error("key of {bytes} bytes exceeds the limit of {limit} bytes (operation {operation:?})")]
    KeyTooLarge {
        /// The operation's position in its command, for writes.
        operation: Option<usize>,
        /// Key size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A value (new or expected) is too large.
    #[error("value of {bytes} bytes exceeds the limit of {limit} bytes (operation {operation})")]
    ValueTooLarge {
        /// The operation's position in its command.
        operation: usize,
        /// Value size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The keys and values of a command add up to too many bytes.
    #[error("command payload of {bytes} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Payload size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The previous values asked for add up to too many bytes; nothing was applied. Retry
    /// without `return_previous` or with fewer operations.
    #[error("previous values of {bytes} bytes exceed the response limit of {limit} bytes")]
    ResponseTooLarge {
        /// Bytes of previous values when the limit was passed.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A session's sequence is 0; sequences start at 1.
    #[error("client {client_id}: sequence 0 is invalid, sequences start at 1")]
    InvalidSequence {
        /// The client.
        client_id: u64,
    },
    /// The sequence is older than the client's latest applied one; this command was not applied
    /// now, and whether it was applied before is unknown.
    #[error("client {client_id}: sequence {sequence} is older than the latest applied {latest}")]
    StaleSequence {
        /// The client.
        client_id: u64,
        /// The sequence sent.
        sequence: u64,
        /// The client's latest applied sequence.
        latest: u64,
    },
    /// The store holds no session for this client: it was evicted, or never registered. Not
    /// applied now; if this was a retry, whether an earlier attempt applied (before the
    /// eviction) is unknown. Register a new session for later writes.
    #[error(
        "client {client_id}: no session for sequence {sequence} (evicted or never registered)"
    )]
    SessionExpired {
        /// The client.
        client_id: u64,
        /// The sequence sent.
        sequence: u64,
    },
    /// A scan limit is 0 or above the maximum.
    #[error("scan limit {limit} is outside 1..={max}")]
    InvalidScanLimit {
        /// The limit asked for.
        limit: usize,
        /// The largest allowed.
        max: usize,
    },
    /// A session registration carries operations or asks for previous values; it must carry
    /// nothing.
    #[error("a session registration carries no operations")]
    InvalidRegistration,
    /// A list of a transaction (its compares, or a branch's operations) is longer than
    /// [`TXN_OPERATIONS_MAX`](super::TXN_OPERATIONS_MAX). Nothing was applied; split the
    /// work, or use fewer compares.
    #[error("transaction {part}: {count} items exceed the limit of {limit}")]
    TxnTooLarge {
        /// Which list.
        part: TxnPart,
        /// How many items it holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A transaction shares its command with other operations, or the command asks for
    /// previous values (each transaction operation asks for its own).
    #[error("a transaction must be the only operation of its command")]
    TxnNotAlone,
    /// A put, a revoke, a keep-alive or a time-to-live request names a lease the store does
    /// not hold (expired, revoked or never granted). Nothing was applied.
    #[error("lease {:x} not found", lease.0)]
    LeaseNotFound {
        /// The lease named.
        lease: LeaseId,
    },
    /// A lease grant asks for a TTL of 0 or above the limit.
    #[error("lease TTL of {ttl_seconds} s is outside 1..={max}")]
    InvalidLeaseTtl {
        /// The TTL asked for, in seconds.
        ttl_seconds: u64,
        /// The largest allowed ([`LEASE_TTL_SECONDS_MAX`]).
        max: u64,
    },
    /// A lease grant or revoke shares its command with other operations, or the command asks
    /// for previous values.
    #[error("a lease grant or revoke must be the only operation of its command")]
    LeaseNotAlone,
    /// A grant would hold more than [`LEASES_MAX`](super::LEASES_MAX) leases at once.
    /// Nothing was applied; revoke leases no longer used.
    #[error("{limit} leases exist already")]
    TooManyLeases {
        /// The limit.
        limit: usize,
    },
    /// An auth change was refused (see [`AuthError`]); nothing was changed.
    #[error("{0}")]
    Auth(AuthError),
    /// An auth change shares its command with other operations, or the command asks for
    /// previous values.
    #[error("an auth change must be the only operation of its command")]
    AuthNotAlone,
    /// The write's permissions were checked against an auth state that changed before it
    /// applied (or, with auth enabled, were not checked at all). Nothing was applied; send it
    /// again (the same session and sequence) to be checked anew. [`Client`] does so itself.
    ///
    /// [`Client`]: crate::client::Client
    #[error("the auth state changed (revision {current:?}) since the write was checked at {checked:?}; send it again")]
    AuthRevisionChanged {
        /// The auth revision it was checked against (`None`: not checked).
        checked: Option<LogIndex>,
        /// The auth revision when it applied.
        current: LogIndex,
    },
}

impl KvError {
    /// A [`KvError::Malformed`] from a codec error, its reason cut to a bounded length.
    pub(crate) fn malformed(error: &CodecError) -> KvError {
        let mut reason = error.to_string();
        if reason.len() > ERROR_REASON_BYTES_MAX {
            let mut cut = ERROR_REASON_BYTES_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        KvError::Malformed { reason }
    }
}

/// Checks one key: non-empty and not too long.
pub(super) fn validate_key(key: &[u8], operation: Option<usize>) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey { operation });
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::KeyTooLarge {
            operation,
            bytes: key.len(),
            limit: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// A value of operation `operation` must fit [`VALUE_BYTES_MAX`].
pub(super) fn validate_value(value: &[u8], operation: usize) -> Result<(), KvError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(KvError::ValueTooLarge {
            operation,
            bytes: value.len(),
            limit: VALUE_BYTES_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maximal_cas() -> Operation {
        Operation::Cas {
            key: vec![0xFF; KEY_BYTES_MAX],
            expect: Expect::Value(vec![0xFF; VALUE_BYTES_MAX]),
            value: Some(vec![0xFF; VALUE_BYTES_MAX]),
        }
    }

    #[test]
    fn maximal_valid_commands_encode_within_the_proposal_limit() {
        let single = Command::batch(vec![maximal_cas()])
            .with_session(u64::MAX, u64::MAX)
            .with_previous();
        assert!(single.encode().unwrap().len() as u64 <= COMMAND_BYTES_MAX);

        // Many operations sharing the payload budget.
        let value_bytes = COMMAND_PAYLOAD_BYTES_MAX / BATCH_OPERATIONS_MAX - KEY_BYTES_MAX;
        let operations = (0..BATCH_OPERATIONS_MAX)
            .map(|_| Operation::Cas {
                key: vec![1; KEY_BYTES_MAX],
                expect: Expect::ModRevision(LogIndex(u64::MAX)),
                value: Some(vec![2; value_bytes]),
            })
            .collect();
        let batch = Command::batch(operations).with_session(u64::MAX, u64::MAX);
        assert!(batch.payload_bytes() <= COMMAND_PAYLOAD_BYTES_MAX);
        assert!(batch.encode().unwrap().len() as u64 <= COMMAND_BYTES_MAX);
    }

    #[test]
    fn validation_names_the_offending_operation() {
        let ok = Operation::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let command = Command::batch(vec![ok.clone(), Operation::Delete { key: Vec::new() }]);
        assert_eq!(
            command.validate(),
            Err(KvError::EmptyKey { operation: Some(1) })
        );
        let command = Command::batch(vec![
            ok.clone(),
            ok.clone(),
            Operation::Cas {
                key: b"k".to_vec(),
                expect: Expect::Value(vec![0; VALUE_BYTES_MAX + 1]),
                value: None,
            },
        ]);
        assert_eq!(
            command.validate(),
            Err(KvError::ValueTooLarge {
                operation: 2,
                bytes: VALUE_BYTES_MAX + 1,
                limit: VALUE_BYTES_MAX
            })
        );
        let command = Command::put(vec![1; KEY_BYTES_MAX + 1], Vec::new());
        assert!(matches!(
            command.validate(),
            Err(KvError::KeyTooLarge {
                operation: Some(0),
                ..
            })
        ));
        assert_eq!(
            Command::batch(Vec::new()).validate(),
            Err(KvError::EmptyBatch)
        );
        let many = Command::batch(vec![ok.clone(); BATCH_OPERATIONS_MAX + 1]);
        assert!(matches!(
            many.validate(),
            Err(KvError::BatchTooLarge { .. })
        ));
        let heavy = Command::batch(vec![
            Operation::Put {
                key: b"k".to_vec(),
                value: vec![0; VALUE_BYTES_MAX],
            };
            4
        ]);
        assert!(matches!(
            heavy.validate(),
            Err(KvError::PayloadTooLarge { .. })
        ));
        assert_eq!(
            Command::batch(vec![ok]).with_session(9, 0).validate(),
            Err(KvError::InvalidSequence { client_id: 9 })
        );
    }

    /// The layout of a command before sessions were registered (`session` was an option).
    #[derive(Serialize)]
    struct CommandBeforeRegistration {
        session: Option<SessionId>,
        operations: Vec<Operation>,
        return_previous: bool,
    }

    #[test]
    fn commands_encoded_before_registration_existed_decode_unchanged() {
        let operations = vec![Operation::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }];
        let session = SessionId {
            client_id: u64::MAX,
            sequence: 7,
        };
        for (old_session, session) in [
            (None, CommandSession::None),
            (Some(session), CommandSession::Session(session)),
        ] {
            let old = CommandBeforeRegistration {
                session: old_session,
                operations: operations.clone(),
                return_previous: true,
            };
            let bytes = codec::encode(&old).unwrap();
            let command = Command::decode(&bytes).unwrap();
            assert_eq!(command.session, session);
            assert_eq!(command.operations, operations);
            assert!(command.return_previous);
            assert_eq!(
                codec::encode(&command).unwrap(),
                bytes,
                "same bytes both ways"
            );
        }
        // A registration starts with a byte no earlier command could start with.
        let registration = Command::register_session().encode().unwrap();
        assert_eq!(registration[0], 2);
    }

    #[test]
    fn a_registration_carries_nothing() {
        let registration = Command::register_session();
        assert_eq!(registration.validate(), Ok(()));
        assert!(registration.is_registration());
        assert_eq!(registration.session_id(), None);
        let mut with_operation = registration.clone();
        with_operation
            .operations
            .push(Operation::Delete { key: b"k".to_vec() });
        assert_eq!(with_operation.validate(), Err(KvError::InvalidRegistration));
        let mut with_previous = registration;
        with_previous.return_previous = true;
        assert_eq!(with_previous.validate(), Err(KvError::InvalidRegistration));
    }

    #[test]
    fn decode_refuses_oversized_bytes_before_decoding() {
        let bytes = vec![0; COMMAND_BYTES_MAX as usize + 1];
        assert!(matches!(
            Command::decode(&bytes),
            Err(KvError::CommandTooLarge { .. })
        ));
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            KeyRange::prefix(b"ab"),
            KeyRange::between(b"ab".to_vec(), b"ac".to_vec())
        );
        assert_eq!(
            KeyRange::prefix(b"a\xFF\xFF"),
            KeyRange::between(b"a\xFF\xFF".to_vec(), b"b".to_vec())
        );
        assert_eq!(
            KeyRange::prefix(b"\xFF"),
            KeyRange::starting_at(b"\xFF".to_vec())
        );
        assert_eq!(KeyRange::prefix(b""), KeyRange::all());
        let range = KeyRange::prefix(b"ab");
        assert!(range.contains(b"ab") && range.contains(b"ab\xFF\xFF"));
        assert!(!range.contains(b"aa") && !range.contains(b"ac"));
        let rest = range.after(b"abc");
        assert!(!rest.contains(b"abc") && rest.contains(b"abc\0") && !rest.contains(b"ac"));
    }

    #[test]
    fn read_requests_are_validated() {
        let scan = |limit| ReadRequest::Scan {
            range: KeyRange::all(),
            limit,
        };
        assert!(scan(1).validate().is_ok());
        assert!(scan(SCAN_LIMIT_MAX).validate().is_ok());
        assert!(scan(0).validate().is_err());
        assert!(scan(SCAN_LIMIT_MAX + 1).validate().is_err());
        let get = ReadRequest::Get { key: Vec::new() };
        assert_eq!(get.validate(), Err(KvError::EmptyKey { operation: None }));
        let wide = ReadRequest::Scan {
            range: KeyRange::starting_at(vec![0; KEY_BYTES_MAX + 2]),
            limit: 1,
        };
        assert!(wide.validate().is_err());
    }

    #[test]
    fn malformed_reasons_are_bounded() {
        let error = CodecError::Malformed {
            reason: "é".repeat(ERROR_REASON_BYTES_MAX),
        };
        let KvError::Malformed { reason } = KvError::malformed(&error) else {
            panic!("expected Malformed");
        };
        assert!(reason.len() <= ERROR_REASON_BYTES_MAX);
    }
}
