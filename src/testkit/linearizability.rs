//! A linearizability checker for key-value histories.
//!
//! A history is linearizable when every operation can be given a single instant between its
//! invocation and its completion at which it takes effect, such that the resulting sequence is
//! a legal run of one sequential key-value map. That is the contract keyval promises its
//! clients; this module decides, for a recorded history, whether it was kept.
//!
//! # Recording
//!
//! Concurrent clients share a [`History`] (clones share one recording). Around each request a
//! client calls [`History::invoke`] just before sending, and [`History::complete`] with
//! [`Outcome::Ok`] and the [`Response`] just after the answer arrives — or
//! [`History::unknown`] when it cannot know what happened (a timeout, a broken connection, a
//! crashed node). [`History::snapshot`] returns the [`Operation`]s; histories recorded
//! elsewhere (another process, a file) can be built directly as `Operation` values, with any
//! monotonic clock common to all their clients, and should go through [`validate`] first.
//!
//! # Checking
//!
//! [`check`] (or [`check_with_options`] for another search budget) answers
//! [`CheckResult::Linearizable`], [`CheckResult::NotLinearizable`] with the key and an
//! [`Explanation`] (the longest linearizable prefix found and the operations that cannot follow
//! it), or [`CheckResult::Undecided`] when the budget ran out before an answer — which is not
//! a violation, and must never be reported as one.
//!
//! Test suites go through [`assert_no_violation`]: it checks with the default budget, retries
//! the keys left undecided with [`CHECK_TIME_LIMIT_PATIENT`] (on a loaded machine the default
//! five seconds can run out on a history that takes milliseconds on an idle one), panics on a
//! violation, and announces a history still undecided on the process's standard error, past the
//! test harness's capture, without failing the test.
//!
//! ```
//! use keyval::testkit::linearizability::{check, ClientId, CheckResult, Operation, Request, Response};
//!
//! let history = vec![
//!     Operation::completed(ClientId(1), Request::put("x", "1"), Response::Put, 0, 10),
//!     // Invoked after the put completed, yet it does not see it: a stale read.
//!     Operation::completed(ClientId(2), Request::get("x"), Response::Get(None), 20, 30),
//! ];
//! match check(&history) {
//!     CheckResult::NotLinearizable { key, explanation } => {
//!         assert_eq!(key, b"x");
//!         println!("{explanation}");
//!     }
//!     other => panic!("expected a violation, got {other:?}"),
//! }
//! ```
//!
//! Transactions, which touch several keys at once, break the per-key split; their histories
//! go to [`check_transactions`], which searches the whole map (small histories only).
//!
//! # Unknown outcomes
//!
//! An operation whose outcome is [`Outcome::Unknown`] may have taken effect once, at any
//! instant after its invocation — possibly after every other operation — or never. The checker
//! treats its completion as +infinity and its result as unconstrained: a put or a delete with
//! an unknown outcome is linearized anywhere after its invocation or left out, a
//! compare-and-swap likewise (swapping if the key holds its expected value where it is
//! placed), and a get constrains nothing and is ignored. What is never allowed is for an
//! operation to take effect before it was invoked, or twice.
//!
//! # Algorithm
//!
//! Every operation touches one key, and a history is linearizable exactly when each key's
//! sub-history is (linearizability is compositional: Porcupine's P-compositionality), so the
//! history is split by key and the keys are checked one at a time, smallest first. For each
//! key the checker runs Lowe's version of the Wing–Gong search, as in Porcupine: a depth-first
//! search for a linearization over the time-ordered list of call and return entries, pruned by
//! a cache of every configuration reached (which operations are linearized, plus the value of
//! the key), so that no configuration is explored twice.
//!
//! On top of that, five refinements, each exact (none changes a verdict):
//! - Values are interned per key, and the values that no get returns and no compare-and-swap
//!   expects are merged into one: no operation can tell them apart.
//! - An unknown operation that alone writes a value that a known get returns (or a known
//!   successful compare-and-swap expects) must have taken effect before that observer
//!   completed: it gets that completion as a deadline instead of +infinity.
//! - The other unknown operations are optional. Those that do the same thing are
//!   interchangeable, so the search takes them in invocation order, and only after trying
//!   every required operation.
//! - The search takes an operation with an unknown outcome only when it changes the value and
//!   an operation that could go right after it depends on that change (reads the new value,
//!   say): some linearization, if any exists, has that shape.
//! - A configuration also prunes every configuration with the same required operations and
//!   value and more optional operations linearized: that one has fewer options left.
//!
//! The cache names a set of required operations by a 128-bit fingerprint instead of keeping
//! the set: two configurations share one with probability about `k² / 2^128` for `k`
//! configurations (10^-21 for a billion), and an entry costs a few dozen bytes, not `n / 8`.
//!
//! # Cost
//!
//! Deciding linearizability is NP-complete, and the search is exponential in the number of
//! operations that overlap one another on one key: up to `2^c` sets of linearized operations
//! around a point where `c` operations overlap. Clients that issue one request at a time keep
//! `c` at the number of clients plus the optional operations still pending. A linearizable
//! history is usually confirmed in close to linear time; a violation is the expensive case,
//! because every configuration up to it must be refuted.
//!
//! Measured on a shared 2-core machine (release build; `cargo test --release --test
//! linearizability -- --ignored --nocapture performance`), histories of 10,000 operations
//! generated from a real execution, then with one late read corrupted:
//!
//! | clients | keys | unknown outcomes | linearizable | corrupted |
//! |---|---|---|---|---|
//! | 8 | 16 | 1% | 5 ms | rejected in 4 ms |
//! | 10 | 16 | 5% | 4 ms | rejected in 4 ms |
//! | 10 | 4 | 5% | 6 ms | rejected in 22 ms |
//! | 5 | 4 | 20% | 6 ms | rejected in 55 ms |
//! | 5 | 1 | 1% | 13 ms | rejected in 0.42 s |
//! | 10 | 1 | 0% | 30 ms | rejected in 0.15 s |
//! | 10 | 1 | 1% | 0.16 s | undecided after 5 s, with 2 million configurations cached |
//!
//! The cache is the memory cost: a few dozen bytes per configuration, under 200 MB for the
//! last row.
//!
//! The search stops when [`CheckOptions`] says so (by default after
//! [`CHECK_TIME_LIMIT_DEFAULT`]) and reports [`CheckResult::Undecided`] rather than guess.

mod explain;
mod history;
mod key_history;
mod multi;
mod search;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

pub use explain::Explanation;
pub use history::{
    validate, ClientId, History, HistoryError, Operation, Outcome, PendingOperation, Request,
    Response,
};
pub use multi::{check_transactions, TxnCheck, TxnOperation, TxnRequest, TxnResult, TxnStep};

use history::Bytes;
use key_history::KeyHistory;
use search::{Budget, Verdict};

/// How long [`check`] searches before it gives up with [`CheckResult::Undecided`].
pub const CHECK_TIME_LIMIT_DEFAULT: Duration = Duration::from_secs(5);

/// How long [`assert_no_violation`] searches the keys the default budget left undecided.
pub const CHECK_TIME_LIMIT_PATIENT: Duration = Duration::from_secs(60);

const _: () = assert!(CHECK_TIME_LIMIT_PATIENT.as_secs() > CHECK_TIME_LIMIT_DEFAULT.as_secs());

/// Limits on the work of one check. A check that reaches either limit answers
/// [`CheckResult::Undecided`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// The longest the search may run; `None` for no limit. Read every 1,024 steps.
    pub time_limit: Option<Duration>,
    /// The most search steps (over all keys) the search may take; `None` for no limit. A step
    /// limit makes a check's verdict independent of the machine's speed.
    pub step_limit: Option<u64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            time_limit: Some(CHECK_TIME_LIMIT_DEFAULT),
            step_limit: None,
        }
    }
}

/// Which limit of a [`CheckOptions`] ended a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSpent {
    /// [`CheckOptions::time_limit`]: a slower or busier machine may not reach the answer that
    /// a faster one would.
    Time,
    /// [`CheckOptions::step_limit`]: the same history always stops at the same step.
    Steps,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Some order of its operations explains every result.
    Linearizable,
    /// No order of the operations on `key` explains their results.
    NotLinearizable {
        /// The key whose history is not linearizable (the first found, smallest first).
        key: Vec<u8>,
        /// How far the search got, and where it stuck.
        explanation: Explanation,
    },
    /// The search budget ran out before an answer: the history is neither shown linearizable
    /// nor shown to violate linearizability. Every key before `unchecked_keys` was
    /// linearizable.
    Undecided {
        /// The key being searched when the budget ran out, then the keys not yet searched.
        unchecked_keys: Vec<Vec<u8>>,
        /// Search steps taken, over all keys.
        steps: u64,
        /// The limit that ended the search.
        spent: BudgetSpent,
    },
}

impl CheckResult {
    /// Whether the verdict is [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// Whether the verdict is a violation ([`CheckResult::NotLinearizable`]).
    pub fn is_violation(&self) -> bool {
        matches!(self, CheckResult::NotLinearizable { .. })
    }

    /// Whether the budget ran out first ([`CheckResult::Undecided`]).
    pub fn is_undecided(&self) -> bool {
        matches!(self, CheckResult::Undecided { .. })
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => formatter.write_str("linearizable"),
            CheckResult::NotLinearizable { explanation, .. } => {
                write!(formatter, "not linearizable: {explanation}")
            }
            CheckResult::Undecided {
                unchecked_keys,
                steps,
                spent,
            } => {
                let limit = match spent {
                    BudgetSpent::Time => "time",
                    BudgetSpent::Steps => "step",
                };
                write!(
                    formatter,
                    "undecided (not a violation): the search's {limit} budget ran out after \
                     {steps} steps; keys unchecked: {}, starting with ",
                    unchecked_keys.len()
                )?;
                match unchecked_keys.first() {
                    Some(key) => Bytes(key).fmt(formatter),
                    None => formatter.write_str("none"),
                }
            }
        }
    }
}

/// Checks `operations` with the default [`CheckOptions`].
///
/// # Panics
/// If the history is malformed (see [`validate`]).
pub fn check(operations: &[Operation]) -> CheckResult {
    check_with_options(operations, &CheckOptions::default())
}

/// Checks `operations`, stopping when `options` says so.
///
/// # Panics
/// If the history is malformed (see [`validate`]).
pub fn check_with_options(operations: &[Operation], options: &CheckOptions) -> CheckResult {
    check_with_statistics(operations, options).0
}

/// What a check did: for reports, and for tuning budgets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckStatistics {
    /// Operations in the history.
    pub operations: usize,
    /// Keys searched, fully or until the check ended.
    pub keys_searched: usize,
    /// Search steps taken, over all keys.
    pub steps: u64,
    /// The most configurations the search kept in memory for one key.
    pub configurations_max: usize,
    /// How long the check took.
    pub elapsed: Duration,
}

/// Checks `operations`, stopping when `options` says so, and says how much work it took.
///
/// # Panics
/// If the history is malformed (see [`validate`]).
pub fn check_with_statistics(
    operations: &[Operation],
    options: &CheckOptions,
) -> (CheckResult, CheckStatistics) {
    let started = Instant::now();
    if let Err(error) = validate(operations) {
        panic!("cannot check a malformed history: {error}");
    }
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, operation) in operations.iter().enumerate() {
        by_key.entry(operation.key()).or_default().push(index);
    }
    // Small keys first: a violation on a cheap key is found even if an expensive key would
    // exhaust the budget.
    let mut keys: Vec<(&[u8], Vec<usize>)> = by_key.into_iter().collect();
    keys.sort_by_key(|(_, indices)| indices.len());
    let mut budget = Budget {
        deadline: options
            .time_limit
            .and_then(|limit| started.checked_add(limit)),
        step_limit: options.step_limit,
        steps: 0,
    };
    let mut statistics = CheckStatistics {
        operations: operations.len(),
        ..CheckStatistics::default()
    };
    let mut result = CheckResult::Linearizable;
    for (position, (key, indices)) in keys.iter().enumerate() {
        let history = KeyHistory::new(operations, indices);
        let (verdict, counts) = search::search(&history, &mut budget);
        statistics.keys_searched += 1;
        statistics.configurations_max = statistics.configurations_max.max(counts.configurations);
        match verdict {
            Verdict::Linearizable => continue,
            Verdict::NotLinearizable(dead_end) => {
                result = CheckResult::NotLinearizable {
                    key: key.to_vec(),
                    explanation: Explanation::new(operations, &history, &dead_end),
                };
            }
            Verdict::OutOfBudget => {
                let spent = if budget.step_limit.is_some_and(|limit| budget.steps >= limit) {
                    BudgetSpent::Steps
                } else {
                    BudgetSpent::Time
                };
                result = CheckResult::Undecided {
                    unchecked_keys: keys[position..]
                        .iter()
                        .map(|(key, _)| key.to_vec())
                        .collect(),
                    steps: budget.steps,
                    spent,
                };
            }
        }
        break;
    }
    statistics.steps = budget.steps;
    statistics.elapsed = started.elapsed();
    (result, statistics)
}

/// Checks `operations` with each of `budgets` in turn until one decides: after an undecided
/// attempt, the next searches only the keys left unchecked (linearizability is decided key by
/// key, so the keys already found linearizable need no second look). Returns the last
/// verdict, with the statistics summed over the attempts (steps, time) or the largest
/// (configurations).
///
/// # Panics
/// If the history is malformed (see [`validate`]), or `budgets` is empty.
pub fn check_with_budgets(
    operations: &[Operation],
    budgets: &[CheckOptions],
) -> (CheckResult, CheckStatistics) {
    assert!(!budgets.is_empty(), "no budget to check with");
    let mut remaining: Vec<Operation> = operations.to_vec();
    let mut total = CheckStatistics {
        operations: operations.len(),
        ..CheckStatistics::default()
    };
    let mut result = CheckResult::Linearizable;
    for budget in budgets {
        let statistics;
        (result, statistics) = check_with_statistics(&remaining, budget);
        total.keys_searched += statistics.keys_searched;
        total.steps += statistics.steps;
        total.configurations_max = total.configurations_max.max(statistics.configurations_max);
        total.elapsed += statistics.elapsed;
        let CheckResult::Undecided { unchecked_keys, .. } = &result else {
            break;
        };
        let unchecked: std::collections::BTreeSet<&[u8]> =
            unchecked_keys.iter().map(Vec::as_slice).collect();
        remaining.retain(|operation| unchecked.contains(operation.key()));
    }
    (result, total)
}

/// The budgets [`assert_no_violation`] tries: the default, then [`CHECK_TIME_LIMIT_PATIENT`].
pub fn test_budgets() -> [CheckOptions; 2] {
    [
        CheckOptions::default(),
        CheckOptions {
            time_limit: Some(CHECK_TIME_LIMIT_PATIENT),
            step_limit: None,
        },
    ]
}

/// What [`assert_no_violation`] found: no violation, and whether the history was decided.
#[derive(Clone, Debug)]
pub struct NoViolation {
    /// [`CheckResult::Linearizable`] or [`CheckResult::Undecided`].
    pub result: CheckResult,
    /// The work done, over every budget tried.
    pub statistics: CheckStatistics,
    /// Where an undecided history was saved (JSON, an array of [`Operation`]s).
    pub saved: Option<std::path::PathBuf>,
}

/// What test suites do with a history: check it with [`test_budgets`]; panic on a violation,
/// with the explanation and `context` (a seed, the faults); and when even the patient budget
/// cannot decide, do **not** fail — an exhausted search is not evidence of a bug — but say so
/// loudly: a line starting `LINEARIZABILITY UNDECIDED` goes to the process's standard error
/// directly, past the test harness's capture, so it shows in every run, passing or not, and
/// the history is saved as JSON in the temporary directory for a longer look.
///
/// # Panics
/// If the history is not linearizable, or is malformed (see [`validate`]).
pub fn assert_no_violation(operations: &[Operation], context: &str) -> NoViolation {
    assert_no_violation_with(operations, &test_budgets(), context)
}

/// [`assert_no_violation`] with other budgets.
///
/// # Panics
/// If the history is not linearizable, or is malformed (see [`validate`]), or `budgets` is
/// empty.
pub fn assert_no_violation_with(
    operations: &[Operation],
    budgets: &[CheckOptions],
    context: &str,
) -> NoViolation {
    let (result, statistics) = check_with_budgets(operations, budgets);
    let mut saved = None;
    match &result {
        CheckResult::Linearizable => {}
        CheckResult::NotLinearizable { .. } => panic!(
            "history of {} operations is not linearizable ({context}): {result}",
            operations.len()
        ),
        CheckResult::Undecided { .. } => {
            use std::io::Write;
            let note = match save_history(operations) {
                Ok(path) => {
                    let note = format!("history saved to {}", path.display());
                    saved = Some(path);
                    note
                }
                Err(error) => format!("history not saved: {error}"),
            };
            // Not `eprintln!`: the test harness captures that and shows it only on failure.
            let _ = writeln!(
                std::io::stderr().lock(),
                "LINEARIZABILITY UNDECIDED ({context}): history of {} operations, {:?} of \
                 search: {result}; {note}",
                operations.len(),
                statistics.elapsed
            );
        }
    }
    NoViolation {
        result,
        statistics,
        saved,
    }
}

/// Writes an undecided history to the temporary directory, for a longer look: read it back
/// with `keyval::codec::decode::<Vec<Operation>>` and check it with [`check_with_options`]
/// without limits. (The codec, not JSON: the library does not depend on a JSON crate.)
fn save_history(operations: &[Operation]) -> Result<std::path::PathBuf, String> {
    let path = std::env::temp_dir().join(format!(
        "keyval-undecided-{}-{:08x}.history",
        std::process::id(),
        rand::random::<u32>()
    ));
    let bytes = crate::codec::encode(operations).map_err(|error| error.to_string())?;
    std::fs::write(&path, bytes).map_err(|error| error.to_string())?;
    Ok(path)
}
