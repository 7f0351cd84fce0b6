//! One pipelined client connection: many threads have requests in flight on it at once.
//!
//! ```text
//!  caller threads ──frame──► outgoing buffer ──► the caller writing ──write──► socket
//!        ▲                  (short lock; the first caller to       │
//!        │                   find nobody writing writes it all)    ▼
//!        └── waiter (one-shot, by request id) ◄── receiver thread ◄── responses
//! ```
//!
//! A caller registers a [`Waiter`] under its request id, appends its frame to the outgoing buffer
//! and sleeps on the waiter (no spinning: the machine's cores belong to the servers). Writing is
//! combined: a caller that finds nobody writing becomes the writer and sends everything queued in
//! one `write`, then whatever other callers queued meanwhile, until the buffer is empty; frames
//! from many callers leave together and the server proposes them as one batch. No thread is woken
//! to write (a writer thread cost a wake-up and a context switch per burst, which on a small
//! machine was a good part of a call). The receiver thread reads the responses, takes every whole
//! frame buffered, and completes each caller's waiter, in any order. At most
//! [`REQUESTS_IN_FLIGHT_MAX`] requests are in flight; more callers wait for room. A broken
//! connection completes every waiter with the failure (the request may have been served), so the
//! retry layer treats it as ambiguous and retries elsewhere.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::protocol::{write_frame, FrameReader, RequestBody, RequestFrame, ResponseFrame};
use crate::tls::ClientTls;

/// Requests in flight on one connection at most: the server's default limit per connection
/// (`INFLIGHT_PER_CONNECTION_MAX_DEFAULT`), past which it would stop reading anyway.
pub(super) const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Bytes of queued frames above which the writer gives its buffer back to the allocator
/// after sending it (a large snapshot chunk or batch passed).
const OUTGOING_BUFFER_KEEP_BYTES: usize = 1 << 20;

/// Why a call on a connection failed.
#[derive(Debug)]
pub(super) enum CallError {
    /// The connection broke. `sent` says whether the request may have reached the server.
    Failed { sent: bool, reason: String },
    /// No response before the deadline (the request may have been served).
    TimedOut,
    /// [`REQUESTS_IN_FLIGHT_MAX`] requests stayed in flight until the deadline; this one was
    /// not sent. The connection is fine.
    Full,
}

/// One caller's wait for its response: completed at most once, by the receiver (with the
/// response) or by a break (with the reason).
struct Waiter {
    outcome: Mutex<Option<Result<ResponseFrame, String>>>,
    ready: Condvar,
}

impl Waiter {
    fn new() -> Waiter {
        Waiter {
            outcome: Mutex::new(None),
            ready: Condvar::new(),
        }
    }

    fn complete(&self, outcome: Result<ResponseFrame, String>) {
        *self.outcome.lock() = Some(outcome);
        self.ready.notify_one();
    }
}

/// Frames a stream (a watch) holds for its reader at most; past that the stream is dropped
/// and its reader resumes on a new one (so a reader that stops reading holds bounded memory
/// and never blocks the connection's other callers).
pub(super) const STREAM_FRAMES_MAX: usize = 64;

/// What a stream's reader receives: each frame with the stream's request id, or why the
/// connection broke. The channel disconnects when the stream was dropped for falling behind.
pub(super) type StreamItem = Result<ResponseFrame, String>;

/// Callers waiting for a response, by request id.
#[derive(Default)]
struct Waiting {
    /// Invariant: `callers.len() <= REQUESTS_IN_FLIGHT_MAX`.
    callers: HashMap<u64, Arc<Waiter>>,
    /// Streams (watches) by request id: every frame with their id goes to them.
    streams: HashMap<u64, crossbeam_channel::Sender<StreamItem>>,
    /// Why the connection broke, once it has; no caller is added after.
    broken: Option<String>,
}

/// Frames waiting to be written.
#[derive(Default)]
struct Outgoing {
    buffer: Vec<u8>,
    /// A caller is writing: it comes back for `buffer` until it finds it empty, so a frame
    /// queued while this is set is always sent.
    writing: bool,
    /// The writer's emptied buffer, kept for the next swap.
    spare: Vec<u8>,
    /// The connection is closing: nothing more is written, queued frames are dropped (their
    /// callers are failed as possibly sent).
    closed: bool,
}

/// What the callers, the writer and the receiver share.
///
/// Lock order: `waiting`, then a waiter's `outcome`; `outgoing` is never held with another;
/// `channel` is taken only by the caller that set `Outgoing::writing` (never contended).
/// Every caller added to `waiting` gets exactly one outcome, unless it gives up first (a
/// timeout), in which case it removes itself and a late response goes to no one.
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled when a caller leaves `waiting` at the limit, or the connection breaks.
    room: Condvar,
    outgoing: Mutex<Outgoing>,
    /// Where frames are written.
    channel: Mutex<Channel>,
    /// Fast check of `waiting.broken.is_some()`.
    broken: AtomicBool,
}

impl Shared {
    /// Marks the connection broken, stops the writer and fails every waiting caller.
    fn fail(&self, reason: String) {
        let callers = {
            let mut waiting = self.waiting.lock();
            if waiting.broken.is_none() {
                waiting.broken = Some(reason.clone());
            }
            self.broken.store(true, Ordering::SeqCst);
            self.room.notify_all();
            for stream in std::mem::take(&mut waiting.streams).into_values() {
                let _ = stream.try_send(Err(reason.clone()));
            }
            std::mem::take(&mut waiting.callers)
        };
        {
            let mut outgoing = self.outgoing.lock();
            outgoing.closed = true;
            outgoing.buffer = Vec::new();
        }
        for waiter in callers.into_values() {
            waiter.complete(Err(reason.clone()));
        }
    }

    /// Queues `frame` and, unless another caller is writing (which then sends it too),
    /// writes everything queued until nothing is. An error means the frame was not queued;
    /// a failed write breaks the connection, which answers every waiting caller (this one
    /// included) with the failure.
    fn send(&self, frame: &RequestFrame) -> Result<(), String> {
        let mut batch = {
            let mut outgoing = self.outgoing.lock();
            if outgoing.closed {
                return Err(String::from("connection closed"));
            }
            write_frame(frame, &mut outgoing.buffer).map_err(|error| error.to_string())?;
            if outgoing.writing {
                return Ok(());
            }
            outgoing.writing = true;
            drop(outgoing);
            // Callers just woken by responses are about to queue theirs: let them run once,
            // so the burst leaves in one write (and reaches the server as one batch).
            std::thread::yield_now();
            let mut outgoing = self.outgoing.lock();
            let spare = std::mem::take(&mut outgoing.spare);
            std::mem::replace(&mut outgoing.buffer, spare)
        };
        loop {
            let written = self.channel.lock().send(&batch);
            if let Err(error) = written {
                // Part of a frame may have gone out: every waiter's request may have been
                // served.
                self.channel.lock().shutdown();
                self.fail(format!("writing: {error}"));
                return Ok(());
            }
            batch.clear();
            if batch.capacity() > OUTGOING_BUFFER_KEEP_BYTES {
                batch = Vec::new();
            }
            let mut outgoing = self.outgoing.lock();
            if outgoing.closed || outgoing.buffer.is_empty() {
                outgoing.writing = false;
                outgoing.spare = batch;
                return Ok(());
            }
            std::mem::swap(&mut batch, &mut outgoing.buffer);
        }
    }

    /// Why the connection broke (empty if it has not).
    fn reason(&self) -> String {
        self.waiting.lock().broken.clone().unwrap_or_default()
    }

    /// Forgets the caller waiting for `request_id`, if it is still there.
    fn remove(&self, request_id: u64) {
        let mut waiting = self.waiting.lock();
        if waiting.callers.remove(&request_id).is_some()
            && waiting.callers.len() + 1 == REQUESTS_IN_FLIGHT_MAX
        {
            self.room.notify_one();
        }
    }

    /// Hands each response to its caller; a response nobody waits for any more is dropped.
    fn deliver(&self, responses: Vec<ResponseFrame>) {
        let mut found = Vec::with_capacity(responses.len());
        {
            let mut waiting = self.waiting.lock();
            let was_full = waiting.callers.len() >= REQUESTS_IN_FLIGHT_MAX;
            for response in responses {
                let request_id = response.request_id;
                if let Some(waiter) = waiting.callers.remove(&request_id) {
                    found.push((waiter, response));
                } else if let Some(stream) = waiting.streams.get(&request_id) {
                    if stream.try_send(Ok(response)).is_err() {
                        // Full (its reader fell behind) or gone: drop the stream; the reader
                        // takes what is queued, then resumes on a new one.
                        waiting.streams.remove(&request_id);
                    }
                }
            }
            if was_full && waiting.callers.len() < REQUESTS_IN_FLIGHT_MAX {
                self.room.notify_all();
            }
        }
        for (waiter, response) in found {
            waiter.complete(Ok(response));
        }
    }
}

/// A connection to one server address, with its writer and receiver threads.
pub(super) struct Connection {
    stream: TcpStream,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    next_request_id: AtomicU64,
    /// Whether the connection authenticated (held while it does, so one thread does).
    pub(super) authenticated: Mutex<bool>,
}

impl Connection {
    /// Connects to `address` (host:port), trying each address it resolves to. A write that
    /// blocks longer than `write_timeout` (a server that stops reading) breaks the connection.
    pub(super) fn open(
        address: &str,
        timeout: Duration,
        write_timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> std::io::Result<Connection> {
        let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
        let mut last_error = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        );
        let mut stream = None;
        for socket_address in addresses {
            match TcpStream::connect_timeout(&socket_address, timeout) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        let stream = stream.ok_or(last_error)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(write_timeout.max(Duration::from_millis(1))))?;
        let read_stream = stream.try_clone()?;
        let write_stream = stream.try_clone()?;
        let channel = match tls {
            None => Channel::Plain(write_stream),
            Some(tls) => {
                let mut session = tls
                    .connect(host_of(address))
                    .map_err(std::io::Error::other)?;
                // Our own outgoing buffer is bounded by the requests in flight.
                session.set_buffer_limit(None);
                Channel::Tls(Arc::new(TlsChannel {
                    session: Mutex::new(session),
                    socket: Mutex::new(write_stream),
                }))
            }
        };
        let socket = stream.try_clone()?;
        let receive_channel = match &channel {
            Channel::Plain(_) => None,
            Channel::Tls(tls) => Some(Arc::clone(tls)),
        };
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::default()),
            room: Condvar::new(),
            outgoing: Mutex::new(Outgoing::default()),
            channel: Mutex::new(channel),
            broken: AtomicBool::new(false),
        });
        let mut connection = Connection {
            stream,
            shared: Arc::clone(&shared),
            threads: Vec::with_capacity(1),
            next_request_id: AtomicU64::new(1),
            authenticated: Mutex::new(false),
        };
        // Fixed names: the address may come from a server's redirect. On a spawn failure the
        // connection is dropped, which closes it and joins the thread already started.
        let receiver_shared = Arc::clone(&shared);
        connection.threads.push(
            std::thread::Builder::new()
                .name("kvclient-recv".to_string())
                .spawn(move || match receive_channel {
                    None => receive(&receiver_shared, read_stream, socket),
                    Some(tls) => {
                        receive(&receiver_shared, TlsReader::new(tls, read_stream), socket)
                    }
                })?,
        );
        Ok(connection)
    }

    /// Whether the connection broke.
    pub(super) fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::SeqCst)
    }

    /// Sends `body` and waits until `deadline` for its response. The server is told it may
    /// work for `server_timeout`. Many threads may call at once; their requests are in
    /// flight together.
    pub(super) fn call(
        &self,
        body: &RequestBody,
        server_timeout: Duration,
        deadline: Instant,
    ) -> Result<ResponseFrame, CallError> {
        if self.is_broken() {
            return Err(CallError::Failed {
                sent: false,
                reason: self.shared.reason(),
            });
        }
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = RequestFrame {
            request_id,
            timeout_ms: (server_timeout.as_millis() as u64).max(1),
            body: body.clone(),
        };
        let waiter = Arc::new(Waiter::new());
        {
            let mut waiting = self.shared.waiting.lock();
            loop {
                if let Some(reason) = &waiting.broken {
                    return Err(CallError::Failed {
                        sent: false,
                        reason: reason.clone(),
                    });
                }
                if waiting.callers.len() < REQUESTS_IN_FLIGHT_MAX {
                    break;
                }
                if self
                    .shared
                    .room
                    .wait_until(&mut waiting, deadline)
                    .timed_out()
                {
                    return Err(CallError::Full);
                }
            }
            waiting.callers.insert(request_id, Arc::clone(&waiter));
            debug_assert!(waiting.callers.len() <= REQUESTS_IN_FLIGHT_MAX);
        }
        if let Err(reason) = self.shared.send(&frame) {
            self.shared.remove(request_id);
            return Err(CallError::Failed {
                sent: false,
                reason,
            });
        }
        let mut outcome = waiter.outcome.lock();
        loop {
            match outcome.take() {
                Some(Ok(response)) => return Ok(response),
                Some(Err(reason)) => return Err(CallError::Failed { sent: true, reason }),
                None => {}
            }
            if waiter.ready.wait_until(&mut outcome, deadline).timed_out() {
                match outcome.take() {
                    Some(Ok(response)) => return Ok(response),
                    Some(Err(reason)) => {
                        return Err(CallError::Failed { sent: true, reason });
                    }
                    None => {}
                }
                drop(outcome);
                self.shared.remove(request_id);
                return Err(CallError::TimedOut);
            }
        }
    }

    /// Opens a stream: sends `body` and routes every response frame with its request id to
    /// the returned receiver (at most [`STREAM_FRAMES_MAX`] queued), until
    /// [`close_stream`](Connection::close_stream) or the connection breaks.
    pub(super) fn open_stream(
        &self,
        body: &RequestBody,
        server_timeout: Duration,
    ) -> Result<(u64, crossbeam_channel::Receiver<StreamItem>), CallError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = crossbeam_channel::bounded(STREAM_FRAMES_MAX);
        {
            let mut waiting = self.shared.waiting.lock();
            if let Some(reason) = &waiting.broken {
                return Err(CallError::Failed {
                    sent: false,
                    reason: reason.clone(),
                });
            }
            waiting.streams.insert(request_id, sender);
        }
        if let Err(reason) = self.queue(request_id, body, server_timeout) {
            self.close_stream(request_id);
            return Err(CallError::Failed {
                sent: false,
                reason,
            });
        }
        Ok((request_id, receiver))
    }

    /// Stops routing frames of stream `request_id`.
    pub(super) fn close_stream(&self, request_id: u64) {
        self.shared.waiting.lock().streams.remove(&request_id);
    }

    /// Sends `body` without waiting for its answer (which goes to no one).
    pub(super) fn send_only(&self, body: &RequestBody, server_timeout: Duration) {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.queue(request_id, body, server_timeout);
    }

    /// Sends one frame (see [`Shared::send`]).
    fn queue(
        &self,
        request_id: u64,
        body: &RequestBody,
        server_timeout: Duration,
    ) -> Result<(), String> {
        let frame = RequestFrame {
            request_id,
            timeout_ms: (server_timeout.as_millis() as u64).max(1),
            body: body.clone(),
        };
        self.shared.send(&frame)
    }

    /// Closes the socket; waiting callers fail.
    pub(super) fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.shared.fail("connection closed".into());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The host part of `host:port` (an IPv6 address without its brackets): the name a node's
/// certificate must carry.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Where the caller writing sends frames.
enum Channel {
    Plain(TcpStream),
    Tls(Arc<TlsChannel>),
}

impl Channel {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Channel::Plain(stream) => stream.write_all(bytes),
            Channel::Tls(tls) => {
                tls.session.lock().writer().write_all(bytes)?;
                tls.flush()
            }
        }
    }

    fn shutdown(&self) {
        let stream = match self {
            Channel::Plain(stream) => stream,
            Channel::Tls(tls) => &*tls.socket.lock(),
        };
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// A TLS session shared by a connection's writing caller and receiver thread: either may
/// produce records (the writer its frames, the receiver the handshake's answers), and
/// records must reach the socket in the order the session made them, so they are taken from
/// the session and written under one lock on the socket's sending side.
struct TlsChannel {
    session: Mutex<rustls::ClientConnection>,
    socket: Mutex<TcpStream>,
}

impl TlsChannel {
    /// Writes every record the session has to send.
    fn flush(&self) -> std::io::Result<()> {
        let mut socket = self.socket.lock();
        let mut records = Vec::new();
        loop {
            records.clear();
            {
                let mut session = self.session.lock();
                if !session.wants_write() {
                    return Ok(());
                }
                session.write_tls(&mut records)?;
            }
            socket.write_all(&records)?;
        }
    }
}

/// The plaintext of a [`TlsChannel`], for the receiver thread: reads records from the
/// socket (blocking, holding no lock), feeds them to the session, answers the handshake.
struct TlsReader {
    channel: Arc<TlsChannel>,
    socket: TcpStream,
    /// Record bytes read from the socket: `records[taken..filled]` are not yet taken by the
    /// session. Zeroed once, not per read.
    records: Box<[u8]>,
    taken: usize,
    filled: usize,
}

/// What a TLS receiver reads from its socket at once.
const TLS_READ_BYTES: usize = 16 * 1024;

impl TlsReader {
    fn new(channel: Arc<TlsChannel>, socket: TcpStream) -> TlsReader {
        TlsReader {
            channel,
            socket,
            records: vec![0; TLS_READ_BYTES].into_boxed_slice(),
            taken: 0,
            filled: 0,
        }
    }
}

impl Read for TlsReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            {
                let mut session = self.channel.session.lock();
                match session.reader().read(buffer) {
                    Ok(count) => return Ok(count),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Ok(0)
                    }
                    Err(error) => return Err(error),
                }
                if self.taken < self.filled {
                    let mut rest = &self.records[self.taken..self.filled];
                    let before = rest.len();
                    session.read_tls(&mut rest)?;
                    self.taken += before - rest.len();
                    session.process_new_packets().map_err(|error| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("TLS: {error}"),
                        )
                    })?;
                    drop(session);
                    // Handshake answers, or frames queued before the handshake completed.
                    self.channel.flush()?;
                    // Plaintext may have come of it: take it before reading the socket.
                    continue;
                }
            }
            self.channel.flush()?;
            // Emptied before the read: a failed read must not leave old records to feed again.
            self.taken = 0;
            self.filled = 0;
            self.filled = self.socket.read(&mut self.records)?;
            if self.filled == 0 {
                return Ok(0);
            }
        }
    }
}

/// The receiver thread: reads responses and completes their callers, every frame already
/// buffered at once, until the connection ends.
fn receive(shared: &Shared, mut stream: impl Read, socket: TcpStream) {
    let mut frames = FrameReader::new();
    loop {
        let first = match frames.read_frame::<ResponseFrame>(&mut stream) {
            Ok(frame) => frame,
            Err(error) => {
                let _ = socket.shutdown(Shutdown::Both);
                shared.fail(error.to_string());
                return;
            }
        };
        let mut responses = vec![first];
        loop {
            match frames.next_buffered::<ResponseFrame>() {
                Ok(Some(frame)) => responses.push(frame),
                Ok(None) => break,
                Err(error) => {
                    shared.deliver(responses);
                    let _ = socket.shutdown(Shutdown::Both);
                    shared.fail(error.to_string());
                    return;
                }
            }
        }
        shared.deliver(responses);
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::protocol::{FrameReader, ServerError};

    fn busy(reason: &str) -> ResponseFrame {
        ResponseFrame {
            request_id: 0,
            result: Err(ServerError::Busy {
                reason: reason.to_string(),
            }),
        }
    }

    /// Writing is done by the callers themselves: when the server stops reading, the caller
    /// writing is stopped by the write timeout, which breaks the connection, and every caller
    /// (those whose frames sat queued behind it too) returns with the failure — none hangs.
    #[test]
    fn callers_return_when_the_server_stops_reading() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            // Accept, never read, hold the socket until the test ends.
            let (stream, _) = listener.accept().unwrap();
            let _ = released.recv();
            drop(stream);
        });
        let write_timeout = Duration::from_millis(300);
        let connection =
            Connection::open(&address, Duration::from_secs(10), write_timeout, None).unwrap();
        // 16 threads × 4 MiB is far more than the two sockets' buffers hold.
        let value = vec![7u8; 4 << 20];
        let started = Instant::now();
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..16)
                .map(|_| {
                    let body =
                        RequestBody::Write(crate::kv::Command::put(b"key".to_vec(), value.clone()));
                    let connection = &connection;
                    scope.spawn(move || {
                        connection.call(
                            &body,
                            Duration::from_secs(60),
                            Instant::now() + Duration::from_secs(60),
                        )
                    })
                })
                .collect();
            calls.into_iter().map(|call| call.join().unwrap()).collect()
        });
        // Well before the callers' own 60 s deadline: the write timeout ended it.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        for outcome in outcomes {
            assert!(
                matches!(outcome, Err(CallError::Failed { .. })),
                "{outcome:?}"
            );
        }
        assert!(connection.is_broken());
        drop(connection);
        let _ = release.send(());
        server.join().unwrap();
    }

    /// A caller that gave up is not answered later with someone else's response, nor is the
    /// next caller answered with the late response to the abandoned request.
    #[test]
    fn a_late_answer_to_an_abandoned_request_goes_to_no_one_else() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut frames = FrameReader::new();
            let first: RequestFrame = frames.read_frame(&mut stream).unwrap();
            // The second request arrives only after the first caller gave up.
            let second: RequestFrame = frames.read_frame(&mut stream).unwrap();
            let mut bytes = Vec::new();
            for (request, reason) in [(&first, "late answer to the first"), (&second, "second")] {
                let frame = ResponseFrame {
                    request_id: request.request_id,
                    ..busy(reason)
                };
                write_frame(&frame, &mut bytes).unwrap();
            }
            stream.write_all(&bytes).unwrap();
            // Hold the connection until the client closes it.
            let _ = frames.read_frame::<RequestFrame>(&mut stream);
        });
        let timeout = Duration::from_secs(10);
        let connection = Connection::open(&address, timeout, timeout, None).unwrap();
        let abandoned = connection.call(
            &RequestBody::Status,
            timeout,
            Instant::now() + Duration::from_millis(50),
        );
        assert!(
            matches!(abandoned, Err(CallError::TimedOut)),
            "{abandoned:?}"
        );
        let answered = connection
            .call(&RequestBody::Status, timeout, Instant::now() + timeout)
            .unwrap();
        assert_eq!(answered.result, busy("second").result);
        drop(connection);
        server.join().unwrap();
    }
}
