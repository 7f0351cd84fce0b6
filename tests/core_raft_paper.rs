//! Deterministic tests of the pure consensus core, one per Raft rule, named after the paper
//! section they check (in the manner of etcd-io/raft's raft_paper_test.go). Every node is a
//! pure `Raft` in one thread; the test moves time and messages itself.

use std::collections::BTreeSet;

use keyval::raft::{AppendResponse, Message, MessageBody, RoleKind, StepError};
use keyval::testkit::CoreNetwork;
use keyval::{Config, EntryId, LogIndex, NodeId, ReadError, Term};

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

fn message(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term: Term(term),
        body,
    }
}

fn no_pre_vote(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.pre_vote = false;
    config.check_quorum = false;
    config
}

/// A (not pre-, not transfer) vote request from `from` to `to` at `term`.
fn vote_request(from: NodeId, to: NodeId, term: u64, last_log: EntryId) -> Message {
    message(
        from,
        to,
        term,
        MessageBody::RequestVote {
            pre_vote: false,
            last_log,
            transfer: false,
        },
    )
}

fn entry_id(term: u64, index: u64) -> EntryId {
    EntryId::new(Term(term), LogIndex(index))
}

/// A lease read on `id` at the time its clock shows (the harness's virtual time).
fn lease_read(network: &mut CoreNetwork, id: NodeId) -> Result<LogIndex, ReadError> {
    let raft = network.node(id);
    raft.lease_read(raft.clock())
}

// Raft §5.1: a node that sees a higher term adopts it and becomes a follower.
#[test]
fn section_5_1_higher_term_turns_leader_into_follower() {
    let mut network = CoreNetwork::new(3, 1);
    network.elect(N1);
    assert_eq!(network.node(N1).role(), RoleKind::Leader);
    let heartbeat = message(N2, N1, 9, MessageBody::HeartbeatResponse { round: 0 });
    network.node(N1).step(heartbeat).unwrap();
    assert_eq!(network.node(N1).role(), RoleKind::Follower);
    assert_eq!(network.node(N1).term(), Term(9));
}

// Raft §5.1: a message from an older term is rejected and changes nothing.
#[test]
fn section_5_1_stale_term_is_rejected() {
    let mut network = CoreNetwork::with_config(3, 1, no_pre_vote);
    network.elect(N1);
    network.elect(N2);
    let term = network.node(N2).term();
    let stale = message(
        N1,
        N2,
        term.0 - 1,
        MessageBody::AppendEntries {
            prev: entry_id(0, 0),
            entries: vec![],
            leader_commit: LogIndex(0),
        },
    );
    assert!(matches!(
        network.node(N2).step(stale),
        Err(StepError::StaleTerm { .. })
    ));
    assert_eq!(network.node(N2).role(), RoleKind::Leader);
}

// Raft §5.2: a candidate with a majority of votes becomes leader, exactly one per term.
#[test]
fn section_5_2_candidate_with_majority_wins() {
    let mut network = CoreNetwork::new(5, 7);
    network.elect(N3);
    assert_eq!(network.leaders(), vec![(N3, Term(1))]);
    for id in 1..=5 {
        assert_eq!(network.node(NodeId(id)).leader(), Some(N3));
    }
}

// Raft §5.2: a split vote elects nobody in that term; a later timeout resolves it.
#[test]
fn section_5_2_split_vote_elects_nobody_then_recovers() {
    let mut network = CoreNetwork::with_config(4, 3, no_pre_vote);
    // N1 can only reach N3; N2 can only reach N4.
    for (a, b) in [(1, 2), (1, 4), (2, 3), (3, 4)] {
        network.cut(NodeId(a), NodeId(b));
        network.cut(NodeId(b), NodeId(a));
    }
    network.node(N1).start_election();
    network.node(N2).start_election();
    network.stabilize();
    assert!(
        network.leaders().is_empty(),
        "2 of 4 votes is not a majority"
    );
    network.heal();
    network.tick_until_leader(200);
    assert_eq!(network.leaders().len(), 1);
}

// Raft §5.2: one vote per term, and the vote survives a crash.
#[test]
fn section_5_2_one_durable_vote_per_term() {
    let mut network = CoreNetwork::with_config(3, 1, no_pre_vote);
    let request = |from: NodeId| vote_request(from, N3, 2, entry_id(0, 0));
    network.node(N3).step(request(N1)).unwrap();
    let ready = network.node(N3).take_ready();
    // The grant must wait for the vote to be durable.
    assert!(ready.messages.is_empty());
    assert_eq!(ready.hard_state.unwrap().vote, Some(N1));
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::RequestVoteResponse { granted: true, .. }
    ));
    // Persist it the way the runtime would, then crash and restart.
    let mut network = CoreNetwork::with_config(3, 1, no_pre_vote);
    network.node(N3).step(request(N1)).unwrap();
    network.process_ready(N3);
    network.crash_and_restart(N3);
    network.node(N3).step(request(N2)).unwrap();
    let ready = network.node(N3).take_ready();
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::RequestVoteResponse { granted: false, .. }
    ));
}

// PITFALLS #3: a candidate that steps down in the same term keeps its vote.
#[test]
fn candidate_stepping_down_in_same_term_keeps_its_vote() {
    let mut network = CoreNetwork::with_config(3, 1, no_pre_vote);
    network.isolate(N1);
    network.node(N1).start_election();
    network.stabilize();
    assert_eq!(network.node(N1).term(), Term(1));
    // A leader of the same term appears: N1 follows it but must not vote again in term 1.
    let append = message(
        N2,
        N1,
        1,
        MessageBody::Heartbeat {
            commit: LogIndex(0),
            round: 1,
        },
    );
    network.node(N1).step(append).unwrap();
    let _ = network.node(N1).take_ready();
    assert_eq!(network.node(N1).status().role, RoleKind::Follower);
    let request = vote_request(N3, N1, 1, entry_id(1, 5));
    network.node(N1).step(request).unwrap();
    let ready = network.node(N1).take_ready();
    assert!(ready.hard_state.is_none(), "vote must not change");
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::RequestVoteResponse { granted: false, .. }
    ));
}

// Raft §5.4.1: a candidate whose log is less up to date cannot win.
#[test]
fn section_5_4_1_election_restriction() {
    let mut network = CoreNetwork::with_config(3, 1, no_pre_vote);
    network.set_log(N1, &[1], 1);
    network.set_log(N2, &[1, 1], 1);
    network.set_log(N3, &[1, 1], 1);
    network.elect(N1);
    assert!(network.leaders().iter().all(|&(id, _)| id != N1));
    network.elect(N2);
    assert_eq!(network.leaders().first().map(|&(id, _)| id), Some(N2));
}

// Raft §5.3: an entry replicated on a majority commits and is applied everywhere.
#[test]
fn section_5_3_replication_commits_on_majority() {
    let mut network = CoreNetwork::new(3, 1);
    network.elect(N1);
    network.isolate(N3);
    network.propose(N1, b"x").unwrap();
    assert_eq!(network.applied_commands(N1), vec![b"x".to_vec()]);
    assert!(network.applied_commands(N3).is_empty());
    network.heal();
    network.tick_all();
    for _ in 0..10 {
        network.tick_all();
        network.stabilize();
    }
    assert_eq!(network.applied_commands(N3), vec![b"x".to_vec()]);
}

// Raft §5.3 / Figure 7: the leader repairs every kind of divergent follower log.
#[test]
fn figure_7_leader_repairs_divergent_followers() {
    let mut network = CoreNetwork::with_config(7, 5, no_pre_vote);
    let leader_log: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    network.set_log(N1, leader_log, 7);
    network.set_log(NodeId(2), &[1, 1, 1, 4, 4, 5, 5, 6, 6], 6); // (a) missing one
    network.set_log(NodeId(3), &[1, 1, 1, 4], 4); // (b) missing many
    network.set_log(NodeId(4), &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], 6); // (c) one extra
    network.set_log(NodeId(5), &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], 7); // (d) extra term 7
    network.set_log(NodeId(6), &[1, 1, 1, 4, 4, 4, 4], 4); // (e) extra term 4
    network.set_log(NodeId(7), &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], 3); // (f) terms 2, 3
    network.elect(N1);
    assert_eq!(network.leaders().first().map(|&(id, _)| id), Some(N1));
    for _ in 0..5 {
        network.tick_all();
        network.stabilize();
    }
    let expected: Vec<EntryId> = (1..=11)
        .map(|index| {
            let term = network.node(N1).log().term(LogIndex(index)).unwrap();
            EntryId::new(term, LogIndex(index))
        })
        .collect();
    for id in 2..=7 {
        let node = network.node(NodeId(id));
        let log: Vec<EntryId> = (1..=node.log().last_index().0)
            .map(|index| EntryId::new(node.log().term(LogIndex(index)).unwrap(), LogIndex(index)))
            .collect();
        assert_eq!(log, expected, "follower {id} not repaired");
    }
}

// Raft §5.4.2 / Figure 8: a leader never commits an entry of an earlier term by counting
// replicas, only indirectly with an entry of its own term.
#[test]
fn figure_8_old_term_entry_is_not_committed_by_counting() {
    let mut network = CoreNetwork::with_config(5, 9, no_pre_vote);
    network.set_log(N1, &[1, 2], 3);
    for id in 2..=5 {
        network.set_log(NodeId(id), &[1], 3);
    }
    // Elect N1 in term 4 but deliver nothing else.
    network.node(N1).start_election();
    network.process_ready(N1);
    network.in_flight.clear();
    for voter in [N2, N3] {
        let grant = message(
            voter,
            N1,
            4,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            },
        );
        network.node(N1).step(grant).unwrap();
    }
    assert_eq!(network.node(N1).role(), RoleKind::Leader);
    network.process_ready(N1);
    network.in_flight.clear();
    // Two followers acknowledge the term-2 entry at index 2: with the leader that is 3 of 5.
    for follower in [N2, N3] {
        let ack = message(
            follower,
            N1,
            4,
            MessageBody::AppendEntriesResponse(AppendResponse::Success {
                matched: entry_id(2, 2),
            }),
        );
        network.node(N1).step(ack).unwrap();
    }
    assert_eq!(
        network.committed(N1),
        LogIndex(0),
        "an entry of term 2 must not commit by counting in term 4"
    );
    // Once the leader's own no-op (index 3, term 4) reaches a majority, both commit.
    for follower in [N2, N3] {
        let ack = message(
            follower,
            N1,
            4,
            MessageBody::AppendEntriesResponse(AppendResponse::Success {
                matched: entry_id(4, 3),
            }),
        );
        network.node(N1).step(ack).unwrap();
    }
    assert_eq!(network.committed(N1), LogIndex(3));
}

// PITFALLS #2: a delayed, shorter AppendEntries must not truncate acknowledged entries.
#[test]
fn stale_reordered_append_does_not_truncate() {
    let mut network = CoreNetwork::new(3, 2);
    network.elect(N1);
    network.propose(N1, b"a").unwrap();
    let before = network.node(N2).log().last_index();
    let term = network.node(N1).term().0;
    let stale = message(
        N1,
        N2,
        term,
        MessageBody::AppendEntries {
            prev: entry_id(term, 1),
            entries: vec![],
            leader_commit: LogIndex(0),
        },
    );
    let _ = network.node(N2).step(stale);
    assert_eq!(network.node(N2).log().last_index(), before);
}

// Thesis §9.6: a node partitioned away and back does not depose a healthy leader, because
// pre-vote keeps its term from rising.
#[test]
fn pre_vote_partitioned_node_does_not_disrupt_leader() {
    let mut network = CoreNetwork::new(3, 4);
    network.elect(N1);
    let term = network.node(N1).term();
    network.isolate(N3);
    for _ in 0..100 {
        network.tick_all();
        network.stabilize();
    }
    assert_eq!(network.node(N3).term(), term, "pre-vote keeps the term");
    network.heal();
    for _ in 0..50 {
        network.tick_all();
        network.stabilize();
    }
    assert_eq!(network.leaders(), vec![(N1, term)]);
}

// Thesis §6.2: a leader that cannot hear a quorum steps down within an election timeout.
#[test]
fn check_quorum_isolated_leader_steps_down() {
    let mut network = CoreNetwork::new(3, 5);
    network.elect(N1);
    network.isolate(N1);
    for _ in 0..(2 * Config::new(N1).election_ticks + 1) {
        network.node(N1).tick();
        network.process_ready(N1);
    }
    assert_eq!(network.node(N1).role(), RoleKind::Follower);
}

// Thesis §4.2.3: a follower that heard from its leader recently ignores vote requests.
#[test]
fn check_quorum_follower_ignores_votes_while_leader_active() {
    let mut network = CoreNetwork::new(3, 5);
    network.elect(N1);
    let term = network.node(N2).term().0;
    let request = vote_request(N3, N2, term + 1, entry_id(term + 1, 100));
    assert!(matches!(
        network.node(N2).step(request),
        Err(StepError::LeaderActive { .. })
    ));
    assert_eq!(network.node(N2).term(), Term(term));
}

/// What `id` answered to vote requests (pre-vote or not, granted or not), in the order sent.
fn vote_answers(network: &mut CoreNetwork, id: NodeId) -> Vec<(bool, bool)> {
    network.process_ready(id);
    let answers = network
        .in_flight
        .iter()
        .filter(|message| message.from == id)
        .filter_map(|message| match message.body {
            MessageBody::RequestVoteResponse { pre_vote, granted } => Some((pre_vote, granted)),
            _ => None,
        })
        .collect();
    network.in_flight.clear();
    answers
}

// Thesis §6.4.1 (leases): a follower that answered the leader's heartbeat and then crashed
// must not help elect another leader while that leader's lease may still hold. A node that
// restarts with state grants neither votes nor pre-votes for one election timeout after it
// starts, as if it had just heard from a leader.
#[test]
fn restarted_follower_refuses_votes_for_an_election_timeout() {
    let mut network = CoreNetwork::new(3, 16);
    network.elect(N1);
    network.crash_and_restart(N3);
    let term = network.node(N3).term().0;
    let last_log = network.node(N2).log().last_id();
    let request = |pre_vote: bool| {
        message(
            N2,
            N3,
            term + 1,
            MessageBody::RequestVote {
                pre_vote,
                last_log,
                transfer: false,
            },
        )
    };
    network.node(N3).step(request(true)).unwrap();
    assert_eq!(vote_answers(&mut network, N3), vec![(true, false)]);
    assert!(matches!(
        network.node(N3).step(request(false)),
        Err(StepError::LeaderActive { from: N2 })
    ));
    assert_eq!(network.node(N3).term(), Term(term));
    // One election timeout later it votes again (here: nobody reached it since).
    for _ in 0..Config::new(N3).election_ticks {
        network.node(N3).tick();
    }
    network.process_ready(N3);
    network.in_flight.clear();
    network.node(N3).step(request(true)).unwrap();
    assert_eq!(vote_answers(&mut network, N3), vec![(true, true)]);
}

// A whole cluster restarted at once (a cold start) still elects a leader: every node's
// silence ends after one election timeout, before the earliest election timer fires.
#[test]
fn cold_restart_of_every_node_elects_a_leader() {
    let mut network = CoreNetwork::new(3, 17);
    network.elect(N1);
    network.propose(N1, b"x").unwrap();
    for id in [N1, N2, N3] {
        network.crash_and_restart(id);
    }
    let election_ticks = Config::new(N1).election_ticks;
    network.tick_until_leader(3 * election_ticks);
    assert_eq!(network.leaders().len(), 1);
}

// A leadership transfer campaign is voted for even inside a restarted node's silence: the
// leader that sent TimeoutNow voided its own lease first (and fences it if the transfer is
// abandoned), and no other leader's lease can be running, so there is nothing to protect.
#[test]
fn restarted_follower_votes_for_a_transfer_campaign() {
    let mut network = CoreNetwork::new(3, 18);
    network.elect(N1);
    network.crash_and_restart(N3);
    let term = network.node(N3).term().0;
    let last_log = network.node(N2).log().last_id();
    let request = message(
        N2,
        N3,
        term + 1,
        MessageBody::RequestVote {
            pre_vote: false,
            last_log,
            transfer: true,
        },
    );
    network.node(N3).step(request).unwrap();
    assert_eq!(vote_answers(&mut network, N3), vec![(false, true)]);
}

// The lease is void on a configuration change (it was earned under the old quorum); answers
// to a heartbeat round sent before the change must not bring it back, only a round sent after.
#[test]
fn a_voided_lease_is_earned_again_only_by_a_round_sent_after_the_void() {
    let mut network = CoreNetwork::with_config(3, 20, with_lease);
    network.elect(N1);
    for _ in 0..10 {
        network.tick_all();
        network.stabilize();
    }
    // A heartbeat round leaves and reaches the followers; their answers are held back.
    for _ in 0..Config::new(N1).heartbeat_ticks {
        network.node(N1).tick();
    }
    network.process_ready(N1);
    while let Some(message) = network.in_flight.pop_front() {
        if message.to == N1 {
            network.in_flight.push_front(message);
            break;
        }
        let to = message.to;
        let _ = network.node(to).step(message);
        network.process_ready(to);
    }
    let held: Vec<Message> = network.in_flight.drain(..).collect();
    assert!(held
        .iter()
        .all(|message| matches!(message.body, MessageBody::HeartbeatResponse { .. })));
    assert_eq!(held.len(), 2);
    network
        .node(N1)
        .propose_membership(&[keyval::MemberChange::AddLearner {
            id: NodeId(4),
            address: None,
        }])
        .unwrap();
    assert_eq!(lease_read(&mut network, N1), Err(ReadError::NoLease));
    for message in held {
        network.node(N1).step(message).unwrap();
    }
    network.stabilize();
    assert_eq!(lease_read(&mut network, N1), Err(ReadError::NoLease));
    // The next round earns it again.
    for _ in 0..10 {
        network.tick_all();
        network.stabilize();
    }
    assert!(lease_read(&mut network, N1).is_ok());
}

// The silence after a restart protects a lease only if a follower that answered the leader's
// heartbeat restarts *with* the term it answered in. Heartbeat answers leave before the term
// they adopted is durable, so a node that started empty could answer, crash, restart empty and
// vote at once. The leader therefore counts heartbeat answers toward its lease only from
// followers that acknowledged an append in its term — those answers leave after a sync.
#[test]
fn lease_counts_only_followers_that_hold_the_term_durably() {
    let mut network = CoreNetwork::with_config(3, 19, with_lease);
    network.isolate(N3);
    network.elect(N1);
    network.heal();
    // N3 hears heartbeats but no appends; N2's heartbeat answers are lost. A quorum (N1, N3)
    // answered every round, and N1 committed its no-op with N2.
    network.run_with(20, |message| {
        let append_to_n3 =
            message.to == N3 && matches!(message.body, MessageBody::AppendEntries { .. });
        let heartbeat_answer_of_n2 =
            message.from == N2 && matches!(message.body, MessageBody::HeartbeatResponse { .. });
        !append_to_n3 && !heartbeat_answer_of_n2
    });
    assert_eq!(network.node(N3).leader(), Some(N1));
    assert_eq!(network.node(N3).log().last_index(), LogIndex(0));
    assert_eq!(lease_read(&mut network, N1), Err(ReadError::NoLease));
    // Once N3 acknowledges an append, its heartbeat answers count.
    network.run_with(20, |message| {
        !(message.from == N2 && matches!(message.body, MessageBody::HeartbeatResponse { .. }))
    });
    assert!(lease_read(&mut network, N1).is_ok());
}

// Thesis §4.2.3, and what leases rely on: a follower that heard from its leader within the
// election timeout votes for nobody — also after a stale message (here a late answer to an old
// pre-vote, from a node already in a higher term) made it adopt a higher term without a
// leader, and the candidate of that term then asks in what is now the follower's own term.
#[test]
fn a_follower_that_adopted_a_higher_term_from_a_stale_answer_still_refuses_votes() {
    let mut network = CoreNetwork::new(3, 23);
    network.elect(N1);
    let term = network.node(N2).term().0;
    let late_answer = message(
        N3,
        N2,
        term + 1,
        MessageBody::RequestVoteResponse {
            pre_vote: true,
            granted: false,
        },
    );
    let _ = network.node(N2).step(late_answer);
    assert_eq!(network.node(N2).term(), Term(term + 1));
    let request = vote_request(N3, N2, term + 1, entry_id(term + 1, 100));
    assert!(matches!(
        network.node(N2).step(request),
        Err(StepError::LeaderActive { from: N3 })
    ));
    assert_eq!(vote_answers(&mut network, N2), vec![]);
}

// Flow control: a silent follower receives at most the in-flight window of messages.
#[test]
fn flow_control_bounds_messages_in_flight() {
    fn small_window(id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.inflight_messages_max = 4;
        config
    }
    let mut network = CoreNetwork::with_config(3, 6, small_window);
    network.elect(N1);
    network.propose(N1, b"warm up").unwrap();
    network.cut(N2, N1);
    let mut sent_to_follower = 0;
    for k in 0..50 {
        network.node(N1).propose(vec![k]).unwrap();
        let ready = network.node(N1).take_ready();
        sent_to_follower += ready
            .messages
            .iter()
            .filter(|m| m.to == N2 && matches!(m.body, MessageBody::AppendEntries { .. }))
            .count();
        // (the test plays the runtime for N1; nothing is delivered)
        if let Some(last) = ready.entries.last() {
            network.node(N1).on_persisted(last.id);
        }
    }
    assert!(
        sent_to_follower <= 4,
        "sent {sent_to_follower} > window of 4"
    );
}

// Flow control against a slow disk: a follower that answers heartbeats at once but whose append
// acknowledgements wait for a sync that never ends. Heartbeat answers prove the follower
// alive, not that appends were lost: they must not open the window, or the follower's persist
// queue grows without bound. (A lost append is still repaired: the leader sends an empty
// append from the end of the window, which the follower rejects if it lacks what precedes it —
// section_5_3_replication_commits_on_majority.)
#[test]
fn heartbeat_answers_do_not_open_the_window_to_a_slow_disk() {
    fn small_window(id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.inflight_messages_max = 4;
        config
    }
    let mut network = CoreNetwork::with_config(3, 21, small_window);
    network.elect(N1);
    network.propose(N1, b"warm up").unwrap();
    let mut appends_with_entries = 0;
    for k in 0..100u8 {
        network.node(N1).propose(vec![k]).unwrap();
        network.process_ready(N1);
        network.run_with(1, |message| {
            if message.to == N2 {
                if let MessageBody::AppendEntries { entries, .. } = &message.body {
                    appends_with_entries += usize::from(!entries.is_empty());
                }
            }
            // N2's disk never finishes a sync: its append answers never leave.
            !(message.from == N2 && matches!(message.body, MessageBody::AppendEntriesResponse(_)))
        });
    }
    assert!(
        appends_with_entries <= 4,
        "{appends_with_entries} appends with entries > window of 4"
    );
    // Replication went on through N3 meanwhile.
    assert_eq!(network.applied_commands(N1).len(), 101);
}

// Raft §5.3 under flow control: a window full of appends that were all lost is repaired
// (the empty append after the window is rejected, and the leader probes back).
#[test]
fn a_window_of_lost_appends_is_repaired() {
    fn small_window(id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.inflight_messages_max = 4;
        config
    }
    let mut network = CoreNetwork::with_config(3, 22, small_window);
    network.elect(N1);
    network.propose(N1, b"warm up").unwrap();
    for k in 0..20u8 {
        network.node(N1).propose(vec![k]).unwrap();
        network.process_ready(N1);
        network.run_with(1, |message| {
            !(message.to == N2 && matches!(message.body, MessageBody::AppendEntries { .. }))
        });
    }
    assert!(network.node(N1).progress(N2).unwrap().inflights.is_full());
    network.run(3 * Config::new(N1).heartbeat_ticks);
    assert_eq!(network.applied_commands(N2).len(), 21);
}

// Thesis §6.4: a read index is released only after a quorum answers a later heartbeat, and
// fails when leadership is lost.
#[test]
fn read_index_needs_a_quorum_round() {
    let mut network = CoreNetwork::new(3, 8);
    network.elect(N1);
    network.propose(N1, b"x").unwrap();
    let committed = network.committed(N1);
    network.node(N1).read_index(42).unwrap();
    assert!(network.node(N1).take_ready().read_states.is_empty());
    network.stabilize();
    let mut network = CoreNetwork::new(3, 8);
    network.elect(N1);
    network.propose(N1, b"x").unwrap();
    network.node(N1).read_index(42).unwrap();
    network.process_ready(N1);
    network.stabilize();
    let states = &network.nodes[&N1].read_states;
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].context, 42);
    assert_eq!(states[0].outcome, Ok(committed));

    // Isolated leader: the read is never confirmed, and fails when it steps down.
    network.isolate(N1);
    network.node(N1).read_index(43).unwrap();
    for _ in 0..100 {
        network.node(N1).tick();
        network.process_ready(N1);
    }
    let last = network.nodes[&N1].read_states.last().cloned().unwrap();
    assert_eq!(last.context, 43);
    assert!(matches!(last.outcome, Err(ReadError::NotLeader { .. })));
}

// Thesis §6.4, batched as etcd's read loop does: one read round is in flight at a time.
// Reads that arrive while it is out wait for the next round, which leaves once a quorum has
// answered the first; a round that is lost is replaced by the next heartbeat.
#[test]
fn reads_share_one_round_in_flight() {
    fn rounds_in_flight(network: &CoreNetwork) -> BTreeSet<u64> {
        network
            .in_flight
            .iter()
            .filter_map(|message| match message.body {
                MessageBody::Heartbeat { round, .. } => Some(round),
                _ => None,
            })
            .collect()
    }
    fn served(network: &CoreNetwork) -> Vec<u64> {
        network.nodes[&N1]
            .read_states
            .iter()
            .map(|state| {
                assert!(state.outcome.is_ok(), "{state:?}");
                state.context
            })
            .collect()
    }
    let mut network = CoreNetwork::new(3, 10);
    network.elect(N1);
    network.propose(N1, b"x").unwrap();
    network.stabilize();

    network.node(N1).read_index(1).unwrap();
    network.process_ready(N1);
    let first = rounds_in_flight(&network);
    assert_eq!(first.len(), 1);
    for context in 2..=9 {
        network.node(N1).read_index(context).unwrap();
        network.process_ready(N1);
    }
    assert_eq!(
        rounds_in_flight(&network),
        first,
        "a second round while one is out"
    );
    // The quorum's answers release read 1 and send one round for reads 2..=9.
    let mut rounds = BTreeSet::new();
    while let Some(message) = network.in_flight.front() {
        if let MessageBody::Heartbeat { round, .. } = message.body {
            rounds.insert(round);
        }
        network.deliver_one();
    }
    assert_eq!(rounds.len(), 2, "rounds sent: {rounds:?}");
    assert_eq!(served(&network), (1..=9).collect::<Vec<_>>());

    // The round for read 10 is lost; read 11 waits for it, then both for the next heartbeat.
    network.node(N1).read_index(10).unwrap();
    network.process_ready(N1);
    network
        .in_flight
        .retain(|message| !matches!(message.body, MessageBody::Heartbeat { .. }));
    network.node(N1).read_index(11).unwrap();
    network.process_ready(N1);
    assert!(rounds_in_flight(&network).is_empty());
    assert_eq!(served(&network).len(), 9);
    network.run(Config::new(N1).heartbeat_ticks);
    assert_eq!(served(&network), (1..=11).collect::<Vec<_>>());
}

// PITFALLS #4: a new leader serves no read before it commits an entry of its own term.
#[test]
fn read_index_waits_for_leader_to_commit_in_its_term() {
    let mut network = CoreNetwork::new(3, 9);
    network.node(N1).start_election();
    network.process_ready(N1);
    // Deliver only the votes: the leader's no-op is not yet replicated.
    while let Some(message) = network.in_flight.pop_front() {
        if matches!(message.body, MessageBody::AppendEntries { .. }) {
            continue;
        }
        let to = message.to;
        let _ = network.node(to).step(message);
        network.process_ready(to);
        network
            .in_flight
            .retain(|m| !matches!(m.body, MessageBody::AppendEntries { .. }));
    }
    assert_eq!(network.node(N1).role(), RoleKind::Leader);
    network.node(N1).read_index(1).unwrap();
    network.process_ready(N1);
    assert!(network.nodes[&N1].read_states.is_empty());
    // Now let replication run: the no-op commits and the read is served at or after it.
    for _ in 0..10 {
        network.tick_all();
        network.stabilize();
    }
    let states = &network.nodes[&N1].read_states;
    assert_eq!(states.len(), 1);
    assert!(states[0].outcome.clone().unwrap() >= LogIndex(1));
}

// The leader counts itself toward a commit only for what it has persisted (thesis §10.2.1).
#[test]
fn leader_counts_itself_only_when_persisted() {
    let mut network = CoreNetwork::new(1, 1);
    network.elect(N1);
    network.node(N1).propose(b"x".to_vec()).unwrap();
    let committed = network.committed(N1);
    let ready = network.node(N1).take_ready();
    assert_eq!(network.committed(N1), committed, "not durable yet");
    network
        .node(N1)
        .on_persisted(ready.entries.last().unwrap().id);
    assert!(network.committed(N1) > committed);
}

// Fast backtracking: a follower that diverges by hundreds of entries is repaired in a few
// round trips, not one per entry.
#[test]
fn fast_backtracking_over_hundreds_of_divergent_entries() {
    let mut network = CoreNetwork::with_config(3, 10, no_pre_vote);
    let mut leader_log = vec![1u64; 10];
    leader_log.extend(std::iter::repeat_n(3, 300));
    let mut follower_log = vec![1u64; 10];
    follower_log.extend(std::iter::repeat_n(2, 400));
    network.set_log(N1, &leader_log, 3);
    network.set_log(N2, &follower_log, 2);
    network.set_log(N3, &leader_log, 3);
    network.elect(N1);
    let mut rejections = 0;
    for _ in 0..20 {
        network.tick_all();
        while let Some(message) = network.in_flight.pop_front() {
            if matches!(
                message.body,
                MessageBody::AppendEntriesResponse(AppendResponse::Reject { .. })
            ) {
                rejections += 1;
            }
            let to = message.to;
            let _ = network.node(to).step(message);
            network.process_ready(to);
        }
    }
    assert_eq!(
        network.node(N2).log().last_id(),
        network.node(N1).log().last_id()
    );
    assert!(
        rejections <= 3,
        "{rejections} rejections for a 2-term divergence"
    );
}

fn with_lease(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.lease_reads = true;
    config
}

// Lease reads: valid after a quorum round, void once the leader is cut off long enough.
#[test]
fn lease_read_valid_only_while_quorum_is_recent() {
    let mut network = CoreNetwork::with_config(3, 11, with_lease);
    network.elect(N1);
    for _ in 0..10 {
        network.tick_all();
        network.stabilize();
    }
    assert!(lease_read(&mut network, N1).is_ok());
    network.isolate(N1);
    for _ in 0..Config::new(N1).election_ticks {
        network.node(N1).tick();
        network.process_ready(N1);
    }
    assert!(lease_read(&mut network, N1).is_err());
}

// Thesis §6.4.1: the lease runs from the moment the quorum-answered round was sent, for
// `Config::lease_duration` of the leader's clock — never from when the answers arrived.
#[test]
fn lease_lasts_the_lease_duration_from_the_send_time_of_its_round() {
    let mut network = CoreNetwork::with_config(3, 14, with_lease);
    network.elect(N1);
    for _ in 0..10 {
        network.tick_all();
        network.stabilize();
    }
    let config = with_lease(N1);
    let lease = u64::try_from(config.lease_duration().as_nanos()).unwrap();
    let heartbeat = u64::try_from(config.tick.as_nanos()).unwrap() * config.heartbeat_ticks;
    let now = network.node(N1).clock();
    // The latest round answered left within the last heartbeat interval...
    let just_inside = now.plus_nanos(lease - heartbeat);
    assert!(network.node(N1).lease_read(just_inside).is_ok());
    // ...and no later than now, so the lease is over `lease` after now, however late the
    // answers came.
    assert_eq!(
        network.node(N1).lease_read(now.plus_nanos(lease)),
        Err(ReadError::NoLease)
    );
}

// PITFALLS #19: a leader paused (SIGSTOP, a VM pause) for an election timeout has not been told
// the time since — its ticker has not run yet — when a read arrives. The lease is checked
// against the monotonic clock read at the moment of the read, so the read is refused, whatever
// the core's own notion of time.
#[test]
fn lease_read_after_a_pause_is_refused_before_the_core_sees_a_tick() {
    let mut network = CoreNetwork::with_config(3, 13, with_lease);
    network.elect(N1);
    for _ in 0..10 {
        network.tick_all();
        network.stabilize();
    }
    let before_pause = network.node(N1).clock();
    assert!(network.node(N1).lease_read(before_pause).is_ok());
    let config = with_lease(N1);
    let pause = config.tick * u32::try_from(config.election_ticks).unwrap();
    let after_pause = before_pause.plus_nanos(u64::try_from(pause.as_nanos()).unwrap());
    assert_eq!(
        network.node(N1).lease_read(after_pause),
        Err(ReadError::NoLease)
    );
}

// PITFALLS #19: a pause is seen by the election timers too. Told a time an election timeout
// or more past the last, the core runs the ticks that elapsed: a follower that heard nothing
// for two election timeouts campaigns, and a leader steps down (check-quorum), instead of
// each counting one tick for the whole pause.
#[test]
fn a_clock_jump_runs_the_ticks_it_spans() {
    let mut network = CoreNetwork::new(3, 15);
    network.elect(N1);
    let config = Config::new(N1);
    let two_timeouts = 2 * config.election_ticks * u64::try_from(config.tick.as_nanos()).unwrap();
    let follower = network.node(N2);
    follower.advance_clock(follower.clock().plus_nanos(two_timeouts));
    assert_eq!(network.node(N2).role(), RoleKind::PreCandidate);
    let leader = network.node(N1);
    leader.advance_clock(leader.clock().plus_nanos(two_timeouts));
    assert_eq!(network.node(N1).role(), RoleKind::Follower);
}

/// A TimeoutNow whose leader's last entry is of `last_term`.
fn timeout_now(last_term: u64) -> MessageBody {
    MessageBody::TimeoutNow {
        last: entry_id(last_term, 1),
    }
}

// Bad input is ignored with a reason, never a panic, and changes nothing.
#[test]
fn malformed_and_misaddressed_messages_are_ignored() {
    let mut network = CoreNetwork::new(3, 12);
    network.elect(N1);
    let term = network.node(N2).term().0;
    let status = network.node(N2).status();
    let cases = vec![
        message(N1, NodeId(9), term, timeout_now(term)),
        message(N2, N2, term, timeout_now(term)),
        message(N1, N2, term, timeout_now(term + 1)),
        message(N1, N2, 0, MessageBody::HeartbeatResponse { round: 1 }),
        message(
            NodeId(99),
            N2,
            term + 5,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log: entry_id(1, 1000),
                transfer: true,
            },
        ),
        message(
            N1,
            N2,
            term,
            MessageBody::AppendEntries {
                prev: entry_id(term, 1),
                entries: vec![keyval::Entry {
                    id: entry_id(term, 5),
                    payload: keyval::EntryPayload::Noop,
                }],
                leader_commit: LogIndex(1_000_000),
            },
        ),
        message(
            N1,
            N2,
            term,
            MessageBody::AppendEntries {
                prev: entry_id(term + 3, 1),
                entries: vec![],
                leader_commit: LogIndex(0),
            },
        ),
    ];
    for case in cases {
        assert!(
            network.node(N2).step(case.clone()).is_err(),
            "accepted {case:?}"
        );
    }
    assert_eq!(network.node(N2).status(), status);
}
