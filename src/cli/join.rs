//! `keyval --join ADDR`: a new node asks a running cluster to take it in, and the node's
//! identity is kept in its data directory.
//!
//! ```text
//!  keyval --id 4 --join 127.0.0.1:7379 --peer-listen P --client-listen C --data-dir d4
//!    1. d4/node-id: recorded at first start; a start with another --id is refused
//!    2. d4 empty: Client::add_member(n4, {P, C}, learner) ──► leader (redirects followed)
//!         ◄── the configuration with n4 as a learner and every member's addresses
//!    3. start the node from that configuration (not a voter there: it never campaigns) and
//!       its transport knowing every member's peer address; the leader sends it the log
//!    4. [n4-join] Client::promote_member(n4), retried while it catches up (NotCaughtUp,
//!       Busy) — unless --join-as-learner
//! ```
//!
//! Running the same command again is harmless: a directory with state starts from it (the
//! cluster is not asked to add the node again, so a node removed meanwhile stays out; it only
//! logs that it is not a member), and the promotion is asked again, which succeeds at once
//! for a voter and is refused for a node that is no longer a learner.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::client::{Client, ClientError, ClientOptions};
use crate::log;
use crate::protocol::ServerError;
use crate::storage::file::FileStorage;
use crate::types::{MemberAddress, Membership, NodeId};

/// How long a new node keeps asking the cluster to add it before it gives up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One attempt to add or promote: the change itself may take this long.
const JOIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between attempts while the cluster is unavailable or busy.
const JOIN_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Checks the data directory belongs to node `id`, recording `id` on first start.
pub(super) fn check_node_id(storage: &mut FileStorage, id: NodeId) -> anyhow::Result<()> {
    let dir = storage.dir().display().to_string();
    match storage
        .node_id()
        .with_context(|| format!("reading the node id of data directory {dir}"))?
    {
        Some(recorded) if recorded == id => Ok(()),
        Some(recorded) => bail!(
            "data directory {dir} belongs to node {} (its node-id file), not to --id {}: \
             a node's id never changes; start it with --id {}, or give this node its own \
             data directory",
            recorded.0,
            id.0,
            recorded.0
        ),
        None => storage
            .record_node_id(id)
            .with_context(|| format!("recording node id {} in data directory {dir}", id.0)),
    }
}

/// The cluster a node joins: the client endpoints of `--join`, and the TLS to reach them
/// (the node's own client-port CA and certificate, when it serves clients over TLS).
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) endpoints: Vec<String>,
    pub(super) tls: Option<crate::tls::ClientTls>,
    /// Who asks for the membership change on a cluster with auth enabled (`--join-user`).
    pub(super) credentials: Option<crate::client::Credentials>,
}

fn client(target: &Target, timeout: Duration) -> anyhow::Result<Client> {
    let options = ClientOptions {
        request_timeout: timeout,
        tls: target.tls.clone(),
        credentials: target.credentials.clone(),
        ..ClientOptions::default()
    };
    Client::new(&target.endpoints, options).map_err(|error| anyhow::anyhow!("--join: {error}"))
}

/// Asks the cluster behind `endpoints` to add node `id` at `address` as a learner, retrying
/// while it is unavailable or busy (up to [`JOIN_TIMEOUT`], or until `stop`). Returns the
/// configuration to start from.
pub(super) fn join_as_learner(
    target: &Target,
    id: NodeId,
    address: &MemberAddress,
    stop: &AtomicBool,
) -> anyhow::Result<Membership> {
    let endpoints = &target.endpoints;
    let client = client(target, JOIN_ATTEMPT_TIMEOUT)?;
    let deadline = Instant::now() + JOIN_TIMEOUT;
    log::info(
        "joining the cluster",
        &[
            ("via", &endpoints.join(",")),
            ("peer", &address.peer),
            ("client", &address.client),
        ],
    );
    loop {
        match client.add_member(id, address.clone(), false) {
            Ok(reply) => {
                let leader = reply
                    .leader
                    .map_or_else(|| "unknown".to_string(), |leader| leader.0.to_string());
                log::info("added to the cluster as a learner", &[("leader", &leader)]);
                return Ok(reply.membership);
            }
            Err(ClientError::Server(refusal @ ServerError::Refused { .. })) => {
                bail!("the cluster refused to add node {}: {refusal}", id.0)
            }
            Err(error) => {
                if Instant::now() >= deadline || stop.load(Ordering::SeqCst) {
                    bail!(
                        "could not join the cluster via {} within {JOIN_TIMEOUT:?}: {error}",
                        endpoints.join(",")
                    );
                }
                log::warn("join attempt failed; retrying", &[("error", &error)]);
                std::thread::sleep(JOIN_RETRY_INTERVAL);
            }
        }
    }
}

/// Asks the cluster, best effort and briefly, for its configuration: a restarted node whose
/// stored log does not yet hold one learns its peers' addresses from it.
pub(super) fn known_members(target: &Target) -> Option<Membership> {
    let client = client(target, Duration::from_secs(2)).ok()?;
    match client.members() {
        Ok(reply) => Some(reply.membership),
        Err(error) => {
            log::warn(
                "cannot ask the cluster for its members; starting from the stored state",
                &[("error", &error)],
            );
            None
        }
    }
}

/// Starts the `n{id}-join` thread, which asks the cluster to promote this node to voter
/// until it succeeds, is refused, or `stop` is set.
pub(super) fn spawn_promotion(
    target: &Target,
    id: NodeId,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let client = client(target, JOIN_ATTEMPT_TIMEOUT)?;
    std::thread::Builder::new()
        .name(format!("{id}-join"))
        .spawn(move || promote(&client, id, &stop))
        .context("spawning the join thread")
}

fn promote(client: &Client, id: NodeId, stop: &AtomicBool) {
    let mut attempts: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        attempts += 1;
        match client.promote_member(id) {
            Ok(_) => {
                log::info("this node is a voter", &[("attempts", &attempts)]);
                return;
            }
            Err(ClientError::Server(refusal @ ServerError::Refused { .. })) => {
                log::error(
                    "the cluster refused to promote this node to voter (was it removed?)",
                    &[("error", &refusal)],
                );
                return;
            }
            Err(error) => {
                // Catching up (NotCaughtUp arrives as Busy), another change in progress, no
                // leader for now: ask again.
                if attempts % 10 == 1 {
                    log::info(
                        "waiting to be promoted to voter",
                        &[("attempts", &attempts), ("last", &error)],
                    );
                }
                std::thread::sleep(JOIN_RETRY_INTERVAL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file::{FileOptions, NODE_ID_FILE_NAME};

    #[test]
    fn the_node_id_is_recorded_once_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = FileStorage::open(dir.path(), FileOptions::default()).unwrap();
            assert!(storage.is_empty());
            assert_eq!(storage.node_id().unwrap(), None);
            check_node_id(&mut storage, NodeId(4)).unwrap();
            check_node_id(&mut storage, NodeId(4)).unwrap();
        }
        let path = dir.path().join(NODE_ID_FILE_NAME);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4\n");
        let mut storage = FileStorage::open(dir.path(), FileOptions::default()).unwrap();
        assert_eq!(storage.node_id().unwrap(), Some(NodeId(4)));
        let error = check_node_id(&mut storage, NodeId(5)).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("belongs to node 4"), "{message}");
        assert!(message.contains("--id 5"), "{message}");
        drop(storage);
        for garbage in ["", "x", "0", "-1", "\u{0}\u{1}"] {
            std::fs::write(&path, garbage).unwrap();
            let mut storage = FileStorage::open(dir.path(), FileOptions::default()).unwrap();
            let error = check_node_id(&mut storage, NodeId(4)).unwrap_err();
            assert!(format!("{error:#}").contains("not a node id"), "{error:#}");
        }
    }
}
