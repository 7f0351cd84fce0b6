//! [`Session`]: one lease, kept alive by a [`LeaseKeeper`], that a process's locks and
//! candidacies are attached to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex as Lock;

use crate::client::{Client, ClientError, LeaseKeeper, LeaseKeeperState};
use crate::kv::{KvError, LeaseId};

use super::RecipeError;

/// The TTL of a [`Session::new`] lease, in seconds (etcd's default).
pub const SESSION_TTL_SECONDS_DEFAULT: u64 = 60;

/// A lease kept alive from a background thread for as long as the process runs. Locks and
/// candidacies attach their keys to it, so they vanish when the process dies, freezes for
/// longer than the TTL, or loses the cluster for that long.
///
/// When the lease is gone — expired, revoked, or the session closed — the session is
/// [`done`](Session::done) for good, and every holder or leader that used it must stop
/// acting as one. `done` is the process's own view: a process that was paused (SIGSTOP, a VM
/// pause, a long GC) learns it only after it resumes, while the cluster may have given the
/// lock to another contender in the meantime. That is what [fencing
/// tokens](super::fenced_put) are for.
///
/// Cheap to clone; clones share the lease. Dropping the last clone stops the keeper and
/// revokes the lease (best effort); [`close`](Session::close) does the same and reports.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    lease: LeaseId,
    ttl_seconds: u64,
    /// The renewing thread; `None` once the session is closed.
    keeper: Lock<Option<LeaseKeeper>>,
    /// Latched: once done, always done.
    done: AtomicBool,
}

impl Session {
    /// Grants a lease of [`SESSION_TTL_SECONDS_DEFAULT`] seconds and keeps it alive.
    pub fn new(client: &Client) -> Result<Session, RecipeError> {
        Session::with_ttl(client, SESSION_TTL_SECONDS_DEFAULT)
    }

    /// Grants a lease of `ttl_seconds` (raised to the cluster's minimum) and keeps it alive,
    /// renewing every third of the TTL. The TTL bounds how long a dead or frozen holder keeps
    /// others waiting, and how long a holder may be paused before it loses what it holds.
    pub fn with_ttl(client: &Client, ttl_seconds: u64) -> Result<Session, RecipeError> {
        let grant = client.lease_grant(ttl_seconds)?;
        let keeper = match LeaseKeeper::start(client.clone(), grant.lease, grant.ttl_seconds) {
            Ok(keeper) => keeper,
            Err(error) => {
                let _ = client.lease_revoke(grant.lease);
                return Err(error.into());
            }
        };
        Ok(Session {
            inner: Arc::new(Inner {
                client: client.clone(),
                lease: grant.lease,
                ttl_seconds: grant.ttl_seconds,
                keeper: Lock::new(Some(keeper)),
                done: AtomicBool::new(false),
            }),
        })
    }

    /// The session's lease.
    pub fn lease(&self) -> LeaseId {
        self.inner.lease
    }

    /// The TTL the cluster granted, in seconds.
    pub fn ttl_seconds(&self) -> u64 {
        self.inner.ttl_seconds
    }

    /// The client the session talks through.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Whether the session is over: closed, its lease found gone by the keeper, or not renewed
    /// for a whole TTL by this process's clock (the cluster may have expired it; a renewal
    /// could not tell in time). Once true, stays true: whatever the session held is lost.
    pub fn done(&self) -> bool {
        if self.inner.done.load(Ordering::Acquire) {
            return true;
        }
        let over = match self.inner.keeper.lock().as_ref() {
            None => true,
            Some(keeper) => match keeper.state() {
                LeaseKeeperState::Gone => true,
                LeaseKeeperState::Alive {
                    renewed,
                    ttl_seconds,
                } => renewed.elapsed() >= std::time::Duration::from_secs(ttl_seconds),
            },
        };
        if over {
            self.inner.done.store(true, Ordering::Release);
        }
        over
    }

    /// Ends the session: stops renewing and revokes the lease, which deletes every key
    /// attached to it (releasing its locks and candidacies) in one revision. A lease already
    /// gone is not an error.
    pub fn close(&self) -> Result<(), RecipeError> {
        self.inner.done.store(true, Ordering::Release);
        drop(self.inner.keeper.lock().take());
        match self.inner.client.lease_revoke(self.inner.lease) {
            Ok(_) | Err(ClientError::Rejected(KvError::LeaseNotFound { .. })) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.get_mut().take() {
            drop(keeper);
            // Best effort: if the cluster cannot be reached the lease expires after its TTL.
            let _ = self.client.lease_revoke(self.lease);
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Session")
            .field("lease", &self.inner.lease)
            .field("ttl_seconds", &self.inner.ttl_seconds)
            .field("done", &self.inner.done.load(Ordering::Relaxed))
            .finish()
    }
}
