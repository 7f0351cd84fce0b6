//! The store's watch history: what each kind of command records, what a failed command does
//! not, the bounded window, and the history in snapshots (kept across a restore, cut to the
//! restoring node's limits, refused when damaged).

use keyval::kv::{
    Command, Compacted, Event, EventKind, Expect, HistoryLimits, KeyRange, KvStore, LeaseId,
    Operation, Response, Txn, TxnOp,
};
use keyval::{EntryId, LogIndex, StateMachine, Term};

fn apply(store: &mut KvStore, index: u64, command: &Command) -> Response {
    let bytes = command.encode().unwrap();
    Response::decode(&store.apply(EntryId::new(Term(1), LogIndex(index)), &bytes)).unwrap()
}

/// Every event from `from` on, with previous values.
fn events(store: &KvStore, from: u64) -> Vec<Event> {
    store
        .changes_since(LogIndex(from), usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|entry| entry.events(&KeyRange::all(), true))
        .collect()
}

fn summary(events: &[Event]) -> Vec<(u64, EventKind, String)> {
    events
        .iter()
        .map(|event| {
            (
                event.revision.0,
                event.kind,
                String::from_utf8_lossy(&event.key).into_owned(),
            )
        })
        .collect()
}

#[test]
fn each_command_records_its_changes_at_one_revision() {
    let mut store = KvStore::new();
    apply(
        &mut store,
        1,
        &Command::batch(vec![
            Operation::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Operation::Put {
                key: b"b".to_vec(),
                value: b"2".to_vec(),
            },
        ]),
    );
    // Deleting a missing key changes nothing: no revision.
    apply(&mut store, 2, &Command::delete(b"missing".to_vec()));
    let txn = Txn {
        compares: vec![],
        then: vec![
            TxnOp::Put {
                key: b"c".to_vec(),
                value: b"3".to_vec(),
                return_previous: false,
                lease: None,
            },
            TxnOp::Delete {
                key: b"a".to_vec(),
                return_previous: false,
            },
        ],
        otherwise: vec![],
    };
    apply(&mut store, 3, &Command::txn(txn));
    apply(&mut store, 4, &Command::lease_grant(60));
    apply(
        &mut store,
        5,
        &Command::put_with_lease(b"l1".to_vec(), b"x".to_vec(), LeaseId(4)),
    );
    apply(
        &mut store,
        6,
        &Command::put_with_lease(b"l2".to_vec(), b"y".to_vec(), LeaseId(4)),
    );
    apply(&mut store, 7, &Command::lease_revoke(LeaseId(4)));
    apply(&mut store, 8, &Command::delete_range(KeyRange::prefix(b"")));
    use EventKind::{Delete, Put};
    let expected: Vec<(u64, EventKind, String)> = [
        (1, Put, "a"),
        (1, Put, "b"),
        (3, Put, "c"),
        (3, Delete, "a"),
        (5, Put, "l1"),
        (6, Put, "l2"),
        (7, Delete, "l1"),
        (7, Delete, "l2"),
        (8, Delete, "b"),
        (8, Delete, "c"),
    ]
    .into_iter()
    .map(|(revision, kind, key)| (revision, kind, key.to_string()))
    .collect();
    let all = events(&store, 1);
    assert_eq!(summary(&all), expected);
    // A delete carries what the key held; a put its new metadata.
    let revoked = &all[6];
    assert_eq!(revoked.previous.as_ref().unwrap().value, b"x");
    assert_eq!(revoked.metadata, None);
    assert_eq!(all[0].metadata.unwrap().mod_revision, LogIndex(1));
    // Asked without previous values, none are sent.
    let bare = store.changes_since(LogIndex(7), 1).unwrap()[0].events(&KeyRange::all(), false);
    assert!(bare.iter().all(|event| event.previous.is_none()));
    // A range filters the changes of a revision.
    let only_l2 =
        store.changes_since(LogIndex(7), 1).unwrap()[0].events(&KeyRange::prefix(b"l2"), true);
    assert_eq!(summary(&only_l2), vec![(7, Delete, "l2".to_string())]);
}

#[test]
fn a_failed_command_records_nothing() {
    let mut store = KvStore::new();
    apply(&mut store, 1, &Command::put(b"k".to_vec(), b"v".to_vec()));
    // The first put of the batch is rolled back when the comparison fails.
    let failing = Command::batch(vec![
        Operation::Put {
            key: b"other".to_vec(),
            value: b"w".to_vec(),
        },
        Operation::Cas {
            key: b"k".to_vec(),
            expect: Expect::Value(b"not it".to_vec()),
            value: Some(b"x".to_vec()),
        },
    ]);
    assert!(matches!(
        apply(&mut store, 2, &failing),
        Response::ComparisonFailed { .. }
    ));
    // A put attached to a lease that does not exist is refused whole.
    let refused = Command::put_with_lease(b"z".to_vec(), b"v".to_vec(), LeaseId(99));
    assert!(matches!(
        apply(&mut store, 3, &refused),
        Response::Rejected(_)
    ));
    assert_eq!(summary(&events(&store, 1)).len(), 1);
    store.check_invariants();
}

#[test]
fn the_window_is_bounded_and_old_starts_are_compacted() {
    let mut store = KvStore::with_history_limits(HistoryLimits {
        revisions: 10,
        bytes: u64::MAX,
    });
    for index in 1..=25 {
        apply(
            &mut store,
            index,
            &Command::put(b"k".to_vec(), vec![index as u8]),
        );
    }
    assert_eq!(store.compact_revision(), LogIndex(15));
    assert_eq!(
        store.changes_since(LogIndex(15), 100).unwrap_err(),
        Compacted {
            compact_revision: LogIndex(15)
        }
    );
    assert_eq!(store.changes_since(LogIndex(16), 100).unwrap().len(), 10);
    assert_eq!(store.history_size().0, 10);
}

#[test]
fn snapshots_carry_the_history_cut_to_the_restoring_nodes_limits() {
    let mut store = KvStore::new();
    for index in 1..=20 {
        apply(
            &mut store,
            index,
            &Command::put(format!("k{}", index % 3).into_bytes(), vec![index as u8]),
        );
    }
    let bytes = store.snapshot();
    let mut restored = KvStore::new();
    restored.restore(&bytes).unwrap();
    assert_eq!(restored, store);
    assert_eq!(events(&restored, 1), events(&store, 1));

    let mut small = KvStore::with_history_limits(HistoryLimits {
        revisions: 5,
        bytes: u64::MAX,
    });
    small.restore(&bytes).unwrap();
    assert_eq!(small.compact_revision(), LogIndex(15));
    assert_eq!(events(&small, 16), events(&store, 16));
    assert_eq!(
        small.history_limits().revisions,
        5,
        "the node's limits stay"
    );
    // Applying goes on in both alike.
    apply(
        &mut restored,
        21,
        &Command::put(b"n".to_vec(), b"v".to_vec()),
    );
    apply(&mut small, 21, &Command::put(b"n".to_vec(), b"v".to_vec()));
    assert_eq!(events(&small, 21), events(&restored, 21));
}

#[test]
fn every_cut_or_flipped_byte_of_the_history_is_refused_and_changes_nothing() {
    let mut store = KvStore::new();
    apply(&mut store, 1, &Command::put(b"a".to_vec(), b"1".to_vec()));
    apply(&mut store, 2, &Command::put(b"a".to_vec(), b"2".to_vec()));
    apply(&mut store, 3, &Command::delete(b"a".to_vec()));
    let bytes = store.snapshot();
    let mut without = KvStore::new();
    apply(&mut without, 1, &Command::put(b"z".to_vec(), b"9".to_vec()));
    let before = without.clone();
    // The history is at the end: every cut inside it must fail.
    for cut in 0..bytes.len() {
        let mut target = without.clone();
        assert!(target.restore(&bytes[..cut]).is_err(), "cut at {cut}");
        assert_eq!(target, before);
    }
    for position in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[position] ^= 0x40;
        let mut target = without.clone();
        if target.restore(&flipped).is_err() {
            assert_eq!(target, before);
        }
    }
}
