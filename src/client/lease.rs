//! Leases from the client: grant, revoke, renew (once, or from a background thread with a
//! [`LeaseKeeper`]), time to live, list, and puts attached to a lease. Grants and revokes are
//! writes like any other (through the log, exactly once under a session); keep-alives, time
//! to live and list are served by the leader's lease keeper after a read barrier, and are
//! retried and redirected like reads. See `docs/api.md`, "Leases".

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::kv::{Command, KvError, LeaseId, Metadata, Response};
use crate::protocol::{LeaseTimeToLiveReply, RequestBody, ResponseBody};

use super::{first_outcome, protocol, Client, ClientError};

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Its id.
    pub lease: LeaseId,
    /// Its TTL in seconds, as granted: at least the cluster's minimum, which may be more than
    /// asked for.
    pub ttl_seconds: u64,
}

impl Client {
    /// Grants a lease of `ttl_seconds` (1 to [`LEASE_TTL_SECONDS_MAX`](crate::kv::LEASE_TTL_SECONDS_MAX);
    /// less than the cluster's minimum is raised to it). The lease expires `ttl_seconds`
    /// after the grant unless kept alive ([`Client::lease_keep_alive`], [`LeaseKeeper`]).
    pub fn lease_grant(&self, ttl_seconds: u64) -> Result<LeaseGrant, ClientError> {
        match self.write(Command::lease_grant(ttl_seconds))? {
            Response::LeaseGranted { lease, ttl_seconds } => Ok(LeaseGrant { lease, ttl_seconds }),
            other => Err(protocol(&format!(
                "unexpected answer to a lease grant: {other:?}"
            ))),
        }
    }

    /// Revokes `lease`, deleting every key attached to it in one revision; returns how many
    /// keys were deleted. A lease that is gone (revoked, expired, never granted) is
    /// [`ClientError::Rejected`] with [`KvError::LeaseNotFound`].
    pub fn lease_revoke(&self, lease: LeaseId) -> Result<u64, ClientError> {
        match self.write(Command::lease_revoke(lease))? {
            Response::LeaseRevoked { deleted, .. } => Ok(deleted),
            other => Err(protocol(&format!(
                "unexpected answer to a lease revoke: {other:?}"
            ))),
        }
    }

    /// Renews `lease` once: the leader gives it its full TTL again from now. Returns the
    /// TTL in seconds. A lease that is gone is [`ClientError::Rejected`] with
    /// [`KvError::LeaseNotFound`]; renew before the TTL runs out (a third of it is usual).
    pub fn lease_keep_alive(&self, lease: LeaseId) -> Result<u64, ClientError> {
        match self.lease_call(RequestBody::LeaseKeepAlive { lease })? {
            ResponseBody::LeaseKeptAlive { ttl_seconds, .. } => Ok(ttl_seconds),
            other => Err(protocol(&format!(
                "unexpected answer to a keep-alive: {other:?}"
            ))),
        }
    }

    /// `lease`'s granted TTL, the time it has left on the leader's clock and, with `keys`,
    /// the keys attached to it.
    pub fn lease_time_to_live(
        &self,
        lease: LeaseId,
        keys: bool,
    ) -> Result<LeaseTimeToLiveReply, ClientError> {
        match self.lease_call(RequestBody::LeaseTimeToLive { lease, keys })? {
            ResponseBody::LeaseTimeToLive(reply) => Ok(reply),
            other => Err(protocol(&format!(
                "unexpected answer to a lease time-to-live: {other:?}"
            ))),
        }
    }

    /// Every lease of the cluster, in id order.
    pub fn lease_list(&self) -> Result<Vec<LeaseId>, ClientError> {
        match self.lease_call(RequestBody::LeaseList)? {
            ResponseBody::Leases(leases) => Ok(leases),
            other => Err(protocol(&format!(
                "unexpected answer to a lease list: {other:?}"
            ))),
        }
    }

    /// Sets `key` to `value` attached to `lease`: the key is deleted when the lease is
    /// revoked or expires. Returns the key's metadata after the write. A lease that is gone
    /// is [`ClientError::Rejected`] with [`KvError::LeaseNotFound`], and nothing is written.
    pub fn put_with_lease(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Metadata, ClientError> {
        let response = self.write(Command::put_with_lease(key, value, lease))?;
        match first_outcome(response)? {
            Some(metadata) => Ok(metadata),
            None => Err(protocol("a put left no key behind")),
        }
    }

    /// Sends a lease request to the leader, retried like a read (it changes nothing in the
    /// log).
    fn lease_call(&self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        self.execute(&body, false, self.deadline()).result
    }
}

/// What a [`LeaseKeeper`] knows of its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseKeeperState {
    /// Renewed at `renewed` (the client's clock, when the answer arrived) for `ttl_seconds`.
    Alive {
        /// When the last renewal was answered.
        renewed: Instant,
        /// The TTL it was renewed to.
        ttl_seconds: u64,
    },
    /// The lease is gone (revoked or expired): the keeper stopped. Every key attached to it
    /// is deleted or about to be.
    Gone,
}

/// Renews a lease from a background thread (`kvclient-lease-{id}`) every third of its TTL
/// until dropped — the streaming keep-alive for long-lived holders. A failed renewal (no
/// leader for a while) is retried at the next period, and sooner than a third of the TTL
/// after it; once the lease is gone the thread stops and [`LeaseKeeper::state`] says
/// [`LeaseKeeperState::Gone`]. Dropping the keeper stops renewing; the lease then expires
/// after its TTL unless revoked.
///
/// ```no_run
/// use keyval::client::{Client, ClientOptions, LeaseKeeper};
///
/// let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
/// let grant = client.lease_grant(10)?;
/// client.put_with_lease(b"service/worker-1".to_vec(), b"up".to_vec(), grant.lease)?;
/// let keeper = LeaseKeeper::start(client.clone(), grant.lease, grant.ttl_seconds)?;
/// // ... work; the key lives while this process does ...
/// drop(keeper);
/// client.lease_revoke(grant.lease)?;
/// # Ok::<(), keyval::client::ClientError>(())
/// ```
pub struct LeaseKeeper {
    lease: LeaseId,
    state: Arc<Mutex<LeaseKeeperState>>,
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The shortest pause between renewals, whatever the TTL.
const KEEP_ALIVE_PERIOD_MIN: Duration = Duration::from_millis(100);

impl LeaseKeeper {
    /// Starts renewing `lease` (granted `ttl_seconds`) every `ttl_seconds / 3`; the first
    /// renewal is sent at once.
    pub fn start(
        client: Client,
        lease: LeaseId,
        ttl_seconds: u64,
    ) -> Result<LeaseKeeper, ClientError> {
        let state = Arc::new(Mutex::new(LeaseKeeperState::Alive {
            renewed: Instant::now(),
            ttl_seconds,
        }));
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let period = (Duration::from_secs(ttl_seconds) / 3).max(KEEP_ALIVE_PERIOD_MIN);
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("kvclient-lease-{:x}", lease.0))
            .spawn(move || loop {
                let pause = match client.lease_keep_alive(lease) {
                    Ok(ttl_seconds) => {
                        *thread_state.lock() = LeaseKeeperState::Alive {
                            renewed: Instant::now(),
                            ttl_seconds,
                        };
                        period
                    }
                    Err(ClientError::Rejected(KvError::LeaseNotFound { .. })) => {
                        *thread_state.lock() = LeaseKeeperState::Gone;
                        return;
                    }
                    // No leader for now: try again soon.
                    Err(_) => (period / 3).max(KEEP_ALIVE_PERIOD_MIN),
                };
                match stop_rx.recv_timeout(pause) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|error| ClientError::Unavailable {
                reason: format!("spawning the lease keeper thread: {error}"),
            })?;
        Ok(LeaseKeeper {
            lease,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The lease kept alive.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// What the keeper knows of the lease now.
    pub fn state(&self) -> LeaseKeeperState {
        self.state.lock().clone()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // At most one renewal in flight, bounded by the client's request timeout.
            let _ = thread.join();
        }
    }
}
