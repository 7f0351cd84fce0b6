//! The peer transport over std TCP, generic over the message type `M`.
//!
//! # Threads
//!
//! ```text
//!  send(to, message) ──try_send──► [bounded queue per peer] ──► n{id}-peer-send-{peer}
//!                                                                 drain, coalesce, encode,
//!                                                                 write + flush once per drain
//!                                                                 ──TCP──► remote listener
//!
//!  remote writer ──TCP──► n{id}-peer-listen ──spawns──► n{id}-peer-recv (one per connection)
//!                                                         handshake, read_record, decode
//!                                                         ──► Deliver (set by the node:
//!                                                             stepped on this thread), or
//!                                                             ──send_timeout──► inbound
//! ```
//!
//! Every thread loops on an owned stop signal; [`TcpTransport::shutdown`] (or dropping the
//! transport) stops and joins all of them. Sockets are shut down to wake threads blocked in
//! I/O, and every blocking call also has a timeout as a second line of defence.
//!
//! # Wire format
//!
//! Connections are one-way: the dialer only writes, the acceptor only reads. The first record
//! on a connection is a [`Handshake`]; after it, every record is one encoded `M`. Records use
//! the [`codec`](crate::codec) framing `[len u32][crc32 u32][payload]`, each payload at most
//! [`FRAME_BYTES_MAX`](crate::limits::FRAME_BYTES_MAX) bytes. Anything else — a bad
//! handshake, an oversized length, a checksum mismatch, a payload that does not decode, a
//! record cut short by end of stream — closes that connection with a logged reason and leaves
//! every other connection serving. The handshake guards against misconfiguration (a node of
//! another cluster, a stale address), not against an attacker: it is not authentication.
//!
//! # TLS
//!
//! With [`TcpConfig::tls`] every connection is mutual TLS under the records above: the dialer
//! checks the acceptor's certificate against the peer CA and the IP address it dialled, and
//! completes the TLS handshake before its first record; the acceptor requires a certificate
//! from the same CA and, once the handshake record names the dialer's node id, checks that the
//! certificate carries an allowed name and that node's configured peer IP address — a
//! certificate stolen from one node cannot speak for another. Anything else (plaintext, a
//! certificate from another CA, an expired one, a name outside the allow-list) is refused
//! with a logged reason, like a bad handshake.
//!
//! # Delivery
//!
//! Best effort, in order per connection, never blocking the caller: a message is dropped (and
//! counted in [`TransportStats`]) when its peer's queue is full, the peer is unknown, the peer
//! is unreachable, or the inbound queue stays full. A message counted as sent was handed to
//! the kernel; it is still lost if the connection breaks before the peer reads it. Raft
//! retransmits.

mod listener;
mod writer;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::limits::PEER_QUEUE_CAPACITY;
use crate::types::NodeId;

use self::writer::{PeerLink, PeerWriter};

/// The first bytes of every handshake: "this is a keyval peer connection".
pub const HANDSHAKE_MAGIC: [u8; 8] = *b"KEYVALPR";

/// The peer protocol version this build speaks; a handshake with another version is refused.
pub const PROTOCOL_VERSION: u32 = 3;

/// The first record a dialer sends on a new connection, checked by the acceptor before any
/// message is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// Must equal [`HANDSHAKE_MAGIC`].
    pub magic: [u8; 8],
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Must equal the acceptor's cluster id: nodes of different clusters never talk.
    pub cluster_id: u64,
    /// The dialing node; must be in the acceptor's peer map.
    pub from: NodeId,
}

impl Handshake {
    /// The handshake this build sends for node `from` of cluster `cluster_id`.
    pub fn new(cluster_id: u64, from: NodeId) -> Handshake {
        Handshake {
            magic: HANDSHAKE_MAGIC,
            protocol_version: PROTOCOL_VERSION,
            cluster_id,
            from,
        }
    }
}

/// How a [`TcpTransport`] is set up. [`TcpConfig::new`] fills in sensible timings.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// This node.
    pub id: NodeId,
    /// The cluster this node belongs to; connections from other clusters are refused.
    pub cluster_id: u64,
    /// Where to listen for peers. Port 0 picks a free port; see [`TcpTransport::local_addr`].
    pub listen: SocketAddr,
    /// Every peer and its address. An entry for `id` itself is ignored, so the whole cluster
    /// map may be passed.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The first reconnect delay after a failure; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// The largest reconnect delay.
    pub backoff_max: Duration,
    /// How long one connection attempt may take. A writer stuck connecting to an address that
    /// never answers delays shutdown by at most this much.
    pub connect_timeout: Duration,
    /// How long one write may block on a peer that stops reading before the connection is
    /// dropped.
    pub write_timeout: Duration,
    /// How long an inbound connection may take to send its handshake.
    pub handshake_timeout: Duration,
    /// Mutual TLS between the nodes (`None`: plaintext). The files are re-read when they
    /// change.
    pub tls: Option<Arc<crate::tls::PeerTls>>,
    /// How long sent data may stay unacknowledged by the peer's TCP before the connection is
    /// dropped and redialled (`TCP_USER_TIMEOUT`, Linux). Without it a connection that lived
    /// through a partition stays in exponential retransmission backoff and resumes seconds
    /// after the network heals (measured: 7.9 s); with it the writer redials within
    /// `backoff_max` of the heal.
    pub unacknowledged_timeout: Duration,
}

impl TcpConfig {
    /// A configuration with default timings: backoff 10 ms → 1 s, connect timeout 500 ms,
    /// write timeout 2 s, handshake timeout 5 s, unacknowledged-data timeout 1 s.
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> TcpConfig {
        TcpConfig {
            id,
            cluster_id,
            listen,
            peers,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            unacknowledged_timeout: Duration::from_secs(1),
            tls: None,
        }
    }

    /// Checks the timings: all non-zero, `backoff_min <= backoff_max`.
    pub fn validate(&self) -> Result<(), TcpError> {
        let invalid = |reason: &str| {
            Err(TcpError::InvalidConfig {
                reason: reason.to_string(),
            })
        };
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return invalid("backoff_min must be non-zero and at most backoff_max");
        }
        if self.connect_timeout.is_zero()
            || self.write_timeout.is_zero()
            || self.handshake_timeout.is_zero()
            || self.unacknowledged_timeout.is_zero()
        {
            return invalid(
                "connect, write, handshake and unacknowledged timeouts must be non-zero",
            );
        }
        Ok(())
    }
}

/// Starting the transport, or adding a peer to it, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The listen address could not be bound.
    #[error("cannot listen for peers on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be spawned.
    #[error("cannot spawn thread {thread}: {source}")]
    Spawn {
        /// The thread's name.
        thread: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not usable.
    #[error("invalid peer transport configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
}

/// Counters of a transport since it started; a snapshot from [`TcpTransport::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Message frames written to peers (handshakes not included).
    pub frames_sent: u64,
    /// Bytes written to peers, framing and handshakes included.
    pub bytes_sent: u64,
    /// Message frames received and delivered or dropped at the inbound queue.
    pub frames_received: u64,
    /// Bytes read from peers, framing and handshakes included.
    pub bytes_received: u64,
    /// Messages dropped by `send` because the peer id is unknown.
    pub dropped_unknown_peer: u64,
    /// Messages dropped by `send` because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped by a writer because the peer was unreachable or the write failed.
    pub dropped_unreachable: u64,
    /// Messages dropped because they could not be encoded or exceed the frame limit.
    pub dropped_unencodable: u64,
    /// Received messages dropped because the inbound queue stayed full (or was closed).
    pub dropped_inbound_full: u64,
    /// Outbound connections established.
    pub connections_opened: u64,
    /// Outbound connection attempts that failed.
    pub connect_failures: u64,
    /// Inbound connections accepted and handshaken.
    pub connections_accepted: u64,
    /// Inbound connections refused: bad handshake, unknown node, or too many connections.
    pub connections_rejected: u64,
    /// Inbound connections closed because of a bad frame (too large, checksum, undecodable,
    /// truncated).
    pub connections_closed_bad_frame: u64,
}

/// Counters of one peer; from [`TcpTransport::peer_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Messages to the peer that were not sent: its queue was full, it was unreachable, or
    /// the write failed (Raft retransmits).
    pub send_failures: u64,
    /// Failed attempts to connect to the peer.
    pub connect_failures: u64,
    /// Whether a connection to the peer is open now.
    pub connected: bool,
}

/// The live counters behind [`TransportStats`].
#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped_unknown_peer: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_unencodable: AtomicU64,
    dropped_inbound_full: AtomicU64,
    connections_opened: AtomicU64,
    connect_failures: AtomicU64,
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    connections_closed_bad_frame: AtomicU64,
}

/// Adds `amount` to a counter. Relaxed: counters are statistics, not synchronisation.
fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: load(&self.frames_sent),
            bytes_sent: load(&self.bytes_sent),
            frames_received: load(&self.frames_received),
            bytes_received: load(&self.bytes_received),
            dropped_unknown_peer: load(&self.dropped_unknown_peer),
            dropped_queue_full: load(&self.dropped_queue_full),
            dropped_unreachable: load(&self.dropped_unreachable),
            dropped_unencodable: load(&self.dropped_unencodable),
            dropped_inbound_full: load(&self.dropped_inbound_full),
            connections_opened: load(&self.connections_opened),
            connect_failures: load(&self.connect_failures),
            connections_accepted: load(&self.connections_accepted),
            connections_rejected: load(&self.connections_rejected),
            connections_closed_bad_frame: load(&self.connections_closed_bad_frame),
        }
    }
}

/// State every thread of one transport shares.
struct Shared {
    config: TcpConfig,
    /// Set once by shutdown; every loop checks it.
    stopping: AtomicBool,
    counters: Counters,
    /// The ids an inbound handshake may name. Kept apart from the writers so that the
    /// listener does not depend on the message type's queues.
    /// With each one's peer address: with TLS, an accepted peer's certificate must name the
    /// address of the node it claims to be.
    known_peers: RwLock<BTreeMap<NodeId, SocketAddr>>,
}

/// A running peer transport. See the [module documentation](self) for threads and format.
pub struct TcpTransport<M> {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// One writer per peer. Read-locked by `send` (the hot path), write-locked only by
    /// membership changes and shutdown.
    writers: RwLock<BTreeMap<NodeId, PeerWriter<M>>>,
    listener_thread: Mutex<Option<JoinHandle<()>>>,
    /// Where the readers hand what they read.
    inbound: Arc<listener::InboundTarget<M>>,
}

impl<M> TcpTransport<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// Binds `config.listen`, spawns the listener and one writer per peer, and returns the
    /// running transport. Messages received from peers go to `inbound` as `(from, message)`.
    pub fn start(config: TcpConfig, inbound: Sender<(NodeId, M)>) -> Result<Self, TcpError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).map_err(|source| TcpError::Bind {
            address: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| TcpError::Bind {
            address: config.listen,
            source,
        })?;
        let id = config.id;
        let peers: BTreeMap<NodeId, SocketAddr> = config
            .peers
            .iter()
            .filter(|(peer, _)| **peer != id)
            .map(|(peer, address)| (*peer, *address))
            .collect();
        let shared = Arc::new(Shared {
            known_peers: RwLock::new(peers.clone()),
            config,
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let inbound = Arc::new(listener::InboundTarget::new(inbound));
        let transport = TcpTransport {
            shared: Arc::clone(&shared),
            local_addr,
            writers: RwLock::new(BTreeMap::new()),
            listener_thread: Mutex::new(None),
            inbound: Arc::clone(&inbound),
        };
        // From here on a failure drops `transport`, which stops whatever already started.
        let listener_thread = listener::spawn::<M>(listener, shared, inbound)?;
        *transport.listener_thread.lock() = Some(listener_thread);
        for (peer, address) in peers {
            transport.set_peer_address(peer, address)?;
        }
        Ok(transport)
    }

    /// Queues `message` for peer `to` and returns at once. When the peer's queue is full or
    /// `to` is not a known peer the message is dropped and counted: Raft retransmits.
    pub fn send(&self, to: NodeId, message: M) {
        let writers = self.writers.read();
        let Some(writer) = writers.get(&to) else {
            add(&self.shared.counters.dropped_unknown_peer, 1);
            return;
        };
        match writer.sender.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                add(&self.shared.counters.dropped_queue_full, 1);
                add(&writer.link.send_failures, 1);
            }
        }
    }

    /// From now on the reader threads hand every batch of messages they read to `target` on
    /// their own thread instead of queueing them for `start`'s `inbound` (which a node's
    /// `inbound` thread would take and step: a wake-up more per batch). Messages already
    /// queued are still taken from the queue — Raft copes with the one-time reordering.
    /// Returns `false` (and changes nothing) when a target was already set.
    pub fn deliver_directly(&self, target: Arc<dyn super::Deliver<M>>) -> bool {
        self.inbound.direct.set(target).is_ok()
    }

    /// The address the listener is bound to (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.config.id
    }

    /// Adds peer `id` at `address`, or moves an existing peer to a new address (its current
    /// connection is dropped and redialled). Connections from `id` are accepted from now on.
    /// Setting the address of this node itself is ignored.
    pub fn set_peer_address(&self, id: NodeId, address: SocketAddr) -> Result<(), TcpError> {
        if id == self.shared.config.id {
            return Ok(());
        }
        let mut writers = self.writers.write();
        if let Some(writer) = writers.get(&id) {
            writer.link.set_address(address);
            self.shared.known_peers.write().insert(id, address);
            return Ok(());
        }
        let (sender, receiver) = crossbeam_channel::bounded(PEER_QUEUE_CAPACITY);
        let link = Arc::new(PeerLink::new(self.shared.config.id, address));
        let thread = writer::spawn(Arc::clone(&self.shared), id, Arc::clone(&link), receiver)?;
        writers.insert(
            id,
            PeerWriter {
                sender,
                link,
                thread,
            },
        );
        self.shared.known_peers.write().insert(id, address);
        Ok(())
    }

    /// Forgets peer `id`: stops and joins its writer, drops its queued messages and refuses
    /// its new connections. A connection it already has open stays until it closes.
    pub fn remove_peer(&self, id: NodeId) {
        self.shared.known_peers.write().remove(&id);
        let removed = self.writers.write().remove(&id);
        if let Some(writer) = removed {
            writer.stop_and_join();
        }
    }

    /// The peers this transport sends to, with their addresses.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.writers
            .read()
            .iter()
            .map(|(id, writer)| (*id, writer.link.address()))
            .collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// Counters of each known peer since it became known.
    pub fn peer_stats(&self) -> BTreeMap<NodeId, PeerStats> {
        self.writers
            .read()
            .iter()
            .map(|(&id, writer)| {
                let link = &writer.link;
                let stats = PeerStats {
                    send_failures: link.send_failures.load(Ordering::Relaxed),
                    connect_failures: link.connect_failures.load(Ordering::Relaxed),
                    connected: link.is_connected(),
                };
                (id, stats)
            })
            .collect()
    }

    /// Stops every thread the transport spawned and waits for them. Queued messages are
    /// dropped. Dropping the transport does the same. Sockets are shut down to wake blocked
    /// threads, so this takes milliseconds, except that a writer in the middle of dialling an
    /// address that never answers is waited for up to `connect_timeout`.
    pub fn shutdown(self) {
        // Drop does the work, so that an unwinding owner also stops the threads.
        drop(self);
    }
}

impl<M> TcpTransport<M> {
    /// Stops and joins everything; idempotent.
    fn stop_and_join(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let writers = std::mem::take(&mut *self.writers.write());
        // Signal every writer first so that they wind down in parallel, then join them.
        for writer in writers.values() {
            writer.link.stop();
        }
        for (_, writer) in writers {
            writer.stop_and_join();
        }
        if let Some(thread) = self.listener_thread.lock().take() {
            join_logged(self.shared.config.id, thread);
        }
    }
}

impl<M> Drop for TcpTransport<M> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Joins `thread`, logging (not propagating) a panic so that shutdown always completes.
fn join_logged(id: NodeId, thread: JoinHandle<()>) {
    let name = thread.thread().name().unwrap_or("unnamed").to_string();
    if thread.join().is_err() {
        tracing::error!(node = %id, thread = %name, "a peer transport thread panicked");
    }
}

/// Spawns a named thread, mapping failure to [`TcpError::Spawn`].
fn spawn_named(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, TcpError> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|source| TcpError::Spawn {
            thread: name,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn largest_handshake_fits_the_handshake_limit() {
        let handshake = Handshake::new(u64::MAX, NodeId(u64::MAX));
        let mut bytes = Vec::new();
        codec::write_value_record(&handshake, &mut bytes).unwrap();
        let payload = bytes.len() - codec::RECORD_HEADER_BYTES;
        assert!(
            payload as u64 <= listener::HANDSHAKE_BYTES_MAX,
            "{payload} bytes"
        );
        assert_eq!(codec::decode::<Handshake>(&bytes[8..]).unwrap(), handshake);
    }

    #[test]
    fn validate_refuses_unusable_timings() {
        let listen = "127.0.0.1:0".parse().unwrap();
        let good = TcpConfig::new(NodeId(1), 7, listen, BTreeMap::new());
        assert!(good.validate().is_ok());
        let mut inverted = good.clone();
        inverted.backoff_min = inverted.backoff_max * 2;
        assert!(inverted.validate().is_err());
        let mut zero = good.clone();
        zero.connect_timeout = Duration::ZERO;
        assert!(zero.validate().is_err());
        let (sender, _receiver) = crossbeam_channel::bounded::<(NodeId, u64)>(1);
        assert!(matches!(
            TcpTransport::start(zero, sender),
            Err(TcpError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn address_in_use_is_a_bind_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let config = TcpConfig::new(NodeId(1), 7, address, BTreeMap::new());
        let (sender, _receiver) = crossbeam_channel::bounded::<(NodeId, u64)>(1);
        let error = TcpTransport::start(config, sender)
            .err()
            .expect("bind fails");
        assert!(matches!(error, TcpError::Bind { .. }), "{error}");
    }
}
