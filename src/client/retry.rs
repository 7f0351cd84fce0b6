//! How one call reaches the cluster: attempts at one node at a time, each bounded by its own
//! timeout, redirects, backoff, and which node to try next.
//!
//! ```text
//!  call (deadline = now + request_timeout)
//!   └─ attempt at the cached leader, else the next endpoint (round robin, suspects skipped)
//!        connect   ≤ min(connect_timeout, attempt left)
//!        answer    ≤ attempt_timeout; the node itself is given 3/4 of it
//!        ├─ answer ─────────────► done, or: NotLeader(hint) → the hint at once;
//!        │                        NotLeader / Unavailable → another node after a backoff;
//!        │                        Busy / Indeterminate / … → the same node after a backoff
//!        ├─ connection broke ───► another node after a backoff
//!        └─ no answer in time ──► the node is unresponsive (frozen, partitioned but
//!                                 connected): close that connection, forget it as leader,
//!                                 suspect it for one attempt_timeout, and go on to another
//!                                 node at once
//!   … until the deadline: Indeterminate if a write attempt may have been applied
//! ```
//!
//! Every attempt sends the same body, hence the same session and sequence: however many
//! nodes a write reaches, it is applied at most once. A write is reported as
//! [`ClientError::Indeterminate`] only when the whole deadline is spent and an attempt may
//! have been applied.
//!
//! Membership changes and leadership transfers legitimately take long (a new voter catches
//! up first), so their single attempt may use the whole deadline instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::protocol::{Consistency, RequestBody, ResponseBody, ServerError};

use super::connection::{CallError, Connection};
use super::{Client, ClientError};

/// How long a client waits for a server's answer beyond the time it gave the server, for
/// calls not bounded by `attempt_timeout`.
const RESPONSE_GRACE: Duration = Duration::from_millis(500);

/// Redirects followed back to back before the client backs off (leaders in flux).
const REDIRECTS_BEFORE_BACKOFF: u32 = 3;

/// The shortest time a connection or a socket write is given (the OS refuses zero).
const IO_TIMEOUT_MIN: Duration = Duration::from_millis(1);

/// What `execute` learned besides the result: whether an attempt may have been applied
/// without us learning its outcome.
pub(super) struct Executed {
    pub(super) result: Result<ResponseBody, ClientError>,
    pub(super) ambiguous: bool,
}

/// One call in progress.
struct Call<'a> {
    /// What every attempt sends.
    body: &'a RequestBody,
    /// Whether `body` may change the cluster (then an unanswered attempt is ambiguous).
    write: bool,
    /// Whether each attempt is bounded by `attempt_timeout` ([`is_bounded`]).
    bounded: bool,
    /// When the whole call ends.
    deadline: Instant,
    /// Whether an attempt may have been applied without us learning its outcome.
    ambiguous: bool,
    /// The last failure, for the error at the deadline.
    last_error: String,
}

/// What one attempt at one node came to.
enum Step {
    /// An answer that ends the call (a success or a final refusal).
    Done(Result<ResponseBody, ClientError>),
    /// The node named another as leader: go there at once.
    Redirect(String),
    /// Try another node: after a backoff, unless this attempt already waited out its timeout.
    Elsewhere { waited: bool },
    /// Try the same node again after a backoff (busy, or the write's outcome still open).
    Again,
}

/// The part of an attempt's budget the node is given as its own deadline: a live node then
/// answers (at worst "indeterminate" or "read timed out") with a quarter of the budget to
/// spare, so only an unresponsive node lets the attempt run out.
pub(super) fn server_share(attempt: Duration) -> Duration {
    attempt - attempt / 4
}

/// Whether each attempt of `body` is bounded by `attempt_timeout`. Membership changes and
/// leadership transfers wait on the cluster (catch-up, an election) and get the deadline.
fn is_bounded(body: &RequestBody) -> bool {
    match body {
        RequestBody::Write(_)
        | RequestBody::Read { .. }
        | RequestBody::Status
        | RequestBody::Members
        | RequestBody::TakeSnapshot
        | RequestBody::SnapshotChunk { .. }
        | RequestBody::LeaseKeepAlive { .. }
        | RequestBody::LeaseTimeToLive { .. }
        | RequestBody::LeaseList
        | RequestBody::Watch(_)
        | RequestBody::WatchCancel { .. }
        | RequestBody::WatchProgress
        | RequestBody::PresentToken { .. } => true,
        // An authentication (a failed one is answered late on purpose) and an auth change
        // (the server hashes a password first) get the whole deadline.
        RequestBody::Authenticate { .. }
        | RequestBody::Auth(_)
        | RequestBody::AddMember { .. }
        | RequestBody::PromoteMember { .. }
        | RequestBody::RemoveMember { .. }
        | RequestBody::TransferLeader { .. } => false,
    }
}

impl Client {
    /// Sends `body` to the leader (or whichever node answers), following redirects and
    /// retrying until `deadline`; see the [module docs](self). The same `body` (hence the
    /// same session) is sent on every attempt.
    pub(super) fn execute(&self, body: &RequestBody, write: bool, deadline: Instant) -> Executed {
        let options = &self.inner.options;
        let mut call = Call {
            body,
            write,
            bounded: is_bounded(body),
            deadline,
            ambiguous: false,
            last_error: String::from("no attempt finished"),
        };
        let mut backoff = options.backoff_min;
        let mut redirects = 0;
        let mut target = self.leader().unwrap_or_else(|| self.next_endpoint());
        loop {
            let now = Instant::now();
            if now >= deadline {
                let reason = format!("deadline passed; last error: {}", call.last_error);
                let error = if call.ambiguous {
                    ClientError::Indeterminate { reason }
                } else if write {
                    ClientError::Unavailable { reason }
                } else {
                    ClientError::Timeout { reason }
                };
                return Executed {
                    result: Err(error),
                    ambiguous: call.ambiguous,
                };
            }
            let attempt_deadline = if call.bounded {
                (now + options.attempt_timeout).min(deadline)
            } else {
                deadline
            };
            match self.attempt(&mut call, &target, attempt_deadline) {
                Step::Done(result) => {
                    return Executed {
                        result,
                        ambiguous: call.ambiguous,
                    }
                }
                Step::Redirect(address) if self.is_suspect(&address) => {
                    // A node that has not noticed yet names the leader that stopped
                    // answering: look for the new one elsewhere.
                    self.forget_leader(&target);
                    target = self.next_endpoint();
                }
                Step::Redirect(address) => {
                    target = address;
                    redirects += 1;
                    if redirects <= REDIRECTS_BEFORE_BACKOFF {
                        continue;
                    }
                }
                Step::Elsewhere { waited } => {
                    self.forget_leader(&target);
                    target = self.next_endpoint();
                    if waited {
                        redirects = 0;
                        continue;
                    }
                }
                Step::Again => {}
            }
            redirects = 0;
            let jitter = rand::rng().random_range(0.5..1.0);
            let pause = backoff
                .mul_f64(jitter)
                .min(deadline.saturating_duration_since(Instant::now()));
            std::thread::sleep(pause);
            backoff = (backoff * 2).min(options.backoff_max);
        }
    }

    /// One attempt of the call at `target`, to be answered by `attempt_deadline`.
    fn attempt(&self, call: &mut Call<'_>, target: &str, attempt_deadline: Instant) -> Step {
        let connection = match self.connection(target, attempt_deadline) {
            Ok(connection) => connection,
            Err(error) => {
                call.last_error = format!("connecting to {target}: {error}");
                let timed_out = error.kind() == std::io::ErrorKind::TimedOut;
                if timed_out {
                    self.suspect(target);
                }
                return Step::Elsewhere { waited: timed_out };
            }
        };
        match self.ensure_authenticated(&connection, call.deadline) {
            super::auth::AuthOutcome::Ready => {}
            super::auth::AuthOutcome::Failed(error) => return Step::Done(Err(error)),
            super::auth::AuthOutcome::Again(reason) => {
                call.last_error = format!("{target}: {reason}");
                return Step::Again;
            }
            super::auth::AuthOutcome::ConnectionLost { waited, reason } => {
                call.last_error = format!("{target}: authenticating: {reason}");
                self.drop_connection(target, &connection);
                return Step::Elsewhere { waited };
            }
        }
        let now = Instant::now();
        let (server_timeout, wait_until) = if call.bounded {
            let budget = attempt_deadline.saturating_duration_since(now);
            (server_share(budget), attempt_deadline)
        } else {
            let budget = call.deadline.saturating_duration_since(now);
            (budget, call.deadline + RESPONSE_GRACE)
        };
        let frame = match connection.call(call.body, server_timeout, wait_until) {
            Ok(frame) => frame,
            Err(CallError::Failed { sent, reason }) => {
                call.ambiguous |= call.write && sent;
                call.last_error = format!("{target}: {reason}");
                self.drop_connection(target, &connection);
                return Step::Elsewhere { waited: false };
            }
            Err(CallError::Full) => {
                // Not sent: this client keeps the connection's limit of requests in flight
                // busy. Wait for room again.
                call.last_error = format!("{target}: too many requests in flight");
                return Step::Again;
            }
            Err(CallError::TimedOut) => {
                call.ambiguous |= call.write;
                let waited = wait_until.saturating_duration_since(now);
                call.last_error = format!("{target}: no answer within {waited:?}");
                if !call.bounded {
                    return Step::Again;
                }
                // The node does not answer even with a timeout of its own: it is frozen or
                // cut off. Never reuse this connection (a late answer on it is dropped with
                // it), and stay away from the node for a while.
                self.drop_connection(target, &connection);
                self.suspect(target);
                return Step::Elsewhere { waited: true };
            }
        };
        self.clear_suspicion(target);
        let error = match frame.result {
            Ok(response) => {
                let stale_read = matches!(
                    call.body,
                    RequestBody::Read {
                        consistency: Consistency::Stale,
                        ..
                    }
                );
                if !stale_read {
                    let mut leader = self.inner.leader.lock();
                    if leader.as_deref() != Some(target) {
                        *leader = Some(target.to_string());
                    }
                }
                if let ResponseBody::Written(crate::kv::Response::Rejected(
                    crate::kv::KvError::AuthRevisionChanged { .. },
                )) = &response
                {
                    // Applied nothing: the same write (same session and sequence) is sent
                    // again to be checked against the current auth state.
                    call.last_error = format!("{target}: the auth state changed; sending again");
                    return Step::Again;
                }
                return Step::Done(Ok(response));
            }
            Err(error) => error,
        };
        call.last_error = format!("{target}: {error}");
        match error {
            ServerError::NotLeader {
                leader_client_address: Some(address),
                ..
            } if address != target => Step::Redirect(address),
            ServerError::NotLeader { .. }
            | ServerError::Unavailable { .. }
            | ServerError::WatchCanceled { .. } => Step::Elsewhere { waited: false },
            ServerError::Compacted { compact_revision } => {
                Step::Done(Err(ClientError::Compacted { compact_revision }))
            }
            ServerError::Indeterminate { .. } => {
                call.ambiguous = true;
                Step::Again
            }
            ServerError::Busy { .. } | ServerError::Dropped | ServerError::ReadTimeout => {
                Step::Again
            }
            // The auth state changed between the check and the apply: nothing was applied;
            // the same request is checked anew.
            ServerError::Invalid(crate::kv::KvError::AuthRevisionChanged { .. }) => Step::Again,
            ServerError::Invalid(error) => Step::Done(Err(ClientError::Rejected(error))),
            // The connection's token expired or was invalidated: authenticate again.
            ServerError::Unauthenticated { .. } if self.inner.options.credentials.is_some() => {
                self.authentication_lost(&connection);
                Step::Again
            }
            error @ (ServerError::Unauthenticated { .. }
            | ServerError::AuthenticationFailed
            | ServerError::PermissionDenied { .. }) => Step::Done(Err(ClientError::Server(error))),
            ServerError::NoLease => Step::Done(Err(ClientError::NoLease)),
            // Answers to snapshot requests, which do not come here, and refusals of
            // membership changes and transfers, which are final.
            error @ (ServerError::NoSnapshot
            | ServerError::SnapshotMoved { .. }
            | ServerError::SnapshotOffset { .. }
            | ServerError::Refused { .. }
            | ServerError::TransferFailed { .. }) => Step::Done(Err(ClientError::Server(error))),
        }
    }

    /// The next endpoint in round-robin order, passing over suspected ones unless every
    /// endpoint is suspected.
    pub(super) fn next_endpoint(&self) -> String {
        let endpoints = &self.inner.endpoints;
        let mut candidate = String::new();
        for _ in 0..endpoints.len() {
            let index = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
            candidate = endpoints[index % endpoints.len()].clone();
            if !self.is_suspect(&candidate) {
                break;
            }
        }
        candidate
    }

    /// Forgets `address` as the leader, if it is the one cached.
    fn forget_leader(&self, address: &str) {
        let mut leader = self.inner.leader.lock();
        if leader.as_deref() == Some(address) {
            *leader = None;
        }
    }

    /// Marks `address` unresponsive for one `attempt_timeout`: long enough for a cluster
    /// whose leader froze to elect another, after which the node is tried again like any.
    pub(super) fn suspect(&self, address: &str) {
        let until = Instant::now() + self.inner.options.attempt_timeout;
        self.inner
            .suspects
            .lock()
            .insert(address.to_string(), until);
    }

    /// Whether `address` is suspected unresponsive now.
    fn is_suspect(&self, address: &str) -> bool {
        let mut suspects = self.inner.suspects.lock();
        match suspects.get(address) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                suspects.remove(address);
                false
            }
            None => false,
        }
    }

    fn clear_suspicion(&self, address: &str) {
        let mut suspects = self.inner.suspects.lock();
        if !suspects.is_empty() {
            suspects.remove(address);
        }
    }

    /// An open connection to `address`, opening one (by `deadline` at the latest, outside the
    /// map's lock, one thread at a time per address) if needed.
    pub(super) fn connection(
        &self,
        address: &str,
        deadline: Instant,
    ) -> std::io::Result<Arc<Connection>> {
        let open_connection = || {
            self.inner
                .connections
                .lock()
                .get(address)
                .filter(|connection| !connection.is_broken())
                .map(Arc::clone)
        };
        if let Some(connection) = open_connection() {
            return Ok(connection);
        }
        let gate = Arc::clone(
            self.inner
                .opening
                .lock()
                .entry(address.to_string())
                .or_default(),
        );
        let Some(_opening) = gate.try_lock_until(deadline) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("another thread is still connecting to {address}"),
            ));
        };
        // Another thread may have opened one while we waited.
        if let Some(connection) = open_connection() {
            return Ok(connection);
        }
        let options = &self.inner.options;
        let connect_timeout = options
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(IO_TIMEOUT_MIN);
        let write_timeout = options.attempt_timeout.max(IO_TIMEOUT_MIN);
        let opened = Arc::new(Connection::open(
            address,
            connect_timeout,
            write_timeout,
            options.tls.as_ref(),
        )?);
        let mut connections = self.inner.connections.lock();
        match connections.get(address) {
            Some(existing) if !existing.is_broken() => Ok(Arc::clone(existing)),
            _ => {
                connections.insert(address.to_string(), Arc::clone(&opened));
                Ok(opened)
            }
        }
    }

    /// Closes `connection` and forgets it, unless another caller already replaced it with a
    /// new connection to `address` (which is left alone).
    pub(super) fn drop_connection(&self, address: &str, connection: &Arc<Connection>) {
        let mut connections = self.inner.connections.lock();
        if connections
            .get(address)
            .is_some_and(|current| Arc::ptr_eq(current, connection))
        {
            connections.remove(address);
        }
        drop(connections);
        connection.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_node_is_given_less_than_the_attempt() {
        let attempt = Duration::from_secs(1);
        assert_eq!(server_share(attempt), Duration::from_millis(750));
        assert!(server_share(Duration::from_millis(1)) <= Duration::from_millis(1));
        assert_eq!(server_share(Duration::ZERO), Duration::ZERO);
    }
}
