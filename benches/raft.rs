//! Throughput of the consensus layer:
//! - `core/3_nodes`: proposals committed per second through three pure cores (no threads, no
//!   I/O) — the cost of the algorithm itself;
//! - `threaded/3_nodes_sim`: proposals committed and applied per second through three threaded
//!   node runtimes on the simulated network with crash-faithful in-memory storage, with
//!   concurrent proposers;
//! - `membership/join_and_promote_20k`: a fresh node joins a threaded 3-node cluster whose log
//!   holds 20,000 entries of 256 bytes: added as a learner, caught up, promoted through joint
//!   consensus (timed until C(new) commits); then removed again, untimed.
//!
//! Run: `cargo bench --bench raft`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keyval::testkit::{Cluster, CoreNetwork};
use keyval::NodeId;

const BATCH: u64 = 256;

fn core_three_nodes(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("3_nodes", |b| {
        let mut network = CoreNetwork::new(3, 1);
        network.elect(NodeId(1));
        let payload = vec![7u8; 256];
        b.iter(|| {
            for _ in 0..BATCH {
                network
                    .node(NodeId(1))
                    .propose(payload.clone())
                    .expect("leader accepts");
            }
            network.process_ready(NodeId(1));
            network.stabilize();
        });
    });
    group.finish();
}

fn threaded_three_nodes(c: &mut Criterion) {
    let mut group = c.benchmark_group("threaded");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    const CLIENTS: u64 = 32;
    const PER_CLIENT: u64 = 64;
    group.throughput(Throughput::Elements(CLIENTS * PER_CLIENT));
    group.bench_function("3_nodes_sim", |b| {
        let cluster = Cluster::new(3);
        let leader = cluster.wait_for_leader(Duration::from_secs(10));
        let node = cluster.node(leader).expect("leader runs");
        let payload = vec![7u8; 256];
        b.iter(|| {
            std::thread::scope(|scope| {
                for _ in 0..CLIENTS {
                    let (node, payload) = (&node, &payload);
                    scope.spawn(move || {
                        for _ in 0..PER_CLIENT {
                            let deadline = Instant::now() + Duration::from_secs(10);
                            node.propose(payload.clone(), deadline).expect("commit");
                        }
                    });
                }
            });
        });
    });
    group.finish();
}

fn membership_join(c: &mut Criterion) {
    let mut group = c.benchmark_group("membership");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("join_and_promote_20k", |b| {
        let cluster = Cluster::builder(3, |_| keyval::testkit::CommandLog::default())
            .configure(|config| config.snapshot_entries = 0)
            .build();
        let timeout = Duration::from_secs(60);
        let leader = cluster.wait_for_leader(timeout);
        let node = cluster.node(leader).expect("leader runs");
        let payload = vec![7u8; 256];
        std::thread::scope(|scope| {
            for _ in 0..16 {
                let (node, payload) = (&node, &payload);
                scope.spawn(move || {
                    for _ in 0..20_000 / 16 {
                        let deadline = Instant::now() + timeout;
                        node.propose(payload.clone(), deadline).expect("commit");
                    }
                });
            }
        });
        let mut next_id = 4;
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let id = NodeId(next_id);
                next_id += 1;
                cluster.add_node(id);
                let started = Instant::now();
                node.add_member(id, None, true, started + timeout)
                    .expect("joined");
                total += started.elapsed();
                node.remove_member(id, Instant::now() + timeout)
                    .expect("removed");
                cluster.crash(id);
            }
            total
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    core_three_nodes,
    threaded_three_nodes,
    membership_join
);
criterion_main!(benches);
