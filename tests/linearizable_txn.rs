//! Linearizable histories containing multi-key transactions: four clients run optimistic
//! read-then-swap transactions over three keys (guards on one or two keys, writes to one or
//! two, reads in both branches) against a three-node cluster over TCP whose leader is stopped
//! midway; the recorded history (unknown outcomes as unknown) must be linearizable as a whole
//! (`testkit::linearizability::check_transactions`, which searches the whole map: the per-key
//! checker cannot judge an operation that compares one key and writes another).
//! Method: `server_support::TestCluster`; the seed is printed and `KEYVAL_SEED` replays the
//! clients' choices.

mod server_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use keyval::kv::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use keyval::testkit::linearizability::{
    check_transactions, TxnCheck, TxnOperation, TxnRequest, TxnResult, TxnStep,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use server_support::TestCluster;

const KEYS: [&[u8]; 3] = [b"a", b"b", b"c"];

/// The keyval transaction for a modelled one.
fn to_txn(request: &TxnRequest) -> Txn {
    let compares = request.guards.iter().map(|(key, expected)| match expected {
        Some(value) => Compare::value(key.clone(), CompareOp::Equal, value.clone()),
        None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
    });
    let ops = |steps: &[TxnStep]| -> Vec<TxnOp> {
        steps
            .iter()
            .map(|step| match step {
                TxnStep::Put(key, value) => TxnOp::put(key.clone(), value.clone()),
                TxnStep::Delete(key) => TxnOp::delete(key.clone()),
                TxnStep::Get(key) => TxnOp::get(key.clone()),
            })
            .collect()
    };
    Txn::new()
        .when(compares)
        .then(ops(&request.then))
        .otherwise(ops(&request.otherwise))
}

/// A random transaction of client `id`, guarded by what it last read.
fn next_request(
    random: &mut StdRng,
    id: u64,
    counter: u64,
    seen: &[Option<Vec<u8>>; 3],
) -> TxnRequest {
    let first = random.random_range(0..3);
    let second = (first + random.random_range(1..3)) % 3;
    let mut guards = vec![(KEYS[first].to_vec(), seen[first].clone())];
    if random.random_bool(0.3) {
        guards.push((KEYS[second].to_vec(), seen[second].clone()));
    }
    let value = format!("c{id}-{counter}").into_bytes();
    let mut then = vec![TxnStep::Put(KEYS[first].to_vec(), value.clone())];
    match random.random_range(0..3) {
        0 => then.push(TxnStep::Put(KEYS[second].to_vec(), value)),
        1 => then.push(TxnStep::Delete(KEYS[second].to_vec())),
        _ => then.push(TxnStep::Get(KEYS[second].to_vec())),
    }
    TxnRequest {
        guards,
        then,
        otherwise: KEYS.iter().map(|key| TxnStep::Get(key.to_vec())).collect(),
    }
}

#[test]
fn transaction_histories_are_linearizable_across_a_leader_stop() {
    let seed: u64 = std::env::var("KEYVAL_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (KEYVAL_SEED={seed} replays the clients' choices)");
    let mut cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let options = ClientOptions {
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let epoch = Instant::now();
    let history: Mutex<Vec<TxnOperation>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let clients: Vec<Client> = (0..4)
        .map(|_| Client::connect(&cluster.endpoints(), options.clone()).expect("connect"))
        .collect();
    std::thread::scope(|scope| {
        for (index, client) in clients.iter().enumerate() {
            let (history, stop) = (&history, &stop);
            scope.spawn(move || {
                let id = index as u64 + 1;
                let mut random = StdRng::seed_from_u64(seed ^ id);
                let mut seen: [Option<Vec<u8>>; 3] = [None, None, None];
                let mut counter = 0;
                while !stop.load(Ordering::SeqCst) && counter < 250 {
                    counter += 1;
                    let request = next_request(&mut random, id, counter, &seen);
                    let invoked_at = epoch.elapsed().as_nanos() as u64;
                    let answer = client.txn(to_txn(&request));
                    let completed_at = epoch.elapsed().as_nanos() as u64;
                    let outcome = answer.ok().map(|response| {
                        let reads: Vec<Option<Vec<u8>>> = response
                            .responses
                            .iter()
                            .filter_map(|op| match op {
                                TxnOpResponse::Get(found) => {
                                    Some(found.as_ref().map(|versioned| versioned.value.clone()))
                                }
                                _ => None,
                            })
                            .collect();
                        if !response.succeeded {
                            // The failed branch read every key: guard the next one on them.
                            for (slot, read) in seen.iter_mut().zip(&reads) {
                                *slot = read.clone();
                            }
                        }
                        TxnResult {
                            succeeded: response.succeeded,
                            reads,
                        }
                    });
                    if let Some(result) = &outcome {
                        if result.succeeded {
                            // What it wrote is what the next guard expects.
                            for step in &request.then {
                                match step {
                                    TxnStep::Put(key, value) => {
                                        let slot = KEYS.iter().position(|k| *k == key.as_slice());
                                        if let Some(slot) = slot {
                                            seen[slot] = Some(value.clone());
                                        }
                                    }
                                    TxnStep::Delete(key) => {
                                        let slot = KEYS.iter().position(|k| *k == key.as_slice());
                                        if let Some(slot) = slot {
                                            seen[slot] = None;
                                        }
                                    }
                                    TxnStep::Get(_) => {}
                                }
                            }
                        }
                    }
                    history.lock().push(TxnOperation {
                        client: id,
                        request,
                        invoked_at,
                        completed_at,
                        outcome,
                    });
                }
            });
        }
        // Midway, stop the leader; the others elect a new one and the clients follow.
        let deadline = Instant::now() + Duration::from_secs(20);
        while history.lock().len() < 300 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let leader = cluster.wait_leader();
        cluster.stop(leader);
        let resumed = history.lock().len();
        while history.lock().len() < resumed + 300
            && Instant::now() < deadline + Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let operations = history.into_inner();
    let known = operations.iter().filter(|op| op.outcome.is_some()).count();
    let succeeded = operations
        .iter()
        .filter(|op| op.outcome.as_ref().is_some_and(|outcome| outcome.succeeded))
        .count();
    eprintln!(
        "{} transactions, {known} with a known outcome, {succeeded} succeeded",
        operations.len()
    );
    assert!(known > 300, "too few transactions completed: {known}");
    assert!(
        succeeded > 50,
        "too few transactions succeeded: {succeeded}"
    );
    match check_transactions(&operations, Duration::from_secs(120)) {
        TxnCheck::Linearizable => {}
        TxnCheck::NotLinearizable { longest_prefix } => panic!(
            "not linearizable (seed {seed}); longest linearizable prefix of {} operations, \
             ending {:?}",
            longest_prefix.len(),
            longest_prefix
                .iter()
                .rev()
                .take(5)
                .map(|index| &operations[*index])
                .collect::<Vec<_>>()
        ),
        TxnCheck::Undecided => eprintln!("undecided within the time limit (seed {seed})"),
    }
}
