//! Turning the search's dead end into an [`Explanation`] a person can debug from.

use std::fmt::{self, Write};

use super::history::{Bytes, MaybeBytes, Operation, Outcome, Request, Response};
use super::key_history::KeyHistory;
use super::search::DeadEnd;

/// At most this many operations of the linearizable prefix are printed (the last ones).
const PREFIX_SHOWN_MAX: usize = 10;

/// At most this many candidate operations are printed.
const CANDIDATES_SHOWN_MAX: usize = 20;

/// Why one key's history is not linearizable: the furthest the search got, and where it
/// stuck. Operations are named by their position in the slice given to
/// [`check`](super::check). `Display` renders all of it as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The longest linearizable prefix found, in linearization order.
    pub prefix: Vec<usize>,
    /// The key's value after that prefix (`None`: absent).
    pub value_after_prefix: Option<Vec<u8>>,
    /// An operation that completed without any way to have linearized it by then: after the
    /// prefix, no operation pending at its completion can go next without reaching a
    /// contradiction.
    pub blocked: usize,
    /// Every operation invoked before `blocked` completed and not in the prefix, `blocked`
    /// included, leaving out operations with an unknown outcome that would change nothing
    /// there: the candidates for the next place in the order, all of which fail.
    pub candidates: Vec<usize>,
    text: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

impl Explanation {
    /// Builds the explanation of `dead_end`, found while checking `history` (one key of
    /// `operations`).
    pub(super) fn new(
        operations: &[Operation],
        history: &KeyHistory,
        dead_end: &DeadEnd,
    ) -> Explanation {
        let index = |operation: usize| history.indices[operation];
        let prefix: Vec<usize> = dead_end
            .prefix
            .iter()
            .map(|&operation| index(operation))
            .collect();
        let value = replay(operations, &prefix);
        let key = operations[index(dead_end.blocked)].key();
        let known = history
            .indices
            .iter()
            .filter(|&&index| operations[index].is_known())
            .count();
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "key {}: its {} operations ({known} with a known outcome) have no linearization.",
            Bytes(key),
            history.steps.len()
        );
        if dead_end.prefix.is_empty() {
            let _ = writeln!(text, "No operation can be linearized first.");
        } else {
            let skipped = dead_end.prefix.len().saturating_sub(PREFIX_SHOWN_MAX);
            let _ = write!(
                text,
                "The longest linearizable prefix found has {} operations",
                dead_end.prefix.len()
            );
            if skipped > 0 {
                let _ = write!(text, " (the last {PREFIX_SHOWN_MAX} shown)");
            }
            let _ = writeln!(text, ":");
            for &operation in &dead_end.prefix[skipped..] {
                let _ = writeln!(
                    text,
                    "  #{} {}",
                    index(operation),
                    operations[index(operation)]
                );
            }
            let _ = writeln!(text, "after which the key holds {}.", MaybeBytes(value));
        }
        let blocked = index(dead_end.blocked);
        let _ = writeln!(
            text,
            "Then #{blocked} ({}) completes, but none of the operations pending by then can go next:",
            operations[blocked]
        );
        for &operation in dead_end.candidates.iter().take(CANDIDATES_SHOWN_MAX) {
            let _ = writeln!(
                text,
                "  #{} {}: {}",
                index(operation),
                operations[index(operation)],
                refusal(
                    &operations[index(operation)],
                    value,
                    history.steps[operation].apply(dead_end.value).is_some()
                )
            );
        }
        if dead_end.candidates.len() > CANDIDATES_SHOWN_MAX {
            let _ = writeln!(
                text,
                "  ... and {} more",
                dead_end.candidates.len() - CANDIDATES_SHOWN_MAX
            );
        }
        Explanation {
            prefix: dead_end
                .prefix
                .iter()
                .map(|&operation| index(operation))
                .collect(),
            value_after_prefix: value.map(<[u8]>::to_vec),
            blocked,
            candidates: dead_end
                .candidates
                .iter()
                .map(|&operation| index(operation))
                .collect(),
            text,
        }
    }
}

/// The key's value after the operations at `prefix`, taken in that order.
fn replay<'a>(operations: &'a [Operation], prefix: &[usize]) -> Option<&'a [u8]> {
    let mut value: Option<&[u8]> = None;
    for &index in prefix {
        let operation = &operations[index];
        match (&operation.request, &operation.outcome) {
            (Request::Put { value: new, .. }, _) => value = Some(new),
            (Request::Delete { .. }, _) => value = None,
            (Request::CompareAndSwap { expected, new, .. }, outcome) => {
                let swapped = match outcome {
                    Outcome::Ok(Response::CompareAndSwap(swapped)) => *swapped,
                    _ => value == expected.as_deref(),
                };
                if swapped {
                    value = Some(new);
                }
            }
            (Request::Get { .. }, _) => {}
        }
    }
    value
}

/// Why `operation` cannot come next when the key holds `value`; `applies` says whether the
/// model accepts it there (and only the rest of the search failed).
fn refusal(operation: &Operation, value: Option<&[u8]>, applies: bool) -> String {
    if applies {
        return "possible here, but every order continuing with it fails".to_string();
    }
    let value = MaybeBytes(value);
    match (&operation.request, &operation.outcome) {
        (Request::Get { .. }, Outcome::Ok(Response::Get(read))) => format!(
            "it read {} but the key holds {value}",
            MaybeBytes(read.as_deref())
        ),
        (Request::CompareAndSwap { expected, .. }, Outcome::Ok(Response::CompareAndSwap(true))) => {
            format!(
                "it swapped, which needs {} but the key holds {value}",
                MaybeBytes(expected.as_deref())
            )
        }
        (Request::CompareAndSwap { .. }, Outcome::Ok(Response::CompareAndSwap(false))) => {
            format!("it did not swap, but the key holds its expected {value}")
        }
        (Request::CompareAndSwap { expected, .. }, Outcome::Unknown) => format!(
            "its outcome is unknown, but it alone writes a value read later, so it swapped, \
             which needs {} but the key holds {value}",
            MaybeBytes(expected.as_deref())
        ),
        _ => unreachable!("writes always apply"),
    }
}
