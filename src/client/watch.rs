//! Watches from the blocking client: a stream of changes that survives disconnects, node
//! failures and restarts by resuming, on any member, after the last revision it delivered.
//!
//! ```no_run
//! use keyval::client::{Client, ClientOptions, WatchOptions};
//!
//! let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
//! let mut watch = client.watch(WatchOptions::prefix(b"config/"))?;
//! loop {
//!     let response = watch.recv()?;
//!     for event in &response.events {
//!         println!("{:?} {:?} at {}", event.kind, event.key, event.revision);
//!     }
//! }
//! # Ok::<(), keyval::client::ClientError>(())
//! ```
//!
//! A [`Watch`] delivers every change to its keys exactly once, in revision order, all changes
//! of one revision in one [`WatchResponse`]. Behind the scenes it holds one server-side watch
//! on one member, sharing that member's connection with the client's other calls. When the
//! connection breaks, the member stops, loses its leader (with `require_leader`, the
//! default) or falls silent for [`WatchOptions::silence_timeout`] (a frozen process), the
//! watch opens again on another member, starting right after the last revision it
//! delivered: nothing is missed, nothing repeats. Only a start that left every member's
//! history is an error ([`ClientError::Compacted`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::kv::{Event, KeyRange};
use crate::protocol::{Consistency, RequestBody, ResponseBody, ServerError, WatchRequest};
use crate::types::{LogIndex, NodeId};

use super::connection::{CallError, Connection, StreamItem};
use super::retry::server_share;
use super::{Client, ClientError};

/// Default [`WatchOptions::silence_timeout`].
pub const WATCH_SILENCE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// What to watch and how. Build it with [`WatchOptions::key`], [`WatchOptions::prefix`],
/// [`WatchOptions::range`] or [`WatchOptions::all`], then the other methods.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    range: KeyRange,
    start: Option<LogIndex>,
    previous: bool,
    no_put: bool,
    no_delete: bool,
    progress_interval: Option<Duration>,
    linearizable: bool,
    require_leader: bool,
    silence_timeout: Duration,
}

impl WatchOptions {
    /// Watches the keys of `range`.
    pub fn range(range: KeyRange) -> WatchOptions {
        WatchOptions {
            range,
            start: None,
            previous: false,
            no_put: false,
            no_delete: false,
            progress_interval: None,
            linearizable: true,
            require_leader: true,
            silence_timeout: WATCH_SILENCE_TIMEOUT_DEFAULT,
        }
    }

    /// Watches one key.
    pub fn key(key: &[u8]) -> WatchOptions {
        WatchOptions::range(KeyRange::single(key))
    }

    /// Watches every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> WatchOptions {
        WatchOptions::range(KeyRange::prefix(prefix))
    }

    /// Watches every key.
    pub fn all() -> WatchOptions {
        WatchOptions::range(KeyRange::all())
    }

    /// Starts at `revision` (delivering every change at or after it) instead of now. A
    /// revision the history no longer holds is refused with [`ClientError::Compacted`].
    pub fn start(mut self, revision: LogIndex) -> WatchOptions {
        self.start = Some(revision);
        self
    }

    /// Delivers each event with what its key held before ([`Event::previous`]).
    pub fn with_previous(mut self) -> WatchOptions {
        self.previous = true;
        self
    }

    /// Leaves out puts.
    pub fn no_put(mut self) -> WatchOptions {
        self.no_put = true;
        self
    }

    /// Leaves out deletes.
    pub fn no_delete(mut self) -> WatchOptions {
        self.no_delete = true;
        self
    }

    /// Delivers a progress notification (a [`WatchResponse`] without events, saying the watch
    /// is up to date at its `revision`) when nothing else was delivered for `interval`.
    pub fn progress_interval(mut self, interval: Duration) -> WatchOptions {
        self.progress_interval = Some(interval);
        self
    }

    /// Whether a watch without a start begins at a linearizable point (the default): after
    /// everything committed before it was opened, so it misses none of the caller's own
    /// earlier writes. The client takes the point with a read barrier on the leader, then
    /// any member serves the watch from there. Without, it begins at the serving member's
    /// applied state, which may lag.
    pub fn linearizable(mut self, linearizable: bool) -> WatchOptions {
        self.linearizable = linearizable;
        self
    }

    /// Whether the watch moves to another member when its member has no leader (the
    /// default): a member cut off from the others delivers nothing new.
    pub fn require_leader(mut self, require_leader: bool) -> WatchOptions {
        self.require_leader = require_leader;
        self
    }

    /// How long the member serving the watch may stay silent before the watch moves to
    /// another member (default 5 s). The member is asked for progress notifications four
    /// times as often, so a live member is never silent that long.
    pub fn silence_timeout(mut self, timeout: Duration) -> WatchOptions {
        self.silence_timeout = timeout.max(Duration::from_millis(400));
        self
    }
}

/// What a watch delivers at once: every change of one or more whole revisions, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchResponse {
    /// The changes; empty for a progress notification.
    pub events: Vec<Event>,
    /// Every change up to this revision has now been delivered.
    pub revision: LogIndex,
}

impl WatchResponse {
    /// Whether this is a progress notification (no events).
    pub fn is_progress(&self) -> bool {
        self.events.is_empty()
    }
}

/// The server-side watch currently serving a [`Watch`].
struct Stream {
    address: String,
    connection: Arc<Connection>,
    id: u64,
    node: NodeId,
    frames: Receiver<StreamItem>,
    last_frame: Instant,
}

/// A watch: every change to its keys exactly once, in revision order, resuming on another
/// member after a failure (see [`Client::watch`] and `docs/api.md`). Ends (server side too)
/// when dropped.
pub struct Watch {
    client: Client,
    options: WatchOptions,
    /// Every change up to this revision was delivered to the caller.
    delivered: LogIndex,
    stream: Option<Stream>,
    /// Events of a revision that arrives in fragments.
    fragments: Vec<Event>,
    /// When a progress notification was last handed to the caller.
    progress_delivered: Instant,
    /// The caller asked for a progress notification.
    progress_requested: bool,
    /// Why the last stream ended, for errors.
    last_error: String,
    /// The start is fixed (`delivered + 1`): given, or taken from a linearizable point or
    /// from the first member's answer.
    pinned: bool,
}

impl Client {
    /// Opens a watch (see [`WatchOptions`] and the [`watch`](crate::client::Watch) docs).
    /// Returns once a member serves it; errors if none does before the request timeout, if
    /// the start was compacted on every member tried, or if the request is invalid.
    pub fn watch(&self, options: WatchOptions) -> Result<Watch, ClientError> {
        let mut delivered = options
            .start
            .map_or(LogIndex(0), |start| LogIndex(start.0.max(1) - 1));
        let mut pinned = options.start.is_some();
        if !pinned && options.linearizable {
            // A linearizable point from the leader (a read barrier): the watch starts right
            // after it, and any member can serve it — every member's history is the same.
            // The probe reads the range's first key: a user who may watch the range may
            // read it.
            let key = match options.range.start.as_slice() {
                [] => vec![0],
                start => start.to_vec(),
            };
            let probe = crate::kv::ReadRequest::Get { key };
            delivered = self.read(probe, Consistency::Linearizable)?.applied;
            pinned = true;
        }
        let mut watch = Watch {
            pinned,
            client: self.clone(),
            options,
            delivered,
            stream: None,
            fragments: Vec::new(),
            progress_delivered: Instant::now(),
            progress_requested: false,
            last_error: String::new(),
        };
        watch.open(self.deadline())?;
        Ok(watch)
    }
}

impl Watch {
    /// Waits for the next changes (or progress notification), resuming on another member
    /// as often as needed. Errors only when the watch cannot go on: its next revision was
    /// compacted on every member, or the request is invalid.
    pub fn recv(&mut self) -> Result<WatchResponse, ClientError> {
        loop {
            if let Some(response) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(response);
            }
        }
    }

    /// Like [`recv`](Watch::recv), but returns `Ok(None)` if nothing arrived within
    /// `timeout`.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<WatchResponse>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if self.stream.is_none() {
                match self.open(deadline) {
                    Ok(()) => {}
                    Err(ClientError::Unavailable { .. }) => continue,
                    Err(error) => return Err(error),
                }
                continue;
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let silence_left = self
                .options
                .silence_timeout
                .saturating_sub(stream.last_frame.elapsed());
            if silence_left.is_zero() {
                // A frozen member: its kernel keeps the connection open, it sends nothing.
                let address = stream.address.clone();
                self.last_error = format!("{address} was silent for the silence timeout");
                self.client.suspect(&address);
                self.end_stream();
                continue;
            }
            let wait = silence_left.min(deadline.saturating_duration_since(now));
            let item = match stream.frames.recv_timeout(wait) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    // Dropped for falling behind (or the connection went): resume.
                    self.last_error = "the watch stream fell behind".into();
                    self.end_stream();
                    continue;
                }
            };
            stream.last_frame = Instant::now();
            let frame = match item {
                Ok(frame) => frame,
                Err(reason) => {
                    self.last_error = reason;
                    self.end_stream();
                    continue;
                }
            };
            match frame.result {
                Ok(ResponseBody::WatchEvents(body)) => {
                    if body.fragment {
                        self.fragments.extend(body.events);
                        continue;
                    }
                    let mut events = std::mem::take(&mut self.fragments);
                    events.extend(body.events);
                    // A frame never repeats what was delivered; guard the invariant anyway.
                    events.retain(|event| event.revision > self.delivered);
                    self.delivered = self.delivered.max(body.revision);
                    if events.is_empty() && !self.progress_wanted() {
                        continue;
                    }
                    if events.is_empty() {
                        self.progress_delivered = Instant::now();
                        self.progress_requested = false;
                    }
                    return Ok(Some(WatchResponse {
                        events,
                        revision: self.delivered,
                    }));
                }
                Ok(ResponseBody::WatchCanceled { reason, .. }) => {
                    self.last_error = reason;
                    self.end_stream();
                }
                Ok(other) => {
                    self.last_error = format!("unexpected frame on a watch: {other:?}");
                    self.end_stream();
                }
                Err(ServerError::Compacted { compact_revision }) => {
                    // This member's history moved past us; another's may not have.
                    self.end_stream();
                    self.open_anywhere(deadline, compact_revision)?;
                }
                Err(error) => {
                    self.last_error = error.to_string();
                    self.end_stream();
                }
            }
        }
    }

    /// Every change up to this revision has been delivered; a new watch started after it
    /// would continue exactly where this one is.
    pub fn revision(&self) -> LogIndex {
        self.delivered
    }

    /// The member serving the watch now, if one is.
    pub fn node(&self) -> Option<NodeId> {
        self.stream.as_ref().map(|stream| stream.node)
    }

    /// Asks for a progress notification: a [`WatchResponse`] without events once the watch
    /// has delivered everything its member has applied.
    pub fn request_progress(&mut self) {
        self.progress_requested = true;
        if let Some(stream) = &self.stream {
            let timeout = server_share(self.client.inner.options.attempt_timeout);
            stream
                .connection
                .send_only(&RequestBody::WatchProgress, timeout);
        }
    }

    /// Ends the watch.
    pub fn cancel(mut self) {
        self.end_stream();
    }

    fn progress_wanted(&self) -> bool {
        self.progress_requested
            || self
                .options
                .progress_interval
                .is_some_and(|interval| self.progress_delivered.elapsed() >= interval)
    }

    /// Ends the server-side watch (without waiting) and forgets it.
    fn end_stream(&mut self) {
        self.fragments.clear();
        if let Some(stream) = self.stream.take() {
            stream.connection.close_stream(stream.id);
            if !stream.connection.is_broken() {
                let timeout = server_share(self.client.inner.options.attempt_timeout);
                stream
                    .connection
                    .send_only(&RequestBody::WatchCancel { watch: stream.id }, timeout);
            }
        }
    }

    /// The request that continues this watch after what it delivered.
    fn request(&self) -> WatchRequest {
        let options = &self.options;
        let interval = options.silence_timeout / 4;
        let progress_interval = match options.progress_interval {
            Some(wanted) => wanted.min(interval),
            None => interval,
        };
        WatchRequest {
            range: options.range.clone(),
            start: self
                .pinned
                .then_some(LogIndex(self.delivered.0.saturating_add(1))),
            previous: options.previous,
            no_put: options.no_put,
            no_delete: options.no_delete,
            progress_interval_ms: progress_interval.as_millis() as u64,
            // The linearizable point was taken by the client (see `Client::watch`).
            linearizable: false,
            require_leader: options.require_leader,
        }
    }

    /// After a member answered `Compacted`: tries every other member once before giving up.
    fn open_anywhere(
        &mut self,
        deadline: Instant,
        compact_revision: LogIndex,
    ) -> Result<(), ClientError> {
        let tries = self.client.inner.endpoints.len().saturating_sub(1);
        for _ in 0..tries {
            match self.open(deadline) {
                Ok(()) => return Ok(()),
                Err(ClientError::Compacted { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(ClientError::Compacted { compact_revision })
    }

    /// Opens the server-side watch on some member, trying members in turn with backoff until
    /// `deadline`. Unavailable means none answered in time (the caller may try again).
    fn open(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let options = self.client.inner.options.clone();
        let mut backoff = options.backoff_min;
        loop {
            let address = self.client.next_endpoint();
            let attempt_deadline = (Instant::now() + options.attempt_timeout).min(deadline);
            match self.open_on(&address, attempt_deadline) {
                Ok(stream) => {
                    self.stream = Some(stream);
                    return Ok(());
                }
                Err(Some(error)) => return Err(error),
                Err(None) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Unavailable {
                    reason: format!("no member serves the watch: {}", self.last_error),
                });
            }
            let jitter = rand::Rng::random_range(&mut rand::rng(), 0.5..1.0);
            let pause = backoff.mul_f64(jitter).min(deadline - now);
            std::thread::sleep(pause);
            backoff = (backoff * 2).min(options.backoff_max);
        }
    }

    /// One attempt on `address`: the stream, `Err(None)` to try elsewhere, or `Err(Some)` for
    /// an error that ends the watch.
    fn open_on(&mut self, address: &str, deadline: Instant) -> Result<Stream, Option<ClientError>> {
        let connection = match self.client.connection(address, deadline) {
            Ok(connection) => connection,
            Err(error) => {
                self.last_error = format!("{address}: {error}");
                self.client.suspect(address);
                return Err(None);
            }
        };
        match self.client.ensure_authenticated(&connection, deadline) {
            super::auth::AuthOutcome::Ready => {}
            super::auth::AuthOutcome::Failed(error) => return Err(Some(error)),
            super::auth::AuthOutcome::Again(reason) => {
                self.last_error = format!("{address}: {reason}");
                return Err(None);
            }
            super::auth::AuthOutcome::ConnectionLost { reason, .. } => {
                self.last_error = format!("{address}: authenticating: {reason}");
                self.client.drop_connection(address, &connection);
                return Err(None);
            }
        }
        let server_timeout = server_share(deadline.saturating_duration_since(Instant::now()));
        let request = RequestBody::Watch(self.request());
        let (id, frames) = match connection.open_stream(&request, server_timeout) {
            Ok(opened) => opened,
            Err(error) => {
                self.last_error = format!("{address}: {error:?}");
                self.client.drop_connection(address, &connection);
                return Err(None);
            }
        };
        let first = frames.recv_deadline(deadline);
        let fail = |watch: &mut Watch, reason: String| {
            connection.close_stream(id);
            watch.last_error = format!("{address}: {reason}");
        };
        let frame = match first {
            Ok(Ok(frame)) => frame,
            Ok(Err(reason)) => {
                fail(self, reason);
                return Err(None);
            }
            Err(_) => {
                fail(self, "no answer to the watch request".into());
                self.client.suspect(address);
                // It may still open: end it if it does.
                connection.send_only(&RequestBody::WatchCancel { watch: id }, server_timeout);
                return Err(None);
            }
        };
        match frame.result {
            Ok(ResponseBody::WatchCreated(created)) => {
                if !self.pinned {
                    // Pinned: a resume continues from here, whatever the next member holds.
                    // From the network: a start of 0 must not underflow.
                    self.delivered = LogIndex(created.start.0.saturating_sub(1));
                    self.pinned = true;
                }
                Ok(Stream {
                    address: address.to_string(),
                    connection,
                    id,
                    node: created.node,
                    frames,
                    last_frame: Instant::now(),
                })
            }
            Ok(other) => {
                fail(self, format!("unexpected answer to a watch: {other:?}"));
                Err(None)
            }
            Err(ServerError::Compacted { compact_revision }) => {
                connection.close_stream(id);
                Err(Some(ClientError::Compacted { compact_revision }))
            }
            Err(ServerError::Invalid(error)) => {
                connection.close_stream(id);
                Err(Some(ClientError::Rejected(error)))
            }
            // The connection's token expired or was invalidated: authenticate again.
            Err(ServerError::Unauthenticated { .. })
                if self.client.inner.options.credentials.is_some() =>
            {
                connection.close_stream(id);
                self.client.authentication_lost(&connection);
                self.last_error = format!("{address}: the connection's authentication lapsed");
                Err(None)
            }
            Err(
                error @ (ServerError::Unauthenticated { .. }
                | ServerError::AuthenticationFailed
                | ServerError::PermissionDenied { .. }),
            ) => {
                connection.close_stream(id);
                Err(Some(ClientError::Server(error)))
            }
            Err(error) => {
                fail(self, error.to_string());
                if matches!(
                    error,
                    ServerError::Unavailable { .. } | ServerError::WatchCanceled { .. }
                ) {
                    self.client.suspect(address);
                }
                Err(None)
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.end_stream();
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Watch")
            .field("options", &self.options)
            .field("delivered", &self.delivered)
            .field("node", &self.node())
            .finish()
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Failed { reason, .. } => write!(formatter, "connection failed: {reason}"),
            CallError::TimedOut => write!(formatter, "timed out"),
            CallError::Full => write!(formatter, "too many requests in flight"),
        }
    }
}
