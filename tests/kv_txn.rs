//! Transactions and range deletes in the key-value state machine: every compare target with
//! every operator on present and absent keys (etcd's rules), atomicity (a failed compare runs
//! only the other branch; an oversized answer applies nothing), one revision per transaction,
//! exactly-once through sessions, the bound on operations, and prefix / range deletes in
//! batches. Method: apply encoded commands at chosen log indexes and decode the answers.

use keyval::codec;
use keyval::kv::{
    Command, Compare, CompareOp, KeyRange, KvError, KvStore, LeaseId, Metadata, Operation,
    Response, Txn, TxnOp, TxnOpResponse, TxnPart, TxnResponse, Versioned,
    PREVIOUS_VALUES_BYTES_MAX, TXN_OPERATIONS_MAX, VALUE_BYTES_MAX,
};
use keyval::{EntryId, LogIndex, StateMachine, Term};

/// Applies `command` at `index` (without validating it first) and decodes the answer.
fn apply(store: &mut KvStore, index: u64, command: &Command) -> Response {
    let bytes = codec::encode(command).expect("commands encode");
    let answer = store.apply(EntryId::new(Term(1), LogIndex(index)), &bytes);
    Response::decode(&answer).expect("apply always returns a response")
}

/// Applies a transaction at `index`; it must be answered as one.
fn txn(store: &mut KvStore, index: u64, txn: Txn) -> TxnResponse {
    match apply(store, index, &Command::txn(txn)) {
        Response::Txn(response) => response,
        other => panic!("a transaction answered {other:?}"),
    }
}

fn put(store: &mut KvStore, index: u64, key: &str, value: &str) {
    let command = Command::put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
    assert!(apply(store, index, &command).is_written());
}

fn value_of(store: &KvStore, key: &str) -> Option<Vec<u8>> {
    store.get(key.as_bytes()).map(|versioned| versioned.value)
}

fn metadata(create: u64, modified: u64, version: u64) -> Metadata {
    Metadata {
        create_revision: LogIndex(create),
        mod_revision: LogIndex(modified),
        version,
        lease: None,
    }
}

const OPS: [CompareOp; 4] = [
    CompareOp::Equal,
    CompareOp::NotEqual,
    CompareOp::Less,
    CompareOp::Greater,
];

/// What `op` says of an ordering of the current property against the operand.
fn expected(op: CompareOp, current: u64, operand: u64) -> bool {
    match op {
        CompareOp::Equal => current == operand,
        CompareOp::NotEqual => current != operand,
        CompareOp::Less => current < operand,
        CompareOp::Greater => current > operand,
    }
}

/// "k" created at 2, written again at 4: version 2, create 2, mod 4, value "m". "gone" was
/// created at 3 and deleted at 5. The store is at revision 5.
fn store_with_history() -> KvStore {
    let mut store = KvStore::new();
    put(&mut store, 2, "k", "a");
    put(&mut store, 3, "gone", "x");
    put(&mut store, 4, "k", "m");
    assert!(apply(&mut store, 5, &Command::delete(b"gone".to_vec())).is_written());
    assert_eq!(store.get(b"k").unwrap().metadata, metadata(2, 4, 2));
    store
}

/// Runs a one-compare transaction whose branches write a marker, and says which ran.
fn holds(store: &KvStore, compare: Compare) -> bool {
    let mut store = store.clone();
    let index = store.applied_index().0 + 1;
    let response = txn(
        &mut store,
        index,
        Txn::new()
            .when([compare])
            .then([TxnOp::put("branch", "then")])
            .otherwise([TxnOp::put("branch", "otherwise")]),
    );
    let branch = value_of(&store, "branch").unwrap();
    assert_eq!(response.succeeded, branch == b"then");
    response.succeeded
}

#[test]
fn numeric_compares_on_present_and_absent_keys() {
    let store = store_with_history();
    // (key, version, create_revision, mod_revision): an absent key, never written or deleted,
    // is all zeros.
    let keys = [("k", 2, 2, 4), ("gone", 0, 0, 0), ("never", 0, 0, 0)];
    for (key, version, create, modified) in keys {
        for op in OPS {
            for operand in 0..6 {
                let cases = [
                    (Compare::version(key, op, operand), version),
                    (Compare::create_revision(key, op, operand), create),
                    (Compare::mod_revision(key, op, operand), modified),
                ];
                for (compare, current) in cases {
                    assert_eq!(
                        holds(&store, compare.clone()),
                        expected(op, current, operand),
                        "{compare:?} with current {current}"
                    );
                }
            }
        }
    }
}

#[test]
fn value_compares_are_bytewise_and_false_on_absent_keys() {
    let store = store_with_history();
    for op in OPS {
        for operand in ["a", "m", "mm", "z", ""] {
            let current_vs_operand = b"m".as_slice().cmp(operand.as_bytes());
            let want = match op {
                CompareOp::Equal => current_vs_operand.is_eq(),
                CompareOp::NotEqual => current_vs_operand.is_ne(),
                CompareOp::Less => current_vs_operand.is_lt(),
                CompareOp::Greater => current_vs_operand.is_gt(),
            };
            assert_eq!(
                holds(&store, Compare::value("k", op, operand)),
                want,
                "value(k) {op:?} {operand:?}"
            );
            // No value at all: every value compare fails, even != and against "".
            assert!(!holds(&store, Compare::value("gone", op, operand)));
            assert!(!holds(&store, Compare::value("never", op, operand)));
        }
    }
}

#[test]
fn all_compares_must_hold_and_none_means_then() {
    let store = store_with_history();
    let both = [
        Compare::version("k", CompareOp::Equal, 2),
        Compare::value("k", CompareOp::Equal, "m"),
    ];
    assert!(holds(&store, both[0].clone()) && holds(&store, both[1].clone()));
    let mut clone = store.clone();
    let response = txn(
        &mut clone,
        6,
        Txn::new()
            .when(both)
            .when([Compare::version("never", CompareOp::Greater, 0)])
            .then([TxnOp::put("x", "1")]),
    );
    assert!(!response.succeeded);
    assert!(response.responses.is_empty());
    assert_eq!(clone.get(b"x"), None);
    let mut clone = store.clone();
    let response = txn(&mut clone, 6, Txn::new().then([TxnOp::put("x", "1")]));
    assert!(response.succeeded, "no compares: the then branch runs");
}

#[test]
fn a_failed_compare_runs_only_the_other_branch_and_changes_nothing_else() {
    let mut store = store_with_history();
    let before = store.clone();
    let response = txn(
        &mut store,
        6,
        Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "not m")])
            .then([
                TxnOp::put("k", "changed"),
                TxnOp::delete("k"),
                TxnOp::put("new", "1"),
            ])
            .otherwise([TxnOp::get("k")]),
    );
    assert!(!response.succeeded);
    assert_eq!(
        response.responses,
        vec![TxnOpResponse::Get(Some(Versioned {
            value: b"m".to_vec(),
            metadata: metadata(2, 4, 2),
        }))]
    );
    // A read-only branch leaves the revision where it was.
    assert_eq!(response.revision, LogIndex(5));
    assert_eq!(store.revision(), LogIndex(5));
    assert_eq!(store.get(b"k"), before.get(b"k"));
    assert_eq!(store.get(b"new"), None);
    assert_eq!(store.len(), before.len());
    store.check_invariants();
}

#[test]
fn every_write_of_a_transaction_shares_one_revision_and_later_ops_see_earlier_ones() {
    let mut store = store_with_history();
    let response = txn(
        &mut store,
        9,
        Txn::new()
            .when([Compare::version("lock", CompareOp::Equal, 0)])
            .then([
                TxnOp::put("lock", "me"),
                TxnOp::put("k", "n").with_previous(),
                TxnOp::put("k", "o"),
                TxnOp::get("k"),
                TxnOp::delete("lock").with_previous(),
                TxnOp::get("lock"),
                TxnOp::range(KeyRange::all(), 10),
            ]),
    );
    assert!(response.succeeded);
    assert_eq!(response.revision, LogIndex(9));
    assert_eq!(store.revision(), LogIndex(9));
    let responses = response.responses;
    let TxnOpResponse::Put(created) = &responses[0] else {
        panic!("{responses:?}")
    };
    assert_eq!(created.previous, None);
    assert_eq!(created.current, Some(metadata(9, 9, 1)));
    let TxnOpResponse::Put(replaced) = &responses[1] else {
        panic!("{responses:?}")
    };
    assert_eq!(replaced.previous, Some(metadata(2, 4, 2)));
    assert_eq!(replaced.previous_value.as_deref(), Some(&b"m"[..]));
    assert_eq!(replaced.current, Some(metadata(2, 9, 3)));
    let TxnOpResponse::Put(again) = &responses[2] else {
        panic!("{responses:?}")
    };
    assert_eq!(again.previous_value, None, "not asked for");
    // Two writes of one key in one transaction: two versions, one revision.
    assert_eq!(again.current, Some(metadata(2, 9, 4)));
    assert_eq!(
        responses[3],
        TxnOpResponse::Get(Some(Versioned {
            value: b"o".to_vec(),
            metadata: metadata(2, 9, 4),
        }))
    );
    assert_eq!(
        responses[4],
        TxnOpResponse::Delete {
            deleted: 1,
            previous: vec![(
                b"lock".to_vec(),
                Versioned {
                    value: b"me".to_vec(),
                    metadata: metadata(9, 9, 1),
                }
            )],
        }
    );
    assert_eq!(responses[5], TxnOpResponse::Get(None));
    let TxnOpResponse::Range(page) = &responses[6] else {
        panic!("{responses:?}")
    };
    let keys: Vec<_> = page.entries.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, [b"k".as_slice()]);
    assert!(!page.more);
    store.check_invariants();
}

#[test]
fn leases_are_reserved_no_key_has_one_and_a_put_with_one_is_refused() {
    let mut store = store_with_history();
    for key in ["k", "gone"] {
        assert!(holds(&store, Compare::lease(key, CompareOp::Equal, None)));
        assert!(holds(
            &store,
            Compare::lease(key, CompareOp::Less, Some(LeaseId(1)))
        ));
        assert!(!holds(
            &store,
            Compare::lease(key, CompareOp::Greater, None)
        ));
    }
    let before = store.clone();
    let mut leased = TxnOp::put("held", "1");
    if let TxnOp::Put { lease, .. } = &mut leased {
        *lease = Some(LeaseId(7));
    }
    let response = apply(
        &mut store,
        6,
        &Command::txn(Txn::new().then([TxnOp::put("first", "1"), leased])),
    );
    assert_eq!(
        response,
        Response::Rejected(KvError::LeaseNotFound { lease: LeaseId(7) })
    );
    assert_eq!(store.get(b"first"), None, "the earlier put was undone");
    assert_eq!(store.len(), before.len());
    assert_eq!(store.revision(), before.revision());
}

#[test]
fn a_deleted_key_starts_over_at_version_1() {
    let mut store = store_with_history();
    txn(&mut store, 6, Txn::new().then([TxnOp::delete("k")]));
    assert!(holds(&store, Compare::version("k", CompareOp::Equal, 0)));
    txn(&mut store, 7, Txn::new().then([TxnOp::put("k", "again")]));
    assert_eq!(store.get(b"k").unwrap().metadata, metadata(7, 7, 1));
}

#[test]
fn a_retried_transaction_applies_once() {
    let mut store = KvStore::new();
    let Response::SessionRegistered { client_id } =
        apply(&mut store, 1, &Command::register_session())
    else {
        panic!("registration refused")
    };
    put(&mut store, 2, "counter", "0");
    let increment = Txn::new()
        .when([Compare::value("counter", CompareOp::Equal, "0")])
        .then([TxnOp::put("counter", "1")])
        .otherwise([TxnOp::put("counter", "failed")]);
    let command = Command::txn(increment).with_session(client_id, 1);
    let first = codec::encode(&command).unwrap();
    let answer = store.apply(EntryId::new(Term(1), LogIndex(3)), &first);
    let retried = store.apply(EntryId::new(Term(1), LogIndex(4)), &first);
    assert_eq!(answer, retried, "the duplicate gets the cached answer");
    let Response::Txn(response) = Response::decode(&answer).unwrap() else {
        panic!("not a transaction answer")
    };
    assert!(response.succeeded);
    assert_eq!(value_of(&store, "counter").unwrap(), b"1");
    assert_eq!(store.get(b"counter").unwrap().metadata.version, 2);
    assert_eq!(store.revision(), LogIndex(3));
}

#[test]
fn the_operation_bound_is_enforced_on_validate_and_on_apply() {
    let gets = |count| (0..count).map(|_| TxnOp::get("k")).collect::<Vec<_>>();
    let mut store = KvStore::new();
    let largest = Txn::new()
        .when((0..TXN_OPERATIONS_MAX).map(|_| Compare::version("k", CompareOp::Equal, 0)))
        .then(gets(TXN_OPERATIONS_MAX))
        .otherwise(gets(TXN_OPERATIONS_MAX));
    assert!(Command::txn(largest.clone()).encode().is_ok());
    let response = txn(&mut store, 1, largest);
    assert_eq!(response.responses.len(), TXN_OPERATIONS_MAX);
    let too_many = Command::txn(Txn::new().then(gets(TXN_OPERATIONS_MAX + 1)));
    let error = KvError::TxnTooLarge {
        part: TxnPart::Then,
        count: TXN_OPERATIONS_MAX + 1,
        limit: TXN_OPERATIONS_MAX,
    };
    assert_eq!(too_many.validate(), Err(error.clone()));
    assert_eq!(apply(&mut store, 2, &too_many), Response::Rejected(error));
    assert!(KvError::TxnTooLarge {
        part: TxnPart::Then,
        count: 129,
        limit: 128
    }
    .to_string()
    .contains("then"));
}

#[test]
fn a_transaction_is_validated_like_any_write_and_travels_alone() {
    let mut store = KvStore::new();
    let refused = |txn: Txn| Command::txn(txn).validate().unwrap_err();
    assert!(matches!(
        refused(Txn::new().then([TxnOp::put("", "v")])),
        KvError::EmptyKey { operation: Some(0) }
    ));
    assert!(matches!(
        refused(Txn::new().otherwise([
            TxnOp::get("k"),
            TxnOp::put("k", vec![0; VALUE_BYTES_MAX + 1])
        ])),
        KvError::ValueTooLarge { operation: 1, .. }
    ));
    assert!(matches!(
        refused(Txn::new().when([Compare::value(
            "k",
            CompareOp::Equal,
            vec![0; VALUE_BYTES_MAX + 1]
        )])),
        KvError::ValueTooLarge { operation: 0, .. }
    ));
    assert!(matches!(
        refused(Txn::new().when([Compare::version("", CompareOp::Equal, 0)])),
        KvError::EmptyKey { .. }
    ));
    assert!(matches!(
        refused(Txn::new().then([TxnOp::range(KeyRange::all(), 0)])),
        KvError::InvalidScanLimit { .. }
    ));
    // Alone: no other operation, no command-wide previous values.
    let mut shared = Command::txn(Txn::new());
    shared
        .operations
        .push(Operation::Delete { key: b"k".to_vec() });
    assert_eq!(shared.validate(), Err(KvError::TxnNotAlone));
    assert_eq!(
        apply(&mut store, 1, &shared),
        Response::Rejected(KvError::TxnNotAlone)
    );
    let with_previous = Command::txn(Txn::new()).with_previous();
    assert_eq!(with_previous.validate(), Err(KvError::TxnNotAlone));
    // An empty transaction is valid and changes nothing.
    let response = txn(&mut store, 2, Txn::new());
    assert!(response.succeeded && response.responses.is_empty());
    assert_eq!(response.revision, LogIndex(0));
    // A compare target this build does not know is a malformed command, not a panic.
    let mut bytes = codec::encode(&Command::txn(Txn::new().when([Compare::version(
        "k",
        CompareOp::Equal,
        0,
    )])))
    .unwrap();
    // The encoding ends: op tag, target tag, operand, `then` and `otherwise` lengths, and
    // the command's `return_previous`.
    let target_tag = bytes.len() - 5;
    assert_eq!(bytes[target_tag], 1, "the Version tag");
    bytes[target_tag] = 9;
    let answer = store.apply(EntryId::new(Term(1), LogIndex(3)), &bytes);
    assert!(matches!(
        Response::decode(&answer).unwrap(),
        Response::Rejected(KvError::Malformed { .. })
    ));
}

#[test]
fn an_answer_too_large_applies_nothing() {
    let mut store = KvStore::new();
    let big = vec![7; VALUE_BYTES_MAX];
    let count = PREVIOUS_VALUES_BYTES_MAX / VALUE_BYTES_MAX + 1;
    for index in 0..count {
        let command = Command::put(format!("big/{index}").into_bytes(), big.clone());
        assert!(apply(&mut store, index as u64 + 1, &command).is_written());
    }
    let before = store.clone();
    let next = count as u64 + 1;
    let response = apply(
        &mut store,
        next,
        &Command::txn(Txn::new().then([
            TxnOp::put("small", "1"),
            TxnOp::delete_range(KeyRange::prefix(b"big/")).with_previous(),
        ])),
    );
    assert!(matches!(
        response,
        Response::Rejected(KvError::ResponseTooLarge { .. })
    ));
    assert_eq!(store.get(b"small"), None);
    assert_eq!(store.len(), before.len());
    assert_eq!(store.revision(), before.revision());
    // Reads count too.
    let gets = (0..count).map(|index| TxnOp::get(format!("big/{index}")));
    let response = apply(&mut store, next + 1, &Command::txn(Txn::new().then(gets)));
    assert!(matches!(
        response,
        Response::Rejected(KvError::ResponseTooLarge { .. })
    ));
    // Without previous values the same delete goes through.
    let response = txn(
        &mut store,
        next + 2,
        Txn::new().then([TxnOp::delete_range(KeyRange::prefix(b"big/"))]),
    );
    assert_eq!(
        response.responses,
        vec![TxnOpResponse::Delete {
            deleted: count as u64,
            previous: Vec::new()
        }]
    );
    assert!(store.is_empty());
    store.check_invariants();
}

#[test]
fn range_and_prefix_deletes_in_batches() {
    let mut store = KvStore::new();
    for (index, key) in ["a", "app/1", "app/2", "apple", "b", "c"]
        .iter()
        .enumerate()
    {
        put(&mut store, index as u64 + 1, key, "v");
    }
    let deleted = |response: Response| match response {
        Response::Written { outcomes, revision } => (
            outcomes
                .iter()
                .map(|outcome| outcome.deleted)
                .collect::<Vec<_>>(),
            revision,
        ),
        other => panic!("{other:?}"),
    };
    let response = apply(
        &mut store,
        10,
        &Command::delete_range(KeyRange::prefix(b"app/")),
    );
    assert_eq!(deleted(response), (vec![2], LogIndex(10)));
    assert_eq!(value_of(&store, "apple").unwrap(), b"v");
    // Nothing to delete: the revision stays.
    let response = apply(
        &mut store,
        11,
        &Command::delete_range(KeyRange::prefix(b"app/")),
    );
    assert_eq!(deleted(response), (vec![0], LogIndex(10)));
    // With other operations, and undone by a failing compare-and-swap after it.
    let batch = Command::batch(vec![
        Operation::DeleteRange {
            range: KeyRange::between(b"a".to_vec(), b"c".to_vec()),
        },
        Operation::Delete { key: b"c".to_vec() },
    ]);
    assert_eq!(
        deleted(apply(&mut store, 12, &batch)),
        (vec![3, 1], LogIndex(12))
    );
    assert!(store.is_empty());
    put(&mut store, 13, "x", "1");
    put(&mut store, 14, "y", "1");
    let failing = Command::batch(vec![
        Operation::DeleteRange {
            range: KeyRange::all(),
        },
        Operation::Cas {
            key: b"x".to_vec(),
            // As left by the range delete: absent, so this fails.
            expect: keyval::kv::Expect::Value(b"1".to_vec()),
            value: Some(b"2".to_vec()),
        },
    ]);
    assert!(matches!(
        apply(&mut store, 15, &failing),
        Response::ComparisonFailed { operation: 1, .. }
    ));
    assert_eq!(store.len(), 2, "the range delete was undone");
    assert_eq!(store.get(b"x").unwrap().metadata, metadata(13, 13, 1));
    // An inverted range is empty, not a panic.
    let inverted = Command::delete_range(KeyRange::between(b"z".to_vec(), b"a".to_vec()));
    assert_eq!(
        deleted(apply(&mut store, 16, &inverted)),
        (vec![0], LogIndex(14))
    );
    store.check_invariants();
}
