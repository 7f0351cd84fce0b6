//! Cluster administration from the client: list the members, add, promote and remove one,
//! and hand leadership to another voter. Every call goes to the leader, following redirects
//! and retrying like a write, within the client's `request_timeout` — give a long one for a
//! new voter, which must catch up with the log before it is promoted.
//!
//! Outcomes are reported as honestly as writes: a change whose outcome was not learned is
//! [`ClientError::Indeterminate`] (it may or may not have taken effect: look at
//! [`Client::members`]); a refusal ([`ServerError::Refused`]) means nothing was changed —
//! unless an earlier attempt of the same call may have reached the leader, in which case it
//! too is `Indeterminate` (a remove that took effect, retried, is refused as "not a member").

use crate::protocol::{MembersReply, RequestBody, ResponseBody, ServerError};
use crate::types::{MemberAddress, NodeId};

use super::{protocol, Client, ClientError};

impl Client {
    /// The cluster's configuration as the leader knows it: voters (both halves while a change
    /// is in progress), learners, their addresses, and the leader.
    pub fn members(&self) -> Result<MembersReply, ClientError> {
        let deadline = self.deadline();
        let result = self.execute(&RequestBody::Members, false, deadline).result;
        // Not a read of data: no leader answering in time means the cluster is unavailable.
        let result = result.map_err(|error| match error {
            ClientError::Timeout { reason } => ClientError::Unavailable { reason },
            other => other,
        });
        match result? {
            ResponseBody::Members(reply) => Ok(reply),
            other => Err(protocol(&format!(
                "unexpected answer to a member list: {other:?}"
            ))),
        }
    }

    /// Adds member `id` reachable at `address`: a learner first, and with `voter` promoted
    /// once it has caught up. Returns the configuration it ended in. Idempotent: adding a
    /// member that is already there at the same addresses succeeds. **Never reuse the id of
    /// a removed node that may still be running.**
    pub fn add_member(
        &self,
        id: NodeId,
        address: MemberAddress,
        voter: bool,
    ) -> Result<MembersReply, ClientError> {
        self.change(RequestBody::AddMember { id, address, voter })
    }

    /// Promotes learner `id` to voter once it has caught up (promoting a voter succeeds).
    pub fn promote_member(&self, id: NodeId) -> Result<MembersReply, ClientError> {
        self.change(RequestBody::PromoteMember { id })
    }

    /// Removes member `id`, voter or learner; the leader itself may be removed (it hands
    /// over and steps down). Returns the configuration without it.
    pub fn remove_member(&self, id: NodeId) -> Result<MembersReply, ClientError> {
        self.change(RequestBody::RemoveMember { id })
    }

    /// Hands leadership to voter `target` and waits until it leads; returns the new leader.
    /// A target that leads already succeeds at once.
    pub fn transfer_leader(&self, target: NodeId) -> Result<NodeId, ClientError> {
        // Like a write: an attempt whose answer was lost may have moved leadership.
        let body = RequestBody::TransferLeader { target };
        let executed = self.execute(&body, true, self.deadline());
        match executed.result? {
            ResponseBody::LeaderTransferred { leader } => {
                // Writes go to the new leader from now on.
                *self.inner.leader.lock() = None;
                Ok(leader)
            }
            other => Err(protocol(&format!(
                "unexpected answer to a leadership transfer: {other:?}"
            ))),
        }
    }

    fn change(&self, body: RequestBody) -> Result<MembersReply, ClientError> {
        let executed = self.execute(&body, true, self.deadline());
        match executed.result {
            Ok(ResponseBody::Members(reply)) => Ok(reply),
            Ok(other) => Err(protocol(&format!(
                "unexpected answer to a membership change: {other:?}"
            ))),
            Err(ClientError::Server(refusal @ ServerError::Refused { .. }))
                if executed.ambiguous =>
            {
                Err(ClientError::Indeterminate {
                    reason: format!(
                        "an earlier attempt may have taken effect, and the last one was \
                         refused: {refusal}"
                    ),
                })
            }
            Err(error) => Err(error),
        }
    }
}
