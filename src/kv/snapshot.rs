//! The store's snapshot format, and a restore that checks everything it reads.
//!
//! A snapshot is a sequence of checksummed records in the [`crate::codec`] framing, so that no
//! single decode ever has to hold the whole store and any damaged byte is caught by a CRC:
//!
//! ```text
//! +---------------------------------------------------------------------------------+
//! | record: Header { magic, format_version, applied, revision, keys, sessions }      |
//! | (format 4 on) record: leases: u64                                               |
//! | `leases` records:    (LeaseId, ttl_seconds)  strictly ascending id order       |
//! | `keys` records:      (key, Versioned)        strictly ascending key order      |
//! | `sessions` records:  (client_id, Session)    strictly ascending client order   |
//! | (format 5 on) record: HistoryHeader { compacted, revisions }                    |
//! | per revision, ascending: record (revision, changes), then `changes` records of  |
//! |   (key, current: Option<Versioned>, previous: Option<Versioned>)               |
//! | (format 6 on) record: AuthHeader { enabled, revision, secret, users, roles }    |
//! | `users` records:     (name, User)            strictly ascending name order     |
//! | `roles` records:     (name, Role)            strictly ascending name order     |
//! +---------------------------------------------------------------------------------+
//! ```
//!
//! Nothing may follow the last record. Restore builds a new store and replaces the old
//! one only when the whole snapshot checked out, so a bad snapshot leaves the store untouched.
//!
//! Format versions (the record sequence is the same in all):
//!
//! | version | written by | sessions | key metadata and cached responses |
//! |---|---|---|---|
//! | 1 | builds before sessions were registered | every session has applied a write (sequence ≥ 1, a cached response) | `Metadata { create_revision, mod_revision, version }`; `WriteOutcome` without `deleted` |
//! | 2 | builds before transactions | a session registered that has applied no write yet has sequence 0 and an empty response | as in 1 |
//! | 3 | builds before leases | as in 2 | `Metadata` ends with `lease: Option<LeaseId>`; `WriteOutcome` ends with `deleted: u64` |
//! | 4 | builds before watch and auth | as in 2 | as in 3; the lease table follows the header, and a key's `lease` names one of its leases |
//! | 5 | builds before auth | as in 2 | as in 4; the watch history follows the sessions |
//! | 6 | this build | as in 2 | as in 5; the auth section follows the history (see `auth.rs`); its secret signs tokens, so a snapshot file must be guarded like a key |
//!
//! The lease → keys index is not stored: restore rebuilds it from the keys' metadata. A
//! version 3 snapshot has no lease table (no key of it can have a lease). A snapshot before
//! version 5 has no watch history: the restored store's history starts empty, compacted up
//! to the snapshot's revision (a watch must start after it). The history restored from a
//! version 5 snapshot is then cut to the restoring node's own limits.
//!
//! This build reads all six (before 6, auth is disabled with no users); a version 1 snapshot's sessions carry on as registered ones,
//! and the key records and cached responses of versions 1 and 2 are converted to the current
//! layout (see `legacy.rs`; no key has a lease, a cached outcome's `deleted` is 1 exactly when
//! it removed its key). A converted response may be a few bytes longer, so sessions are
//! evicted, least recently used first, if the cache would pass its bound. A build that reads
//! only older versions refuses a newer snapshot as an unknown version rather than misreading
//! it.

use serde::{Deserialize, Serialize};

use crate::codec::{self, RecordRead};
use crate::error::CodecError;
use crate::types::LogIndex;

use super::auth::{AuthState, Role, User};
use super::history::{Change, History, HistoryLimits, Revision};
use super::legacy::{self, VersionedV2};
use super::response::{LeaseId, Response, Versioned};
use super::session::{Session, Sessions};
use super::store::{KvStore, Lease};
use super::stored::Stored;
use super::{
    KEY_BYTES_MAX, LEASES_MAX, LEASE_TTL_SECONDS_MAX, RESPONSE_BYTES_MAX, SESSIONS_MAX,
    SESSION_CACHE_BYTES_MAX, VALUE_BYTES_MAX,
};

/// Identifies a keyval kv snapshot: "kvsn".
const SNAPSHOT_MAGIC: u32 = u32::from_be_bytes(*b"kvsn");

/// The snapshot format this build writes.
const SNAPSHOT_FORMAT_VERSION: u32 = 6;

/// The first format with the watch history.
const SNAPSHOT_FORMAT_VERSION_HISTORY: u32 = 5;

/// The first format with an auth section.
const SNAPSHOT_FORMAT_VERSION_AUTH: u32 = 6;

/// The first format whose key metadata carries a lease (see the module docs).
const SNAPSHOT_FORMAT_VERSION_LEASES: u32 = 3;

/// The first format with a lease table.
const SNAPSHOT_FORMAT_VERSION_LEASE_TABLE: u32 = 4;

/// The oldest snapshot format this build reads (see the module docs for the differences).
const SNAPSHOT_FORMAT_VERSION_MIN: u32 = 1;

/// The largest record a snapshot holds: a session with a maximal cached response, with room
/// for the record's own fields.
const SNAPSHOT_RECORD_BYTES_MAX: u64 = RESPONSE_BYTES_MAX as u64 + 4096;

const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + 4096 <= SNAPSHOT_RECORD_BYTES_MAX as usize);
// A role with every permission of maximal bounds is one record.
const _: () = assert!(
    super::auth::ROLE_PERMISSIONS_MAX * (2 * (KEY_BYTES_MAX + 1) + 64) + 4096
        <= SNAPSHOT_RECORD_BYTES_MAX as usize
);

/// The first record of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    magic: u32,
    format_version: u32,
    applied: LogIndex,
    revision: LogIndex,
    keys: u64,
    sessions: u64,
}

/// The first record of the auth section (format 6 on).
#[derive(Debug, Serialize, Deserialize)]
struct AuthHeader {
    enabled: bool,
    revision: LogIndex,
    #[serde(with = "super::bytes")]
    secret: Vec<u8>,
    users: u64,
    roles: u64,
}

/// Why a snapshot could not be restored. The store is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The data does not start with a kv snapshot header.
    #[error("not a kv snapshot (magic {found:#010x})")]
    NotASnapshot {
        /// The magic number found.
        found: u32,
    },
    /// The snapshot was written in a format this build does not read.
    #[error("snapshot format version {found}; this build reads versions {oldest} to {supported}")]
    UnknownVersion {
        /// The version found.
        found: u32,
        /// The newest version this build reads (and the one it writes).
        supported: u32,
        /// The oldest version this build reads.
        oldest: u32,
    },
    /// A record is damaged or cut short.
    #[error("snapshot record {record}: {source}")]
    Record {
        /// The record's position (0 is the header).
        record: u64,
        /// What was wrong with it.
        #[source]
        source: CodecError,
    },
    /// The data ends before the last record the header announced.
    #[error("snapshot truncated in record {record}")]
    Truncated {
        /// The record's position.
        record: u64,
    },
    /// Every record decoded but the content breaks an invariant of the store.
    #[error("invalid snapshot content in record {record}: {reason}")]
    Invalid {
        /// The record's position.
        record: u64,
        /// What was wrong.
        reason: String,
    },
    /// Bytes follow the last record.
    #[error("{extra} bytes after the last snapshot record")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

impl KvStore {
    /// Serializes the whole store: data, sessions, applied index and revision.
    pub(super) fn encode_snapshot(&self) -> Vec<u8> {
        let header = Header {
            magic: SNAPSHOT_MAGIC,
            format_version: SNAPSHOT_FORMAT_VERSION,
            applied: self.applied,
            revision: self.revision,
            keys: self.data.len() as u64,
            sessions: self.sessions.len() as u64,
        };
        let mut out = Vec::with_capacity(self.snapshot_bytes_estimate());
        write_record(&header, &mut out);
        write_record(&(self.leases.len() as u64), &mut out);
        for (id, lease) in &self.leases {
            write_record(&(*id, lease.ttl_seconds), &mut out);
        }
        for (key, stored) in &self.data {
            write_record(&EntryRecord(key, VersionedRecord::of(stored)), &mut out);
        }
        for entry in self.sessions.iter() {
            write_record(&entry, &mut out);
        }
        let history = HistoryHeader {
            compacted: self.history.compacted(),
            revisions: self.history.len() as u64,
        };
        write_record(&history, &mut out);
        for entry in self.history.iter() {
            write_record(&(entry.revision(), entry.len() as u64), &mut out);
            for change in entry.changes() {
                let record = ChangeRecord(
                    &change.key,
                    change.current.as_ref().map(VersionedRecord::of),
                    change.previous.as_ref().map(VersionedRecord::of),
                );
                write_record(&record, &mut out);
            }
        }
        let auth = &self.auth;
        let header = AuthHeader {
            enabled: auth.enabled,
            revision: auth.revision,
            secret: auth.secret.clone(),
            users: auth.users.len() as u64,
            roles: auth.roles.len() as u64,
        };
        write_record(&header, &mut out);
        for user in &auth.users {
            write_record(&user, &mut out);
        }
        for role in &auth.roles {
            write_record(&role, &mut out);
        }
        out
    }

    /// At least the length of [`encode_snapshot`](Self::encode_snapshot)'s output (for
    /// revisions below 2^32 and auth state under 64 KiB), from sizes
    /// the store keeps (no pass over the data), so the buffer is allocated once. Grown by
    /// doubling instead, a 59 MB snapshot of 100k keys moved or remapped its buffer several
    /// times while the node served: measured over nine interleaved pairs of runs (3 nodes, 64
    /// clients putting), the 5 ms intervals with a request over 6 ms while a member serialized
    /// fell from 102 to 50 with the buffer sized up front, and p99.9 was lower in eight.
    /// Capacity beyond what is written is never touched, so it costs address space, not
    /// memory.
    pub(super) fn snapshot_bytes_estimate(&self) -> usize {
        // What a record adds besides the key and value bytes the store counts, with revisions
        // and versions below 2^32 (5-byte varints; past that a snapshot may need one
        // reallocation): the frame (length, checksum), two lengths, the metadata (three
        // numbers and an optional lease).
        const PER_KEY: u64 = 48;
        // The history's changes and revisions are covered by its byte count, which adds
        // `CHANGE_OVERHEAD_BYTES` (128) for each change: more than a change's record and its
        // revision's take.
        // A session: the frame, client id, sequence, the response's length, last use.
        const PER_SESSION: u64 = 40;
        // A lease: the frame, its id and TTL.
        const PER_LEASE: u64 = 24;
        // The headers, and auth's users and roles (a few KiB at most in practice; a larger
        // auth state only costs a reallocation).
        const FIXED: u64 = 64 * 1024;
        let estimate = self.bytes
            + self.data.len() as u64 * PER_KEY
            + self.history.bytes()
            + self.sessions.cached_bytes() as u64
            + self.sessions.len() as u64 * PER_SESSION
            + self.leases.len() as u64 * PER_LEASE
            + FIXED;
        // Beyond the address space (a 32-bit target): no hint, the buffer grows as it must.
        usize::try_from(estimate).unwrap_or(0)
    }

    /// Parses and checks a snapshot into a new store that keeps `limits` of history.
    pub(super) fn decode_snapshot_with(
        bytes: &[u8],
        limits: HistoryLimits,
    ) -> Result<KvStore, SnapshotError> {
        let mut reader = Reader { bytes, record: 0 };
        let header: Header = reader.next()?;
        if header.magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::NotASnapshot {
                found: header.magic,
            });
        }
        if !(SNAPSHOT_FORMAT_VERSION_MIN..=SNAPSHOT_FORMAT_VERSION).contains(&header.format_version)
        {
            return Err(SnapshotError::UnknownVersion {
                found: header.format_version,
                supported: SNAPSHOT_FORMAT_VERSION,
                oldest: SNAPSHOT_FORMAT_VERSION_MIN,
            });
        }
        if header.revision > header.applied {
            return Err(reader.invalid("revision after the applied index"));
        }
        if header.sessions > SESSIONS_MAX as u64 {
            return Err(reader.invalid("more sessions than SESSIONS_MAX"));
        }
        let mut store = KvStore {
            applied: header.applied,
            revision: header.revision,
            ..KvStore::default()
        };
        if header.format_version >= SNAPSHOT_FORMAT_VERSION_LEASE_TABLE {
            let leases: u64 = reader.next()?;
            if leases > LEASES_MAX as u64 {
                return Err(reader.invalid("more leases than LEASES_MAX"));
            }
            for _ in 0..leases {
                let (id, ttl_seconds): (LeaseId, u64) = reader.next()?;
                if id.0 == 0 || id.0 > header.applied.0 {
                    return Err(reader.invalid("lease id 0 or after the applied index"));
                }
                if !(1..=LEASE_TTL_SECONDS_MAX).contains(&ttl_seconds) {
                    return Err(reader.invalid("lease TTL outside 1..=LEASE_TTL_SECONDS_MAX"));
                }
                if store.leases.get_max().is_some_and(|(last, _)| id <= *last) {
                    return Err(reader.invalid("leases out of id order"));
                }
                let lease = Lease {
                    ttl_seconds,
                    keys: Default::default(),
                };
                store.leases.insert(id, lease);
            }
        }
        let legacy = header.format_version < SNAPSHOT_FORMAT_VERSION_LEASES;
        for _ in 0..header.keys {
            let (key, versioned): (Vec<u8>, Versioned) = if legacy {
                let (key, old): (Vec<u8>, VersionedV2) = reader.next()?;
                (key, old.into())
            } else {
                reader.next()?
            };
            check_entry(&store, &key, &versioned).map_err(|reason| reader.invalid(reason))?;
            // Attaches the key to its lease, rebuilding the lease → keys index.
            store.insert_entry(
                key.into(),
                Stored::new(&versioned.value, versioned.metadata),
            );
        }
        let mut sessions = Sessions::default();
        let mut last_client = None;
        for _ in 0..header.sessions {
            let (client_id, mut session): (u64, Session) = reader.next()?;
            if last_client.is_some_and(|last| client_id <= last) {
                return Err(reader.invalid("sessions out of client order"));
            }
            if legacy && session.sequence > 0 {
                session.response = legacy::transcode_response(&session.response)
                    .map_err(|_| reader.invalid("cached response is not a response"))?;
            }
            check_session(&sessions, &session, header.applied, header.format_version)
                .map_err(|reason| reader.invalid(reason))?;
            last_client = Some(client_id);
            sessions.insert(client_id, session);
        }
        if legacy {
            // Converted responses may have grown past the bound; the same snapshot converts
            // the same way on every node, so every node evicts the same sessions.
            sessions.evict(SESSIONS_MAX, SESSION_CACHE_BYTES_MAX);
        }
        if !sessions.is_within_bounds() {
            return Err(reader.invalid("sessions hold more bytes than SESSION_CACHE_BYTES_MAX"));
        }
        store.sessions = sessions;
        store.history = if header.format_version >= SNAPSHOT_FORMAT_VERSION_HISTORY {
            read_history(&mut reader, &store, limits)?
        } else {
            History::new(limits, header.revision)
        };
        if header.format_version >= SNAPSHOT_FORMAT_VERSION_AUTH {
            store.auth = std::sync::Arc::new(read_auth(&mut reader, header.applied)?);
        }
        if !reader.bytes.is_empty() {
            return Err(SnapshotError::TrailingBytes {
                extra: reader.bytes.len(),
            });
        }
        if cfg!(debug_assertions) {
            store.check_invariants();
        }
        Ok(store)
    }
}

/// Where the watch history starts, and how many revisions follow.
#[derive(Debug, Serialize, Deserialize)]
struct HistoryHeader {
    compacted: LogIndex,
    revisions: u64,
}

/// Reads the watch history of a format 5 snapshot, checked against the restored `store`,
/// and cuts it to `limits`.
fn read_history(
    reader: &mut Reader<'_>,
    store: &KvStore,
    limits: HistoryLimits,
) -> Result<History, SnapshotError> {
    let header: HistoryHeader = reader.next()?;
    if header.compacted > store.revision {
        return Err(reader.invalid("history compacted after the store's revision"));
    }
    // Nothing is allocated from the counts: a count larger than the records present ends
    // in `Truncated`.
    let unbounded = HistoryLimits {
        revisions: usize::MAX,
        bytes: u64::MAX,
    };
    let mut history = History::new(unbounded, header.compacted);
    let mut last = header.compacted;
    for _ in 0..header.revisions {
        let (revision, count): (LogIndex, u64) = reader.next()?;
        if revision <= last || revision > store.revision {
            return Err(reader.invalid("history revisions out of order or after the store's"));
        }
        if count == 0 {
            return Err(reader.invalid("a history revision without changes"));
        }
        last = revision;
        let mut changes = Vec::new();
        for _ in 0..count {
            let (key, current, previous): (Vec<u8>, Option<Versioned>, Option<Versioned>) =
                reader.next()?;
            let change = check_change(key, current, previous, revision)
                .map_err(|reason| reader.invalid(reason))?;
            changes.push(change);
        }
        history.restore(Revision::new(revision, changes));
    }
    history.set_limits(limits);
    Ok(history)
}

/// Checks one change record of the history at `revision`.
fn check_change(
    key: Vec<u8>,
    current: Option<Versioned>,
    previous: Option<Versioned>,
    revision: LogIndex,
) -> Result<Change, &'static str> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err("history key empty or longer than KEY_BYTES_MAX");
    }
    if current.is_none() && previous.is_none() {
        return Err("a history change that neither wrote nor removed its key");
    }
    let stored = |versioned: Versioned| -> Result<Stored, &'static str> {
        if versioned.value.len() > VALUE_BYTES_MAX {
            return Err("history value longer than VALUE_BYTES_MAX");
        }
        if versioned.metadata.mod_revision > revision {
            return Err("history metadata after its revision");
        }
        if versioned.metadata.lease == Some(LeaseId(0)) {
            return Err("history key attached to lease 0");
        }
        Ok(Stored::new(&versioned.value, versioned.metadata))
    };
    let current = current.map(stored).transpose()?;
    if current
        .as_ref()
        .is_some_and(|stored| stored.mod_revision() != revision)
    {
        return Err("a history put not made at its revision");
    }
    Ok(Change {
        key: key.into(),
        current,
        previous: previous.map(stored).transpose()?,
    })
}

/// Reads and checks the auth section.
fn read_auth(reader: &mut Reader<'_>, applied: LogIndex) -> Result<AuthState, SnapshotError> {
    let header: AuthHeader = reader.next()?;
    if header.users > super::auth::USERS_MAX as u64 || header.roles > super::auth::ROLES_MAX as u64
    {
        return Err(reader.invalid("more users or roles than the limits"));
    }
    let mut auth = AuthState {
        enabled: header.enabled,
        revision: header.revision,
        secret: header.secret,
        ..AuthState::default()
    };
    for _ in 0..header.users {
        let (name, user): (String, User) = reader.next()?;
        if auth
            .users
            .last_key_value()
            .is_some_and(|(last, _)| name <= *last)
        {
            return Err(reader.invalid("users out of name order"));
        }
        auth.users.insert(name, user);
    }
    for _ in 0..header.roles {
        let (name, role): (String, Role) = reader.next()?;
        if auth
            .roles
            .last_key_value()
            .is_some_and(|(last, _)| name <= *last)
        {
            return Err(reader.invalid("roles out of name order"));
        }
        auth.roles.insert(name, role);
    }
    auth.check(applied)
        .map_err(|reason| reader.invalid(reason))?;
    Ok(auth)
}

/// Checks one data record against the store restored so far.
fn check_entry(store: &KvStore, key: &[u8], versioned: &Versioned) -> Result<(), &'static str> {
    let metadata = versioned.metadata;
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err("key empty or longer than KEY_BYTES_MAX");
    }
    if versioned.value.len() > VALUE_BYTES_MAX {
        return Err("value longer than VALUE_BYTES_MAX");
    }
    if store.data.get_max().is_some_and(|(last, _)| key <= &**last) {
        return Err("keys out of order");
    }
    if metadata.version == 0
        || metadata.create_revision > metadata.mod_revision
        || metadata.mod_revision > store.revision
    {
        return Err("key metadata out of order");
    }
    if metadata
        .lease
        .is_some_and(|lease| !store.leases.contains_key(&lease))
    {
        return Err("key attached to a lease the snapshot does not hold");
    }
    Ok(())
}

/// Checks one session record of a snapshot in `format_version` against the sessions
/// restored so far.
fn check_session(
    sessions: &Sessions,
    session: &Session,
    applied: LogIndex,
    format_version: u32,
) -> Result<(), &'static str> {
    if session.sequence == 0 {
        // Version 1 had no registration: a session existed only once it applied a write.
        if format_version < 2 {
            return Err("session sequence 0");
        }
        if !session.response.is_empty() {
            return Err("a session with no write applied caches a response");
        }
    }
    if session.last_used > applied {
        return Err("session used after the applied index");
    }
    if sessions.is_used_at(session.last_used) {
        return Err("two sessions last used at the same index");
    }
    if session.sequence > 0
        && (session.response.len() > RESPONSE_BYTES_MAX
            || Response::decode(&session.response).is_err())
    {
        return Err("cached response is not a response");
    }
    Ok(())
}

/// Walks the records of a snapshot.
struct Reader<'a> {
    /// What is left to read.
    bytes: &'a [u8],
    /// The position of the next record.
    record: u64,
}

impl Reader<'_> {
    /// Reads, checks and decodes the next record.
    fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, SnapshotError> {
        let record = self.record;
        let wrap = |source| SnapshotError::Record { record, source };
        match codec::read_record(self.bytes, SNAPSHOT_RECORD_BYTES_MAX).map_err(wrap)? {
            RecordRead::Incomplete { .. } => Err(SnapshotError::Truncated { record }),
            RecordRead::Complete { payload, consumed } => {
                let value = codec::decode(payload).map_err(wrap)?;
                self.bytes = &self.bytes[consumed..];
                self.record += 1;
                Ok(value)
            }
        }
    }

    /// An [`SnapshotError::Invalid`] about the record just read.
    fn invalid(&self, reason: &str) -> SnapshotError {
        SnapshotError::Invalid {
            record: self.record.saturating_sub(1),
            reason: reason.to_string(),
        }
    }
}

/// Appends `value` as one framed snapshot record.
fn write_record<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    codec::write_value_record(value, out).expect("kv snapshot records always encode");
}

/// A key and its value as a snapshot record: the same encoding as `(Vec<u8>, Versioned)`, but
/// written from the store's shared bytes without copying them.
#[derive(serde::Serialize)]
struct EntryRecord<'a>(
    #[serde(serialize_with = "serialize_bytes")] &'a [u8],
    VersionedRecord<'a>,
);

/// A history change as a snapshot record: the encoding of
/// `(Vec<u8>, Option<Versioned>, Option<Versioned>)`, written from shared bytes.
#[derive(serde::Serialize)]
struct ChangeRecord<'a>(
    #[serde(serialize_with = "serialize_bytes")] &'a [u8],
    Option<VersionedRecord<'a>>,
    Option<VersionedRecord<'a>>,
);

/// [`Versioned`]'s encoding, borrowed.
#[derive(serde::Serialize)]
struct VersionedRecord<'a> {
    #[serde(serialize_with = "serialize_bytes")]
    value: &'a [u8],
    metadata: super::response::Metadata,
}

impl<'a> VersionedRecord<'a> {
    fn of(stored: &'a Stored) -> VersionedRecord<'a> {
        VersionedRecord {
            value: stored.value(),
            metadata: stored.metadata(),
        }
    }
}

fn serialize_bytes<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    super::bytes::serialize(bytes, serializer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;
    use crate::state_machine::StateMachine;
    use crate::types::{EntryId, Term};

    #[test]
    fn a_history_record_attached_to_lease_0_is_refused() {
        use crate::kv::Metadata;

        // Lease ids are log indexes, never 0, and the store encodes "no lease" as 0: a record
        // naming lease 0 is corrupt, and must be refused rather than stored (or panic).
        let versioned = |lease| Versioned {
            value: b"v".to_vec(),
            metadata: Metadata {
                lease,
                ..Metadata::created(LogIndex(5))
            },
        };
        let refused = check_change(
            b"k".to_vec(),
            Some(versioned(Some(LeaseId(0)))),
            None,
            LogIndex(5),
        );
        assert_eq!(refused.err(), Some("history key attached to lease 0"));
        let refused = check_change(
            b"k".to_vec(),
            None,
            Some(versioned(Some(LeaseId(0)))),
            LogIndex(6),
        );
        assert_eq!(refused.err(), Some("history key attached to lease 0"));
        let kept = check_change(
            b"k".to_vec(),
            Some(versioned(Some(LeaseId(3)))),
            None,
            LogIndex(5),
        )
        .expect("lease 3 is a valid id");
        assert_eq!(
            kept.event(LogIndex(5), false)
                .metadata
                .and_then(|m| m.lease),
            Some(LeaseId(3))
        );
    }

    fn apply(store: &mut KvStore, index: &mut u64, command: &Command) -> Vec<u8> {
        *index += 1;
        let bytes = command.encode().expect("test commands are valid");
        store.apply(EntryId::new(Term(1), LogIndex(*index)), &bytes)
    }

    /// The estimate is never below what is written (or the buffer would grow after all), and
    /// not wildly above it, for stores dominated by each part: many small keys, large values,
    /// history with multi-key transactions, sessions with cached responses, leases.
    #[test]
    fn the_size_estimate_covers_the_snapshot() {
        let check = |store: &KvStore, what: &str| {
            let written = store.encode_snapshot().len();
            let estimate = store.snapshot_bytes_estimate();
            assert!(
                written <= estimate,
                "{what}: {written} bytes written, {estimate} estimated"
            );
            assert!(
                estimate <= 3 * written + 64 * 1024,
                "{what}: {written} bytes written, {estimate} estimated"
            );
        };
        let mut index = 0;
        let mut store = KvStore::new();
        check(&store, "empty");
        for k in 0..20_000u64 {
            let command = Command::put(k.to_be_bytes().to_vec(), vec![1]);
            apply(&mut store, &mut index, &command);
        }
        check(&store, "small keys");
        for k in 0..200u64 {
            let command = Command::put(format!("big-{k}").into_bytes(), vec![7; 10_000]);
            apply(&mut store, &mut index, &command);
        }
        check(&store, "large values");
        let granted = apply(&mut store, &mut index, &Command::lease_grant(60));
        let Ok(crate::kv::Response::LeaseGranted { lease, .. }) =
            crate::kv::Response::decode(&granted)
        else {
            panic!("lease grant answered {granted:?}");
        };
        for k in 0..2_000u64 {
            let key = format!("leased-{k}").into_bytes();
            let command = Command::put_with_lease(key, vec![3; 20], lease);
            apply(&mut store, &mut index, &command);
        }
        check(&store, "leased keys");
        for round in 0..300u64 {
            let batch = (0..50u64)
                .map(|k| crate::kv::Operation::Put {
                    key: format!("txn-{k}").into_bytes(),
                    value: round.to_be_bytes().to_vec(),
                })
                .collect();
            apply(&mut store, &mut index, &Command::batch(batch));
        }
        check(&store, "multi-key revisions");
        for client in 0..500u64 {
            let registered = apply(&mut store, &mut index, &Command::register_session());
            let Ok(crate::kv::Response::SessionRegistered { client_id }) =
                crate::kv::Response::decode(&registered)
            else {
                panic!("registration answered {registered:?}");
            };
            let command = Command::put(format!("s-{client}").into_bytes(), vec![9; 100])
                .with_session(client_id, 1);
            apply(&mut store, &mut index, &command);
        }
        check(&store, "sessions");
    }
}
