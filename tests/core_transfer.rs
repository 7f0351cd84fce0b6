//! Deterministic tests of leadership transfer in the pure core (Raft thesis §3.10): the target
//! is brought up to date and told to campaign at once; the leader refuses proposals and voids
//! its lease meanwhile; a transfer that does not complete within an election timeout is
//! abandoned; only voters can be targets.

use keyval::error::TransferError;
use keyval::raft::{Message, MessageBody, RoleKind};
use keyval::testkit::CoreNetwork;
use keyval::{Config, LogIndex, NodeId, ProposeError, ReadError};

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

fn with_lease(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.lease_reads = true;
    config
}

/// A lease read on `id` at the time its clock shows (the harness's virtual time).
fn lease_read(network: &mut CoreNetwork, id: NodeId) -> Result<LogIndex, ReadError> {
    let raft = network.node(id);
    raft.lease_read(raft.clock())
}

fn settle(network: &mut CoreNetwork) {
    for _ in 0..20 {
        network.tick_all();
        network.stabilize();
    }
}

#[test]
fn transfer_to_an_up_to_date_follower() {
    let mut network = CoreNetwork::new(3, 31);
    network.elect(N1);
    network.propose(N1, b"x").unwrap();
    let term = network.node(N1).term();
    network.node(N1).transfer_leadership(N2).unwrap();
    network.process_ready(N1);
    network.stabilize();
    assert_eq!(network.node(N2).role(), RoleKind::Leader);
    assert!(network.node(N2).term() > term);
    assert_eq!(network.node(N1).role(), RoleKind::Follower);
}

#[test]
fn transfer_to_a_lagging_follower_catches_it_up_first() {
    let mut network = CoreNetwork::new(3, 32);
    network.elect(N1);
    network.isolate(N3);
    for k in 0..30u8 {
        network.propose(N1, &[k]).unwrap();
    }
    network.heal();
    let mut timeout_now_sent_when_caught_up = None;
    network.node(N1).transfer_leadership(N3).unwrap();
    network.process_ready(N1);
    while let Some(message) = network.in_flight.pop_front() {
        if matches!(message.body, MessageBody::TimeoutNow { .. }) {
            let caught_up =
                network.node(N3).log().last_index() == network.node(N1).log().last_index();
            timeout_now_sent_when_caught_up = Some(caught_up);
        }
        let to = message.to;
        let _ = network.node(to).step(message);
        network.process_ready(to);
    }
    assert_eq!(timeout_now_sent_when_caught_up, Some(true));
    assert_eq!(network.node(N3).role(), RoleKind::Leader);
    // Nothing committed was lost on the way.
    settle(&mut network);
    assert_eq!(network.applied_commands(N3).len(), 30);
}

#[test]
fn transfer_to_a_non_member_is_refused() {
    let mut network = CoreNetwork::new(3, 33);
    network.elect(N1);
    assert_eq!(
        network.node(N1).transfer_leadership(NodeId(9)),
        Err(TransferError::NotAVoter { target: NodeId(9) })
    );
    assert_eq!(
        network.node(N2).transfer_leadership(N3),
        Err(TransferError::NotLeader {
            leader_hint: Some(N1)
        })
    );
}

#[test]
fn proposals_are_refused_during_a_transfer_and_accepted_after_it_times_out() {
    let mut network = CoreNetwork::new(3, 34);
    network.elect(N1);
    network.isolate(N3);
    network.node(N1).transfer_leadership(N3).unwrap();
    assert!(matches!(
        network.node(N1).propose(b"during".to_vec()),
        Err(ProposeError::Busy { .. })
    ));
    // The target never answers: after an election timeout the transfer is abandoned.
    for _ in 0..Config::new(N1).election_ticks {
        network.node(N1).tick();
        network.process_ready(N1);
        network.stabilize();
    }
    assert_eq!(network.node(N1).transfer_target(), None);
    assert_eq!(network.node(N1).role(), RoleKind::Leader);
    network.node(N1).propose(b"after".to_vec()).unwrap();
}

// PITFALLS #6: the lease is void the moment a transfer starts.
#[test]
fn lease_is_void_once_a_transfer_starts() {
    let mut network = CoreNetwork::with_config(3, 35, with_lease);
    network.elect(N1);
    settle(&mut network);
    assert!(lease_read(&mut network, N1).is_ok());
    network.isolate(N2);
    network.node(N1).transfer_leadership(N2).unwrap();
    assert!(lease_read(&mut network, N1).is_err());
}

/// Takes the TimeoutNow in flight, holding it back.
fn hold_timeout_now(network: &mut CoreNetwork) -> Message {
    let position = network
        .in_flight
        .iter()
        .position(|message| matches!(message.body, MessageBody::TimeoutNow { .. }))
        .expect("a TimeoutNow in flight");
    network.in_flight.remove(position).unwrap()
}

// A TimeoutNow delayed past its transfer's abandonment (same term, same leader) must not start
// a campaign: transfer campaigns skip the voters' heard-from-a-leader check, so the target
// could win while the leader, which took its proposals and its lease back, serves lease reads.
#[test]
fn a_timeout_now_delayed_past_its_abandoned_transfer_starts_no_campaign() {
    let mut network = CoreNetwork::with_config(3, 36, with_lease);
    network.elect(N1);
    settle(&mut network);
    network.node(N1).transfer_leadership(N2).unwrap();
    network.process_ready(N1);
    // N2 holds the whole log, so a TimeoutNow left at once; it and any later one are delayed
    // until the transfer is abandoned and the cluster has carried on.
    let mut delayed = vec![hold_timeout_now(&mut network)];
    network.run_with(2 * Config::new(N1).election_ticks, |message| {
        if matches!(message.body, MessageBody::TimeoutNow { .. }) {
            delayed.push(message.clone());
            return false;
        }
        true
    });
    assert_eq!(network.node(N1).transfer_target(), None, "abandoned");
    assert!(lease_read(&mut network, N1).is_ok());
    let term = network.node(N2).term();
    for timeout_now in delayed {
        let _ = network.node(N2).step(timeout_now);
    }
    assert_eq!(network.node(N2).role(), RoleKind::Follower);
    assert_eq!(network.node(N2).term(), term);
    network.process_ready(N2);
    network.stabilize();
    assert_eq!(network.leaders(), vec![(N1, term)]);
}

// After an abandoned transfer the lease returns only once the fence (a no-op the leader
// appends on abandoning) is committed: from then on, a campaign started by a late TimeoutNow
// cannot win — its target's log lacks the fence that a quorum holds.
#[test]
fn lease_returns_after_an_abandoned_transfer_only_once_its_fence_commits() {
    let mut network = CoreNetwork::with_config(3, 37, with_lease);
    network.elect(N1);
    settle(&mut network);
    network.node(N1).transfer_leadership(N2).unwrap();
    network.process_ready(N1);
    let _delayed = hold_timeout_now(&mut network);
    // Heartbeats flow, appends are lost: the transfer is abandoned, the fence cannot commit.
    network.run_with(Config::new(N1).election_ticks + 5, |message| {
        !matches!(message.body, MessageBody::AppendEntries { .. })
    });
    assert_eq!(network.node(N1).transfer_target(), None, "abandoned");
    assert_eq!(lease_read(&mut network, N1), Err(ReadError::NoLease));
    settle(&mut network);
    assert!(lease_read(&mut network, N1).is_ok());
}

/// At most one node may serve lease reads at any moment.
fn lease_holders(network: &mut CoreNetwork) -> Vec<NodeId> {
    let ids: Vec<NodeId> = network.nodes.keys().copied().collect();
    ids.into_iter()
        .filter(|&id| lease_read(network, id).is_ok())
        .collect()
}

// A transfer racing a partition: the leader starts handing over, then is cut off from the
// others at a random moment (before or after TimeoutNow, before or after the target wins),
// and the cut heals at another. Checked after every message and tick: never two nodes
// serving lease reads. Seeded; a failure names its seed.
#[test]
fn a_transfer_racing_a_partition_never_yields_two_lease_holders() {
    use rand::{Rng, SeedableRng};
    for seed in 0..300u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut network = CoreNetwork::with_config(3, seed, with_lease);
        network.elect(N1);
        settle(&mut network);
        assert_eq!(lease_holders(&mut network), vec![N1], "seed {seed}");
        let target = if rng.random_bool(0.5) { N2 } else { N3 };
        network.node(N1).transfer_leadership(target).unwrap();
        network.process_ready(N1);
        let cut_at = rng.random_range(0..12u64);
        let heal_at = cut_at + rng.random_range(1..80u64);
        let mut step = 0u64;
        for _tick in 0..120 {
            network.tick_all();
            loop {
                if step == cut_at {
                    network.isolate(N1);
                }
                if step == heal_at {
                    network.heal();
                }
                step += 1;
                let holders = lease_holders(&mut network);
                assert!(holders.len() <= 1, "seed {seed}: lease holders {holders:?}");
                if !network.deliver_one() {
                    break;
                }
            }
        }
        let leaders = network.leaders();
        let top = leaders.iter().map(|&(_, term)| term).max();
        let at_top = leaders
            .iter()
            .filter(|&&(_, term)| Some(term) == top)
            .count();
        assert_eq!(at_top, 1, "seed {seed}: {leaders:?}");
    }
}
