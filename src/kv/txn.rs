//! Transactions: `if [compares] then [ops] else [ops]`, applied atomically in one log entry at
//! one revision, with etcd v3's semantics (see `docs/api.md`).
//!
//! A [`Txn`] travels as the only operation of a [`Command`](super::Command) (see
//! [`Command::txn`](super::Command::txn)), so it is deduplicated by client sessions exactly
//! like a batch, and its response is cached like any other.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

use super::command::{validate_key, validate_value, KeyRange, KvError};
use super::response::{LeaseId, Metadata};
use super::{SCAN_LIMIT_MAX, TXN_OPERATIONS_MAX, VALUE_BYTES_MAX};

/// How a compare relates a key's current property to its operand: `current <op> operand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    /// `current == operand`.
    Equal,
    /// `current != operand`.
    NotEqual,
    /// `current < operand`.
    Less,
    /// `current > operand`.
    Greater,
}

impl CompareOp {
    /// Whether `ordering` (of the current property against the operand) satisfies the op.
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }
}

/// Which property of a key a compare looks at, with the operand it is compared with.
///
/// New targets are only ever added at the end, so that commands already in logs keep their
/// encoding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value, compared byte-wise (lexicographically). Against an absent key every value
    /// compare is false, whatever the op — as in etcd, "no value" is not "empty value".
    Value(#[serde(with = "super::bytes")] Vec<u8>),
    /// The version: modifications since creation; 0 for an absent key.
    Version(u64),
    /// The revision that created the key; 0 for an absent key.
    CreateRevision(LogIndex),
    /// The revision that last modified the key; 0 for an absent key.
    ModRevision(LogIndex),
    /// The lease the key is attached to; `None` (etcd's lease 0) for a key without one and for
    /// an absent key, and `None` orders before every lease.
    Lease(Option<LeaseId>),
}

/// One condition of a transaction: `target(key) op operand`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Compare {
    /// The key whose current state is compared.
    #[serde(with = "super::bytes")]
    pub key: Vec<u8>,
    /// How.
    pub op: CompareOp,
    /// What property, against what.
    pub target: CompareTarget,
}

impl Compare {
    /// `value(key) op value`; false whatever the op when the key is absent.
    ///
    /// ```
    /// use keyval::kv::{Compare, CompareOp};
    /// let compare = Compare::value("color", CompareOp::Equal, "blue");
    /// assert_eq!(compare.key, b"color");
    /// ```
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }

    /// `version(key) op version`; an absent key has version 0, so `version(key) = 0` means
    /// "the key does not exist".
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: u64) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    /// `create_revision(key) op revision`; 0 for an absent key.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(LogIndex(revision)),
        }
    }

    /// `mod_revision(key) op revision`; 0 for an absent key.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(LogIndex(revision)),
        }
    }

    /// `lease(key) op lease`; `None` stands for "no lease" (etcd's 0), which an absent key has
    /// too.
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: Option<LeaseId>) -> Compare {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Lease(lease),
        }
    }

    /// Whether the compare holds for a key whose current state is `current` (`None`:
    /// absent), with etcd's rules for absent keys.
    pub fn holds(&self, current: Option<(&[u8], &Metadata)>) -> bool {
        // An absent key has all-zero metadata, and no value at all.
        let (value, metadata) = match current {
            Some((value, metadata)) => (Some(value), Some(metadata)),
            None => (None, None),
        };
        let ordering = match &self.target {
            CompareTarget::Value(operand) => match value {
                Some(value) => value.cmp(operand.as_slice()),
                None => return false,
            },
            CompareTarget::Version(operand) => {
                metadata.map_or(0, |metadata| metadata.version).cmp(operand)
            }
            CompareTarget::CreateRevision(operand) => metadata
                .map_or(LogIndex(0), |metadata| metadata.create_revision)
                .cmp(operand),
            CompareTarget::ModRevision(operand) => metadata
                .map_or(LogIndex(0), |metadata| metadata.mod_revision)
                .cmp(operand),
            CompareTarget::Lease(operand) => {
                metadata.and_then(|metadata| metadata.lease).cmp(operand)
            }
        };
        self.op.holds(ordering)
    }

    /// The key and operand bytes the compare carries.
    fn payload_bytes(&self) -> usize {
        let operand = match &self.target {
            CompareTarget::Value(value) => value.len(),
            _ => 0,
        };
        self.key.len() + operand
    }
}

/// One operation of a transaction's branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "super::bytes")]
        value: Vec<u8>,
        /// Whether the answer carries the key's previous value.
        return_previous: bool,
        /// The lease to attach the key to; `None` detaches it from any lease, as a put
        /// without a lease does in etcd. A lease the store does not hold is refused with
        /// [`KvError::LeaseNotFound`] when applied, and the transaction applies nothing.
        lease: Option<LeaseId>,
    },
    /// Removes `key`, if it exists.
    Delete {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
        /// Whether the answer carries the removed key and value.
        return_previous: bool,
    },
    /// Removes every key in `range` (a prefix, say: [`KeyRange::prefix`]).
    DeleteRange {
        /// Which keys.
        range: KeyRange,
        /// Whether the answer carries the removed keys and values.
        return_previous: bool,
    },
    /// Reads `key`.
    Get {
        /// The key.
        #[serde(with = "super::bytes")]
        key: Vec<u8>,
    },
    /// Reads up to `limit` keys of `range` in key order.
    Range {
        /// Which keys.
        range: KeyRange,
        /// The most entries to return, 1 to [`SCAN_LIMIT_MAX`].
        limit: usize,
    },
}

impl TxnOp {
    /// Sets `key` to `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            return_previous: false,
            lease: None,
        }
    }

    /// Deletes `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Delete {
            key: key.into(),
            return_previous: false,
        }
    }

    /// Deletes every key in `range`.
    pub fn delete_range(range: KeyRange) -> TxnOp {
        TxnOp::DeleteRange {
            range,
            return_previous: false,
        }
    }

    /// Reads `key`.
    pub fn get(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Get { key: key.into() }
    }

    /// Reads up to `limit` keys of `range`.
    pub fn range(range: KeyRange, limit: usize) -> TxnOp {
        TxnOp::Range { range, limit }
    }

    /// The same put, attaching its key to `lease` (which must exist when it applies); other
    /// operations are unchanged.
    pub fn with_lease(mut self, lease: LeaseId) -> TxnOp {
        if let TxnOp::Put { lease: slot, .. } = &mut self {
            *slot = Some(lease);
        }
        self
    }

    /// The same write, answering with what it replaced or removed; reads are unchanged.
    pub fn with_previous(mut self) -> TxnOp {
        match &mut self {
            TxnOp::Put {
                return_previous, ..
            }
            | TxnOp::Delete {
                return_previous, ..
            }
            | TxnOp::DeleteRange {
                return_previous, ..
            } => *return_previous = true,
            TxnOp::Get { .. } | TxnOp::Range { .. } => {}
        }
        self
    }

    /// Whether the operation may change the store.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            TxnOp::Put { .. } | TxnOp::Delete { .. } | TxnOp::DeleteRange { .. }
        )
    }

    /// The key, value and range-bound bytes the operation carries.
    fn payload_bytes(&self) -> usize {
        let range_bytes =
            |range: &KeyRange| range.start.len() + range.end.as_ref().map_or(0, Vec::len);
        match self {
            TxnOp::Put { key, value, .. } => key.len() + value.len(),
            TxnOp::Delete { key, .. } | TxnOp::Get { key } => key.len(),
            TxnOp::DeleteRange { range, .. } | TxnOp::Range { range, .. } => range_bytes(range),
        }
    }

    /// Checks the operation against the limits; `position` is its place in its branch.
    fn validate(&self, position: usize) -> Result<(), KvError> {
        match self {
            TxnOp::Put { key, value, .. } => {
                validate_key(key, Some(position))?;
                validate_value(value, position)
            }
            TxnOp::Delete { key, .. } | TxnOp::Get { key } => validate_key(key, Some(position)),
            TxnOp::DeleteRange { range, .. } => range.validate(),
            TxnOp::Range { range, limit } => {
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

/// Which list of a transaction an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnPart {
    /// The compares.
    Compares,
    /// The operations run when every compare holds.
    Then,
    /// The operations run otherwise.
    Otherwise,
}

impl std::fmt::Display for TxnPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxnPart::Compares => "compares",
            TxnPart::Then => "then",
            TxnPart::Otherwise => "otherwise",
        })
    }
}

/// A transaction: if every compare holds, run `then`, else run `otherwise` — atomically, in
/// one log entry, every write at one revision.
///
/// Compares are evaluated against the store as it was before the transaction; the operations
/// of the branch then run in order, each seeing the writes of the ones before it. Each of the
/// three lists holds at most [`TXN_OPERATIONS_MAX`] items.
///
/// ```
/// use keyval::kv::{Compare, CompareOp, Txn, TxnOp};
///
/// // Create "lock" only if it does not exist; otherwise read who holds it.
/// let txn = Txn::new()
///     .when([Compare::version("lock", CompareOp::Equal, 0)])
///     .then([TxnOp::put("lock", "me")])
///     .otherwise([TxnOp::get("lock")]);
/// assert!(txn.validate().is_ok());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The conditions; all must hold for `then` to run. None: `then` always runs.
    pub compares: Vec<Compare>,
    /// The operations run when every compare holds.
    pub then: Vec<TxnOp>,
    /// The operations run when some compare does not hold.
    pub otherwise: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction: no compares, no operations.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds compares.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compares.extend(compares);
        self
    }

    /// Adds operations to the branch run when every compare holds.
    pub fn then(mut self, operations: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.then.extend(operations);
        self
    }

    /// Adds operations to the branch run when some compare does not hold.
    pub fn otherwise(mut self, operations: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.otherwise.extend(operations);
        self
    }

    /// The key, value and bound bytes of all compares and operations.
    pub fn payload_bytes(&self) -> usize {
        self.compares
            .iter()
            .map(Compare::payload_bytes)
            .sum::<usize>()
            + self
                .then
                .iter()
                .chain(&self.otherwise)
                .map(TxnOp::payload_bytes)
                .sum::<usize>()
    }

    /// Checks the transaction's sizes, keys and values against the limits.
    pub fn validate(&self) -> Result<(), KvError> {
        for (part, count) in [
            (TxnPart::Compares, self.compares.len()),
            (TxnPart::Then, self.then.len()),
            (TxnPart::Otherwise, self.otherwise.len()),
        ] {
            if count > TXN_OPERATIONS_MAX {
                return Err(KvError::TxnTooLarge {
                    part,
                    count,
                    limit: TXN_OPERATIONS_MAX,
                });
            }
        }
        for (position, compare) in self.compares.iter().enumerate() {
            validate_key(&compare.key, Some(position))?;
            if let CompareTarget::Value(value) = &compare.target {
                if value.len() > VALUE_BYTES_MAX {
                    return Err(KvError::ValueTooLarge {
                        operation: position,
                        bytes: value.len(),
                        limit: VALUE_BYTES_MAX,
                    });
                }
            }
        }
        for branch in [&self.then, &self.otherwise] {
            for (position, operation) in branch.iter().enumerate() {
                operation.validate(position)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_keys_compare_as_zero_and_have_no_value() {
        let ops = [
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Less,
            CompareOp::Greater,
        ];
        for op in ops {
            assert!(!Compare::value("k", op, "").holds(None), "{op:?}");
            assert!(!Compare::value("k", op, "x").holds(None), "{op:?}");
        }
        assert!(Compare::version("k", CompareOp::Equal, 0).holds(None));
        assert!(Compare::version("k", CompareOp::Less, 1).holds(None));
        assert!(!Compare::version("k", CompareOp::Greater, 0).holds(None));
        assert!(Compare::create_revision("k", CompareOp::Equal, 0).holds(None));
        assert!(Compare::mod_revision("k", CompareOp::NotEqual, 3).holds(None));
        assert!(Compare::lease("k", CompareOp::Equal, None).holds(None));
        assert!(Compare::lease("k", CompareOp::Less, Some(LeaseId(0))).holds(None));
    }

    #[test]
    fn lease_compares_order_no_lease_first() {
        let with = |lease| Metadata {
            lease,
            ..Metadata::created(LogIndex(1))
        };
        let leased = with(Some(LeaseId(5)));
        let current = Some((&b"v"[..], &leased));
        assert!(Compare::lease("k", CompareOp::Equal, Some(LeaseId(5))).holds(current));
        assert!(Compare::lease("k", CompareOp::Greater, None).holds(current));
        assert!(Compare::lease("k", CompareOp::Less, Some(LeaseId(6))).holds(current));
        let plain = with(None);
        let current = Some((&b"v"[..], &plain));
        assert!(Compare::lease("k", CompareOp::Equal, None).holds(current));
        assert!(!Compare::lease("k", CompareOp::NotEqual, None).holds(current));
    }

    #[test]
    fn each_list_is_bounded() {
        let many = |count| (0..count).map(|_| TxnOp::get("k")).collect::<Vec<_>>();
        assert!(Txn::new().then(many(TXN_OPERATIONS_MAX)).validate().is_ok());
        assert_eq!(
            Txn::new()
                .otherwise(many(TXN_OPERATIONS_MAX + 1))
                .validate(),
            Err(KvError::TxnTooLarge {
                part: TxnPart::Otherwise,
                count: TXN_OPERATIONS_MAX + 1,
                limit: TXN_OPERATIONS_MAX
            })
        );
        let compares = (0..=TXN_OPERATIONS_MAX)
            .map(|_| Compare::version("k", CompareOp::Equal, 0))
            .collect::<Vec<_>>();
        assert!(matches!(
            Txn::new().when(compares).validate(),
            Err(KvError::TxnTooLarge {
                part: TxnPart::Compares,
                ..
            })
        ));
    }
}
