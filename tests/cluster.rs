//! Threaded cluster tests through the public harness: real node runtimes (threads, channels,
//! group commit) over the simulated network, with partitions, loss, reordering and crashes.
//! Every test waits on conditions with generous deadlines; fault schedules come from the
//! cluster's seed, which a failing test prints (`KEYVAL_SEED=<seed>` replays it).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyval::testkit::{Cluster, CommandLog, StorageKind};
use keyval::{NodeId, ProposeError, ReadError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WAIT: Duration = Duration::from_secs(20);

fn cluster(size: u64, storage: StorageKind) -> Cluster<CommandLog> {
    Cluster::builder(size, |_| CommandLog::default())
        .storage(storage)
        .build()
}

/// Runs a scenario once per storage kind: crash-faithful memory, file storage on a disk with
/// power-cut semantics, and file storage on the real disk.
macro_rules! on_every_storage {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;
            #[test]
            fn memory() {
                super::$scenario(StorageKind::Memory);
            }
            #[test]
            fn faulty_files() {
                super::$scenario(StorageKind::FaultyFiles);
            }
            #[test]
            fn real_files() {
                super::$scenario(StorageKind::RealFiles);
            }
        }
    };
}

on_every_storage!(concurrent_proposals_all_commit_once);
on_every_storage!(fast_backup_of_logs_diverging_by_hundreds_of_entries);
on_every_storage!(persistence_across_crash_and_restart_of_one_a_minority_and_all);
on_every_storage!(figure_8_unreliable);
on_every_storage!(churn_on_an_unreliable_network);

/// `clients` threads each propose `per_client` distinct commands through whichever node
/// leads, every one of which must commit; returns them all.
fn write_concurrently(
    cluster: &Cluster<CommandLog>,
    clients: u64,
    per_client: u64,
    tag: &str,
) -> Vec<Vec<u8>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || {
                    (0..per_client)
                        .map(|k| {
                            let bytes = command(&format!("{tag}{client}"), k);
                            cluster.propose(&bytes, WAIT).unwrap();
                            bytes
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect()
    })
}

fn command(tag: &str, k: u64) -> Vec<u8> {
    format!("{tag}-{k}").into_bytes()
}

/// Asserts that every command in `acknowledged` was applied by every running node.
fn assert_all_applied(cluster: &Cluster<CommandLog>, acknowledged: &[Vec<u8>]) {
    let ok = cluster.wait_for(WAIT, |cluster| {
        cluster
            .ids()
            .iter()
            .filter(|&&id| cluster.is_running(id))
            .all(|&id| {
                let applied: BTreeSet<Vec<u8>> = cluster.applied(id).into_values().collect();
                acknowledged.iter().all(|command| applied.contains(command))
            })
    });
    assert!(ok, "acknowledged writes missing (seed {})", cluster.seed());
    cluster.check_applied_agreement().unwrap();
}

#[test]
fn initial_election() {
    let cluster = Cluster::new(3);
    let leader = cluster.wait_for_leader(WAIT);
    let term = cluster.node(leader).unwrap().status().term;
    assert!(term.0 >= 1);
    assert!(cluster.wait_for(WAIT, |cluster| cluster
        .statuses()
        .iter()
        .all(|status| status.leader == Some(leader))));
}

#[test]
fn reelection_after_leader_is_disconnected() {
    let cluster = Cluster::new(3);
    let first = cluster.wait_for_leader(WAIT);
    cluster.disconnect(first);
    // The others elect a new leader once they stop hearing from the old one.
    let elected = cluster.wait_for(WAIT, |cluster| {
        cluster
            .stable_leader()
            .is_some_and(|leader| leader != first)
    });
    assert!(elected, "no new leader (seed {})", cluster.seed());
    // The old leader rejoins as a follower: still exactly one leader.
    cluster.reconnect(first);
    assert!(cluster.wait_for(WAIT, |cluster| {
        cluster.node(first).unwrap().status().leader == cluster.stable_leader()
            && cluster.stable_leader().is_some()
    }));
}

#[test]
fn no_leader_and_no_commit_without_a_quorum() {
    let cluster = Cluster::new(3);
    let leader = cluster.wait_for_leader(WAIT);
    for id in cluster.ids() {
        if id != leader {
            cluster.disconnect(id);
        }
    }
    // Check-quorum deposes the isolated leader; nobody can win an election.
    assert!(cluster.wait_for(WAIT, |cluster| cluster.leader().is_none()));
    let outcome = cluster.propose_on(leader, b"lost", Duration::from_millis(500));
    assert!(outcome.is_err());
    let became_leader =
        cluster.wait_for(Duration::from_secs(2), |cluster| cluster.leader().is_some());
    assert!(
        !became_leader,
        "a leader emerged without a quorum (seed {})",
        cluster.seed()
    );
    cluster.heal();
    cluster.wait_for_leader(WAIT);
}

#[test]
fn many_elections_under_churn() {
    let cluster = Cluster::new(5);
    let mut rng = StdRng::seed_from_u64(cluster.seed());
    for _ in 0..8 {
        cluster.wait_for_leader(WAIT);
        let a = NodeId(rng.random_range(1..=5));
        let b = NodeId(rng.random_range(1..=5));
        cluster.disconnect(a);
        cluster.disconnect(b);
        cluster.wait_for_leader(WAIT);
        cluster.heal();
    }
    cluster.wait_for_leader(WAIT);
}

#[test]
fn agreement_with_a_follower_disconnected() {
    let cluster = Cluster::new(3);
    let leader = cluster.wait_for_leader(WAIT);
    let mut acknowledged = Vec::new();
    for k in 0..5 {
        cluster.propose(&command("a", k), WAIT).unwrap();
        acknowledged.push(command("a", k));
    }
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    cluster.disconnect(follower);
    for k in 5..20 {
        cluster.propose(&command("a", k), WAIT).unwrap();
        acknowledged.push(command("a", k));
    }
    cluster.reconnect(follower);
    assert_all_applied(&cluster, &acknowledged);
}

#[test]
fn no_commit_without_a_majority_then_commit_after_heal() {
    let cluster = Cluster::new(5);
    let leader = cluster.wait_for_leader(WAIT);
    let followers: Vec<NodeId> = cluster
        .ids()
        .iter()
        .copied()
        .filter(|&id| id != leader)
        .collect();
    for &id in &followers[..3] {
        cluster.disconnect(id);
    }
    let outcome = cluster.propose_on(leader, b"minority", Duration::from_millis(800));
    assert!(
        matches!(
            outcome,
            Err(ProposeError::Timeout) | Err(ProposeError::NotLeader { .. })
        ),
        "committed without a majority: {outcome:?}"
    );
    let committed = cluster.node(leader).unwrap().status().committed;
    cluster.heal();
    cluster.wait_for_leader(WAIT);
    cluster.propose(b"after heal", WAIT).unwrap();
    assert!(cluster.wait_for(WAIT, |cluster| cluster
        .statuses()
        .iter()
        .all(|status| status.committed > committed)));
    cluster.check_applied_agreement().unwrap();
}

fn concurrent_proposals_all_commit_once(storage: StorageKind) {
    let cluster = cluster(3, storage);
    cluster.wait_for_leader(WAIT);
    let acknowledged = write_concurrently(&cluster, 4, 50, "c");
    assert_eq!(acknowledged.len(), 200);
    assert_all_applied(&cluster, &acknowledged);
    for id in cluster.ids() {
        let applied: Vec<Vec<u8>> = cluster.applied(id).into_values().collect();
        let distinct: BTreeSet<&Vec<u8>> = applied.iter().collect();
        assert_eq!(
            distinct.len(),
            applied.len(),
            "a command applied twice on {id}"
        );
    }
}

#[test]
fn partitioned_old_leader_rejoins_and_its_uncommitted_entries_are_discarded() {
    let cluster = Cluster::new(3);
    let old = cluster.wait_for_leader(WAIT);
    cluster.propose(b"before", WAIT).unwrap();
    cluster.disconnect(old);
    for k in 0..3 {
        let outcome = cluster.propose_on(old, &command("doomed", k), Duration::from_millis(100));
        assert!(outcome.is_err());
    }
    let new = cluster.wait_for_new_leader(old, WAIT);
    assert_ne!(new, old);
    let mut acknowledged = vec![b"before".to_vec()];
    for k in 0..5 {
        cluster.propose(&command("after", k), WAIT).unwrap();
        acknowledged.push(command("after", k));
    }
    cluster.reconnect(old);
    assert_all_applied(&cluster, &acknowledged);
    for id in cluster.ids() {
        let applied: Vec<Vec<u8>> = cluster.applied(id).into_values().collect();
        assert!(!applied.iter().any(|bytes| bytes.starts_with(b"doomed")));
    }
}

fn fast_backup_of_logs_diverging_by_hundreds_of_entries(storage: StorageKind) {
    let cluster = cluster(5, storage);
    let leader1 = cluster.wait_for_leader(WAIT);
    cluster.propose(b"start", WAIT).unwrap();
    let others: Vec<NodeId> = cluster
        .ids()
        .iter()
        .copied()
        .filter(|&id| id != leader1)
        .collect();
    // Leader and one follower in a minority accumulate entries that never commit.
    cluster.partition(&[vec![leader1, others[0]], others[1..].to_vec()]);
    for k in 0..200 {
        let node = cluster.node(leader1).unwrap();
        let _ = node.propose(command("minority", k), Instant::now());
    }
    // The majority elects a leader and commits hundreds of its own.
    let leader2 = cluster.wait_for(WAIT, |cluster| {
        cluster
            .leader()
            .is_some_and(|leader| others[1..].contains(&leader))
    });
    assert!(leader2, "majority did not elect (seed {})", cluster.seed());
    let mut acknowledged = vec![b"start".to_vec()];
    acknowledged.extend(write_concurrently(&cluster, 4, 75, "majority"));
    cluster.heal();
    assert_all_applied(&cluster, &acknowledged);
    for id in cluster.ids() {
        let applied: Vec<Vec<u8>> = cluster.applied(id).into_values().collect();
        assert!(!applied.iter().any(|bytes| bytes.starts_with(b"minority")));
    }
}

fn persistence_across_crash_and_restart_of_one_a_minority_and_all(storage: StorageKind) {
    let cluster = cluster(5, storage);
    cluster.wait_for_leader(WAIT);
    let mut acknowledged = Vec::new();
    let mut next = 0;
    let mut write = |cluster: &Cluster<_>, acknowledged: &mut Vec<Vec<u8>>, count: u64| {
        for _ in 0..count {
            let bytes = command("p", next);
            next += 1;
            cluster.propose(&bytes, WAIT).unwrap();
            acknowledged.push(bytes);
        }
    };
    write(&cluster, &mut acknowledged, 10);
    // One node.
    let leader = cluster.wait_for_leader(WAIT);
    cluster.restart(leader);
    write(&cluster, &mut acknowledged, 10);
    assert_all_applied(&cluster, &acknowledged);
    // A minority.
    cluster.crash(NodeId(1));
    cluster.crash(NodeId(2));
    write(&cluster, &mut acknowledged, 10);
    cluster.restart(NodeId(1));
    cluster.restart(NodeId(2));
    assert_all_applied(&cluster, &acknowledged);
    // Everyone.
    for id in 1..=5 {
        cluster.crash(NodeId(id));
    }
    for id in 1..=5 {
        cluster.restart(NodeId(id));
    }
    cluster.wait_for_leader(WAIT);
    write(&cluster, &mut acknowledged, 5);
    assert_all_applied(&cluster, &acknowledged);
    // The rebuilt state machines hold every acknowledged command, in one order.
    let leader = cluster.wait_for_leader(WAIT);
    let commands = cluster
        .node(leader)
        .unwrap()
        .read(Instant::now() + WAIT, |log| log.commands.clone())
        .unwrap();
    for bytes in &acknowledged {
        assert!(commands.contains(bytes));
    }
}

/// Figure 8 on an unreliable network (after MIT 6.824's TestFigure8Unreliable): leaders come
/// and go while messages are lost, delayed and reordered; nothing committed may be lost or
/// applied differently.
fn figure_8_unreliable(storage: StorageKind) {
    let cluster = cluster(5, storage);
    let mut rng = StdRng::seed_from_u64(cluster.seed());
    cluster.wait_for_leader(WAIT);
    cluster.set_unreliable(true);
    let mut acknowledged = Vec::new();
    for round in 0..60 {
        if let Some(leader) = cluster.leader() {
            let bytes = command("f8", round);
            if cluster
                .propose_on(leader, &bytes, Duration::from_millis(200))
                .is_ok()
            {
                acknowledged.push(bytes);
            }
            if rng.random_bool(0.3) {
                cluster.disconnect(leader);
            }
        }
        if rng.random_bool(0.2) {
            let id = NodeId(rng.random_range(1..=5));
            cluster.restart(id);
        }
        let disconnected = rng.random_range(1..=5);
        if rng.random_bool(0.3) {
            cluster.reconnect(NodeId(disconnected));
        }
    }
    cluster.set_unreliable(false);
    cluster.heal();
    cluster.wait_for_leader(WAIT);
    cluster.propose(b"final", WAIT).unwrap();
    acknowledged.push(b"final".to_vec());
    assert_all_applied(&cluster, &acknowledged);
}

/// Concurrent clients on an unreliable network while nodes crash, restart and are cut off.
fn churn_on_an_unreliable_network(storage: StorageKind) {
    let cluster = cluster(5, storage);
    let mut rng = StdRng::seed_from_u64(cluster.seed() ^ 0xC0FFEE);
    cluster.wait_for_leader(WAIT);
    cluster.set_unreliable(true);
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for client in 0..3 {
            let (cluster, stop, acknowledged) = (&cluster, &stop, &acknowledged);
            scope.spawn(move || {
                let mut k = 0;
                while !stop.load(Ordering::SeqCst) {
                    let bytes = command(&format!("churn{client}"), k);
                    k += 1;
                    if cluster.propose(&bytes, Duration::from_millis(300)).is_ok() {
                        acknowledged.lock().unwrap().push(bytes);
                    }
                }
            });
        }
        // The nemesis: faults from the seeded schedule while the clients write. It keeps at
        // most two of the five nodes crashed or cut off at a time, so that a majority can make
        // progress in between and the test always has acknowledged writes to check.
        let mut impaired = BTreeSet::new();
        for _ in 0..30 {
            let id = NodeId(rng.random_range(1..=5));
            let impair = rng.random_bool(0.5) && (impaired.len() < 2 || impaired.contains(&id));
            if impair {
                impaired.insert(id);
                match rng.random_range(0..3) {
                    0 => cluster.restart(id),
                    1 => cluster.crash(id),
                    _ => cluster.disconnect(id),
                }
                if cluster.is_running(id) && rng.random_bool(0.5) {
                    impaired.remove(&id); // a plain restart impairs only briefly
                }
            } else if let Some(&healed) = impaired.iter().next() {
                impaired.remove(&healed);
                cluster.reconnect(healed);
                if !cluster.is_running(healed) {
                    cluster.restart(healed);
                }
            }
            // Pacing the nemesis between faults; nothing is asserted after it.
            std::thread::sleep(Duration::from_millis(rng.random_range(20..150)));
        }
        stop.store(true, Ordering::SeqCst);
    });
    for id in cluster.ids() {
        if !cluster.is_running(id) {
            cluster.restart(id);
        }
    }
    cluster.set_unreliable(false);
    cluster.heal();
    cluster.wait_for_leader(WAIT);
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        !acknowledged.is_empty(),
        "no write succeeded (seed {}): {:#?}",
        cluster.seed(),
        cluster.statuses()
    );
    assert_all_applied(&cluster, &acknowledged);
}

/// Leadership moves around the cluster while clients write: every transfer lands on its
/// target, and no acknowledged write is lost.
#[test]
fn leadership_transfers_under_concurrent_writes() {
    let cluster = Cluster::new(5);
    cluster.wait_for_leader(WAIT);
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for client in 0..3 {
            let (cluster, stop, acknowledged) = (&cluster, &stop, &acknowledged);
            scope.spawn(move || {
                let mut k = 0;
                while !stop.load(Ordering::SeqCst) {
                    let bytes = command(&format!("transfer{client}"), k);
                    k += 1;
                    if cluster.propose(&bytes, WAIT).is_ok() {
                        acknowledged.lock().unwrap().push(bytes);
                    }
                }
            });
        }
        for round in 0..6u64 {
            let leader = cluster.wait_for_leader(WAIT);
            let target = cluster.ids()[(leader.0 as usize + round as usize) % 5];
            let target = if target == leader {
                NodeId(leader.0 % 5 + 1)
            } else {
                target
            };
            let node = cluster.node(leader).unwrap();
            node.transfer_leadership(target, Instant::now() + WAIT)
                .unwrap_or_else(|error| {
                    panic!("{leader} -> {target}: {error} (seed {})", cluster.seed())
                });
            assert!(cluster.wait_for(WAIT, |cluster| cluster.stable_leader() == Some(target)));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() > 10);
    assert_all_applied(&cluster, &acknowledged);
}

/// PITFALLS #25: a node whose storage failed stops serving, lease reads included. A single
/// voter with 100 ms ticks holds a lease of 1.27 s from each heartbeat round (every 500 ms), so
/// at the moment the failure is seen its lease has not run out: only the check that the node
/// still serves refuses the read. (Before, the lease was also counted in ticks, and the ticker
/// of a failed node stops: the lease never ran out at all.)
#[test]
fn lease_reads_are_refused_once_storage_fails() {
    let cluster = Cluster::builder(1, |_| CommandLog::default())
        .configure(|config| {
            config.lease_reads = true;
            config.tick = Duration::from_millis(100);
        })
        .build();
    let leader = cluster.wait_for_leader(WAIT);
    let node = cluster.node(leader).unwrap();
    let lease_held = cluster.wait_for(WAIT, |_| node.lease_barrier(Instant::now() + WAIT).is_ok());
    assert!(lease_held, "no lease (seed {})", cluster.seed());
    cluster.fail_next_sync(leader);
    // The proposal's sync fails; the proposal itself never commits.
    let _ = node.propose(b"never durable".to_vec(), Instant::now() + WAIT);
    assert!(cluster.wait_for(WAIT, |_| node.status().failed));
    assert_eq!(
        node.lease_barrier(Instant::now() + WAIT),
        Err(ReadError::Shutdown),
        "seed {}",
        cluster.seed()
    );
}
