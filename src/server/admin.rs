//! The operator's cluster requests: list the members, add / promote / remove one, hand
//! leadership to another voter (`kvctl member ...`, `kvctl transfer-leader`, `keyval --join`).
//!
//! A membership change blocks until it commits — and a new voter must first catch up — so it
//! may take up to the request's deadline. It must not hold the event loop that serves the
//! connection (and many others), so each such request runs on a short-lived thread of its
//! own, `n1-client-admin-K`, which hands its answer back to the loop like a completion:
//!
//! ```text
//!  [n1-client-io-L] ── AddMember ──spawn──► [n1-client-admin-K] node.add_member(.., deadline)
//!          │  (request registered in flight)          │ AdminAnswer { tag, result } + wake
//!          ▼                                          ▼
//!  (keeps serving)                           [n1-client-io-L] ── response ──► client
//! ```
//!
//! A thread per request rather than one long-lived admin thread: changes are rare and the
//! core runs one at a time anyway, a thread costs nothing at that rate, a slow promotion
//! cannot hold a transfer up behind it, and no thread idles when nobody asks. At most
//! [`ADMIN_REQUESTS_MAX`] run at once per server; more are refused `Busy`. The thread's work
//! is bounded by the request's deadline (and ends early if the node stops); if its answer
//! comes after the deadline the loop has answered `Indeterminate` already and drops it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{MembershipError, TransferError};
use crate::log;
use crate::types::NodeId;

use super::event_loop::{AdminAnswer, AdminSender};
use super::Shared;
use crate::protocol::{
    validate_member_address, MembersReply, RequestBody, ResponseBody, ServerError,
};

/// Admin requests (membership changes, transfers) served at once per server, at most.
pub(super) const ADMIN_REQUESTS_MAX: usize = 4;

/// Answers [`RequestBody::Members`]: the leader's configuration; other nodes redirect.
pub(super) fn members(shared: &Shared) -> Result<ResponseBody, ServerError> {
    let status = shared.node.status();
    if status.leader != Some(status.id) {
        return Err(not_leader(shared, status.leader));
    }
    Ok(ResponseBody::Members(MembersReply {
        node: status.id,
        leader: status.leader,
        membership: status.membership,
    }))
}

/// Serves an admin request on a thread of its own; the answer for `tag` goes to `answers`.
/// `auth_revision` is the auth state its permissions were checked against (an auth change
/// is proposed checked at it). Returns the refusal to send at once when no thread may (or
/// can) be started.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    answers: &AdminSender,
    tag: u64,
    deadline: Instant,
    body: RequestBody,
    auth_revision: crate::types::LogIndex,
) -> Result<(), ServerError> {
    if let Err(refusal) = check_request(&body) {
        return Err(ServerError::Refused { reason: refusal });
    }
    let previous = shared.admin_in_flight.fetch_add(1, Ordering::SeqCst);
    if previous >= ADMIN_REQUESTS_MAX {
        shared.admin_in_flight.fetch_sub(1, Ordering::SeqCst);
        return Err(ServerError::Busy {
            reason: format!(
                "{ADMIN_REQUESTS_MAX} membership or leadership requests are in progress already"
            ),
        });
    }
    let thread_shared = Arc::clone(shared);
    let answers = answers.clone();
    let number = shared.admin_started.fetch_add(1, Ordering::Relaxed) + 1;
    let spawned = std::thread::Builder::new()
        .name(format!("{}-client-admin-{number}", shared.node.id()))
        .spawn(move || {
            let result = serve(&thread_shared, body, deadline, auth_revision);
            thread_shared.admin_in_flight.fetch_sub(1, Ordering::SeqCst);
            // The loop may be gone (the server stopped): then nobody is waiting.
            answers.send(AdminAnswer { tag, result });
        });
    match spawned {
        Ok(thread) => {
            let mut threads = shared.admin_threads.lock();
            threads.retain(|thread| !thread.is_finished());
            threads.push(thread);
            Ok(())
        }
        Err(error) => {
            shared.admin_in_flight.fetch_sub(1, Ordering::SeqCst);
            log::error(
                "cannot start a thread for a membership request",
                &[("error", &error)],
            );
            Err(ServerError::Unavailable {
                reason: format!("cannot start a thread for the request: {error}"),
            })
        }
    }
}

/// Checks what arrives from the network before it goes near the node.
fn check_request(body: &RequestBody) -> Result<(), String> {
    let id = match body {
        RequestBody::AddMember { id, address, .. } => {
            validate_member_address("peer", &address.peer)?;
            validate_member_address("client", &address.client)?;
            *id
        }
        RequestBody::PromoteMember { id } | RequestBody::RemoveMember { id } => *id,
        RequestBody::TransferLeader { target } => *target,
        _ => return Ok(()),
    };
    if id == NodeId(0) {
        return Err("node id 0 is invalid: node ids start at 1".into());
    }
    Ok(())
}

/// Runs one admin request to its end (blocking up to `deadline`).
fn serve(
    shared: &Shared,
    body: RequestBody,
    deadline: Instant,
    auth_revision: crate::types::LogIndex,
) -> Result<ResponseBody, ServerError> {
    let node = &shared.node;
    if let RequestBody::Auth(request) = body {
        return super::auth::serve_admin(shared, request, deadline, auth_revision);
    }
    let changed = match body {
        RequestBody::AddMember { id, address, voter } => {
            log::info(
                "adding a member",
                &[
                    ("member", &id),
                    ("peer", &address.peer),
                    ("client", &address.client),
                    ("voter", &voter),
                ],
            );
            node.add_member(id, Some(address), voter, deadline)
        }
        RequestBody::PromoteMember { id } => {
            log::info("promoting a member", &[("member", &id)]);
            node.promote_member(id, deadline)
        }
        RequestBody::RemoveMember { id } => {
            log::info("removing a member", &[("member", &id)]);
            node.remove_member(id, deadline)
        }
        RequestBody::TransferLeader { target } => {
            log::info("transferring leadership", &[("to", &target)]);
            return match node.transfer_leadership(target, deadline) {
                Ok(()) => Ok(ResponseBody::LeaderTransferred { leader: target }),
                Err(error) => Err(transfer_error(shared, error)),
            };
        }
        other => {
            return Err(ServerError::Unavailable {
                reason: format!("not an admin request: {other:?}"),
            })
        }
    };
    match changed {
        Ok(membership) => Ok(ResponseBody::Members(MembersReply {
            node: node.id(),
            leader: node.status().leader,
            membership,
        })),
        Err(error) => {
            log::info("membership request failed", &[("error", &error)]);
            Err(membership_error(shared, error))
        }
    }
}

fn not_leader(shared: &Shared, leader: Option<NodeId>) -> ServerError {
    ServerError::NotLeader {
        leader_id: leader,
        leader_client_address: leader.and_then(|leader| shared.client_address(leader)),
    }
}

/// Maps a membership error, keeping its "may it have taken effect" meaning.
fn membership_error(shared: &Shared, error: MembershipError) -> ServerError {
    match error {
        MembershipError::NotLeader { leader_hint } => not_leader(shared, leader_hint),
        // Nothing appended; the node already retried these until the deadline.
        error @ (MembershipError::Busy { .. } | MembershipError::NotCaughtUp { .. }) => {
            ServerError::Busy {
                reason: error.to_string(),
            }
        }
        error @ (MembershipError::Invalid { .. } | MembershipError::WouldLoseQuorum { .. }) => {
            ServerError::Refused {
                reason: error.to_string(),
            }
        }
        MembershipError::Dropped => ServerError::Dropped,
        error @ (MembershipError::Timeout | MembershipError::Shutdown) => {
            ServerError::Indeterminate {
                reason: format!("the membership change may still complete: {error}"),
            }
        }
    }
}

fn transfer_error(shared: &Shared, error: TransferError) -> ServerError {
    match error {
        TransferError::NotLeader { leader_hint } => not_leader(shared, leader_hint),
        error @ TransferError::NotAVoter { .. } => ServerError::Refused {
            reason: error.to_string(),
        },
        TransferError::Timeout => ServerError::TransferFailed {
            reason: "the target did not take over in time and the transfer was abandoned \
                     (leadership may still have moved: check the status)"
                .into(),
        },
        TransferError::Shutdown => ServerError::Unavailable {
            reason: "node is shutting down".into(),
        },
    }
}
