//! The key-value state machine through its public API: each operation's semantics and
//! metadata, compare-and-swap, batch atomicity, scans, exactly-once sessions, limits, hostile
//! command bytes and snapshots. Method: apply encoded commands at chosen log indexes, decode the
//! responses, and compare with what the module docs promise.

use keyval::codec;
use keyval::kv::{
    Command, Expect, KeyRange, KvError, KvStore, Metadata, Operation, ReadRequest, ReadResponse,
    Response, Versioned, WriteOutcome, BATCH_OPERATIONS_MAX, KEY_BYTES_MAX,
    PREVIOUS_VALUES_BYTES_MAX, SCAN_RESPONSE_BYTES_MAX, SESSIONS_MAX, VALUE_BYTES_MAX,
};
use keyval::limits::COMMAND_BYTES_MAX;
use keyval::{EntryId, LogIndex, StateMachine, Term};

/// Applies `command` at `index` and decodes the response.
fn apply(store: &mut KvStore, index: u64, command: &Command) -> Response {
    let bytes = command.encode().expect("test commands are valid");
    apply_bytes(store, index, &bytes)
}

/// Applies raw bytes at `index` and decodes the response, which must always decode.
fn apply_bytes(store: &mut KvStore, index: u64, bytes: &[u8]) -> Response {
    let answer = store.apply(EntryId::new(Term(1), LogIndex(index)), bytes);
    Response::decode(&answer).expect("apply always returns a response")
}

fn put(key: &str, value: &str) -> Command {
    Command::put(key.as_bytes().to_vec(), value.as_bytes().to_vec())
}

fn put_operation(key: &str, value: &str) -> Operation {
    Operation::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn cas(key: &str, expect: Expect, value: Option<&str>) -> Command {
    Command::cas(
        key.as_bytes().to_vec(),
        expect,
        value.map(|value| value.as_bytes().to_vec()),
    )
}

fn metadata(create: u64, modified: u64, version: u64) -> Metadata {
    Metadata {
        create_revision: LogIndex(create),
        mod_revision: LogIndex(modified),
        version,
        lease: None,
    }
}

fn value_of(store: &KvStore, key: &str) -> Option<Vec<u8>> {
    store.get(key.as_bytes()).map(|versioned| versioned.value)
}

/// The single outcome of a written one-operation command.
fn single_outcome(response: Response) -> WriteOutcome {
    match response {
        Response::Written { mut outcomes, .. } if outcomes.len() == 1 => outcomes.remove(0),
        other => panic!("expected one written outcome, got {other:?}"),
    }
}

#[test]
fn put_creates_then_updates_with_etcd_metadata() {
    let mut store = KvStore::new();
    let outcome = single_outcome(apply(&mut store, 3, &put("a", "1")));
    assert_eq!(outcome.previous, None);
    assert_eq!(outcome.current, Some(metadata(3, 3, 1)));
    let response = apply(&mut store, 7, &put("a", "2"));
    assert!(matches!(
        response,
        Response::Written {
            revision: LogIndex(7),
            ..
        }
    ));
    let outcome = single_outcome(response);
    assert_eq!(outcome.previous, Some(metadata(3, 3, 1)));
    assert_eq!(outcome.current, Some(metadata(3, 7, 2)));
    assert_eq!(outcome.previous_value, None, "not asked for");
    assert_eq!(
        store.get(b"a"),
        Some(Versioned {
            value: b"2".to_vec(),
            metadata: metadata(3, 7, 2)
        })
    );
    assert_eq!(store.revision(), LogIndex(7));
    assert_eq!(store.applied_index(), LogIndex(7));
    store.check_invariants();
}

#[test]
fn delete_removes_and_recreation_starts_a_new_history() {
    let mut store = KvStore::new();
    apply(&mut store, 1, &put("a", "1"));
    apply(&mut store, 2, &put("a", "2"));
    let outcome = single_outcome(apply(&mut store, 3, &Command::delete(b"a".to_vec())));
    assert!(outcome.deleted());
    assert_eq!(outcome.previous, Some(metadata(1, 2, 2)));
    assert_eq!(store.get(b"a"), None);
    assert_eq!(store.revision(), LogIndex(3));

    // Deleting an absent key succeeds, changes nothing and does not move the revision.
    let outcome = single_outcome(apply(&mut store, 4, &Command::delete(b"a".to_vec())));
    assert!(!outcome.deleted());
    assert_eq!(outcome, WriteOutcome::default());
    assert_eq!(store.revision(), LogIndex(3));
    assert_eq!(store.applied_index(), LogIndex(4));

    let outcome = single_outcome(apply(&mut store, 5, &put("a", "3")));
    assert_eq!(outcome.current, Some(metadata(5, 5, 1)));
    store.check_invariants();
}

#[test]
fn previous_values_are_returned_when_asked() {
    let mut store = KvStore::new();
    apply(&mut store, 1, &put("a", "old"));
    let outcome = single_outcome(apply(&mut store, 2, &put("a", "new").with_previous()));
    assert_eq!(outcome.previous_value, Some(b"old".to_vec()));
    let delete = Command::delete(b"a".to_vec()).with_previous();
    let outcome = single_outcome(apply(&mut store, 3, &delete));
    assert_eq!(outcome.previous_value, Some(b"new".to_vec()));
    let outcome = single_outcome(apply(&mut store, 4, &put("b", "x").with_previous()));
    assert_eq!(outcome.previous_value, None, "b did not exist");
}

#[test]
fn cas_on_value() {
    let mut store = KvStore::new();
    apply(&mut store, 1, &put("a", "1"));
    let failed = apply(
        &mut store,
        2,
        &cas("a", Expect::Value(b"0".to_vec()), Some("2")),
    );
    assert_eq!(
        failed,
        Response::ComparisonFailed {
            operation: 0,
            current: store.get(b"a"),
        }
    );
    assert_eq!(value_of(&store, "a"), Some(b"1".to_vec()));
    assert_eq!(
        store.revision(),
        LogIndex(1),
        "a failed CAS modifies nothing"
    );

    let outcome = single_outcome(apply(
        &mut store,
        3,
        &cas("a", Expect::Value(b"1".to_vec()), Some("2")),
    ));
    assert_eq!(outcome.current, Some(metadata(1, 3, 2)));
    assert_eq!(value_of(&store, "a"), Some(b"2".to_vec()));

    // An expected value never matches an absent key.
    let failed = apply(
        &mut store,
        4,
        &cas("b", Expect::Value(Vec::new()), Some("x")),
    );
    assert_eq!(
        failed,
        Response::ComparisonFailed {
            operation: 0,
            current: None
        }
    );
}

#[test]
fn cas_on_absence() {
    let mut store = KvStore::new();
    let outcome = single_outcome(apply(&mut store, 1, &cas("a", Expect::Absent, Some("1"))));
    assert_eq!(outcome.current, Some(metadata(1, 1, 1)));
    let failed = apply(&mut store, 2, &cas("a", Expect::Absent, Some("2")));
    assert!(matches!(
        failed,
        Response::ComparisonFailed {
            operation: 0,
            current: Some(_)
        }
    ));
    assert_eq!(value_of(&store, "a"), Some(b"1".to_vec()));
}

#[test]
fn cas_on_mod_revision_and_delete_on_success() {
    let mut store = KvStore::new();
    apply(&mut store, 4, &put("a", "1"));
    let stale = apply(
        &mut store,
        5,
        &cas("a", Expect::ModRevision(LogIndex(3)), None),
    );
    assert!(matches!(stale, Response::ComparisonFailed { .. }));
    let absent = apply(
        &mut store,
        6,
        &cas("z", Expect::ModRevision(LogIndex(4)), None),
    );
    assert!(matches!(absent, Response::ComparisonFailed { .. }));

    let outcome = single_outcome(apply(
        &mut store,
        7,
        &cas("a", Expect::ModRevision(LogIndex(4)), None),
    ));
    assert!(outcome.deleted());
    assert_eq!(store.get(b"a"), None);
    assert_eq!(store.revision(), LogIndex(7));
}

#[test]
fn batch_applies_in_order_in_one_entry() {
    let mut store = KvStore::new();
    let batch = Command::batch(vec![
        put_operation("a", "1"),
        put_operation("b", "1"),
        // Sees the put of `a` just before it in the same batch.
        Operation::Cas {
            key: b"a".to_vec(),
            expect: Expect::Value(b"1".to_vec()),
            value: Some(b"2".to_vec()),
        },
        Operation::Delete { key: b"b".to_vec() },
    ]);
    let Response::Written { revision, outcomes } = apply(&mut store, 9, &batch) else {
        panic!("batch should apply");
    };
    assert_eq!(revision, LogIndex(9));
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[2].current, Some(metadata(9, 9, 2)));
    assert!(outcomes[3].deleted());
    assert_eq!(value_of(&store, "a"), Some(b"2".to_vec()));
    assert_eq!(store.get(b"b"), None);
    store.check_invariants();
}

#[test]
fn batch_with_a_failing_cas_applies_nothing() {
    let mut store = KvStore::new();
    apply(&mut store, 1, &put("a", "1"));
    apply(&mut store, 2, &put("b", "1"));
    let before = store.clone();
    let batch = Command::batch(vec![
        put_operation("a", "changed"),
        Operation::Delete { key: b"b".to_vec() },
        put_operation("c", "new"),
        Operation::Cas {
            key: b"b".to_vec(),
            expect: Expect::Absent,
            value: Some(b"x".to_vec()),
        },
        Operation::Cas {
            key: b"a".to_vec(),
            expect: Expect::Value(b"1".to_vec()),
            value: None,
        },
    ]);
    let response = apply(&mut store, 3, &batch);
    // The fourth operation held (b deleted by the second); the fifth saw "changed".
    assert_eq!(
        response,
        Response::ComparisonFailed {
            operation: 4,
            current: before.get(b"a"),
        }
    );
    assert_eq!(value_of(&store, "a"), Some(b"1".to_vec()));
    assert_eq!(value_of(&store, "b"), Some(b"1".to_vec()));
    assert_eq!(store.get(b"c"), None);
    assert_eq!(store.revision(), LogIndex(2));
    assert_eq!(store.applied_index(), LogIndex(3));
    assert_eq!(
        store.scan(&KeyRange::all(), 10),
        before.scan(&KeyRange::all(), 10)
    );
    store.check_invariants();
}

#[test]
fn too_many_previous_values_reject_the_whole_batch() {
    let mut store = KvStore::new();
    let keys = PREVIOUS_VALUES_BYTES_MAX / VALUE_BYTES_MAX + 1;
    for key in 0..keys {
        let command = Command::put(vec![b'k', key as u8], vec![7; VALUE_BYTES_MAX]);
        apply(&mut store, key as u64 + 1, &command);
    }
    let before = store.clone();
    let deletes = (0..keys)
        .map(|key| Operation::Delete {
            key: vec![b'k', key as u8],
        })
        .collect();
    let command = Command::batch(deletes).with_previous();
    let response = apply(&mut store, 100, &command);
    assert!(matches!(
        response,
        Response::Rejected(KvError::ResponseTooLarge { .. })
    ));
    assert_eq!(store.len(), keys);
    assert_eq!(
        store.scan(&KeyRange::all(), 100),
        before.scan(&KeyRange::all(), 100)
    );
    // Without previous values the same batch applies.
    let deletes = Command {
        return_previous: false,
        ..command
    };
    assert!(apply(&mut store, 101, &deletes).is_written());
    assert!(store.is_empty());
}

#[test]
fn scan_by_prefix_range_and_limit() {
    let mut store = KvStore::new();
    for (index, key) in ["a", "ab", "abc", "abd", "ac", "b", "b\u{7f}"]
        .iter()
        .enumerate()
    {
        apply(&mut store, index as u64 + 1, &put(key, key));
    }
    let keys = |range: &KeyRange, limit| {
        let page = store.scan(range, limit);
        let keys: Vec<String> = page
            .entries
            .iter()
            .map(|(key, _)| String::from_utf8(key.clone()).unwrap())
            .collect();
        (keys, page.more)
    };
    assert_eq!(
        keys(&KeyRange::prefix(b"ab"), 10),
        (vec!["ab".into(), "abc".into(), "abd".into()], false)
    );
    assert_eq!(
        keys(&KeyRange::prefix(b"ab"), 2),
        (vec!["ab".into(), "abc".into()], true)
    );
    assert_eq!(
        keys(&KeyRange::prefix(b"ab").after(b"abc"), 2),
        (vec!["abd".into()], false)
    );
    assert_eq!(
        keys(&KeyRange::between(b"abc".to_vec(), b"b".to_vec()), 10),
        (vec!["abc".into(), "abd".into(), "ac".into()], false)
    );
    assert_eq!(keys(&KeyRange::starting_at(b"b".to_vec()), 10).0.len(), 2);
    assert_eq!(
        keys(&KeyRange::all(), 7),
        (keys(&KeyRange::all(), 100).0, false)
    );
    // Limit 0 returns nothing but says whether anything is there.
    assert_eq!(keys(&KeyRange::all(), 0), (vec![], true));
    assert_eq!(keys(&KeyRange::prefix(b"zz"), 0), (vec![], false));
    // Empty and inverted ranges are empty, not a panic.
    assert_eq!(
        keys(&KeyRange::between(b"b".to_vec(), b"b".to_vec()), 5),
        (vec![], false)
    );
    assert_eq!(
        keys(&KeyRange::between(b"c".to_vec(), b"a".to_vec()), 5),
        (vec![], false)
    );
    // Scanned entries carry their metadata.
    let page = store.scan(&KeyRange::prefix(b"abd"), 1);
    assert_eq!(page.entries[0].1.metadata, metadata(4, 4, 1));
}

#[test]
fn scan_pages_stop_at_the_byte_limit() {
    let mut store = KvStore::new();
    let count = SCAN_RESPONSE_BYTES_MAX / VALUE_BYTES_MAX + 2;
    for key in 0..count {
        let command = Command::put(vec![b'k', key as u8], vec![1; VALUE_BYTES_MAX]);
        apply(&mut store, key as u64 + 1, &command);
    }
    let page = store.scan(&KeyRange::all(), 1000);
    assert!(page.more);
    assert!(!page.entries.is_empty() && page.entries.len() < count);
    let bytes: usize = page
        .entries
        .iter()
        .map(|(key, versioned)| key.len() + versioned.value.len())
        .sum();
    assert!(bytes <= SCAN_RESPONSE_BYTES_MAX);
    let (last, _) = page.entries.last().unwrap();
    let rest = store.scan(&KeyRange::all().after(last), 1000);
    assert_eq!(page.entries.len() + rest.entries.len(), count);
    assert!(!rest.more);
}

#[test]
fn read_requests_validate_then_serve() {
    let mut store = KvStore::new();
    apply(&mut store, 1, &put("a", "1"));
    let get = ReadRequest::Get { key: b"a".to_vec() };
    assert_eq!(store.read(&get), Ok(ReadResponse::Get(store.get(b"a"))));
    let scan = ReadRequest::Scan {
        range: KeyRange::all(),
        limit: 0,
    };
    assert!(matches!(
        store.read(&scan),
        Err(KvError::InvalidScanLimit { .. })
    ));
}

/// Registers a session at `index`; returns its client id.
fn register(store: &mut KvStore, index: u64) -> u64 {
    match apply(store, index, &Command::register_session()) {
        Response::SessionRegistered { client_id } => client_id,
        other => panic!("registration answered {other:?}"),
    }
}

#[test]
fn duplicate_write_returns_the_cached_response_without_reapplying() {
    let mut store = KvStore::new();
    let client = register(&mut store, 1);
    let first = put("a", "1").with_session(client, 1);
    let bytes = first.encode().unwrap();
    let answer = store.apply(EntryId::new(Term(1), LogIndex(2)), &bytes);
    // Someone else changes `a` in between.
    apply(&mut store, 3, &put("a", "2"));
    let again = store.apply(EntryId::new(Term(2), LogIndex(4)), &bytes);
    assert_eq!(answer, again, "the very same response bytes");
    assert_eq!(
        value_of(&store, "a"),
        Some(b"2".to_vec()),
        "not applied twice"
    );
    assert_eq!(store.get(b"a").unwrap().metadata.version, 2);
    assert_eq!(store.session_sequence(client), Some(1));

    // A later sequence applies; then the older one is stale.
    let second = put("a", "3").with_session(client, 5);
    assert!(apply(&mut store, 5, &second).is_written());
    assert_eq!(
        apply(&mut store, 6, &first),
        Response::Rejected(KvError::StaleSequence {
            client_id: client,
            sequence: 1,
            latest: 5
        })
    );
    assert_eq!(value_of(&store, "a"), Some(b"3".to_vec()));
    store.check_invariants();
}

#[test]
fn failed_comparisons_are_cached_too() {
    let mut store = KvStore::new();
    let client = register(&mut store, 1);
    let command = cas("a", Expect::Value(b"1".to_vec()), Some("2")).with_session(client, 1);
    let failed = apply(&mut store, 2, &command);
    assert!(matches!(failed, Response::ComparisonFailed { .. }));
    apply(&mut store, 3, &put("a", "1"));
    // The retry must not succeed now: it is the same write, already answered.
    assert_eq!(apply(&mut store, 4, &command), failed);
    assert_eq!(value_of(&store, "a"), Some(b"1".to_vec()));
}

#[test]
fn sessions_are_registered_through_the_log() {
    let mut store = KvStore::new();
    // An unknown client is refused whatever its sequence, 1 included.
    for (index, sequence) in [(1, 1), (2, 3)] {
        assert_eq!(
            apply(&mut store, index, &put("a", "1").with_session(7, sequence)),
            Response::Rejected(KvError::SessionExpired {
                client_id: 7,
                sequence
            })
        );
    }
    assert_eq!(store.get(b"a"), None);
    assert_eq!(store.session_count(), 0);
    let invalid = codec::encode(&put("a", "1").with_session(7, 0)).unwrap();
    assert_eq!(
        apply_bytes(&mut store, 3, &invalid),
        Response::Rejected(KvError::InvalidSequence { client_id: 7 })
    );
    // The client id is the registration's index; registering changes no data.
    let revision = store.revision();
    assert_eq!(register(&mut store, 9), 9);
    assert_eq!(store.session_sequence(9), Some(0));
    assert_eq!(store.revision(), revision);
    assert!(apply(&mut store, 10, &put("a", "1").with_session(9, 1)).is_written());
    assert_eq!(store.session_sequence(9), Some(1));
    // A registration carrying operations is refused and registers nothing.
    let mut loaded = Command::register_session();
    loaded.operations.push(put_operation("a", "2"));
    assert_eq!(
        apply_bytes(&mut store, 11, &codec::encode(&loaded).unwrap()),
        Response::Rejected(KvError::InvalidRegistration)
    );
    assert_eq!(store.session_count(), 1);
    store.check_invariants();
}

/// Registers `count` sessions from `index` on, each followed by one write; returns their client
/// ids, oldest first, and the next index.
fn sessions_with_one_write(store: &mut KvStore, count: usize, index: u64) -> (Vec<u64>, u64) {
    let mut index = index;
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let client = register(store, index);
        let command = put("k", "v").with_session(client, 1);
        assert!(apply(store, index + 1, &command).is_written());
        clients.push(client);
        index += 2;
    }
    (clients, index)
}

#[test]
fn session_eviction_is_least_recently_used_and_deterministic() {
    let mut store = KvStore::new();
    let (clients, mut index) = sessions_with_one_write(&mut store, SESSIONS_MAX, 1);
    assert_eq!(store.session_count(), SESSIONS_MAX);
    // The first client retries, which counts as a use: the second is now the least recently
    // used.
    let retry = put("k", "v").with_session(clients[0], 1);
    assert!(apply(&mut store, index, &retry).is_written());
    index += 1;
    let mut replica = store.clone();
    sessions_with_one_write(&mut store, 2, index);
    let (_, index) = sessions_with_one_write(&mut replica, 2, index);
    assert_eq!(store, replica, "replicas evict the same sessions");
    assert_eq!(store.session_count(), SESSIONS_MAX);
    assert_eq!(store.session_sequence(clients[0]), Some(1));
    assert_eq!(store.session_sequence(clients[1]), None);
    assert_eq!(store.session_sequence(clients[2]), None);
    assert_eq!(store.session_sequence(clients[3]), Some(1));
    // An evicted client's next write is refused rather than taken for a new session.
    let evicted = put("k", "v").with_session(clients[1], 2);
    assert!(matches!(
        apply(&mut store, index, &evicted),
        Response::Rejected(KvError::SessionExpired { .. })
    ));
    store.check_invariants();
}

#[test]
fn apply_rejects_what_validate_rejects() {
    let cases = [
        Command::put(Vec::new(), b"v".to_vec()),
        Command::put(vec![1; KEY_BYTES_MAX + 1], b"v".to_vec()),
        Command::put(b"k".to_vec(), vec![1; VALUE_BYTES_MAX + 1]),
        Command::batch(Vec::new()),
        Command::batch(vec![put_operation("k", "v"); BATCH_OPERATIONS_MAX + 1]),
    ];
    let mut store = KvStore::new();
    for (index, command) in cases.iter().enumerate() {
        let error = command.validate().expect_err("invalid on purpose");
        assert_eq!(command.encode(), Err(error.clone()));
        let bytes = codec::encode(command).unwrap();
        let response = apply_bytes(&mut store, index as u64 + 1, &bytes);
        assert_eq!(response, Response::Rejected(error));
    }
    assert!(store.is_empty());
    assert_eq!(store.revision(), LogIndex(0));
}

#[test]
fn garbage_and_oversized_command_bytes_are_rejected() {
    let mut store = KvStore::new();
    let oversized = vec![0u8; COMMAND_BYTES_MAX as usize + 1];
    let hostile_length = [0u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    let valid = put("a", "1").encode().unwrap();
    let truncated = &valid[..valid.len() - 1];
    let mut trailing = valid.clone();
    trailing.push(0);
    for (index, bytes) in [
        &[][..],
        &[0xFF; 64][..],
        &oversized,
        &hostile_length,
        truncated,
        &trailing,
    ]
    .iter()
    .enumerate()
    {
        let mut replica = store.clone();
        let response = apply_bytes(&mut store, index as u64 + 1, bytes);
        assert!(matches!(response, Response::Rejected(_)), "{response:?}");
        let again = apply_bytes(&mut replica, index as u64 + 1, bytes);
        assert_eq!(response, again, "rejections are deterministic");
    }
    assert!(store.is_empty());
}

#[test]
#[should_panic(expected = "already applied")]
fn applying_out_of_order_is_a_programmer_error() {
    let mut store = KvStore::new();
    apply(&mut store, 5, &put("a", "1"));
    apply(&mut store, 5, &put("a", "2"));
}

/// Issue item 4 (PITFALLS #22): a session's first write is applied, its answer is lost, the
/// session is evicted, and the retry of the same (client, sequence) arrives. The store must
/// refuse it: applying it would apply the write twice.
#[test]
fn a_first_write_retried_after_its_session_was_evicted_is_not_applied_again() {
    let mut store = KvStore::new();
    let client = register(&mut store, 1);
    let first = put("once", "v").with_session(client, 1);
    assert!(apply(&mut store, 2, &first).is_written());
    // Other clients' sessions push this one out of the session table.
    let (_, index) = sessions_with_one_write(&mut store, SESSIONS_MAX, 3);
    assert_eq!(
        store.session_sequence(client),
        None,
        "the session was evicted"
    );
    let retry = apply(&mut store, index, &first);
    assert!(
        matches!(
            retry,
            Response::Rejected(KvError::SessionExpired { client_id, sequence: 1 })
                if client_id == client
        ),
        "the retry was answered {retry:?}"
    );
    assert_eq!(
        store.get(b"once").unwrap().metadata.version,
        1,
        "the first write was applied twice"
    );
    store.check_invariants();
}
