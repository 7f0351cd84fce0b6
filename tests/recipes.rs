//! The coordination recipes against a real three-node cluster over TCP: mutual exclusion
//! among many contenders with strictly increasing fencing tokens, a release that wakes
//! exactly one waiter (each watches only its predecessor), a holder whose session is revoked
//! losing the lock to the next waiter, a waiter that times out leaving the line, a wait that
//! survives the keyval leader's stop, `try_lock`, the storage-side fence, and election
//! campaign / proclaim / observe / resign, also across the keyval leader's stop.
//! Method: `server_support::TestCluster`, waiting on conditions with generous deadlines.

mod server_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use keyval::client::{Client, ClientOptions};
use keyval::recipes::{
    fence_key, fenced_put, Election, FencedPut, Guard, Mutex, RecipeError, Session,
};
use keyval::LogIndex;

use server_support::{wait_for, TestCluster, WAIT};

/// Long enough that a loaded machine or a failover never expires a session by accident.
const TTL_SECONDS: u64 = 15;

fn client(cluster: &TestCluster) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    Client::connect(&cluster.endpoints(), options).expect("connect")
}

fn session(client: &Client) -> Session {
    Session::with_ttl(client, TTL_SECONDS).expect("session")
}

fn recv_guard(rx: &Receiver<Result<Guard, RecipeError>>) -> Guard {
    rx.recv_timeout(WAIT)
        .expect("the waiter got the lock in time")
        .expect("lock")
}

#[test]
fn contenders_exclude_each_other_and_tokens_strictly_increase() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            let inside = Arc::clone(&inside);
            let tokens = Arc::clone(&tokens);
            std::thread::spawn(move || {
                let session = session(&client);
                let mutex = Mutex::new(&session, "locks/exclusive");
                for _ in 0..3 {
                    let guard = mutex.lock().expect("lock");
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    tokens.lock().push(guard.fencing_token());
                    std::thread::sleep(Duration::from_millis(5));
                    assert_eq!(inside.fetch_sub(1, Ordering::SeqCst), 1, "two holders");
                    guard.unlock().expect("unlock");
                }
                session.close().expect("close");
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let tokens = tokens.lock().clone();
    assert_eq!(tokens.len(), 15);
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens not strictly increasing: {tokens:?}"
    );
}

#[test]
fn a_release_wakes_exactly_one_waiter_its_successor() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    let name = "locks/line";
    let holder_session = session(&client);
    let holder = Mutex::new(&holder_session, name)
        .lock()
        .expect("first lock");
    let mut previous_key = holder.key().to_vec();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let session = session(&client);
        let mutex = Mutex::new(&session, name);
        let probe = mutex.probe();
        let (tx, rx) = bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(mutex.lock());
        });
        // Each waiter watches the one that queued just before it, nothing else.
        let expected = previous_key.clone();
        assert!(
            wait_for(|| probe.waiting_on().as_deref() == Some(expected.as_slice())),
            "waiter not watching its predecessor: {:?}",
            probe.waiting_on()
        );
        previous_key = format!("{name}/{:x}", session.lease().0).into_bytes();
        waiters.push((session, probe, rx));
    }
    let mut last_token = holder.fencing_token();
    holder.unlock().expect("unlock");
    for position in 0..waiters.len() {
        let guard = recv_guard(&waiters[position].2);
        assert!(guard.fencing_token() > last_token);
        last_token = guard.fencing_token();
        // Woken once, by its predecessor's release; those behind it not at all.
        assert_eq!(waiters[position].1.wakeups(), 1, "waiter {position}");
        for (behind, (_, probe, _)) in waiters.iter().enumerate().skip(position + 1) {
            assert_eq!(
                probe.wakeups(),
                0,
                "waiter {behind} woken by a release not its own"
            );
        }
        guard.unlock().expect("unlock");
    }
}

#[test]
fn a_revoked_holder_loses_the_lock_and_the_next_waiter_gets_it() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    let first = session(&client);
    let held = Mutex::new(&first, "locks/revoked").lock().expect("lock");
    assert!(held.is_valid());
    let second = session(&client);
    let mutex = Mutex::new(&second, "locks/revoked");
    assert!(matches!(
        mutex.try_lock(),
        Err(RecipeError::Locked { since, .. }) if since == held.fencing_token()
    ));
    let (tx, rx) = bounded(1);
    let waiter = Mutex::new(&second, "locks/revoked");
    std::thread::spawn(move || {
        let _ = tx.send(waiter.lock());
    });
    client.lease_revoke(first.lease()).expect("revoke");
    let next = recv_guard(&rx);
    assert!(next.fencing_token() > held.fencing_token());
    assert!(
        wait_for(|| !held.is_valid() && first.done()),
        "the revoked holder still thinks it holds the lock"
    );
    assert!(matches!(held.unlock(), Err(RecipeError::Lost { .. })));
    next.unlock().expect("unlock");
}

#[test]
fn a_waiter_that_times_out_leaves_the_line() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    let first = session(&client);
    let held = Mutex::new(&first, "locks/patience").lock().expect("lock");
    let impatient = session(&client);
    let started = Instant::now();
    assert!(matches!(
        Mutex::new(&impatient, "locks/patience").lock_timeout(Duration::from_millis(300)),
        Err(RecipeError::Timeout { .. })
    ));
    assert!(started.elapsed() >= Duration::from_millis(300));
    held.unlock().expect("unlock");
    // Had the impatient waiter stayed in line, it would now hold the lock without knowing.
    let next = Mutex::new(&session(&client), "locks/patience")
        .try_lock()
        .expect("free once the holder left");
    let line = client.get_prefix(b"locks/patience/", 10).expect("line");
    assert_eq!(line.entries.len(), 1, "{:?}", line.entries);
    assert!(!impatient.done());
    next.unlock().expect("unlock");
}

#[test]
fn a_waiter_gets_the_lock_across_a_keyval_leader_stop() {
    let mut cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let client = client(&cluster);
    let first = session(&client);
    let held = Mutex::new(&first, "locks/failover").lock().expect("lock");
    let second = session(&client);
    let waiter = Mutex::new(&second, "locks/failover");
    let probe = waiter.probe();
    let (tx, rx) = bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(waiter.lock());
    });
    assert!(wait_for(|| probe.waiting_on().is_some()), "not waiting");
    cluster.stop(leader);
    cluster.wait_leader();
    let token = held.fencing_token();
    held.unlock().expect("unlock after the failover");
    let next = recv_guard(&rx);
    assert!(next.fencing_token() > token);
    assert!(next.is_valid() && !first.done() && !second.done());
    next.unlock().expect("unlock");
}

#[test]
fn the_fence_refuses_tokens_older_than_the_highest_seen() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    let write = |token: u64, value: &str| {
        fenced_put(&client, b"res", value.as_bytes(), LogIndex(token)).expect("fenced put")
    };
    assert!(matches!(write(5, "a"), FencedPut::Written { .. }));
    assert!(
        matches!(write(5, "b"), FencedPut::Written { .. }),
        "same holder again"
    );
    assert_eq!(
        write(3, "stale"),
        FencedPut::Refused {
            highest_token: LogIndex(5)
        }
    );
    assert!(matches!(write(12, "c"), FencedPut::Written { .. }));
    assert_eq!(
        write(11, "stale"),
        FencedPut::Refused {
            highest_token: LogIndex(12)
        }
    );
    let value = client.get(b"res".to_vec()).unwrap().expect("res").value;
    assert_eq!(value, b"c");
    let fence = client.get(fence_key(b"res")).unwrap().expect("fence").value;
    assert_eq!(fence, b"00000000000000000012");
}

#[test]
fn election_campaign_proclaim_observe_resign() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    let mut observer = keyval::recipes::Observer::new(&client, "elect/service");
    assert_eq!(
        observer
            .recv_timeout(Duration::from_millis(300))
            .expect("observe"),
        None,
        "no leader yet"
    );
    let first_session = session(&client);
    let mut first = Election::new(&first_session, "elect/service");
    let elected = first.campaign(b"node-a").expect("campaign");
    assert!(first.is_leader());
    let seen = next_leader(&mut observer);
    assert_eq!(
        (seen.value.as_slice(), seen.revision),
        (&b"node-a"[..], elected.revision)
    );

    let second_session = session(&client);
    let mut second = Election::new(&second_session, "elect/service");
    assert!(matches!(
        second.proclaim(b"usurper"),
        Err(RecipeError::NotLeader { .. })
    ));
    let probe = second.probe();
    let (tx, rx) = bounded(1);
    let candidate = std::thread::spawn(move || {
        let result = second.campaign(b"node-b");
        let _ = tx.send(result.map(|leader| leader.revision));
        second
    });
    assert!(
        wait_for(|| probe.waiting_on().is_some()),
        "second not in line"
    );
    first.proclaim(b"node-a v2").expect("proclaim");
    let seen = next_leader(&mut observer);
    assert_eq!(seen.value, b"node-a v2");
    assert_eq!(seen.revision, elected.revision, "the same leader");
    assert_eq!(
        first.leader().expect("leader").map(|leader| leader.value),
        Some(b"node-a v2".to_vec())
    );

    first.resign().expect("resign");
    assert!(!first.is_leader());
    assert!(matches!(
        first.proclaim(b"late"),
        Err(RecipeError::NotLeader { .. })
    ));
    let second_revision = rx
        .recv_timeout(WAIT)
        .expect("second elected in time")
        .expect("campaign");
    assert!(second_revision > elected.revision);
    let seen = next_leader(&mut observer);
    assert_eq!(
        (seen.value.as_slice(), seen.revision),
        (&b"node-b"[..], second_revision)
    );
    let mut second = candidate.join().expect("candidate");
    assert!(second.is_leader());
    second.resign().expect("resign");
    assert!(
        wait_for(|| first.leader().expect("leader").is_none()),
        "the line is not empty after both resigned"
    );
}

fn next_leader(observer: &mut keyval::recipes::Observer) -> keyval::recipes::Leader {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(leader) = observer
            .recv_timeout(Duration::from_millis(500))
            .expect("observe")
        {
            return leader;
        }
    }
    panic!("no leader change observed in time");
}

#[test]
fn an_election_and_its_observer_carry_on_across_a_keyval_leader_stop() {
    let mut cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let client = client(&cluster);
    let mut observer = keyval::recipes::Observer::new(&client, "elect/failover");
    let first_session = session(&client);
    let mut first = Election::new(&first_session, "elect/failover");
    first.campaign(b"a").expect("campaign");
    assert_eq!(next_leader(&mut observer).value, b"a");
    let second_session = session(&client);
    let mut second = Election::new(&second_session, "elect/failover");
    let probe = second.probe();
    let (tx, rx) = bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(second.campaign(b"b").map(|leader| leader.value));
    });
    assert!(
        wait_for(|| probe.waiting_on().is_some()),
        "second not in line"
    );

    cluster.stop(leader);
    cluster.wait_leader();
    first.proclaim(b"a after the stop").expect("proclaim");
    assert_eq!(next_leader(&mut observer).value, b"a after the stop");
    first.resign().expect("resign");
    let elected = rx.recv_timeout(WAIT).expect("second elected in time");
    assert_eq!(elected.expect("campaign"), b"b");
    assert_eq!(next_leader(&mut observer).value, b"b");
}
