//! The `n{id}-peer-send-{peer}` thread: one per peer. It blocks on the peer's queue, drains
//! everything queued, encodes it into one buffer behind the handshake if the connection is
//! new, and writes and flushes once per drain. It connects lazily, when there is something to
//! send; after a failure it waits an exponentially growing, jittered delay before the next
//! attempt, and drops what is sent to it meanwhile (bounded memory; Raft retransmits).

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;

use super::{add, join_logged, spawn_named, Handshake, Shared, TcpError};
use crate::codec::{self, RECORD_HEADER_BYTES};
use crate::limits::{FRAME_BYTES_MAX, PEER_QUEUE_CAPACITY};
use crate::types::NodeId;

/// Once a drain has encoded this many bytes they are written before encoding more, so that a
/// long queue of large messages does not build one enormous buffer.
const WRITE_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// What the transport keeps of one writer.
pub(super) struct PeerWriter<M> {
    /// The peer's bounded queue.
    pub(super) sender: Sender<M>,
    /// State shared with the writer thread.
    pub(super) link: Arc<PeerLink>,
    /// The writer thread.
    pub(super) thread: JoinHandle<()>,
}

impl<M> PeerWriter<M> {
    /// Stops the writer, wakes it from any blocking call, and joins it.
    pub(super) fn stop_and_join(self) {
        self.link.stop();
        // Disconnecting the queue wakes a writer blocked in `recv`.
        drop(self.sender);
        join_logged(self.link.owner, self.thread);
    }
}

/// State shared between the transport and one writer thread.
pub(super) struct PeerLink {
    /// The node that owns the transport (for log lines).
    owner: NodeId,
    /// The peer's address and a generation bumped by every change, so the writer can tell
    /// that its connection goes to an old address.
    address: Mutex<(SocketAddr, u64)>,
    stopping: AtomicBool,
    /// A clone of the writer's current socket, so that `stop` can wake a blocked write.
    /// Invariant: once `stopping` is set under this lock, no new socket is stored.
    stream: Mutex<Option<TcpStream>>,
    /// Messages to this peer that were not sent (queue full, unreachable, write failed).
    pub(super) send_failures: AtomicU64,
    /// Failed attempts to connect to this peer.
    pub(super) connect_failures: AtomicU64,
}

impl PeerLink {
    pub(super) fn new(owner: NodeId, address: SocketAddr) -> PeerLink {
        PeerLink {
            owner,
            address: Mutex::new((address, 0)),
            stopping: AtomicBool::new(false),
            stream: Mutex::new(None),
            send_failures: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }
    }

    /// Whether the writer holds a connection to the peer now.
    pub(super) fn is_connected(&self) -> bool {
        self.stream.lock().is_some()
    }

    pub(super) fn address(&self) -> SocketAddr {
        self.address.lock().0
    }

    pub(super) fn set_address(&self, address: SocketAddr) {
        let mut current = self.address.lock();
        if current.0 != address {
            *current = (address, current.1 + 1);
        }
    }

    /// Asks the writer to stop and shuts its socket down so that a blocked write returns.
    pub(super) fn stop(&self) {
        let stream = self.stream.lock();
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(stream) = stream.as_ref() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Spawns the writer thread for `peer`.
pub(super) fn spawn<M>(
    shared: Arc<Shared>,
    peer: NodeId,
    link: Arc<PeerLink>,
    receiver: Receiver<M>,
) -> Result<JoinHandle<()>, TcpError>
where
    M: Serialize + Send + 'static,
{
    let name = format!("{}-peer-send-{}", shared.config.id, peer.0);
    let backoff = shared.config.backoff_min;
    let writer = Writer {
        shared,
        peer,
        link,
        receiver,
        connection: None,
        buffer: Vec::new(),
        backoff,
        next_attempt: None,
        failing: false,
    };
    spawn_named(name, move || writer.run())
}

/// An outbound stream: plaintext, or TLS over it.
enum PeerStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl PeerStream {
    fn socket(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(stream) => stream,
            PeerStream::Tls(stream) => &stream.sock,
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            PeerStream::Plain(stream) => stream.write(bytes),
            PeerStream::Tls(stream) => stream.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            PeerStream::Plain(stream) => stream.flush(),
            PeerStream::Tls(stream) => stream.flush(),
        }
    }
}

/// Completes a TLS handshake with the peer at `address` on `stream` (bounded by `timeout`
/// per read), so that a refusal shows here rather than as a broken first write.
fn handshake(
    tls: &crate::tls::PeerTls,
    stream: TcpStream,
    address: SocketAddr,
    timeout: Duration,
) -> std::io::Result<PeerStream> {
    let session = tls.dial(address.ip()).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(session, stream);
    stream.sock.set_read_timeout(Some(timeout))?;
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(PeerStream::Tls(Box::new(stream)))
}

/// An open outbound connection.
struct Connection {
    stream: PeerStream,
    address: SocketAddr,
    /// The address generation it was dialled for.
    generation: u64,
    opened_at: Instant,
}

struct Writer<M> {
    shared: Arc<Shared>,
    peer: NodeId,
    link: Arc<PeerLink>,
    receiver: Receiver<M>,
    connection: Option<Connection>,
    /// Encoded records waiting to be written; empty between drains.
    buffer: Vec<u8>,
    /// The delay to use after the next failure.
    backoff: Duration,
    /// No connection attempt before this instant; `None` means "may dial now".
    next_attempt: Option<Instant>,
    /// Whether the last attempt failed, so a failure streak is logged once, not per attempt.
    failing: bool,
}

impl<M: Serialize> Writer<M> {
    fn run(mut self) {
        while let Ok(first) = self.receiver.recv() {
            if self.link.is_stopping() {
                break;
            }
            self.drain(first);
        }
        self.close_connection();
    }

    /// Sends `first` and everything queued behind it, connecting first if needed.
    fn drain(&mut self, first: M) {
        self.forget_stale_connection();
        if self.connection.is_none() && !self.try_connect() {
            let queued = self.receiver.try_iter().take(PEER_QUEUE_CAPACITY).count();
            add(&self.shared.counters.dropped_unreachable, 1 + queued as u64);
            add(&self.link.send_failures, 1 + queued as u64);
            return;
        }
        let mut frames = 0;
        self.encode(&first, &mut frames);
        // Bounded so that a producer as fast as this writer cannot keep one drain going forever.
        for _ in 0..PEER_QUEUE_CAPACITY {
            let Ok(message) = self.receiver.try_recv() else {
                break;
            };
            self.encode(&message, &mut frames);
            if self.buffer.len() >= WRITE_BATCH_BYTES_MAX {
                if !self.write_out(frames) {
                    return;
                }
                frames = 0;
            }
        }
        self.write_out(frames);
    }

    /// Appends `message` as one record, or drops it if it cannot be encoded within a frame.
    fn encode(&mut self, message: &M, frames: &mut u64) {
        let start = self.buffer.len();
        let outcome = codec::write_value_record(message, &mut self.buffer);
        let payload_bytes = self
            .buffer
            .len()
            .saturating_sub(start + RECORD_HEADER_BYTES);
        let problem = match outcome {
            Err(error) => Some(error.to_string()),
            Ok(()) if payload_bytes as u64 > FRAME_BYTES_MAX => Some(format!(
                "{payload_bytes} bytes exceed the frame limit of {FRAME_BYTES_MAX}"
            )),
            Ok(()) => None,
        };
        match problem {
            None => *frames += 1,
            Some(reason) => {
                self.buffer.truncate(start);
                add(&self.shared.counters.dropped_unencodable, 1);
                tracing::warn!(
                    node = %self.shared.config.id,
                    peer = self.peer.0,
                    reason = %reason,
                    "dropping a message that cannot be sent"
                );
            }
        }
    }

    /// Writes and flushes the buffer. On failure the connection is closed, the `frames` in the
    /// buffer are counted as dropped, and a reconnect is scheduled.
    fn write_out(&mut self, frames: u64) -> bool {
        let Some(connection) = self.connection.as_mut() else {
            self.buffer.clear();
            return false;
        };
        if self.buffer.is_empty() {
            return true;
        }
        let result = connection
            .stream
            .write_all(&self.buffer)
            .and_then(|()| connection.stream.flush());
        let bytes = self.buffer.len() as u64;
        self.buffer.clear();
        match result {
            Ok(()) => {
                add(&self.shared.counters.frames_sent, frames);
                add(&self.shared.counters.bytes_sent, bytes);
                true
            }
            Err(error) => {
                add(&self.shared.counters.dropped_unreachable, frames);
                add(&self.link.send_failures, frames);
                if !self.link.is_stopping() {
                    tracing::debug!(
                        node = %self.shared.config.id,
                        peer = self.peer.0,
                        address = %connection.address,
                        error = %error,
                        "peer connection failed; reconnecting"
                    );
                }
                let lived = connection.opened_at.elapsed();
                self.close_connection();
                // A connection that dies young (a refused handshake, a peer crash-looping)
                // keeps the backoff growing; one that lived a while starts over from the
                // minimum.
                if lived >= self.shared.config.backoff_max {
                    self.backoff = self.shared.config.backoff_min;
                }
                self.failing = true;
                self.schedule_retry();
                false
            }
        }
    }

    /// Dials the peer unless the backoff says to wait. On success the handshake is in the
    /// buffer, ahead of the first batch.
    fn try_connect(&mut self) -> bool {
        if self.next_attempt.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let (address, generation) = *self.link.address.lock();
        let config = &self.shared.config;
        let stream =
            TcpStream::connect_timeout(&address, config.connect_timeout).and_then(|stream| {
                stream.set_nodelay(true)?;
                stream.set_write_timeout(Some(config.write_timeout))?;
                set_unacknowledged_timeout(&stream, config.unacknowledged_timeout)?;
                let clone = stream.try_clone()?;
                let stream = match &config.tls {
                    None => PeerStream::Plain(stream),
                    Some(tls) => handshake(tls, stream, address, config.handshake_timeout)?,
                };
                Ok((stream, clone))
            });
        let (stream, clone) = match stream {
            Ok(pair) => pair,
            Err(error) => {
                add(&self.shared.counters.connect_failures, 1);
                add(&self.link.connect_failures, 1);
                if !self.failing {
                    tracing::debug!(
                        node = %config.id,
                        peer = self.peer.0,
                        address = %address,
                        error = %error,
                        "cannot connect to a peer; retrying with backoff"
                    );
                }
                self.failing = true;
                self.schedule_retry();
                return false;
            }
        };
        {
            let mut slot = self.link.stream.lock();
            if self.link.is_stopping() {
                return false;
            }
            *slot = Some(clone);
        }
        if self.failing {
            tracing::debug!(
                node = %config.id,
                peer = self.peer.0,
                address = %address,
                "connected to a peer"
            );
        }
        self.buffer.clear();
        let handshake = Handshake::new(config.cluster_id, config.id);
        codec::write_value_record(&handshake, &mut self.buffer)
            .expect("a handshake of fixed-size integers always encodes");
        add(&self.shared.counters.connections_opened, 1);
        self.connection = Some(Connection {
            stream,
            address,
            generation,
            opened_at: Instant::now(),
        });
        self.next_attempt = None;
        self.failing = false;
        true
    }

    /// Closes a connection that was dialled for an address the peer no longer has, so the
    /// next send dials the new one at once.
    fn forget_stale_connection(&mut self) {
        let generation = self.link.address.lock().1;
        if self
            .connection
            .as_ref()
            .is_some_and(|connection| connection.generation != generation)
        {
            self.close_connection();
            self.next_attempt = None;
            self.backoff = self.shared.config.backoff_min;
        }
    }

    fn close_connection(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = connection.stream.socket().shutdown(Shutdown::Both);
        }
        self.link.stream.lock().take();
    }

    /// Waits a random delay in `[backoff / 2, backoff]` ("equal jitter", so that peers that
    /// failed together do not retry together), then doubles the backoff up to the maximum.
    fn schedule_retry(&mut self) {
        let ceiling = self.backoff.as_micros() as u64;
        let delay = Duration::from_micros(rand::rng().random_range(ceiling / 2..=ceiling));
        self.next_attempt = Some(Instant::now() + delay);
        self.backoff = (self.backoff * 2).min(self.shared.config.backoff_max);
    }
}

/// Drops the connection once sent data stays unacknowledged this long (see
/// [`crate::transport::tcp::TcpConfig::unacknowledged_timeout`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_unacknowledged_timeout(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout))
}

/// Elsewhere the option does not exist; the write timeout remains the backstop.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_unacknowledged_timeout(_stream: &TcpStream, _timeout: Duration) -> std::io::Result<()> {
    Ok(())
}
