//! The `n{id}-peer-listen` thread, which accepts peer connections, and the `n{id}-peer-recv`
//! threads it spawns, one per inbound connection. A reader checks the handshake, then turns
//! records into messages for the node (its direct target, else the inbound queue), a batch of
//! every whole record per read. Any bad input ends that one connection with a logged reason;
//! nothing read from the network can panic the node or make it allocate more than the bytes
//! that actually arrived (plus one read chunk).

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};
use serde::de::DeserializeOwned;

use super::{
    add, join_logged, spawn_named, Handshake, Shared, TcpError, HANDSHAKE_MAGIC, PROTOCOL_VERSION,
};
use crate::codec::{self, RecordRead, RECORD_HEADER_BYTES};
use crate::limits::FRAME_BYTES_MAX;
use crate::transport::Deliver;
use crate::types::NodeId;

/// The listener polls a non-blocking accept this often, so that it notices shutdown without
/// any trick to wake a blocked `accept`. Only connection setup waits on it.
const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Readers block in `read` at most this long before checking for shutdown (a second line of
/// defence: shutdown also shuts their sockets down) and the handshake deadline.
const READ_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often the listener looks for changed peer TLS files.
const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many inbound connections are served at once; more are refused. Legitimate
/// peers hold one each (briefly two while reconnecting).
const INBOUND_CONNECTIONS_MAX: usize = 128;

/// Bytes requested from the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The largest handshake record accepted; the real one is about 25 bytes.
pub(super) const HANDSHAKE_BYTES_MAX: u64 = 64;

/// How long a reader waits for room in a full inbound queue before dropping the message, so
/// that a stuck consumer slows peers down but cannot wedge the reader or shutdown.
const INBOUND_SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// A reader hands over at most this many messages at once (one lock hold of the node's core).
const DELIVER_BATCH_MAX: usize = 512;

/// Where readers hand the messages they read: the target set by
/// [`TcpTransport::deliver_directly`](super::TcpTransport::deliver_directly), else the queue.
pub(super) struct InboundTarget<M> {
    queue: Sender<(NodeId, M)>,
    pub(super) direct: OnceLock<Arc<dyn Deliver<M>>>,
}

impl<M> InboundTarget<M> {
    pub(super) fn new(queue: Sender<(NodeId, M)>) -> InboundTarget<M> {
        InboundTarget {
            queue,
            direct: OnceLock::new(),
        }
    }
}

/// Spawns the listener thread.
pub(super) fn spawn<M>(
    listener: TcpListener,
    shared: Arc<Shared>,
    inbound: Arc<InboundTarget<M>>,
) -> Result<JoinHandle<()>, TcpError>
where
    M: DeserializeOwned + Send + 'static,
{
    listener
        .set_nonblocking(true)
        .map_err(|source| TcpError::Bind {
            address: shared.config.listen,
            source,
        })?;
    let name = format!("{}-peer-listen", shared.config.id);
    let accept_loop = AcceptLoop {
        listener,
        shared,
        inbound,
        connections: Vec::new(),
    };
    spawn_named(name, move || accept_loop.run())
}

/// A reader thread and a clone of its socket, to wake it at shutdown.
struct InboundConnection {
    stream: TcpStream,
    thread: JoinHandle<()>,
}

struct AcceptLoop<M> {
    listener: TcpListener,
    shared: Arc<Shared>,
    inbound: Arc<InboundTarget<M>>,
    /// Invariant: `connections.len() <= INBOUND_CONNECTIONS_MAX`.
    connections: Vec<InboundConnection>,
}

impl<M: DeserializeOwned + Send + 'static> AcceptLoop<M> {
    fn run(mut self) {
        let id = self.shared.config.id;
        let mut tls_checked_at = std::time::Instant::now();
        while !self.shared.stopping.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((stream, remote)) => self.admit(stream, remote),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    self.reap_finished();
                    if let Some(tls) = &self.shared.config.tls {
                        if tls_checked_at.elapsed() >= TLS_CHECK_INTERVAL {
                            tls_checked_at = std::time::Instant::now();
                            tls.reload_if_changed();
                        }
                    }
                    thread::sleep(ACCEPT_POLL_INTERVAL);
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(node = %id, error = %error, "accepting a peer connection failed");
                    thread::sleep(ACCEPT_POLL_INTERVAL);
                }
            }
        }
        for connection in &self.connections {
            let _ = connection.stream.shutdown(Shutdown::Both);
        }
        for connection in self.connections {
            join_logged(id, connection.thread);
        }
    }

    /// Starts a reader for a new connection, or refuses it when there are too many.
    fn admit(&mut self, stream: TcpStream, remote: SocketAddr) {
        let id = self.shared.config.id;
        self.reap_finished();
        if self.connections.len() >= INBOUND_CONNECTIONS_MAX {
            add(&self.shared.counters.connections_rejected, 1);
            tracing::warn!(
                node = %id,
                remote = %remote,
                limit = INBOUND_CONNECTIONS_MAX,
                "refused a peer connection: too many connections"
            );
            return;
        }
        let configured = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| stream.set_read_timeout(Some(READ_POLL_INTERVAL)))
            .and_then(|()| stream.try_clone());
        let clone = match configured {
            Ok(clone) => clone,
            Err(error) => {
                tracing::warn!(
                    node = %id,
                    remote = %remote,
                    error = %error,
                    "cannot set up a peer connection"
                );
                return;
            }
        };
        let tls = match &self.shared.config.tls {
            None => None,
            Some(tls) => match tls.accept() {
                Ok(session) => Some(Box::new(session)),
                Err(error) => {
                    tracing::warn!(%remote, %error, "dropping peer connection: cannot start TLS");
                    return;
                }
            },
        };
        let reader = Reader {
            shared: Arc::clone(&self.shared),
            inbound: Arc::clone(&self.inbound),
            stream,
            tls,
            remote,
            buffer: Vec::new(),
            start: 0,
            filled: 0,
        };
        match spawn_named(format!("{id}-peer-recv"), move || reader.run()) {
            Ok(thread) => self.connections.push(InboundConnection {
                stream: clone,
                thread,
            }),
            Err(error) => tracing::warn!(
                node = %id,
                remote = %remote,
                error = %error,
                "dropping a peer connection: cannot start its reader"
            ),
        }
    }

    /// Joins the readers whose connections have ended.
    fn reap_finished(&mut self) {
        let id = self.shared.config.id;
        let mut index = 0;
        while index < self.connections.len() {
            if self.connections[index].thread.is_finished() {
                let connection = self.connections.swap_remove(index);
                join_logged(id, connection.thread);
            } else {
                index += 1;
            }
        }
    }
}

/// Why a reader stopped.
enum Ending {
    /// The transport is shutting down.
    Stopping,
    /// The peer closed the connection at a record boundary.
    Closed,
    /// The connection failed underneath us (reset, say): logged, not the peer's fault.
    Lost(String),
    /// The peer sent something unacceptable: logged and counted.
    Fault(String),
}

struct Reader<M> {
    shared: Arc<Shared>,
    inbound: Arc<InboundTarget<M>>,
    stream: TcpStream,
    /// The TLS session over `stream`, on a TLS peer port.
    tls: Option<Box<rustls::ServerConnection>>,
    remote: SocketAddr,
    /// Bytes `start..filled` are read and not yet consumed; bytes from `filled` on are
    /// (initialised) room for the next read, so reads do not zero memory again and again.
    /// Invariant: `start <= filled <= buffer.len()`, and the buffer holds at most one
    /// incomplete record (at most `FRAME_BYTES_MAX`) plus one read chunk beyond what was
    /// consumed.
    buffer: Vec<u8>,
    start: usize,
    filled: usize,
}

impl<M: DeserializeOwned + Send + 'static> Reader<M> {
    fn run(mut self) {
        let id = self.shared.config.id;
        let remote = self.remote;
        let from = match self.handshake() {
            Ok(from) => from,
            Err(Ending::Fault(reason)) => {
                add(&self.shared.counters.connections_rejected, 1);
                tracing::warn!(
                    node = %id,
                    remote = %remote,
                    reason = %reason,
                    "refused a peer connection"
                );
                return;
            }
            Err(Ending::Lost(reason)) => {
                tracing::debug!(
                    node = %id,
                    remote = %remote,
                    reason = %reason,
                    "peer connection lost before its handshake"
                );
                return;
            }
            Err(Ending::Stopping | Ending::Closed) => return,
        };
        add(&self.shared.counters.connections_accepted, 1);
        match self.serve(from) {
            Ending::Stopping | Ending::Closed => {}
            Ending::Lost(reason) => {
                tracing::debug!(
                    node = %id,
                    peer = from.0,
                    remote = %remote,
                    reason = %reason,
                    "peer connection lost"
                );
            }
            Ending::Fault(reason) => {
                add(&self.shared.counters.connections_closed_bad_frame, 1);
                tracing::warn!(
                    node = %id,
                    peer = from.0,
                    remote = %remote,
                    reason = %reason,
                    "closing a peer connection: bad input"
                );
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads and checks the handshake; returns the peer it names.
    fn handshake(&mut self) -> Result<NodeId, Ending> {
        let deadline = Instant::now() + self.shared.config.handshake_timeout;
        let (begin, end) = self.next_payload(HANDSHAKE_BYTES_MAX, Some(deadline))?;
        let handshake: Handshake = codec::decode(&self.buffer[begin..end])
            .map_err(|error| Ending::Fault(format!("handshake does not decode: {error}")))?;
        let config = &self.shared.config;
        if handshake.magic != HANDSHAKE_MAGIC {
            return Err(Ending::Fault("not a keyval peer (bad magic)".to_string()));
        }
        if handshake.protocol_version != PROTOCOL_VERSION {
            return Err(Ending::Fault(format!(
                "protocol version {} is not this build's {PROTOCOL_VERSION}",
                handshake.protocol_version
            )));
        }
        if handshake.cluster_id != config.cluster_id {
            return Err(Ending::Fault(format!(
                "{} belongs to cluster {}, this node to cluster {}",
                handshake.from, handshake.cluster_id, config.cluster_id
            )));
        }
        let Some(claimed) = self.shared.known_peers.read().get(&handshake.from).copied() else {
            return Err(Ending::Fault(format!(
                "{} is not a known peer",
                handshake.from
            )));
        };
        if let (Some(tls), Some(session)) = (&config.tls, &self.tls) {
            tls.check_peer(session.peer_certificates(), Some(claimed.ip()))
                .map_err(|reason| Ending::Fault(format!("{}: {reason}", handshake.from)))?;
        }
        Ok(handshake.from)
    }

    /// Delivers messages from `from` until the connection ends: every whole record already
    /// read goes over in one batch before the reader waits for more bytes.
    fn serve(&mut self, from: NodeId) -> Ending {
        let mut batch = Vec::new();
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ending::Stopping;
            }
            while batch.len() < DELIVER_BATCH_MAX {
                let (begin, end) = match self.buffered_payload(FRAME_BYTES_MAX) {
                    Ok(Some(range)) => range,
                    Ok(None) => break,
                    Err(ending) => {
                        // What came before the bad frame was sent in good faith.
                        self.deliver(from, &mut batch);
                        return ending;
                    }
                };
                match codec::decode(&self.buffer[begin..end]) {
                    Ok(message) => {
                        add(&self.shared.counters.frames_received, 1);
                        batch.push(message);
                    }
                    Err(error) => {
                        self.deliver(from, &mut batch);
                        return Ending::Fault(format!("frame does not decode: {error}"));
                    }
                }
            }
            if !batch.is_empty() {
                self.deliver(from, &mut batch);
                continue;
            }
            if let Err(ending) = self.read_more(None) {
                return ending;
            }
        }
    }

    /// Hands `batch` (emptied) to the node: to the direct target when one is set, else one
    /// message at a time to the queue, dropping (and counting) what stays refused.
    fn deliver(&self, from: NodeId, batch: &mut Vec<M>) {
        if batch.is_empty() {
            return;
        }
        if let Some(direct) = self.inbound.direct.get() {
            direct.deliver(from, batch);
            batch.clear();
            return;
        }
        let mut messages = batch.drain(..);
        while let Some(message) = messages.next() {
            match self
                .inbound
                .queue
                .send_timeout((from, message), INBOUND_SEND_TIMEOUT)
            {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_) | SendTimeoutError::Disconnected(_)) => {
                    // A consumer that let one message wait that long is stuck or gone: the
                    // rest of the batch is dropped with it rather than waited for one by one
                    // (which would hold up shutdown for a whole batch of timeouts).
                    let dropped = 1 + messages.len() as u64;
                    add(&self.shared.counters.dropped_inbound_full, dropped);
                    return;
                }
            }
        }
    }

    /// Returns the payload range of the next checksummed record of at most `limit` bytes,
    /// reading as needed.
    fn next_payload(
        &mut self,
        limit: u64,
        deadline: Option<Instant>,
    ) -> Result<(usize, usize), Ending> {
        loop {
            if let Some(range) = self.buffered_payload(limit)? {
                return Ok(range);
            }
            self.read_more(deadline)?;
        }
    }

    /// Takes the next whole record of at most `limit` bytes already read and returns its
    /// payload range; `None` when more bytes are needed.
    fn buffered_payload(&mut self, limit: u64) -> Result<Option<(usize, usize)>, Ending> {
        match codec::read_record(&self.buffer[self.start..self.filled], limit) {
            Ok(RecordRead::Complete { payload, consumed }) => {
                let begin = self.start + RECORD_HEADER_BYTES;
                let end = begin + payload.len();
                self.start += consumed;
                Ok(Some((begin, end)))
            }
            Ok(RecordRead::Incomplete { .. }) => Ok(None),
            Err(error) => Err(Ending::Fault(format!("bad frame: {error}"))),
        }
    }

    /// Drops consumed bytes, then reads at least one more byte.
    fn read_more(&mut self, deadline: Option<Instant>) -> Result<(), Ending> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        // Give back the room a large frame needed once it is gone.
        if self.buffer.len() > 4 * READ_CHUNK_BYTES && self.filled < READ_CHUNK_BYTES {
            self.buffer.truncate(2 * READ_CHUNK_BYTES);
            self.buffer.shrink_to_fit();
        }
        if self.buffer.len() < self.filled + READ_CHUNK_BYTES {
            self.buffer.resize(self.filled + READ_CHUNK_BYTES, 0);
        }
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Err(Ending::Stopping);
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(Ending::Fault(format!(
                    "no handshake within {:?}",
                    self.shared.config.handshake_timeout
                )));
            }
            let held = self.filled;
            let chunk = &mut self.buffer[held..held + READ_CHUNK_BYTES];
            let result = match &mut self.tls {
                None => self.stream.read(chunk),
                // Takes records (and answers the handshake) as needed; a read timeout
                // leaves the session as it was, to be resumed.
                Some(session) => rustls::Stream::new(&mut **session, &mut self.stream).read(chunk),
            };
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Err(Ending::Stopping);
            }
            match result {
                Ok(0) if held == 0 => return Err(Ending::Closed),
                Ok(0) => {
                    return Err(Ending::Fault(format!(
                        "stream ended inside a frame ({held} bytes of an incomplete record)"
                    )))
                }
                Ok(read) => {
                    self.filled += read;
                    add(&self.shared.counters.bytes_received, read as u64);
                    return Ok(());
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                // Plaintext on a TLS port, a certificate from another CA, an expired one.
                Err(error) if error.kind() == ErrorKind::InvalidData => {
                    return Err(Ending::Fault(format!("TLS: {error}")))
                }
                Err(error) => return Err(Ending::Lost(format!("read failed: {error}"))),
            }
        }
    }
}
