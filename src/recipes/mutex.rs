//! [`Mutex`]: a distributed lock whose [`Guard`] carries a fencing token.

use std::time::{Duration, Instant};

use crate::types::LogIndex;

use super::queue::{Queue, WaitProbe};
use super::{text, RecipeError, Session};

/// A distributed mutual-exclusion lock named `name`, held through a [`Session`]: at most one
/// session holds it at a time, as far as the cluster is concerned. See the [module
/// docs](super) for the algorithm, and `docs/recipes.md` for what "holds" can and cannot mean
/// for a process that may pause.
///
/// A session takes one place in line per lock: two `lock` calls through one session at once
/// fail with [`RecipeError::SessionInUse`]. Use a session per concurrent holder.
pub struct Mutex {
    queue: Queue,
}

/// The lock, held. Carries the **fencing token**: the revision at which this holder's key
/// was created, strictly greater than every earlier holder's. Pass it to every write of the
/// protected resource ([`fenced_put`](super::fenced_put)) so a holder that lost the lock
/// without knowing it (paused past its lease) cannot overwrite a later holder's work.
///
/// [`unlock`](Guard::unlock) releases it; dropping the guard releases it too (best effort,
/// errors ignored). Closing or losing the session releases it as well.
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard {
    queue: Queue,
    key: Vec<u8>,
    fencing_token: LogIndex,
    released: bool,
}

impl Mutex {
    /// The lock `name` (keys under `name/`), taken through `session`.
    pub fn new(session: &Session, name: &str) -> Mutex {
        Mutex {
            queue: Queue::new(session, name),
        }
    }

    /// Blocks until this session holds the lock; errors if the session ends first (or the
    /// cluster refuses). Waiting survives a keyval leader failover.
    pub fn lock(&self) -> Result<Guard, RecipeError> {
        self.acquire(None)
    }

    /// Like [`lock`](Mutex::lock), giving up after `timeout` with [`RecipeError::Timeout`]
    /// (and leaving the line).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Guard, RecipeError> {
        self.acquire(Some(Instant::now() + timeout))
    }

    /// Takes the lock if nobody holds it, without waiting; otherwise
    /// [`RecipeError::Locked`] naming the holder (and leaves the line).
    pub fn try_lock(&self) -> Result<Guard, RecipeError> {
        let (key, token) = self.enter()?;
        let refusal = match self.queue.read() {
            Ok((_, contenders)) => match Queue::first(&contenders) {
                Some(first) if first.key == key && first.create_revision == token => {
                    return Ok(self.guard(key, token));
                }
                Some(first) => RecipeError::Locked {
                    holder: text(&first.key),
                    since: first.create_revision,
                },
                None => RecipeError::Lost { key: text(&key) },
            },
            Err(error) => error,
        };
        let _ = self.queue.remove(&key, token);
        Err(refusal)
    }

    /// What this lock's waits are doing (the predecessor watched, wake-ups), for diagnostics
    /// and tests.
    pub fn probe(&self) -> WaitProbe {
        self.queue.probe.clone()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.queue.name
    }

    fn acquire(&self, deadline: Option<Instant>) -> Result<Guard, RecipeError> {
        let (key, token) = self.enter()?;
        match self.queue.wait_first(&key, token, deadline) {
            Ok(()) => Ok(self.guard(key, token)),
            Err(error) => {
                // Leave the line, or we would become holder without knowing it. If this
                // fails too, the key goes with the session's lease.
                let _ = self.queue.remove(&key, token);
                Err(error)
            }
        }
    }

    /// Creates this session's key; a fresh random value tells this call's key from one
    /// another call left.
    fn enter(&self) -> Result<(Vec<u8>, LogIndex), RecipeError> {
        let key = self.queue.own_key();
        let nonce = format!("{:016x}", rand::random::<u64>());
        let token = self.queue.enqueue(&key, nonce.as_bytes())?;
        Ok((key, token))
    }

    fn guard(&self, key: Vec<u8>, fencing_token: LogIndex) -> Guard {
        Guard {
            queue: Queue::new(&self.queue.session, &self.queue.name),
            key,
            fencing_token,
            released: false,
        }
    }
}

impl Guard {
    /// The holder's key (`name/<lease-id-hex>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The fencing token: the revision at which the holder's key was created. Strictly
    /// increasing across successive holders of the lock.
    pub fn fencing_token(&self) -> LogIndex {
        self.fencing_token
    }

    /// Whether the lock is still held as far as this process can tell: false once the
    /// session is over. A paused process can hold a stale `true` — see
    /// [`fenced_put`](super::fenced_put).
    pub fn is_valid(&self) -> bool {
        !self.released && !self.queue.session.done()
    }

    /// Releases the lock: deletes the holder's key, which wakes the next waiter. Errors with
    /// [`RecipeError::Lost`] if the key was already gone (the lock had been lost).
    pub fn unlock(mut self) -> Result<(), RecipeError> {
        self.released = true;
        if self.queue.remove(&self.key, self.fencing_token)? {
            Ok(())
        } else {
            Err(RecipeError::Lost {
                key: text(&self.key),
            })
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.released {
            self.released = true;
            let _ = self.queue.remove(&self.key, self.fencing_token);
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Guard")
            .field("key", &text(&self.key))
            .field("fencing_token", &self.fencing_token)
            .finish()
    }
}

impl std::fmt::Debug for Mutex {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Mutex")
            .field("name", &self.queue.name)
            .finish()
    }
}
