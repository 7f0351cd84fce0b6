//! Turning the search's dead end into an [`Explanation`] a person can debug from.

use std::fmt::{self, Write};

use super::history::{Bytes, MaybeBytes, Operation};
use super::search::{DeadEnd, KeyHistory, Step};

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
    /// included: the candidates for the next place in the order, all of which fail.
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
        history: &KeyHistory<'_>,
        dead_end: &DeadEnd,
    ) -> Explanation {
        let index = |operation: usize| history.indices[operation];
        let value = history.value(dead_end.value);
        let key = operations[index(dead_end.blocked)].key();
        let known = history.known.iter().filter(|known| **known).count();
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
                refusal(history, history.steps[operation], dead_end.value)
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

/// Why `step` cannot come next when the key holds `value`.
fn refusal(history: &KeyHistory<'_>, step: Step, value: u32) -> String {
    let shown = |id: u32| MaybeBytes(history.value(id)).to_string();
    if step.apply(value).is_some() {
        return "possible here, but every order continuing with it fails".to_string();
    }
    match step {
        Step::Read(observed) => format!(
            "it read {} but the key holds {}",
            shown(observed),
            shown(value)
        ),
        Step::CompareAndSwap {
            expected,
            swapped: Some(true),
            ..
        } => format!(
            "it swapped, which needs {} but the key holds {}",
            shown(expected),
            shown(value)
        ),
        Step::CompareAndSwap {
            expected,
            swapped: Some(false),
            ..
        } => format!(
            "it did not swap, but the key holds its expected {}",
            shown(expected)
        ),
        Step::Write(_) | Step::CompareAndSwap { swapped: None, .. } => {
            unreachable!("writes and unknown swaps always apply")
        }
    }
}
