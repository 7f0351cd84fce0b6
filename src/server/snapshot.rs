//! The operator's snapshot requests: take a snapshot now, and download the latest one in
//! chunks for a backup (`kvctl snapshot`, `kvctl snapshot save`).
//!
//! A download pins the snapshot it started on, per connection: the node's [`SnapshotData`] is
//! immutable and shared (an `Arc`), so later chunks come from the same bytes even when the
//! node takes a newer snapshot meanwhile. Only a download that asks for a snapshot its
//! connection has not pinned (a new connection after a reconnect, say) and that is no longer
//! the node's latest is refused with [`ServerError::SnapshotMoved`]; the client starts over.
//!
//! ```text
//! client ── SnapshotChunk { last: None,      offset: 0 }       ──► pin latest (42@3), bytes 0..1 MiB
//! client ── SnapshotChunk { last: Some(42@3), offset: 1 MiB }  ──► from the pin, even if 50@3 is newer
//! client ── ...                                                ──► the last chunk releases the pin
//! ```

use crate::limits::SNAPSHOT_CHUNK_BYTES;
use crate::raft::SnapshotData;
use crate::types::EntryId;

use crate::protocol::{ServerError, SnapshotChunkReply};

/// The snapshot one connection is downloading.
#[derive(Default)]
pub(super) struct SnapshotPin {
    pinned: Option<SnapshotData>,
}

impl SnapshotPin {
    /// Serves the chunk of snapshot `last` (or the latest, pinning it) starting at `offset`.
    /// `latest` reads the node's latest snapshot; it is called only when the pin does not
    /// answer.
    pub(super) fn chunk(
        &mut self,
        latest: impl FnOnce() -> Option<SnapshotData>,
        last: Option<EntryId>,
        offset: u64,
    ) -> Result<SnapshotChunkReply, ServerError> {
        let snapshot = match last {
            None => latest().ok_or(ServerError::NoSnapshot)?,
            Some(requested) => match &self.pinned {
                Some(pinned) if pinned.meta.last == requested => pinned.clone(),
                _ => match latest() {
                    Some(current) if current.meta.last == requested => current,
                    current => {
                        return Err(ServerError::SnapshotMoved {
                            requested,
                            current: current.map(|snapshot| snapshot.meta.last),
                        })
                    }
                },
            },
        };
        let total = snapshot.data.len() as u64;
        if offset > total {
            return Err(ServerError::SnapshotOffset { offset, total });
        }
        let end = total.min(offset + SNAPSHOT_CHUNK_BYTES);
        let data = snapshot.data[offset as usize..end as usize].to_vec();
        let reply = SnapshotChunkReply {
            meta: snapshot.meta.clone(),
            total,
            checksum: snapshot.checksum,
            offset,
            data,
        };
        // The last chunk ends the download: give the memory back. A client that asks again
        // gets it from the node while it is still the latest.
        self.pinned = (end < total).then_some(snapshot);
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::types::{LogIndex, Membership, NodeId, SnapshotMeta, Term};

    fn snapshot(index: u64, bytes: usize) -> SnapshotData {
        let data: Vec<u8> = (0..bytes)
            .map(|byte| (byte * 7 + index as usize) as u8)
            .collect();
        SnapshotData::new(
            SnapshotMeta {
                last: EntryId::new(Term(2), LogIndex(index)),
                membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
            },
            Arc::new(data),
        )
    }

    /// Downloads through `pin`, with `latest` answering the node's latest snapshot.
    fn download(pin: &mut SnapshotPin, latest: &dyn Fn() -> Option<SnapshotData>) -> Vec<u8> {
        let first = pin.chunk(latest, None, 0).unwrap();
        let mut bytes = first.data.clone();
        while (bytes.len() as u64) < first.total {
            let chunk = pin
                .chunk(latest, Some(first.meta.last), bytes.len() as u64)
                .unwrap();
            assert_eq!(chunk.offset, bytes.len() as u64);
            assert_eq!(chunk.checksum, first.checksum);
            assert!(chunk.data.len() as u64 <= SNAPSHOT_CHUNK_BYTES);
            bytes.extend_from_slice(&chunk.data);
        }
        bytes
    }

    #[test]
    fn chunks_reassemble_the_snapshot_and_match_its_checksum() {
        let size = (2 * SNAPSHOT_CHUNK_BYTES + 123) as usize;
        let latest = snapshot(10, size);
        let mut pin = SnapshotPin::default();
        let bytes = download(&mut pin, &|| Some(latest.clone()));
        assert_eq!(bytes, *latest.data);
        assert_eq!(crc32fast::hash(&bytes), latest.checksum);
        assert!(pin.pinned.is_none(), "the last chunk releases the pin");
    }

    #[test]
    fn an_empty_snapshot_is_one_empty_chunk() {
        let latest = snapshot(4, 0);
        let mut pin = SnapshotPin::default();
        let chunk = pin.chunk(|| Some(latest.clone()), None, 0).unwrap();
        assert_eq!((chunk.total, chunk.data.len()), (0, 0));
    }

    #[test]
    fn the_pinned_snapshot_is_served_after_the_node_moves_on() {
        let old = snapshot(10, (SNAPSHOT_CHUNK_BYTES + 5) as usize);
        let new = snapshot(20, 100);
        let mut pin = SnapshotPin::default();
        let first = pin.chunk(|| Some(old.clone()), None, 0).unwrap();
        let rest = pin
            .chunk(
                || Some(new.clone()),
                Some(first.meta.last),
                first.data.len() as u64,
            )
            .unwrap();
        assert_eq!(rest.meta.last, old.meta.last);
        assert_eq!(rest.data, old.data[first.data.len()..]);
    }

    #[test]
    fn a_snapshot_neither_pinned_nor_latest_is_refused_as_moved() {
        let old = snapshot(10, 100);
        let new = snapshot(20, 100);
        let mut pin = SnapshotPin::default();
        let error = pin
            .chunk(|| Some(new.clone()), Some(old.meta.last), 50)
            .unwrap_err();
        assert_eq!(
            error,
            ServerError::SnapshotMoved {
                requested: old.meta.last,
                current: Some(new.meta.last),
            }
        );
        assert!(error.to_string().contains("restart the download"));
    }

    #[test]
    fn no_snapshot_and_bad_offsets_are_errors() {
        let mut pin = SnapshotPin::default();
        assert_eq!(
            pin.chunk(|| None, None, 0).unwrap_err(),
            ServerError::NoSnapshot
        );
        let latest = snapshot(3, 10);
        assert_eq!(
            pin.chunk(|| Some(latest.clone()), None, 11).unwrap_err(),
            ServerError::SnapshotOffset {
                offset: 11,
                total: 10
            }
        );
        // An offset far past any size must not overflow or panic.
        assert!(pin.chunk(|| Some(latest.clone()), None, u64::MAX).is_err());
    }
}
