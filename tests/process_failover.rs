//! Failover from a frozen leader (issue item 6, PITFALLS #23), with real processes: three
//! `keyval` nodes, one `Client` writing in a loop with default options; each round freezes the
//! node that answers its writes with SIGSTOP and measures how long after the stop the first
//! write is answered by another node. The frozen process's kernel still accepts connections,
//! so only the client's per-attempt timeout gets it away. While the leader is still frozen,
//! `kvctl put` with the frozen node listed first must succeed through another node. Then
//! SIGCONT, and the next round waits for writes to flow again. Every round must resume
//! within a generous bound (the machine may be loaded); the figures are printed.

mod process_support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use keyval::client::Client;
use keyval::raft::RoleKind;
use process_support::{kvctl, wait_for, ProcessCluster};

/// Rounds of freeze, measure, thaw.
const ROUNDS: usize = 5;

/// Writes must resume within this after the leader freezes. The target is 2 s at the
/// 99th percentile; the bound is looser so that a loaded 2-core machine does not fail it.
const RESUME_BOUND: Duration = Duration::from_secs(5);

/// Writes completed after a thaw before the next round freezes the leader again.
const SETTLE_WRITES: usize = 20;

/// One write the writer completed: when, and which node answered it.
struct Completed {
    at: Instant,
    node: Option<String>,
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Writes in a loop until `stop`, recording every write that succeeded.
fn writer(client: Client, completed: Arc<Mutex<Vec<Completed>>>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("k{}", n % 100).into_bytes();
        if client.put(key, n.to_le_bytes().to_vec()).is_ok() {
            // One writer thread uses this client: the leader it caches is the node that just
            // answered.
            completed.lock().push(Completed {
                at: Instant::now(),
                node: client.leader(),
            });
        }
    }
}

#[test]
fn writes_resume_soon_after_the_leader_freezes() {
    let cluster = ProcessCluster::start(3);
    let client = cluster.client();
    cluster.wait_leader(&client);
    let completed = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = {
        let (client, completed, stop) = (client.clone(), Arc::clone(&completed), Arc::clone(&stop));
        std::thread::spawn(move || writer(client, completed, stop))
    };
    let mut resumed = Vec::new();
    let mut kvctl_took = Vec::new();
    for round in 1..=ROUNDS {
        // Writes flow, answered by a node that says it leads: that is the one to freeze.
        let before = completed.lock().len();
        let mut leader_address = None;
        assert!(
            wait_for(|| {
                let completed = completed.lock();
                leader_address = completed.last().and_then(|done| done.node.clone());
                completed.len() >= before + SETTLE_WRITES
                    && leader_address.as_ref().is_some_and(|address| {
                        client
                            .status(address)
                            .is_ok_and(|status| status.role == RoleKind::Leader)
                    })
            }),
            "round {round}: writes do not flow through a leader"
        );
        let leader_address = leader_address.expect("a write was answered by a node");
        let leader = cluster
            .client_addresses
            .iter()
            .position(|address| *address == leader_address)
            .expect("the answering node is a member");
        let pid = cluster.nodes[leader].child.as_ref().expect("running").id();

        let stopped_at = Instant::now();
        signal(pid, "-STOP");
        let mut first = None;
        let found = wait_for(|| {
            first = completed
                .lock()
                .iter()
                .find(|done| done.at > stopped_at && done.node.as_ref() != Some(&leader_address))
                .map(|done| done.at - stopped_at);
            first.is_some()
        });
        assert!(
            found,
            "round {round}: writes never resumed after n{} froze",
            leader + 1
        );
        let took = first.unwrap();
        eprintln!(
            "round {round}: n{} frozen, writes resumed after {} ms",
            leader + 1,
            took.as_millis()
        );
        resumed.push(took);

        // kvctl, with the frozen node listed first, still writes through another node.
        let mut endpoints = vec![leader_address.clone()];
        endpoints.extend(
            (cluster.client_addresses.iter())
                .filter(|address| **address != leader_address)
                .cloned(),
        );
        let started = Instant::now();
        let output = kvctl(&endpoints.join(","), &["put", "kvctl-key", "v"]);
        let kvctl_elapsed = started.elapsed();
        assert!(
            output.status.success(),
            "round {round}: kvctl put with n{} frozen: {output:?}",
            leader + 1
        );
        kvctl_took.push(kvctl_elapsed);

        signal(pid, "-CONT");
    }
    stop.store(true, Ordering::SeqCst);
    writing.join().expect("the writer thread");

    resumed.sort();
    kvctl_took.sort();
    let millis = |durations: &[Duration]| -> Vec<u128> {
        durations.iter().map(Duration::as_millis).collect()
    };
    eprintln!(
        "writes resumed after a leader froze, {ROUNDS} rounds: p50 {} ms, max {} ms (all: {:?} \
         ms); kvctl put with the frozen node listed first: p50 {} ms, max {} ms",
        resumed[ROUNDS / 2].as_millis(),
        resumed[ROUNDS - 1].as_millis(),
        millis(&resumed),
        kvctl_took[ROUNDS / 2].as_millis(),
        kvctl_took[ROUNDS - 1].as_millis(),
    );
    for (round, took) in resumed.iter().enumerate() {
        assert!(
            *took < RESUME_BOUND,
            "writes resumed only after {took:?} (sorted round {round})"
        );
    }
    for took in &kvctl_took {
        assert!(*took < RESUME_BOUND, "kvctl put took {took:?}");
    }
}
