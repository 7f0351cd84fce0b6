//! The store itself: ordered data with per-key metadata, the session table, and the apply path
//! that turns committed command bytes into a deterministic response.

use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use crate::state_machine::{RestoreError, SnapshotWriter, StateMachine};
use crate::types::{EntryId, LogIndex};

use super::auth::{AuthOperation, AuthPublisher, AuthState};
use super::command::{Command, CommandSession, Expect, KeyRange, KvError, Operation, ReadRequest};
use super::history::{Change, Compacted, History, HistoryLimits, Revision};
use super::key::Key;
use super::response::{
    LeaseId, Metadata, ReadResponse, Response, ScanPage, TxnOpResponse, TxnResponse, Versioned,
    WriteOutcome,
};
use super::session::{SessionCheck, Sessions};
use super::stored::Stored;
use super::txn::{Txn, TxnOp};
use super::{
    KEY_BYTES_MAX, LEASES_MAX, LEASE_TTL_SECONDS_MAX, PREVIOUS_VALUES_BYTES_MAX,
    SCAN_ENTRY_OVERHEAD_BYTES, SCAN_LIMIT_MAX, SCAN_RESPONSE_BYTES_MAX, VALUE_BYTES_MAX,
};

/// The replicated key-value state machine. See the [module docs](crate::kv).
///
/// Two stores that applied the same commands at the same indexes (or restored the same
/// snapshot) compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    /// Every key with its value and metadata, in key order. A persistent map: cloning it is
    /// O(1), and a clone shares every node until one side writes (then only the path to the
    /// change is copied — values and long keys are reference-counted and short keys are 24
    /// bytes inline, so a copy moves no value).
    /// Invariant: each key is valid, each `mod_revision <= revision`.
    pub(super) data: OrdMap<Key, Stored>,
    /// Client sessions for exactly-once writes.
    pub(super) sessions: Sessions,
    /// The index of the last applied command. Invariant: `revision <= applied`.
    pub(super) applied: LogIndex,
    /// The index of the last entry that modified any key.
    pub(super) revision: LogIndex,
    /// Every lease granted and not yet revoked, with the keys attached to it.
    /// Invariant: a key's `metadata.lease` is `Some(id)` exactly when `leases[id].keys` holds
    /// the key (kept by [`KvStore::insert_entry`] and [`KvStore::remove_entry`], the only
    /// writers of `data` besides a revoke).
    pub(super) leases: OrdMap<LeaseId, Lease>,
    /// Bytes of keys and values held. Invariant: the sum over `data` of key and value
    /// lengths (checked by `check_invariants`).
    pub(super) bytes: u64,
    /// Every change of the last revisions, for watchers (see `history.rs`).
    pub(super) history: History,
    /// The changes of the command being applied, recorded at its write points and moved to
    /// `history` once it has applied; empty between commands (a failed command's are
    /// dropped with its roll-back).
    pub(super) changes: Vec<Change>,
    /// Users, roles and whether auth is enabled (`auth.rs`). Shared with the servers'
    /// permission checks; replaced copy-on-write by an auth change.
    pub(super) auth: Arc<AuthState>,
    /// Where every auth change (and a restore) is published; not state (always equal).
    pub(super) auth_publisher: AuthPublisher,
}

/// A frozen copy of the store's lease table ([`KvStore::lease_table`]).
#[derive(Clone, Debug)]
pub struct LeaseTable(OrdMap<LeaseId, Lease>);

impl LeaseTable {
    /// Every lease with its granted TTL (seconds), in id order.
    pub fn ttls(&self) -> Vec<(LeaseId, u64)> {
        self.0
            .iter()
            .map(|(id, entry)| (*id, entry.ttl_seconds))
            .collect()
    }
}

/// A lease as the store holds it. Time is not part of it: the leader keeps the deadlines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Lease {
    /// The TTL granted, in seconds (1 to [`LEASE_TTL_SECONDS_MAX`]).
    pub(super) ttl_seconds: u64,
    /// The keys attached to it.
    pub(super) keys: OrdSet<Key>,
}

/// A key's state before a batch touched it, to restore if a later operation fails.
type Undo = Vec<(Key, Option<Stored>)>;

impl KvStore {
    /// An empty store that has applied nothing.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// An empty store that keeps `limits` of history for watchers (the default:
    /// [`HistoryLimits::default`]).
    pub fn with_history_limits(limits: HistoryLimits) -> KvStore {
        let mut store = KvStore::default();
        store.history.set_limits(limits);
        store
    }

    /// How much history the store keeps for watchers.
    pub fn history_limits(&self) -> HistoryLimits {
        self.history.limits()
    }

    /// Every revision up to this one has left the history: a watch must start after it
    /// (0 when nothing was ever dropped).
    pub fn compact_revision(&self) -> LogIndex {
        self.history.compacted()
    }

    /// Revisions held in the history, and their bytes as [`HistoryLimits::bytes`] counts them.
    pub fn history_size(&self) -> (usize, u64) {
        (self.history.len(), self.history.bytes())
    }

    /// At most `max` revisions of the history from `from` on, oldest first (cheap: shared),
    /// or [`Compacted`] when a revision at or after `from` may have been dropped.
    pub fn changes_since(
        &self,
        from: LogIndex,
        max: usize,
    ) -> Result<Vec<Arc<Revision>>, Compacted> {
        self.history.since(from, max)
    }

    /// The value and metadata of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<Versioned> {
        self.data.get(key).map(Stored::to_versioned)
    }

    /// Up to `limit` keys of `range` in key order (`limit` is capped at [`SCAN_LIMIT_MAX`]), and
    /// whether more follow. A page also stops before it would exceed
    /// [`SCAN_RESPONSE_BYTES_MAX`], but holds at least one entry when the range has one and
    /// `limit` is not 0.
    pub fn scan(&self, range: &KeyRange, limit: usize) -> ScanPage {
        let limit = limit.min(SCAN_LIMIT_MAX);
        let mut page = ScanPage::default();
        let mut page_bytes = 0;
        for (key, stored) in self.entries_in(range) {
            let entry_bytes = key.len() + stored.value().len() + SCAN_ENTRY_OVERHEAD_BYTES;
            let full = page.entries.len() == limit
                || (!page.entries.is_empty() && page_bytes + entry_bytes > SCAN_RESPONSE_BYTES_MAX);
            if full {
                page.more = true;
                break;
            }
            page_bytes += entry_bytes;
            page.entries.push((key.to_vec(), stored.to_versioned()));
        }
        page
    }

    /// Every entry of `range`, in key order.
    fn entries_in<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> impl Iterator<Item = (&'a Key, &'a Stored)> + 'a {
        let start = range.start.as_slice();
        let end = match &range.end {
            // A map's `range` panics on an inverted range; it is simply empty.
            Some(end) if end.as_slice() <= start => None,
            Some(end) => Some(Bound::Excluded(end.as_slice())),
            None => Some(Bound::Unbounded),
        };
        end.into_iter()
            .flat_map(move |end| self.data.range::<_, [u8]>((Bound::Included(start), end)))
    }

    /// Validates and serves a read request.
    pub fn read(&self, request: &ReadRequest) -> Result<ReadResponse, KvError> {
        request.validate()?;
        Ok(match request {
            ReadRequest::Get { key } => ReadResponse::Get(self.get(key)),
            ReadRequest::Scan { range, limit } => ReadResponse::Scan(self.scan(range, *limit)),
        })
    }

    /// The index of the last command applied (or covered by the restored snapshot).
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The log index of the latest modification of any key; `LogIndex(0)` before any.
    pub fn revision(&self) -> LogIndex {
        self.revision
    }

    /// How many keys exist.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Bytes of keys and values held (metadata and sessions not counted).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether no key exists.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The TTL (seconds) lease `lease` was granted with, if the store holds it.
    pub fn lease_ttl(&self, lease: LeaseId) -> Option<u64> {
        self.leases.get(&lease).map(|entry| entry.ttl_seconds)
    }

    /// The keys attached to `lease`, in key order, if the store holds it.
    pub fn lease_keys(&self, lease: LeaseId) -> Option<Vec<Vec<u8>>> {
        self.leases
            .get(&lease)
            .map(|entry| entry.keys.iter().map(|key| key.to_vec()).collect())
    }

    /// Every lease the store holds with its granted TTL (seconds), in id order.
    pub fn leases(&self) -> Vec<(LeaseId, u64)> {
        self.lease_table().ttls()
    }

    /// The lease table as it is now, in O(1) (the persistent map shares its structure): for a
    /// caller that walks it after releasing the state machine's lock (the lease keeper, every
    /// tick).
    pub fn lease_table(&self) -> LeaseTable {
        LeaseTable(self.leases.clone())
    }

    /// How many leases the store holds.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// The auth state now, in O(1).
    pub fn auth(&self) -> Arc<AuthState> {
        Arc::clone(&self.auth)
    }

    /// Where this store publishes its auth state after every change: a server keeps it and
    /// refreshes its copy when [`AuthPublisher::generation`] moves, without locking the store.
    pub fn auth_publisher(&self) -> AuthPublisher {
        self.auth_publisher.clone()
    }

    /// How many client sessions are kept.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The latest applied sequence of `client_id`, if the store holds its session (0 for a
    /// session registered that has applied no write yet).
    pub fn session_sequence(&self, client_id: u64) -> Option<u64> {
        self.sessions.sequence(client_id)
    }

    /// Panics with a description if an invariant is broken. Walks the whole store: for tests
    /// and debug checks, not for every apply.
    pub fn check_invariants(&self) {
        assert!(self.revision <= self.applied, "revision after applied");
        let bytes: u64 = self
            .data
            .iter()
            .map(|(key, stored)| entry_bytes(key, stored))
            .sum();
        assert_eq!(self.bytes, bytes, "bytes held do not add up");
        for (key, stored) in &self.data {
            let metadata = stored.metadata();
            assert!(
                !key.is_empty() && key.len() <= KEY_BYTES_MAX,
                "bad key {key:?}"
            );
            assert!(stored.value().len() <= VALUE_BYTES_MAX, "value too large");
            assert!(metadata.version >= 1, "key {key:?}: version 0");
            assert!(
                metadata.create_revision <= metadata.mod_revision
                    && metadata.mod_revision <= self.revision,
                "key {key:?}: revisions out of order: {metadata:?}, store at {}",
                self.revision
            );
            if let Some(lease) = metadata.lease {
                let attached = self
                    .leases
                    .get(&lease)
                    .map(|entry| entry.keys.contains(key));
                assert_eq!(attached, Some(true), "key {key:?}: not in lease {lease:?}");
            }
        }
        assert!(self.leases.len() <= LEASES_MAX, "too many leases");
        for (id, lease) in &self.leases {
            assert!(id.0 != 0 && id.0 <= self.applied.0, "lease id {id:?}");
            assert!(
                (1..=LEASE_TTL_SECONDS_MAX).contains(&lease.ttl_seconds),
                "lease {id:?}: ttl {}",
                lease.ttl_seconds
            );
            for key in &lease.keys {
                let holder = self.data.get(key).and_then(|stored| stored.lease());
                assert_eq!(holder, Some(*id), "lease {id:?} lists key {key:?}");
            }
        }
        self.sessions.check_invariants(self.applied);
        assert!(self.changes.is_empty(), "changes left between commands");
        let mut last = self.history.compacted();
        assert!(
            last <= self.revision,
            "history compacted after the revision"
        );
        for entry in self.history.iter() {
            assert!(entry.revision() > last, "history out of order");
            assert!(!entry.is_empty(), "an empty history revision");
            last = entry.revision();
        }
        assert!(last <= self.revision, "history after the revision");
        if let Err(reason) = self.auth.check(self.applied) {
            panic!("auth state: {reason}");
        }
    }

    /// Decodes, validates, deduplicates and applies one command; returns the encoded response.
    fn apply_bytes(&mut self, index: LogIndex, bytes: &[u8]) -> Vec<u8> {
        let (checked_at, bytes) = match super::auth::split_checked(bytes) {
            None => (None, bytes),
            Some(Ok((revision, rest))) => (Some(revision), rest),
            Some(Err(reason)) => {
                return Response::Rejected(KvError::Malformed { reason }).encode();
            }
        };
        let command = match Command::decode(bytes).and_then(|command| {
            command.validate()?;
            Ok(command)
        }) {
            Ok(command) => command,
            Err(error) => return Response::Rejected(error).encode(),
        };
        // Before the session table: a refusal here is not recorded, so a retry of the same
        // sequence is checked and applied afresh.
        if let Err(error) = self.check_auth_revision(checked_at, &command) {
            return Response::Rejected(error).encode();
        }
        let session = match command.session {
            CommandSession::None => return self.apply_operations(index, command).encode(),
            CommandSession::Register => {
                let client_id = self.sessions.register(index);
                return Response::SessionRegistered { client_id }.encode();
            }
            CommandSession::Session(session) => session,
        };
        let (client_id, sequence) = (session.client_id, session.sequence);
        match self.sessions.check(client_id, sequence, index) {
            SessionCheck::Apply => {
                let response = self.apply_operations(index, command).encode();
                self.sessions
                    .record(client_id, sequence, response.clone(), index);
                response
            }
            SessionCheck::Duplicate(response) => response,
            SessionCheck::Stale { latest } => Response::Rejected(KvError::StaleSequence {
                client_id,
                sequence,
                latest,
            })
            .encode(),
            SessionCheck::Expired => Response::Rejected(KvError::SessionExpired {
                client_id,
                sequence,
            })
            .encode(),
        }
    }

    /// Applies a validated command's operations at `index`, all or none.
    fn apply_operations(&mut self, index: LogIndex, mut command: Command) -> Response {
        if command.as_txn().is_some() {
            let Some(Operation::Txn(txn)) = command.operations.pop() else {
                unreachable!("as_txn found the transaction")
            };
            return self.apply_txn(index, txn);
        }
        match command.operations.as_slice() {
            [Operation::LeaseGrant { ttl_seconds }] => {
                return self.grant_lease(index, *ttl_seconds)
            }
            [Operation::LeaseRevoke { lease }] => return self.revoke_lease(index, *lease),
            _ => {}
        }
        if command.auth_operation().is_some() {
            if let Some(Operation::Auth(operation)) = command.operations.pop() {
                return self.apply_auth(index, operation);
            }
        }
        let return_previous = command.return_previous;
        // Undo records are needed only when something after a write can still fail.
        let may_fail = return_previous
            || command.operations.iter().any(|operation| {
                matches!(
                    operation,
                    Operation::Cas { .. } | Operation::PutWithLease { .. }
                )
            });
        let mut undo = Undo::new();
        let mut outcomes = Vec::with_capacity(command.operations.len());
        let mut previous_value_bytes = 0;
        let mut modified = false;
        for (position, operation) in command.operations.into_iter().enumerate() {
            let mut lease = None;
            let (key, value) = match operation {
                Operation::Put { key, value } => (key, Some(value)),
                Operation::PutWithLease {
                    key,
                    value,
                    lease: wanted,
                } => {
                    if !self.leases.contains_key(&wanted) {
                        self.roll_back(undo);
                        return Response::Rejected(KvError::LeaseNotFound { lease: wanted });
                    }
                    lease = Some(wanted);
                    (key, Some(value))
                }
                Operation::Delete { key } => (key, None),
                Operation::Cas { key, expect, value } => {
                    if !self.holds(&key, &expect) {
                        self.roll_back(undo);
                        return Response::ComparisonFailed {
                            operation: position,
                            current: self.get(&key),
                        };
                    }
                    (key, value)
                }
                Operation::DeleteRange { range } => {
                    let removed = self.remove_range(&range);
                    modified |= !removed.is_empty();
                    outcomes.push(WriteOutcome {
                        deleted: removed.len() as u64,
                        ..WriteOutcome::default()
                    });
                    if may_fail {
                        undo.extend(removed.into_iter().map(|(key, stored)| (key, Some(stored))));
                    }
                    continue;
                }
                Operation::Txn(_) => {
                    // `validate` refuses a transaction that is not alone in its command.
                    self.roll_back(undo);
                    return Response::Rejected(KvError::TxnNotAlone);
                }
                Operation::LeaseGrant { .. } | Operation::LeaseRevoke { .. } => {
                    // Likewise for lease grants and revokes.
                    self.roll_back(undo);
                    return Response::Rejected(KvError::LeaseNotAlone);
                }
                Operation::Auth(_) => {
                    // And for auth changes.
                    self.roll_back(undo);
                    return Response::Rejected(KvError::AuthNotAlone);
                }
            };
            let key = Key::from(key);
            let undo_key = may_fail.then(|| key.clone());
            let (previous, current) = match value {
                Some(value) => {
                    let (previous, metadata) = self.put_key(index, key, value, lease);
                    (previous, Some(metadata))
                }
                None => (self.delete_key(&key).map(|(_, stored)| stored), None),
            };
            modified |= previous.is_some() || current.is_some();
            let mut outcome = WriteOutcome {
                previous: previous.as_ref().map(|versioned| versioned.metadata()),
                current,
                previous_value: None,
                deleted: u64::from(previous.is_some() && current.is_none()),
            };
            if return_previous {
                outcome.previous_value = previous.as_ref().map(|stored| stored.value().to_vec());
                previous_value_bytes += outcome.previous_value.as_ref().map_or(0, Vec::len);
            }
            if let Some(key) = undo_key {
                undo.push((key, previous));
            }
            outcomes.push(outcome);
            if previous_value_bytes > PREVIOUS_VALUES_BYTES_MAX {
                self.roll_back(undo);
                return Response::Rejected(KvError::ResponseTooLarge {
                    bytes: previous_value_bytes,
                    limit: PREVIOUS_VALUES_BYTES_MAX,
                });
            }
        }
        if modified {
            self.revision = index;
        }
        Response::Written {
            revision: self.revision,
            outcomes,
        }
    }

    /// Applies a validated transaction at `index`: evaluates its compares against the store
    /// as it is, then runs the chosen branch in order, all or none (a branch fails only when
    /// what it returns would exceed [`PREVIOUS_VALUES_BYTES_MAX`]).
    fn apply_txn(&mut self, index: LogIndex, txn: Txn) -> Response {
        let succeeded = txn.compares.iter().all(|compare| {
            let current = self.data.get(compare.key.as_slice());
            let metadata = current.map(Stored::metadata);
            compare.holds(current.map(Stored::value).zip(metadata.as_ref()))
        });
        let operations = if succeeded { txn.then } else { txn.otherwise };
        let mut undo = Undo::new();
        let mut responses = Vec::with_capacity(operations.len());
        let mut returned_bytes = 0;
        let mut modified = false;
        let entry_bytes =
            |key: &[u8], value: &[u8]| key.len() + value.len() + SCAN_ENTRY_OVERHEAD_BYTES;
        for operation in operations {
            let response = match operation {
                TxnOp::Put {
                    key,
                    value,
                    return_previous,
                    lease,
                } => {
                    if let Some(lease) = lease.filter(|lease| !self.leases.contains_key(lease)) {
                        self.roll_back(undo);
                        return Response::Rejected(KvError::LeaseNotFound { lease });
                    }
                    let key = Key::from(key);
                    let (previous, current) = self.put_key(index, key.clone(), value, lease);
                    modified = true;
                    let previous_value = previous
                        .as_ref()
                        .filter(|_| return_previous)
                        .map(|stored| stored.value().to_vec());
                    returned_bytes += previous_value.as_ref().map_or(0, Vec::len);
                    let outcome = WriteOutcome {
                        previous: previous.as_ref().map(|stored| stored.metadata()),
                        current: Some(current),
                        previous_value,
                        deleted: 0,
                    };
                    undo.push((key, previous));
                    TxnOpResponse::Put(outcome)
                }
                TxnOp::Delete {
                    key,
                    return_previous,
                } => {
                    let removed: Vec<_> = self.delete_key(&key).into_iter().collect();
                    self.removed_response(removed, return_previous, &mut undo, &mut returned_bytes)
                }
                TxnOp::DeleteRange {
                    range,
                    return_previous,
                } => {
                    let removed = self.remove_range(&range);
                    self.removed_response(removed, return_previous, &mut undo, &mut returned_bytes)
                }
                TxnOp::Get { key } => {
                    let found = self.get(&key);
                    returned_bytes += found
                        .as_ref()
                        .map_or(0, |versioned| entry_bytes(&key, &versioned.value));
                    TxnOpResponse::Get(found)
                }
                TxnOp::Range { range, limit } => {
                    let page = self.scan(&range, limit);
                    returned_bytes += page
                        .entries
                        .iter()
                        .map(|(key, versioned)| entry_bytes(key, &versioned.value))
                        .sum::<usize>();
                    TxnOpResponse::Range(page)
                }
            };
            if let TxnOpResponse::Delete { deleted, .. } = &response {
                modified |= *deleted > 0;
            }
            responses.push(response);
            if returned_bytes > PREVIOUS_VALUES_BYTES_MAX {
                self.roll_back(undo);
                return Response::Rejected(KvError::ResponseTooLarge {
                    bytes: returned_bytes,
                    limit: PREVIOUS_VALUES_BYTES_MAX,
                });
            }
        }
        if modified {
            self.revision = index;
        }
        Response::Txn(TxnResponse {
            succeeded,
            revision: self.revision,
            responses,
        })
    }

    /// The answer of a transaction's delete that removed `removed`, noting them for undo and
    /// counting what it returns.
    fn removed_response(
        &self,
        removed: Vec<(Key, Stored)>,
        return_previous: bool,
        undo: &mut Undo,
        returned_bytes: &mut usize,
    ) -> TxnOpResponse {
        let deleted = removed.len() as u64;
        let mut previous = Vec::new();
        for (key, stored) in removed {
            if return_previous {
                *returned_bytes += key.len() + stored.value().len() + SCAN_ENTRY_OVERHEAD_BYTES;
                previous.push((key.to_vec(), stored.to_versioned()));
            }
            undo.push((key, Some(stored)));
        }
        TxnOpResponse::Delete { deleted, previous }
    }

    /// Sets `key` to `value` at `index`, attached to `lease` (`None`: to no lease); returns
    /// what it replaced and the new metadata.
    fn put_key(
        &mut self,
        index: LogIndex,
        key: Key,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> (Option<Stored>, Metadata) {
        // A key that exists (what most writes are) has its value replaced where the one
        // traversal found it; only a new key pays for a second one, to insert.
        let (previous, stored, metadata) = match self.data.get_mut(&key) {
            Some(slot) => {
                let mut metadata = slot.metadata().modified(index);
                metadata.lease = lease;
                let stored = Stored::new(&value, metadata);
                let previous = std::mem::replace(slot, stored.clone());
                self.account_put(&key, entry_bytes(&key, &stored), lease, Some(&previous));
                (Some(previous), stored, metadata)
            }
            None => {
                let mut metadata = Metadata::created(index);
                metadata.lease = lease;
                let stored = Stored::new(&value, metadata);
                let previous = self.insert_entry(key.clone(), stored.clone());
                debug_assert!(previous.is_none());
                (previous, stored, metadata)
            }
        };
        self.changes.push(Change {
            key,
            current: Some(stored),
            previous: previous.clone(),
        });
        (previous, metadata)
    }

    /// Deletes `key` as a command's operation (recorded for watchers); returns it with what
    /// it held.
    fn delete_key(&mut self, key: &[u8]) -> Option<(Key, Stored)> {
        let (key, stored) = self.remove_entry(key)?;
        self.changes.push(Change {
            key: key.clone(),
            current: None,
            previous: Some(stored.clone()),
        });
        Some((key, stored))
    }

    /// Grants lease `LeaseId(index)` of `ttl_seconds` (validated).
    fn grant_lease(&mut self, index: LogIndex, ttl_seconds: u64) -> Response {
        if self.leases.len() >= LEASES_MAX {
            return Response::Rejected(KvError::TooManyLeases { limit: LEASES_MAX });
        }
        // Entry indexes are unique and start at 1: so are lease ids, and none is 0.
        let lease = LeaseId(index.0);
        let entry = Lease {
            ttl_seconds,
            keys: OrdSet::new(),
        };
        let replaced = self.leases.insert(lease, entry);
        assert!(replaced.is_none(), "kv: lease {lease:?} granted twice");
        Response::LeaseGranted { lease, ttl_seconds }
    }

    /// Revokes `lease`: removes it and every key attached to it, at `index`.
    fn revoke_lease(&mut self, index: LogIndex, lease: LeaseId) -> Response {
        let Some(entry) = self.leases.remove(&lease) else {
            return Response::Rejected(KvError::LeaseNotFound { lease });
        };
        let mut deleted = 0;
        for key in &entry.keys {
            let removed = self.data.remove(key);
            self.forget_bytes(key, removed.as_ref());
            debug_assert_eq!(
                removed.as_ref().and_then(|stored| stored.lease()),
                Some(lease)
            );
            if let Some(stored) = removed {
                deleted += 1;
                self.changes.push(Change {
                    key: key.clone(),
                    current: None,
                    previous: Some(stored),
                });
            }
        }
        if deleted > 0 {
            self.revision = index;
        }
        Response::LeaseRevoked {
            revision: self.revision,
            deleted,
        }
    }

    /// Refuses a write checked against an auth state that is no longer current, and with auth
    /// enabled one that was not checked at all (except a lease revoke: the leader's lease
    /// keeper proposes those itself).
    fn check_auth_revision(
        &self,
        checked_at: Option<LogIndex>,
        command: &Command,
    ) -> Result<(), KvError> {
        let current = self.auth.revision();
        let stale = match checked_at {
            Some(revision) => revision != current,
            None => {
                self.auth.is_enabled()
                    && !matches!(
                        command.operations.as_slice(),
                        [Operation::LeaseRevoke { .. }]
                    )
            }
        };
        if stale {
            return Err(KvError::AuthRevisionChanged {
                checked: checked_at,
                current,
            });
        }
        Ok(())
    }

    /// Applies an auth change at `index`: all of it, or nothing with the reason.
    fn apply_auth(&mut self, index: LogIndex, operation: AuthOperation) -> Response {
        let mut next = AuthState::clone(&self.auth);
        match next.apply(index, operation) {
            Ok(()) => {
                self.auth = Arc::new(next);
                self.auth_publisher.publish(&self.auth);
                Response::AuthChanged { revision: index }
            }
            Err(error) => Response::Rejected(KvError::Auth(error)),
        }
    }

    /// Inserts `key`, keeping the lease index: detached from its old lease, attached to the
    /// one its new metadata names (which must exist). Returns what it replaced.
    pub(super) fn insert_entry(&mut self, key: Key, stored: Stored) -> Option<Stored> {
        let (bytes, lease) = (entry_bytes(&key, &stored), stored.lease());
        let previous = self.data.insert(key.clone(), stored);
        self.account_put(&key, bytes, lease, previous.as_ref());
        previous
    }

    /// The bookkeeping of `key` now holding a value of `bytes` (with the key) attached to
    /// `lease`, instead of `previous`: the byte count, and the key moved from the old value's
    /// lease to the new one's.
    fn account_put(
        &mut self,
        key: &Key,
        bytes: u64,
        lease: Option<LeaseId>,
        previous: Option<&Stored>,
    ) {
        self.bytes += bytes;
        self.forget_bytes(key, previous);
        if let Some(old) = previous.and_then(Stored::lease) {
            self.detach(old, key);
        }
        if let Some(lease) = lease {
            let entry = self.leases.get_mut(&lease);
            assert!(
                entry.is_some(),
                "kv: key attached to unknown lease {lease:?}"
            );
            if let Some(entry) = entry {
                entry.keys.insert(key.clone());
            }
        }
    }

    /// Removes `key`, detaching it from its lease; returns it with what it held.
    fn remove_entry(&mut self, key: &[u8]) -> Option<(Key, Stored)> {
        let (key, stored) = self.data.remove_with_key(key)?;
        self.forget_bytes(&key, Some(&stored));
        if let Some(lease) = stored.lease() {
            self.detach(lease, &key);
        }
        Some((key, stored))
    }

    fn detach(&mut self, lease: LeaseId, key: &Key) {
        if let Some(entry) = self.leases.get_mut(&lease) {
            entry.keys.remove(key);
        }
    }

    /// Removes every key of `range`; returns them with what they held, in key order.
    fn remove_range(&mut self, range: &KeyRange) -> Vec<(Key, Stored)> {
        let keys: Vec<Key> = self.entries_in(range).map(|(key, _)| key.clone()).collect();
        keys.into_iter()
            .filter_map(|key| self.delete_key(&key))
            .collect()
    }

    /// Whether `expect` holds for `key` now.
    fn holds(&self, key: &[u8], expect: &Expect) -> bool {
        match (expect, self.data.get(key)) {
            (Expect::Absent, None) => true,
            (Expect::Value(expected), Some(current)) => current.value() == &**expected,
            (Expect::ModRevision(revision), Some(current)) => current.mod_revision() == *revision,
            _ => false,
        }
    }

    /// Restores every key a failed batch touched, newest change first.
    fn roll_back(&mut self, undo: Undo) {
        // Nothing of a failed command happened, for watchers either.
        self.changes.clear();
        for (key, previous) in undo.into_iter().rev() {
            match previous {
                Some(versioned) => {
                    self.insert_entry(key, versioned);
                }
                None => {
                    self.remove_entry(&key);
                }
            }
        }
    }

    /// A stored entry of `key` left the store: stop counting its bytes.
    fn forget_bytes(&mut self, key: &[u8], gone: Option<&Stored>) {
        if let Some(gone) = gone {
            self.bytes -= entry_bytes(key, gone);
        }
    }
}

/// Bytes of one key and its value.
pub(super) fn entry_bytes(key: &[u8], stored: &Stored) -> u64 {
    (key.len() + stored.value().len()) as u64
}

impl StateMachine for KvStore {
    /// Applies one committed command. Malformed, oversized or invalid bytes yield an encoded
    /// [`Response::Rejected`]; nothing about the input can make this panic.
    ///
    /// # Panics
    /// If `id.index` is not after the last applied index: the node applied out of order.
    fn apply(&mut self, id: EntryId, command: &[u8]) -> Vec<u8> {
        assert!(
            id.index > self.applied,
            "kv: apply of {id} after {} was already applied",
            self.applied
        );
        self.applied = id.index;
        let response = self.apply_bytes(id.index, command);
        if !self.changes.is_empty() {
            debug_assert_eq!(self.revision, id.index, "changes without a new revision");
            let changes = std::mem::take(&mut self.changes);
            self.history.record(id.index, changes);
        }
        debug_assert!(self.revision <= self.applied);
        debug_assert!(self.sessions.is_within_bounds());
        response
    }

    fn snapshot(&mut self) -> Vec<u8> {
        self.encode_snapshot()
    }

    /// O(1): the store's maps are persistent, so the frozen copy shares every node with the
    /// live store, and applying goes on while another thread serializes the copy.
    fn snapshot_writer(&mut self) -> SnapshotWriter {
        let frozen = self.clone();
        Box::new(move || frozen.encode_snapshot())
    }

    /// Keeps this store's history limits (they are the node's, not the snapshot's).
    fn restore(&mut self, data: &[u8]) -> Result<(), RestoreError> {
        let publisher = self.auth_publisher.clone();
        *self = KvStore::decode_snapshot_with(data, self.history.limits())?;
        // Whoever reads the old store's publication now reads the restored state.
        self.auth_publisher = publisher;
        self.auth_publisher.publish(&self.auth);
        Ok(())
    }
}
