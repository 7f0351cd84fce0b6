//! Snapshots in the core (Raft §7): compacting the log behind a local snapshot, streaming a
//! snapshot to a follower that needs compacted entries, and receiving one.
//!
//! The leader streams from an immutable, shared copy of its latest snapshot, one chunk at a
//! time: each chunk is acknowledged with the follower's resume point, and a heartbeat answer
//! without progress since the last one re-sends the current chunk (a lost chunk). The follower
//! keeps a partial snapshot only while chunks arrive in order for the same snapshot; a
//! different snapshot or offset 0 starts over. The whole snapshot is checked against its
//! CRC-32 before it is installed, and the acknowledgement that lets the leader resume normal
//! replication leaves only after the installed snapshot is durable.

use std::fmt;
use std::sync::Arc;

use crate::limits;
use crate::raft::message::{AppendResponse, MessageBody};
use crate::raft::progress::ProgressState;
use crate::raft::{Raft, Role, StepError};
use crate::types::{Entry, EntryId, LogIndex, NodeId, SnapshotMeta};

/// A snapshot's metadata and bytes, shared without copying between the runtime, the core and
/// transfers in progress.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotData {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The state machine's bytes.
    pub data: Arc<Vec<u8>>,
    /// CRC-32 of `data`.
    pub checksum: u32,
}

impl SnapshotData {
    /// Wraps `data`, computing its checksum.
    pub fn new(meta: SnapshotMeta, data: Arc<Vec<u8>>) -> SnapshotData {
        let checksum = crc32fast::hash(&data);
        SnapshotData {
            meta,
            data,
            checksum,
        }
    }
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotData")
            .field("meta", &self.meta)
            .field("bytes", &self.data.len())
            .field("checksum", &format_args!("{:#010x}", self.checksum))
            .finish()
    }
}

/// A snapshot being streamed to one follower.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// The snapshot (pinned: a newer local snapshot does not disturb the transfer).
    pub snapshot: SnapshotData,
    /// The follower holds the bytes before this offset.
    pub acknowledged: u64,
    /// `acknowledged` as of the previous heartbeat answer, to detect a lost chunk.
    pub acknowledged_at_heartbeat: u64,
}

/// A snapshot being received.
#[derive(Debug)]
pub(super) struct IncomingSnapshot {
    meta: SnapshotMeta,
    total: u64,
    checksum: u32,
    buffer: Vec<u8>,
}

/// A snapshot received and installed by the core, for the runtime to persist (save, then
/// reset or compact the stored log) and to restore into the state machine.
#[derive(Clone, Debug)]
pub struct InstalledSnapshot {
    /// The snapshot.
    pub snapshot: SnapshotData,
    /// Whether the stored log after the snapshot is kept (it matched); otherwise the stored log
    /// must be discarded entirely.
    pub keep_suffix: bool,
}

/// What [`Raft::compact`] dropped: log entries and a superseded snapshot, returned rather than
/// freed so that a runtime can free them without holding its lock on the core (a snapshot
/// interval of entries takes milliseconds to free). Dropping it frees them.
#[derive(Debug, Default)]
pub struct Compacted {
    /// The log entries removed.
    pub entries: Vec<Entry>,
    /// The snapshot replaced (or the one given, when it was not newer).
    pub snapshot: Option<SnapshotData>,
}

impl Raft {
    /// The latest local snapshot, if any.
    pub fn snapshot(&self) -> Option<&SnapshotData> {
        self.snapshot.as_ref()
    }

    /// Records a durable local snapshot (taken by the state machine at `snapshot.meta.last`)
    /// and drops log entries through `compact_through` (at most the snapshot's index; the
    /// runtime keeps a trailing margin for followers that are slightly behind). Also used at
    /// startup to hand the core the snapshot it recovered.
    ///
    /// Returns what it dropped (the entries and the snapshot replaced) for the runtime to free
    /// outside its lock.
    pub fn compact(&mut self, snapshot: SnapshotData, compact_through: LogIndex) -> Compacted {
        let through = compact_through.min(snapshot.meta.last.index);
        let newer = self
            .snapshot
            .as_ref()
            .is_none_or(|current| current.meta.last.index < snapshot.meta.last.index);
        let replaced = if newer {
            self.snapshot.replace(snapshot)
        } else {
            Some(snapshot)
        };
        let entries = match self.log.compact(through) {
            Some(entries) => {
                self.configs.compact(through);
                entries
            }
            None => Vec::new(),
        };
        Compacted {
            entries,
            snapshot: replaced,
        }
    }

    /// Starts streaming the latest snapshot to `to`, which needs entries that were compacted.
    /// Returns false when there is no snapshot to send.
    pub(super) fn start_snapshot_transfer(&mut self, to: NodeId) -> bool {
        let Some(snapshot) = self.snapshot.clone() else {
            return false;
        };
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        let Some(progress) = leader.progress.get_mut(&to) else {
            return false;
        };
        progress.become_snapshot(Transfer {
            snapshot,
            acknowledged: 0,
            acknowledged_at_heartbeat: 0,
        });
        self.send_snapshot_chunk(to);
        true
    }

    /// Sends the chunk at the follower's resume point.
    pub(super) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let term = self.term;
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let Some(transfer) = leader
            .progress
            .get(&to)
            .and_then(|progress| progress.transfer.as_ref())
        else {
            return;
        };
        let snapshot = &transfer.snapshot;
        let total = snapshot.data.len() as u64;
        let offset = transfer.acknowledged.min(total);
        let end = (offset + limits::SNAPSHOT_CHUNK_BYTES).min(total);
        let body = MessageBody::InstallSnapshot {
            meta: snapshot.meta.clone(),
            offset,
            total,
            checksum: snapshot.checksum,
            data: snapshot.data[offset as usize..end as usize].to_vec(),
        };
        self.send(to, term, body);
    }

    /// The follower acknowledged the chunks before `next_offset` of the snapshot ending at
    /// `last`.
    pub(super) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        last: EntryId,
        next_offset: u64,
    ) {
        let now = self.ticks;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        progress.mark_heard(now);
        let Some(transfer) = progress.transfer.as_mut() else {
            return;
        };
        if transfer.snapshot.meta.last != last {
            return;
        }
        let total = transfer.snapshot.data.len() as u64;
        if next_offset > total || next_offset == transfer.acknowledged {
            return; // a duplicate answer
        }
        if next_offset < transfer.acknowledged {
            // The follower lost its partial copy or found it corrupt: start over, but only at
            // the next heartbeat answer, so that a transfer that keeps failing cannot spin.
            transfer.acknowledged = next_offset;
            transfer.acknowledged_at_heartbeat = next_offset;
            return;
        }
        transfer.acknowledged = next_offset;
        if next_offset < total {
            self.send_snapshot_chunk(from);
        }
    }

    /// A heartbeat answer from a follower receiving a snapshot: re-send the current chunk if
    /// nothing was acknowledged since the previous heartbeat (the chunk or its answer was lost).
    pub(super) fn retry_snapshot_chunk(&mut self, from: NodeId) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(transfer) = leader
            .progress
            .get_mut(&from)
            .and_then(|progress| progress.transfer.as_mut())
        else {
            return;
        };
        let stalled = transfer.acknowledged == transfer.acknowledged_at_heartbeat;
        transfer.acknowledged_at_heartbeat = transfer.acknowledged;
        if stalled {
            self.send_snapshot_chunk(from);
        }
    }

    /// A chunk of a snapshot from the leader of our term.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        total: u64,
        checksum: u32,
        data: Vec<u8>,
    ) -> Result<(), StepError> {
        let malformed = |reason| Err(StepError::Malformed { from, reason });
        if total > limits::SNAPSHOT_BYTES_MAX {
            return malformed("snapshot larger than the limit");
        }
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > total)
        {
            return malformed("snapshot chunk beyond the snapshot's length");
        }
        let committed = self.log.committed();
        if meta.last.index <= committed {
            // We already have everything it covers: tell the leader where we are.
            self.incoming = None;
            let matched = EntryId::new(self.log.term(committed).unwrap_or_default(), committed);
            let body = MessageBody::AppendEntriesResponse(AppendResponse::Success { matched });
            self.send_after_persist(from, body);
            return Ok(());
        }
        let same = self.incoming.as_ref().is_some_and(|incoming| {
            incoming.meta == meta && incoming.total == total && incoming.checksum == checksum
        });
        if offset == 0 && !same {
            self.incoming = Some(IncomingSnapshot {
                meta: meta.clone(),
                total,
                checksum,
                // Grows with the chunks that arrive, never with a claimed length.
                buffer: Vec::new(),
            });
        } else if !same {
            // A chunk of a snapshot we are not receiving: ask for the start.
            self.reply_snapshot_progress(from, meta.last, 0);
            return Ok(());
        }
        let Some(incoming) = self.incoming.as_mut() else {
            return Ok(());
        };
        if offset == incoming.buffer.len() as u64 {
            incoming.buffer.extend_from_slice(&data);
        }
        let received = incoming.buffer.len() as u64;
        if received < total {
            self.reply_snapshot_progress(from, meta.last, received);
            return Ok(());
        }
        let Some(incoming) = self.incoming.take() else {
            return Ok(());
        };
        if crc32fast::hash(&incoming.buffer) != checksum {
            self.reply_snapshot_progress(from, meta.last, 0);
            return malformed("snapshot checksum mismatch");
        }
        self.install_snapshot(from, SnapshotData::new(meta, Arc::new(incoming.buffer)));
        Ok(())
    }

    fn reply_snapshot_progress(&mut self, to: NodeId, last: EntryId, next_offset: u64) {
        let body = MessageBody::InstallSnapshotResponse { last, next_offset };
        self.send(to, self.term, body);
    }

    /// Installs a complete, verified snapshot from the leader.
    fn install_snapshot(&mut self, from: NodeId, snapshot: SnapshotData) {
        let last = snapshot.meta.last;
        let keep_suffix = self.log.restore(last);
        self.configs
            .restore(snapshot.meta.membership.clone(), &self.log);
        self.membership_changed();
        self.snapshot = Some(snapshot.clone());
        self.installed_snapshot = Some(InstalledSnapshot {
            snapshot,
            keep_suffix,
        });
        // Acknowledged only once the snapshot is durable.
        let body = MessageBody::AppendEntriesResponse(AppendResponse::Success { matched: last });
        self.send_after_persist(from, body);
    }
}

impl crate::raft::progress::Progress {
    /// Pauses replication while `transfer` streams a snapshot.
    pub fn become_snapshot(&mut self, transfer: Transfer) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflights.reset();
        self.transfer = Some(transfer);
    }
}
