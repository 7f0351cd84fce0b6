//! Leases on real processes: after the leader is killed with SIGKILL midway through a lease's
//! TTL, the lease (and its key) lives at least one full TTL past the kill — the new leader
//! counts from when it took office — and is then expired by the new leader. (Revoke under a
//! network partition is in `process_partition.rs`.)
//! Method: `process_support::ProcessCluster`, times on the monotonic clock, every wait a
//! condition with a generous deadline.

mod process_support;

use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use process_support::{wait_for, ProcessCluster};

#[test]
fn a_lease_outlives_a_kill_9_of_the_leader_by_a_full_ttl_then_expires() {
    let mut cluster = ProcessCluster::start(3);
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let client = Client::connect(&cluster.client_addresses, options).expect("connect");
    let leader = cluster.wait_leader(&client);
    let ttl = Duration::from_secs(6);
    let granted_at = Instant::now();
    let grant = client.lease_grant(ttl.as_secs()).unwrap();
    client
        .put_with_lease(b"held".to_vec(), b"v".to_vec(), grant.lease)
        .unwrap();
    std::thread::sleep(ttl / 2);
    if client.get(b"held".to_vec()).unwrap().is_none() {
        assert!(granted_at.elapsed() >= ttl, "expired before its TTL");
        eprintln!("the machine is too slow for this test: the lease expired before the kill");
        return;
    }
    let killed_at = Instant::now();
    cluster.nodes[leader].kill();
    let must_live_until = killed_at + ttl - Duration::from_millis(200);
    let mut reads = 0;
    while Instant::now() < must_live_until {
        if let Ok(found) = client.get(b"held".to_vec()) {
            if found.is_none() {
                assert!(
                    Instant::now() >= must_live_until,
                    "expired {:?} after the kill, before its TTL {ttl:?}",
                    killed_at.elapsed()
                );
            }
            reads += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reads > 0, "no read succeeded after the kill");
    assert!(
        wait_for(|| matches!(client.get(b"held".to_vec()), Ok(None))),
        "the new leader never expired the lease"
    );
    // The killed node comes back and agrees.
    cluster.restart(leader);
    let only = Client::connect(
        &[cluster.client_addresses[leader].clone()],
        ClientOptions {
            read_consistency: keyval::protocol::Consistency::Stale,
            ..ClientOptions::default()
        },
    )
    .expect("connect to the restarted node");
    assert!(
        wait_for(|| matches!(only.get(b"held".to_vec()), Ok(None))),
        "the restarted node still holds the expired key"
    );
}
