//! Properties of the key-value state machine over random command sequences: it agrees with a
//! simple reference model (copy the map, apply in order, keep the copy only if every comparison
//! held), snapshot→restore yields an equal store that keeps answering identically, and no input
//! bytes — command or snapshot — make it panic. Method: proptest with a small key and value
//! space so that comparisons often succeed, sessions repeat and keys collide. Sessions are
//! registered by generated registrations; a session write names one of three slots, resolved
//! when applied to the client id of that registration (or to a client never registered).

use std::collections::BTreeMap;

use proptest::prelude::*;

use keyval::kv::{
    Command, CommandSession, Compare, CompareOp, CompareTarget, EventKind, Expect, KeyRange,
    KvError, KvStore, LeaseId, Metadata, Operation, Response, ScanPage, SessionId, Txn, TxnOp,
    TxnOpResponse, TxnResponse, Versioned, WriteOutcome,
};
use keyval::{EntryId, LogIndex, StateMachine, Term};

/// One committed entry: how far after the previous one it sits (gaps stand for no-op and
/// membership entries the store never sees) and what it carries.
#[derive(Clone, Debug)]
struct Step {
    gap: u64,
    payload: Payload,
}

#[derive(Clone, Debug)]
enum Payload {
    Command(Command),
    Garbage(Vec<u8>),
}

/// A session slot no registration filled resolves to a client id above every index used.
const NEVER_REGISTERED: u64 = 1 << 40;

/// Resolves a generated command's session slot to the client id of the slot-th registration
/// in `registered`.
fn resolve(command: &Command, registered: &[u64]) -> Command {
    let mut command = command.clone();
    if let CommandSession::Session(session) = &mut command.session {
        let slot = session.client_id;
        session.client_id = registered
            .get(slot as usize)
            .copied()
            .unwrap_or(NEVER_REGISTERED + slot);
    }
    command
}

impl Payload {
    /// The entry's bytes, given the client ids registered so far.
    fn bytes(&self, registered: &[u64]) -> Vec<u8> {
        match self {
            // Some generated commands are invalid on purpose: encode them without validation.
            Payload::Command(command) => {
                keyval::codec::encode(&resolve(command, registered)).unwrap()
            }
            Payload::Garbage(bytes) => bytes.clone(),
        }
    }
}

/// Notes the client id of a registration's answer.
fn note_registration(answer: &[u8], registered: &mut Vec<u64>) {
    if let Ok(Response::SessionRegistered { client_id }) = Response::decode(answer) {
        registered.push(client_id);
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"b\0".to_vec(),
        b"c".to_vec(),
        Vec::new(),
    ])
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..2, 0..2)
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        value().prop_map(Expect::Value),
        Just(Expect::Absent),
        (0u64..40).prop_map(|revision| Expect::ModRevision(LogIndex(revision))),
    ]
}

fn key_range() -> impl Strategy<Value = KeyRange> {
    prop_oneof![
        key().prop_map(|prefix| KeyRange::prefix(&prefix)),
        (key(), key()).prop_map(|(start, end)| KeyRange::between(start, end)),
        key().prop_map(KeyRange::starting_at),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Less,
        CompareOp::Greater,
    ]);
    let target = prop_oneof![
        value().prop_map(CompareTarget::Value),
        (0u64..3).prop_map(CompareTarget::Version),
        (0u64..40).prop_map(|revision| CompareTarget::CreateRevision(LogIndex(revision))),
        (0u64..40).prop_map(|revision| CompareTarget::ModRevision(LogIndex(revision))),
        prop::option::of(0u64..2).prop_map(|lease| CompareTarget::Lease(lease.map(LeaseId))),
    ];
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        3 => (key(), value(), any::<bool>(), prop::option::weighted(0.05, 1u64..3)).prop_map(
            |(key, value, return_previous, lease)| TxnOp::Put {
                key,
                value,
                return_previous,
                // No lease exists: a put with one is refused.
                lease: lease.map(LeaseId),
            }
        ),
        1 => (key(), any::<bool>())
            .prop_map(|(key, return_previous)| TxnOp::Delete { key, return_previous }),
        1 => (key_range(), any::<bool>())
            .prop_map(|(range, return_previous)| TxnOp::DeleteRange { range, return_previous }),
        2 => key().prop_map(|key| TxnOp::Get { key }),
        // A limit of 0 is invalid on purpose.
        2 => (key_range(), 0usize..4).prop_map(|(range, limit)| TxnOp::Range { range, limit }),
    ]
}

fn txn() -> impl Strategy<Value = Txn> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(txn_op(), 0..4),
        prop::collection::vec(txn_op(), 0..3),
    )
        .prop_map(|(compares, then, otherwise)| Txn {
            compares,
            then,
            otherwise,
        })
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(key, value)| Operation::Put { key, value }),
        2 => key().prop_map(|key| Operation::Delete { key }),
        6 => (key(), expect(), prop::option::of(value()))
            .prop_map(|(key, expect, value)| Operation::Cas { key, expect, value }),
        1 => key_range().prop_map(|range| Operation::DeleteRange { range }),
        // Not alone in its command: refused.
        1 => txn().prop_map(Operation::Txn),
    ]
}

/// A command whose session, if it has one, names a slot (0 to 2) rather than a client id.
fn command() -> impl Strategy<Value = Command> {
    let session = prop_oneof![
        3 => Just(CommandSession::None),
        2 => Just(CommandSession::Register),
        5 => (0u64..3, 0u64..5).prop_map(|(slot, sequence)| CommandSession::Session(SessionId {
            client_id: slot,
            sequence,
        })),
    ];
    (
        prop::collection::vec(operation(), 0..4),
        session,
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.1),
        prop::option::weighted(0.4, txn()),
    )
        .prop_map(
            |(operations, session, return_previous, loaded_registration, txn)| {
                if session == CommandSession::Register && !loaded_registration {
                    return Command::register_session();
                }
                let operations = match txn {
                    Some(txn) => vec![Operation::Txn(txn)],
                    None => operations,
                };
                Command {
                    session,
                    operations,
                    return_previous,
                }
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    let payload = prop_oneof![
        12 => command().prop_map(Payload::Command),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Payload::Garbage),
    ];
    (1u64..3, payload).prop_map(|(gap, payload)| Step { gap, payload })
}

fn steps(count: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 0..count)
}

/// Applies `steps` after `index` with the client ids `registered` so far (noting new ones),
/// returning each response's bytes and the last index.
fn run(
    store: &mut KvStore,
    index: u64,
    steps: &[Step],
    registered: &mut Vec<u64>,
) -> (Vec<Vec<u8>>, u64) {
    let mut index = index;
    let mut responses = Vec::new();
    for step in steps {
        index += step.gap;
        let id = EntryId::new(Term(1), LogIndex(index));
        let answer = store.apply(id, &step.payload.bytes(registered));
        note_registration(&answer, registered);
        responses.push(answer);
    }
    (responses, index)
}

/// The reference: no undo log, no byte budgets (the values here are tiny), no eviction (at
/// most a few dozen sessions).
#[derive(Default)]
struct Model {
    data: BTreeMap<Vec<u8>, Versioned>,
    revision: LogIndex,
    /// Per registered client: the latest applied sequence (0: none yet) and its answer.
    sessions: BTreeMap<u64, (u64, Option<Response>)>,
}

impl Model {
    fn apply(&mut self, index: LogIndex, command: &Command) -> Response {
        if let Err(error) = command.validate() {
            return Response::Rejected(error);
        }
        let session = match command.session {
            CommandSession::None => return self.apply_operations(index, command),
            CommandSession::Register => {
                self.sessions.insert(index.0, (0, None));
                return Response::SessionRegistered { client_id: index.0 };
            }
            CommandSession::Session(session) => session,
        };
        let (client_id, sequence) = (session.client_id, session.sequence);
        match self.sessions.get(&client_id) {
            None => Response::Rejected(KvError::SessionExpired {
                client_id,
                sequence,
            }),
            Some((latest, _)) if sequence < *latest => Response::Rejected(KvError::StaleSequence {
                client_id,
                sequence,
                latest: *latest,
            }),
            Some((latest, Some(cached))) if sequence == *latest => cached.clone(),
            _ => {
                let response = self.apply_operations(index, command);
                self.sessions
                    .insert(client_id, (sequence, Some(response.clone())));
                response
            }
        }
    }

    fn apply_operations(&mut self, index: LogIndex, command: &Command) -> Response {
        if let [Operation::Txn(txn)] = command.operations.as_slice() {
            return self.apply_txn(index, txn);
        }
        let mut data = self.data.clone();
        let mut outcomes = Vec::new();
        for (position, operation) in command.operations.iter().enumerate() {
            let (key, value) = match operation {
                Operation::Put { key, value } => (key, Some(value)),
                Operation::Delete { key } => (key, None),
                Operation::Cas { key, expect, value } => {
                    let current = data.get(key);
                    let holds = match expect {
                        Expect::Absent => current.is_none(),
                        Expect::Value(expected) => current.is_some_and(|c| c.value == *expected),
                        Expect::ModRevision(revision) => {
                            current.is_some_and(|c| c.metadata.mod_revision == *revision)
                        }
                    };
                    if !holds {
                        return Response::ComparisonFailed {
                            operation: position,
                            current: self.data.get(key).cloned(),
                        };
                    }
                    (key, value.as_ref())
                }
                Operation::DeleteRange { range } => {
                    let removed = remove_range(&mut data, range);
                    outcomes.push(WriteOutcome {
                        deleted: removed.len() as u64,
                        ..WriteOutcome::default()
                    });
                    continue;
                }
                Operation::Txn(_) => unreachable!("validation refuses a transaction in a batch"),
                Operation::PutWithLease { .. }
                | Operation::LeaseGrant { .. }
                | Operation::LeaseRevoke { .. } => unreachable!("the model generates no leases"),
                Operation::Auth(_) => unreachable!("the model generates no auth changes"),
            };
            let previous = data.get(key).cloned();
            let current = value.map(|value| put(&mut data, index, key, value));
            if value.is_none() {
                data.remove(key);
            }
            outcomes.push(WriteOutcome {
                previous: previous.as_ref().map(|p| p.metadata),
                current,
                deleted: u64::from(previous.is_some() && value.is_none()),
                previous_value: previous
                    .filter(|_| command.return_previous)
                    .map(|p| p.value),
            });
        }
        let modified = outcomes.iter().any(|outcome| {
            outcome.previous.is_some() || outcome.current.is_some() || outcome.deleted > 0
        });
        if modified {
            self.revision = index;
        }
        self.data = data;
        Response::Written {
            revision: self.revision,
            outcomes,
        }
    }

    /// A transaction, as etcd documents it: compares on the state before, absent keys as all
    /// zeros with no value; then the branch on a copy, kept whole.
    fn apply_txn(&mut self, index: LogIndex, txn: &Txn) -> Response {
        let succeeded = txn.compares.iter().all(|compare| {
            let current = self.data.get(&compare.key);
            let ordering = match (&compare.target, current) {
                (CompareTarget::Value(_), None) => return false,
                (CompareTarget::Value(operand), Some(current)) => current.value.cmp(operand),
                (CompareTarget::Version(operand), _) => {
                    current.map_or(0, |c| c.metadata.version).cmp(operand)
                }
                (CompareTarget::CreateRevision(operand), _) => current
                    .map_or(0, |c| c.metadata.create_revision.0)
                    .cmp(&operand.0),
                (CompareTarget::ModRevision(operand), _) => current
                    .map_or(0, |c| c.metadata.mod_revision.0)
                    .cmp(&operand.0),
                // No key has a lease: "no lease" is below every lease.
                (CompareTarget::Lease(operand), _) => None.cmp(operand),
            };
            match compare.op {
                CompareOp::Equal => ordering.is_eq(),
                CompareOp::NotEqual => ordering.is_ne(),
                CompareOp::Less => ordering.is_lt(),
                CompareOp::Greater => ordering.is_gt(),
            }
        });
        let branch = if succeeded { &txn.then } else { &txn.otherwise };
        let mut data = self.data.clone();
        let mut responses = Vec::new();
        let mut modified = false;
        for operation in branch {
            responses.push(match operation {
                TxnOp::Put {
                    lease: Some(lease), ..
                } => return Response::Rejected(KvError::LeaseNotFound { lease: *lease }),
                TxnOp::Put {
                    key,
                    value,
                    return_previous,
                    lease: None,
                } => {
                    let previous = data.get(key).cloned();
                    let current = put(&mut data, index, key, value);
                    modified = true;
                    TxnOpResponse::Put(WriteOutcome {
                        previous: previous.as_ref().map(|p| p.metadata),
                        current: Some(current),
                        previous_value: previous.filter(|_| *return_previous).map(|p| p.value),
                        deleted: 0,
                    })
                }
                TxnOp::Delete {
                    key,
                    return_previous,
                } => {
                    let removed: Vec<_> = data
                        .remove(key)
                        .map(|versioned| (key.clone(), versioned))
                        .into_iter()
                        .collect();
                    modified |= !removed.is_empty();
                    deleted_response(removed, *return_previous)
                }
                TxnOp::DeleteRange {
                    range,
                    return_previous,
                } => {
                    let removed = remove_range(&mut data, range);
                    modified |= !removed.is_empty();
                    deleted_response(removed, *return_previous)
                }
                TxnOp::Get { key } => TxnOpResponse::Get(data.get(key).cloned()),
                TxnOp::Range { range, limit } => {
                    let mut entries: Vec<_> = data
                        .iter()
                        .filter(|(key, _)| range.contains(key))
                        .map(|(key, versioned)| (key.clone(), versioned.clone()))
                        .collect();
                    let more = entries.len() > *limit;
                    entries.truncate(*limit);
                    TxnOpResponse::Range(ScanPage { entries, more })
                }
            });
        }
        if modified {
            self.revision = index;
        }
        self.data = data;
        Response::Txn(TxnResponse {
            succeeded,
            revision: self.revision,
            responses,
        })
    }
}

/// Writes `value` at `index`; returns the key's new metadata.
fn put(
    data: &mut BTreeMap<Vec<u8>, Versioned>,
    index: LogIndex,
    key: &[u8],
    value: &[u8],
) -> Metadata {
    let metadata = match data.get(key) {
        Some(old) => Metadata {
            mod_revision: index,
            version: old.metadata.version + 1,
            ..old.metadata
        },
        None => Metadata {
            create_revision: index,
            mod_revision: index,
            version: 1,
            lease: None,
        },
    };
    data.insert(
        key.to_vec(),
        Versioned {
            value: value.to_vec(),
            metadata,
        },
    );
    metadata
}

/// Removes every key in `range`; returns them in order.
fn remove_range(
    data: &mut BTreeMap<Vec<u8>, Versioned>,
    range: &KeyRange,
) -> Vec<(Vec<u8>, Versioned)> {
    let keys: Vec<_> = data
        .keys()
        .filter(|key| range.contains(key))
        .cloned()
        .collect();
    keys.into_iter()
        .filter_map(|key| data.remove(&key).map(|versioned| (key, versioned)))
        .collect()
}

fn deleted_response(removed: Vec<(Vec<u8>, Versioned)>, return_previous: bool) -> TxnOpResponse {
    TxnOpResponse::Delete {
        deleted: removed.len() as u64,
        previous: if return_previous { removed } else { Vec::new() },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_the_reference_model(steps in steps(40)) {
        let mut store = KvStore::new();
        let mut model = Model::default();
        let mut index = 0;
        let mut registered = Vec::new();
        for step in &steps {
            index += step.gap;
            let id = EntryId::new(Term(1), LogIndex(index));
            let bytes = step.payload.bytes(&registered);
            let answer = store.apply(id, &bytes);
            note_registration(&answer, &mut registered);
            let response = Response::decode(&answer).unwrap();
            match &step.payload {
                Payload::Command(command) => {
                    let command = resolve(command, &registered);
                    prop_assert_eq!(&response, &model.apply(LogIndex(index), &command));
                }
                Payload::Garbage(_) => {
                    // Random bytes could, rarely, spell a valid command; then the model follows.
                    if let Ok(command) = Command::decode(&bytes) {
                        prop_assert_eq!(&response, &model.apply(LogIndex(index), &command));
                    } else {
                        let malformed =
                            matches!(response, Response::Rejected(KvError::Malformed { .. }));
                        prop_assert!(malformed, "garbage answered with {:?}", response);
                    }
                }
            }
            prop_assert_eq!(store.revision(), model.revision);
        }
        let page = store.scan(&KeyRange::all(), 100);
        let expected: Vec<_> = model.data.into_iter().collect();
        prop_assert_eq!(page.entries, expected);
        store.check_invariants();
    }

    /// The watch history is exactly the committed changes: replaying its events in order on
    /// an empty map gives the store's data, each event's previous value is what the key held,
    /// and a revision appears in the history exactly when a command changed the store's
    /// revision.
    #[test]
    fn the_watch_history_replays_to_the_store(steps in steps(40)) {
        let mut store = KvStore::new();
        let mut registered = Vec::new();
        let mut index = 0;
        let mut modifying = Vec::new();
        for step in &steps {
            index += step.gap;
            let before = store.revision();
            let id = EntryId::new(Term(1), LogIndex(index));
            let answer = store.apply(id, &step.payload.bytes(&registered));
            note_registration(&answer, &mut registered);
            if store.revision() != before {
                modifying.push(store.revision());
            }
        }
        let revisions = store.changes_since(LogIndex(1), usize::MAX).unwrap();
        let recorded: Vec<LogIndex> = revisions.iter().map(|entry| entry.revision()).collect();
        prop_assert_eq!(recorded, modifying);
        let mut replayed: BTreeMap<Vec<u8>, Versioned> = BTreeMap::new();
        for entry in &revisions {
            for event in entry.events(&KeyRange::all(), true) {
                prop_assert_eq!(event.revision, entry.revision());
                prop_assert_eq!(event.previous.as_ref(), replayed.get(&event.key));
                match event.kind {
                    EventKind::Put => {
                        let metadata = event.metadata.unwrap();
                        prop_assert_eq!(metadata.mod_revision, event.revision);
                        replayed.insert(event.key, Versioned { value: event.value, metadata });
                    }
                    EventKind::Delete => {
                        prop_assert!(event.previous.is_some());
                        replayed.remove(&event.key);
                    }
                }
            }
        }
        let page = store.scan(&KeyRange::all(), 100);
        prop_assert_eq!(page.entries, replayed.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn snapshot_restore_gives_an_equal_store(
        before in steps(40),
        unrelated in steps(8),
        after in steps(20),
    ) {
        let mut original = KvStore::new();
        let mut registered = Vec::new();
        let (_, index) = run(&mut original, 0, &before, &mut registered);
        let bytes = original.snapshot();

        // The target holds other state first: restore must replace all of it.
        let mut restored = KvStore::new();
        run(&mut restored, 0, &unrelated, &mut Vec::new());
        restored.restore(&bytes).unwrap();
        prop_assert_eq!(&restored, &original);
        prop_assert_eq!(restored.snapshot(), bytes);

        let (original_responses, _) = run(&mut original, index, &after, &mut registered.clone());
        let (restored_responses, _) = run(&mut restored, index, &after, &mut registered);
        prop_assert_eq!(original_responses, restored_responses);
        prop_assert_eq!(&restored, &original);
        restored.check_invariants();
    }

    #[test]
    fn random_command_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut store = KvStore::new();
        let answer = store.apply(EntryId::new(Term(1), LogIndex(1)), &bytes);
        let response = Response::decode(&answer).unwrap();
        if Command::decode(&bytes).is_err() {
            let malformed = matches!(response, Response::Rejected(KvError::Malformed { .. }));
            prop_assert!(malformed, "garbage answered with {:?}", response);
            prop_assert!(store.is_empty());
        }
        store.check_invariants();
    }

    #[test]
    fn damaged_command_bytes_never_panic(
        command in command(),
        position in any::<prop::sample::Index>(),
        mask in 1u8..,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = keyval::codec::encode(&command).unwrap();
        let flip = position.index(bytes.len());
        bytes[flip] ^= mask;
        let mut store = KvStore::new();
        let answer = store.apply(EntryId::new(Term(1), LogIndex(1)), &bytes);
        prop_assert!(Response::decode(&answer).is_ok());
        let truncated = &bytes[..cut.index(bytes.len())];
        let answer = store.apply(EntryId::new(Term(1), LogIndex(2)), truncated);
        prop_assert!(Response::decode(&answer).is_ok());
        store.check_invariants();
    }

    #[test]
    fn random_snapshot_bytes_are_refused_without_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut store = KvStore::new();
        store.apply(
            EntryId::new(Term(1), LogIndex(1)),
            &Command::put(b"k".to_vec(), b"v".to_vec()).encode().unwrap(),
        );
        let before = store.clone();
        prop_assert!(store.restore(&bytes).is_err());
        prop_assert_eq!(store, before);
    }

    #[test]
    fn damaged_snapshots_never_panic(
        steps in steps(20),
        position in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let mut original = KvStore::new();
        run(&mut original, 0, &steps, &mut Vec::new());
        let mut bytes = original.snapshot();
        let flip = position.index(bytes.len());
        bytes[flip] ^= mask;
        let mut target = KvStore::new();
        match target.restore(&bytes) {
            Ok(()) => target.check_invariants(),
            Err(_) => prop_assert_eq!(target, KvStore::new()),
        }
    }
}
