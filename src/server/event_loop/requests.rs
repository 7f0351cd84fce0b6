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
use crate::types::{LogIndex, NodeId};

use super::super::auth::{self, Authorizer, VerifyJob};
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
        let auth_revision = match self.authorize(key, &frame.body) {
            Ok(revision) => revision,
            Err(refusal) => {
                self.respond(key, asked, Err(refusal));
                return;
            }
        };
        match frame.body {
            RequestBody::Write(mut command) => {
                raise_lease_ttl(&shared, &mut command);
                match command.encode() {
                    Ok(bytes) => {
                        // Once auth was ever configured, a write applies only if the auth
                        // state is still the one it was checked against.
                        let bytes = match auth_revision {
                            LogIndex(0) => bytes,
                            revision => crate::kv::auth::wrap_checked(revision, &bytes),
                        };
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
            RequestBody::Authenticate { user, password } => {
                self.authenticate(key, asked, user, password);
            }
            RequestBody::PresentToken { token } => {
                let result = self.present_token(key, token);
                self.respond(key, asked, result);
            }
            body @ (RequestBody::AddMember { .. }
            | RequestBody::PromoteMember { .. }
            | RequestBody::RemoveMember { .. }
            | RequestBody::TransferLeader { .. }
            | RequestBody::Auth(_)) => {
                // Earlier writes of this connection go first.
                self.flush_writes();
                let tag = self.register(key, asked, deadline, PendingKind::Admin);
                let spawned =
                    admin::spawn(&shared, &self.admin, tag, deadline, body, auth_revision);
                if let Err(refusal) = spawned {
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
    /// Checks that connection `key` may send `body`: nothing is checked while auth is
    /// disabled (but an auth change is never taken in a write), else the connection's
    /// identity (token, or client certificate) and its permissions.
    ///
    /// Returns the auth revision it checked against.
    fn authorize(&mut self, key: usize, body: &RequestBody) -> Result<LogIndex, ServerError> {
        if let RequestBody::Write(command) = body {
            if command.changes_auth() {
                return Err(ServerError::Invalid(KvError::Auth(
                    crate::kv::auth::AuthError::Invalid {
                        reason: "auth changes are made with auth requests".into(),
                    },
                )));
            }
        }
        let authorizer = self.auth.current().clone();
        let revision = authorizer.state().revision();
        if !authorizer.is_enabled() || auth::is_open(body) {
            return Ok(revision);
        }
        let Some(connection) = self.connections.get_mut(key) else {
            return Ok(revision);
        };
        connection.resolve_certificate_user();
        let identity = connection.auth.identity(authorizer.state())?;
        let node = &self.shared.node;
        let lease_keys = |lease| node.with_state_machine(|kv| kv.lease_keys(lease));
        check_request(&authorizer, &identity, body, lease_keys)?;
        Ok(revision)
    }

    /// Queues a password verification on the auth thread; the connection reads nothing more
    /// until it is answered (`EventLoop::authentication_answered`).
    fn authenticate(
        &mut self,
        key: usize,
        asked: Request,
        user: String,
        password: crate::protocol::auth::Password,
    ) {
        let state = self.auth.current().state().clone();
        if !state.is_enabled() {
            self.respond(key, asked, Err(auth_not_enabled()));
            return;
        }
        if password.0.len() > auth::PASSWORD_BYTES_MAX {
            self.respond(key, asked, Err(ServerError::AuthenticationFailed));
            return;
        }
        let deadline = asked.arrived + auth::AUTHENTICATE_DEADLINE;
        let tag = self.register(key, asked, deadline, PendingKind::Auth);
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        connection.auth.authenticating = true;
        let job = VerifyJob {
            tag,
            user,
            password: password.0,
            remote: connection.remote.clone(),
            failures: connection.auth.failures,
            state,
            answers: self.admin.clone(),
        };
        let submitted = self.shared.auth_worker.lock().submit(job);
        if let Err(refusal) = submitted {
            connection.auth.authenticating = false;
            self.fail(tag, refusal);
        }
    }

    /// The auth thread answered connection `key`'s authentication.
    pub(super) fn authentication_answered(
        &mut self,
        key: usize,
        result: &Result<ResponseBody, ServerError>,
    ) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        connection.auth.authenticating = false;
        match result {
            Ok(ResponseBody::Authenticated(reply)) => {
                connection.auth.token = Some(reply.token.clone());
                connection.auth.failures = 0;
            }
            Err(ServerError::AuthenticationFailed) => {
                connection.auth.token = None;
                connection.auth.failures = connection.auth.failures.saturating_add(1);
            }
            _ => {}
        }
    }

    /// Authenticates connection `key` with a token (cheap: an HMAC, on the loop).
    fn present_token(
        &mut self,
        key: usize,
        token: crate::protocol::auth::AuthToken,
    ) -> Result<ResponseBody, ServerError> {
        let state = self.auth.current().state().clone();
        if !state.is_enabled() {
            return Err(auth_not_enabled());
        }
        auth::verify_token(&state, &token)
            .map_err(|reason| ServerError::Unauthenticated { reason })?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let reply = crate::protocol::auth::Authenticated {
            user: token.user.clone(),
            ttl_ms: token.expires_unix_ms.saturating_sub(now_ms),
            token: token.clone(),
        };
        if let Some(connection) = self.connections.get_mut(key) {
            connection.auth.token = Some(token);
        }
        Ok(ResponseBody::Authenticated(reply))
    }

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

/// The refusal of an authentication while auth is disabled (nothing needs one).
fn auth_not_enabled() -> ServerError {
    ServerError::Refused {
        reason: "auth is not enabled on this cluster".into(),
    }
}

/// What `identity` needs for `body` (auth enabled): permissions on the keys it reads and
/// writes, the root role for snapshots, membership and auth administration, and being
/// authenticated for leases and sessions.
fn check_request(
    authorizer: &Authorizer,
    identity: &auth::Identity,
    body: &RequestBody,
    lease_keys: impl Fn(crate::kv::LeaseId) -> Option<Vec<Vec<u8>>>,
) -> Result<(), ServerError> {
    use crate::kv::auth::Permission;
    match body {
        RequestBody::Write(command) => authorizer.check_command(identity, command, lease_keys),
        RequestBody::Read { request, .. } => authorizer.check_read(identity, request),
        RequestBody::Status
        | RequestBody::Authenticate { .. }
        | RequestBody::PresentToken { .. } => Ok(()),
        RequestBody::TakeSnapshot | RequestBody::SnapshotChunk { .. } => {
            authorizer.check_root(identity, "snapshot")
        }
        RequestBody::Members
        | RequestBody::AddMember { .. }
        | RequestBody::PromoteMember { .. }
        | RequestBody::RemoveMember { .. }
        | RequestBody::TransferLeader { .. } => authorizer.check_root(identity, "membership"),
        RequestBody::LeaseKeepAlive { .. } | RequestBody::LeaseList => {
            authorizer.check_authenticated(identity)
        }
        RequestBody::LeaseTimeToLive { lease, keys } => {
            authorizer.check_authenticated(identity)?;
            if *keys {
                for key in lease_keys(*lease).unwrap_or_default() {
                    authorizer.check_key(identity, &key, Permission::Read)?;
                }
            }
            Ok(())
        }
        RequestBody::Auth(request) => authorizer.check_auth_request(identity, request),
        // A watch sees only what its user may read: the whole range, checked when it opens.
        RequestBody::Watch(request) => {
            authorizer.check_range(identity, &request.range, Permission::Read)
        }
        // They touch only this connection's watches, each checked when it opened.
        RequestBody::WatchCancel { .. } | RequestBody::WatchProgress => Ok(()),
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

/// Maps the failure of a blocking proposal (an admin thread's).
pub(in crate::server) fn propose_error(shared: &Shared, error: ProposeError) -> ServerError {
    match error {
        ProposeError::Dropped => ServerError::Dropped,
        other => submit_error(shared, other),
    }
}

/// Maps a read failure.
pub(in crate::server) fn read_error(shared: &Shared, error: ReadError) -> ServerError {
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
