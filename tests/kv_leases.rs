//! Leases in the key-value state machine: grant ids, attaching keys by put (batch and
//! transaction), a put without a lease detaching, a delete detaching, an unknown lease refused
//! (nothing applied), revoke deleting every attached key in one revision, a second revoke
//! refused, validation of TTLs and of lease operations sharing a command, and snapshot
//! format 4 carrying leases (round trip, hand-built records, invalid tables refused). Method:
//! apply encoded commands at chosen log indexes and decode the answers.

use keyval::codec;
use keyval::kv::{
    Command, KvError, KvStore, LeaseId, Metadata, Operation, Response, SnapshotError, Txn, TxnOp,
    Versioned, LEASE_TTL_SECONDS_MAX,
};
use keyval::{EntryId, LogIndex, StateMachine, Term};

const MAGIC: u32 = u32::from_be_bytes(*b"kvsn");

/// Applies `command` at `index` (without validating it first) and decodes the answer.
fn apply(store: &mut KvStore, index: u64, command: &Command) -> Response {
    let bytes = codec::encode(command).expect("commands encode");
    let answer = store.apply(EntryId::new(Term(1), LogIndex(index)), &bytes);
    store.check_invariants();
    Response::decode(&answer).expect("apply always returns a response")
}

fn grant(store: &mut KvStore, index: u64, ttl_seconds: u64) -> LeaseId {
    match apply(store, index, &Command::lease_grant(ttl_seconds)) {
        Response::LeaseGranted {
            lease,
            ttl_seconds: granted,
        } => {
            assert_eq!(granted, ttl_seconds);
            lease
        }
        other => panic!("a grant answered {other:?}"),
    }
}

fn put_leased(store: &mut KvStore, index: u64, key: &str, lease: LeaseId) -> Response {
    let command = Command::put_with_lease(key.into(), b"v".to_vec(), lease);
    apply(store, index, &command)
}

fn lease_of(store: &KvStore, key: &str) -> Option<LeaseId> {
    store.get(key.as_bytes()).and_then(|v| v.metadata.lease)
}

fn keys(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|key| key.as_bytes().to_vec()).collect()
}

#[test]
fn a_grant_is_named_after_its_entry_and_never_zero() {
    let mut store = KvStore::new();
    let first = grant(&mut store, 1, 10);
    let second = grant(&mut store, 7, 60);
    assert_eq!((first, second), (LeaseId(1), LeaseId(7)));
    assert_eq!(store.leases(), vec![(LeaseId(1), 10), (LeaseId(7), 60)]);
    assert_eq!(store.lease_ttl(LeaseId(7)), Some(60));
    assert_eq!(store.lease_keys(LeaseId(1)), Some(Vec::new()));
    assert_eq!(store.lease_ttl(LeaseId(0)), None);
    assert_eq!(store.revision(), LogIndex(0), "a grant modifies no key");
}

#[test]
fn revoke_deletes_every_attached_key_in_one_revision() {
    let mut store = KvStore::new();
    let lease = grant(&mut store, 1, 10);
    let other = grant(&mut store, 2, 10);
    assert!(put_leased(&mut store, 3, "a", lease).is_written());
    // A batch may attach several keys, to different leases.
    let batch = Command::batch(vec![
        Operation::PutWithLease {
            key: b"b".to_vec(),
            value: b"2".to_vec(),
            lease,
        },
        Operation::PutWithLease {
            key: b"c".to_vec(),
            value: b"3".to_vec(),
            lease: other,
        },
        Operation::Put {
            key: b"plain".to_vec(),
            value: b"p".to_vec(),
        },
    ]);
    assert!(apply(&mut store, 4, &batch).is_written());
    // And a transaction put.
    let txn = Txn::new().then([TxnOp::put("d", "4").with_lease(lease)]);
    assert!(matches!(
        apply(&mut store, 5, &Command::txn(txn)),
        Response::Txn(_)
    ));
    assert_eq!(lease_of(&store, "d"), Some(lease));
    assert_eq!(store.lease_keys(lease), Some(keys(&["a", "b", "d"])));

    let answer = apply(&mut store, 6, &Command::lease_revoke(lease));
    assert_eq!(
        answer,
        Response::LeaseRevoked {
            revision: LogIndex(6),
            deleted: 3
        }
    );
    for key in ["a", "b", "d"] {
        assert_eq!(store.get(key.as_bytes()), None, "{key} was revoked");
    }
    assert_eq!(lease_of(&store, "c"), Some(other));
    assert!(store.get(b"plain").is_some());
    assert_eq!(store.revision(), LogIndex(6));
    assert_eq!(store.lease_ttl(lease), None);

    // A second revoke (a keeper's retry, a client's) is refused and changes nothing.
    let again = apply(&mut store, 7, &Command::lease_revoke(lease));
    assert_eq!(again, Response::Rejected(KvError::LeaseNotFound { lease }));
    assert_eq!(store.revision(), LogIndex(6));
    // A revoke of a lease without keys leaves the revision alone.
    let empty = grant(&mut store, 8, 5);
    assert_eq!(
        apply(&mut store, 9, &Command::lease_revoke(empty)),
        Response::LeaseRevoked {
            revision: LogIndex(6),
            deleted: 0
        }
    );
}

#[test]
fn a_put_without_a_lease_detaches_and_a_delete_forgets() {
    let mut store = KvStore::new();
    let lease = grant(&mut store, 1, 10);
    let other = grant(&mut store, 2, 10);
    put_leased(&mut store, 3, "a", lease);
    put_leased(&mut store, 4, "b", lease);
    put_leased(&mut store, 5, "c", lease);
    // A plain put detaches (etcd), a put with another lease moves the key.
    apply(&mut store, 6, &Command::put(b"a".to_vec(), b"x".to_vec()));
    put_leased(&mut store, 7, "b", other);
    assert_eq!(lease_of(&store, "a"), None);
    assert_eq!(lease_of(&store, "b"), Some(other));
    assert_eq!(store.get(b"b").unwrap().metadata.version, 2);
    // A delete removes the key from its lease's set.
    apply(&mut store, 8, &Command::delete(b"c".to_vec()));
    assert_eq!(store.lease_keys(lease), Some(Vec::new()));
    assert_eq!(store.lease_keys(other), Some(keys(&["b"])));
    // A range delete too; the key created again has no lease.
    put_leased(&mut store, 9, "c", other);
    apply(
        &mut store,
        10,
        &Command::delete_range(keyval::kv::KeyRange::all()),
    );
    assert_eq!(store.lease_keys(other), Some(Vec::new()));
    apply(&mut store, 11, &Command::put(b"c".to_vec(), b"y".to_vec()));
    assert_eq!(lease_of(&store, "c"), None);
    let answer = apply(&mut store, 12, &Command::lease_revoke(lease));
    assert!(matches!(answer, Response::LeaseRevoked { deleted: 0, .. }));
    assert!(store.get(b"c").is_some());
}

#[test]
fn an_unknown_lease_is_refused_and_nothing_applies() {
    let mut store = KvStore::new();
    let lease = grant(&mut store, 1, 10);
    apply(&mut store, 2, &Command::put(b"a".to_vec(), b"1".to_vec()));
    let before = store.clone();
    let batch = Command::batch(vec![
        Operation::PutWithLease {
            key: b"a".to_vec(),
            value: b"2".to_vec(),
            lease,
        },
        Operation::PutWithLease {
            key: b"b".to_vec(),
            value: b"2".to_vec(),
            lease: LeaseId(99),
        },
    ]);
    assert_eq!(
        apply(&mut store, 3, &batch),
        Response::Rejected(KvError::LeaseNotFound { lease: LeaseId(99) })
    );
    // The first put was undone, and so was its attachment.
    assert_eq!(store.get(b"a"), before.get(b"a"));
    assert_eq!(store.lease_keys(lease), Some(Vec::new()));
    assert_eq!(store.revision(), before.revision());
    // Lease 0 is kvctl's "no lease" and never granted.
    assert!(matches!(
        put_leased(&mut store, 4, "z", LeaseId(0)),
        Response::Rejected(KvError::LeaseNotFound { .. })
    ));
    // A revoked lease is unknown.
    apply(&mut store, 5, &Command::lease_revoke(lease));
    assert!(matches!(
        put_leased(&mut store, 6, "a", lease),
        Response::Rejected(KvError::LeaseNotFound { .. })
    ));
}

#[test]
fn grants_and_revokes_are_validated() {
    assert_eq!(
        Command::lease_grant(0).validate(),
        Err(KvError::InvalidLeaseTtl {
            ttl_seconds: 0,
            max: LEASE_TTL_SECONDS_MAX
        })
    );
    assert!(Command::lease_grant(LEASE_TTL_SECONDS_MAX)
        .validate()
        .is_ok());
    assert!(Command::lease_grant(LEASE_TTL_SECONDS_MAX + 1)
        .validate()
        .is_err());
    let shared = Command::batch(vec![
        Operation::LeaseGrant { ttl_seconds: 5 },
        Operation::Delete { key: b"k".to_vec() },
    ]);
    assert_eq!(shared.validate(), Err(KvError::LeaseNotAlone));
    assert_eq!(
        Command::lease_revoke(LeaseId(3)).with_previous().validate(),
        Err(KvError::LeaseNotAlone)
    );
    // Apply refuses the same way, whatever a proposer skipped.
    let mut store = KvStore::new();
    assert_eq!(
        apply(&mut store, 1, &shared),
        Response::Rejected(KvError::LeaseNotAlone)
    );
    assert!(matches!(
        apply(&mut store, 2, &Command::lease_grant(0)),
        Response::Rejected(KvError::InvalidLeaseTtl { .. })
    ));
    assert_eq!(store.lease_count(), 0);
    // Exactly once: a grant retried under its session is answered from the cache.
    let Response::SessionRegistered { client_id } =
        apply(&mut store, 3, &Command::register_session())
    else {
        panic!("registration")
    };
    let first = apply(
        &mut store,
        4,
        &Command::lease_grant(9).with_session(client_id, 1),
    );
    let retry = apply(
        &mut store,
        5,
        &Command::lease_grant(9).with_session(client_id, 1),
    );
    assert_eq!(first, retry);
    assert_eq!(store.lease_count(), 1);
}

/// A store with two leases, keys on both and one without.
fn leased_store() -> KvStore {
    let mut store = KvStore::new();
    let lease = grant(&mut store, 1, 10);
    let other = grant(&mut store, 2, 30);
    put_leased(&mut store, 3, "a", lease);
    put_leased(&mut store, 4, "b", other);
    put_leased(&mut store, 5, "c", lease);
    apply(&mut store, 6, &Command::put(b"d".to_vec(), b"x".to_vec()));
    grant(&mut store, 7, 5);
    store
}

#[test]
fn snapshots_carry_leases_and_rebuild_their_keys() {
    let mut original = leased_store();
    let bytes = original.snapshot();
    let mut restored = KvStore::new();
    restored.restore(&bytes).unwrap();
    restored.check_invariants();
    assert_eq!(restored, original);
    assert_eq!(restored.lease_keys(LeaseId(1)), Some(keys(&["a", "c"])));
    assert_eq!(restored.lease_keys(LeaseId(7)), Some(Vec::new()));
    assert_eq!(restored.snapshot(), bytes, "the same bytes both ways");
    // A follower that installed the snapshot revokes the same way.
    let answer = apply(&mut restored, 8, &Command::lease_revoke(LeaseId(1)));
    assert!(matches!(answer, Response::LeaseRevoked { deleted: 2, .. }));
}

/// The header record, laid out as the snapshot header is.
fn header(version: u32, applied: u64, revision: u64, keys: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let fields = (
        MAGIC,
        version,
        LogIndex(applied),
        LogIndex(revision),
        keys,
        0u64,
    );
    codec::write_value_record(&fields, &mut out).unwrap();
    out
}

fn lease_table(leases: &[(u64, u64)], out: &mut Vec<u8>) {
    codec::write_value_record(&(leases.len() as u64), out).unwrap();
    for (id, ttl) in leases {
        codec::write_value_record(&(LeaseId(*id), *ttl), out).unwrap();
    }
}

fn key_record(key: &[u8], lease: Option<u64>, out: &mut Vec<u8>) {
    let versioned = Versioned {
        value: b"v".to_vec(),
        metadata: Metadata {
            lease: lease.map(LeaseId),
            ..Metadata::created(LogIndex(3))
        },
    };
    codec::write_value_record(&(key.to_vec(), versioned), out).unwrap();
}

#[test]
fn a_hand_built_version_4_snapshot_restores() {
    let mut bytes = header(4, 9, 3, 2);
    lease_table(&[(2, 10), (5, 60)], &mut bytes);
    key_record(b"a", Some(5), &mut bytes);
    key_record(b"b", None, &mut bytes);
    let mut store = KvStore::new();
    store.restore(&bytes).unwrap();
    assert_eq!(store.leases(), vec![(LeaseId(2), 10), (LeaseId(5), 60)]);
    assert_eq!(store.lease_keys(LeaseId(5)), Some(keys(&["a"])));
    // Written again as version 6: the same records, then an empty watch history compacted
    // up to the snapshot's revision (a version 4 snapshot has no history), then an empty
    // auth section.
    assert_eq!(store.compact_revision(), LogIndex(3));
    let mut expected = header(6, 9, 3, 2);
    expected.extend_from_slice(&bytes[header(4, 9, 3, 2).len()..]);
    codec::write_value_record(&(LogIndex(3), 0u64), &mut expected).unwrap();
    let auth = (false, LogIndex(0), Vec::<u8>::new(), 0u64, 0u64);
    codec::write_value_record(&auth, &mut expected).unwrap();
    assert_eq!(store.snapshot(), expected);
}

#[test]
fn invalid_lease_tables_are_refused() {
    let store = leased_store();
    let refused = |bytes: Vec<u8>| {
        let mut target = store.clone();
        let error = target.restore(&bytes).expect_err("must be refused");
        assert_eq!(
            target, store,
            "a refused restore leaves the store as it was"
        );
        match *error.downcast::<SnapshotError>().unwrap() {
            SnapshotError::Invalid { reason, .. } => reason,
            other => panic!("expected Invalid, got {other}"),
        }
    };
    let mut unknown = header(4, 9, 3, 1);
    lease_table(&[(2, 10)], &mut unknown);
    key_record(b"a", Some(4), &mut unknown);
    assert!(refused(unknown).contains("lease"));

    let mut out_of_order = header(4, 9, 3, 0);
    lease_table(&[(5, 10), (2, 10)], &mut out_of_order);
    assert!(refused(out_of_order).contains("order"));

    let mut ttl_zero = header(4, 9, 3, 0);
    lease_table(&[(2, 0)], &mut ttl_zero);
    assert!(refused(ttl_zero).contains("TTL"));

    let mut id_zero = header(4, 9, 3, 0);
    lease_table(&[(0, 10)], &mut id_zero);
    refused(id_zero);

    let mut id_after_applied = header(4, 9, 3, 0);
    lease_table(&[(10, 10)], &mut id_after_applied);
    refused(id_after_applied);
}
