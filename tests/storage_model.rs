//! Property test: random append / conflicting append / compact / sync / hard-state / crash /
//! clean-reopen sequences on file storage over the fault-injecting disk, against a simple
//! model. After every operation the log reads back as the model's log; after a crash it is
//! the synced log, except that entries written but not yet synced may survive as a prefix
//! (a segment roll or a conflict's truncation fsyncs early) — nothing synced is ever lost and
//! nothing that was never written ever appears.

use std::sync::Arc;

use keyval::storage::file::faulty::FaultyFileSystem;
use keyval::storage::file::{FileOptions, FileStorage};
use keyval::storage::Storage;
use keyval::{Entry, EntryId, EntryPayload, HardState, LogIndex, NodeId, Term};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Operation {
    /// Appends `count` entries starting `back` entries before the end (a conflict if > 0).
    Append {
        count: u64,
        back: u64,
    },
    Sync,
    /// Compacts through `last + 3 - back`: sometimes past the end, sometimes a no-op.
    Compact {
        back: u64,
    },
    SaveHardState {
        term: u64,
    },
    Crash,
    /// Drop and reopen without losing anything the OS holds.
    Reopen,
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        6 => (1..12u64, prop_oneof![3 => Just(0u64), 1 => 1..8u64])
            .prop_map(|(count, back)| Operation::Append { count, back }),
        3 => Just(Operation::Sync),
        1 => (0..20u64).prop_map(|back| Operation::Compact { back }),
        1 => (1..5u64).prop_map(|term| Operation::SaveHardState { term }),
        2 => Just(Operation::Crash),
        1 => Just(Operation::Reopen),
    ]
}

/// The log as it should read: entries after `compacted`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Log {
    compacted: u64,
    entries: Vec<Entry>,
}

impl Log {
    fn last(&self) -> u64 {
        self.compacted + self.entries.len() as u64
    }
}

fn options() -> FileOptions {
    FileOptions {
        segment_bytes_max: 300,
        cache_bytes_max: 200,
        ..FileOptions::default()
    }
}

fn open(disk: &FaultyFileSystem) -> FileStorage {
    FileStorage::open_with_file_system("/node", options(), Arc::new(disk.current())).expect("open")
}

fn read_log(storage: &mut FileStorage) -> Log {
    let recovered = storage.recover().expect("recover");
    Log {
        compacted: storage.first_index().0 - 1,
        entries: recovered.entries,
    }
}

fn common_prefix(left: &[Entry], right: &[Entry]) -> usize {
    left.iter()
        .zip(right)
        .take_while(|(left, right)| left == right)
        .count()
}

fn run(operations: Vec<Operation>) -> Result<(), TestCaseError> {
    let disk = FaultyFileSystem::new();
    let mut storage = open(&disk);
    let mut volatile = Log::default();
    let mut synced = Log::default();
    let mut hard_state = HardState::default();
    let mut synced_hard_state = HardState::default();
    for (step, operation) in operations.into_iter().enumerate() {
        match operation {
            Operation::Append { count, back } => {
                let start = (volatile.last() + 1)
                    .saturating_sub(back)
                    .max(volatile.compacted + 1);
                let batch: Vec<Entry> = (start..start + count)
                    .map(|index| Entry {
                        id: EntryId::new(Term(step as u64), LogIndex(index)),
                        payload: EntryPayload::Command(vec![step as u8; (index % 7) as usize]),
                    })
                    .collect();
                storage.append(&batch).expect("append");
                volatile
                    .entries
                    .truncate((start - volatile.compacted - 1) as usize);
                volatile.entries.extend(batch);
            }
            Operation::Sync => {
                storage.sync().expect("sync");
                synced = volatile.clone();
                synced_hard_state = hard_state;
            }
            Operation::Compact { back } => {
                let through = (volatile.last() + 3).saturating_sub(back);
                storage.compact(LogIndex(through)).expect("compact");
                if through > volatile.compacted {
                    let removed = (through - volatile.compacted).min(volatile.entries.len() as u64);
                    volatile.entries.drain(..removed as usize);
                    volatile.compacted = through;
                }
                synced = volatile.clone();
                synced_hard_state = hard_state;
            }
            Operation::SaveHardState { term } => {
                hard_state = HardState {
                    term: Term(term),
                    vote: Some(NodeId(term)),
                };
                storage
                    .save_hard_state(hard_state)
                    .expect("save hard state");
            }
            Operation::Crash => {
                drop(storage);
                disk.crash();
                storage = open(&disk);
                let recovered = read_log(&mut storage);
                prop_assert_eq!(recovered.compacted, synced.compacted, "step {}", step);
                let from_volatile = common_prefix(&recovered.entries, &volatile.entries);
                let from_synced = common_prefix(&recovered.entries, &synced.entries);
                prop_assert!(
                    from_volatile == recovered.entries.len()
                        || from_synced == recovered.entries.len(),
                    "step {}: recovered entries that were never written together",
                    step
                );
                let must_keep = common_prefix(&synced.entries, &volatile.entries);
                prop_assert!(
                    recovered.entries.len() >= must_keep,
                    "step {}: lost synced entries: {} < {}",
                    step,
                    recovered.entries.len(),
                    must_keep
                );
                prop_assert_eq!(storage.recover().unwrap().hard_state, synced_hard_state);
                volatile = recovered.clone();
                synced = recovered;
                hard_state = synced_hard_state;
            }
            Operation::Reopen => {
                drop(storage);
                storage = open(&disk);
                // Unsynced writes are in the files (the OS has them); an unsynced hard state
                // was only in memory.
                hard_state = synced_hard_state;
                prop_assert_eq!(storage.recover().unwrap().hard_state, synced_hard_state);
            }
        }
        let seen = read_log(&mut storage);
        prop_assert_eq!(&seen, &volatile, "step {}", step);
        if let Some(first) = volatile.entries.first().map(Entry::index) {
            // A range that starts on disk and ends in the cache.
            let to = LogIndex(volatile.last() + 1);
            let middle = LogIndex((first.0 + to.0) / 2);
            let read = storage.entries(middle, to).expect("entries");
            let skip = (middle.0 - first.0) as usize;
            prop_assert_eq!(&read[..], &volatile.entries[skip..]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn file_storage_matches_the_model_across_crashes(
        operations in proptest::collection::vec(operation(), 1..80)
    ) {
        run(operations)?;
    }
}

/// An operation for the differential test, with positions relative to the log's end so that
/// both valid and invalid requests come up.
#[derive(Clone, Debug)]
enum Request {
    Append { start_back: u64, count: u64 },
    Entries { from_back: u64, to_back: u64 },
    Compact { back: u64 },
    Sync,
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        4 => (0..8u64, 0..6u64).prop_map(|(start_back, count)| Request::Append { start_back, count }),
        3 => (0..12u64, 0..12u64).prop_map(|(from_back, to_back)| Request::Entries { from_back, to_back }),
        1 => (0..15u64).prop_map(|back| Request::Compact { back }),
        1 => Just(Request::Sync),
    ]
}

/// The same outcome: equal values, or errors of the same kind.
fn same_outcome<T: PartialEq + std::fmt::Debug>(
    file: Result<T, keyval::StorageError>,
    memory: Result<T, keyval::StorageError>,
) -> Result<(), TestCaseError> {
    match (file, memory) {
        (Ok(file), Ok(memory)) => prop_assert_eq!(file, memory),
        (Err(file), Err(memory)) => prop_assert_eq!(
            std::mem::discriminant(&file),
            std::mem::discriminant(&memory),
            "file: {}, memory: {}",
            file,
            memory
        ),
        (file, memory) => prop_assert!(false, "file: {:?}, memory: {:?}", file, memory),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The file storage answers every request, valid or not, exactly as the in-memory twin.
    #[test]
    fn file_storage_agrees_with_mem_storage(requests in proptest::collection::vec(request(), 1..60)) {
        let disk = FaultyFileSystem::new();
        let mut file = open(&disk);
        let mut memory = keyval::storage::mem::MemStorage::new();
        for (step, request) in requests.into_iter().enumerate() {
            let last = file.last_index().0;
            match request {
                Request::Append { start_back, count } => {
                    let start = (last + 2).saturating_sub(start_back);
                    let batch: Vec<Entry> = (start..start + count)
                        .map(|index| Entry {
                            id: EntryId::new(Term(step as u64), LogIndex(index)),
                            payload: EntryPayload::Noop,
                        })
                        .collect();
                    same_outcome(file.append(&batch), memory.append(&batch))?;
                }
                Request::Entries { from_back, to_back } => {
                    let from = LogIndex((last + 2).saturating_sub(from_back));
                    let to = LogIndex((last + 2).saturating_sub(to_back));
                    same_outcome(file.entries(from, to), memory.entries(from, to))?;
                }
                Request::Compact { back } => {
                    let through = LogIndex((last + 3).saturating_sub(back));
                    same_outcome(file.compact(through), memory.compact(through))?;
                }
                Request::Sync => same_outcome(file.sync(), memory.sync())?,
            }
            same_outcome(file.recover(), memory.recover())?;
        }
    }
}
