//! The blocking `Client`: leader discovery, redirects, retries with backoff, and
//! exactly-once writes.
//!
//! # Exactly-once writes
//!
//! Every write carries a session `(client_id, sequence)`. The client registers a session
//! through the log before its first write ([`Command::register_session`]; the cluster
//! answers with the `client_id`, Raft thesis §6.3), and `sequence` starts at 1 and grows by
//! one per write. A write is retried — after `NotLeader`, a broken connection, a busy or
//! failing node — **with the same session**, so the cluster applies it once however many
//! attempts reach it (a duplicate gets the cached response). When an attempt may have
//! reached the cluster and no later attempt learns the outcome before the deadline, the call
//! returns [`ClientError::Indeterminate`]: never a guessed success or failure.
//!
//! Each attempt at one node is bounded by [`ClientOptions::attempt_timeout`]: a node that
//! does not answer in time (a frozen process still accepts connections) is left for another
//! with the same session, so a write resumes soon after its leader freezes, and the whole
//! `request_timeout` is spent only when no node can serve it.
//!
//! The cluster keeps a bounded number of sessions and evicts the least recently used. A
//! write of an evicted session is refused (`SessionExpired`), never applied: if no earlier
//! attempt of that write may have been applied, the client registers a new session and
//! sends it again as a new write; otherwise an attempt may have been applied before the
//! eviction, the outcome cannot be learned any more, and the write is
//! [`ClientError::Indeterminate`]. Either way later writes use a fresh session.
//!
//! A `Client` is cheap to clone and may be used from many threads at once: clones share
//! connections, one per node, on which the calls of all threads are pipelined (many requests in
//! flight, answered in any order; the caller that finds nobody writing sends what the others queued
//! in one write, so the server proposes their writes as one batch — see `connection.rs`). Each
//! write in flight uses a session of its own from a pool, because the store only accepts a client's
//! sequences in order. Sessions are registered lazily, when a write finds the pool empty.
//!
//! ```no_run
//! use keyval::client::{Client, ClientOptions};
//!
//! let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
//! client.put(b"greeting".to_vec(), b"hello".to_vec())?;
//! let value = client.get(b"greeting".to_vec())?.map(|versioned| versioned.value);
//! assert_eq!(value.as_deref(), Some(&b"hello"[..]));
//! # Ok::<(), keyval::client::ClientError>(())
//! ```

mod admin;
mod auth;
mod connection;
mod lease;
mod retry;
mod snapshot;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::kv::{
    Command, Expect, KeyRange, KvError, Metadata, Operation, ReadRequest, ReadResponse, Response,
    ScanPage, Txn, TxnResponse, Versioned,
};
use crate::protocol::{
    Consistency, ReadReply, RequestBody, ResponseBody, ServerError, StatusReply,
};
use crate::types::{LogIndex, NodeId};

pub use auth::Credentials;
use connection::{CallError, Connection};
pub use lease::{LeaseGrant, LeaseKeeper, LeaseKeeperState};
pub use watch::{Watch, WatchOptions, WatchResponse, WATCH_SILENCE_TIMEOUT_DEFAULT};

/// How a [`Client`] behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one call may take, retries included (default 5 s).
    pub request_timeout: Duration,
    /// How long one attempt — one request to one node — may go unanswered before the client
    /// gives up on that node: it closes the connection, forgets the node as leader, passes
    /// over it for as long again, and sends the same request (same session and sequence) to
    /// another node. Default 1 s.
    ///
    /// A node is given 3/4 of it as its own deadline, so a live node answers (if only with
    /// "outcome unknown") before the client gives up, and only an unresponsive one — a
    /// frozen process, whose kernel still accepts connections, or a node cut off from the
    /// client's answers — runs it out. Keep it well above the cluster's election timeout
    /// (150–300 ms by default): by the time a frozen leader is given up, its followers have
    /// noticed and usually elected another, so the next node answers or names the new
    /// leader rather than the frozen one. Keep it above the commit latency of a healthy but
    /// busy leader too; a large snapshot can hold acknowledgements back for about a second,
    /// which costs a redundant retry (never a wrong answer). With the default, a client
    /// resumes about 1–1.5 s after its leader freezes. Membership changes and leadership
    /// transfers are not bounded by it: they may use the whole `request_timeout`.
    pub attempt_timeout: Duration,
    /// How long opening one connection may take, at most the attempt's time left (default
    /// 1 s).
    pub connect_timeout: Duration,
    /// First retry delay; it doubles, with jitter, up to `backoff_max` (default 10 ms).
    pub backoff_min: Duration,
    /// Largest retry delay (default 500 ms).
    pub backoff_max: Duration,
    /// Consistency of [`Client::get`] and [`Client::scan`] (default linearizable).
    pub read_consistency: Consistency,
    /// TLS to every node (`None`: plaintext, the default): the CA the nodes' certificates
    /// chain to, and the client's own certificate for nodes that require one. A node's
    /// certificate must name the host of its endpoint (a DNS name or IP address).
    pub tls: Option<crate::tls::ClientTls>,
    /// A user and password to authenticate every connection with, on a cluster with auth
    /// enabled (`None`, the default: no authentication, or the TLS client certificate's
    /// name). See `client/auth.rs`.
    pub credentials: Option<Credentials>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            read_consistency: Consistency::Linearizable,
            tls: None,
            credentials: None,
        }
    }
}

/// A read's answer with where and how fresh it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult<T> {
    /// The data.
    pub value: T,
    /// The node that served it.
    pub node: NodeId,
    /// The index that node had applied.
    pub applied: LogIndex,
    /// How many committed entries that node had not applied yet (0 unless stale).
    pub behind: u64,
}

/// The outcome of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The condition held and the key was written; its metadata now (`None`: deleted).
    Swapped {
        /// The key's metadata after the write.
        current: Option<Metadata>,
    },
    /// The condition did not hold; nothing was written. The key as it is.
    Failed {
        /// The key's value and metadata, if it exists.
        current: Option<Versioned>,
    },
}

/// An exactly-once write session, registered with the cluster: one write in flight at a
/// time.
#[derive(Clone, Copy, Debug)]
struct Session {
    client_id: u64,
    next_sequence: u64,
}

struct Inner {
    endpoints: Vec<String>,
    options: ClientOptions,
    /// The address that last answered as leader.
    leader: Mutex<Option<String>>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    /// One gate per address, held while a connection to it is being opened, so that the
    /// threads finding none at once (the first calls, a new leader) open one, not one each.
    opening: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Addresses whose last attempt went unanswered, and until when they are passed over.
    suspects: Mutex<HashMap<String, Instant>>,
    /// Sessions not in use, each ready for its next sequence.
    sessions: Mutex<Vec<Session>>,
    /// The token of the latest authentication, presented by new connections.
    token: Mutex<Option<crate::protocol::auth::AuthToken>>,
    next_endpoint: AtomicUsize,
}

/// A blocking client of a keyval cluster. Clone it freely; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Creates a client for the cluster behind `endpoints` (`host:port` client addresses;
    /// any subset of the nodes) and checks that one of them answers a status request within
    /// an `attempt_timeout` (an open TCP connection proves nothing: a frozen process's kernel
    /// still accepts it), trying them in turn until `request_timeout`. A node that says it
    /// leads becomes the first one asked.
    pub fn connect<S: AsRef<str>>(
        endpoints: &[S],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let client = Client::new(endpoints, options)?;
        let deadline = client.deadline();
        loop {
            for endpoint in &client.inner.endpoints {
                match client.status(endpoint) {
                    Ok(status) => {
                        if status.role == crate::raft::RoleKind::Leader {
                            *client.inner.leader.lock() = Some(endpoint.clone());
                        }
                        return Ok(client);
                    }
                    // An error answer is an answer: the node is alive.
                    Err(ClientError::Server(_)) => return Ok(client),
                    Err(error) if Instant::now() >= deadline => {
                        return Err(ClientError::Unavailable {
                            reason: format!("{endpoint}: {error}"),
                        });
                    }
                    Err(_) => {}
                }
            }
            std::thread::sleep(client.inner.options.backoff_min);
        }
    }

    /// Creates a client without contacting the cluster (connections open on first use).
    pub fn new<S: AsRef<str>>(
        endpoints: &[S],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|endpoint| endpoint.as_ref().trim().to_string())
            .filter(|endpoint| !endpoint.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                options,
                leader: Mutex::new(None),
                connections: Mutex::new(HashMap::new()),
                opening: Mutex::new(HashMap::new()),
                suspects: Mutex::new(HashMap::new()),
                sessions: Mutex::new(Vec::new()),
                token: Mutex::new(None),
                next_endpoint: AtomicUsize::new(0),
            }),
        })
    }

    /// The address this client currently believes is the leader's.
    pub fn leader(&self) -> Option<String> {
        self.inner.leader.lock().clone()
    }

    /// Sets `key` to `value`; returns the key's metadata after the write.
    pub fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<Metadata, ClientError> {
        let response = self.write(Command::put(key, value))?;
        match first_outcome(response)? {
            Some(metadata) => Ok(metadata),
            None => Err(protocol("a put left no key behind")),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: Vec<u8>) -> Result<bool, ClientError> {
        match self.write(Command::delete(key))? {
            Response::Written { outcomes, .. } => Ok(outcomes
                .first()
                .is_some_and(|outcome| outcome.previous.is_some())),
            other => Err(protocol(&format!(
                "unexpected answer to a delete: {other:?}"
            ))),
        }
    }

    /// Sets `key` to `value` (or deletes it when `value` is `None`) if `expect` holds.
    pub fn cas(
        &self,
        key: Vec<u8>,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<CasOutcome, ClientError> {
        match self.write(Command::cas(key, expect, value))? {
            Response::ComparisonFailed { current, .. } => Ok(CasOutcome::Failed { current }),
            written => Ok(CasOutcome::Swapped {
                current: first_outcome(written)?,
            }),
        }
    }

    /// Applies `operations` atomically in one log entry. Returns
    /// [`Response::Written`] or [`Response::ComparisonFailed`].
    pub fn batch(&self, operations: Vec<Operation>) -> Result<Response, ClientError> {
        self.write(Command::batch(operations))
    }

    /// Runs a transaction: if every compare holds, its `then` operations, else its
    /// `otherwise` ones — atomically, in one log entry, all writes at one revision, exactly
    /// once however often the client retries it. A compare that does not hold is not an error:
    /// the answer says which branch ran ([`TxnResponse::succeeded`]) and what each of its
    /// operations answered. See `docs/api.md` for the compare semantics and limits.
    ///
    /// ```no_run
    /// use keyval::client::{Client, ClientOptions};
    /// use keyval::kv::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
    ///
    /// let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
    /// // Take "lock" if nobody holds it; otherwise learn who does.
    /// let answer = client.txn(
    ///     Txn::new()
    ///         .when([Compare::version("lock", CompareOp::Equal, 0)])
    ///         .then([TxnOp::put("lock", "worker-1")])
    ///         .otherwise([TxnOp::get("lock")]),
    /// )?;
    /// if answer.succeeded {
    ///     println!("acquired at revision {}", answer.revision.0);
    /// } else if let Some(TxnOpResponse::Get(Some(holder))) = answer.responses.first() {
    ///     println!("held by {}", String::from_utf8_lossy(&holder.value));
    /// }
    /// # Ok::<(), keyval::client::ClientError>(())
    /// ```
    pub fn txn(&self, txn: Txn) -> Result<TxnResponse, ClientError> {
        match self.write(Command::txn(txn))? {
            Response::Txn(response) => Ok(response),
            other => Err(protocol(&format!(
                "unexpected answer to a transaction: {other:?}"
            ))),
        }
    }

    /// Deletes every key in `range` in one log entry; returns how many were removed.
    ///
    /// ```no_run
    /// use keyval::client::{Client, ClientOptions};
    /// use keyval::kv::KeyRange;
    ///
    /// let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
    /// // Keys from "a" (inclusive) to "c" (exclusive).
    /// let removed = client.delete_range(KeyRange::between(b"a".to_vec(), b"c".to_vec()))?;
    /// println!("{removed} keys removed");
    /// # Ok::<(), keyval::client::ClientError>(())
    /// ```
    pub fn delete_range(&self, range: KeyRange) -> Result<u64, ClientError> {
        match self.write(Command::delete_range(range))? {
            Response::Written { outcomes, .. } => outcomes
                .first()
                .map(|outcome| outcome.deleted)
                .ok_or_else(|| protocol("a range delete answered with no outcome")),
            other => Err(protocol(&format!(
                "unexpected answer to a range delete: {other:?}"
            ))),
        }
    }

    /// Deletes every key that starts with `prefix` in one log entry; returns how many were
    /// removed. An empty prefix deletes every key.
    ///
    /// ```no_run
    /// use keyval::client::{Client, ClientOptions};
    ///
    /// let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
    /// let removed = client.delete_prefix(b"sessions/")?;
    /// println!("{removed} sessions dropped");
    /// # Ok::<(), keyval::client::ClientError>(())
    /// ```
    pub fn delete_prefix(&self, prefix: &[u8]) -> Result<u64, ClientError> {
        self.delete_range(KeyRange::prefix(prefix))
    }

    /// Reads up to `limit` keys that start with `prefix`, in key order, with the default
    /// consistency. When [`ScanPage::more`] is set, continue from
    /// `KeyRange::prefix(prefix).after(last_key)` with [`Client::scan`]; each page is
    /// linearizable on its own, not one snapshot with the others (read a range inside a
    /// [`Client::txn`] for that, within its response limit).
    ///
    /// ```no_run
    /// use keyval::client::{Client, ClientOptions};
    ///
    /// let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
    /// for (key, versioned) in client.get_prefix(b"config/", 100)?.entries {
    ///     println!("{} = {}", String::from_utf8_lossy(&key), String::from_utf8_lossy(&versioned.value));
    /// }
    /// # Ok::<(), keyval::client::ClientError>(())
    /// ```
    pub fn get_prefix(&self, prefix: &[u8], limit: usize) -> Result<ScanPage, ClientError> {
        self.scan(KeyRange::prefix(prefix), limit)
    }

    /// Reads up to `limit` keys of `range` in key order, with the default consistency: the
    /// same as [`Client::scan`], under etcd's name.
    pub fn get_range(&self, range: KeyRange, limit: usize) -> Result<ScanPage, ClientError> {
        self.scan(range, limit)
    }

    /// Reads `key` with the client's default consistency.
    pub fn get(&self, key: Vec<u8>) -> Result<Option<Versioned>, ClientError> {
        Ok(self
            .get_with(key, self.inner.options.read_consistency)?
            .value)
    }

    /// Reads `key` with `consistency`, saying which node served it and how fresh it was.
    pub fn get_with(
        &self,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<ReadResult<Option<Versioned>>, ClientError> {
        let reply = self.read(ReadRequest::Get { key }, consistency)?;
        match reply.response {
            ReadResponse::Get(value) => {
                Ok(read_result(value, reply.node, reply.applied, reply.behind))
            }
            other => Err(protocol(&format!("unexpected answer to a get: {other:?}"))),
        }
    }

    /// Reads up to `limit` keys of `range` in order, with the default consistency.
    pub fn scan(&self, range: KeyRange, limit: usize) -> Result<ScanPage, ClientError> {
        Ok(self
            .scan_with(range, limit, self.inner.options.read_consistency)?
            .value)
    }

    /// Reads up to `limit` keys of `range` with `consistency`.
    pub fn scan_with(
        &self,
        range: KeyRange,
        limit: usize,
        consistency: Consistency,
    ) -> Result<ReadResult<ScanPage>, ClientError> {
        let reply = self.read(ReadRequest::Scan { range, limit }, consistency)?;
        match reply.response {
            ReadResponse::Scan(page) => {
                Ok(read_result(page, reply.node, reply.applied, reply.behind))
            }
            other => Err(protocol(&format!("unexpected answer to a scan: {other:?}"))),
        }
    }

    /// The status of the node at `endpoint` (one attempt of at most `attempt_timeout`, no
    /// redirect).
    pub fn status(&self, endpoint: &str) -> Result<StatusReply, ClientError> {
        let options = &self.inner.options;
        let timeout = options.attempt_timeout.min(options.request_timeout);
        match self.call_one(endpoint, &RequestBody::Status, timeout)? {
            ResponseBody::Status(status) => Ok(status),
            other => Err(protocol(&format!("unexpected answer to status: {other:?}"))),
        }
    }

    /// Sends `body` to the node at `endpoint` and waits up to `timeout` for the answer: one
    /// attempt, no redirect, no retry. The node is given 3/4 of `timeout`.
    fn call_one(
        &self,
        endpoint: &str,
        body: &RequestBody,
        timeout: Duration,
    ) -> Result<ResponseBody, ClientError> {
        let deadline = Instant::now() + timeout;
        let connection =
            self.connection(endpoint, deadline)
                .map_err(|error| ClientError::Unavailable {
                    reason: format!("{endpoint}: {error}"),
                })?;
        // A status is served to anyone; everything else runs as the client's user.
        if !matches!(body, RequestBody::Status) {
            match self.ensure_authenticated(&connection, deadline) {
                auth::AuthOutcome::Ready => {}
                auth::AuthOutcome::Failed(error) => return Err(error),
                auth::AuthOutcome::Again(reason)
                | auth::AuthOutcome::ConnectionLost { reason, .. } => {
                    return Err(ClientError::Unavailable {
                        reason: format!("{endpoint}: authenticating: {reason}"),
                    })
                }
            }
        }
        match connection.call(body, retry::server_share(timeout), deadline) {
            Ok(frame) => frame.result.map_err(ClientError::Server),
            // Not sent; the connection is fine, only full.
            Err(CallError::Full) => Err(ClientError::Unavailable {
                reason: format!("{endpoint}: too many requests in flight"),
            }),
            Err(error) => {
                if matches!(error, CallError::TimedOut) {
                    self.suspect(endpoint);
                }
                self.drop_connection(endpoint, &connection);
                Err(ClientError::Unavailable {
                    reason: format!("{endpoint}: {error:?}"),
                })
            }
        }
    }

    /// The status of every endpoint given to [`Client::connect`], in order.
    pub fn cluster_status(&self) -> Vec<(String, Result<StatusReply, ClientError>)> {
        self.inner
            .endpoints
            .iter()
            .map(|endpoint| (endpoint.clone(), self.status(endpoint)))
            .collect()
    }

    /// Proposes `command` exactly once under a session; returns the state machine's answer
    /// (`Written` or `ComparisonFailed`; a rejection is an error).
    fn write(&self, command: Command) -> Result<Response, ClientError> {
        command.validate().map_err(ClientError::Rejected)?;
        let deadline = self.deadline();
        let mut session = match self.inner.sessions.lock().pop() {
            Some(session) => session,
            None => self.register_session(deadline)?,
        };
        // At most one restart under a new session, and only when nothing could have applied.
        for _ in 0..2 {
            let body = RequestBody::Write(
                command
                    .clone()
                    .with_session(session.client_id, session.next_sequence),
            );
            let executed = self.execute(&body, true, deadline);
            match executed.result {
                Ok(ResponseBody::Written(Response::Rejected(
                    error @ (KvError::SessionExpired { .. } | KvError::StaleSequence { .. }),
                ))) => {
                    if executed.ambiguous {
                        // An earlier attempt may have applied before the session was evicted
                        // (or overtaken): the outcome cannot be learned. Never re-send it
                        // under a new session. The session is dropped; later writes register
                        // another.
                        return Err(ClientError::Indeterminate {
                            reason: error.to_string(),
                        });
                    }
                    // Not applied, and no earlier attempt: a new session makes it a new write.
                    session = self.register_session(deadline)?;
                }
                Ok(ResponseBody::Written(Response::Rejected(error))) => {
                    self.return_session(session);
                    return Err(ClientError::Rejected(error));
                }
                Ok(ResponseBody::Written(
                    response @ (Response::Written { .. }
                    | Response::ComparisonFailed { .. }
                    | Response::Txn(_)
                    | Response::LeaseGranted { .. }
                    | Response::LeaseRevoked { .. }),
                )) => {
                    self.return_session(session);
                    return Ok(response);
                }
                Ok(other) => {
                    return Err(protocol(&format!(
                        "unexpected answer to a write: {other:?}"
                    )));
                }
                Err(error) => {
                    // A definite failure leaves the session usable; after an indeterminate
                    // one a fresh session keeps the bookkeeping simple.
                    if !error.is_indeterminate() {
                        self.return_session(session);
                    }
                    return Err(error);
                }
            }
        }
        Err(ClientError::Unavailable {
            reason: "the cluster keeps refusing new sessions".into(),
        })
    }

    /// Registers a new session through the log, by `deadline`. A registration whose answer
    /// is lost is simply sent again: an unused session has no effect but a slot in the
    /// cluster's table, until it is evicted. Fails only with errors that mean the write
    /// waiting for the session was not sent.
    fn register_session(&self, deadline: Instant) -> Result<Session, ClientError> {
        let body = RequestBody::Write(Command::register_session());
        let unavailable = |reason: String| ClientError::Unavailable {
            reason: format!("registering a session: {reason}"),
        };
        match self.execute(&body, false, deadline).result {
            Ok(ResponseBody::Written(Response::SessionRegistered { client_id })) => Ok(Session {
                client_id,
                next_sequence: 1,
            }),
            Ok(other) => Err(protocol(&format!(
                "unexpected answer to a session registration: {other:?}"
            ))),
            Err(
                ClientError::Timeout { reason }
                | ClientError::Unavailable { reason }
                | ClientError::Indeterminate { reason },
            ) => Err(unavailable(reason)),
            Err(error) => Err(unavailable(error.to_string())),
        }
    }

    pub(crate) fn read(
        &self,
        request: ReadRequest,
        consistency: Consistency,
    ) -> Result<ReadReply, ClientError> {
        request.validate().map_err(ClientError::Rejected)?;
        let deadline = self.deadline();
        match self
            .execute(
                &RequestBody::Read {
                    request,
                    consistency,
                },
                false,
                deadline,
            )
            .result?
        {
            ResponseBody::Read(reply) => Ok(reply),
            other => Err(protocol(&format!("unexpected answer to a read: {other:?}"))),
        }
    }

    /// The deadline of a call starting now.
    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.options.request_timeout
    }

    fn return_session(&self, mut session: Session) {
        session.next_sequence += 1;
        self.inner.sessions.lock().push(session);
    }
}

/// Why a client call failed. For writes, every variant but
/// [`Indeterminate`](ClientError::Indeterminate) means the write was **not** applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `Client::connect` was given no endpoints.
    #[error("no endpoints given")]
    NoEndpoints,
    /// No node served the request before the deadline (no leader, nodes unreachable). A
    /// write was definitely not applied.
    #[error("cluster unavailable: {reason}")]
    Unavailable {
        /// The last failure seen.
        reason: String,
    },
    /// **The write may or may not have been applied**: an attempt reached the cluster but
    /// its outcome was not learned before the deadline. Read the key to find out; never
    /// assume either way.
    #[error("outcome unknown (the write may or may not have been applied): {reason}")]
    Indeterminate {
        /// The last failure seen.
        reason: String,
    },
    /// A read could not be served before the deadline.
    #[error("read timed out: {reason}")]
    Timeout {
        /// The last failure seen.
        reason: String,
    },
    /// The request breaks a limit or is malformed (key or value too large, empty key, batch
    /// too large…). Nothing was applied.
    #[error("request rejected: {0}")]
    Rejected(KvError),
    /// A lease read was asked for but the leader holds no valid lease (or lease reads are off
    /// on the cluster).
    #[error("no valid lease for a lease read")]
    NoLease,
    /// The server answered something this client does not expect.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// A watch asked for revisions the history no longer holds (or fell out of it): changes
    /// were missed. Read the current state, then watch again after `compact_revision`.
    #[error("revision compacted: the history starts after revision {compact_revision}")]
    Compacted {
        /// Every revision up to this one is gone.
        compact_revision: LogIndex,
    },
    /// The server refused the request for a reason not covered above.
    #[error("server error: {0}")]
    Server(ServerError),
}

impl ClientError {
    /// Whether a write that failed with this error may have been applied.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClientError::Indeterminate { .. })
    }
}

fn protocol(reason: &str) -> ClientError {
    ClientError::Protocol {
        reason: reason.to_string(),
    }
}

/// The metadata the first operation of a written command left on its key.
fn first_outcome(response: Response) -> Result<Option<Metadata>, ClientError> {
    match response {
        Response::Written { outcomes, .. } => outcomes
            .first()
            .map(|outcome| outcome.current)
            .ok_or_else(|| protocol("a write answered with no outcome")),
        other => Err(protocol(&format!(
            "unexpected answer to a write: {other:?}"
        ))),
    }
}

fn read_result<T>(value: T, node: NodeId, applied: LogIndex, behind: u64) -> ReadResult<T> {
    ReadResult {
        value,
        node,
        applied,
        behind,
    }
}
