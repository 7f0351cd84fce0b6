//! The search for one key: Lowe's version of the Wing–Gong algorithm, as in Porcupine.
//!
//! The key's operations become a doubly linked list of call and return entries in time order.
//! The search walks the list from its head: at a call entry it tries to linearize that
//! operation next (the model must accept it from the current state), and if it can, removes
//! ("lifts") the operation's call and return entries and starts again from the head. Reaching a
//! return entry means its operation had to be linearized already and was not: the search
//! backtracks, undoing the last linearization ("unlifts" it) and trying the next call entry
//! after it. A cache of every configuration reached — which operations are linearized (a
//! bitset) plus the value of the key — stops the search from exploring the same configuration
//! twice, which is what makes it practical.
//!
//! Operations with an unknown outcome have no return entry: nothing forces them to be
//! linearized, so they may be linearized anywhere after their invocation or left out. The key
//! is linearizable once every operation with a return entry is linearized.
//!
//! Two reductions, both exact, keep operations with an unknown outcome from multiplying the
//! configurations: an unknown operation that alone writes a value some operation observes is
//! given a return entry where the first observer completes (see `KeyHistory::return_at`), and
//! interchangeable unknown operations are linearized in invocation order (see
//! `KeyHistory::optional_classes`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::history::{Operation, Outcome, Request, Response};

/// The value id of an absent key.
const ABSENT: u32 = 0;

/// The value id shared by every value that no get returns and no compare-and-swap expects.
/// No operation can tell such values apart (each differs from everything a get or a
/// compare-and-swap looks for), so the search does not either, and explores fewer states.
const UNOBSERVED: u32 = 1;

/// Observed values get ids from here up.
const FIRST_OBSERVED: u32 = 2;

/// Marks "no entry" in the linked list and "no return entry" on a call entry.
const NONE: usize = usize::MAX;

/// The head sentinel of the list of required operations' calls and returns.
const HEAD: usize = 0;

/// How often (in steps) the search reads the clock to honour a time limit.
const STEPS_PER_CLOCK_READ: u64 = 1024;

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
    write_classes: Vec<usize>,
    /// By value id, the optional classes of compare-and-swaps that expect it: the only value
    /// in which they do anything.
    swap_classes: HashMap<u32, Vec<usize>>,
}

impl KeyHistory {
    /// The `index`-th optional class that can change the value when it is `value`, if there
    /// are that many.
    fn class_acting_in(&self, value: u32, index: usize) -> Option<usize> {
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

/// Limits on the work of one check, shared by all its keys.
pub(super) struct Budget {
    pub(super) deadline: Option<Instant>,
    pub(super) step_limit: Option<u64>,
    /// Steps taken so far, over all keys.
    pub(super) steps: u64,
}

impl Budget {
    /// Takes one step; false once the budget is spent.
    fn spend_step(&mut self) -> bool {
        if self.step_limit.is_some_and(|limit| self.steps >= limit) {
            return false;
        }
        self.steps += 1;
        match self.deadline {
            Some(deadline) if self.steps % STEPS_PER_CLOCK_READ == 1 => Instant::now() < deadline,
            _ => true,
        }
    }
}

/// Where the search got furthest before failing: a linearizable prefix, and a return entry
/// that nothing after that prefix could get past. Operations are local numbers.
pub(super) struct DeadEnd {
    /// The longest linearizable prefix found, in linearization order.
    pub(super) prefix: Vec<usize>,
    /// The key's value (an id) after the prefix.
    pub(super) value: u32,
    /// The operation whose completion was reached without it being linearized.
    pub(super) blocked: usize,
    /// Every operation invoked before that completion and not in the prefix (the blocked one
    /// included): the candidates for the next place in the order.
    pub(super) candidates: Vec<usize>,
}

/// The verdict on one key.
pub(super) enum Verdict {
    Linearizable,
    NotLinearizable(DeadEnd),
    OutOfBudget,
}

/// One entry of a list: the call or the return of an operation.
#[derive(Clone, Copy)]
struct Entry {
    operation: usize,
    /// When the call or return happened.
    time: u64,
    /// For a call entry, its operation's return entry; `NONE` for a return entry.
    return_entry: usize,
    is_call: bool,
}

/// The doubly linked list of the calls and returns of the required operations in time
/// order, with removal and exact reinsertion (dancing links). Optional operations are not in
/// it: the search takes them from their classes, after the required ones.
struct EntryList {
    entries: Vec<Entry>,
    next: Vec<usize>,
    previous: Vec<usize>,
}

impl EntryList {
    fn new(history: &KeyHistory) -> EntryList {
        // (time, 0 for a call and 1 for a return, operation): at equal times calls sort first,
        // so operations that touch at one instant count as concurrent.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * history.steps.len());
        for (operation, return_at) in history.return_at.iter().enumerate() {
            if let Some(return_at) = *return_at {
                events.push((history.invoked_at[operation], 0, operation));
                events.push((return_at, 1, operation));
            }
        }
        events.sort_unstable();
        let mut entries = Vec::with_capacity(events.len() + 1);
        entries.push(Entry {
            operation: NONE,
            time: 0,
            return_entry: NONE,
            is_call: false,
        });
        let mut call_entries = vec![NONE; history.steps.len()];
        for (time, kind, operation) in events {
            let position = entries.len();
            if kind == 0 {
                call_entries[operation] = position;
            } else {
                let call = call_entries[operation];
                debug_assert_ne!(call, NONE, "a return sorts after its call");
                entries[call].return_entry = position;
            }
            entries.push(Entry {
                operation,
                time,
                return_entry: NONE,
                is_call: kind == 0,
            });
        }
        let count = entries.len();
        EntryList {
            entries,
            next: (1..=count)
                .map(|next| if next < count { next } else { NONE })
                .collect(),
            previous: (0..count)
                .map(|position| position.checked_sub(1).unwrap_or(NONE))
                .collect(),
        }
    }

    fn remove(&mut self, position: usize) {
        let (previous, next) = (self.previous[position], self.next[position]);
        self.next[previous] = next;
        if next != NONE {
            self.previous[next] = previous;
        }
    }

    /// Puts back an entry removed by [`remove`](Self::remove); removals must be undone in
    /// reverse order.
    fn reinsert(&mut self, position: usize) {
        let (previous, next) = (self.previous[position], self.next[position]);
        self.next[previous] = position;
        if next != NONE {
            self.previous[next] = position;
        }
    }

    /// Removes an operation's call entry and its return entry.
    fn lift(&mut self, call: usize) {
        self.remove(call);
        self.remove(self.entries[call].return_entry);
    }

    /// Undoes [`lift`](Self::lift).
    fn unlift(&mut self, call: usize) {
        self.reinsert(self.entries[call].return_entry);
        self.reinsert(call);
    }
}

/// Which operations the search has linearized, as the cache sees them: the required ones
/// (those with a return entry) as a 128-bit fingerprint maintained as members come and go
/// (Zobrist hashing), the optional ones as a bitset.
struct Linearized {
    required_fingerprint: u128,
    optional: Vec<u64>,
    /// By local operation number: for an optional operation, its bit in `optional`; `NONE`
    /// for a required one.
    optional_bits: Vec<usize>,
}

impl Linearized {
    fn new(history: &KeyHistory) -> Linearized {
        let mut optional_bits = vec![NONE; history.steps.len()];
        let mut optional_count = 0;
        for &operation in history.optional_classes.iter().flatten() {
            optional_bits[operation] = optional_count;
            optional_count += 1;
        }
        Linearized {
            required_fingerprint: 0,
            optional: vec![0; optional_count.div_ceil(64)],
            optional_bits,
        }
    }

    fn toggle(&mut self, operation: usize) {
        match self.optional_bits[operation] {
            NONE => self.required_fingerprint ^= fingerprint(operation as u64),
            bit => self.optional[bit / 64] ^= 1 << (bit % 64),
        }
    }
}

/// The optional operations linearized in configurations that share a fingerprint.
type Bucket = Vec<Box<[u64]>>;

/// The configurations the search has reached: for each fingerprint of (required operations
/// linearized, value), the sets of optional operations linearized with them.
///
/// A configuration dominates another with the same required operations and value whose
/// optional operations are a superset of its own: every move open to the second is open to the
/// first (an optional operation never has to be linearized), leading to a configuration that
/// again dominates. So once a configuration has been reached, every configuration it
/// dominates is pruned, not just itself.
///
/// Fingerprints are 128 bits and are not checked against the full set: two different
/// configurations share one with probability below `k² / 2^128` for `k` configurations,
/// about 10^-21 for a billion. That keeps an entry at a few dozen bytes however long the
/// history.
#[derive(Default)]
struct Cache {
    buckets: HashMap<u128, Bucket, BuildHasherDefault<PassThroughHasher>>,
}

impl Cache {
    /// Adds the configuration; false if it or one that dominates it was already there.
    fn insert(&mut self, linearized: &Linearized, value: u32) -> bool {
        let key = linearized.required_fingerprint ^ fingerprint(u64::from(value) ^ VALUE_SALT);
        let bucket = self.buckets.entry(key).or_default();
        let optional = &linearized.optional;
        if bucket.iter().any(|seen| is_subset(seen, optional)) {
            return false;
        }
        bucket.retain(|seen| !is_subset(optional, seen));
        bucket.push(optional.clone().into_boxed_slice());
        true
    }

    fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }
}

/// Keeps value fingerprints apart from operation fingerprints.
const VALUE_SALT: u64 = 0x5851_f42d_4c95_7f2d;

fn is_subset(smaller: &[u64], larger: &[u64]) -> bool {
    smaller
        .iter()
        .zip(larger)
        .all(|(small, large)| small & !large == 0)
}

/// The cache's keys are already well mixed fingerprints: use them as they are.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = mix(self.0 ^ u64::from(byte));
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// A 128-bit fingerprint of a number: two independent splitmix64 outputs.
fn fingerprint(value: u64) -> u128 {
    (u128::from(mix(value)) << 64) | u128::from(mix(value ^ 0xd1b5_4a32_d192_ed03))
}

/// splitmix64's finalizer: a cheap bijection that spreads every input bit over the output.
fn mix(value: u64) -> u64 {
    let mut mixed = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^ (mixed >> 31)
}

/// A linearization made during the search, to undo on backtracking.
struct Frame {
    operation: usize,
    /// The operation's call entry if it is required; `NONE` if it is optional.
    call: usize,
    /// The operation's class if it is optional; `NONE` if it is required.
    class: usize,
    value_before: u32,
    /// Where the search continues when it undoes this linearization: after the operation's
    /// call entry, or after its class.
    resume: Cursor,
}

/// Where the search is looking for the next operation to linearize.
#[derive(Clone, Copy)]
enum Cursor {
    /// Walking the required list; at its first return entry it turns to the optional classes.
    Required { position: usize },
    /// Walking the optional classes that can change the current value, from the `index`-th,
    /// offering each class's next operation if it was invoked before `boundary`, the first
    /// return entry of the required list.
    Optional { index: usize, boundary: usize },
}

/// What a search did, for measurements.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SearchCounts {
    /// Configurations kept in the cache when the search ended.
    pub(super) configurations: usize,
}

/// Searches for a linearization of one key's history, within `budget`.
pub(super) fn search(history: &KeyHistory, budget: &mut Budget) -> (Verdict, SearchCounts) {
    let mut list = EntryList::new(history);
    let mut required_remaining = history.return_at.iter().filter(|at| at.is_some()).count();
    let mut linearized = Linearized::new(history);
    // How many operations of each optional class are linearized: always a prefix.
    let mut taken = vec![0; history.optional_classes.len()];
    let mut cache = Cache::default();
    let mut frames: Vec<Frame> = Vec::new();
    let mut value = ABSENT;
    let mut dead_end: Option<DeadEnd> = None;
    let mut cursor = Cursor::Required {
        position: list.next[HEAD],
    };
    let verdict = loop {
        if required_remaining == 0 {
            break Verdict::Linearizable;
        }
        if !budget.spend_step() {
            break Verdict::OutOfBudget;
        }
        // The operation to try next, and where to go if it fails or is undone.
        let (operation, call, class, resume) = match cursor {
            Cursor::Required { position } => {
                // A required operation's return entry is still in the list, and the walk
                // stops at the first return entry it meets, so it never runs off the end.
                assert_ne!(position, NONE, "search walked past every return entry");
                let entry = list.entries[position];
                if !entry.is_call {
                    cursor = Cursor::Optional {
                        index: 0,
                        boundary: position,
                    };
                    continue;
                }
                let resume = Cursor::Required {
                    position: list.next[position],
                };
                (entry.operation, position, NONE, resume)
            }
            Cursor::Optional { index, boundary } => {
                match history.class_acting_in(value, index) {
                    Some(class) => {
                        let resume = Cursor::Optional {
                            index: index + 1,
                            boundary,
                        };
                        match history.optional_classes[class].get(taken[class]) {
                            Some(&operation)
                                if history.invoked_at[operation] <= list.entries[boundary].time =>
                            {
                                (operation, NONE, class, resume)
                            }
                            _ => {
                                cursor = resume;
                                continue;
                            }
                        }
                    }
                    None => {
                        // Nothing can go before the boundary's operation completes: back up.
                        let deepest_so_far = match &dead_end {
                            Some(deepest) => frames.len() > deepest.prefix.len(),
                            None => true,
                        };
                        if deepest_so_far {
                            dead_end = Some(describe_dead_end(
                                history, &list, &taken, &frames, value, boundary,
                            ));
                        }
                        let Some(frame) = frames.pop() else {
                            break Verdict::NotLinearizable(dead_end.expect("recorded just above"));
                        };
                        linearized.toggle(frame.operation);
                        value = frame.value_before;
                        if frame.call == NONE {
                            taken[frame.class] -= 1;
                        } else {
                            required_remaining += 1;
                            list.unlift(frame.call);
                        }
                        cursor = frame.resume;
                        continue;
                    }
                }
            }
        };
        let required = call != NONE;
        // An optional operation that would change nothing is better left for later: taking
        // it now only closes options.
        let value_after = history.steps[operation]
            .apply(value)
            .filter(|value_after| required || *value_after != value);
        if let Some(value_after) = value_after {
            linearized.toggle(operation);
            if cache.insert(&linearized, value_after) {
                frames.push(Frame {
                    operation,
                    call,
                    class,
                    value_before: value,
                    resume,
                });
                value = value_after;
                if required {
                    required_remaining -= 1;
                    list.lift(call);
                } else {
                    taken[class] += 1;
                }
                cursor = Cursor::Required {
                    position: list.next[HEAD],
                };
                continue;
            }
            linearized.toggle(operation);
        }
        cursor = resume;
    };
    let counts = SearchCounts {
        configurations: cache.len(),
    };
    (verdict, counts)
}

/// Captures the search's position when nothing can be linearized before the return entry
/// at `boundary`.
fn describe_dead_end(
    history: &KeyHistory,
    list: &EntryList,
    taken: &[usize],
    frames: &[Frame],
    value: u32,
    boundary: usize,
) -> DeadEnd {
    let mut candidates = Vec::new();
    let mut position = list.next[HEAD];
    while position != boundary {
        candidates.push(list.entries[position].operation);
        position = list.next[position];
    }
    let classes = (0..).map_while(|index| history.class_acting_in(value, index));
    for class in classes {
        let members = &history.optional_classes[class][taken[class]..];
        candidates.extend(members.iter().take_while(|&&operation| {
            history.invoked_at[operation] <= list.entries[boundary].time
        }));
    }
    DeadEnd {
        prefix: frames.iter().map(|frame| frame.operation).collect(),
        value,
        blocked: list.entries[boundary].operation,
        candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::linearizability::{ClientId, Request, Response};

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
    fn lift_and_unlift_restore_the_list() {
        let operations = vec![
            Operation::completed(ClientId(1), Request::put("k", "a"), Response::Put, 0, 10),
            Operation::completed(ClientId(2), Request::put("k", "b"), Response::Put, 5, 15),
            Operation::unknown(ClientId(3), Request::delete("k"), 7),
        ];
        let history = KeyHistory::new(&operations, &[0, 1, 2]);
        assert_eq!(history.optional_classes, vec![vec![2]]);
        let mut list = EntryList::new(&history);
        let walk = |list: &EntryList| {
            let mut order = Vec::new();
            let mut position = list.next[HEAD];
            while position != NONE {
                order.push((
                    list.entries[position].operation,
                    list.entries[position].is_call,
                ));
                position = list.next[position];
            }
            order
        };
        let all = vec![(0, true), (1, true), (0, false), (1, false)];
        assert_eq!(walk(&list), all);
        let [first, second] = [1, 2];
        list.lift(second);
        list.lift(first);
        assert_eq!(walk(&list), vec![]);
        list.unlift(first);
        assert_eq!(walk(&list), vec![(0, true), (0, false)]);
        list.unlift(second);
        assert_eq!(walk(&list), all);
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

    #[test]
    fn cache_prunes_equal_and_dominated_configurations() {
        let operations = vec![
            Operation::completed(ClientId(1), Request::put("k", "a"), Response::Put, 0, 10),
            Operation::unknown(ClientId(2), Request::put("k", "b"), 1),
            Operation::unknown(ClientId(3), Request::delete("k"), 2),
        ];
        let history = KeyHistory::new(&operations, &[0, 1, 2]);
        let mut linearized = Linearized::new(&history);
        let mut cache = Cache::default();
        assert!(cache.insert(&linearized, 0));
        assert!(!cache.insert(&linearized, 0), "equal");
        assert!(cache.insert(&linearized, 1), "another value");
        linearized.toggle(1);
        assert!(
            !cache.insert(&linearized, 0),
            "dominated by the empty optional set"
        );
        linearized.toggle(0);
        assert!(cache.insert(&linearized, 0), "another required set");
        linearized.toggle(1);
        assert!(cache.insert(&linearized, 0), "dominates the one before");
        assert_eq!(cache.len(), 3, "the dominated configuration was dropped");
        linearized.toggle(0);
        assert_eq!(linearized.required_fingerprint, 0);
        assert!(!cache.insert(&linearized, 0));
    }
}
