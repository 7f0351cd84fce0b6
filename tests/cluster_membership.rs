//! Membership changes on threaded nodes (the harness), with clients writing throughout: grow
//! 3 → 5, shrink 5 → 3, replace a node, remove the leader. After each, no acknowledged write
//! is lost, every member of the final configuration applied the same log, and removed nodes
//! stay quiet. A failing test prints its seed (`KEYVAL_SEED=<seed>` replays it).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyval::error::MembershipError;
use keyval::raft::RoleKind;
use keyval::testkit::{Cluster, CommandLog, StorageKind};
use keyval::{Membership, NodeId};

const WAIT: Duration = Duration::from_secs(30);

fn cluster(size: u64, storage: StorageKind) -> Cluster<CommandLog> {
    Cluster::builder(size, |_| CommandLog::default())
        .storage(storage)
        .build()
}

/// Runs `change` on whichever node leads, retrying while leadership moves.
fn on_leader(
    cluster: &Cluster<CommandLog>,
    change: impl Fn(
        &keyval::node::Node<keyval::testkit::Recorded<CommandLog>>,
        Instant,
    ) -> Result<Membership, MembershipError>,
) -> Membership {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = cluster.wait_for_leader(WAIT);
        let Some(node) = cluster.node(leader) else {
            continue;
        };
        match change(&node, deadline) {
            Ok(membership) => return membership,
            Err(MembershipError::NotLeader { .. }) | Err(MembershipError::Dropped)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!(
                "membership change failed (seed {}): {error}",
                cluster.seed()
            ),
        }
    }
}

/// Clients that write until stopped, keeping what was acknowledged.
struct Writers<'a> {
    stop: AtomicBool,
    acknowledged: Mutex<Vec<Vec<u8>>>,
    cluster: &'a Cluster<CommandLog>,
}

impl<'a> Writers<'a> {
    fn new(cluster: &'a Cluster<CommandLog>) -> Writers<'a> {
        Writers {
            stop: AtomicBool::new(false),
            acknowledged: Mutex::new(Vec::new()),
            cluster,
        }
    }

    /// Runs `scenario` while `clients` threads write; returns the acknowledged writes.
    fn during(&self, clients: u64, scenario: impl FnOnce()) -> Vec<Vec<u8>> {
        std::thread::scope(|scope| {
            for client in 0..clients {
                scope.spawn(move || {
                    let mut k = 0u64;
                    while !self.stop.load(Ordering::SeqCst) {
                        let bytes = format!("c{client}-{k}").into_bytes();
                        k += 1;
                        // Only outcomes known to have committed count; a timeout may or may
                        // not have, and is allowed either way.
                        if self.cluster.propose(&bytes, Duration::from_secs(5)).is_ok() {
                            self.acknowledged.lock().unwrap().push(bytes);
                        }
                    }
                });
            }
            // If the scenario panics, the writers must still stop, or the scope never ends.
            struct StopOnDrop<'s>(&'s AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _stop_writers = StopOnDrop(&self.stop);
            scenario();
            // Some writes after the change, so the new configuration is exercised.
            let before = self.acknowledged.lock().unwrap().len();
            let more = self.cluster.wait_for(WAIT, |_| {
                self.acknowledged.lock().unwrap().len() >= before + 20
            });
            self.stop.store(true, Ordering::SeqCst);
            assert!(
                more,
                "no writes after the change (seed {})",
                self.cluster.seed()
            );
        });
        self.acknowledged.lock().unwrap().clone()
    }
}

/// Every acknowledged write is applied by every voter and learner of the leader's final
/// configuration, which they all hold; no two nodes (removed ones included) ever applied
/// different commands at an index.
fn assert_settled(cluster: &Cluster<CommandLog>, acknowledged: &[Vec<u8>]) -> Membership {
    let leader = cluster.wait_for_leader(WAIT);
    let membership = cluster.node(leader).unwrap().members();
    assert!(!membership.is_joint(), "still joint: {membership:?}");
    let members = membership.members();
    let ok = cluster.wait_for(WAIT, |cluster| {
        members.iter().all(|&id| {
            let applied: BTreeSet<Vec<u8>> = cluster.applied(id).into_values().collect();
            let same_config = cluster
                .node(id)
                .is_some_and(|node| node.members() == membership);
            same_config && acknowledged.iter().all(|command| applied.contains(command))
        })
    });
    assert!(
        ok,
        "members {members:?} did not all apply {} acknowledged writes and agree on \
         {membership:?} (seed {}): {:#?}",
        acknowledged.len(),
        cluster.seed(),
        cluster.statuses()
    );
    cluster.check_applied_agreement().unwrap();
    membership
}

fn voters(list: &[u64]) -> BTreeSet<NodeId> {
    list.iter().map(|&id| NodeId(id)).collect()
}

fn grow_three_to_five(storage: StorageKind) {
    let cluster = cluster(3, storage);
    cluster.wait_for_leader(WAIT);
    let writers = Writers::new(&cluster);
    let acknowledged = writers.during(3, || {
        for id in [NodeId(4), NodeId(5)] {
            cluster.add_node(id);
            on_leader(&cluster, |node, deadline| {
                node.add_member(id, None, true, deadline)
            });
        }
    });
    let membership = assert_settled(&cluster, &acknowledged);
    assert_eq!(membership.voters, voters(&[1, 2, 3, 4, 5]));
    // Five voters now: the cluster writes with two of them down.
    let leader = cluster.wait_for_leader(WAIT);
    let down: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .take(2)
        .collect();
    for &id in &down {
        cluster.crash(id);
    }
    cluster.propose(b"with two down", WAIT).unwrap();
}

#[test]
fn grow_three_to_five_memory() {
    grow_three_to_five(StorageKind::Memory);
}

#[test]
fn grow_three_to_five_real_files() {
    grow_three_to_five(StorageKind::RealFiles);
}

#[test]
fn shrink_five_to_three() {
    let cluster = cluster(5, StorageKind::FaultyFiles);
    let first_leader = cluster.wait_for_leader(WAIT);
    // Remove two followers, one change at a time.
    let removed: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != first_leader)
        .take(2)
        .collect();
    let writers = Writers::new(&cluster);
    let acknowledged = writers.during(3, || {
        for &id in &removed {
            on_leader(&cluster, |node, deadline| node.remove_member(id, deadline));
        }
    });
    let membership = assert_settled(&cluster, &acknowledged);
    assert_eq!(membership.voters.len(), 3);
    assert!(removed.iter().all(|id| !membership.contains(*id)));
    // The removed nodes keep running but never lead, and the cluster goes on writing.
    for _ in 0..20 {
        cluster.propose(b"after", WAIT).unwrap();
    }
    for &id in &removed {
        let status = cluster.node(id).unwrap().status();
        assert_ne!(
            status.role,
            RoleKind::Leader,
            "{id} leads after its removal"
        );
    }
    // Three voters: one more down and it still writes.
    let leader = cluster.wait_for_leader(WAIT);
    let other = membership
        .voters
        .iter()
        .copied()
        .find(|&id| id != leader)
        .unwrap();
    cluster.crash(other);
    cluster.propose(b"two of three", WAIT).unwrap();
}

#[test]
fn replace_a_node() {
    let cluster = cluster(3, StorageKind::Memory);
    let leader = cluster.wait_for_leader(WAIT);
    let old = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let writers = Writers::new(&cluster);
    let acknowledged = writers.during(2, || {
        cluster.add_node(NodeId(4));
        on_leader(&cluster, |node, deadline| {
            node.add_member(NodeId(4), None, true, deadline)
        });
        on_leader(&cluster, |node, deadline| node.remove_member(old, deadline));
        // The old machine goes away for good.
        cluster.crash(old);
    });
    let membership = assert_settled(&cluster, &acknowledged);
    let mut expected = voters(&[1, 2, 3, 4]);
    expected.remove(&old);
    assert_eq!(membership.voters, expected);
}

#[test]
fn remove_the_leader_while_clients_write() {
    let cluster = cluster(3, StorageKind::RealFiles);
    let leader = cluster.wait_for_leader(WAIT);
    let writers = Writers::new(&cluster);
    let acknowledged = writers.during(3, || {
        let node = cluster.node(leader).unwrap();
        node.remove_member(leader, Instant::now() + WAIT)
            .unwrap_or_else(|error| panic!("seed {}: {error}", cluster.seed()));
        // It hands over and steps down; the others elect among themselves.
        cluster.wait_for_new_leader(leader, WAIT);
    });
    let membership = assert_settled(&cluster, &acknowledged);
    assert!(!membership.contains(leader));
    assert_eq!(membership.voters.len(), 2);
    let status = cluster.node(leader).unwrap().status();
    assert_ne!(status.role, RoleKind::Leader);
    // The removed node never campaigns: its term stays where the change left it.
    let term = status.term;
    for _ in 0..10 {
        cluster.propose(b"later", WAIT).unwrap();
    }
    assert_eq!(cluster.node(leader).unwrap().status().term, term);
}

#[test]
fn a_restarted_learner_and_repeated_adds_are_harmless() {
    let cluster = cluster(3, StorageKind::FaultyFiles);
    cluster.wait_for_leader(WAIT);
    for k in 0..50u32 {
        cluster.propose(&k.to_le_bytes(), WAIT).unwrap();
    }
    cluster.add_node(NodeId(4));
    on_leader(&cluster, |node, deadline| {
        node.add_member(NodeId(4), None, false, deadline)
    });
    // Crash and restart the learner: it comes back from its own log, still a learner.
    cluster.restart(NodeId(4));
    // Adding it again (a joining node that restarted) changes nothing.
    let membership = on_leader(&cluster, |node, deadline| {
        node.add_member(NodeId(4), None, false, deadline)
    });
    assert!(membership.learners.contains(&NodeId(4)));
    let membership = on_leader(&cluster, |node, deadline| {
        node.promote_member(NodeId(4), deadline)
    });
    assert!(membership.voters.contains(&NodeId(4)));
    let acknowledged: Vec<Vec<u8>> = (0..50u32).map(|k| k.to_le_bytes().to_vec()).collect();
    assert_settled(&cluster, &acknowledged);
}

#[test]
fn a_leader_that_removes_itself_answers_every_waiting_proposal() {
    let cluster = cluster(3, StorageKind::Memory);
    let leader = cluster.wait_for_leader(WAIT);
    let node = cluster.node(leader).unwrap();
    let done = std::sync::atomic::AtomicU64::new(0);
    let outcomes = std::thread::scope(|scope| {
        let proposers: Vec<_> = (0..16)
            .map(|client| {
                let (node, done) = (&node, &done);
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for k in 0..200 {
                        let command = format!("p{client}-{k}").into_bytes();
                        // A deadline far beyond the test's: every outcome must come sooner.
                        let outcome = node.propose(command, Instant::now() + 2 * WAIT);
                        let refused = matches!(
                            outcome,
                            Err(keyval::ProposeError::NotLeader { .. })
                                | Err(keyval::ProposeError::Busy { .. })
                        );
                        outcomes.push(outcome);
                        done.fetch_add(1, Ordering::SeqCst);
                        if refused {
                            break;
                        }
                    }
                    outcomes
                })
            })
            .collect();
        // Remove it while the proposers are in full flow.
        assert!(cluster.wait_for(WAIT, |_| done.load(Ordering::SeqCst) >= 100));
        node.remove_member(leader, Instant::now() + WAIT).unwrap();
        proposers
            .into_iter()
            .flat_map(|proposer| proposer.join().unwrap())
            .collect::<Vec<_>>()
    });
    // Committed, dropped, refused, or unknown (a removed node cannot learn more) — never
    // left waiting until the deadline.
    assert!(
        outcomes
            .iter()
            .all(|outcome| !matches!(outcome, Err(keyval::ProposeError::Timeout))),
        "a proposal waited until its deadline (seed {})",
        cluster.seed()
    );
    assert!(outcomes.iter().any(|outcome| outcome.is_ok()));
}
