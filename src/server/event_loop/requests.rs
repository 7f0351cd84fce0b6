//! Serving one request on an event loop: answered at once (stale reads, status, snapshots,
//! refusals), or registered in flight and submitted to the node without waiting (writes,
//! linearizable and lease reads), or handed to an admin thread (membership changes,
//! leadership transfers). Nothing here blocks beyond the node's brief locks.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{ProposeError, ReadError};
use crate::kv::{Command, KvError, Operation, ReadRequest};
use crate::protocol::{
    Consistency, ReadReply, RequestBody, RequestFrame, ResponseBody, ServerError,
    SnapshotRequested, StatusReply, WatchRequest,
};
use crate::types::NodeId;

use super::super::connection::{PendingKind, Request};
use super::super::leases::LeaseRequest;
use super::super::watch::WatchKey;
use super::super::{admin, Shared, REQUEST_TIMEOUT_MAX};
use super::EventLoop;

impl EventLoop {
    /// Serves or submits one request of connection `key`.
    pub(super) fn handle(&mut self, key: usize, frame: RequestFrame) {
        let shared = std::sync::Arc::clone(&self.shared);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(connection) = self.connections.get(key) {
            // Every request not yet answered is in flight, this one included.
            shared
                .requests_in_flight_max
                .fetch_max(connection.pending.len() as u64 + 1, Ordering::Relaxed);
        }
        let timeout = match frame.timeout_ms {
            0 => shared.options.request_timeout_default,
            millis => Duration::from_millis(millis).min(REQUEST_TIMEOUT_MAX),
        };
        let arrived = Instant::now();
        let deadline = arrived + timeout;
        let asked = Request {
            id: frame.request_id,
            operation: crate::metrics::request_operation(&frame.body),
            arrived,
        };
        match frame.body {
            RequestBody::Write(mut command) => {
                raise_lease_ttl(&shared, &mut command);
                match command.encode() {
                    Ok(bytes) => {
                        let tag = self.register(key, asked, deadline, PendingKind::Write);
                        self.writes.push((bytes, tag));
                    }
                    Err(error) => self.respond(key, asked, Err(ServerError::Invalid(error))),
                }
            }
            RequestBody::Read {
                request,
                consistency,
            } => {
                // This connection's earlier writes go first.
                self.flush_writes();
                if let Err(error) = request.validate() {
                    self.respond(key, asked, Err(ServerError::Invalid(error)));
                    return;
                }
                match consistency {
                    Consistency::Linearizable => {
                        let tag = self.register(key, asked, deadline, PendingKind::Read(request));
                        if let Err(error) = shared.node.submit_read(tag, &self.reads) {
                            self.fail(tag, read_error(&shared, error));
                        }
                    }
                    Consistency::Lease => {
                        let tag = self.register(key, asked, deadline, PendingKind::Read(request));
                        if let Err(error) = shared.node.submit_lease_read(tag, &self.reads) {
                            self.fail(tag, read_error(&shared, error));
                        }
                    }
                    Consistency::Stale => {
                        let result = read_stale(&shared, &request);
                        self.respond(key, asked, result);
                    }
                }
            }
            RequestBody::Status => {
                let status = status(&shared);
                self.respond(key, asked, Ok(ResponseBody::Status(status)));
            }
            RequestBody::TakeSnapshot => {
                let node = &shared.node;
                let previous = node.latest_snapshot().map(|snapshot| snapshot.meta.last);
                let applied = node.status().applied;
                node.request_snapshot();
                let requested = SnapshotRequested {
                    node: node.id(),
                    applied,
                    previous,
                };
                self.respond(key, asked, Ok(ResponseBody::SnapshotRequested(requested)));
            }
            RequestBody::SnapshotChunk { last, offset } => {
                let Some(connection) = self.connections.get_mut(key) else {
                    return;
                };
                let node = &shared.node;
                let result = connection
                    .snapshot_pin
                    .chunk(|| node.latest_snapshot(), last, offset)
                    .map(ResponseBody::SnapshotChunk);
                self.respond(key, asked, result);
            }
            RequestBody::Members => {
                let result = admin::members(&shared);
                self.respond(key, asked, result);
            }
            body @ (RequestBody::AddMember { .. }
            | RequestBody::PromoteMember { .. }
            | RequestBody::RemoveMember { .. }
            | RequestBody::TransferLeader { .. }) => {
                // Earlier writes of this connection go first.
                self.flush_writes();
                let tag = self.register(key, asked, deadline, PendingKind::Admin);
                if let Err(refusal) = admin::spawn(&shared, &self.admin, tag, deadline, body) {
                    self.fail(tag, refusal);
                }
            }
            RequestBody::LeaseKeepAlive { lease } => {
                self.lease_request(key, asked, deadline, LeaseRequest::KeepAlive(lease));
            }
            RequestBody::LeaseTimeToLive { lease, keys } => {
                let request = LeaseRequest::TimeToLive(lease, keys);
                self.lease_request(key, asked, deadline, request);
            }
            RequestBody::LeaseList => {
                self.lease_request(key, asked, deadline, LeaseRequest::List);
            }
            RequestBody::Watch(request) => {
                if let Err(error) = request.range.validate() {
                    self.respond(key, asked, Err(ServerError::Invalid(error)));
                    return;
                }
                if request.linearizable && request.start.is_none() {
                    // Start once everything committed before this request is applied here.
                    let tag = self.register(key, asked, deadline, PendingKind::Watch(request));
                    if let Err(error) = shared.node.submit_read(tag, &self.reads) {
                        self.fail(tag, read_error(&shared, error));
                    }
                    return;
                }
                let result = self.open_watch(key, asked.id, request);
                self.respond(key, asked, result);
            }
            RequestBody::WatchCancel { watch } => {
                let watch_key = WatchKey {
                    connection: key,
                    watch,
                };
                let canceled = ResponseBody::WatchCanceled {
                    watch,
                    reason: "canceled by the client".into(),
                };
                let existed = self.watches.cancel(
                    &mut self.connections,
                    watch_key,
                    Some(Ok(canceled.clone())),
                );
                let answer = if existed {
                    canceled
                } else {
                    ResponseBody::WatchCanceled {
                        watch,
                        reason: "no such watch on this connection".into(),
                    }
                };
                self.respond(key, asked, Ok(answer));
            }
            RequestBody::WatchProgress => {
                if let Some(connection) = self.connections.get(key) {
                    let watches = connection.watches.clone();
                    self.watches.request_progress(key, &watches);
                }
                self.respond(key, asked, Ok(ResponseBody::WatchProgressRequested));
            }
        }
    }

    /// Opens a watch on connection `key` with id `watch` (its request id).
    pub(super) fn open_watch(
        &mut self,
        key: usize,
        watch: u64,
        request: WatchRequest,
    ) -> Result<ResponseBody, ServerError> {
        let Some(connection) = self.connections.get_mut(key) else {
            return Err(ServerError::Unavailable {
                reason: "the connection closed".into(),
            });
        };
        if connection.draining {
            return Err(ServerError::Unavailable {
                reason: "the connection is closing".into(),
            });
        }
        self.watches
            .create(&self.shared.node, connection, key, watch, request)
    }
}

impl EventLoop {
    /// Lease requests are served by the leader's keeper after a read barrier: the barrier
    /// confirms leadership, and that every grant acknowledged before this request is applied
    /// (a new leader may not have applied it yet).
    fn lease_request(
        &mut self,
        key: usize,
        asked: Request,
        deadline: Instant,
        request: LeaseRequest,
    ) {
        let shared = std::sync::Arc::clone(&self.shared);
        let tag = self.register(key, asked, deadline, PendingKind::Lease(request));
        if let Err(error) = shared.node.submit_read(tag, &self.reads) {
            self.fail(tag, read_error(&shared, error));
        }
    }
}

/// Raises the TTL of a lease grant to the keeper's minimum (etcd's `minTTL`), so an election
/// cannot outlast a lease. A TTL of 0 is left for validation to refuse.
fn raise_lease_ttl(shared: &Shared, command: &mut Command) {
    let ttl_min = shared.leases.ttl_min_seconds();
    if let Some(ttl_seconds) = command.lease_grant_ttl() {
        if ttl_seconds >= 1 && ttl_seconds < ttl_min {
            if let [Operation::LeaseGrant { ttl_seconds }] = command.operations.as_mut_slice() {
                *ttl_seconds = ttl_min;
            }
        }
    }
}

fn read_stale(shared: &Shared, request: &ReadRequest) -> Result<ResponseBody, ServerError> {
    // A failed node's state may be arbitrarily old and will not catch up: refuse.
    if let Some(reason) = shared.node.failure() {
        return Err(ServerError::Unavailable {
            reason: format!("storage failed: {reason}"),
        });
    }
    let committed = shared.node.status().committed;
    let (applied, response) = shared.node.read_local(|kv| kv.read(request));
    let response = response.map_err(ServerError::Invalid)?;
    Ok(ResponseBody::Read(ReadReply {
        response,
        node: shared.node.id(),
        applied,
        behind: committed.0.saturating_sub(applied.0),
    }))
}

fn status(shared: &Shared) -> StatusReply {
    let status = shared.node.status();
    StatusReply {
        id: status.id,
        role: status.role,
        term: status.term,
        leader: status.leader,
        leader_client_address: status
            .leader
            .and_then(|leader| shared.client_address(leader)),
        committed: status.committed,
        applied: status.applied,
        last_index: status.last_index,
        client_address: shared.advertised.clone(),
        failed: status.failed,
        snapshot: shared
            .node
            .latest_snapshot()
            .map(|snapshot| snapshot.meta.last),
    }
}

pub(super) fn not_leader(shared: &Shared, leader_hint: Option<NodeId>) -> ServerError {
    ServerError::NotLeader {
        leader_id: leader_hint,
        leader_client_address: leader_hint.and_then(|leader| shared.client_address(leader)),
    }
}

/// Maps a refusal at submission: nothing was appended.
pub(super) fn submit_error(shared: &Shared, error: ProposeError) -> ServerError {
    match error {
        ProposeError::NotLeader { leader_hint } => not_leader(shared, leader_hint),
        ProposeError::Busy { reason } => ServerError::Busy {
            reason: reason.to_string(),
        },
        ProposeError::TooLarge { bytes, limit } => ServerError::Invalid(KvError::CommandTooLarge {
            bytes: bytes as usize,
            limit: limit as usize,
        }),
        ProposeError::Shutdown => ServerError::Unavailable {
            reason: "node is shutting down".into(),
        },
        ProposeError::Storage { reason } => ServerError::Unavailable {
            reason: format!("storage failed: {reason}"),
        },
        // Not expected at submission; never guess an outcome.
        other => ServerError::Indeterminate {
            reason: other.to_string(),
        },
    }
}

/// Maps a read failure.
pub(super) fn read_error(shared: &Shared, error: ReadError) -> ServerError {
    match error {
        ReadError::NotLeader { leader_hint } => not_leader(shared, leader_hint),
        ReadError::Timeout => ServerError::ReadTimeout,
        ReadError::Busy => ServerError::Busy {
            reason: "too many pending reads".into(),
        },
        ReadError::NoLease => ServerError::NoLease,
        ReadError::Shutdown => ServerError::Unavailable {
            reason: "node is shutting down".into(),
        },
    }
}
