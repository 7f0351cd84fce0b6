//! One client connection as an event loop sees it: a non-blocking socket, the bytes of a
//! partial request, the requests in flight, and the encoded responses not yet written.
//!
//! A connection is a state machine the loop drives on readiness, completions and timers; it
//! owns no thread. Its states:
//!
//! ```text
//!  open ──(peer closed / bad input / idle / slow frame / server stopping)──► draining
//!  draining: reads nothing more; answers what is in flight (each bounded by its deadline)
//!  draining ∧ nothing in flight ∧ output written ──► closed (deregistered, dropped)
//!  any ──(write failed / a client that stops reading past the write timeout)──► closed
//! ```
//!
//! Back-pressure: a connection with [`ServerOptions::inflight_per_connection_max`] requests in
//! flight, or more than [`OUTPUT_BYTES_HIGH`] of responses unwritten, is not read until that
//! drops; its client is slowed by TCP, not refused.
//!
//! [`ServerOptions::inflight_per_connection_max`]: super::ServerOptions::inflight_per_connection_max

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::kv::ReadRequest;
use crate::log;
use crate::protocol::budget::ByteBudget;
use crate::protocol::{write_frame, FrameAssembler, ResponseBody, ResponseFrame, ServerError};

use super::deadlines::{ConnectionDeadlines, Expired};
use super::snapshot::SnapshotPin;

/// Unwritten response bytes above which a connection is not read (its client is not reading
/// its answers); a pipelining client that reads keeps well below.
pub(super) const OUTPUT_BYTES_HIGH: usize = 1024 * 1024;

/// Output capacity kept once everything was written; a larger buffer is freed.
const OUTPUT_RETAINED_BYTES_MAX: usize = 64 * 1024;

/// How soon a frame waiting for room in the request-buffer budget tries again.
pub(super) const BUDGET_RETRY: Duration = Duration::from_millis(10);

/// What a request in flight waits for.
pub(super) enum PendingKind {
    /// A proposal's completion.
    Write,
    /// A read point's completion (linearizable or lease); then the read is served.
    Read(ReadRequest),
    /// A membership change or transfer on an admin thread.
    Admin,
}

/// A request submitted and not yet answered.
pub(super) struct Pending {
    pub(super) request_id: u64,
    pub(super) deadline: Instant,
    pub(super) kind: PendingKind,
}

/// Why a connection stops reading.
pub(super) enum Close {
    /// Garbage, a truncated frame, an oversized length prefix, a payload that is not a request.
    BadInput(crate::protocol::FrameError),
    /// Idle too long, or a frame too slow to arrive.
    Expired(Expired),
    /// Reading failed.
    Io(std::io::Error),
}

impl std::fmt::Display for Close {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::BadInput(error) => write!(formatter, "bad input: {error}"),
            Close::Expired(expired) => expired.fmt(formatter),
            Close::Io(error) => write!(formatter, "read failed: {error}"),
        }
    }
}

/// One client connection owned by an event loop.
pub(super) struct Connection {
    pub(super) stream: TcpStream,
    pub(super) remote: String,
    pub(super) frames: FrameAssembler,
    pub(super) deadlines: ConnectionDeadlines,
    /// Requests in flight by tag.
    pub(super) pending: HashMap<u64, Pending>,
    /// `(deadline, tag)` of every request in `pending`.
    pub(super) pending_deadlines: BTreeSet<(Instant, u64)>,
    /// Encoded responses; `output[written..]` is still to be written.
    output: Vec<u8>,
    written: usize,
    /// Since when the socket has refused more output, while some is left.
    write_blocked_since: Option<Instant>,
    /// The socket may have bytes to read (readiness seen, no `WouldBlock` since).
    pub(super) readable: bool,
    /// The socket may take more output.
    pub(super) writable: bool,
    /// No more requests are read; the connection closes once it has answered what is in flight.
    pub(super) draining: bool,
    /// Writing failed or timed out: close at once.
    pub(super) broken: bool,
    /// A frame waits for room in the budget; retry at this instant.
    pub(super) budget_retry_at: Option<Instant>,
    /// When the loop's timer for this connection is set, if it is.
    pub(super) timer: Option<Instant>,
    /// Output was added since the connection was last written.
    pub(super) dirty: bool,
    /// Reading stopped at the in-flight or output limit while more may be waiting.
    pub(super) starved: bool,
    /// The snapshot this connection is downloading, if any.
    pub(super) snapshot_pin: SnapshotPin,
}

impl Connection {
    pub(super) fn new(
        stream: TcpStream,
        remote: String,
        budget: Arc<ByteBudget>,
        now: Instant,
        idle_timeout: Duration,
        frame_timeout: Duration,
    ) -> Connection {
        Connection {
            stream,
            remote,
            frames: FrameAssembler::new(budget),
            deadlines: ConnectionDeadlines::new(now, idle_timeout, frame_timeout),
            pending: HashMap::new(),
            pending_deadlines: BTreeSet::new(),
            output: Vec::new(),
            written: 0,
            write_blocked_since: None,
            readable: false,
            writable: false,
            draining: false,
            broken: false,
            budget_retry_at: None,
            timer: None,
            dirty: false,
            starved: false,
            snapshot_pin: SnapshotPin::default(),
        }
    }

    /// Whether the connection may take another request now.
    pub(super) fn accepts_requests(&self, inflight_max: usize) -> bool {
        !self.draining
            && !self.broken
            && self.pending.len() < inflight_max
            && self.output.len() - self.written <= OUTPUT_BYTES_HIGH
    }

    /// Registers a request in flight.
    pub(super) fn register(
        &mut self,
        tag: u64,
        request_id: u64,
        deadline: Instant,
        kind: PendingKind,
    ) {
        self.pending.insert(
            tag,
            Pending {
                request_id,
                deadline,
                kind,
            },
        );
        self.pending_deadlines.insert((deadline, tag));
    }

    /// Takes the request in flight under `tag`, if it is still waiting.
    pub(super) fn take(&mut self, tag: u64) -> Option<Pending> {
        let pending = self.pending.remove(&tag)?;
        self.pending_deadlines.remove(&(pending.deadline, tag));
        Some(pending)
    }

    /// Takes the first request whose deadline has passed at `now`.
    pub(super) fn take_expired(&mut self, now: Instant) -> Option<(u64, Pending)> {
        let &(deadline, tag) = self.pending_deadlines.first()?;
        if deadline > now {
            return None;
        }
        self.pending_deadlines.pop_first();
        self.pending.remove(&tag).map(|pending| (tag, pending))
    }

    /// Encodes one response for writing.
    pub(super) fn respond(&mut self, request_id: u64, result: Result<ResponseBody, ServerError>) {
        let frame = ResponseFrame { request_id, result };
        if let Err(error) = write_frame(&frame, &mut self.output) {
            // Only a response past the frame limit can fail; say so instead.
            let fallback = ResponseFrame {
                request_id,
                result: Err(ServerError::Unavailable {
                    reason: format!("response cannot be sent: {error}"),
                }),
            };
            if write_frame(&fallback, &mut self.output).is_err() {
                log::error("cannot encode a response", &[("request_id", &request_id)]);
            }
        }
        self.dirty = true;
    }

    /// Writes as much output as the socket takes. A failure marks the connection broken.
    pub(super) fn write(&mut self, now: Instant) {
        self.dirty = false;
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => {
                    self.broken = true;
                    return;
                }
                Ok(count) => {
                    self.written += count;
                    self.write_blocked_since = None;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    self.write_blocked_since.get_or_insert(now);
                    return;
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    log::debug(
                        "client connection write failed",
                        &[("remote", &self.remote), ("error", &error)],
                    );
                    self.broken = true;
                    return;
                }
            }
        }
        self.output.clear();
        self.written = 0;
        self.write_blocked_since = None;
        if self.output.capacity() > OUTPUT_RETAINED_BYTES_MAX {
            self.output = Vec::new();
        }
    }

    /// Whether output is waiting to be written.
    pub(super) fn has_output(&self) -> bool {
        self.written < self.output.len()
    }

    /// Whether the connection is done: broken, or draining with nothing left to answer or write.
    pub(super) fn finished(&self) -> bool {
        self.broken || (self.draining && self.pending.is_empty() && !self.has_output())
    }

    /// The client has not taken output for `write_timeout`: give up on it.
    pub(super) fn write_stalled(&self, now: Instant, write_timeout: Duration) -> bool {
        self.write_blocked_since
            .is_some_and(|since| now.saturating_duration_since(since) >= write_timeout)
    }

    /// The next instant something about this connection is due: a request's deadline, its
    /// idle or frame deadline, a budget retry, the write timeout.
    pub(super) fn next_due(&self, write_timeout: Duration) -> Option<Instant> {
        let mut due = self
            .pending_deadlines
            .first()
            .map(|(deadline, _)| *deadline);
        let mut consider = |instant: Option<Instant>| {
            if let Some(instant) = instant {
                due = Some(due.map_or(instant, |current| current.min(instant)));
            }
        };
        if !self.draining {
            consider(Some(self.deadlines.next_deadline()));
            consider(self.budget_retry_at);
        }
        consider(self.write_blocked_since.map(|since| since + write_timeout));
        due
    }
}
