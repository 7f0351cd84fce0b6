//! One client connection's reader thread: decodes request frames and hands each to the node
//! without waiting for its outcome.
//!
//! Writes and linearizable reads are submitted with a tag; their completions go straight to
//! the connection's writer ([`super::responder`]). The reader registers each request in the
//! shared [`PendingTable`] before submitting it — so a completion never arrives for a request
//! the writer does not know — and wakes the writer only when the new request is due before
//! the writer's planned wake-up (one futex wake per request saved under load). Stale reads,
//! status requests and refusals are answered at once through the same writer. Lease reads
//! wait (briefly, bounded by the request's deadline) for the lease's read point to apply.
//!
//! Between frames the reader judges the connection's time ([`ConnectionDeadlines`]): it closes
//! a connection idle past the idle timeout, or one whose frame is not whole by the frame
//! deadline. A frame larger than the read buffer is read only under a reservation from the
//! server's request-buffer budget ([`super::budget`]); while none is to be had, the reader
//! waits instead of reading.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::error::{ProposeError, ReadError};
use crate::kv::{KvError, ReadRequest};
use crate::log;
use crate::node::{ProposalCompletion, ReadCompletion};
use crate::types::NodeId;

use super::deadlines::{ConnectionDeadlines, Expired};
use super::responder::{self, Event, PendingKind, PendingTable};
use super::snapshot::SnapshotPin;
use super::{admin, Shared, POLL_INTERVAL, REQUEST_TIMEOUT_MAX};
use crate::protocol::{
    Consistency, Filled, FrameError, FrameReader, ReadReply, RequestBody, RequestFrame,
    ResponseBody, ResponseFrame, ServerError, SnapshotRequested, StatusReply,
};

/// Spawns the reader and writer threads of one accepted connection. The connection counts as
/// closed once the writer ends (it calls `connection_closed`); if it fails before the writer
/// starts, it counts as closed here — either way exactly once.
pub(super) fn spawn(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: String,
    number: u64,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let closed_here = Arc::clone(&shared);
    spawn_threads(shared, stream, remote, number)
        .inspect_err(|error| {
            if !error.writer_ran {
                super::connection_closed(&closed_here);
            }
        })
        .map_err(|error| error.source)
}

/// Why the threads of a connection could not start, and whether its writer ran (and so
/// already counted the connection closed).
struct SpawnError {
    source: std::io::Error,
    writer_ran: bool,
}

fn spawn_threads(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: String,
    number: u64,
) -> Result<Vec<JoinHandle<()>>, SpawnError> {
    let before_writer = |source| SpawnError {
        source,
        writer_ran: false,
    };
    let id = shared.node.id();
    let inflight_max = shared.options.inflight_per_connection_max;
    stream.set_nodelay(true).map_err(before_writer)?;
    stream
        .set_read_timeout(Some(POLL_INTERVAL))
        .map_err(before_writer)?;
    let write_stream = stream.try_clone().map_err(before_writer)?;
    // A client that stops reading must not pin the writer (and shutdown) forever.
    write_stream
        .set_write_timeout(Some(shared.options.write_timeout))
        .map_err(before_writer)?;
    let (events_tx, events_rx) = crossbeam_channel::bounded(inflight_max);
    let pending = Arc::new(Mutex::new(PendingTable::default()));
    let (permits_tx, permits_rx) = crossbeam_channel::bounded(inflight_max);
    // Room for every request in flight plus late completions of requests that timed out.
    let (proposals_tx, proposals_rx) = crossbeam_channel::bounded(2 * inflight_max + 16);
    let (reads_tx, reads_rx) = crossbeam_channel::bounded(2 * inflight_max + 16);
    let writer_shared = Arc::clone(&shared);
    let writer_pending = Arc::clone(&pending);
    let writer_remote = remote.clone();
    let writer = std::thread::Builder::new()
        .name(format!("{id}-client-write-{number}"))
        .spawn(move || {
            responder::run(
                &writer_shared,
                write_stream,
                &writer_remote,
                responder::Channels {
                    pending: writer_pending,
                    events: events_rx,
                    proposals: proposals_rx,
                    reads: reads_rx,
                    permits: permits_rx,
                },
            )
        })
        .map_err(before_writer)?;
    let reader = Reader {
        shared,
        pending,
        remote,
        events: events_tx,
        permits: permits_tx,
        proposals: proposals_tx,
        reads: reads_tx,
        next_tag: 1,
        writes: Vec::new(),
        snapshot_pin: SnapshotPin::default(),
        number,
    };
    let reader = std::thread::Builder::new()
        .name(format!("{id}-client-read-{number}"))
        .spawn(move || reader.run(stream));
    match reader {
        Ok(reader) => Ok(vec![reader, writer]),
        Err(source) => {
            // The writer ends once its events sender (dropped with the closure) is gone.
            let _ = writer.join();
            Err(SpawnError {
                source,
                writer_ran: true,
            })
        }
    }
}

/// The writer has gone away; stop reading.
struct WriterGone;

/// Why the reader closes its connection.
enum Close {
    /// Garbage, a truncated frame, an oversized length prefix, a payload that is not a request.
    BadInput(FrameError),
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

struct Reader {
    shared: Arc<Shared>,
    /// Requests submitted and not yet answered (shared with the writer).
    pending: Arc<Mutex<PendingTable>>,
    remote: String,
    events: Sender<Event>,
    /// One permit per request in flight; full means stop reading (back-pressure).
    permits: Sender<()>,
    proposals: Sender<ProposalCompletion>,
    reads: Sender<ReadCompletion>,
    next_tag: u64,
    /// Writes decoded from the buffer, submitted together when it is drained (or before the
    /// next read, to keep this connection's order): one core lock, one AppendEntries per
    /// follower and one fsync batch for all of them.
    writes: Vec<(Vec<u8>, u64)>,
    /// The snapshot this connection is downloading, if any.
    snapshot_pin: SnapshotPin,
    /// The connection's number, for the names of its threads.
    number: u64,
}

impl Reader {
    fn run(mut self, mut stream: TcpStream) {
        let budget = Arc::clone(&self.shared.request_buffer);
        let mut frames = FrameReader::with_budget(Arc::clone(&budget));
        let options = &self.shared.options;
        let mut deadlines =
            ConnectionDeadlines::new(Instant::now(), options.idle_timeout, options.frame_timeout);
        let reason = loop {
            // Serve every whole frame buffered before reading more.
            match frames.next_buffered::<RequestFrame>() {
                Ok(Some(frame)) => {
                    if self.handle(frame).is_err() {
                        break None;
                    }
                    continue;
                }
                Ok(None) => {
                    if self.flush_writes().is_err() {
                        break None;
                    }
                }
                Err(error) => break Some(Close::BadInput(error)),
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                break None;
            }
            let now = Instant::now();
            // A permit is held by every request not yet answered.
            deadlines.observe(now, frames.has_partial(), !self.permits.is_empty());
            if let Some(expired) = deadlines.expired(now) {
                break Some(Close::Expired(expired));
            }
            match frames.fill(&mut stream) {
                Ok(Filled::Bytes) => deadlines.received(Instant::now()),
                Ok(Filled::End) if frames.has_partial() => {
                    break Some(Close::BadInput(FrameError::Truncated {
                        buffered: frames.buffered(),
                    }));
                }
                Ok(Filled::End) => break None,
                // Stop reading (TCP slows the client) until room is released; the frame's
                // deadline keeps running.
                Ok(Filled::WaitingForBudget { bytes }) => {
                    let until_deadline = deadlines
                        .next_deadline()
                        .saturating_duration_since(Instant::now());
                    budget.wait_for_room(bytes, POLL_INTERVAL.min(until_deadline));
                }
                Err(FrameError::Io(error))
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(FrameError::Io(error)) => break Some(Close::Io(error)),
                Err(error) => break Some(Close::BadInput(error)),
            }
        };
        // Return the frame's reservation now, not when the writer is done.
        drop(frames);
        // Writes decoded before the connection ended were received whole: submit them.
        let _ = self.flush_writes();
        if let Some(reason) = reason {
            let counter = match &reason {
                Close::BadInput(_) => Some(&self.shared.connections_closed_bad_input),
                Close::Expired(Expired::Idle { .. }) => Some(&self.shared.connections_closed_idle),
                Close::Expired(Expired::SlowFrame { .. }) => {
                    Some(&self.shared.connections_closed_slow)
                }
                Close::Io(_) => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            log::info(
                "closing client connection",
                &[("remote", &self.remote), ("reason", &reason)],
            );
            // Stop reading; the writer answers what is in flight and closes the socket.
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        // Dropping `self.events` tells the writer that no request follows.
    }

    /// Submits the writes collected so far as one batch.
    fn flush_writes(&mut self) -> Result<(), WriterGone> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.writes);
        let outcomes = self.shared.node.submit_proposals(batch, &self.proposals);
        for (tag, outcome) in outcomes {
            if let Err(error) = outcome {
                let error = self.submit_error(error);
                self.events
                    .send(Event::Finish {
                        tag,
                        result: Err(error),
                    })
                    .map_err(|_| WriterGone)?;
            }
        }
        Ok(())
    }

    /// Takes a permit and serves or submits one request.
    fn handle(&mut self, frame: RequestFrame) -> Result<(), WriterGone> {
        match self.permits.try_send(()) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(())) => {
                // Every permit is held, some by writes collected here and not yet proposed:
                // submit them before waiting, or their permits would never come back.
                self.flush_writes()?;
                self.permits.send(()).map_err(|_| WriterGone)?;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(())) => return Err(WriterGone),
        }
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        // Every request not yet answered holds a permit, this one included.
        self.shared
            .requests_in_flight_max
            .fetch_max(self.permits.len() as u64, Ordering::Relaxed);
        let timeout = match frame.timeout_ms {
            0 => self.shared.options.request_timeout_default,
            millis => Duration::from_millis(millis).min(REQUEST_TIMEOUT_MAX),
        };
        let deadline = Instant::now() + timeout;
        let request_id = frame.request_id;
        match frame.body {
            RequestBody::Write(command) => {
                let bytes = match command.encode() {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        return self.respond(request_id, Err(ServerError::Invalid(error)))
                    }
                };
                let tag = self.submitted(request_id, deadline, PendingKind::Write)?;
                self.writes.push((bytes, tag));
                Ok(())
            }
            RequestBody::Read {
                request,
                consistency,
            } => {
                self.flush_writes()?;
                if let Err(error) = request.validate() {
                    return self.respond(request_id, Err(ServerError::Invalid(error)));
                }
                match consistency {
                    Consistency::Linearizable => {
                        self.read_linearizable(request_id, deadline, request)
                    }
                    Consistency::Lease => {
                        let result = self.read_lease(deadline, &request);
                        self.respond(request_id, result)
                    }
                    Consistency::Stale => {
                        let result = self.read_stale(&request);
                        self.respond(request_id, result)
                    }
                }
            }
            RequestBody::Status => {
                let status = self.status();
                self.respond(request_id, Ok(ResponseBody::Status(status)))
            }
            RequestBody::TakeSnapshot => {
                let node = &self.shared.node;
                let previous = node.latest_snapshot().map(|snapshot| snapshot.meta.last);
                let applied = node.status().applied;
                node.request_snapshot();
                let requested = SnapshotRequested {
                    node: node.id(),
                    applied,
                    previous,
                };
                self.respond(request_id, Ok(ResponseBody::SnapshotRequested(requested)))
            }
            RequestBody::SnapshotChunk { last, offset } => {
                let node = &self.shared.node;
                let result = self
                    .snapshot_pin
                    .chunk(|| node.latest_snapshot(), last, offset)
                    .map(ResponseBody::SnapshotChunk);
                self.respond(request_id, result)
            }
            RequestBody::Members => {
                let result = admin::members(&self.shared);
                self.respond(request_id, result)
            }
            body @ (RequestBody::AddMember { .. }
            | RequestBody::PromoteMember { .. }
            | RequestBody::RemoveMember { .. }
            | RequestBody::TransferLeader { .. }) => {
                // Earlier writes of this connection go first.
                self.flush_writes()?;
                match admin::spawn(
                    &self.shared,
                    &self.events,
                    request_id,
                    deadline,
                    body,
                    self.number,
                ) {
                    Ok(()) => Ok(()),
                    Err(refusal) => self.respond(request_id, Err(refusal)),
                }
            }
        }
    }

    /// Tells the writer about a request about to be submitted; returns its tag.
    fn submitted(
        &mut self,
        request_id: u64,
        deadline: Instant,
        kind: PendingKind,
    ) -> Result<u64, WriterGone> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let wake = self
            .pending
            .lock()
            .register(tag, request_id, deadline, kind);
        if wake {
            // A full queue means the writer has work and recomputes its wake-up anyway.
            if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                self.events.try_send(Event::Wake)
            {
                return Err(WriterGone);
            }
        }
        Ok(tag)
    }

    fn respond(
        &self,
        request_id: u64,
        result: Result<ResponseBody, ServerError>,
    ) -> Result<(), WriterGone> {
        self.events
            .send(Event::Respond(ResponseFrame { request_id, result }))
            .map_err(|_| WriterGone)
    }

    fn read_linearizable(
        &mut self,
        request_id: u64,
        deadline: Instant,
        request: ReadRequest,
    ) -> Result<(), WriterGone> {
        let tag = self.submitted(request_id, deadline, PendingKind::Read(request))?;
        if let Err(error) = self.shared.node.submit_read(tag, &self.reads) {
            let error = self.read_error(error);
            self.events
                .send(Event::Finish {
                    tag,
                    result: Err(error),
                })
                .map_err(|_| WriterGone)?;
        }
        Ok(())
    }

    fn read_lease(
        &self,
        deadline: Instant,
        request: &ReadRequest,
    ) -> Result<ResponseBody, ServerError> {
        let index = self
            .shared
            .node
            .lease_barrier(deadline)
            .map_err(|error| self.read_error(error))?;
        let response = self
            .shared
            .node
            .with_state_machine(|kv| kv.read(request))
            .map_err(ServerError::Invalid)?;
        Ok(ResponseBody::Read(ReadReply {
            response,
            node: self.shared.node.id(),
            applied: index,
            behind: 0,
        }))
    }

    fn read_stale(&self, request: &ReadRequest) -> Result<ResponseBody, ServerError> {
        // A failed node's state may be arbitrarily old and will not catch up: refuse.
        if let Some(reason) = self.shared.node.failure() {
            return Err(ServerError::Unavailable {
                reason: format!("storage failed: {reason}"),
            });
        }
        let committed = self.shared.node.status().committed;
        let (applied, response) = self.shared.node.read_local(|kv| kv.read(request));
        let response = response.map_err(ServerError::Invalid)?;
        Ok(ResponseBody::Read(ReadReply {
            response,
            node: self.shared.node.id(),
            applied,
            behind: committed.0.saturating_sub(applied.0),
        }))
    }

    fn status(&self) -> StatusReply {
        let status = self.shared.node.status();
        StatusReply {
            id: status.id,
            role: status.role,
            term: status.term,
            leader: status.leader,
            leader_client_address: status
                .leader
                .and_then(|leader| self.shared.client_address(leader)),
            committed: status.committed,
            applied: status.applied,
            last_index: status.last_index,
            client_address: self.shared.advertised.clone(),
            failed: status.failed,
            snapshot: self
                .shared
                .node
                .latest_snapshot()
                .map(|snapshot| snapshot.meta.last),
        }
    }

    fn not_leader(&self, leader_hint: Option<NodeId>) -> ServerError {
        ServerError::NotLeader {
            leader_id: leader_hint,
            leader_client_address: leader_hint
                .and_then(|leader| self.shared.client_address(leader)),
        }
    }

    /// Maps a refusal at submission: nothing was appended.
    fn submit_error(&self, error: ProposeError) -> ServerError {
        match error {
            ProposeError::NotLeader { leader_hint } => self.not_leader(leader_hint),
            ProposeError::Busy { reason } => ServerError::Busy {
                reason: reason.to_string(),
            },
            ProposeError::TooLarge { bytes, limit } => {
                ServerError::Invalid(KvError::CommandTooLarge {
                    bytes: bytes as usize,
                    limit: limit as usize,
                })
            }
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

    fn read_error(&self, error: ReadError) -> ServerError {
        read_error(error, |hint| self.not_leader(hint))
    }
}

/// Maps a read failure; `not_leader` builds the redirect.
pub(super) fn read_error(
    error: ReadError,
    not_leader: impl FnOnce(Option<NodeId>) -> ServerError,
) -> ServerError {
    match error {
        ReadError::NotLeader { leader_hint } => not_leader(leader_hint),
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
