//! A value as the store holds it: its metadata and its bytes in one shared allocation.
//!
//! The store's map holds an entry per key in the leaves of a persistent B-tree, and a put
//! copies the leaf it lands in (copy-on-write: a snapshot may share the old one). With the
//! value as an `Arc<[u8]>` (16 bytes) beside a [`Metadata`] (40 bytes: three `u64`s and an
//! `Option<LeaseId>`), an entry was 80 bytes with its 24-byte key; leaves are 70 % full after
//! random inserts and half full after ascending ones, so each key cost 115–160 bytes of leaf.
//! Here the entry is the 16-byte pointer alone (40 with the key) and the 32 bytes of metadata
//! ride in the value's allocation, which the value needed anyway: 1M keys of 16 + 100 bytes
//! went from 259 to 218 bytes per key loaded in random order and from 311 to 247 in ascending
//! order (`cargo bench --bench store_memory`), and each put copies half the bytes of leaf it
//! copied before (the 1M random puts applied in 1.41–1.52 s instead of 1.73–1.76).
//!
//! The cost: a change of metadata alone (none today: every write brings its value) would
//! copy the value, and reading the metadata decodes 32 bytes.

use std::fmt;
use std::sync::Arc;

use crate::types::LogIndex;

use super::response::{LeaseId, Metadata, Versioned};

/// Bytes of metadata before the value: create and mod revision, version, lease (0: none).
const HEADER_BYTES: usize = 32;

/// A value with its metadata; cloning copies a pointer. Two compare equal when both value
/// and metadata do.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Stored(Arc<[u8]>);

impl Stored {
    /// `value` with `metadata`.
    ///
    /// # Panics
    /// If `metadata.lease` is `Some(LeaseId(0))`: lease ids are log indexes, never 0, and 0
    /// encodes "no lease" here. Every path from input rejects lease 0 first: a command naming
    /// it is refused as naming an unknown lease, a snapshot (keys and history) as corrupt.
    pub(super) fn new(value: &[u8], metadata: Metadata) -> Stored {
        let lease = match metadata.lease {
            Some(LeaseId(0)) => panic!("kv: lease id 0 stored with a key"),
            Some(LeaseId(id)) => id,
            None => 0,
        };
        let mut header = [0u8; HEADER_BYTES];
        for (slot, field) in header.chunks_exact_mut(8).zip([
            metadata.create_revision.0,
            metadata.mod_revision.0,
            metadata.version,
            lease,
        ]) {
            slot.copy_from_slice(&field.to_le_bytes());
        }
        let mut bytes = Vec::with_capacity(HEADER_BYTES + value.len());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(value);
        Stored(bytes.into())
    }

    /// The value's bytes.
    pub(super) fn value(&self) -> &[u8] {
        &self.0[HEADER_BYTES..]
    }

    /// The key's metadata.
    pub(super) fn metadata(&self) -> Metadata {
        Metadata {
            create_revision: LogIndex(self.field(0)),
            mod_revision: self.mod_revision(),
            version: self.field(2),
            lease: self.lease(),
        }
    }

    /// The index of the entry that last wrote the key (its metadata's `mod_revision`).
    pub(super) fn mod_revision(&self) -> LogIndex {
        LogIndex(self.field(1))
    }

    /// The lease the key is attached to (its metadata's `lease`).
    pub(super) fn lease(&self) -> Option<LeaseId> {
        let lease = self.field(3);
        (lease != 0).then_some(LeaseId(lease))
    }

    /// The value and metadata as a response carries them.
    pub(super) fn to_versioned(&self) -> Versioned {
        Versioned {
            value: self.value().to_vec(),
            metadata: self.metadata(),
        }
    }

    fn field(&self, number: usize) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.0[number * 8..number * 8 + 8]);
        u64::from_le_bytes(bytes)
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("value", &self.value())
            .field("metadata", &self.metadata())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_and_metadata_round_trip() {
        let metadata = Metadata {
            create_revision: LogIndex(3),
            mod_revision: LogIndex(u64::MAX),
            version: 7,
            lease: Some(LeaseId(42)),
        };
        for value in [&b""[..], b"v", &[0xAB; 1000]] {
            let stored = Stored::new(value, metadata);
            assert_eq!(stored.value(), value);
            assert_eq!(stored.metadata(), metadata);
            assert_eq!(stored.mod_revision(), LogIndex(u64::MAX));
            assert_eq!(stored.lease(), Some(LeaseId(42)));
            assert_eq!(stored.0.len(), HEADER_BYTES + value.len());
        }
        let bare = Stored::new(b"x", Metadata::created(LogIndex(9)));
        assert_eq!(bare.lease(), None);
        assert_eq!(bare.metadata(), Metadata::created(LogIndex(9)));
    }

    #[test]
    fn equality_is_value_and_metadata() {
        let a = Stored::new(b"x", Metadata::created(LogIndex(1)));
        assert_eq!(a, Stored::new(b"x", Metadata::created(LogIndex(1))));
        assert_ne!(a, Stored::new(b"y", Metadata::created(LogIndex(1))));
        assert_ne!(a, Stored::new(b"x", Metadata::created(LogIndex(2))));
    }

    #[test]
    #[should_panic(expected = "lease id 0")]
    fn lease_zero_is_refused() {
        let mut metadata = Metadata::created(LogIndex(1));
        metadata.lease = Some(LeaseId(0));
        Stored::new(b"x", metadata);
    }
}
