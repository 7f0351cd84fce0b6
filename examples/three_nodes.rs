//! Three nodes in one process through the public harness: elect, write, cut the leader off,
//! see a new leader take over, heal, check that every node applied the same log, then change
//! the membership: a fourth node joins (learner, then voter) and the first leader leaves.
//!
//! Run: `cargo run --example three_nodes`

use std::time::{Duration, Instant};

use keyval::testkit::Cluster;
use keyval::NodeId;

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
    // Membership: node 4 starts empty, knowing no configuration, and is added by the leader
    // (as a learner that is promoted once caught up); then the first leader is removed.
    cluster.add_node(NodeId(4));
    let node = cluster.node(successor).expect("running");
    let membership = node
        .add_member(NodeId(4), None, true, Instant::now() + timeout)
        .expect("node 4 joined");
    println!("voters after the join: {:?}", membership.voters);
    let membership = node
        .remove_member(leader, Instant::now() + timeout)
        .expect("removed");
    println!("voters after removing {leader}: {:?}", membership.voters);
    cluster
        .propose(b"write with the new membership", timeout)
        .expect("committed");
    for status in cluster.statuses() {
        println!(
            "{}: {:?} term {} applied {}",
            status.id, status.role, status.term.0, status.applied.0
        );
    }
    println!("messages sent: {}", cluster.counters().sent);
}
