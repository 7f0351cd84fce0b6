//! Linearizability of the replicated key-value store under faults: concurrent clients run
//! put / get / delete / compare-and-swap against a `testkit::Cluster` of `KvStore` nodes while
//! a seeded nemesis partitions, crashes and restarts nodes on an unreliable network. Every
//! operation is recorded with its real invocation and completion times (an operation whose
//! outcome is unknown is recorded as such), and the whole history must be linearizable. One
//! nemesis changes the membership under the clients: voters removed (the leader among them)
//! and fresh nodes joined and promoted, mixed with partitions.
//!
//! Each scenario reaches what it is about by construction, not by luck with the clock: the
//! nemesis acts for at least `NEMESIS_TIME_MIN`, then keeps acting until every goal is met
//! (a snapshot taken, enough operations completed, and the nemesis's own: membership changes
//! completed, a deposed leader that still led), within a generous `SCENARIO_TIME_MAX` for a
//! loaded machine. A history the checker cannot decide is reported, not failed
//! (`assert_no_violation`, docs/testing.md).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyval::kv::{Command, Expect, KvStore, Response as KvResponse};
use keyval::testkit::linearizability::{
    assert_no_violation, ClientId, History, Outcome, Request, Response,
};
use keyval::testkit::{Cluster, StorageKind};
use keyval::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 4;
const CLIENTS: u64 = 4;

/// The nemesis acts at least this long, so that every history spans faults.
const NEMESIS_TIME_MIN: Duration = Duration::from_secs(4);

/// ... and then until every goal of the scenario is met, or this long has passed since it
/// started: generous, for a machine busy with other builds. Missing a goal by then fails the
/// test, naming the goal.
const SCENARIO_TIME_MAX: Duration = Duration::from_secs(120);

/// Operations with a known outcome a history must hold.
const KNOWN_OPERATIONS_MIN: usize = 50;

/// Membership changes the membership nemesis must see complete.
const MEMBERSHIP_CHANGES_MIN: u64 = 3;

/// One client's loop: random operations on a few keys until `stop`; counts the operations
/// whose outcome it learned in `known`.
fn client(
    cluster: &Cluster<KvStore>,
    history: &History,
    id: u64,
    seed: u64,
    stop: &AtomicBool,
    known: &AtomicUsize,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ id);
    // Like a real client, keep talking to the leader it knows until that node refuses: this
    // is how a client reaches a deposed leader that still believes it leads.
    let mut believed_leader = None;
    let Some(session) = register(cluster, stop) else {
        return;
    };
    let mut sequence = 0;
    let mut counter = 0;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("k{}", rng.random_range(0..KEYS)).into_bytes();
        counter += 1;
        let value = format!("c{id}-{counter}").into_bytes();
        let request = match rng.random_range(0..10) {
            0..=3 => Request::get(key.clone()),
            4..=6 => Request::put(key.clone(), value.clone()),
            7 => Request::delete(key.clone()),
            _ => {
                let expected = rng.random_bool(0.3).then(|| {
                    format!("c{}-{}", rng.random_range(0..CLIENTS), counter / 2).into_bytes()
                });
                Request::compare_and_swap(key.clone(), expected, value.clone())
            }
        };
        let pending = history.invoke(ClientId(id), request.clone());
        let timeout = Duration::from_millis(500);
        if believed_leader.is_none() {
            believed_leader = cluster.leader();
        }
        let outcome = match request {
            Request::Get { key } => read(cluster, &mut believed_leader, &key, timeout),
            Request::Put { key, value } => {
                sequence += 1;
                write(
                    cluster,
                    Command::put(key, value),
                    session,
                    sequence,
                    timeout,
                )
                .map(|_| Outcome::Ok(Response::Put))
            }
            Request::Delete { key } => {
                sequence += 1;
                write(cluster, Command::delete(key), session, sequence, timeout)
                    .map(|_| Outcome::Ok(Response::Delete))
            }
            Request::CompareAndSwap { key, expected, new } => {
                sequence += 1;
                let expect = match expected {
                    Some(value) => Expect::Value(value),
                    None => Expect::Absent,
                };
                write(
                    cluster,
                    Command::cas(key, expect, Some(new)),
                    session,
                    sequence,
                    timeout,
                )
                .map(|swapped| Outcome::Ok(Response::CompareAndSwap(swapped)))
            }
        };
        match outcome {
            Some(outcome) => {
                history.complete(pending, outcome);
                known.fetch_add(1, Ordering::Relaxed);
            }
            None => history.unknown(pending),
        }
    }
}

/// Registers a client's exactly-once session, retrying through the nemesis; `None` if the
/// test stops first.
fn register(cluster: &Cluster<KvStore>, stop: &AtomicBool) -> Option<u64> {
    let bytes = Command::register_session().encode().ok()?;
    while !stop.load(Ordering::SeqCst) {
        let response = cluster.propose(&bytes, Duration::from_millis(500)).ok();
        let decoded = response.and_then(|response| KvResponse::decode(&response).ok());
        if let Some(KvResponse::SessionRegistered { client_id }) = decoded {
            return Some(client_id);
        }
    }
    None
}

/// A write through the log with an exactly-once session. `Some(true)` applied, `Some(false)`
/// a compare-and-swap that did not hold, `None` unknown.
fn write(
    cluster: &Cluster<KvStore>,
    command: Command,
    client: u64,
    sequence: u64,
    timeout: Duration,
) -> Option<bool> {
    let bytes = command.with_session(client, sequence).encode().ok()?;
    let response = cluster.propose(&bytes, timeout).ok()?;
    match KvResponse::decode(&response).ok()? {
        KvResponse::Written { .. } => Some(true),
        KvResponse::Txn(response) => Some(response.succeeded),
        KvResponse::ComparisonFailed { .. } => Some(false),
        KvResponse::LeaseRevoked { .. } => Some(true),
        KvResponse::Rejected(_)
        | KvResponse::SessionRegistered { .. }
        | KvResponse::LeaseGranted { .. }
        | KvResponse::AuthChanged { .. } => None,
    }
}

/// A linearizable read on the node the client believes leads; `None` when it could not be
/// confirmed (an unknown read constrains nothing), and then the client forgets that leader.
fn read(
    cluster: &Cluster<KvStore>,
    believed_leader: &mut Option<NodeId>,
    key: &[u8],
    timeout: Duration,
) -> Option<Outcome> {
    let node = believed_leader.and_then(|id| cluster.node(id));
    let value = node.and_then(|node| {
        node.read(Instant::now() + timeout, |store| store.get(key))
            .ok()
    });
    match value {
        Some(value) => Some(Outcome::Ok(Response::Get(
            value.map(|versioned| versioned.value),
        ))),
        None => {
            *believed_leader = None;
            None
        }
    }
}

/// What a nemesis must have achieved before its history means what the test says: `None`
/// once it has, else what is still missing.
type NemesisGoal = fn() -> Option<String>;

/// No goal beyond the common ones.
fn no_goal() -> Option<String> {
    None
}

/// Runs clients against a five-node cluster while the nemesis acts until every goal is met,
/// then checks the history.
fn run(
    storage: StorageKind,
    check_quorum: bool,
    nemesis: fn(&Cluster<KvStore>, &mut StdRng),
    goal: NemesisGoal,
) {
    let cluster = Cluster::builder(5, |_| KvStore::new())
        .storage(storage)
        .configure(move |config| {
            config.check_quorum = check_quorum;
            // Snapshots every hundred entries with a short margin, so that histories span
            // compactions, and restarted or new nodes catch up by snapshot.
            config.snapshot_entries = 100;
            config.snapshot_margin_entries = 20;
        })
        .build();
    let seed = cluster.seed();
    cluster.wait_for_leader(Duration::from_secs(20));
    let history = History::new();
    let stop = AtomicBool::new(false);
    let known = AtomicUsize::new(0);
    let started = Instant::now();
    let missed = std::thread::scope(|scope| {
        for id in 1..=CLIENTS {
            let (cluster, history, stop, known) = (&cluster, &history, &stop, &known);
            scope.spawn(move || client(cluster, history, id, seed, stop, known));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let missed = loop {
            nemesis(&cluster, &mut rng);
            if started.elapsed() < NEMESIS_TIME_MIN {
                continue;
            }
            let missing = missing_goal(&cluster, &known, goal);
            if missing.is_none() || started.elapsed() >= SCENARIO_TIME_MAX {
                break missing;
            }
        };
        cluster.heal();
        cluster.set_unreliable(false);
        stop.store(true, Ordering::SeqCst);
        missed
    });
    let elapsed = started.elapsed();
    if let Some(missing) = missed {
        panic!("the scenario did not happen within {elapsed:?}: {missing} (seed {seed})");
    }
    let operations = history.snapshot();
    let checked = assert_no_violation(&operations, &format!("seed {seed}"));
    // Printed with --nocapture: how long the scenario took to reach its goals.
    println!(
        "{}, seed {seed}: {} operations ({} known) in {elapsed:?}, checked in {:?}: {}",
        std::thread::current().name().unwrap_or("scenario"),
        operations.len(),
        known.load(Ordering::Relaxed),
        checked.statistics.elapsed,
        checked.result
    );
}

/// The first goal of the scenario not met yet: a snapshot taken (so that the history spans a
/// compaction), enough operations completed, and the nemesis's own.
fn missing_goal(
    cluster: &Cluster<KvStore>,
    known: &AtomicUsize,
    goal: NemesisGoal,
) -> Option<String> {
    let snapshots = cluster
        .ids()
        .into_iter()
        .filter_map(|id| cluster.node(id))
        .filter(|node| node.latest_snapshot().is_some())
        .count();
    if snapshots == 0 {
        return Some("no node took a snapshot".into());
    }
    let known = known.load(Ordering::Relaxed);
    if known < KNOWN_OPERATIONS_MIN {
        return Some(format!(
            "too few operations completed: {known} of {KNOWN_OPERATIONS_MIN}"
        ));
    }
    goal()
}

fn partitions(cluster: &Cluster<KvStore>, rng: &mut StdRng) {
    let ids = cluster.ids();
    let cut: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.4))
        .collect();
    let rest: Vec<NodeId> = ids.iter().copied().filter(|id| !cut.contains(id)).collect();
    cluster.partition(&[cut, rest]);
    std::thread::sleep(Duration::from_millis(rng.random_range(100..400))); // nemesis pacing
    cluster.heal();
    std::thread::sleep(Duration::from_millis(rng.random_range(50..200)));
}

fn crashes_on_unreliable_network(cluster: &Cluster<KvStore>, rng: &mut StdRng) {
    cluster.set_unreliable(true);
    let id = NodeId(rng.random_range(1..=5));
    if rng.random_bool(0.5) {
        if let Some(leader) = cluster.leader() {
            cluster.restart(leader);
        }
    } else {
        cluster.restart(id);
    }
    std::thread::sleep(Duration::from_millis(rng.random_range(100..300))); // nemesis pacing
}

fn isolated_leader(cluster: &Cluster<KvStore>, rng: &mut StdRng) {
    if let Some(leader) = cluster.leader() {
        cluster.disconnect(leader);
        // Keep it cut off until the majority has a successor that commits writes: the window
        // in which a deposed leader that still believes it leads could serve stale reads.
        let succeeded = cluster.wait_for(Duration::from_secs(5), |cluster| {
            cluster
                .stable_leader()
                .is_some_and(|successor| successor != leader)
        });
        let still_leads = cluster
            .node(leader)
            .is_some_and(|node| node.status().role == keyval::raft::RoleKind::Leader);
        if succeeded && still_leads {
            DEPOSED_ROUNDS.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(100..300))); // nemesis pacing
        cluster.reconnect(leader);
    }
    std::thread::sleep(Duration::from_millis(rng.random_range(50..150)));
}

/// Rounds in which a successor led while the isolated old leader still believed it led.
static DEPOSED_ROUNDS: AtomicU64 = AtomicU64::new(0);

/// Membership changes the nemesis saw complete.
static CHANGES_COMMITTED: AtomicU64 = AtomicU64::new(0);

/// Keeps three to five voters: removes a random voter (sometimes the leader) or joins a fresh
/// node as a learner and promotes it; now and then partitions the cluster meanwhile.
fn membership_changes(cluster: &Cluster<KvStore>, rng: &mut StdRng) {
    let Some(leader) = cluster.stable_leader() else {
        std::thread::sleep(Duration::from_millis(20));
        return;
    };
    let Some(node) = cluster.node(leader) else {
        return;
    };
    let membership = node.members();
    let deadline = Instant::now() + Duration::from_secs(3);
    let partition = rng.random_bool(0.3).then(|| {
        let ids = cluster.ids();
        let cut: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.3))
            .collect();
        let rest: Vec<NodeId> = ids.iter().copied().filter(|id| !cut.contains(id)).collect();
        cluster.partition(&[cut, rest]);
    });
    let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
    if voters.len() > 3 && (voters.len() == 5 || rng.random_bool(0.5)) {
        let removed = voters[rng.random_range(0..voters.len())];
        if node.remove_member(removed, deadline).is_ok() {
            CHANGES_COMMITTED.fetch_add(1, Ordering::SeqCst);
        }
    } else {
        let fresh = NodeId(cluster.ids().iter().map(|id| id.0).max().unwrap_or(0) + 1);
        cluster.add_node(fresh);
        if node.add_member(fresh, None, true, deadline).is_ok() {
            CHANGES_COMMITTED.fetch_add(1, Ordering::SeqCst);
        }
    }
    if partition.is_some() {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..200))); // nemesis pacing
        cluster.heal();
    }
    // Removed nodes that are not members any more go away for good, most of the time.
    let current = node.members();
    for id in cluster.ids() {
        if !current.contains(id) && cluster.is_running(id) && rng.random_bool(0.7) {
            cluster.crash(id);
        }
    }
    std::thread::sleep(Duration::from_millis(rng.random_range(50..150)));
}

/// The membership nemesis's goal: enough changes completed.
fn membership_changes_completed() -> Option<String> {
    let changes = CHANGES_COMMITTED.load(Ordering::SeqCst);
    (changes < MEMBERSHIP_CHANGES_MIN)
        .then(|| format!("only {changes} membership changes completed of {MEMBERSHIP_CHANGES_MIN}"))
}

/// The isolated-leader nemesis's goal: the stale-read window this test is about opened.
fn a_deposed_leader_still_led() -> Option<String> {
    (DEPOSED_ROUNDS.load(Ordering::SeqCst) == 0)
        .then(|| "no round with a deposed leader that still led".to_string())
}

#[test]
fn linearizable_under_membership_changes() {
    run(
        StorageKind::Memory,
        true,
        membership_changes,
        membership_changes_completed,
    );
}

#[test]
fn linearizable_under_partitions() {
    run(StorageKind::Memory, true, partitions, no_goal);
}

#[test]
fn linearizable_under_crashes_on_an_unreliable_network() {
    run(
        StorageKind::FaultyFiles,
        true,
        crashes_on_unreliable_network,
        no_goal,
    );
}

/// Without check-quorum an isolated leader believes it leads until it hears a higher term:
/// ReadIndex alone must keep its reads linearizable (PITFALLS #5).
#[test]
fn linearizable_while_a_deposed_leader_still_believes_it_leads() {
    run(
        StorageKind::Memory,
        false,
        isolated_leader,
        a_deposed_leader_still_led,
    );
}
