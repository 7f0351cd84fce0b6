//! Three nodes in one process through the public harness: elect, write, cut the leader off,
//! see a new leader take over, heal, and check that every node applied the same log.
//!
//! Run: `cargo run --example three_nodes`

use std::time::Duration;

use keyval::testkit::Cluster;

fn main() {
    let timeout = Duration::from_secs(10);
    let cluster = Cluster::new(3);
    println!("seed {} (replay with KEYVAL_SEED)", cluster.seed());

    let leader = cluster.wait_for_leader(timeout);
    println!("leader: {leader}");
    for k in 0..5 {
        cluster
            .propose(format!("write {k}").as_bytes(), timeout)
            .expect("committed");
    }

    cluster.disconnect(leader);
    let successor = cluster.wait_for_new_leader(leader, timeout);
    println!("{leader} cut off; new leader: {successor}");
    cluster
        .propose(b"write after failover", timeout)
        .expect("committed");

    cluster.heal();
    let last = cluster.node(successor).expect("running").status().committed;
    assert!(cluster.wait_applied_everywhere(last, timeout));
    cluster
        .check_applied_agreement()
        .expect("every node applied the same commands");
    for status in cluster.statuses() {
        println!(
            "{}: {:?} term {} applied {}",
            status.id, status.role, status.term.0, status.applied.0
        );
    }
    println!("messages sent: {}", cluster.counters().sent);
}
