//! Histories of transactions: operations that read and write several keys at once.
//!
//! Linearizability is compositional only over operations that touch one object, so the
//! per-key search of [`check`](super::check) cannot judge a transaction that compares one key
//! and writes another. This checker searches the whole history against one model of the
//! whole map: Lowe's just-in-time linearization (the Wing–Gong search with a cache of every
//! configuration reached — the set of operations linearized and the map's contents), as in
//! Porcupine's general models. It is exponential in the worst case, so keep the histories it
//! checks small (a few keys, a few thousand operations with unique written values); a search
//! that runs out of time answers [`TxnCheck::Undecided`], never a violation.
//!
//! A transaction is etcd's: `if every guard holds then ops else ops`, each guard a key's value
//! (or its absence), each op a put, a delete or a get; it answers whether the guards held and
//! what its gets read. An operation whose outcome is unknown may have taken effect once at
//! any instant after its invocation, or never; one that writes nothing constrains nothing and
//! is left out.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// One operation of a transaction's branch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TxnStep {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key (absent or not).
    Delete(Vec<u8>),
    /// Read a key; its value is one of the transaction's reads.
    Get(Vec<u8>),
}

/// A transaction as the checker models it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxnRequest {
    /// Each key must hold this value (`None`: be absent) for `then` to run.
    pub guards: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Run when every guard holds.
    pub then: Vec<TxnStep>,
    /// Run otherwise.
    pub otherwise: Vec<TxnStep>,
}

/// What a transaction answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxnResult {
    /// Whether the guards held.
    pub succeeded: bool,
    /// The values its branch's gets read, in order (`None`: absent).
    pub reads: Vec<Option<Vec<u8>>>,
}

/// One recorded transaction. Times as in [`Operation`](super::Operation): monotonic
/// nanoseconds on a clock shared by every client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOperation {
    /// Who issued it.
    pub client: u64,
    /// What was asked.
    pub request: TxnRequest,
    /// When it was sent.
    pub invoked_at: u64,
    /// When the answer arrived (ignored when the outcome is unknown).
    pub completed_at: u64,
    /// The answer; `None` when the client does not know what happened.
    pub outcome: Option<TxnResult>,
}

/// The verdict on a transaction history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnCheck {
    /// Some order of the operations, each at an instant within its interval, is a legal run.
    Linearizable,
    /// None is: the most operations any attempt managed to linearize, and the known
    /// operations it could not place after them.
    NotLinearizable {
        /// The longest linearizable prefix found.
        longest_prefix: Vec<usize>,
    },
    /// The time limit passed before an answer.
    Undecided,
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// Runs `request` on `state`: whether the guards held, what it read, the state after.
fn run(request: &TxnRequest, state: &State) -> (TxnResult, State) {
    let succeeded = request
        .guards
        .iter()
        .all(|(key, expected)| state.get(key) == expected.as_ref());
    let steps = if succeeded {
        &request.then
    } else {
        &request.otherwise
    };
    let mut after = state.clone();
    let mut reads = Vec::new();
    for step in steps {
        match step {
            TxnStep::Put(key, value) => {
                after.insert(key.clone(), value.clone());
            }
            TxnStep::Delete(key) => {
                after.remove(key);
            }
            TxnStep::Get(key) => reads.push(after.get(key).cloned()),
        }
    }
    (TxnResult { succeeded, reads }, after)
}

/// Whether `request` may write (in either branch).
fn writes(request: &TxnRequest) -> bool {
    request
        .then
        .iter()
        .chain(&request.otherwise)
        .any(|step| !matches!(step, TxnStep::Get(_)))
}

#[derive(Clone, Copy)]
struct Entry {
    operation: usize,
    is_call: bool,
}

/// Checks `operations` (starting from an empty map) within `time_limit`.
pub fn check_transactions(operations: &[TxnOperation], time_limit: Duration) -> TxnCheck {
    let started = Instant::now();
    // Unknown operations that write nothing constrain nothing.
    let kept: Vec<usize> = (0..operations.len())
        .filter(|&index| operations[index].outcome.is_some() || writes(&operations[index].request))
        .collect();
    let mut events: Vec<(u64, u8, Entry)> = Vec::new();
    for (local, &index) in kept.iter().enumerate() {
        let operation = &operations[index];
        events.push((
            operation.invoked_at,
            0,
            Entry {
                operation: local,
                is_call: true,
            },
        ));
        if operation.outcome.is_some() {
            // At equal times a call comes first: the two operations overlap.
            events.push((
                operation.completed_at,
                1,
                Entry {
                    operation: local,
                    is_call: false,
                },
            ));
        }
    }
    events.sort_by_key(|(time, order, _)| (*time, *order));
    let entries: Vec<Entry> = events.into_iter().map(|(_, _, entry)| entry).collect();
    // A doubly linked list over the entries, with a sentinel head at index `count`.
    let count = entries.len();
    let head = count;
    let mut next: Vec<usize> = (1..=count).chain([usize::MAX]).collect();
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..count).collect();
    next[head] = if count == 0 { usize::MAX } else { 0 };
    prev[head] = usize::MAX;
    if count > 0 {
        prev[0] = head;
    }
    // Each operation's call and return entries.
    let mut call_of = vec![usize::MAX; kept.len()];
    let mut return_of = vec![usize::MAX; kept.len()];
    for (position, entry) in entries.iter().enumerate() {
        if entry.is_call {
            call_of[entry.operation] = position;
        } else {
            return_of[entry.operation] = position;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, position: usize| {
        let (before, after) = (prev[position], next[position]);
        next[before] = after;
        if after != usize::MAX {
            prev[after] = before;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, position: usize| {
        let (before, after) = (prev[position], next[position]);
        next[before] = position;
        if after != usize::MAX {
            prev[after] = position;
        }
    };
    let words = kept.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut state = State::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut remaining_known = kept
        .iter()
        .filter(|&&index| operations[index].outcome.is_some())
        .count();
    let mut longest: Vec<usize> = Vec::new();
    let mut cursor = next[head];
    let mut steps: u64 = 0;
    loop {
        if remaining_known == 0 {
            return TxnCheck::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(1024) && started.elapsed() > time_limit {
            return TxnCheck::Undecided;
        }
        let entry = (cursor != usize::MAX).then(|| entries[cursor]);
        match entry {
            Some(entry) if entry.is_call => {
                let local = entry.operation;
                let operation = &operations[kept[local]];
                let (result, after) = run(&operation.request, &state);
                let legal = operation
                    .outcome
                    .as_ref()
                    .is_none_or(|outcome| *outcome == result);
                let mut advanced = false;
                if legal {
                    linearized[local / 64] |= 1 << (local % 64);
                    if cache.insert((linearized.clone(), after.clone())) {
                        stack.push((local, std::mem::replace(&mut state, after)));
                        unlink(&mut next, &mut prev, call_of[local]);
                        if return_of[local] != usize::MAX {
                            unlink(&mut next, &mut prev, return_of[local]);
                            remaining_known -= 1;
                        }
                        if stack.len() > longest.len() {
                            longest = stack.iter().map(|(local, _)| kept[*local]).collect();
                        }
                        cursor = next[head];
                        advanced = true;
                    } else {
                        linearized[local / 64] &= !(1 << (local % 64));
                    }
                }
                if !advanced {
                    cursor = next[cursor];
                }
            }
            // A return entry of an operation not linearized yet (or the end of the list):
            // undo the last choice and try the next entry after it.
            _ => {
                let Some((local, before)) = stack.pop() else {
                    return TxnCheck::NotLinearizable {
                        longest_prefix: longest,
                    };
                };
                state = before;
                linearized[local / 64] &= !(1 << (local % 64));
                if return_of[local] != usize::MAX {
                    relink(&mut next, &mut prev, return_of[local]);
                    remaining_known += 1;
                }
                relink(&mut next, &mut prev, call_of[local]);
                cursor = next[call_of[local]];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> TxnRequest {
        TxnRequest {
            guards: vec![],
            then: vec![TxnStep::Put(key.into(), value.into())],
            otherwise: vec![],
        }
    }

    /// `if key == expected then put(key, new) else get(key)`.
    fn swap(key: &str, expected: Option<&str>, new: &str) -> TxnRequest {
        TxnRequest {
            guards: vec![(key.into(), expected.map(Into::into))],
            then: vec![TxnStep::Put(key.into(), new.into())],
            otherwise: vec![TxnStep::Get(key.into())],
        }
    }

    fn read(keys: &[&str]) -> TxnRequest {
        TxnRequest {
            guards: vec![],
            then: keys.iter().map(|key| TxnStep::Get((*key).into())).collect(),
            otherwise: vec![],
        }
    }

    fn done(
        request: TxnRequest,
        at: (u64, u64),
        succeeded: bool,
        reads: &[Option<&str>],
    ) -> TxnOperation {
        TxnOperation {
            client: 0,
            request,
            invoked_at: at.0,
            completed_at: at.1,
            outcome: Some(TxnResult {
                succeeded,
                reads: reads.iter().map(|read| read.map(Into::into)).collect(),
            }),
        }
    }

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_torn_read_of_a_two_key_write_is_a_violation() {
        // One transaction writes a and b; a later read sees the new a and the old b.
        let write_both = TxnRequest {
            guards: vec![],
            then: vec![
                TxnStep::Put(b"a".to_vec(), b"1".to_vec()),
                TxnStep::Put(b"b".to_vec(), b"1".to_vec()),
            ],
            otherwise: vec![],
        };
        let history = vec![
            done(write_both, (0, 10), true, &[]),
            done(read(&["a", "b"]), (20, 30), true, &[Some("1"), None]),
        ];
        assert!(matches!(
            check_transactions(&history, LIMIT),
            TxnCheck::NotLinearizable { .. }
        ));
        // Overlapping, reading both old values is fine; reading both new ones too.
        let mut overlapping = history.clone();
        overlapping[1] = done(read(&["a", "b"]), (5, 30), true, &[None, None]);
        assert_eq!(
            check_transactions(&overlapping, LIMIT),
            TxnCheck::Linearizable
        );
    }

    #[test]
    fn two_successful_swaps_from_the_same_value_are_a_violation_unless_unknown() {
        let history = vec![
            done(put("k", "0"), (0, 1), true, &[]),
            done(swap("k", Some("0"), "x"), (2, 10), true, &[]),
            done(swap("k", Some("0"), "y"), (3, 11), true, &[]),
        ];
        assert!(matches!(
            check_transactions(&history, LIMIT),
            TxnCheck::NotLinearizable { .. }
        ));
        // One of them unknown (it may never have happened): fine.
        let mut unknown = history.clone();
        unknown[2].outcome = None;
        assert_eq!(check_transactions(&unknown, LIMIT), TxnCheck::Linearizable);
        // A failed swap must read the value that made it fail.
        let failed = vec![
            done(put("k", "0"), (0, 1), true, &[]),
            done(swap("k", Some("9"), "x"), (2, 3), false, &[Some("1")]),
        ];
        assert!(matches!(
            check_transactions(&failed, LIMIT),
            TxnCheck::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_unknown_write_may_land_late_but_not_before_its_invocation() {
        let history = vec![
            done(read(&["k"]), (0, 5), true, &[Some("v")]),
            TxnOperation {
                client: 1,
                request: put("k", "v"),
                invoked_at: 10,
                completed_at: 0,
                outcome: None,
            },
        ];
        assert!(matches!(
            check_transactions(&history, LIMIT),
            TxnCheck::NotLinearizable { .. }
        ));
        let mut later = history.clone();
        later[0].invoked_at = 20;
        later[0].completed_at = 30;
        assert_eq!(check_transactions(&later, LIMIT), TxnCheck::Linearizable);
    }
}
