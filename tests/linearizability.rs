//! The linearizability checker judged on histories whose verdict is known: hand-written good
//! and bad ones (including violations only a correct checker sees), operations with unknown
//! outcomes, random histories generated from a real sequential execution (accepted) and then
//! corrupted in ways that are certainly violations (rejected), small random histories judged
//! by a brute-force reference that tries every order, budgets, and the recorder under real
//! threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyval::testkit::linearizability::{
    assert_no_violation, assert_no_violation_with, check, check_with_budgets, check_with_options,
    check_with_statistics, validate, BudgetSpent, CheckOptions, CheckResult, ClientId, Explanation,
    History, HistoryError, Operation, Outcome, Request, Response,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Building histories by hand

fn put(client: u64, key: &str, value: &str, invoked_at: u64, completed_at: u64) -> Operation {
    Operation::completed(
        ClientId(client),
        Request::put(key, value),
        Response::Put,
        invoked_at,
        completed_at,
    )
}

fn get(
    client: u64,
    key: &str,
    read: Option<&str>,
    invoked_at: u64,
    completed_at: u64,
) -> Operation {
    Operation::completed(
        ClientId(client),
        Request::get(key),
        Response::Get(read.map(|value| value.as_bytes().to_vec())),
        invoked_at,
        completed_at,
    )
}

fn delete(client: u64, key: &str, invoked_at: u64, completed_at: u64) -> Operation {
    Operation::completed(
        ClientId(client),
        Request::delete(key),
        Response::Delete,
        invoked_at,
        completed_at,
    )
}

fn compare_and_swap(
    client: u64,
    key: &str,
    expected: Option<&str>,
    new: &str,
    swapped: bool,
    invoked_at: u64,
    completed_at: u64,
) -> Operation {
    Operation::completed(
        ClientId(client),
        Request::compare_and_swap(key, expected.map(|value| value.as_bytes().to_vec()), new),
        Response::CompareAndSwap(swapped),
        invoked_at,
        completed_at,
    )
}

fn unknown(client: u64, request: Request, invoked_at: u64) -> Operation {
    Operation::unknown(ClientId(client), request, invoked_at)
}

#[track_caller]
fn assert_linearizable(operations: &[Operation]) {
    let result = check(operations);
    assert!(result.is_linearizable(), "{result}");
}

#[track_caller]
fn assert_violation(operations: &[Operation], expected_key: &str) -> Explanation {
    match check(operations) {
        CheckResult::NotLinearizable { key, explanation } => {
            assert_eq!(key, expected_key.as_bytes(), "{explanation}");
            explanation
        }
        other => panic!("expected a violation on {expected_key:?}, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Known-good histories

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        get(1, "x", None, 0, 1),
        put(1, "x", "1", 2, 3),
        get(2, "x", Some("1"), 4, 5),
        compare_and_swap(1, "x", Some("1"), "2", true, 6, 7),
        compare_and_swap(2, "x", Some("1"), "3", false, 8, 9),
        get(1, "x", Some("2"), 10, 11),
        delete(2, "x", 12, 13),
        get(1, "x", None, 14, 15),
        compare_and_swap(1, "x", None, "4", true, 16, 17),
        compare_and_swap(2, "x", None, "5", false, 18, 19),
        get(2, "x", Some("4"), 20, 21),
    ]);
}

#[test]
fn concurrent_overlapping_history_is_linearizable() {
    // Two writes overlap each other and the reads; the reads agree on one order: 1 then 2.
    assert_linearizable(&[
        put(1, "x", "1", 0, 50),
        put(2, "x", "2", 10, 60),
        get(3, "x", None, 5, 8),
        get(3, "x", Some("1"), 20, 30),
        get(4, "x", Some("2"), 25, 40),
        get(3, "x", Some("2"), 45, 70),
        // A cas and a read racing with it, read first, swap later.
        compare_and_swap(1, "x", Some("2"), "3", true, 80, 100),
        get(2, "x", Some("2"), 85, 90),
        get(2, "x", Some("3"), 95, 99),
    ]);
}

#[test]
fn operations_that_touch_at_one_instant_count_as_concurrent() {
    // The read is invoked at the instant the put completes, so it may precede it.
    assert_linearizable(&[put(1, "x", "1", 0, 10), get(2, "x", None, 10, 20)]);
}

#[test]
fn keys_are_independent() {
    assert_linearizable(&[
        put(1, "x", "1", 0, 10),
        put(2, "y", "1", 0, 10),
        get(1, "x", Some("1"), 20, 30),
        get(2, "y", Some("1"), 20, 30),
        delete(1, "y", 40, 50),
        get(2, "x", Some("1"), 60, 70),
        get(1, "y", None, 60, 70),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Known-bad histories

#[test]
fn stale_read_after_a_completed_write_is_rejected() {
    let explanation = assert_violation(
        &[
            put(1, "x", "1", 0, 10),
            put(1, "x", "2", 20, 30),
            get(2, "x", Some("1"), 40, 50),
        ],
        "x",
    );
    assert_eq!(explanation.blocked, 2, "{explanation}");
    assert_eq!(explanation.prefix, vec![0, 1], "{explanation}");
    assert_eq!(explanation.value_after_prefix, Some(b"2".to_vec()));
    let text = explanation.to_string();
    assert!(text.contains("#2"), "{text}");
    assert!(
        text.contains("it read \"1\" but the key holds \"2\""),
        "{text}"
    );
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    assert_violation(
        &[
            put(1, "x", "1", 0, 10),
            get(2, "x", Some("7"), 5, 15),
            put(1, "x", "2", 20, 30),
        ],
        "x",
    );
}

#[test]
fn read_of_a_deleted_value_is_rejected() {
    assert_violation(
        &[
            put(1, "x", "1", 0, 10),
            delete(1, "x", 20, 30),
            get(2, "x", Some("1"), 40, 50),
        ],
        "x",
    );
}

#[test]
fn two_compare_and_swaps_succeeding_from_the_same_expected_value_are_rejected() {
    // Both run concurrently, each claims to have swapped 0 for something else.
    assert_violation(
        &[
            put(1, "x", "0", 0, 10),
            compare_and_swap(1, "x", Some("0"), "1", true, 20, 40),
            compare_and_swap(2, "x", Some("0"), "2", true, 25, 35),
        ],
        "x",
    );
}

#[test]
fn lost_update_is_rejected() {
    // A chain of acknowledged swaps, and a later swap that only succeeds if the second was lost.
    assert_violation(
        &[
            compare_and_swap(1, "x", None, "1", true, 0, 10),
            compare_and_swap(2, "x", Some("1"), "2", true, 20, 30),
            compare_and_swap(3, "x", Some("1"), "3", true, 40, 50),
        ],
        "x",
    );
}

#[test]
fn failed_compare_and_swap_that_must_have_succeeded_is_rejected() {
    assert_violation(
        &[
            put(1, "x", "1", 0, 10),
            compare_and_swap(2, "x", Some("1"), "2", false, 20, 30),
        ],
        "x",
    );
}

#[test]
fn read_that_sees_a_write_then_a_later_read_that_does_not_is_rejected() {
    // The put is still running when both reads happen, so each read alone is fine: the first
    // may follow the put, the second may precede it. Together they make the put go backwards.
    assert_violation(
        &[
            put(1, "x", "1", 0, 100),
            get(2, "x", Some("1"), 10, 20),
            get(3, "x", None, 30, 40),
        ],
        "x",
    );
}

#[test]
fn reads_that_order_concurrent_writes_in_opposite_ways_are_rejected() {
    // Every read sees a value being written concurrently, so a per-operation check passes;
    // client 3 sees 1 then 2, client 4 sees 2 then 1, and no single order of the two writes
    // explains both.
    let explanation = assert_violation(
        &[
            put(1, "x", "1", 0, 100),
            put(2, "x", "2", 0, 100),
            get(3, "x", Some("1"), 10, 20),
            get(3, "x", Some("2"), 30, 40),
            get(4, "x", Some("2"), 10, 20),
            get(4, "x", Some("1"), 30, 40),
        ],
        "x",
    );
    assert!(!explanation.candidates.is_empty(), "{explanation}");
}

#[test]
fn violation_is_reported_on_its_own_key() {
    assert_violation(
        &[
            put(1, "a", "1", 0, 10),
            put(1, "b", "1", 0, 10),
            get(2, "a", Some("1"), 20, 30),
            get(2, "b", None, 20, 30),
            get(3, "c", None, 0, 5),
        ],
        "b",
    );
}

// ---------------------------------------------------------------------------------------------
// Operations with unknown outcomes

#[test]
fn unknown_write_that_took_effect_is_accepted() {
    assert_linearizable(&[
        put(1, "x", "1", 0, 10),
        unknown(2, Request::put("x", "2"), 20),
        get(3, "x", Some("2"), 30, 40),
        get(3, "x", Some("2"), 50, 60),
    ]);
}

#[test]
fn unknown_write_that_never_took_effect_is_accepted() {
    assert_linearizable(&[
        put(1, "x", "1", 0, 10),
        unknown(2, Request::put("x", "2"), 20),
        get(3, "x", Some("1"), 30, 40),
        put(1, "x", "3", 50, 60),
        get(3, "x", Some("3"), 70, 80),
    ]);
}

#[test]
fn unknown_write_may_take_effect_after_its_client_gave_up() {
    assert_linearizable(&[
        unknown(1, Request::put("x", "1"), 0),
        get(2, "x", None, 10, 20),
        put(1, "x", "2", 30, 40),
        get(2, "x", Some("2"), 50, 60),
        get(2, "x", Some("1"), 70, 80),
    ]);
}

#[test]
fn unknown_delete_and_compare_and_swap_that_took_effect_are_accepted() {
    assert_linearizable(&[
        put(1, "x", "1", 0, 10),
        unknown(2, Request::delete("x"), 20),
        get(3, "x", None, 30, 40),
        unknown(2, Request::compare_and_swap("x", None, "2"), 50),
        get(3, "x", Some("2"), 60, 70),
    ]);
}

#[test]
fn unknown_compare_and_swap_may_have_failed() {
    // Placed where the key does not hold its expected value, it does nothing.
    assert_linearizable(&[
        put(1, "x", "1", 0, 10),
        unknown(
            2,
            Request::compare_and_swap("x", Some(b"0".to_vec()), "2"),
            20,
        ),
        get(3, "x", Some("1"), 30, 40),
    ]);
}

#[test]
fn unknown_read_constrains_nothing() {
    assert_linearizable(&[
        put(1, "x", "1", 0, 10),
        unknown(2, Request::get("x"), 20),
        get(3, "x", Some("1"), 30, 40),
    ]);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invocation() {
    assert_violation(
        &[
            get(1, "x", Some("1"), 0, 10),
            unknown(2, Request::put("x", "1"), 20),
        ],
        "x",
    );
}

#[test]
fn unknown_write_cannot_take_effect_twice() {
    assert_violation(
        &[
            put(1, "x", "1", 0, 10),
            unknown(2, Request::put("x", "2"), 20),
            get(3, "x", Some("2"), 30, 40),
            put(1, "x", "1", 50, 60),
            get(3, "x", Some("2"), 70, 80),
        ],
        "x",
    );
}

// ---------------------------------------------------------------------------------------------
// Random histories from a real sequential execution

/// Where a client is in its current operation.
#[derive(Clone, Copy)]
enum ClientState {
    Idle,
    /// Invoked; `taken_effect` once it has been applied to the map.
    Invoked {
        operation: usize,
        taken_effect: bool,
    },
}

/// The shape of a generated history.
struct Shape {
    clients: u64,
    keys: u64,
    operations: usize,
    /// Chance that an operation's outcome is lost (per operation).
    unknown_probability: f64,
}

/// Runs random operations against a real map, one at a time, giving each an interval that
/// contains the instant it took effect and overlaps other clients' intervals at random. An
/// operation whose outcome is lost may take effect before or after the client gives up, or
/// never. Every written value is unique. The result is linearizable by construction.
fn generate(seed: u64, shape: &Shape) -> Vec<Operation> {
    let mut random = StdRng::seed_from_u64(seed);
    let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut operations: Vec<Operation> = Vec::with_capacity(shape.operations);
    let mut clients = vec![ClientState::Idle; shape.clients as usize];
    // Abandoned operations that have not taken effect yet, and may later or never.
    let mut abandoned: Vec<usize> = Vec::new();
    let mut time = 0;
    let mut written = 0u64;
    let apply = |map: &mut HashMap<Vec<u8>, Vec<u8>>, request: &Request| -> Response {
        match request {
            Request::Put { key, value } => {
                map.insert(key.clone(), value.clone());
                Response::Put
            }
            Request::Get { key } => Response::Get(map.get(key).cloned()),
            Request::Delete { key } => {
                map.remove(key);
                Response::Delete
            }
            Request::CompareAndSwap { key, expected, new } => {
                let swapped = map.get(key) == expected.as_ref();
                if swapped {
                    map.insert(key.clone(), new.clone());
                }
                Response::CompareAndSwap(swapped)
            }
        }
    };
    loop {
        let busy = clients
            .iter()
            .any(|state| matches!(state, ClientState::Invoked { .. }));
        if operations.len() >= shape.operations && !busy {
            break;
        }
        time += 1;
        if !abandoned.is_empty() && random.random_bool(0.05) {
            let operation = abandoned.swap_remove(random.random_range(0..abandoned.len()));
            apply(&mut map, &operations[operation].request);
        }
        let client = random.random_range(0..shape.clients as usize);
        match clients[client] {
            ClientState::Idle if operations.len() < shape.operations => {
                let key = format!("k{}", random.random_range(0..shape.keys)).into_bytes();
                written += 1;
                let value = format!("c{client}-v{written}").into_bytes();
                let request = match random.random_range(0..20) {
                    0..=6 => Request::Put { key, value },
                    7..=13 => Request::Get { key },
                    14..=15 => Request::Delete { key },
                    _ => {
                        // Usually the current value, so that swaps often succeed.
                        let expected = if random.random_bool(0.7) {
                            map.get(&key).cloned()
                        } else {
                            Some(b"stale".to_vec())
                        };
                        Request::CompareAndSwap {
                            key,
                            expected,
                            new: value,
                        }
                    }
                };
                clients[client] = ClientState::Invoked {
                    operation: operations.len(),
                    taken_effect: false,
                };
                operations.push(Operation::unknown(ClientId(client as u64), request, time));
            }
            ClientState::Idle => {}
            ClientState::Invoked {
                operation,
                taken_effect: false,
            } => {
                if random.random_bool(shape.unknown_probability / 2.0) {
                    // Lost before taking effect: it may still, later.
                    abandoned.push(operation);
                    clients[client] = ClientState::Idle;
                } else {
                    let response = apply(&mut map, &operations[operation].request);
                    operations[operation].outcome = Outcome::Ok(response);
                    clients[client] = ClientState::Invoked {
                        operation,
                        taken_effect: true,
                    };
                }
            }
            ClientState::Invoked {
                operation,
                taken_effect: true,
            } => {
                if random.random_bool(shape.unknown_probability / 2.0) {
                    operations[operation].outcome = Outcome::Unknown;
                } else {
                    operations[operation].completed_at = time;
                }
                clients[client] = ClientState::Idle;
            }
        }
    }
    operations
}

const RANDOM_SEEDS: u64 = 40;

fn random_shape() -> Shape {
    Shape {
        clients: 5,
        keys: 3,
        operations: 300,
        unknown_probability: 0.05,
    }
}

#[test]
fn random_histories_from_a_real_execution_are_linearizable() {
    for seed in 0..RANDOM_SEEDS {
        let operations = generate(seed, &random_shape());
        validate(&operations).expect("generated histories are well formed");
        let result = check(&operations);
        assert!(result.is_linearizable(), "seed {seed}: {result}");
    }
}

/// The positions of the gets with a known outcome.
fn known_reads(operations: &[Operation]) -> Vec<usize> {
    (0..operations.len())
        .filter(|&index| {
            matches!(operations[index].request, Request::Get { .. }) && operations[index].is_known()
        })
        .collect()
}

#[test]
fn random_histories_with_a_read_of_a_value_never_written_are_rejected() {
    for seed in 0..RANDOM_SEEDS {
        let mut operations = generate(seed, &random_shape());
        let reads = known_reads(&operations);
        let mut random = StdRng::seed_from_u64(seed);
        let target = reads[random.random_range(0..reads.len())];
        operations[target].outcome = Outcome::Ok(Response::Get(Some(b"never written".to_vec())));
        let key = operations[target].key().to_vec();
        match check(&operations) {
            CheckResult::NotLinearizable {
                key: reported,
                explanation,
            } => assert_eq!(reported, key, "seed {seed}: {explanation}"),
            other => panic!("seed {seed}: corrupted read #{target} accepted: {other}"),
        }
    }
}

#[test]
fn random_histories_with_a_read_of_a_value_written_only_later_are_rejected() {
    // Every value is written by one operation; a read that completed before that operation
    // was invoked cannot have seen it.
    let mut rejected = 0;
    for seed in 0..RANDOM_SEEDS {
        let mut operations = generate(seed, &random_shape());
        let mut random = StdRng::seed_from_u64(seed);
        let reads = known_reads(&operations);
        let read = reads[random.random_range(0..reads.len() / 2)];
        let later_write = (0..operations.len()).find_map(|index| {
            let operation = &operations[index];
            match &operation.request {
                Request::Put { key, value }
                | Request::CompareAndSwap {
                    key, new: value, ..
                } if *key == operations[read].key()
                    && operation.invoked_at > operations[read].completed_at =>
                {
                    Some(value.clone())
                }
                _ => None,
            }
        });
        let Some(value) = later_write else { continue };
        operations[read].outcome = Outcome::Ok(Response::Get(Some(value)));
        let result = check(&operations);
        assert!(
            matches!(result, CheckResult::NotLinearizable { .. }),
            "seed {seed}: read #{read} of a later value accepted: {result}"
        );
        rejected += 1;
    }
    assert!(
        rejected > RANDOM_SEEDS / 2,
        "only {rejected} seeds had a later write"
    );
}

#[test]
fn large_history_is_checked_within_the_default_budget() {
    let operations = generate(
        7,
        &Shape {
            clients: 8,
            keys: 16,
            operations: 10_000,
            unknown_probability: 0.01,
        },
    );
    let started = Instant::now();
    let result = check(&operations);
    eprintln!(
        "checked {} operations in {:?}: {result}",
        operations.len(),
        started.elapsed()
    );
    assert!(result.is_linearizable(), "{result}");
}

// ---------------------------------------------------------------------------------------------
// Against a brute-force reference on small random histories

/// Whether some order of a subset of `operations` (every operation with a known outcome, any
/// with an unknown one) respects real time and explains every known result. Tries every
/// order: only for a handful of operations.
fn brute_force_linearizable(operations: &[Operation]) -> bool {
    fn extend(
        operations: &[Operation],
        placed: &mut Vec<bool>,
        values: &mut HashMap<Vec<u8>, Vec<u8>>,
    ) -> bool {
        let pending_known =
            |placed: &[bool], index: usize| operations[index].is_known() && !placed[index];
        if !(0..operations.len()).any(|index| pending_known(placed, index)) {
            return true;
        }
        for next in 0..operations.len() {
            let operation = &operations[next];
            // Everything that completed before this was invoked must already be placed.
            let blocked = (0..operations.len()).any(|other| {
                pending_known(placed, other)
                    && operations[other].completed_at < operation.invoked_at
            });
            if placed[next] || blocked {
                continue;
            }
            let key = operation.key().to_vec();
            let before = values.get(&key).cloned();
            let allowed = match (&operation.request, &operation.outcome) {
                (Request::Get { .. }, Outcome::Ok(Response::Get(read))) => *read == before,
                (Request::Get { .. }, _) => true,
                (Request::Put { value, .. }, _) => {
                    values.insert(key.clone(), value.clone());
                    true
                }
                (Request::Delete { .. }, _) => {
                    values.remove(&key);
                    true
                }
                (Request::CompareAndSwap { expected, new, .. }, outcome) => {
                    let matches = before == *expected;
                    if matches {
                        values.insert(key.clone(), new.clone());
                    }
                    match outcome {
                        Outcome::Ok(Response::CompareAndSwap(swapped)) => *swapped == matches,
                        _ => true,
                    }
                }
            };
            placed[next] = true;
            if allowed && extend(operations, placed, values) {
                return true;
            }
            placed[next] = false;
            match before {
                Some(value) => values.insert(key, value),
                None => values.remove(&key),
            };
        }
        false
    }
    extend(
        operations,
        &mut vec![false; operations.len()],
        &mut HashMap::new(),
    )
}

/// A small history with random requests, random results drawn from few values (so that
/// both verdicts are common), random overlapping intervals and some unknown outcomes.
fn random_small_history(random: &mut StdRng) -> Vec<Operation> {
    let value = |random: &mut StdRng| {
        ["a", "b", "c"][random.random_range(0..3)]
            .as_bytes()
            .to_vec()
    };
    let maybe_value = |random: &mut StdRng| random.random_bool(0.7).then(|| value(random));
    let keys = random.random_range(1..=2);
    let unknown_probability = random.random_range(0.0..0.6);
    (0..random.random_range(1..=8))
        .map(|client| {
            let key = format!("k{}", random.random_range(0..keys));
            let (request, response) = match random.random_range(0..4) {
                0 => (Request::put(key, value(random)), Response::Put),
                1 => (Request::get(key), Response::Get(maybe_value(random))),
                2 => (Request::delete(key), Response::Delete),
                _ => (
                    Request::compare_and_swap(key, maybe_value(random), value(random)),
                    Response::CompareAndSwap(random.random_bool(0.5)),
                ),
            };
            let invoked_at = random.random_range(0..20);
            let completed_at = invoked_at + random.random_range(0..10);
            let client = ClientId(client);
            if random.random_bool(unknown_probability) {
                Operation::unknown(client, request, invoked_at)
            } else {
                Operation::completed(client, request, response, invoked_at, completed_at)
            }
        })
        .collect()
}

#[test]
fn checker_agrees_with_brute_force_on_small_random_histories() {
    let mut random = StdRng::seed_from_u64(0x11ea);
    let mut verdicts = [0; 2];
    for round in 0..10_000 {
        let operations = random_small_history(&mut random);
        let expected = brute_force_linearizable(&operations);
        let result = check(&operations);
        assert_eq!(
            result.is_linearizable(),
            expected,
            "round {round}: brute force says {expected}, checker says {result}\n{operations:#?}"
        );
        verdicts[usize::from(expected)] += 1;
    }
    // Both verdicts must be well represented for the comparison to mean something.
    assert!(verdicts.iter().all(|&count| count > 2_000), "{verdicts:?}");
}

// ---------------------------------------------------------------------------------------------
// Budgets

/// Many writes all overlapping, then a read of a value none of them wrote: rejecting it means
/// trying every set of writes, which is exponential in their number.
fn exponential_history(writes: u64) -> Vec<Operation> {
    let mut operations: Vec<Operation> = (0..writes)
        .map(|write| put(write, "x", &write.to_string(), 0, 1_000))
        .collect();
    operations.push(get(writes, "x", Some("none of them"), 2_000, 2_010));
    operations
}

#[test]
fn step_limit_ends_the_search_undecided_not_violated() {
    let options = CheckOptions {
        time_limit: None,
        step_limit: Some(10_000),
    };
    let result = check_with_options(&exponential_history(40), &options);
    assert!(!result.is_violation() && result.is_undecided(), "{result}");
    match result {
        CheckResult::Undecided {
            unchecked_keys,
            steps,
            spent,
        } => {
            assert_eq!(unchecked_keys, vec![b"x".to_vec()]);
            assert_eq!(steps, 10_000);
            assert_eq!(spent, BudgetSpent::Steps);
        }
        other => panic!("expected undecided, got {other}"),
    }
}

#[test]
fn time_limit_ends_the_search_undecided_not_violated() {
    let options = CheckOptions {
        time_limit: Some(Duration::from_millis(100)),
        step_limit: None,
    };
    let started = Instant::now();
    let result = check_with_options(&exponential_history(40), &options);
    assert!(
        matches!(
            result,
            CheckResult::Undecided {
                spent: BudgetSpent::Time,
                ..
            }
        ),
        "expected undecided, got {result}"
    );
    assert!(result
        .to_string()
        .starts_with("undecided (not a violation)"));
    // Generous: the point is that it returns, not how promptly on a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_bigger_budget_decides_what_a_smaller_one_left_undecided_and_finds_the_violation() {
    // Refuting the read takes 163,841 steps.
    let mut operations = exponential_history(14);
    operations.push(put(50, "a", "1", 0, 10));
    operations.push(get(51, "a", Some("1"), 20, 30));
    let small = CheckOptions {
        time_limit: None,
        step_limit: Some(10_000),
    };
    let large = CheckOptions {
        time_limit: None,
        step_limit: Some(1_000_000),
    };
    assert!(check_with_options(&operations, &small).is_undecided());
    let (result, statistics) = check_with_budgets(&operations, &[small, large]);
    match result {
        CheckResult::NotLinearizable { key, .. } => assert_eq!(key, b"x"),
        other => panic!("expected the violation on x, got {other}"),
    }
    // "a" was decided under the small budget and not searched again: 2 keys, then 1.
    assert_eq!(statistics.keys_searched, 3);
}

#[test]
fn assert_no_violation_accepts_undecided_and_panics_on_a_violation() {
    let tiny = [CheckOptions {
        time_limit: None,
        step_limit: Some(1_000),
    }];
    let checked =
        assert_no_violation_with(&exponential_history(14), &tiny, "expected by this test");
    assert!(checked.result.is_undecided(), "{}", checked.result);
    let saved = checked.saved.expect("an undecided history is saved");
    let reloaded: Vec<Operation> = keyval::codec::decode(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(reloaded, exponential_history(14));
    std::fs::remove_file(saved).unwrap();

    let linearizable = [put(1, "x", "1", 0, 10), get(2, "x", Some("1"), 20, 30)];
    assert!(assert_no_violation(&linearizable, "a test")
        .result
        .is_linearizable());
    let stale = [put(1, "x", "1", 0, 10), get(2, "x", None, 20, 30)];
    let panic = std::panic::catch_unwind(|| assert_no_violation(&stale, "seed 7")).unwrap_err();
    let message = panic.downcast::<String>().unwrap();
    assert!(message.contains("not linearizable (seed 7)"), "{message}");
}

#[test]
fn keys_searched_before_the_budget_ran_out_still_report_violations() {
    // The small key "a" is searched first and its violation found before "x" eats the budget.
    let mut operations = exponential_history(40);
    operations.push(put(50, "a", "1", 0, 10));
    operations.push(get(51, "a", None, 20, 30));
    let options = CheckOptions {
        time_limit: None,
        step_limit: Some(10_000),
    };
    assert!(matches!(
        check_with_options(&operations, &options),
        CheckResult::NotLinearizable { key, .. } if key == b"a"
    ));
}

// ---------------------------------------------------------------------------------------------
// The recorder

#[test]
fn recorder_under_concurrent_clients_records_a_linearizable_history() {
    const THREADS: u64 = 4;
    const OPERATIONS_PER_THREAD: u64 = 200;
    let history = History::new();
    let map: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let history = history.clone();
            let map = Arc::clone(&map);
            std::thread::spawn(move || {
                let mut random = StdRng::seed_from_u64(thread);
                for sequence in 0..OPERATIONS_PER_THREAD {
                    let key = format!("k{}", random.random_range(0..3)).into_bytes();
                    let value = format!("t{thread}-{sequence}").into_bytes();
                    let request = match random.random_range(0..4) {
                        0 => Request::Put { key, value },
                        1 => Request::Get { key },
                        2 => Request::Delete { key },
                        _ => Request::CompareAndSwap {
                            key,
                            expected: None,
                            new: value,
                        },
                    };
                    let pending = history.invoke(ClientId(thread), request.clone());
                    // Sometimes the request is lost before it reaches the store.
                    if random.random_bool(0.02) {
                        history.unknown(pending);
                        continue;
                    }
                    let response = {
                        let mut map = map.lock();
                        match request {
                            Request::Put { key, value } => {
                                map.insert(key, value);
                                Response::Put
                            }
                            Request::Get { key } => Response::Get(map.get(&key).cloned()),
                            Request::Delete { key } => {
                                map.remove(&key);
                                Response::Delete
                            }
                            Request::CompareAndSwap { key, new, .. } => {
                                let swapped = !map.contains_key(&key);
                                if swapped {
                                    map.insert(key, new);
                                }
                                Response::CompareAndSwap(swapped)
                            }
                        }
                    };
                    // Sometimes the answer is lost on the way back.
                    if random.random_bool(0.02) {
                        history.unknown(pending);
                    } else {
                        history.complete(pending, Outcome::Ok(response));
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("client thread panicked");
    }
    let operations = history.snapshot();
    assert_eq!(operations.len() as u64, THREADS * OPERATIONS_PER_THREAD);
    validate(&operations).expect("recorded histories are well formed");
    let result = check(&operations);
    assert!(result.is_linearizable(), "{result}");
}

#[test]
fn recorder_stamps_strictly_increasing_times_and_keeps_pending_operations_as_unknown() {
    let history = History::new();
    assert!(history.is_empty());
    let first = history.invoke(ClientId(1), Request::put("x", "1"));
    let second = history.invoke(ClientId(2), Request::get("x"));
    history.complete(first, Outcome::Ok(Response::Put));
    let _still_pending = history.invoke(ClientId(3), Request::delete("x"));
    history.complete(second, Outcome::Ok(Response::Get(Some(b"1".to_vec()))));
    let operations = history.snapshot();
    assert_eq!(history.len(), 3);
    assert!(operations[0].invoked_at < operations[1].invoked_at);
    assert!(operations[1].invoked_at < operations[0].completed_at);
    assert!(operations[0].completed_at < operations[2].invoked_at);
    assert!(operations[2].invoked_at < operations[1].completed_at);
    assert_eq!(operations[2].outcome, Outcome::Unknown);
    assert!(check(&operations).is_linearizable());
}

#[test]
#[should_panic(expected = "answered by")]
fn recorder_refuses_a_response_that_does_not_fit_the_request() {
    let history = History::new();
    let pending = history.invoke(ClientId(1), Request::get("x"));
    history.complete(pending, Outcome::Ok(Response::Put));
}

#[test]
#[should_panic(expected = "recorder other than")]
fn recorder_refuses_an_operation_from_another_recorder() {
    let history = History::new();
    let other = History::new();
    let pending = other.invoke(ClientId(1), Request::get("x"));
    history.unknown(pending);
}

#[test]
fn validate_rejects_malformed_histories() {
    let mismatched = Operation::completed(ClientId(1), Request::get("x"), Response::Put, 0, 1);
    assert!(matches!(
        validate(&[put(1, "x", "1", 0, 1), mismatched]),
        Err(HistoryError::MismatchedResponse { index: 1, .. })
    ));
    assert!(matches!(
        validate(&[put(1, "x", "1", 5, 4)]),
        Err(HistoryError::CompletedBeforeInvoked { index: 0, .. })
    ));
    assert_eq!(validate(&[unknown(1, Request::get("x"), 5)]), Ok(()));
}

/// Timings for the report in the module docs: `cargo test --release --test linearizability --
/// --ignored --nocapture performance`.
#[test]
#[ignore = "a measurement, not a check"]
fn performance_of_large_histories() {
    let shapes = [
        (8, 16, 0.01),
        (10, 16, 0.05),
        (10, 4, 0.01),
        (10, 4, 0.05),
        (10, 1, 0.01),
        (10, 1, 0.0),
        (5, 1, 0.01),
        (5, 2, 0.05),
        (5, 4, 0.2),
    ];
    for (clients, keys, unknown_probability) in shapes {
        let shape = Shape {
            clients,
            keys,
            operations: 10_000,
            unknown_probability,
        };
        let mut operations = generate(1, &shape);
        let options = CheckOptions::default();
        let (result, good) = check_with_statistics(&operations, &options);
        let reads = known_reads(&operations);
        let target = reads[reads.len() * 3 / 4];
        operations[target].outcome = Outcome::Ok(Response::Get(Some(b"never written".to_vec())));
        let (corrupted, bad) = check_with_statistics(&operations, &options);
        let verdict = |result: &CheckResult| match result {
            CheckResult::Linearizable => "linearizable",
            CheckResult::NotLinearizable { .. } => "rejected",
            CheckResult::Undecided { .. } => "undecided",
        };
        eprintln!(
            "{clients} clients, {keys} keys, {:.0}% unknown: {} in {:?} ({} steps, {} configurations); \
             corrupted: {} in {:?} ({} steps, {} configurations)",
            unknown_probability * 100.0,
            verdict(&result),
            good.elapsed,
            good.steps,
            good.configurations_max,
            verdict(&corrupted),
            bad.elapsed,
            bad.steps,
            bad.configurations_max,
        );
    }
}
