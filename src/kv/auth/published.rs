//! How the auth state leaves the store: the checked-write envelope a server proposes
//! ([`wrap_checked`]) and the publication the servers' permission checks read
//! ([`AuthPublisher`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::types::LogIndex;

use super::AuthState;

/// The first byte of a proposal that carries the auth revision its permissions were checked
/// against ([`wrap_checked`]). No [`Command`](crate::kv::Command) starts with it: a command's
/// first byte is its session's variant, 0 to 2.
pub const AUTH_CHECKED_TAG: u8 = 0xA7;

/// The most bytes [`wrap_checked`] adds in front of a command.
pub const AUTH_CHECKED_OVERHEAD_BYTES: usize = 16;

/// A proposal of `command` (encoded) whose permissions the proposing server checked against
/// auth revision `checked_at`. The store refuses it, applying nothing, with
/// [`KvError::AuthRevisionChanged`](crate::kv::KvError::AuthRevisionChanged) if the auth state
/// changed since (a revoke committed in between, or a new leader that had not applied the
/// latest change): etcd's "old auth revision", and the client sends it again to be checked
/// anew. While auth is enabled the store refuses writes that are not so wrapped, except the
/// lease keeper's revokes.
pub fn wrap_checked(checked_at: LogIndex, command: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(command.len() + AUTH_CHECKED_OVERHEAD_BYTES);
    out.push(AUTH_CHECKED_TAG);
    out.extend(crate::codec::encode(&checked_at).unwrap_or_default());
    debug_assert!(out.len() <= AUTH_CHECKED_OVERHEAD_BYTES);
    out.extend_from_slice(command);
    out
}

/// Splits a proposal made by [`wrap_checked`] into the auth revision and the command;
/// `None` for a plain command.
pub(in crate::kv) fn split_checked(bytes: &[u8]) -> Option<Result<(LogIndex, &[u8]), String>> {
    let rest = bytes.strip_prefix(&[AUTH_CHECKED_TAG])?;
    Some(
        crate::codec::decode_prefix::<LogIndex>(rest)
            .map(|(revision, used)| (revision, &rest[used..]))
            .map_err(|error| error.to_string()),
    )
}

/// Where a store publishes its current auth state for the servers' permission checks: a
/// read is an atomic load (and, after a change, one brief read lock), never a walk of the
/// store. Clones share the publication.
#[derive(Clone, Default)]
pub struct AuthPublisher {
    inner: Arc<Published>,
}

#[derive(Default)]
struct Published {
    /// Bumped after every change of `current`.
    generation: AtomicU64,
    current: RwLock<Arc<AuthState>>,
}

impl AuthPublisher {
    /// Publishes `state` (after an auth change or a restore).
    pub(in crate::kv) fn publish(&self, state: &Arc<AuthState>) {
        *self.inner.current.write() = Arc::clone(state);
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    /// A number that changes whenever the state does: compare it to refresh a cached copy.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The state as last published.
    pub fn current(&self) -> Arc<AuthState> {
        Arc::clone(&self.inner.current.read())
    }
}

impl std::fmt::Debug for AuthPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPublisher")
            .field("generation", &self.generation())
            .finish()
    }
}

/// The publication is a side channel, not state: stores compare equal whoever reads them.
impl PartialEq for AuthPublisher {
    fn eq(&self, _other: &AuthPublisher) -> bool {
        true
    }
}

impl Eq for AuthPublisher {}
