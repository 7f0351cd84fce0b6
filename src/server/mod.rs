//! The client-facing TCP server of a key-value node.
//!
//! ```text
//!  [n1-client-listen] accept ──spawns──► per connection:
//!
//!   socket ──► [n1-client-read-K]  decode frames, validate, submit without blocking:
//!                 │                  submit_proposal / submit_read (tagged, completions go
//!                 │                  to this connection's channels); stale/status/snapshot answered
//!                 │ events           at once; at most `inflight_per_connection_max` requests
//!                 ▼                  in flight (a permit per request: back-pressure on TCP)
//!              [n1-client-write-K] waits on events + completions + the nearest deadline,
//!                                  drains everything ready, encodes responses into one
//!                                  buffer, writes it with one call; a write still unknown at
//!                                  its deadline is answered `Indeterminate`
//!
//!  membership changes and leadership transfers block until they commit (up to the request's
//!  deadline): the reader hands each to a short-lived [n1-client-admin-K] thread, which
//!  answers through the same writer; at most `ADMIN_REQUESTS_MAX` run at once per server
//! ```
//!
//! Bad input (garbage, a truncated frame, an oversized length prefix) closes only that
//! connection, with a logged reason. [`Server::shutdown`] stops accepting, lets every
//! connection finish the requests it has in flight (each bounded by its deadline), closes
//! them and joins every thread.
//!
//! A connection cannot hold resources by sending nothing, or too little:
//!
//! | what | bound | then |
//! |---|---|---|
//! | connections | [`ServerOptions::connections_max`] | more are closed at once |
//! | idle: nothing received, nothing in flight | [`ServerOptions::idle_timeout`] | closed |
//! | a frame begun and not whole | [`ServerOptions::frame_timeout`] | closed |
//! | bytes of frames larger than a connection's 64 KiB read buffer, all connections | [`ServerOptions::request_buffer_bytes_max`] ([`budget`]) | the frame waits, unread, until room is released or its frame deadline passes |
//!
//! The deadlines (`server/deadlines.rs`) and the budget are plain values that take the time as an
//! argument or return a reservation; nothing in them depends on a connection owning threads.

mod admin;
mod connection;
mod deadlines;
mod responder;
mod snapshot;

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

/// Default bound on open client connections per node.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;

/// Default bound on requests in flight per connection.
pub const INFLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 1024;

/// Default time a request may take when the client does not say.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Default bound on one write of responses to a client that stops reading.
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
/// connection's read buffer, while they arrive ([`budget`]): eight maximal frames.
pub const REQUEST_BUFFER_BYTES_MAX_DEFAULT: u64 = 8 * REQUEST_BUFFER_BYTES_MIN;

/// The smallest request-buffer budget: one maximal frame with its header, so that every valid
/// frame can be received.
pub const REQUEST_BUFFER_BYTES_MIN: u64 = FRAME_BYTES_MAX + RECORD_HEADER_BYTES as u64;

const _: () = assert!(REQUEST_BUFFER_BYTES_MAX_DEFAULT >= REQUEST_BUFFER_BYTES_MIN);

/// How often blocked reader threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
    /// Deadline of requests whose `timeout_ms` is 0.
    pub request_timeout_default: Duration,
    /// How long one write of responses may block before the connection is dropped (a client
    /// that stops reading must not pin a thread, or shutdown, forever).
    pub write_timeout: Duration,
    /// A connection that sent nothing and had nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this long of its first byte, or its connection is
    /// closed.
    pub frame_timeout: Duration,
    /// Bytes all connections together may hold for frames larger than their read buffer
    /// while those arrive; a frame that does not fit waits (the connection stops reading)
    /// until room is released or its frame deadline passes. At least
    /// [`REQUEST_BUFFER_BYTES_MIN`].
    pub request_buffer_bytes_max: u64,
}

impl ServerOptions {
    /// Options with the defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> ServerOptions {
        ServerOptions {
            listen,
            client_addresses: BTreeMap::new(),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            inflight_per_connection_max: INFLIGHT_PER_CONNECTION_MAX_DEFAULT,
            request_timeout_default: REQUEST_TIMEOUT_DEFAULT,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            frame_timeout: FRAME_TIMEOUT_DEFAULT,
            request_buffer_bytes_max: REQUEST_BUFFER_BYTES_MAX_DEFAULT,
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
    /// Threads of every connection, joined at shutdown; finished ones are reaped on accept.
    connection_threads: Mutex<Vec<JoinHandle<()>>>,
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
}

impl Server {
    /// Binds `options.listen` and starts accepting clients for `node`.
    pub fn start(
        node: Arc<Node<KvStore>>,
        options: ServerOptions,
    ) -> Result<Server, ServerStartError> {
        if options.connections_max == 0 || options.inflight_per_connection_max == 0 {
            return Err(ServerStartError::Invalid {
                reason: "connections_max and inflight_per_connection_max must be at least 1".into(),
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
        let advertised = options
            .client_addresses
            .get(&id)
            .cloned()
            .unwrap_or_else(|| local_addr.to_string());
        let shared = Arc::new(Shared {
            node,
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
            connection_threads: Mutex::new(Vec::new()),
        });
        let listener_shared = Arc::clone(&shared);
        let listener_thread = std::thread::Builder::new()
            .name(format!("{id}-client-listen"))
            .spawn(move || accept_loop(&listener_shared, listener))
            .map_err(ServerStartError::Spawn)?;
        log::info(
            "serving clients",
            &[("listen", &local_addr), ("advertised", &shared.advertised)],
        );
        Ok(Server {
            shared,
            local_addr,
            listener_thread: Some(listener_thread),
        })
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
        if let Some(thread) = self.listener_thread.take() {
            // Wake the blocking accept with a connection of our own.
            let mut wake = self.local_addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
            let _ = thread.join();
        }
        let threads = std::mem::take(&mut *self.shared.connection_threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut connection_number: u64 = 0;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                log::warn("accepting a client connection failed", &[("error", &error)]);
                // Out of file descriptors, say: do not spin.
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        shared
            .connection_threads
            .lock()
            .retain(|thread| !thread.is_finished());
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
        connection_number += 1;
        shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
        shared.connections_open.fetch_add(1, Ordering::SeqCst);
        match connection::spawn(
            Arc::clone(shared),
            stream,
            remote.clone(),
            connection_number,
        ) {
            Ok(threads) => shared.connection_threads.lock().extend(threads),
            Err(error) => {
                // `connection::spawn` counted the connection closed.
                log::error(
                    "cannot start client connection threads",
                    &[("remote", &remote), ("error", &error)],
                );
            }
        }
    }
}

/// Marks one connection closed (called by its writer thread when it ends).
pub(crate) fn connection_closed(shared: &Shared) {
    shared.connections_open.fetch_sub(1, Ordering::SeqCst);
}
