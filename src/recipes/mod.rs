//! Coordination recipes on leases, transactions and watch: a [`Session`] (a lease kept
//! alive), a distributed [`Mutex`] whose [`Guard`] carries a **fencing token**, leader
//! [`Election`] (campaign, proclaim, observe, resign), and [`fenced_put`], the storage-side
//! check that makes fencing tokens worth having. The design follows etcd's `concurrency`
//! package; `docs/recipes.md` states the guarantees and, as important, the limits.
//!
//! # The queue both recipes share
//!
//! A contender for the lock (or the leadership) `name` writes the key `name/<lease-id-hex>`,
//! attached to its session's lease, with a transaction "if the key does not exist, put it,
//! else read it". The key's **create revision** orders the contenders: the one with the
//! smallest holds the lock. Every other contender watches only its **predecessor** — the key
//! with the largest create revision below its own — for a delete, then reads the queue again.
//! Releasing deletes one key and so wakes exactly one waiter: no polling, no thundering
//! herd. A contender whose session ends (its lease expires or is revoked) has its key deleted
//! by the cluster, which wakes its successor the same way.
//!
//! Waiting survives a keyval leader failover: the watch resumes on another member from the
//! revision it had reached ([`Watch`](crate::client::Watch)), and the reads and writes retry
//! like any client call.
//!
//! ```no_run
//! use keyval::client::{Client, ClientOptions};
//! use keyval::recipes::{fenced_put, FencedPut, Mutex, Session};
//!
//! let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())?;
//! let session = Session::new(&client)?;
//! let mutex = Mutex::new(&session, "locks/report");
//! let guard = mutex.lock()?;
//! // Every write to the protected resource goes through the fence with the guard's token.
//! match fenced_put(&client, b"report/latest", b"done", guard.fencing_token())? {
//!     FencedPut::Written { .. } => println!("written"),
//!     FencedPut::Refused { highest_token } => println!("a later holder ({highest_token}) wrote"),
//! }
//! guard.unlock()?;
//! session.close()?;
//! # Ok::<(), keyval::recipes::RecipeError>(())
//! ```

mod election;
mod fence;
mod mutex;
mod queue;
mod session;

pub use election::{Election, Leader, Observer};
pub use fence::{fence_key, fenced_put, FencedPut};
pub use mutex::{Guard, Mutex};
pub use queue::WaitProbe;
pub use session::{Session, SESSION_TTL_SECONDS_DEFAULT};

use crate::client::ClientError;
use crate::types::LogIndex;

/// Why a recipe call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    /// A client call failed (see [`ClientError`]; [`ClientError::Indeterminate`] means a write
    /// may or may not have been applied).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The session is over: its lease expired or was revoked, or the session was closed.
    /// Whatever it held is lost; stop acting as holder or leader.
    #[error("the session is over: its lease expired or was revoked")]
    SessionExpired,
    /// This contender's key is gone although the session seemed alive: its lease expired or
    /// was revoked, or somebody deleted the key. Whatever it held is lost.
    #[error("lost: the key {key} was deleted")]
    Lost {
        /// The contender's key, as text.
        key: String,
    },
    /// `try_lock`: another contender holds the lock.
    #[error("locked by {holder} (since revision {since})")]
    Locked {
        /// The holder's key, as text.
        holder: String,
        /// The holder's fencing token (the create revision of its key).
        since: LogIndex,
    },
    /// `lock_timeout` or `campaign_timeout`: not first in line before the deadline. This
    /// contender's key was removed again.
    #[error("timed out waiting for {name}")]
    Timeout {
        /// The lock or election.
        name: String,
    },
    /// `proclaim` or `resign` when not (or no longer) the leader.
    #[error("not the leader of {name}")]
    NotLeader {
        /// The election.
        name: String,
    },
    /// The session already has a key in this lock or election, written by another `Mutex`
    /// or `Election` value (or another `lock` call of this one). One session holds one place
    /// in line per name.
    #[error("this session already holds or waits for {key}")]
    SessionInUse {
        /// The key the session has in line.
        key: String,
    },
    /// A fence key holds something that is not a fencing token.
    #[error("the fence {key} holds {value:?}, not a fencing token")]
    InvalidFence {
        /// The fence key, as text.
        key: String,
        /// What it holds, as text.
        value: String,
    },
}

/// `bytes` as text for messages (invalid UTF-8 replaced).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
