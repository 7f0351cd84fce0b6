//! The search for one key: Lowe's version of the Wing–Gong algorithm, as in Porcupine.
//!
//! The calls and returns of the key's required operations (see [`KeyHistory::return_at`])
//! form a doubly linked list in time order. The search walks it from its head: at a call entry
//! it tries to linearize that operation next (the model must accept it from the current
//! value), and if it can, removes ("lifts") the operation's call and return entries and starts
//! again from the head. At the first return entry it meets, it offers the optional operations
//! invoked before it instead: the next operation of each optional class that can change the
//! current value. When none of those can go either, the return entry's operation had to be
//! linearized already and was not: the search backtracks, undoing the last linearization
//! ("unlifts" it) and trying the next candidate after it.
//!
//! A cache of every configuration reached — which operations are linearized, plus the value
//! of the key — stops the search from exploring a configuration twice, or one that an earlier
//! configuration dominates (see [`Cache`]). That is what makes it practical. The key is
//! linearizable once every required operation is linearized.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::key_history::{KeyHistory, Step, ABSENT};

/// Marks "none": the end of the list, no return entry, no call entry, no class.
const NONE: usize = usize::MAX;

/// The head sentinel of the list of required operations' calls and returns.
const HEAD: usize = 0;

/// How often (in steps) the search reads the clock to honour a time limit.
const STEPS_PER_CLOCK_READ: u64 = 1024;

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
    /// included, optional ones that would change nothing left out): the candidates for the
    /// next place in the order.
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
/// first (an optional operation never has to be linearized; where the second takes the next
/// operation of a class, the first takes its own next one, which does the same and was
/// invoked no later), leading to a configuration that again dominates. So once a
/// configuration has been reached, every configuration it dominates is pruned, not just
/// itself.
///
/// Fingerprints are 128 bits and are not checked against the full set: two different
/// configurations share one with probability below `k² / 2^128` for `k` configurations,
/// about 10^-21 for a billion. That keeps an entry at a few dozen bytes however long the
/// history.
#[derive(Default)]
struct Cache {
    buckets: HashMap<u128, Bucket, BuildHasherDefault<PassThroughHasher>>,
    /// The fingerprints alone, for keys without optional operations: the common case, kept
    /// free of an allocation per configuration.
    fingerprints: HashSet<u128, BuildHasherDefault<PassThroughHasher>>,
}

impl Cache {
    /// Adds the configuration; false if it or one that dominates it was already there.
    fn insert(&mut self, linearized: &Linearized, value: u32) -> bool {
        let key = linearized.required_fingerprint ^ fingerprint(u64::from(value) ^ VALUE_SALT);
        if linearized.optional.is_empty() {
            return self.fingerprints.insert(key);
        }
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
        self.fingerprints.len() + self.buckets.values().map(Vec::len).sum::<usize>()
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
    /// Nothing can be linearized before `boundary`'s operation completes: undo the last
    /// linearization and resume where it was made.
    Backtrack { boundary: usize },
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
    cache.insert(&linearized, ABSENT);
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
                let Some(class) = history.class_acting_in(value, index) else {
                    cursor = Cursor::Backtrack { boundary };
                    continue;
                };
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
            Cursor::Backtrack { boundary } => {
                let deepest_so_far = match &dead_end {
                    Some(deepest) => frames.len() > deepest.prefix.len(),
                    None => true,
                };
                if deepest_so_far {
                    let deepest =
                        describe_dead_end(history, &list, &taken, &frames, value, boundary);
                    dead_end = Some(deepest);
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
        };
        let required = call != NONE;
        // An operation with an unknown outcome is taken only if it changes the value and a
        // candidate to go right after it depends on that change (see `is_awaited`).
        let value_after =
            history.steps[operation]
                .apply(value)
                .filter(|&value_after| match resume {
                    Cursor::Optional { boundary, .. } => {
                        value_after != value
                            && is_awaited(history, &list, &taken, boundary, value, value_after)
                    }
                    Cursor::Required { .. }
                        if !history.known[operation] && value_after != value =>
                    {
                        let boundary = first_return_after(&list, call);
                        is_awaited(history, &list, &taken, boundary, value, value_after)
                    }
                    Cursor::Required { .. } | Cursor::Backtrack { .. } => true,
                });
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

/// Whether an operation with an unknown outcome that changes the value from `before` to `after`
/// would be awaited: whether a candidate that could go right after it depends on the change —
/// it reads `after`, or is a compare-and-swap that needs `after` (or, having failed, needs
/// anything but `before`).
///
/// Taking such an operation only then loses no linearization. Take a linearization with the
/// fewest optional operations, and among those, the operations with an unknown outcome as late
/// as possible. Each of them that changes the value is followed by an operation that depends
/// on it. Were it followed by a put or a delete, it could be dropped (if required, it is the
/// only writer of a value read later, so it is never followed by a write before that read).
/// Were it followed by an operation that works the same on either value and changes neither,
/// the two could swap: nothing has to follow an operation with an unknown outcome in real
/// time, and a required one stays before its deadline, which is no earlier than the call of
/// anything linearized before the read it awaits. Were it followed by an optional operation
/// that does nothing after it, that one could be dropped. Nor can it be last. And the
/// operation that follows it is a candidate already before it is taken.
fn is_awaited(
    history: &KeyHistory,
    list: &EntryList,
    taken: &[usize],
    boundary: usize,
    before: u32,
    after: u32,
) -> bool {
    let depends = |step: Step| match step {
        Step::Write(_) => false,
        step => match step.apply(after) {
            None => false,
            Some(unchanged) if unchanged == after => step.apply(before) != Some(before),
            Some(_) => true,
        },
    };
    let mut position = list.next[HEAD];
    while position != boundary {
        if depends(history.steps[list.entries[position].operation]) {
            return true;
        }
        position = list.next[position];
    }
    // The optional compare-and-swaps that act on `after`: the classes after the write classes.
    (history.write_classes.len()..)
        .map_while(|index| history.class_acting_in(after, index))
        .any(|class| {
            history.optional_classes[class]
                .get(taken[class])
                .is_some_and(|&operation| {
                    history.invoked_at[operation] <= list.entries[boundary].time
                })
        })
}

/// The first return entry after `position` in the list.
fn first_return_after(list: &EntryList, mut position: usize) -> usize {
    while list.entries[position].is_call {
        position = list.next[position];
    }
    position
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
    use crate::testkit::linearizability::{ClientId, Operation, Request, Response};

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
