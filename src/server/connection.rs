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
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use rustls::ServerConnection;

use crate::kv::ReadRequest;
use crate::log;
use crate::protocol::budget::ByteBudget;
use crate::protocol::{
    write_frame, Filled, FrameAssembler, FrameError, ResponseBody, ResponseFrame, ServerError,
};

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
    /// A lease request: a read point's completion, then the lease keeper serves it.
    Lease(super::leases::LeaseRequest),
    /// A watch that starts at a linearizable point: a read point's completion, then the
    /// watch is opened.
    Watch(crate::protocol::WatchRequest),
    /// A password verification on the auth thread.
    Auth,
}

/// What the server remembers of a request until it is answered: its id, and for the
/// metrics its kind and when it arrived.
#[derive(Clone, Copy, Debug)]
pub(super) struct Request {
    pub(super) id: u64,
    pub(super) operation: &'static str,
    pub(super) arrived: Instant,
}

/// A request submitted and not yet answered.
pub(super) struct Pending {
    pub(super) request: Request,
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
    /// The TLS session over `stream`, on a TLS port: records in and out of the socket,
    /// plaintext frames in and out of `frames` and `output`.
    tls: Option<Box<ServerConnection>>,
    /// TLS records arrived that gave no plaintext yet (part of a record): counts as a frame
    /// begun, so a sender trickling a record meets the frame deadline.
    tls_undecrypted: bool,
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
    /// The watches open on this connection (their ids), served by the loop's `Watches`.
    pub(super) watches: BTreeSet<u64>,
    /// Who the connection is (auth).
    pub(super) auth: super::auth::ConnectionAuth,
}

impl Connection {
    pub(super) fn new(
        stream: TcpStream,
        tls: Option<ServerConnection>,
        remote: String,
        budget: Arc<ByteBudget>,
        now: Instant,
        idle_timeout: Duration,
        frame_timeout: Duration,
    ) -> Connection {
        Connection {
            stream,
            tls: tls.map(Box::new),
            tls_undecrypted: false,
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
            watches: BTreeSet::new(),
            auth: super::auth::ConnectionAuth::default(),
        }
    }

    /// Looks up, once, the common name of the verified client certificate (after the TLS
    /// handshake), as the connection's fallback identity.
    pub(super) fn resolve_certificate_user(&mut self) {
        if self.auth.certificate_user.is_some() {
            return;
        }
        let Some(tls) = &self.tls else {
            self.auth.certificate_user = Some(None);
            return;
        };
        if tls.is_handshaking() {
            return;
        }
        let name = tls
            .peer_certificates()
            .and_then(|certificates| certificates.first())
            .and_then(|certificate| super::auth::common_name(certificate.as_ref()));
        self.auth.certificate_user = Some(name);
    }

    /// Whether the connection has requests in flight or watches open: it is not idle.
    pub(super) fn busy(&self) -> bool {
        !self.pending.is_empty() || !self.watches.is_empty()
    }

    /// Whether watch events may be added to the output now: the client is reading (no more
    /// than [`OUTPUT_BYTES_HIGH`] unwritten) and the connection is not closing.
    pub(super) fn takes_watch_output(&self) -> bool {
        !self.draining && !self.broken && self.output.len() - self.written <= OUTPUT_BYTES_HIGH
    }

    /// Whether the connection may take another request now.
    pub(super) fn accepts_requests(&self, inflight_max: usize) -> bool {
        !self.draining
            && !self.broken
            && !self.auth.authenticating
            && self.pending.len() < inflight_max
            && self.output.len() - self.written <= OUTPUT_BYTES_HIGH
    }

    /// Registers a request in flight.
    pub(super) fn register(
        &mut self,
        tag: u64,
        request: Request,
        deadline: Instant,
        kind: PendingKind,
    ) {
        self.pending.insert(
            tag,
            Pending {
                request,
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

    /// Reads once from the socket (through TLS on a TLS port) into the frame assembler.
    pub(super) fn read_some(&mut self, scratch: &mut [u8]) -> Result<Filled, FrameError> {
        match &mut self.tls {
            None => self.frames.read_from(&mut self.stream, scratch),
            Some(tls) => self.frames.read_from(
                &mut TlsSource {
                    tls,
                    stream: &mut self.stream,
                    undecrypted: &mut self.tls_undecrypted,
                },
                scratch,
            ),
        }
    }

    /// Whether part of a request is being received: a partial frame, a TLS handshake, or a
    /// TLS record not yet whole.
    pub(super) fn receiving(&self) -> bool {
        self.frames.has_partial()
            || self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.is_handshaking() || self.tls_undecrypted)
    }

    /// Writes as much output as the socket takes (through TLS on a TLS port). A failure marks
    /// the connection broken.
    pub(super) fn write(&mut self, now: Instant) {
        self.dirty = false;
        let outcome = match &mut self.tls {
            None => write_plain(&mut self.stream, &self.output, &mut self.written),
            Some(tls) => write_tls(tls, &mut self.stream, &self.output, &mut self.written),
        };
        match outcome {
            Ok(Written::All) => {
                self.output.clear();
                self.written = 0;
                self.write_blocked_since = None;
                if self.output.capacity() > OUTPUT_RETAINED_BYTES_MAX {
                    self.output = Vec::new();
                }
            }
            Ok(Written::Blocked) => {
                self.writable = false;
                self.write_blocked_since.get_or_insert(now);
            }
            Ok(Written::Waiting) => self.write_blocked_since = None,
            Err(error) => {
                log::debug(
                    "client connection write failed",
                    &[("remote", &self.remote), ("error", &error)],
                );
                self.broken = true;
            }
        }
    }

    /// Whether output is waiting to be written.
    pub(super) fn has_output(&self) -> bool {
        self.written < self.output.len() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Says goodbye on a TLS session (best effort) before the socket closes.
    pub(super) fn close_tls(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.stream);
        }
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

/// How far a write got.
enum Written {
    /// Everything was written.
    All,
    /// The socket takes no more now.
    Blocked,
    /// TLS holds the rest until its handshake completes (driven by reading).
    Waiting,
}

fn write_plain(
    stream: &mut TcpStream,
    output: &[u8],
    written: &mut usize,
) -> std::io::Result<Written> {
    while *written < output.len() {
        match stream.write(&output[*written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(count) => *written += count,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(Written::Blocked)
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Written::All)
}

/// Hands plaintext to the TLS session (which buffers a bounded amount) and its records to
/// the socket, until both are drained or the socket is full.
fn write_tls(
    tls: &mut ServerConnection,
    stream: &mut TcpStream,
    output: &[u8],
    written: &mut usize,
) -> std::io::Result<Written> {
    loop {
        let mut accepted = 0;
        if *written < output.len() {
            accepted = tls.writer().write(&output[*written..])?;
            *written += accepted;
        }
        if tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(Written::Blocked)
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        } else if *written == output.len() {
            return Ok(Written::All);
        } else if accepted == 0 {
            return Ok(Written::Waiting);
        }
    }
}

/// The plaintext of a TLS session over a non-blocking socket, as a `Read`: takes records
/// from the socket as needed, answers the handshake, and reports `WouldBlock` when the
/// socket has nothing more.
struct TlsSource<'a> {
    tls: &'a mut ServerConnection,
    stream: &'a mut TcpStream,
    undecrypted: &'a mut bool,
}

impl Read for TlsSource<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.tls.reader().read(buffer) {
                Ok(count) => {
                    if count > 0 {
                        *self.undecrypted = false;
                    }
                    // 0: the client said close_notify.
                    return Ok(count);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: the end of the stream all the same
                // (a partial frame is reported as truncated by the caller).
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
            match self.tls.read_tls(self.stream) {
                Ok(0) => return Ok(0),
                Ok(_) => *self.undecrypted = true,
                Err(error) => return Err(error),
            }
            if let Err(error) = self.tls.process_new_packets() {
                // Tell the client why (an alert), then give up on the connection.
                let _ = self.tls.write_tls(self.stream);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("TLS: {error}"),
                ));
            }
            // Handshake messages go out now if the socket takes them; what it does not
            // take is written when it becomes writable (the connection has output).
            while self.tls.wants_write() {
                if self.tls.write_tls(self.stream).is_err() {
                    break;
                }
            }
        }
    }
}
