//! The client server's I/O threads: each runs one event loop over many non-blocking
//! connections (mio: epoll on Linux), with no thread per connection.
//!
//! ```text
//!   [n1-client-accept] ──(socket, wake)──► [n1-client-io-K] one mio::Poll:
//!                                             readiness ─► read frames ─► serve or submit
//!   node threads ──(completion, wake)──────►   completions ─► encode responses
//!   [n1-client-admin-J] ──(answer, wake)───►   timers ─► deadlines: Indeterminate,
//!                                               ReadTimeout, idle, slow frame, stalled writes
//!                                             then write every connection with output
//! ```
//!
//! One iteration: wait for readiness, a wake-up or the nearest timer; take new connections;
//! drain the completions of the node and the admin threads into their connections' output;
//! read every readable connection until it would block or may take no more requests, serving
//! what can be served at once and collecting writes; submit the writes of **all** connections
//! read in this iteration as one batch (one core lock, one AppendEntries per follower, one
//! fsync batch — a connection's order is kept because a read or an admin request of a
//! connection first submits the writes collected before it); fire due timers; write.
//!
//! Completions reach the loop through unbounded channels (bounded in practice by the
//! requests in flight) whose senders carry a [`Wake`]: a flag and an eventfd write, once
//! per burst, not per completion. The loop never blocks on anything but `epoll_wait`, except
//! for the brief core and state-machine locks every request takes.

mod requests;

pub(super) use requests::{propose_error, read_error};

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::error::{ProposeError, ReadError};
use crate::kv::Response;
use crate::log;
use crate::node::{CompletionSender, ProposalCompletion, ReadCompletion, Wake};
use crate::protocol::{Filled, FrameError, ReadReply, RequestFrame, ResponseBody, ServerError};
use crate::types::LogIndex;

use super::connection::{Close, Connection, PendingKind, Request, BUDGET_RETRY};
use super::deadlines::Expired;
use super::watch::{WatchKey, WatchSignal, Watches, CHECK_INTERVAL};
use super::{connection_closed, Shared};

/// The token of a loop's waker; connections use their slab keys, which never reach it.
const WAKE_TOKEN: Token = Token(usize::MAX);

/// The longest a loop sleeps without looking at the stop flag.
const POLL_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// How often the TLS files are looked at for a new certificate.
const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Readiness events taken per wait.
const EVENTS_CAPACITY: usize = 1024;

/// The size of the loop's read buffer (shared by its connections).
const SCRATCH_BYTES: usize = crate::protocol::READ_BUFFER_BYTES;

/// Wakes a loop from `epoll_wait`, once per burst: the flag is cleared by the loop before it
/// drains its channels, so a send after the drain began wakes it again.
pub(super) struct LoopWaker {
    waker: Waker,
    pending: AtomicBool,
}

impl Wake for LoopWaker {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Err(error) = self.waker.wake() {
                log::error("cannot wake a client event loop", &[("error", &error)]);
            }
        }
    }
}

/// An admin thread's answer for the request registered under `tag`.
pub(super) struct AdminAnswer {
    pub(super) tag: u64,
    pub(super) result: Result<ResponseBody, ServerError>,
}

/// Where admin threads send their answers.
#[derive(Clone)]
pub(super) struct AdminSender {
    sender: Sender<AdminAnswer>,
    waker: Arc<LoopWaker>,
}

impl AdminSender {
    pub(super) fn send(&self, answer: AdminAnswer) {
        if self.sender.send(answer).is_ok() {
            self.waker.wake();
        }
    }
}

/// What the acceptor and the server hold of a running loop.
#[derive(Clone)]
pub(super) struct LoopHandle {
    connections: Sender<(std::net::TcpStream, String)>,
    waker: Arc<LoopWaker>,
    watch_signal: Arc<WatchSignal>,
}

impl LoopHandle {
    /// Hands an accepted connection (counted open) to the loop. Returns it if the loop is
    /// gone.
    pub(super) fn hand_over(
        &self,
        stream: std::net::TcpStream,
        remote: String,
    ) -> Result<(), std::net::TcpStream> {
        self.connections
            .send((stream, remote))
            .map_err(|error| error.into_inner().0)?;
        self.waker.wake();
        Ok(())
    }

    /// Wakes the loop (to see the stop flag).
    pub(super) fn wake(&self) {
        self.waker.wake();
    }

    /// What the applier's watch notifier needs to wake this loop.
    pub(super) fn watch_wake(&self) -> (Arc<LoopWaker>, Arc<WatchSignal>) {
        (Arc::clone(&self.waker), Arc::clone(&self.watch_signal))
    }
}

/// Starts loop number `index`.
pub(super) fn spawn(
    shared: Arc<Shared>,
    index: usize,
) -> std::io::Result<(LoopHandle, JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(LoopWaker {
        waker: Waker::new(poll.registry(), WAKE_TOKEN)?,
        pending: AtomicBool::new(false),
    });
    let (connections_tx, incoming) = crossbeam_channel::unbounded();
    let (proposals_tx, proposals_rx) = crossbeam_channel::unbounded();
    let (reads_tx, reads_rx) = crossbeam_channel::unbounded();
    let (admin_tx, admin_rx) = crossbeam_channel::unbounded();
    let wake: Arc<dyn Wake> = Arc::clone(&waker) as Arc<dyn Wake>;
    let watch_signal = Arc::new(WatchSignal::default());
    let event_loop = EventLoop {
        watches: Watches::new(Arc::clone(&watch_signal)),
        proposals: CompletionSender::with_wake(proposals_tx, Arc::clone(&wake)),
        reads: CompletionSender::with_wake(reads_tx, wake),
        admin: AdminSender {
            sender: admin_tx,
            waker: Arc::clone(&waker),
        },
        shared: Arc::clone(&shared),
        poll,
        waker: Arc::clone(&waker),
        incoming,
        proposals_rx,
        reads_rx,
        admin_rx,
        connections: Slab::new(),
        owners: HashMap::new(),
        next_tag: 1,
        timers: BTreeSet::new(),
        writes: Vec::new(),
        scratch: vec![0; SCRATCH_BYTES],
        touched: Vec::new(),
        stopping: false,
        checks_tls_files: index == 0,
        tls_checked_at: Instant::now(),
        auth: super::auth::AuthView::new(shared.auth_publisher.clone()),
    };
    let thread = std::thread::Builder::new()
        .name(format!("{}-client-io-{index}", shared.node.id()))
        .spawn(move || event_loop.run())?;
    Ok((
        LoopHandle {
            connections: connections_tx,
            waker,
            watch_signal,
        },
        thread,
    ))
}

struct EventLoop {
    shared: Arc<Shared>,
    /// The watches of this loop's connections.
    watches: Watches,
    poll: Poll,
    waker: Arc<LoopWaker>,
    incoming: Receiver<(std::net::TcpStream, String)>,
    proposals: CompletionSender<Result<Vec<u8>, ProposeError>>,
    proposals_rx: Receiver<ProposalCompletion>,
    reads: CompletionSender<Result<LogIndex, ReadError>>,
    reads_rx: Receiver<ReadCompletion>,
    admin: AdminSender,
    admin_rx: Receiver<AdminAnswer>,
    connections: Slab<Connection>,
    /// The connection of every request in flight, by tag (tags are never reused, so a late
    /// completion for a closed connection finds nothing).
    owners: HashMap<u64, usize>,
    next_tag: u64,
    /// `(instant, connection)`: when each connection next has something due.
    timers: BTreeSet<(Instant, usize)>,
    /// Writes read in this iteration, submitted together.
    writes: Vec<(Vec<u8>, u64)>,
    scratch: Vec<u8>,
    /// Connections to write, close or reschedule at the end of the iteration.
    touched: Vec<usize>,
    /// The server is stopping: no new requests are read.
    stopping: bool,
    /// This loop looks for changed TLS files (one loop does, about once a second).
    checks_tls_files: bool,
    tls_checked_at: Instant,
    /// The auth state every request is checked against, refreshed when it changes.
    auth: super::auth::AuthView,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            // Connections carried over (they may read more now) must not wait for an event.
            let timeout = if self.touched.is_empty() && !self.watches.more {
                self.poll_timeout(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    log::error("client event loop cannot wait", &[("error", &error)]);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for event in events.iter() {
                if event.token() == WAKE_TOKEN {
                    continue;
                }
                let key = event.token().0;
                if let Some(connection) = self.connections.get_mut(key) {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        connection.readable = true;
                    }
                    if event.is_writable() || event.is_write_closed() || event.is_error() {
                        connection.writable = true;
                    }
                    self.touched.push(key);
                }
            }
            self.waker.pending.store(false, Ordering::Release);
            if !self.stopping && self.shared.stopping.load(Ordering::SeqCst) {
                self.begin_stopping();
            }
            self.check_tls_files();
            self.accept();
            self.drain_completions();
            self.fire_timers(Instant::now());
            // Reading may touch more connections; they join the list for `settle`.
            let touched = std::mem::take(&mut self.touched);
            for &key in &touched {
                self.read(key);
            }
            self.touched.extend(touched);
            self.flush_writes();
            self.pump_watches();
            self.settle();
            if self.stopping && self.connections.is_empty() {
                break;
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        // Watches with progress notifications or a leader requirement are looked at on a clock.
        let longest = if self.watches.needs_ticks() {
            CHECK_INTERVAL
        } else {
            POLL_TIMEOUT_MAX
        };
        match self.timers.first() {
            // Round up: epoll counts milliseconds, and waking just before a deadline spins.
            Some((at, _)) => {
                (at.saturating_duration_since(now) + Duration::from_micros(999)).min(longest)
            }
            None => longest,
        }
    }

    /// Feeds the watches what the store applied (see `watch.rs`).
    fn pump_watches(&mut self) {
        if self.watches.is_empty() {
            return;
        }
        let touched = self
            .watches
            .pump(&self.shared.node, &mut self.connections, Instant::now());
        self.touched.extend(touched);
    }

    /// Ends every watch of connection `key`, telling its client why (it resumes elsewhere).
    fn end_watches(&mut self, key: usize, reason: &str) {
        let Some(connection) = self.connections.get(key) else {
            return;
        };
        let watches: Vec<u64> = connection.watches.iter().copied().collect();
        for watch in watches {
            let error = ServerError::WatchCanceled {
                reason: reason.to_string(),
            };
            let watch_key = WatchKey {
                connection: key,
                watch,
            };
            self.watches
                .cancel(&mut self.connections, watch_key, Some(Err(error)));
        }
    }

    /// Re-reads the TLS files if they changed (certificate rotation without a restart).
    fn check_tls_files(&mut self) {
        let Some(tls) = &self.shared.options.tls else {
            return;
        };
        if self.checks_tls_files && self.tls_checked_at.elapsed() >= TLS_CHECK_INTERVAL {
            self.tls_checked_at = Instant::now();
            tls.reload_if_changed();
        }
    }

    /// The server stops: read nothing more; every connection answers what it has in flight
    /// and closes.
    fn begin_stopping(&mut self) {
        self.stopping = true;
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.end_watches(key, "the server is stopping");
            if let Some(connection) = self.connections.get_mut(key) {
                connection.draining = true;
            }
            self.touched.push(key);
        }
    }

    /// Registers the connections the acceptor handed over.
    fn accept(&mut self) {
        while let Ok((stream, remote)) = self.incoming.try_recv() {
            if self.stopping {
                connection_closed(&self.shared);
                continue;
            }
            let mut stream = mio::net::TcpStream::from_std(stream);
            let entry = self.connections.vacant_entry();
            let key = entry.key();
            if let Err(error) = self.poll.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::error(
                    "cannot watch a client connection",
                    &[("remote", &remote), ("error", &error)],
                );
                connection_closed(&self.shared);
                continue;
            }
            let options = &self.shared.options;
            let tls = match &options.tls {
                None => None,
                Some(tls) => match rustls::ServerConnection::new(tls.config()) {
                    Ok(session) => Some(session),
                    Err(error) => {
                        log::error(
                            "cannot start TLS on a client connection",
                            &[("remote", &remote), ("error", &error)],
                        );
                        let _ = self.poll.registry().deregister(&mut stream);
                        connection_closed(&self.shared);
                        continue;
                    }
                },
            };
            let mut connection = Connection::new(
                stream,
                tls,
                remote,
                Arc::clone(&self.shared.request_buffer),
                Instant::now(),
                options.idle_timeout,
                options.frame_timeout,
            );
            connection.readable = true;
            connection.writable = true;
            entry.insert(connection);
            self.touched.push(key);
        }
    }

    fn drain_completions(&mut self) {
        while let Ok(completion) = self.proposals_rx.try_recv() {
            self.on_proposal(completion);
        }
        while let Ok(completion) = self.reads_rx.try_recv() {
            self.on_read(completion);
        }
        while let Ok(answer) = self.admin_rx.try_recv() {
            if let Some((key, pending)) = self.take_pending(answer.tag) {
                if matches!(pending.kind, PendingKind::Auth) {
                    self.authentication_answered(key, &answer.result);
                }
                self.respond(key, pending.request, answer.result);
            }
        }
    }

    /// The request in flight under `tag` and its connection, if both are still there.
    fn take_pending(&mut self, tag: u64) -> Option<(usize, super::connection::Pending)> {
        let key = self.owners.remove(&tag)?;
        let pending = self.connections.get_mut(key)?.take(tag)?;
        Some((key, pending))
    }

    /// Encodes a response on connection `key`.
    fn respond(&mut self, key: usize, request: Request, result: Result<ResponseBody, ServerError>) {
        if let Some(metrics) = &self.shared.options.metrics {
            metrics.client_request(
                request.operation,
                crate::metrics::request_result(result.as_ref()),
                request.arrived.elapsed(),
            );
        }
        if let Some(connection) = self.connections.get_mut(key) {
            connection.respond(request.id, result);
            self.touched.push(key);
        }
    }

    fn on_proposal(&mut self, completion: ProposalCompletion) {
        let Some((key, pending)) = self.take_pending(completion.tag) else {
            return; // answered already (deadline), or the connection is gone
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
        self.respond(key, pending.request, result);
    }

    fn on_read(&mut self, completion: ReadCompletion) {
        let Some((key, pending)) = self.take_pending(completion.tag) else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let shared = &*shared;
        let request = match &pending.kind {
            PendingKind::Read(request) => request,
            PendingKind::Lease(request) => {
                let result = match completion.outcome {
                    Ok(_) => shared.leases.serve(request).map_err(|error| match error {
                        ServerError::NotLeader { leader_id, .. } => {
                            requests::not_leader(shared, leader_id)
                        }
                        other => other,
                    }),
                    Err(error) => Err(requests::read_error(shared, error)),
                };
                self.respond(key, pending.request, result);
                return;
            }
            PendingKind::Watch(request) => {
                let result = match completion.outcome {
                    Ok(_) => {
                        let request = request.clone();
                        self.open_watch(key, pending.request.id, request)
                    }
                    Err(error) => Err(requests::read_error(shared, error)),
                };
                self.respond(key, pending.request, result);
                return;
            }
            PendingKind::Write | PendingKind::Admin | PendingKind::Auth => {
                debug_assert!(false, "a read completion for another request");
                return;
            }
        };
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
            Err(error) => Err(requests::read_error(shared, error)),
        };
        self.respond(key, pending.request, result);
    }

    /// Reads connection `key` until it would block or may take no more requests, serving or
    /// collecting every whole request.
    fn read(&mut self, key: usize) {
        let inflight_max = self.shared.options.inflight_per_connection_max;
        loop {
            loop {
                let Some(connection) = self.connections.get_mut(key) else {
                    return;
                };
                if !connection.accepts_requests(inflight_max) {
                    break;
                }
                match connection.frames.next_frame::<RequestFrame>() {
                    Ok(Some(frame)) => self.handle(key, frame),
                    Ok(None) => break,
                    Err(error) => {
                        self.stop_reading(key, Some(Close::BadInput(error)));
                        return;
                    }
                }
            }
            let Some(connection) = self.connections.get_mut(key) else {
                return;
            };
            // Stopped by a limit with more to read: read again once the limit allows.
            connection.starved = !connection.accepts_requests(inflight_max);
            if !connection.readable || connection.starved {
                break;
            }
            let now = Instant::now();
            match connection.read_some(&mut self.scratch) {
                Ok(Filled::Bytes) => connection.deadlines.received(now),
                Ok(Filled::End) => {
                    let close = connection.frames.has_partial().then(|| {
                        Close::BadInput(FrameError::Truncated {
                            buffered: connection.frames.buffered(),
                        })
                    });
                    self.stop_reading(key, close);
                    return;
                }
                Ok(Filled::WaitingForBudget { .. }) => {
                    // Stop reading (TCP slows the client) and look again soon; the frame's
                    // deadline keeps running.
                    connection.budget_retry_at = Some(now + BUDGET_RETRY);
                    break;
                }
                Err(FrameError::Io(error)) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    connection.readable = false;
                    break;
                }
                Err(FrameError::Io(error)) if error.kind() == std::io::ErrorKind::Interrupted => {}
                // A TLS failure: plaintext on a TLS port, a certificate refused, a bad record.
                Err(FrameError::Io(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                    self.stop_reading(key, Some(Close::BadInput(FrameError::Io(error))));
                    return;
                }
                Err(FrameError::Io(error)) => {
                    self.stop_reading(key, Some(Close::Io(error)));
                    return;
                }
                Err(error) => {
                    self.stop_reading(key, Some(Close::BadInput(error)));
                    return;
                }
            }
        }
        if let Some(connection) = self.connections.get_mut(key) {
            let now = Instant::now();
            let receiving = connection.receiving();
            connection
                .deadlines
                .observe(now, receiving, connection.busy());
        }
    }

    /// Stops reading connection `key` (it answers what is in flight, then closes), logging
    /// and counting the reason if there is one (none: the client closed its side).
    fn stop_reading(&mut self, key: usize, reason: Option<Close>) {
        self.end_watches(key, "the connection is closing");
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        connection.draining = true;
        self.touched.push(key);
        let Some(reason) = reason else {
            return;
        };
        let counter = match &reason {
            Close::BadInput(_) => Some(&self.shared.connections_closed_bad_input),
            Close::Expired(Expired::Idle { .. }) => Some(&self.shared.connections_closed_idle),
            Close::Expired(Expired::SlowFrame { .. }) => Some(&self.shared.connections_closed_slow),
            Close::Io(_) => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        log::info(
            "closing client connection",
            &[("remote", &connection.remote), ("reason", &reason)],
        );
        let _ = connection.stream.shutdown(std::net::Shutdown::Read);
    }

    /// Submits the writes collected in this iteration as one batch.
    fn flush_writes(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.writes);
        let outcomes = self.shared.node.submit_proposals(batch, &self.proposals);
        for (tag, outcome) in outcomes {
            if let Err(error) = outcome {
                let error = requests::submit_error(&self.shared, error);
                self.fail(tag, error);
            }
        }
    }

    /// Answers the request under `tag` with `error` at once.
    fn fail(&mut self, tag: u64, error: ServerError) {
        if let Some((key, pending)) = self.take_pending(tag) {
            self.respond(key, pending.request, Err(error));
        }
    }

    /// Registers a request of connection `key` in flight; returns its tag.
    fn register(
        &mut self,
        key: usize,
        request: Request,
        deadline: Instant,
        kind: PendingKind,
    ) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if let Some(connection) = self.connections.get_mut(key) {
            connection.register(tag, request, deadline, kind);
            self.owners.insert(tag, key);
        }
        tag
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            connection.timer = None;
            self.touched.push(key);
            self.on_timer(key, now);
        }
    }

    /// Whatever is due on connection `key` at `now`.
    fn on_timer(&mut self, key: usize, now: Instant) {
        let write_timeout = self.shared.options.write_timeout;
        let mut expired = Vec::new();
        if let Some(connection) = self.connections.get_mut(key) {
            while let Some((tag, pending)) = connection.take_expired(now) {
                expired.push((tag, pending));
            }
        }
        for (tag, pending) in expired {
            self.owners.remove(&tag);
            let error = match pending.kind {
                PendingKind::Write => ServerError::Indeterminate {
                    reason: "deadline passed before the write's outcome was known".into(),
                },
                PendingKind::Read(_) | PendingKind::Lease(_) | PendingKind::Watch(_) => {
                    ServerError::ReadTimeout
                }
                PendingKind::Admin => ServerError::Indeterminate {
                    reason: "deadline passed before the request's outcome was known".into(),
                },
                PendingKind::Auth => {
                    if let Some(connection) = self.connections.get_mut(key) {
                        connection.auth.authenticating = false;
                    }
                    ServerError::Unauthenticated {
                        reason: "the authentication was not verified in time".into(),
                    }
                }
            };
            self.respond(key, pending.request, Err(error));
        }
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if connection.write_stalled(now, write_timeout) {
            log::info(
                "closing client connection",
                &[
                    ("remote", &connection.remote),
                    (
                        "reason",
                        &"the client took no responses for the write timeout",
                    ),
                ],
            );
            connection.broken = true;
            return;
        }
        if connection.draining {
            return;
        }
        if connection.budget_retry_at.is_some_and(|at| at <= now) {
            // Read again in this iteration (the connection is touched).
            connection.budget_retry_at = None;
        }
        let receiving = connection.receiving();
        connection
            .deadlines
            .observe(now, receiving, connection.busy());
        if let Some(expired) = connection.deadlines.expired(now) {
            self.stop_reading(key, Some(Close::Expired(expired)));
        }
    }

    /// Writes, closes or reschedules every connection touched in this iteration.
    ///
    /// A connection stopped by its in-flight or output limit that may take requests again now
    /// is carried into the next iteration, which then does not wait for an event.
    fn settle(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        let now = Instant::now();
        let write_timeout = self.shared.options.write_timeout;
        let inflight_max = self.shared.options.inflight_per_connection_max;
        let mut carried = Vec::new();
        for key in touched.drain(..) {
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            if connection.has_output() && (connection.dirty || connection.writable) {
                connection.write(now);
            }
            if connection.finished() {
                self.close(key);
                continue;
            }
            if connection.starved && connection.accepts_requests(inflight_max) {
                connection.starved = false;
                carried.push(key);
            }
            let due = connection.next_due(write_timeout);
            if due != connection.timer {
                if let Some(old) = connection.timer {
                    self.timers.remove(&(old, key));
                }
                if let Some(due) = due {
                    self.timers.insert((due, key));
                }
                connection.timer = due;
            }
        }
        touched.extend(carried);
        self.touched = touched;
    }

    fn close(&mut self, key: usize) {
        let mut connection = self.connections.remove(key);
        self.watches.forget_connection(key, &connection.watches);
        for tag in connection.pending.keys() {
            self.owners.remove(tag);
        }
        if let Some(at) = connection.timer {
            self.timers.remove(&(at, key));
        }
        connection.close_tls();
        let _ = self.poll.registry().deregister(&mut connection.stream);
        let _ = connection.stream.shutdown(std::net::Shutdown::Both);
        connection_closed(&self.shared);
    }
}
