//! The client-facing TCP server of a key-value node: a few event-loop threads, each owning
//! many non-blocking connections, instead of threads per connection.
//!
//! ```text
//!  [n1-client-accept] accept, count, hand over round-robin ──► [n1-client-io-0..N]
//!
//!  [n1-client-io-K] (event_loop.rs) one mio::Poll over its connections:
//!     read frames ─► answer at once (stale reads, status, snapshots, refusals)
//!                 └► register in flight + submit without blocking (writes batched across
//!                    the loop's connections, linearizable and lease reads); completions come
//!                    back through channels that wake the loop
//!     deadlines  ─► a write still unknown at its deadline is answered `Indeterminate`, a read
//!                    `ReadTimeout`; idle connections and slow frames are closed
//!     write      ─► every response ready, one write per connection per iteration
//!
//!  [n1-leases] the leader's lease keeper (leases.rs): deadlines on the monotonic clock,
//!  revokes of expired leases through the log; keep-alives reach it after a read barrier
//!
//!  membership changes and leadership transfers block until they commit (up to the request's
//!  deadline): the loop hands each to a short-lived [n1-client-admin-K] thread, whose answer
//!  returns to the loop; at most `ADMIN_REQUESTS_MAX` run at once per server
//! ```
//!
//! A connection is a state machine (`connection.rs`) with no thread of its own, so an idle
//! connection costs its socket and a few hundred bytes: no read buffer (the loop reads through
//! one scratch buffer and a connection keeps only a partial frame), no stack.
//!
//! Bad input (garbage, a truncated frame, an oversized length prefix) closes only that
//! connection, with a logged reason, after it has answered what it has in flight.
//! [`Server::shutdown`] stops accepting, lets every connection finish the requests it has in
//! flight (each bounded by its deadline), closes them and joins every thread.
//!
//! A connection cannot hold resources by sending nothing, or too little:
//!
//! | what | bound | then |
//! |---|---|---|
//! | connections | [`ServerOptions::connections_max`] | more are closed at once |
//! | requests in flight per connection | [`ServerOptions::inflight_per_connection_max`] | the connection is not read until one is answered |
//! | responses unwritten per connection | 1 MiB | the connection is not read until its client takes them |
//! | a client that takes no responses | [`ServerOptions::write_timeout`] | closed |
//! | idle: nothing received, nothing in flight | [`ServerOptions::idle_timeout`] | closed |
//! | a frame begun and not whole | [`ServerOptions::frame_timeout`] | closed |
//! | bytes of frames larger than a connection's 64 KiB read buffer, all connections | [`ServerOptions::request_buffer_bytes_max`] ([`ByteBudget`]) | the frame waits, unread, until room is released or its frame deadline passes |
//!
//! The deadlines (`server/deadlines.rs`) and the budget are plain values that take the time as an
//! argument or return a reservation; the loops keep one timer per connection at its next due
//! instant.

mod admin;
pub mod auth;
mod connection;
mod deadlines;
mod event_loop;
pub mod leases;
mod snapshot;
mod watch;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::codec::RECORD_HEADER_BYTES;
use crate::kv::KvStore;
use crate::limits::FRAME_BYTES_MAX;
use crate::log;
use crate::node::Node;
use crate::types::NodeId;

use crate::protocol::budget::ByteBudget;

/// Default bound on open client connections per node (etcd aims at O(10k) clients per member).
/// Each open connection takes a file descriptor: the process's limit must allow it.
pub const CONNECTIONS_MAX_DEFAULT: usize = 16 * 1024;

/// Default number of event-loop threads serving client connections.
pub const IO_THREADS_DEFAULT: usize = 2;

/// Default bound on requests in flight per connection.
pub const INFLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 1024;

/// Default time a request may take when the client does not say.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Default time a client may leave its responses unread (its socket taking none) before its
/// connection is closed.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The longest time any request may take, whatever the client asks.
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// Default time after which a connection with nothing in flight that sent nothing is closed.
/// Idle connections would otherwise hold the connection slots for good: `connections_max`
/// of them lock every other client out.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// Default time a frame may take to arrive whole once its first byte arrived (a 16 MiB frame
/// at 1 MB/s takes 16 s). A slow-loris sender is closed at this deadline.
pub const FRAME_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Default cap on the bytes all connections together hold for frames larger than a
/// connection's read buffer, while they arrive ([`ByteBudget`]): eight maximal frames.
pub const REQUEST_BUFFER_BYTES_MAX_DEFAULT: u64 = 8 * REQUEST_BUFFER_BYTES_MIN;

/// The smallest request-buffer budget: one maximal frame with its header, so that every valid
/// frame can be received.
pub const REQUEST_BUFFER_BYTES_MIN: u64 = FRAME_BYTES_MAX + RECORD_HEADER_BYTES as u64;

const _: () = assert!(REQUEST_BUFFER_BYTES_MAX_DEFAULT >= REQUEST_BUFFER_BYTES_MIN);

/// How long the acceptor pauses after a failed accept (out of file descriptors, say).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How a [`Server`] is set up.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where to listen for clients; port 0 picks a free port ([`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Every node's client address, for `NotLeader` redirects and status replies. This
    /// node's own entry is what it advertises (defaults to the bound address).
    pub client_addresses: BTreeMap<NodeId, String>,
    /// Open connections at most; more are closed at once with a logged reason.
    pub connections_max: usize,
    /// Requests in flight per connection at most; the server stops reading a connection
    /// that has this many, so a client that pipelines more is slowed by TCP, not refused.
    pub inflight_per_connection_max: usize,
    /// Event-loop threads serving the connections (each owns its share of them).
    pub io_threads: usize,
    /// Deadline of requests whose `timeout_ms` is 0.
    pub request_timeout_default: Duration,
    /// How long a client may leave its responses unread (the socket taking none of them)
    /// before its connection is dropped: a client that stops reading must not hold memory, or
    /// shutdown, forever.
    pub write_timeout: Duration,
    /// A connection that sent nothing and had nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this long of its first byte, or its connection is
    /// closed.
    pub frame_timeout: Duration,
    /// TLS on the client port (`None`: plaintext). Its files are re-read when they change.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Where answered requests are counted, by operation and result, with their latency.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Bytes all connections together may hold for frames larger than their read buffer
    /// while those arrive; a frame that does not fit waits (the connection stops reading)
    /// until room is released or its frame deadline passes. At least
    /// [`REQUEST_BUFFER_BYTES_MIN`].
    pub request_buffer_bytes_max: u64,
    /// How long an auth token this server issues stays valid (default
    /// [`auth::AUTH_TOKEN_TTL_DEFAULT`], 5 minutes).
    pub auth_token_ttl: Duration,
}

impl ServerOptions {
    /// Options with the defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> ServerOptions {
        ServerOptions {
            listen,
            client_addresses: BTreeMap::new(),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            inflight_per_connection_max: INFLIGHT_PER_CONNECTION_MAX_DEFAULT,
            io_threads: IO_THREADS_DEFAULT,
            request_timeout_default: REQUEST_TIMEOUT_DEFAULT,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            frame_timeout: FRAME_TIMEOUT_DEFAULT,
            tls: None,
            metrics: None,
            request_buffer_bytes_max: REQUEST_BUFFER_BYTES_MAX_DEFAULT,
            auth_token_ttl: auth::AUTH_TOKEN_TTL_DEFAULT,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerStartError {
    /// The listen address could not be bound.
    #[error("cannot listen for clients on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The options are unusable.
    #[error("invalid server options: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// A thread could not be spawned.
    #[error("spawning the listener thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Counters a server keeps (for tests and operators).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections refused because of the limit.
    pub connections_refused: u64,
    /// Connections closed because of bad input.
    pub connections_closed_bad_input: u64,
    /// Connections closed after the idle timeout.
    pub connections_closed_idle: u64,
    /// Connections closed because a frame did not arrive whole within the frame timeout.
    pub connections_closed_slow: u64,
    /// Connections open now.
    pub connections_open: usize,
    /// Requests received.
    pub requests: u64,
    /// The most requests ever in flight at once on one connection (received, not yet
    /// answered): above 1 only for a client that pipelines.
    pub requests_in_flight_max: u64,
    /// Bytes of the request-buffer budget reserved now (frames being received that are
    /// larger than a connection's read buffer).
    pub request_buffer_bytes: u64,
    /// The most bytes of the budget ever reserved at once; never above the budget.
    pub request_buffer_bytes_max: u64,
    /// Frames that had to wait for room in the budget.
    pub request_buffer_waits: u64,
}

/// State shared by the server's threads.
pub(crate) struct Shared {
    pub(crate) node: Arc<Node<KvStore>>,
    pub(crate) options: ServerOptions,
    pub(crate) advertised: String,
    pub(crate) stopping: AtomicBool,
    connections_open: AtomicUsize,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    pub(crate) connections_closed_bad_input: AtomicU64,
    pub(crate) connections_closed_idle: AtomicU64,
    pub(crate) connections_closed_slow: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// See [`ServerStats::requests_in_flight_max`].
    pub(crate) requests_in_flight_max: AtomicU64,
    /// Caps the bytes held by frames being received (see [`budget`]).
    pub(crate) request_buffer: Arc<ByteBudget>,
    /// Admin requests (membership changes, transfers) being served now, each on its own
    /// thread; at most [`admin::ADMIN_REQUESTS_MAX`].
    pub(crate) admin_in_flight: AtomicUsize,
    /// Admin threads started so far (for their names).
    pub(crate) admin_started: AtomicU64,
    /// Admin threads, joined at shutdown; finished ones are reaped when one starts.
    admin_threads: Mutex<Vec<JoinHandle<()>>>,
    /// The leader's lease clock (driven by the `leases` thread, asked by the event loops).
    pub(crate) leases: Arc<leases::LeaseKeeper>,
    /// Where the store publishes its auth state (each loop keeps a view of it).
    pub(crate) auth_publisher: crate::kv::auth::AuthPublisher,
    /// The `{id}-auth` thread that verifies passwords off the event loops.
    pub(super) auth_worker: Mutex<auth::AuthWorker>,
}

impl Shared {
    /// The client address of `id`, if known: the live configuration's (addresses travel in
    /// configuration entries, so a member that joined later is known), else the static one
    /// from the options.
    pub(crate) fn client_address(&self, id: NodeId) -> Option<String> {
        if id == self.node.id() {
            return Some(self.advertised.clone());
        }
        let live = self
            .node
            .members()
            .addresses
            .remove(&id)
            .map(|address| address.client)
            .filter(|client| !client.is_empty());
        live.or_else(|| self.options.client_addresses.get(&id).cloned())
    }
}

/// A running client server. Dropping it shuts it down.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener_thread: Option<JoinHandle<()>>,
    loops: Vec<event_loop::LoopHandle>,
    loop_threads: Vec<JoinHandle<()>>,
    /// Stops the `leases` thread (by being dropped).
    leases_stop: Option<crossbeam_channel::Sender<()>>,
    /// Wakes the loops holding watches after each applied batch (registered with the node).
    watch_notifier: Option<Arc<watch::WatchNotifier>>,
    leases_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `options.listen` and starts accepting clients for `node`.
    pub fn start(
        node: Arc<Node<KvStore>>,
        options: ServerOptions,
    ) -> Result<Server, ServerStartError> {
        if options.connections_max == 0
            || options.inflight_per_connection_max == 0
            || options.io_threads == 0
        {
            return Err(ServerStartError::Invalid {
                reason: "connections_max, inflight_per_connection_max and io_threads must be at \
                         least 1"
                    .into(),
            });
        }
        if options.write_timeout.is_zero() {
            return Err(ServerStartError::Invalid {
                reason: "write_timeout must be longer than zero".into(),
            });
        }
        if options.request_timeout_default.is_zero()
            || options.request_timeout_default > REQUEST_TIMEOUT_MAX
        {
            return Err(ServerStartError::Invalid {
                reason: format!("request_timeout_default must be in (0, {REQUEST_TIMEOUT_MAX:?}]"),
            });
        }
        if options.idle_timeout.is_zero() || options.frame_timeout.is_zero() {
            return Err(ServerStartError::Invalid {
                reason: "idle_timeout and frame_timeout must be longer than zero".into(),
            });
        }
        if options.auth_token_ttl.is_zero() {
            return Err(ServerStartError::Invalid {
                reason: "auth_token_ttl must be longer than zero".into(),
            });
        }
        if options.request_buffer_bytes_max < REQUEST_BUFFER_BYTES_MIN {
            return Err(ServerStartError::Invalid {
                reason: format!(
                    "request_buffer_bytes_max must be at least {REQUEST_BUFFER_BYTES_MIN} (one \
                     maximal frame), not {}",
                    options.request_buffer_bytes_max
                ),
            });
        }
        let request_buffer_bytes_max = options.request_buffer_bytes_max;
        let listener =
            TcpListener::bind(options.listen).map_err(|source| ServerStartError::Bind {
                address: options.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerStartError::Bind {
                address: options.listen,
                source,
            })?;
        let id = node.id();
        let auth_worker = auth::AuthWorker::spawn(format!("{id}-auth"), options.auth_token_ttl)
            .map_err(ServerStartError::Spawn)?;
        let auth_publisher = node.with_state_machine(|kv| kv.auth_publisher());
        let advertised = options
            .client_addresses
            .get(&id)
            .cloned()
            .unwrap_or_else(|| local_addr.to_string());
        let shared = Arc::new(Shared {
            node: Arc::clone(&node),
            options,
            advertised,
            stopping: AtomicBool::new(false),
            connections_open: AtomicUsize::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_closed_bad_input: AtomicU64::new(0),
            connections_closed_idle: AtomicU64::new(0),
            connections_closed_slow: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            requests_in_flight_max: AtomicU64::new(0),
            request_buffer: Arc::new(ByteBudget::new(request_buffer_bytes_max)),
            admin_in_flight: AtomicUsize::new(0),
            admin_started: AtomicU64::new(0),
            admin_threads: Mutex::new(Vec::new()),
            leases: Arc::new(leases::LeaseKeeper::new(Arc::clone(&node))),
            auth_publisher,
            auth_worker: Mutex::new(auth_worker),
        });
        let mut server = Server {
            shared: Arc::clone(&shared),
            local_addr,
            listener_thread: None,
            loops: Vec::new(),
            loop_threads: Vec::new(),
            leases_stop: None,
            leases_thread: None,
            watch_notifier: None,
        };
        let (leases_stop, leases_stop_rx) = crossbeam_channel::bounded(1);
        server.leases_stop = Some(leases_stop);
        server.leases_thread = Some(
            leases::spawn(Arc::clone(&shared.leases), leases_stop_rx)
                .map_err(ServerStartError::Spawn)?,
        );
        for index in 0..shared.options.io_threads {
            // On failure, dropping `server` stops the loops started so far.
            let (handle, thread) =
                event_loop::spawn(Arc::clone(&shared), index).map_err(ServerStartError::Spawn)?;
            server.loops.push(handle);
            server.loop_threads.push(thread);
        }
        let notifier = Arc::new(watch::WatchNotifier::new(
            server
                .loops
                .iter()
                .map(event_loop::LoopHandle::watch_wake)
                .collect(),
        ));
        node.on_applied(Arc::clone(&notifier) as Arc<dyn crate::node::Wake>);
        server.watch_notifier = Some(notifier);
        let listener_shared = Arc::clone(&shared);
        let loops = server.loops.clone();
        server.listener_thread = Some(
            std::thread::Builder::new()
                .name(format!("{id}-client-accept"))
                .spawn(move || accept_loop(&listener_shared, listener, &loops))
                .map_err(ServerStartError::Spawn)?,
        );
        log::info(
            "serving clients",
            &[("listen", &local_addr), ("advertised", &shared.advertised)],
        );
        Ok(server)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            connections_accepted: self.shared.connections_accepted.load(Ordering::Relaxed),
            connections_refused: self.shared.connections_refused.load(Ordering::Relaxed),
            connections_closed_bad_input: self
                .shared
                .connections_closed_bad_input
                .load(Ordering::Relaxed),
            connections_closed_idle: self.shared.connections_closed_idle.load(Ordering::Relaxed),
            connections_closed_slow: self.shared.connections_closed_slow.load(Ordering::Relaxed),
            connections_open: self.shared.connections_open.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
            requests_in_flight_max: self.shared.requests_in_flight_max.load(Ordering::Relaxed),
            request_buffer_bytes: self.shared.request_buffer.reserved(),
            request_buffer_bytes_max: self.shared.request_buffer.reserved_max(),
            request_buffer_waits: self.shared.request_buffer.waits(),
        }
    }

    /// Stops accepting, lets every connection answer what it has in flight, closes the
    /// connections and joins every thread. Idempotent. Shut the node down after this.
    pub fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The lease keeper stops proposing revokes first.
        drop(self.leases_stop.take());
        if let Some(thread) = self.leases_thread.take() {
            let _ = thread.join();
        }
        if let Some(thread) = self.listener_thread.take() {
            // Wake the blocking accept with a connection of our own.
            let mut wake = self.local_addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
            let _ = thread.join();
        }
        // Each loop answers what its connections have in flight, closes them and ends.
        for handle in &self.loops {
            handle.wake();
        }
        for thread in self.loop_threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(notifier) = &self.watch_notifier {
            notifier.deactivate();
        }
        let threads = std::mem::take(&mut *self.shared.admin_threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
        self.shared.auth_worker.lock().shutdown();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener, loops: &[event_loop::LoopHandle]) {
    let mut accepted: usize = 0;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                log::warn("accepting a client connection failed", &[("error", &error)]);
                // Out of file descriptors, say: do not spin.
                std::thread::sleep(ACCEPT_RETRY);
                continue;
            }
        };
        let remote = stream
            .peer_addr()
            .map(|address| address.to_string())
            .unwrap_or_else(|_| "unknown".into());
        if shared.connections_open.load(Ordering::SeqCst) >= shared.options.connections_max {
            shared.connections_refused.fetch_add(1, Ordering::Relaxed);
            log::warn(
                "client connection refused: too many connections",
                &[
                    ("remote", &remote),
                    ("limit", &shared.options.connections_max),
                ],
            );
            continue;
        }
        if let Err(error) = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true))
        {
            log::warn(
                "cannot set up a client connection",
                &[("remote", &remote), ("error", &error)],
            );
            continue;
        }
        shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
        shared.connections_open.fetch_add(1, Ordering::SeqCst);
        let target = &loops[accepted % loops.len()];
        accepted = accepted.wrapping_add(1);
        if target.hand_over(stream, remote).is_err() {
            // The loop is gone (it ends only when the server stops).
            connection_closed(shared);
        }
    }
}

/// Marks one connection closed (called by its event loop when it drops it).
pub(crate) fn connection_closed(shared: &Shared) {
    shared.connections_open.fetch_sub(1, Ordering::SeqCst);
}
