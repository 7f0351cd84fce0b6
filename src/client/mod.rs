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
//! The cluster keeps a bounded number of sessions and evicts the least recently used. A
//! write of an evicted session is refused (`SessionExpired`), never applied: if no earlier
//! attempt of that write may have been applied, the client registers a new session and
//! sends it again as a new write; otherwise an attempt may have been applied before the
//! eviction, the outcome cannot be learned any more, and the write is
//! [`ClientError::Indeterminate`]. Either way later writes use a fresh session.
//!
//! A `Client` is cheap to clone and may be used from many threads at once: clones share
//! connections (one per node, multiplexed), and each write in flight uses a session of its
//! own from a small pool, because the store only accepts a client's sequences in order.
//! Sessions are registered lazily, when a write finds the pool empty.
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
mod connection;
mod snapshot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

use crate::kv::{
    Command, Expect, KeyRange, KvError, Metadata, Operation, ReadRequest, ReadResponse, Response,
    ScanPage, Versioned,
};
use crate::server::protocol::{
    Consistency, ReadReply, RequestBody, ResponseBody, ServerError, StatusReply,
};
use crate::types::{LogIndex, NodeId};

use connection::{CallError, Connection};

/// How long a client waits for a server's answer beyond the time it gave the server.
const RESPONSE_GRACE: Duration = Duration::from_millis(500);

/// Redirects followed back to back before the client backs off (leaders in flux).
const REDIRECTS_BEFORE_BACKOFF: u32 = 3;

/// How a [`Client`] behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one call may take, retries included (default 5 s).
    pub request_timeout: Duration,
    /// How long one connection attempt may take (default 1 s).
    pub connect_timeout: Duration,
    /// First retry delay; it doubles, with jitter, up to `backoff_max` (default 10 ms).
    pub backoff_min: Duration,
    /// Largest retry delay (default 500 ms).
    pub backoff_max: Duration,
    /// Consistency of [`Client::get`] and [`Client::scan`] (default linearizable).
    pub read_consistency: Consistency,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            read_consistency: Consistency::Linearizable,
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

/// What `execute` learned besides the result: whether an attempt may have been applied
/// without us learning its outcome.
struct Executed {
    result: Result<ResponseBody, ClientError>,
    ambiguous: bool,
}

struct Inner {
    endpoints: Vec<String>,
    options: ClientOptions,
    /// The address that last answered as leader.
    leader: Mutex<Option<String>>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    /// Sessions not in use, each ready for its next sequence.
    sessions: Mutex<Vec<Session>>,
    next_endpoint: AtomicUsize,
}

/// A blocking client of a keyval cluster. Clone it freely; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Creates a client for the cluster behind `endpoints` (`host:port` client addresses;
    /// any subset of the nodes) and checks that one of them answers.
    pub fn connect<S: AsRef<str>>(
        endpoints: &[S],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let client = Client::new(endpoints, options)?;
        let deadline = Instant::now() + client.inner.options.request_timeout;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            for endpoint in &client.inner.endpoints {
                match client.connection(endpoint) {
                    Ok(_) => return Ok(client),
                    Err(error) => last_error = format!("{endpoint}: {error}"),
                }
            }
            std::thread::sleep(client.inner.options.backoff_min);
        }
        Err(ClientError::Unavailable { reason: last_error })
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
                sessions: Mutex::new(Vec::new()),
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

    /// The status of the node at `endpoint` (one attempt, no redirect).
    pub fn status(&self, endpoint: &str) -> Result<StatusReply, ClientError> {
        match self.call_one(endpoint, &RequestBody::Status)? {
            ResponseBody::Status(status) => Ok(status),
            other => Err(protocol(&format!("unexpected answer to status: {other:?}"))),
        }
    }

    /// Sends `body` to the node at `endpoint`: one attempt, no redirect, no retry.
    fn call_one(&self, endpoint: &str, body: &RequestBody) -> Result<ResponseBody, ClientError> {
        let deadline = Instant::now() + self.inner.options.request_timeout;
        let connection = self
            .connection(endpoint)
            .map_err(|error| ClientError::Unavailable {
                reason: format!("{endpoint}: {error}"),
            })?;
        let timeout = self.inner.options.request_timeout;
        match connection.call(body, timeout, deadline) {
            Ok(frame) => frame.result.map_err(ClientError::Server),
            Err(error) => {
                self.drop_connection(endpoint);
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
                    response @ (Response::Written { .. } | Response::ComparisonFailed { .. }),
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

    fn read(
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

    /// Sends `body` to the leader (or whichever node answers), following redirects and
    /// retrying with backoff until `deadline`. The same `body` (hence the same session) is
    /// sent on every attempt.
    fn execute(&self, body: &RequestBody, write: bool, deadline: Instant) -> Executed {
        let options = &self.inner.options;
        let mut ambiguous = false;
        let mut last_error = String::from("no attempt finished");
        let mut backoff = options.backoff_min;
        let mut redirects = 0;
        let mut target = self.leader().unwrap_or_else(|| self.next_endpoint());
        let stale_read = matches!(
            body,
            RequestBody::Read {
                consistency: Consistency::Stale,
                ..
            }
        );
        loop {
            let now = Instant::now();
            if now >= deadline {
                let reason = format!("deadline passed; last error: {last_error}");
                let error = if ambiguous {
                    ClientError::Indeterminate { reason }
                } else if write {
                    ClientError::Unavailable { reason }
                } else {
                    ClientError::Timeout { reason }
                };
                return Executed {
                    result: Err(error),
                    ambiguous,
                };
            }
            let mut retry_elsewhere = false;
            match self.connection(&target) {
                Err(error) => {
                    last_error = format!("connecting to {target}: {error}");
                    retry_elsewhere = true;
                }
                Ok(connection) => {
                    let server_timeout = deadline - now;
                    match connection.call(body, server_timeout, deadline + RESPONSE_GRACE) {
                        Err(CallError::Failed { sent, reason }) => {
                            ambiguous |= write && sent;
                            last_error = format!("{target}: {reason}");
                            self.drop_connection(&target);
                            retry_elsewhere = true;
                        }
                        Err(CallError::TimedOut) => {
                            ambiguous |= write;
                            last_error = format!("{target}: no response");
                        }
                        Ok(frame) => match frame.result {
                            Ok(response) => {
                                if !stale_read {
                                    *self.inner.leader.lock() = Some(target);
                                }
                                return Executed {
                                    result: Ok(response),
                                    ambiguous,
                                };
                            }
                            Err(error) => {
                                last_error = format!("{target}: {error}");
                                match error {
                                    ServerError::NotLeader {
                                        leader_client_address: Some(address),
                                        ..
                                    } if address != target => {
                                        target = address;
                                        redirects += 1;
                                        if redirects <= REDIRECTS_BEFORE_BACKOFF {
                                            continue;
                                        }
                                    }
                                    ServerError::NotLeader { .. }
                                    | ServerError::Unavailable { .. } => {
                                        retry_elsewhere = true;
                                    }
                                    ServerError::Indeterminate { .. } => ambiguous = true,
                                    ServerError::Busy { .. }
                                    | ServerError::Dropped
                                    | ServerError::ReadTimeout => {}
                                    ServerError::Invalid(error) => {
                                        return Executed {
                                            result: Err(ClientError::Rejected(error)),
                                            ambiguous,
                                        }
                                    }
                                    ServerError::NoLease => {
                                        return Executed {
                                            result: Err(ClientError::NoLease),
                                            ambiguous,
                                        }
                                    }
                                    // Answers to snapshot requests, which do not come here.
                                    // ... and refusals of membership changes and
                                    // transfers, which are final.
                                    error @ (ServerError::NoSnapshot
                                    | ServerError::SnapshotMoved { .. }
                                    | ServerError::SnapshotOffset { .. }
                                    | ServerError::Refused { .. }
                                    | ServerError::TransferFailed { .. }) => {
                                        return Executed {
                                            result: Err(ClientError::Server(error)),
                                            ambiguous,
                                        }
                                    }
                                }
                            }
                        },
                    }
                }
            }
            if retry_elsewhere {
                let mut leader = self.inner.leader.lock();
                if leader.as_deref() == Some(target.as_str()) {
                    *leader = None;
                }
                drop(leader);
                target = self.next_endpoint();
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

    fn next_endpoint(&self) -> String {
        let endpoints = &self.inner.endpoints;
        let index = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
        endpoints[index % endpoints.len()].clone()
    }

    /// An open connection to `address`, opening one if needed (outside the map's lock).
    fn connection(&self, address: &str) -> std::io::Result<Arc<Connection>> {
        if let Some(connection) = self.inner.connections.lock().get(address) {
            if !connection.is_broken() {
                return Ok(Arc::clone(connection));
            }
        }
        let options = &self.inner.options;
        let opened = Arc::new(Connection::open(
            address,
            options.connect_timeout,
            options.request_timeout,
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

    fn drop_connection(&self, address: &str) {
        let removed = self.inner.connections.lock().remove(address);
        if let Some(connection) = removed {
            connection.close();
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
