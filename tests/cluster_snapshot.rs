//! Snapshots and compaction end to end through the harness: real node runtimes with the KV
//! state machine take snapshots under load, compact their logs (the data directory stays
//! bounded), and followers that fell behind the compacted log catch up through InstallSnapshot
//! — on an unreliable network, across crashes mid-catch-up and a restart of every node.

use std::time::{Duration, Instant};

use keyval::kv::{Command, HistoryLimits, KvStore};
use keyval::testkit::{Cluster, StorageKind};
use keyval::{Config, LogIndex, NodeId};

const WAIT: Duration = Duration::from_secs(30);

fn snapshot_often(config: &mut Config) {
    config.snapshot_entries = 200;
    config.snapshot_margin_entries = 50;
}

/// The watch history is part of the store (and its snapshots): kept small here, so the data
/// directory's bound below is about the log and the state, with 100 revisions of history.
fn store() -> KvStore {
    KvStore::with_history_limits(HistoryLimits {
        revisions: 100,
        bytes: u64::MAX,
    })
}

fn kv_cluster(size: u64, storage: StorageKind) -> Cluster<KvStore> {
    Cluster::builder(size, |_| store())
        .storage(storage)
        .configure(snapshot_often)
        .build()
}

/// Writes `count` puts over a small key space from `writers` concurrent clients.
fn write(cluster: &Cluster<KvStore>, count: u64, writers: u64, tag: &str) {
    std::thread::scope(|scope| {
        for writer in 0..writers {
            scope.spawn(move || {
                for k in (writer..count).step_by(writers as usize) {
                    let key = format!("key-{}", k % 32).into_bytes();
                    let value = format!("{tag}-{k}-{}", "v".repeat(200)).into_bytes();
                    let bytes = Command::put(key, value).encode().expect("valid command");
                    cluster.propose(&bytes, WAIT).expect("committed");
                }
            });
        }
    });
}

/// Waits until every running node applied the leader's commit index, then checks that their
/// key-value states are identical.
fn assert_converged(cluster: &Cluster<KvStore>) {
    let leader = cluster.wait_for_leader(WAIT);
    let node = cluster.node(leader).expect("leader runs");
    node.read_barrier(Instant::now() + WAIT)
        .expect("read barrier");
    let target = node.status().applied;
    assert!(
        cluster.wait_applied_everywhere(target, WAIT),
        "not every node applied {target} (seed {})",
        cluster.seed()
    );
    let reference = node.read_local(|store| (**store).clone()).1;
    for id in cluster.ids() {
        let Some(other) = cluster.node(id) else {
            continue;
        };
        assert!(cluster.wait_for(WAIT, |_| other.status().applied >= target));
        let (applied, state) = other.read_local(|store| (**store).clone());
        if applied == reference.applied_index() {
            assert!(
                state == reference,
                "{id} diverged (seed {})",
                cluster.seed()
            );
        }
    }
    cluster.check_applied_agreement().unwrap();
}

fn snapshot_index(cluster: &Cluster<KvStore>, id: NodeId) -> LogIndex {
    cluster
        .node(id)
        .and_then(|node| node.latest_snapshot())
        .map_or(LogIndex(0), |snapshot| snapshot.meta.last.index)
}

fn directory_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn steady_load_takes_snapshots_and_keeps_the_data_directory_bounded() {
    let cluster = kv_cluster(3, StorageKind::RealFiles);
    cluster.wait_for_leader(WAIT);
    // ~1.4 MB of log written over 32 keys: the state stays ~8 KB.
    write(&cluster, 6000, 8, "steady");
    assert_converged(&cluster);
    for id in cluster.ids() {
        assert!(
            snapshot_index(&cluster, id) > LogIndex(5000),
            "{id} did not snapshot"
        );
        let dir = cluster.data_dir(id).expect("real files");
        let bytes = directory_bytes(&dir);
        assert!(bytes < 512 * 1024, "{id}: data dir holds {bytes} bytes");
    }
}

fn lagging_follower_catches_up(storage: StorageKind, unreliable: bool, crash: Option<bool>) {
    let cluster = kv_cluster(3, storage);
    let leader = cluster.wait_for_leader(WAIT);
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    write(&cluster, 50, 2, "before");
    cluster.disconnect(follower);
    write(&cluster, 2000, 8, "while-away");
    let leader = cluster.wait_for_leader(WAIT);
    let leader_snapshot = snapshot_index(&cluster, leader);
    assert!(leader_snapshot > LogIndex(1500), "leader did not compact");
    cluster.set_unreliable(unreliable);
    cluster.reconnect(follower);
    match crash {
        Some(true) => cluster.restart(follower), // the follower crashes as it catches up
        Some(false) => cluster.restart(leader),  // the leader crashes as it sends
        None => {}
    }
    write(&cluster, 100, 2, "after");
    cluster.set_unreliable(false);
    assert_converged(&cluster);
    assert!(
        snapshot_index(&cluster, follower) >= LogIndex(1000),
        "the follower should have caught up through a snapshot (seed {})",
        cluster.seed()
    );
}

#[test]
fn disconnected_follower_catches_up_through_install_snapshot() {
    lagging_follower_catches_up(StorageKind::Memory, false, None);
}

#[test]
fn catch_up_through_install_snapshot_on_an_unreliable_network() {
    lagging_follower_catches_up(StorageKind::FaultyFiles, true, None);
}

#[test]
fn follower_crash_while_catching_up() {
    lagging_follower_catches_up(StorageKind::FaultyFiles, false, Some(true));
}

#[test]
fn leader_crash_while_sending_a_snapshot() {
    lagging_follower_catches_up(StorageKind::Memory, true, Some(false));
}

#[test]
fn every_node_restarts_from_its_snapshot() {
    let cluster = kv_cluster(3, StorageKind::FaultyFiles);
    cluster.wait_for_leader(WAIT);
    write(&cluster, 1500, 8, "first");
    assert_converged(&cluster);
    for id in cluster.ids() {
        cluster.crash(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
        assert!(
            snapshot_index(&cluster, id) > LogIndex(1000),
            "{id} lost its snapshot"
        );
    }
    write(&cluster, 100, 2, "second");
    assert_converged(&cluster);
    // Every key holds its last write.
    let leader = cluster.wait_for_leader(WAIT);
    let value = cluster
        .node(leader)
        .unwrap()
        .read(Instant::now() + WAIT, |store| store.get(b"key-3"))
        .unwrap()
        .expect("key-3 exists");
    assert!(value.value.starts_with(b"second-"));
}

#[test]
fn follower_100_000_entries_behind_catches_up() {
    let cluster = kv_cluster(3, StorageKind::Memory);
    let leader = cluster.wait_for_leader(WAIT);
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    cluster.disconnect(follower);
    let entries: u64 = std::env::var("KEYVAL_LAG_ENTRIES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100_000);
    write(&cluster, entries, 32, "lag");
    cluster.reconnect(follower);
    assert_converged(&cluster);
    assert!(snapshot_index(&cluster, follower) > LogIndex(entries / 2));
}

/// The byte threshold alone triggers snapshots (the entry threshold switched off).
#[test]
fn snapshot_policy_by_bytes() {
    let cluster = Cluster::builder(3, |_| KvStore::new())
        .configure(|config| {
            config.snapshot_entries = 0;
            config.snapshot_bytes = 64 * 1024;
            config.snapshot_margin_entries = 10;
        })
        .build();
    cluster.wait_for_leader(WAIT);
    // ~300 bytes per command: 600 commands are ~180 KB, well past two 64 KiB thresholds.
    write(&cluster, 600, 4, "bytes");
    assert_converged(&cluster);
    for id in cluster.ids() {
        assert!(
            snapshot_index(&cluster, id) > LogIndex(200),
            "{id} took no snapshot by bytes"
        );
    }
    // And with both thresholds off, none is taken.
    let never = Cluster::builder(3, |_| KvStore::new())
        .configure(|config| {
            config.snapshot_entries = 0;
            config.snapshot_bytes = 0;
        })
        .build();
    never.wait_for_leader(WAIT);
    write(&never, 600, 4, "never");
    assert_converged(&never);
    for id in never.ids() {
        assert_eq!(snapshot_index(&never, id), LogIndex(0));
    }
}
