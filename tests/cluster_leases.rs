//! Leases on a real cluster (three in-process nodes over TCP with client servers): a lease
//! nobody renews expires — its keys vanish together, never before its TTL; a lease kept
//! alive outlives many TTLs and expires once the keeper stops; after the leader is stopped,
//! the new leader gives the lease its full TTL again, so it does not expire early; lease
//! requests are served by the leader only. Method: the blocking client against `TestCluster`,
//! times measured on the monotonic clock, every wait a condition with a generous deadline
//! (the machine is small and loaded: TTLs of seconds, margins on the safe side only).

mod server_support;

use std::time::{Duration, Instant};

use keyval::client::{Client, ClientError, ClientOptions, LeaseKeeper, LeaseKeeperState};
use keyval::kv::{KeyRange, KvError, LeaseId};
use keyval::protocol::{RequestBody, ServerError};
use server_support::{raw_call, TestCluster};

/// How long any expected change may take on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

fn client(cluster: &TestCluster) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    Client::connect(&cluster.endpoints(), options).expect("client connects")
}

/// Which of `keys` exist now, read with one linearizable range read (one revision).
fn present(client: &Client, prefix: &[u8]) -> Option<usize> {
    client
        .scan(KeyRange::prefix(prefix), 100)
        .ok()
        .map(|page| page.entries.len())
}

/// Polls until `condition` holds or `SETTLE` passes.
fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_lease_nobody_renews_expires_with_all_its_keys_together() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    let ttl = Duration::from_secs(2);
    let before_grant = Instant::now();
    let grant = client.lease_grant(ttl.as_secs()).unwrap();
    assert!(grant.ttl_seconds >= ttl.as_secs());
    for key in ["exp/a", "exp/b", "exp/c"] {
        client
            .put_with_lease(key.into(), b"v".to_vec(), grant.lease)
            .unwrap();
    }
    client.put(b"exp/plain".to_vec(), b"p".to_vec()).unwrap();
    // Every read sees all three leased keys or none of them (one revoke, one revision).
    let mut vanished_at = None;
    let done = wait_until(|| match present(&client, b"exp/") {
        Some(4) => false,
        Some(1) => {
            vanished_at = Some(Instant::now());
            true
        }
        Some(other) => panic!("{other} keys: the revoke was not atomic"),
        None => false,
    });
    assert!(done, "the lease never expired");
    let lived = vanished_at.unwrap() - before_grant;
    assert!(
        lived >= ttl,
        "expired after {lived:?}, before its TTL {ttl:?}"
    );
    // And not much after: the keeper looks every 100 ms and the revoke takes one commit; the
    // margin is for a loaded machine (the reads poll every 50 ms).
    let margin = Duration::from_secs(5);
    assert!(
        lived <= ttl + margin,
        "expired {lived:?} after the grant: more than TTL {ttl:?} + {margin:?}"
    );
    assert!(matches!(
        client.lease_time_to_live(grant.lease, false),
        Err(ClientError::Rejected(KvError::LeaseNotFound { .. }))
    ));
    assert!(matches!(
        client.lease_keep_alive(grant.lease),
        Err(ClientError::Rejected(KvError::LeaseNotFound { .. }))
    ));
    assert!(!client.lease_list().unwrap().contains(&grant.lease));
}

#[test]
fn a_lease_kept_alive_does_not_expire_until_its_keeper_stops() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    // Long enough that a loaded machine starving the renewing thread for a second does not
    // expire it; the keeper renews every third of it.
    let grant = client.lease_grant(3).unwrap();
    client
        .put_with_lease(b"alive".to_vec(), b"v".to_vec(), grant.lease)
        .unwrap();
    let keeper = LeaseKeeper::start(client.clone(), grant.lease, grant.ttl_seconds).unwrap();
    // Three TTLs: without renewals it would be gone twice over.
    let until = Instant::now() + 3 * Duration::from_secs(grant.ttl_seconds);
    while Instant::now() < until {
        match client.get(b"alive".to_vec()) {
            Ok(found) => assert!(found.is_some(), "a kept-alive lease expired"),
            Err(error) => assert!(!matches!(error, ClientError::Rejected(_)), "{error}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(matches!(keeper.state(), LeaseKeeperState::Alive { .. }));
    let status = client.lease_time_to_live(grant.lease, true).unwrap();
    assert_eq!(status.keys, vec![b"alive".to_vec()]);
    assert!(status.remaining_ms > 0);
    drop(keeper);
    assert!(
        wait_until(|| matches!(client.get(b"alive".to_vec()), Ok(None))),
        "the lease outlived its keeper"
    );
}

#[test]
fn after_a_leader_failover_a_lease_gets_its_full_ttl_again() {
    let mut cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let client = client(&cluster);
    let ttl = Duration::from_secs(5);
    let before_grant = Instant::now();
    let grant = client.lease_grant(ttl.as_secs()).unwrap();
    client
        .put_with_lease(b"failover".to_vec(), b"v".to_vec(), grant.lease)
        .unwrap();
    // Let half the TTL run out on the old leader's clock: had the new leader inherited that
    // deadline, the key would vanish about 2.5 s after the failover instead of 5 s.
    std::thread::sleep(Duration::from_millis(2_500));
    let found = client.get(b"failover".to_vec()).unwrap();
    if found.is_none() {
        // Only a machine so loaded that this read came after the TTL may see this.
        assert!(
            before_grant.elapsed() >= ttl,
            "expired before its TTL on the first leader"
        );
        eprintln!("the machine is too slow for this test: the lease expired before the stop");
        return;
    }
    let stopped_at = Instant::now();
    cluster.stop(leader);
    // The new leader's clock starts when it takes office, after the stop: the key lives at
    // least one full TTL from the stop (a small margin for the reads themselves).
    let must_live_until = stopped_at + ttl - Duration::from_millis(200);
    let mut reads = 0;
    while Instant::now() < must_live_until {
        match client.get(b"failover".to_vec()) {
            Ok(found) => {
                // A read that saw the key missing may have been served after the deadline.
                if found.is_none() {
                    assert!(
                        Instant::now() >= must_live_until,
                        "expired {:?} after the failover, before its TTL {ttl:?}",
                        stopped_at.elapsed()
                    );
                }
                reads += 1;
            }
            Err(error) => assert!(!matches!(error, ClientError::Rejected(_)), "{error}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reads > 0, "no read succeeded after the failover");
    // And the new leader does expire it once nobody renews it.
    assert!(
        wait_until(|| matches!(client.get(b"failover".to_vec()), Ok(None))),
        "the new leader never expired the lease"
    );
}

#[test]
fn after_a_leadership_transfer_a_lease_gets_its_full_ttl_again() {
    let cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let client = client(&cluster);
    let ttl = Duration::from_secs(5);
    let before_grant = Instant::now();
    let grant = client.lease_grant(ttl.as_secs()).unwrap();
    client
        .put_with_lease(b"moved".to_vec(), b"v".to_vec(), grant.lease)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    if client.get(b"moved".to_vec()).unwrap().is_none() {
        assert!(before_grant.elapsed() >= ttl, "expired before its TTL");
        eprintln!("the machine is too slow for this test: the lease expired before the move");
        return;
    }
    let target = keyval::NodeId(((leader + 1) % 3) as u64 + 1);
    let moved_at = Instant::now();
    assert_eq!(client.transfer_leader(target).unwrap(), target);
    // The new leader counts a full TTL from when it took office, after `moved_at`.
    let must_live_until = moved_at + ttl - Duration::from_millis(200);
    while Instant::now() < must_live_until {
        if let Ok(None) = client.get(b"moved".to_vec()) {
            assert!(
                Instant::now() >= must_live_until,
                "expired {:?} after the transfer, before its TTL {ttl:?}",
                moved_at.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        wait_until(|| matches!(client.get(b"moved".to_vec()), Ok(None))),
        "the new leader never expired the lease"
    );
}

#[test]
fn lease_requests_are_answered_by_the_leader_only() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = client(&cluster);
    // A TTL below the minimum (1 s with the default election timeout) is raised; 0 is refused.
    let grant = client.lease_grant(1).unwrap();
    assert!(grant.ttl_seconds >= 1);
    assert!(matches!(
        client.lease_grant(0),
        Err(ClientError::Rejected(KvError::InvalidLeaseTtl { .. }))
    ));
    assert!(grant.lease != LeaseId(0));
    let other = client.lease_grant(60).unwrap();
    let leases = client.lease_list().unwrap();
    assert!(leases.contains(&grant.lease) && leases.contains(&other.lease));
    assert_eq!(client.lease_keep_alive(other.lease).unwrap(), 60);
    let status = client.lease_time_to_live(other.lease, false).unwrap();
    assert_eq!(status.granted_ttl_seconds, 60);
    assert!(status.remaining_ms > 50_000 && status.remaining_ms <= 60_000);
    assert!(matches!(
        client.put_with_lease(b"k".to_vec(), b"v".to_vec(), LeaseId(999_999)),
        Err(ClientError::Rejected(KvError::LeaseNotFound { .. }))
    ));
    // A follower refuses and names the leader.
    let follower = cluster.follower();
    let frame = raw_call(
        &cluster.address(follower),
        RequestBody::LeaseKeepAlive { lease: other.lease },
        5_000,
    );
    assert!(
        matches!(frame.result, Err(ServerError::NotLeader { .. })),
        "{:?}",
        frame.result
    );
    client
        .put_with_lease(b"held".to_vec(), b"v".to_vec(), other.lease)
        .unwrap();
    assert_eq!(client.lease_revoke(other.lease).unwrap(), 1);
    assert_eq!(client.get(b"held".to_vec()).unwrap(), None);
    assert!(matches!(
        client.lease_revoke(other.lease),
        Err(ClientError::Rejected(KvError::LeaseNotFound { .. }))
    ));
}
