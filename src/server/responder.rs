//! One client connection's writer thread: collects the outcomes of the connection's requests
//! (from the reader and from the node's completions), enforces their deadlines, and writes
//! every response ready at once with one call.
//!
//! A write whose outcome is still unknown at its deadline is answered
//! [`ServerError::Indeterminate`] — it may yet commit — and a linearizable read that is not
//! confirmed in time is answered [`ServerError::ReadTimeout`]. A completion arriving after
//! its request was answered is ignored.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use parking_lot::Mutex;

use crate::error::ProposeError;
use crate::kv::{ReadRequest, Response};
use crate::log;
use crate::node::{ProposalCompletion, ReadCompletion};

use super::{connection, connection_closed, Shared};
use crate::protocol::{write_frame, ReadReply, ResponseBody, ResponseFrame, ServerError};

/// What a request waits for in the node.
pub(super) enum PendingKind {
    /// A proposal's completion.
    Write,
    /// A read barrier's completion; then the read is served.
    Read(ReadRequest),
}

/// Requests submitted to the node and not yet answered, shared by the reader (which
/// registers each before submitting it, without waking the writer) and the writer.
#[derive(Default)]
pub(super) struct PendingTable {
    requests: HashMap<u64, Pending>,
    /// `(deadline, tag)` of every request in `requests`, so both stay bounded by the
    /// connection's in-flight limit.
    deadlines: BTreeSet<(Instant, u64)>,
    /// When the writer will next wake on its own; a request due earlier must wake it.
    writer_wakes_at: Option<Instant>,
}

impl PendingTable {
    /// Registers a request about to be submitted under `tag`. Returns whether the writer must
    /// be woken to honour its deadline.
    pub(super) fn register(
        &mut self,
        tag: u64,
        request_id: u64,
        deadline: Instant,
        kind: PendingKind,
    ) -> bool {
        self.requests.insert(
            tag,
            Pending {
                request_id,
                deadline,
                kind,
            },
        );
        self.deadlines.insert((deadline, tag));
        self.writer_wakes_at.is_none_or(|wake| deadline < wake)
    }
}

/// From the reader to the writer.
pub(super) enum Event {
    /// A request with an early deadline was registered: recompute the wake-up time.
    Wake,
    /// The submission of `tag` failed: answer it with `result`.
    Finish {
        tag: u64,
        result: Result<ResponseBody, ServerError>,
    },
    /// A request answered at once.
    Respond(ResponseFrame),
}

/// The writer's inputs.
pub(super) struct Channels {
    pub(super) pending: Arc<Mutex<PendingTable>>,
    pub(super) events: Receiver<Event>,
    pub(super) proposals: Receiver<ProposalCompletion>,
    pub(super) reads: Receiver<ReadCompletion>,
    /// Taken by the reader per request; the writer returns one per response.
    pub(super) permits: Receiver<()>,
}

struct Pending {
    request_id: u64,
    deadline: Instant,
    kind: PendingKind,
}

/// How long the writer sleeps when nothing it waits for has a deadline.
const IDLE_WAKE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Completions handled per wake before writing, so a flood cannot starve the socket.
const DRAIN_BATCH_MAX: usize = 4096;

struct Responder<'a> {
    shared: &'a Shared,
    channels: Channels,
    out: Vec<u8>,
    reader_done: bool,
    /// A completion channel with no sender left (the reader is gone and nothing of that kind
    /// is in flight) stays disconnected for good: it is no longer selected on, or `select!`
    /// would return at once, forever.
    proposals_closed: bool,
    reads_closed: bool,
}

pub(super) fn run(shared: &Shared, mut stream: TcpStream, remote: &str, channels: Channels) {
    let mut responder = Responder {
        shared,
        channels,
        out: Vec::with_capacity(64 * 1024),
        reader_done: false,
        proposals_closed: false,
        reads_closed: false,
    };
    loop {
        responder.wait_and_drain();
        responder.expire(Instant::now());
        if !responder.out.is_empty() {
            if let Err(error) = stream.write_all(&responder.out) {
                log::debug(
                    "client connection write failed",
                    &[("remote", &remote), ("error", &error)],
                );
                break;
            }
            responder.out.clear();
        }
        if responder.reader_done && responder.channels.pending.lock().requests.is_empty() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    connection_closed(shared);
}

impl Responder<'_> {
    /// Waits for anything (or the nearest deadline), then handles everything ready.
    fn wait_and_drain(&mut self) {
        let (never_events, never_proposals, never_reads) = (
            crossbeam_channel::never(),
            crossbeam_channel::never(),
            crossbeam_channel::never(),
        );
        let events = if self.reader_done {
            &never_events
        } else {
            &self.channels.events
        };
        let proposals = if self.proposals_closed {
            &never_proposals
        } else {
            &self.channels.proposals
        };
        let reads = if self.reads_closed {
            &never_reads
        } else {
            &self.channels.reads
        };
        let now = Instant::now();
        let wake_at = {
            let mut table = self.channels.pending.lock();
            let wake_at = table
                .deadlines
                .first()
                .map(|(deadline, _)| *deadline)
                .unwrap_or(now + IDLE_WAKE_INTERVAL);
            table.writer_wakes_at = Some(wake_at);
            wake_at
        };
        let timeout = wake_at.saturating_duration_since(now);
        crossbeam_channel::select! {
            recv(events) -> event => match event {
                Ok(event) => self.on_event(event),
                Err(_) => self.reader_done = true,
            },
            recv(proposals) -> completion => match completion {
                Ok(completion) => self.on_proposal(completion),
                Err(_) => self.proposals_closed = true,
            },
            recv(reads) -> completion => match completion {
                Ok(completion) => self.on_read(completion),
                Err(_) => self.reads_closed = true,
            },
            default(timeout) => {},
        }
        for _ in 0..DRAIN_BATCH_MAX {
            let mut progressed = false;
            if !self.reader_done {
                match self.channels.events.try_recv() {
                    Ok(event) => {
                        self.on_event(event);
                        progressed = true;
                    }
                    Err(TryRecvError::Disconnected) => self.reader_done = true,
                    Err(TryRecvError::Empty) => {}
                }
            }
            if let Ok(completion) = self.channels.proposals.try_recv() {
                self.on_proposal(completion);
                progressed = true;
            }
            if let Ok(completion) = self.channels.reads.try_recv() {
                self.on_read(completion);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Wake => {}
            Event::Finish { tag, result } => {
                if let Some(pending) = self.take_pending(tag) {
                    self.respond(pending.request_id, result);
                }
            }
            Event::Respond(frame) => self.respond(frame.request_id, frame.result),
        }
    }

    fn take_pending(&mut self, tag: u64) -> Option<Pending> {
        let mut table = self.channels.pending.lock();
        let pending = table.requests.remove(&tag)?;
        table.deadlines.remove(&(pending.deadline, tag));
        Some(pending)
    }

    fn on_proposal(&mut self, completion: ProposalCompletion) {
        let Some(pending) = self.take_pending(completion.tag) else {
            return; // answered already (deadline): ignore the late outcome
        };
        let result = match completion.outcome {
            Ok(bytes) => match Response::decode(&bytes) {
                Ok(response) => Ok(ResponseBody::Written(response)),
                Err(error) => Err(ServerError::Indeterminate {
                    reason: format!("applied, but the response does not decode: {error}"),
                }),
            },
            Err(ProposeError::Dropped) => Err(ServerError::Dropped),
            Err(ProposeError::Busy { reason }) => Err(ServerError::Busy {
                reason: reason.to_string(),
            }),
            Err(error) => Err(ServerError::Indeterminate {
                reason: error.to_string(),
            }),
        };
        self.respond(pending.request_id, result);
    }

    fn on_read(&mut self, completion: ReadCompletion) {
        let Some(pending) = self.take_pending(completion.tag) else {
            return;
        };
        let PendingKind::Read(request) = &pending.kind else {
            debug_assert!(false, "a read completion for a write");
            return;
        };
        let shared = self.shared;
        let result = match completion.outcome {
            Ok(applied) => shared
                .node
                .with_state_machine(|kv| kv.read(request))
                .map(|response| {
                    ResponseBody::Read(ReadReply {
                        response,
                        node: shared.node.id(),
                        applied,
                        behind: 0,
                    })
                })
                .map_err(ServerError::Invalid),
            Err(error) => Err(connection::read_error(error, |hint| {
                ServerError::NotLeader {
                    leader_id: hint,
                    leader_client_address: hint.and_then(|leader| shared.client_address(leader)),
                }
            })),
        };
        self.respond(pending.request_id, result);
    }

    /// Answers every request whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        loop {
            let expired = {
                let mut table = self.channels.pending.lock();
                match table.deadlines.first().copied() {
                    Some((deadline, tag)) if deadline <= now => {
                        table.deadlines.pop_first();
                        table.requests.remove(&tag)
                    }
                    _ => break,
                }
            };
            let Some(pending) = expired else {
                continue;
            };
            let error = match pending.kind {
                PendingKind::Write => ServerError::Indeterminate {
                    reason: "deadline passed before the write's outcome was known".into(),
                },
                PendingKind::Read(_) => ServerError::ReadTimeout,
            };
            self.respond(pending.request_id, Err(error));
        }
    }

    /// Encodes one response and returns the request's permit.
    fn respond(&mut self, request_id: u64, result: Result<ResponseBody, ServerError>) {
        let frame = ResponseFrame { request_id, result };
        if let Err(error) = write_frame(&frame, &mut self.out) {
            // Only a response past the frame limit can fail; say so instead.
            let fallback = ResponseFrame {
                request_id,
                result: Err(ServerError::Unavailable {
                    reason: format!("response cannot be sent: {error}"),
                }),
            };
            if write_frame(&fallback, &mut self.out).is_err() {
                log::error("cannot encode a response", &[("request_id", &request_id)]);
            }
        }
        let _ = self.channels.permits.try_recv();
    }
}
