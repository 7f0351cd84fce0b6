//! Snapshots from the client: ask a node to take one, wait until it is durable, and download
//! the latest one in chunks (the backup of `kvctl snapshot save`).
//!
//! Each call goes to one named node — snapshots are per node — with one attempt per request;
//! the caller picks the node (usually the leader, [`Client::leader_endpoint`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::{SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES};
use crate::protocol::{
    RequestBody, ResponseBody, ServerError, SnapshotChunkReply, SnapshotRequested,
};
use crate::raft::{RoleKind, SnapshotData};
use crate::types::EntryId;

use super::{protocol, Client, ClientError};

/// How often a wait polls the node's status.
const SNAPSHOT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long a wait lets a request go unanswered by a new snapshot before asking again (the
/// node takes a requested snapshot after its next apply, and one may already be in flight).
const SNAPSHOT_REQUEST_REPEAT: Duration = Duration::from_secs(1);

/// Bytes reserved up front for a download; a larger snapshot grows the buffer as it arrives.
const DOWNLOAD_RESERVE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Downloads started over after the snapshot moved on, before giving up.
const SNAPSHOT_DOWNLOAD_RESTARTS_MAX: u32 = 5;

impl Client {
    /// The client address of the leader, as the endpoints given to [`Client::connect`] see
    /// it; polls until `deadline` while there is none.
    pub fn leader_endpoint(&self, deadline: Instant) -> Result<String, ClientError> {
        let mut last_error = String::from("no endpoint answered");
        loop {
            for (endpoint, status) in self.cluster_status() {
                match status {
                    Ok(status) if status.role == RoleKind::Leader => return Ok(endpoint),
                    Ok(status) => {
                        if let Some(address) = status.leader_client_address {
                            if self
                                .status(&address)
                                .is_ok_and(|leader| leader.role == RoleKind::Leader)
                            {
                                return Ok(address);
                            }
                        }
                        last_error = format!("{endpoint}: no leader known");
                    }
                    Err(error) => last_error = error.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable {
                    reason: format!("no leader found: {last_error}"),
                });
            }
            std::thread::sleep(SNAPSHOT_POLL_INTERVAL);
        }
    }

    /// Asks the node at `endpoint` to take a snapshot now (one attempt). The snapshot is
    /// taken in the background; see [`Client::take_snapshot_and_wait`].
    pub fn take_snapshot(&self, endpoint: &str) -> Result<SnapshotRequested, ClientError> {
        match self.call_one(
            endpoint,
            &RequestBody::TakeSnapshot,
            self.inner.options.request_timeout,
        )? {
            ResponseBody::SnapshotRequested(requested) => Ok(requested),
            other => Err(protocol(&format!(
                "unexpected answer to a snapshot request: {other:?}"
            ))),
        }
    }

    /// Asks the node at `endpoint` to take a snapshot and waits until a durable snapshot
    /// covers everything it had applied when asked. Returns what that snapshot covers.
    pub fn take_snapshot_and_wait(
        &self,
        endpoint: &str,
        deadline: Instant,
    ) -> Result<EntryId, ClientError> {
        let requested = self.take_snapshot(endpoint)?;
        let mut asked_at = Instant::now();
        loop {
            let status = self.status(endpoint)?;
            if let Some(snapshot) = status.snapshot {
                if snapshot.index >= requested.applied {
                    return Ok(snapshot);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    reason: format!(
                        "{endpoint}: no snapshot covering index {} yet (latest {:?})",
                        requested.applied, status.snapshot
                    ),
                });
            }
            if now.duration_since(asked_at) >= SNAPSHOT_REQUEST_REPEAT {
                self.take_snapshot(endpoint)?;
                asked_at = now;
            }
            std::thread::sleep(SNAPSHOT_POLL_INTERVAL.min(deadline - now));
        }
    }

    /// One chunk of the latest snapshot of the node at `endpoint` (one attempt); see
    /// [`RequestBody::SnapshotChunk`].
    pub fn snapshot_chunk(
        &self,
        endpoint: &str,
        last: Option<EntryId>,
        offset: u64,
    ) -> Result<SnapshotChunkReply, ClientError> {
        match self.call_one(
            endpoint,
            &RequestBody::SnapshotChunk { last, offset },
            self.inner.options.request_timeout,
        )? {
            ResponseBody::SnapshotChunk(chunk) => Ok(chunk),
            other => Err(protocol(&format!(
                "unexpected answer to a snapshot chunk request: {other:?}"
            ))),
        }
    }

    /// Downloads the latest snapshot of the node at `endpoint` in chunks and verifies its
    /// checksum. Starts over (a few times) when the node moved on to a newer snapshot
    /// mid-download. `ServerError::NoSnapshot` means the node has none yet.
    pub fn download_snapshot(&self, endpoint: &str) -> Result<SnapshotData, ClientError> {
        self.download_snapshot_with_progress(endpoint, |_, _| {})
    }

    /// [`download_snapshot`](Client::download_snapshot), calling `progress(bytes, total)` after
    /// each chunk (for a progress line on a large store; it restarts from 0 if the download
    /// starts over).
    pub fn download_snapshot_with_progress(
        &self,
        endpoint: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<SnapshotData, ClientError> {
        let mut restarts = 0;
        loop {
            match self.download_once(endpoint, &mut progress) {
                Err(ClientError::Server(ServerError::SnapshotMoved { .. }))
                    if restarts < SNAPSHOT_DOWNLOAD_RESTARTS_MAX =>
                {
                    restarts += 1;
                }
                other => return other,
            }
        }
    }

    fn download_once(
        &self,
        endpoint: &str,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<SnapshotData, ClientError> {
        let first = self.snapshot_chunk(endpoint, None, 0)?;
        if first.total > SNAPSHOT_BYTES_MAX {
            return Err(protocol(&format!(
                "a snapshot of {} bytes is over the limit of {SNAPSHOT_BYTES_MAX}",
                first.total
            )));
        }
        let last = first.meta.last;
        // Grows as chunks arrive: a size announced by the server is not trusted with memory.
        let mut data = Vec::with_capacity(first.total.min(DOWNLOAD_RESERVE_BYTES_MAX) as usize);
        let mut chunk = first.clone();
        loop {
            let fits = chunk.offset == data.len() as u64
                && chunk.meta == first.meta
                && chunk.total == first.total
                && chunk.checksum == first.checksum
                && chunk.data.len() as u64 <= SNAPSHOT_CHUNK_BYTES
                && data.len() as u64 + chunk.data.len() as u64 <= first.total
                && (!chunk.data.is_empty() || first.total == 0);
            if !fits {
                return Err(protocol(&format!(
                    "snapshot chunk {chunk:?} does not continue {first:?} at offset {}",
                    data.len()
                )));
            }
            data.extend_from_slice(&chunk.data);
            progress(data.len() as u64, first.total);
            if data.len() as u64 == first.total {
                break;
            }
            chunk = self.snapshot_chunk(endpoint, Some(last), data.len() as u64)?;
        }
        let computed = crc32fast::hash(&data);
        if computed != first.checksum {
            return Err(protocol(&format!(
                "snapshot {last} checksum mismatch: announced {:#010x}, computed {computed:#010x}",
                first.checksum
            )));
        }
        Ok(SnapshotData {
            meta: first.meta,
            data: Arc::new(data),
            checksum: computed,
        })
    }
}
