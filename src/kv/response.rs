//! What the store answers: write responses (the bytes `apply` returns, also cached in client
//! sessions) and read responses, with the per-key metadata both carry.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::CodecError;
use crate::types::LogIndex;

use super::command::KvError;

/// The id of a lease a key may be attached to: the log index of the entry that granted it, so
/// never 0 (etcd's and kvctl's "no lease").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

/// A key's history, as etcd keeps it.
///
/// Invariant: `1 <= version`, `create_revision <= mod_revision`, and both are log indexes of
/// entries the store has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Metadata {
    /// The log index of the entry that created the key (the latest creation, if it was deleted
    /// and created again).
    pub create_revision: LogIndex,
    /// The log index of the entry that last modified the key.
    pub mod_revision: LogIndex,
    /// How many times the key was written since its creation; 1 right after creation. A
    /// deleted key has none: created again, it starts over at 1.
    pub version: u64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl Metadata {
    /// The metadata of a key created by the entry at `index`.
    pub fn created(index: LogIndex) -> Metadata {
        Metadata {
            create_revision: index,
            mod_revision: index,
            version: 1,
            lease: None,
        }
    }

    /// The metadata after one more write by the entry at `index`. A write without a lease
    /// detaches the key from its lease, as a put does in etcd.
    pub fn modified(self, index: LogIndex) -> Metadata {
        debug_assert!(index >= self.mod_revision);
        Metadata {
            create_revision: self.create_revision,
            mod_revision: index,
            version: self.version.saturating_add(1),
            lease: None,
        }
    }
}

/// A value with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned {
    /// The value.
    #[serde(with = "super::bytes")]
    pub value: Vec<u8>,
    /// Its key's metadata.
    pub metadata: Metadata,
}

/// What one operation of an applied write did to its key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The key's metadata before the operation; `None` if it did not exist.
    pub previous: Option<Metadata>,
    /// The key's metadata after the operation; `None` if it does not exist (deleted).
    pub current: Option<Metadata>,
    /// The key's value before the operation, when the command asked for previous values and
    /// the key existed.
    #[serde(with = "super::bytes::option")]
    pub previous_value: Option<Vec<u8>>,
    /// How many keys the operation removed: 0 or 1 for a single key, any number for an
    /// [`Operation::DeleteRange`](super::Operation::DeleteRange).
    pub deleted: u64,
}

impl WriteOutcome {
    /// Whether the operation removed an existing key.
    pub fn deleted(&self) -> bool {
        self.previous.is_some() && self.current.is_none()
    }
}

/// The answer to a write: what `apply` returns, encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Every operation was applied.
    Written {
        /// The store's revision after the write: the log index of its latest modification
        /// (this entry's index unless the write changed nothing).
        revision: LogIndex,
        /// One outcome per operation, in order.
        outcomes: Vec<WriteOutcome>,
    },
    /// A compare-and-swap did not hold; nothing of the command was applied.
    ComparisonFailed {
        /// The failed operation's position in the command.
        operation: usize,
        /// Its key as it is in the store (the command having applied nothing).
        current: Option<Versioned>,
    },
    /// The command was refused; nothing was applied.
    Rejected(KvError),
    /// A [`Command::register_session`](super::Command::register_session) was applied: the new
    /// session's client id, for its writes' [`SessionId`](super::SessionId)s.
    SessionRegistered {
        /// The new session's client id: the log index of the registration.
        client_id: u64,
    },
    /// A [`Command::txn`](super::Command::txn) was applied: which branch ran and what each of
    /// its operations answered.
    Txn(TxnResponse),
    /// A [`Command::lease_grant`](super::Command::lease_grant) was applied.
    LeaseGranted {
        /// The new lease: the log index of the grant.
        lease: LeaseId,
        /// Its TTL in seconds, as granted.
        ttl_seconds: u64,
    },
    /// A [`Command::lease_revoke`](super::Command::lease_revoke) was applied: the lease is gone
    /// and so is every key that was attached to it.
    LeaseRevoked {
        /// The store's revision after the revoke: this entry's index if it deleted any key.
        revision: LogIndex,
        /// How many keys were deleted.
        deleted: u64,
    },
    /// An [`Command::auth`](super::Command::auth) change was applied.
    AuthChanged {
        /// The auth revision now: this entry's index.
        revision: LogIndex,
    },
}

impl Response {
    /// Encodes the response into the bytes `apply` returns.
    pub fn encode(&self) -> Vec<u8> {
        // Only plain data types: encoding cannot fail.
        codec::encode(self).expect("a kv response always encodes")
    }

    /// Decodes the bytes `apply` returned.
    pub fn decode(bytes: &[u8]) -> Result<Response, CodecError> {
        codec::decode(bytes)
    }

    /// Whether the write was applied.
    pub fn is_written(&self) -> bool {
        matches!(self, Response::Written { .. })
    }
}

/// The answer to a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every compare held, so that the `then` branch ran (else the `otherwise` one).
    pub succeeded: bool,
    /// The store's revision after the transaction: this entry's index if it modified any key,
    /// else the revision it read at. All writes of one transaction share this one revision.
    pub revision: LogIndex,
    /// One answer per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

/// What one operation of a transaction answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    /// A put: the key's metadata before and after, and its previous value when asked for.
    Put(WriteOutcome),
    /// A delete of one key or of a range.
    Delete {
        /// How many keys were removed.
        deleted: u64,
        /// The removed keys with their last values, in key order, when asked for; else empty.
        previous: Vec<(Vec<u8>, Versioned)>,
    },
    /// A get: the key's value and metadata, if it exists (as left by the earlier operations
    /// of the transaction).
    Get(Option<Versioned>),
    /// A range read, in key order, at most its limit of entries.
    Range(ScanPage),
}

/// One page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    /// Keys in order with their values.
    pub entries: Vec<(Vec<u8>, Versioned)>,
    /// Whether keys in the range follow the last one returned; continue with
    /// [`KeyRange::after`](super::KeyRange::after).
    pub more: bool,
}

/// The answer to a [`ReadRequest`](super::ReadRequest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadResponse {
    /// The key's value and metadata, if it exists.
    Get(Option<Versioned>),
    /// A page of the scanned range.
    Scan(ScanPage),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{
        BATCH_OPERATIONS_MAX, ERROR_REASON_BYTES_MAX, KEY_BYTES_MAX, PREVIOUS_VALUES_BYTES_MAX,
        RESPONSE_BYTES_MAX, SCAN_ENTRY_OVERHEAD_BYTES, SCAN_LIMIT_MAX, VALUE_BYTES_MAX,
    };

    fn widest_metadata() -> Metadata {
        Metadata {
            create_revision: LogIndex(u64::MAX),
            mod_revision: LogIndex(u64::MAX),
            version: u64::MAX,
            lease: Some(LeaseId(u64::MAX)),
        }
    }

    #[test]
    fn metadata_history() {
        let created = Metadata::created(LogIndex(4));
        assert_eq!(created.version, 1);
        let modified = created.modified(LogIndex(9));
        assert_eq!(modified.create_revision, LogIndex(4));
        assert_eq!(modified.mod_revision, LogIndex(9));
        assert_eq!(modified.version, 2);
        assert_eq!(
            widest_metadata().modified(LogIndex(u64::MAX)).version,
            u64::MAX
        );
    }

    #[test]
    fn deleted_means_it_existed_and_is_gone() {
        let existed = Some(Metadata::created(LogIndex(1)));
        let outcome = |previous, current| WriteOutcome {
            previous,
            current,
            previous_value: None,
            deleted: 0,
        };
        assert!(outcome(existed, None).deleted());
        assert!(!outcome(None, None).deleted());
        assert!(!outcome(existed, existed).deleted());
    }

    #[test]
    fn the_largest_responses_stay_within_the_response_limit() {
        let share = PREVIOUS_VALUES_BYTES_MAX / BATCH_OPERATIONS_MAX;
        let outcomes = (0..BATCH_OPERATIONS_MAX)
            .map(|_| WriteOutcome {
                previous: Some(widest_metadata()),
                current: Some(widest_metadata()),
                previous_value: Some(vec![0xFF; share]),
                deleted: u64::MAX,
            })
            .collect();
        let written = Response::Written {
            revision: LogIndex(u64::MAX),
            outcomes,
        };
        let failed = Response::ComparisonFailed {
            operation: usize::MAX,
            current: Some(Versioned {
                value: vec![0xFF; VALUE_BYTES_MAX],
                metadata: widest_metadata(),
            }),
        };
        let rejected = Response::Rejected(KvError::Malformed {
            reason: "x".repeat(ERROR_REASON_BYTES_MAX),
        });
        let registered = Response::SessionRegistered {
            client_id: u64::MAX,
        };
        for response in [written, failed, rejected, registered] {
            let bytes = response.encode();
            assert!(bytes.len() <= RESPONSE_BYTES_MAX, "{} bytes", bytes.len());
            assert_eq!(Response::decode(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn the_largest_transaction_answers_stay_within_the_response_limit() {
        use crate::kv::TXN_OPERATIONS_MAX;
        let versioned = |value_bytes| Versioned {
            value: vec![0xFF; value_bytes],
            metadata: widest_metadata(),
        };
        // Every operation's answer at its widest, the data shared out to the budget (each
        // entry counted with its overhead).
        let share = PREVIOUS_VALUES_BYTES_MAX / TXN_OPERATIONS_MAX;
        let value_bytes = share - SCAN_ENTRY_OVERHEAD_BYTES - 1;
        let kinds = [
            TxnOpResponse::Put(WriteOutcome {
                previous: Some(widest_metadata()),
                current: Some(widest_metadata()),
                previous_value: Some(vec![0xFF; share]),
                deleted: u64::MAX,
            }),
            TxnOpResponse::Delete {
                deleted: u64::MAX,
                previous: vec![(vec![1], versioned(value_bytes))],
            },
            TxnOpResponse::Get(Some(versioned(value_bytes + 1))),
            TxnOpResponse::Range(ScanPage {
                entries: vec![(vec![1], versioned(value_bytes))],
                more: true,
            }),
        ];
        for kind in kinds {
            let response = Response::Txn(TxnResponse {
                succeeded: true,
                revision: LogIndex(u64::MAX),
                responses: vec![kind; TXN_OPERATIONS_MAX],
            });
            let bytes = response.encode();
            assert!(bytes.len() <= RESPONSE_BYTES_MAX, "{} bytes", bytes.len());
            assert_eq!(Response::decode(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn scan_entries_encode_within_their_counted_overhead() {
        let entry = |key_bytes, value_bytes| {
            let versioned = Versioned {
                value: vec![1; value_bytes],
                metadata: widest_metadata(),
            };
            (vec![2; key_bytes], versioned)
        };
        for (key_bytes, value_bytes, count) in
            [(1, 0, SCAN_LIMIT_MAX), (KEY_BYTES_MAX, VALUE_BYTES_MAX, 2)]
        {
            let page = ScanPage {
                entries: vec![entry(key_bytes, value_bytes); count],
                more: true,
            };
            let counted = count * (key_bytes + value_bytes + SCAN_ENTRY_OVERHEAD_BYTES);
            let encoded = codec::encode(&ReadResponse::Scan(page)).unwrap().len();
            assert!(encoded <= counted + 16, "{encoded} > {counted}");
        }
    }
}
