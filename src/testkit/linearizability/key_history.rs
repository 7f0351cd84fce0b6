//! One key's operations compiled for the search: values interned as small ids, each
//! operation reduced to a [`Step`] on the key's value, and the facts about operations with an
//! unknown outcome that let the search skip most of the orders it would otherwise try.
//!
//! Two reductions, both exact, keep operations with an unknown outcome from multiplying the
//! configurations: an unknown operation that alone writes a value some operation observes must
//! take effect before its first observer completes (see [`KeyHistory::return_at`]), and
//! interchangeable unknown operations are linearized in invocation order (see
//! [`KeyHistory::optional_classes`]). Values nobody observes are merged into one.

use std::collections::HashMap;

use super::history::{Operation, Outcome, Request, Response};

/// The value id of an absent key.
pub(super) const ABSENT: u32 = 0;

/// The value id shared by every value that no get returns and no compare-and-swap expects.
/// No operation can tell such values apart (each differs from everything a get or a
/// compare-and-swap looks for), so the search does not either, and explores fewer states.
const UNOBSERVED: u32 = 1;

/// Observed values get ids from here up.
const FIRST_OBSERVED: u32 = 2;

/// What one operation does to the key's value, with values interned as ids. Put and delete
/// always take effect, whether their outcome is known or not, so both are writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Step {
    /// Sets the value (`ABSENT` for a delete).
    Write(u32),
    /// Observed the value.
    Read(u32),
    /// Compare-and-swap; `swapped` is `None` when the outcome is unknown.
    CompareAndSwap {
        expected: u32,
        new: u32,
        swapped: Option<bool>,
    },
}

impl Step {
    /// The value after this step from `value`, or `None` if the step cannot happen there.
    pub(super) fn apply(self, value: u32) -> Option<u32> {
        match self {
            Step::Write(new) => Some(new),
            Step::Read(observed) => (observed == value).then_some(value),
            Step::CompareAndSwap {
                expected,
                new,
                swapped: Some(true),
            } => (value == expected).then_some(new),
            Step::CompareAndSwap {
                expected,
                swapped: Some(false),
                ..
            } => (value != expected).then_some(value),
            Step::CompareAndSwap {
                expected,
                new,
                swapped: None,
            } => Some(if value == expected { new } else { value }),
        }
    }
}

/// The operations of one key, compiled for the search.
pub(super) struct KeyHistory {
    /// Positions in the checked slice, by local operation number.
    pub(super) indices: Vec<usize>,
    /// What each operation does, by local operation number.
    pub(super) steps: Vec<Step>,
    /// By local operation number, the time by which the operation must have taken effect:
    /// its completion if its outcome is known; `None` if it may also never take effect.
    ///
    /// An operation with an unknown outcome gets a time too when it is the only operation that
    /// writes a value that a get with a known outcome returns, or that a compare-and-swap known
    /// to have swapped expects: every linearization must place it before the first such
    /// observer completes (and, for a compare-and-swap, have it swap). Making that explicit
    /// stops the search from trying the histories in which it never took effect, one doubling
    /// of the configurations per such operation.
    pub(super) return_at: Vec<Option<u64>>,
    /// By local operation number, when the operation was invoked.
    pub(super) invoked_at: Vec<u64>,
    /// By local operation number, whether the operation's outcome is known.
    pub(super) known: Vec<bool>,
    /// The operations with no time in `return_at` (optional: they may never take effect),
    /// grouped by step, each group in invocation order.
    ///
    /// Operations in one group are interchangeable: whenever a later one may take effect, so
    /// may an earlier one (neither must ever complete), with the same effect. So if any
    /// linearization exists, one exists in which each group's operations take effect in
    /// invocation order, and the search only looks for those: it treats each group as a queue.
    /// Without this, `k` lost writes of the same value (or of unobserved values) that never
    /// took effect would cost `2^k` sets to explore; with it, `k + 1`.
    pub(super) optional_classes: Vec<Vec<usize>>,
    /// The optional classes whose operations write whatever the value (puts and deletes).
    pub(super) write_classes: Vec<usize>,
    /// By value id, the optional classes of compare-and-swaps that expect it: the only value
    /// in which they do anything.
    swap_classes: HashMap<u32, Vec<usize>>,
}

impl KeyHistory {
    /// The `index`-th optional class that can change the value when it is `value`, if there
    /// are that many.
    pub(super) fn class_acting_in(&self, value: u32, index: usize) -> Option<usize> {
        match self.write_classes.get(index) {
            Some(&class) => Some(class),
            None => self
                .swap_classes
                .get(&value)?
                .get(index - self.write_classes.len())
                .copied(),
        }
    }

    /// Compiles the operations at `indices` of `operations`, all on one key. Gets with an
    /// unknown outcome constrain nothing and are left out.
    pub(super) fn new(operations: &[Operation], indices: &[usize]) -> KeyHistory {
        let mut ids: HashMap<&[u8], u32> = HashMap::new();
        for &index in indices {
            let operation = &operations[index];
            let observed = match (&operation.request, &operation.outcome) {
                (Request::Get { .. }, Outcome::Ok(Response::Get(Some(value)))) => value,
                (
                    Request::CompareAndSwap {
                        expected: Some(value),
                        ..
                    },
                    _,
                ) => value,
                _ => continue,
            };
            let next_id = FIRST_OBSERVED + u32::try_from(ids.len()).expect("under 2^31 values");
            ids.entry(observed).or_insert(next_id);
        }
        let intern = |value: Option<&[u8]>| match value {
            None => ABSENT,
            Some(bytes) => ids.get(bytes).copied().unwrap_or(UNOBSERVED),
        };
        let mut kept = Vec::with_capacity(indices.len());
        let mut steps = Vec::with_capacity(indices.len());
        let mut return_at = Vec::with_capacity(indices.len());
        for &index in indices {
            let operation = &operations[index];
            let response = match &operation.outcome {
                Outcome::Ok(response) => Some(response),
                Outcome::Unknown => None,
            };
            let step = match (&operation.request, response) {
                (Request::Get { .. }, None) => continue,
                (Request::Get { .. }, Some(Response::Get(value))) => {
                    Step::Read(intern(value.as_deref()))
                }
                (Request::Put { value, .. }, _) => Step::Write(intern(Some(value))),
                (Request::Delete { .. }, _) => Step::Write(ABSENT),
                (Request::CompareAndSwap { expected, new, .. }, response) => Step::CompareAndSwap {
                    expected: intern(expected.as_deref()),
                    new: intern(Some(new)),
                    swapped: response.map(|response| match response {
                        Response::CompareAndSwap(swapped) => *swapped,
                        other => panic!("operation {index}: cas answered by {other:?}"),
                    }),
                },
                (request, Some(response)) => {
                    panic!("operation {index}: {request} answered by a {response:?} response")
                }
            };
            kept.push(index);
            steps.push(step);
            return_at.push(response.map(|_| operation.completed_at));
        }
        must_take_effect_before_observed(operations, &kept, &mut steps, &mut return_at);
        let invoked_at: Vec<u64> = kept
            .iter()
            .map(|&index| operations[index].invoked_at)
            .collect();
        let known = kept
            .iter()
            .map(|&index| operations[index].is_known())
            .collect();
        let mut optional: Vec<usize> = (0..kept.len())
            .filter(|&local| return_at[local].is_none())
            .collect();
        optional.sort_by_key(|&local| (invoked_at[local], local));
        let mut class_of_step: HashMap<Step, usize> = HashMap::new();
        let mut optional_classes: Vec<Vec<usize>> = Vec::new();
        for local in optional {
            let class = *class_of_step.entry(steps[local]).or_insert_with(|| {
                optional_classes.push(Vec::new());
                optional_classes.len() - 1
            });
            optional_classes[class].push(local);
        }
        let mut write_classes = Vec::new();
        let mut swap_classes: HashMap<u32, Vec<usize>> = HashMap::new();
        for (class, members) in optional_classes.iter().enumerate() {
            match steps[members[0]] {
                Step::Write(_) => write_classes.push(class),
                Step::CompareAndSwap { expected, new, .. } if expected != new => {
                    swap_classes.entry(expected).or_default().push(class);
                }
                // A swap to the value it expects, or a read, never changes anything.
                Step::CompareAndSwap { .. } | Step::Read(_) => {}
            }
        }
        KeyHistory {
            indices: kept,
            steps,
            return_at,
            invoked_at,
            known,
            optional_classes,
            write_classes,
            swap_classes,
        }
    }
}

/// Gives a return time to each operation with an unknown outcome that is the only writer of a
/// value observed by an operation with a known outcome (see [`KeyHistory::return_at`]).
fn must_take_effect_before_observed(
    operations: &[Operation],
    indices: &[usize],
    steps: &mut [Step],
    return_at: &mut [Option<u64>],
) {
    // Per observed value id: how many operations may write it, the last of them, and the
    // earliest completion of a known operation that needs it.
    let mut writers: HashMap<u32, (usize, usize)> = HashMap::new();
    let mut first_needed: HashMap<u32, u64> = HashMap::new();
    for (local, step) in steps.iter().enumerate() {
        let (written, needed) = match *step {
            Step::Write(value) => (Some(value), None),
            Step::Read(value) => (None, Some(value)),
            Step::CompareAndSwap {
                expected,
                new,
                swapped,
            } => (
                (swapped != Some(false)).then_some(new),
                (swapped == Some(true)).then_some(expected),
            ),
        };
        if let Some(value) = written.filter(|value| *value >= FIRST_OBSERVED) {
            let entry = writers.entry(value).or_insert((0, local));
            *entry = (entry.0 + 1, local);
        }
        if let (Some(value), Some(completed_at)) = (needed, return_at[local]) {
            let earliest = first_needed.entry(value).or_insert(completed_at);
            *earliest = (*earliest).min(completed_at);
        }
    }
    for (value, (count, writer)) in writers {
        let (1, Some(&needed_by)) = (count, first_needed.get(&value)) else {
            continue;
        };
        if return_at[writer].is_some() {
            continue;
        }
        // Clamped to the invocation so that the return entry sorts after the call; when the
        // observer completed before the writer was invoked, the search rejects the history
        // either way.
        return_at[writer] = Some(needed_by.max(operations[indices[writer]].invoked_at));
        if let Step::CompareAndSwap { swapped, .. } = &mut steps[writer] {
            *swapped = Some(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::linearizability::ClientId;

    #[test]
    fn step_apply_follows_register_semantics() {
        let (absent, one, two) = (ABSENT, 1, 2);
        assert_eq!(Step::Write(one).apply(two), Some(one));
        assert_eq!(Step::Read(one).apply(one), Some(one));
        assert_eq!(Step::Read(one).apply(absent), None);
        let swap = |swapped| Step::CompareAndSwap {
            expected: one,
            new: two,
            swapped,
        };
        assert_eq!(swap(Some(true)).apply(one), Some(two));
        assert_eq!(swap(Some(true)).apply(absent), None);
        assert_eq!(swap(Some(false)).apply(absent), Some(absent));
        assert_eq!(swap(Some(false)).apply(one), None);
        assert_eq!(swap(None).apply(one), Some(two));
        assert_eq!(swap(None).apply(absent), Some(absent));
    }

    #[test]
    fn interchangeable_optional_operations_share_a_class() {
        let operations = vec![
            Operation::unknown(ClientId(1), Request::delete("k"), 9),
            Operation::unknown(ClientId(2), Request::put("k", "never read"), 3),
            Operation::unknown(ClientId(3), Request::delete("k"), 4),
            Operation::unknown(ClientId(4), Request::put("k", "also never read"), 1),
            Operation::unknown(ClientId(5), Request::put("k", "read"), 2),
            Operation::completed(
                ClientId(6),
                Request::get("k"),
                Response::Get(Some(b"read".to_vec())),
                5,
                6,
            ),
        ];
        let history = KeyHistory::new(&operations, &[0, 1, 2, 3, 4, 5]);
        // The only writer of a value read must take effect before the read completes.
        assert_eq!(history.return_at[4], Some(6));
        assert_eq!(history.optional_classes, vec![vec![3, 1], vec![2, 0]]);
    }
}
