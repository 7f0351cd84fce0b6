//! Process-level chaos: three, and five, real `keyval` processes (fsync on) serve concurrent
//! clients while a nemesis kills nodes with SIGKILL and restarts them, and freezes nodes with
//! SIGSTOP and thaws them with SIGCONT (with five nodes, sometimes two at once: still a
//! majority up). Every client operation is recorded with its real invocation and
//! completion times (unknown outcomes as unknown), the history must be linearizable, and every
//! key's final value must be readable after the nemesis stops. Three watchers watch every key
//! from revision 1 throughout, resuming on other nodes as theirs die or freeze; their events
//! must be identical, ordered, without duplicates, and match the committed writes
//! (`process_support::watchers`).
//!
//! `KEYVAL_CHAOS_SECONDS` lengthens the run (default 6 s in CI). Network partitions between
//! processes are in `process_partition.rs`.

mod process_support;

use std::process::Command;
use std::time::Duration;

use keyval::client::{Client, ClientOptions};
use keyval::testkit::linearizability::{ClientId, Outcome, Request, Response};
use process_support::history::{assert_linearizable, record_while, KEYS};
use process_support::{watchers, ProcessCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn signal(cluster: &ProcessCluster, position: usize, signal: &str) {
    if let Some(child) = cluster.nodes[position].child.as_ref() {
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
    }
}

#[test]
fn linearizable_while_real_processes_are_killed_and_paused() {
    chaos(3);
}

#[test]
fn linearizable_while_five_real_processes_are_killed_and_paused() {
    chaos(5);
}

fn chaos(nodes: usize) {
    let seconds: u64 = std::env::var("KEYVAL_CHAOS_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("KEYVAL_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    let mut cluster = ProcessCluster::start(nodes);
    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let clients: Vec<Client> = (0..4)
        .map(|_| Client::connect(&cluster.client_addresses, options.clone()).expect("connect"))
        .collect();
    cluster.wait_leader(&clients[0]);
    let watching = watchers::start(&cluster.client_addresses, 3);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let history = record_while(&clients, seed, seconds, || {
        // A minority at a time: one node of three, one or two of five.
        let count = if nodes >= 5 && rng.random_bool(0.5) {
            2
        } else {
            1
        };
        let first = rng.random_range(0..nodes);
        let victims: Vec<usize> = (0..count).map(|k| (first + k) % nodes).collect();
        if rng.random_bool(0.5) {
            for &victim in &victims {
                faults.push(format!("kill -9 n{}", victim + 1));
                cluster.nodes[victim].kill();
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(200..800)));
            for &victim in &victims {
                cluster.restart(victim);
            }
        } else {
            for &victim in &victims {
                faults.push(format!("pause n{}", victim + 1));
                signal(&cluster, victim, "-STOP");
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
            for &victim in &victims {
                signal(&cluster, victim, "-CONT");
            }
        }
        // Pacing the nemesis between faults; nothing is asserted after it.
        std::thread::sleep(Duration::from_millis(rng.random_range(200..600)));
    });
    // Healed: every key's final value is read (and checked with the rest of the history).
    cluster.wait_leader(&clients[0]);
    let mut finals = std::collections::BTreeMap::new();
    for key in 0..KEYS {
        let key = format!("k{key}").into_bytes();
        let pending = history.invoke(ClientId(99), Request::get(key.clone()));
        let value = clients[0]
            .get(key.clone())
            .expect("read after the nemesis stopped")
            .map(|versioned| versioned.value);
        finals.insert(key, value.clone());
        history.complete(pending, Outcome::Ok(Response::Get(value)));
    }
    let operations = history.snapshot();
    let context = format!("seed {seed}, faults {faults:?}");
    let known = assert_linearizable(&operations, &context);
    let watched = watching.finish(&clients[0]);
    watchers::check(&watched, &operations, &finals, &context);
    eprintln!(
        "process chaos, {nodes} nodes: {} operations ({known} with known outcome), {} watch \
         events per watcher, faults: {faults:?}",
        operations.len(),
        watched[0].len()
    );
}
