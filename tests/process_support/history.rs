//! Recording clients for the process suites: each client runs random operations on a few keys
//! and records them, with their real invocation and completion times, into a shared history
//! for the linearizability checker.

use std::sync::atomic::{AtomicBool, Ordering};

use keyval::client::{CasOutcome, Client};
use keyval::kv::Expect;
use keyval::testkit::linearizability::{
    assert_no_violation, ClientId, History, Operation, Outcome, Request, Response,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Keys the recording clients use: few, so that operations contend.
pub const KEYS: u64 = 3;

/// Gets in every ten operations of [`run_recorded_client`]; the rest are puts and
/// compare-and-swaps, two to one.
pub const GETS_IN_TEN_DEFAULT: u32 = 4;

/// Runs one recording client per entry of `clients` (ids 1, 2, …) while `nemesis` is called
/// again and again for `seconds`, then stops them and returns the history.
pub fn record_while(
    clients: &[Client],
    seed: u64,
    seconds: u64,
    mut nemesis: impl FnMut(),
) -> History {
    let history = History::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for (k, client) in clients.iter().enumerate() {
            let (history, stop) = (&history, &stop);
            scope.spawn(move || run_recorded_client(client, history, k as u64 + 1, seed, stop));
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while std::time::Instant::now() < until {
            nemesis();
        }
        stop.store(true, Ordering::SeqCst);
    });
    history
}

/// Runs random get / put / compare-and-swap operations until `stop`, recording each one.
/// Every error is recorded as an unknown outcome, which lets the operation take effect or not:
/// always sound.
pub fn run_recorded_client(
    client: &Client,
    history: &History,
    id: u64,
    seed: u64,
    stop: &AtomicBool,
) {
    run_recorded_client_mix(client, history, id, seed, stop, GETS_IN_TEN_DEFAULT);
}

/// [`run_recorded_client`] with `gets_in_ten` gets in every ten operations (at most 10); the
/// other operations are puts and compare-and-swaps, two to one.
pub fn run_recorded_client_mix(
    client: &Client,
    history: &History,
    id: u64,
    seed: u64,
    stop: &AtomicBool,
    gets_in_ten: u32,
) {
    assert!(
        gets_in_ten <= 10,
        "gets_in_ten is {gets_in_ten}, at most 10"
    );
    let compare_and_swaps = (10 - gets_in_ten) / 3;
    let mut rng = StdRng::seed_from_u64(seed ^ id);
    let mut counter: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        counter += 1;
        let key = format!("k{}", rng.random_range(0..KEYS)).into_bytes();
        let value = format!("c{id}-{counter}").into_bytes();
        let draw = rng.random_range(0..10);
        let request = match draw {
            _ if draw < gets_in_ten => Request::get(key),
            _ if draw < 10 - compare_and_swaps => Request::put(key, value),
            _ => {
                // Expect a value some client may have written, or the key's absence.
                let expected = rng.random_bool(0.7).then(|| {
                    let writer = rng.random_range(1..=4);
                    format!("c{writer}-{}", counter.max(2) - 1).into_bytes()
                });
                Request::compare_and_swap(key, expected, value)
            }
        };
        let pending = history.invoke(ClientId(id), request.clone());
        let outcome = match request {
            Request::Get { key } => client
                .get(key)
                .ok()
                .map(|value| Response::Get(value.map(|versioned| versioned.value))),
            Request::Put { key, value } => client.put(key, value).ok().map(|_| Response::Put),
            Request::CompareAndSwap { key, expected, new } => {
                let expect = expected.map_or(Expect::Absent, Expect::Value);
                client.cas(key, expect, Some(new)).ok().map(|outcome| {
                    Response::CompareAndSwap(matches!(outcome, CasOutcome::Swapped { .. }))
                })
            }
            Request::Delete { key } => client.delete(key).ok().map(|_| Response::Delete),
        };
        match outcome {
            Some(response) => history.complete(pending, Outcome::Ok(response)),
            None => history.unknown(pending),
        }
    }
}

/// Asserts that enough operations completed and that the history is not shown to violate
/// linearizability (a history the checker cannot decide is reported, not failed:
/// `assert_no_violation`); `context` (seed, faults) goes into any failure message. Returns the
/// number of operations with a known outcome.
pub fn assert_linearizable(operations: &[Operation], context: &str) -> usize {
    let known = operations
        .iter()
        .filter(|operation| operation.is_known())
        .count();
    assert!(
        known > 100,
        "too few operations completed: {known} ({context})"
    );
    assert_no_violation(operations, context);
    known
}
