//! What can go wrong for a [`Client`](super::Client) call, and what each outcome means for a
//! write.

use crate::kv::KvError;
use crate::server::protocol::ServerError;

/// Why a client call failed. For writes, every variant but
/// [`Indeterminate`](ClientError::Indeterminate) means the write was **not** applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `Client::connect` was given no endpoints.
    #[error("no endpoints given")]
    NoEndpoints,
    /// No node served the request before the deadline (no leader, nodes unreachable). A
    /// write was definitely not applied.
    #[error("cluster unavailable: {reason}")]
    Unavailable {
        /// The last failure seen.
        reason: String,
    },
    /// **The write may or may not have been applied**: an attempt reached the cluster but
    /// its outcome was not learned before the deadline. Read the key to find out; never
    /// assume either way.
    #[error("outcome unknown (the write may or may not have been applied): {reason}")]
    Indeterminate {
        /// The last failure seen.
        reason: String,
    },
    /// A read could not be served before the deadline.
    #[error("read timed out: {reason}")]
    Timeout {
        /// The last failure seen.
        reason: String,
    },
    /// The request breaks a limit or is malformed (key or value too large, empty key, batch
    /// too large…). Nothing was applied.
    #[error("request rejected: {0}")]
    Rejected(KvError),
    /// A lease read was asked for but the leader holds no valid lease (or lease reads are off
    /// on the cluster).
    #[error("no valid lease for a lease read")]
    NoLease,
    /// The server answered something this client does not expect.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The server refused the request for a reason not covered above.
    #[error("server error: {0}")]
    Server(ServerError),
}

impl ClientError {
    /// Whether a write that failed with this error may have been applied.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClientError::Indeterminate { .. })
    }
}
