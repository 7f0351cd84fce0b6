//! Snapshots of the key-value state machine: a snapshot restores to an equal store (data,
//! sessions, revision), and every kind of damage — truncation, flipped bits, trailing bytes,
//! foreign data, well-framed records that break an invariant — is refused with an error that
//! leaves the store untouched; version 1 (before sessions were registered), version 2
//! (before key metadata carried a lease) and version 3 (before the lease table) snapshots
//! still restore, their cached responses converted. Snapshots with leases: kv_leases.rs. Method: hand-built stores and hand-built snapshot records.

use keyval::codec;
use keyval::kv::{
    Command, KvStore, LeaseId, Metadata, Response, SnapshotError, Versioned, WriteOutcome,
};
use keyval::{EntryId, LogIndex, StateMachine, Term};

const MAGIC: u32 = u32::from_be_bytes(*b"kvsn");

fn apply(store: &mut KvStore, index: u64, command: &Command) -> Vec<u8> {
    let bytes = command.encode().expect("test commands are valid");
    store.apply(EntryId::new(Term(1), LogIndex(index)), &bytes)
}

/// Registers a session at `index`; returns its client id.
fn register(store: &mut KvStore, index: u64) -> u64 {
    match Response::decode(&apply(store, index, &Command::register_session())).unwrap() {
        Response::SessionRegistered { client_id } => client_id,
        other => panic!("registration answered {other:?}"),
    }
}

/// A store with several keys, a deleted key, a client session that wrote twice and one
/// registered that has not written yet.
fn populated() -> KvStore {
    let mut store = KvStore::new();
    apply(&mut store, 1, &Command::put(b"a".to_vec(), b"1".to_vec()));
    apply(&mut store, 2, &Command::put(b"b".to_vec(), vec![0xAB; 300]));
    assert_eq!(register(&mut store, 3), 3);
    apply(
        &mut store,
        4,
        &Command::put(b"a".to_vec(), b"2".to_vec()).with_session(3, 1),
    );
    apply(
        &mut store,
        5,
        &Command::put(b"c".to_vec(), b"3".to_vec()).with_session(3, 2),
    );
    apply(&mut store, 6, &Command::delete(b"c".to_vec()));
    assert_eq!(register(&mut store, 7), 7);
    apply(&mut store, 8, &Command::delete(b"zzz".to_vec()));
    store
}

/// Restores `bytes` into a copy of `store`, checks a failure left it untouched, and returns the
/// error.
fn restore_fails(store: &KvStore, bytes: &[u8]) -> SnapshotError {
    let mut target = store.clone();
    let error = target
        .restore(bytes)
        .expect_err("damaged snapshot must be refused");
    assert_eq!(
        &target, store,
        "a refused restore leaves the store as it was"
    );
    *error
        .downcast::<SnapshotError>()
        .expect("restore reports a SnapshotError")
}

/// A header record with these fields, laid out as the snapshot header is.
fn header(
    magic: u32,
    version: u32,
    applied: u64,
    revision: u64,
    keys: u64,
    sessions: u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    let fields = (
        magic,
        version,
        LogIndex(applied),
        LogIndex(revision),
        keys,
        sessions,
    );
    codec::write_value_record(&fields, &mut out).unwrap();
    out
}

/// A key record of versions 1 and 2: metadata without a lease.
fn key_record(key: &[u8], metadata: Metadata, out: &mut Vec<u8>) {
    assert_eq!(metadata.lease, None, "versions 1 and 2 have no leases");
    let old_metadata = (
        metadata.create_revision,
        metadata.mod_revision,
        metadata.version,
    );
    let versioned = (b"v".to_vec(), old_metadata);
    codec::write_value_record(&(key.to_vec(), versioned), out).unwrap();
}

/// A key record of version 3.
fn key_record_v3(key: &[u8], metadata: Metadata, out: &mut Vec<u8>) {
    let versioned = Versioned {
        value: b"v".to_vec(),
        metadata,
    };
    codec::write_value_record(&(key.to_vec(), versioned), out).unwrap();
}

fn session_record(
    client_id: u64,
    sequence: u64,
    response: Vec<u8>,
    last_used: u64,
    out: &mut Vec<u8>,
) {
    let session = (sequence, response, LogIndex(last_used));
    codec::write_value_record(&(client_id, session), out).unwrap();
}

fn metadata(create: u64, modified: u64, version: u64) -> Metadata {
    Metadata {
        create_revision: LogIndex(create),
        mod_revision: LogIndex(modified),
        version,
        lease: None,
    }
}

#[test]
fn round_trip_restores_an_equal_store() {
    let mut original = populated();
    let bytes = original.snapshot();
    let mut restored = KvStore::new();
    apply(
        &mut restored,
        1,
        &Command::put(b"other".to_vec(), b"x".to_vec()),
    );
    restored.restore(&bytes).unwrap();
    assert_eq!(restored, original);
    assert_eq!(restored.applied_index(), LogIndex(8));
    assert_eq!(restored.revision(), LogIndex(6));
    assert_eq!(restored.snapshot(), bytes, "snapshots are canonical");
    restored.check_invariants();

    // Sessions came along: a duplicate is answered from the cache on both, and the session
    // registered without a write yet takes its first one.
    assert_eq!(restored.session_sequence(3), Some(2));
    assert_eq!(restored.session_sequence(7), Some(0));
    let duplicate = Command::put(b"c".to_vec(), b"3".to_vec()).with_session(3, 2);
    assert_eq!(
        apply(&mut original, 9, &duplicate),
        apply(&mut restored, 9, &duplicate)
    );
    assert_eq!(
        restored.get(b"c"),
        None,
        "the duplicate was not applied again"
    );
    let first = Command::put(b"d".to_vec(), b"4".to_vec()).with_session(7, 1);
    assert_eq!(
        apply(&mut original, 10, &first),
        apply(&mut restored, 10, &first)
    );
    assert_eq!(restored.get(b"d").unwrap().metadata.version, 1);
    assert_eq!(restored, original);
}

#[test]
fn empty_store_round_trips() {
    let mut empty = KvStore::new();
    let mut target = populated();
    target.restore(&empty.snapshot()).unwrap();
    assert_eq!(target, KvStore::new());
}

#[test]
fn every_truncation_and_extension_is_refused() {
    let store = populated();
    let bytes = store.clone().snapshot();
    for cut in 0..bytes.len() {
        restore_fails(&store, &bytes[..cut]);
    }
    let mut extended = bytes.clone();
    extended.push(0);
    assert!(matches!(
        restore_fails(&store, &extended),
        SnapshotError::TrailingBytes { extra: 1 }
    ));
}

#[test]
fn every_flipped_bit_is_refused() {
    let store = populated();
    let bytes = store.clone().snapshot();
    for position in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut damaged = bytes.clone();
            damaged[position] ^= bit;
            restore_fails(&store, &damaged);
        }
    }
}

#[test]
fn foreign_data_and_unknown_versions_are_refused() {
    let store = populated();
    assert!(matches!(
        restore_fails(&store, &header(0x1234_5678, 1, 0, 0, 0, 0)),
        SnapshotError::NotASnapshot { found: 0x1234_5678 }
    ));
    for version in [0, 7] {
        assert!(matches!(
            restore_fails(&store, &header(MAGIC, version, 0, 0, 0, 0)),
            SnapshotError::UnknownVersion {
                found,
                supported: 6,
                oldest: 1,
            } if found == version
        ));
    }
    assert!(matches!(
        restore_fails(&store, b"definitely not a snapshot"),
        SnapshotError::Record { record: 0, .. } | SnapshotError::Truncated { record: 0 }
    ));
    // A header announcing more keys than follow.
    assert!(matches!(
        restore_fails(&store, &header(MAGIC, 1, 5, 5, u64::MAX, 0)),
        SnapshotError::Truncated { record: 1 }
    ));
    // A minimal valid snapshot, to show the hand-built records match the real layout.
    let mut target = store.clone();
    target.restore(&header(MAGIC, 3, 5, 0, 0, 0)).unwrap();
    assert_eq!(target.applied_index(), LogIndex(5));
    assert!(target.is_empty());
    // Written back as version 6: the header, an empty lease table, an empty watch history
    // compacted up to the revision (0), an empty auth section (disabled, revision 0, no
    // secret, no users, no roles).
    let mut version_6 = header(MAGIC, 6, 5, 0, 0, 0);
    codec::write_value_record(&0u64, &mut version_6).unwrap();
    codec::write_value_record(&(LogIndex(0), 0u64), &mut version_6).unwrap();
    let auth = (false, LogIndex(0), Vec::<u8>::new(), 0u64, 0u64);
    codec::write_value_record(&auth, &mut version_6).unwrap();
    assert_eq!(target.clone().snapshot(), version_6);
}

/// Version 1 was written before sessions were registered: its sessions restore and carry on.
#[test]
fn a_version_1_snapshot_restores_with_its_sessions() {
    let response = Response::Written {
        revision: LogIndex(4),
        outcomes: Vec::new(),
    }
    .encode();
    let mut bytes = header(MAGIC, 1, 9, 4, 1, 1);
    key_record(b"a", metadata(4, 4, 1), &mut bytes);
    session_record(0xDEAD_BEEF_0000, 5, response.clone(), 4, &mut bytes);
    let mut store = KvStore::new();
    store.restore(&bytes).unwrap();
    store.check_invariants();
    assert_eq!(store.session_sequence(0xDEAD_BEEF_0000), Some(5));
    // The duplicate is answered from the cache, the next sequence applies.
    let duplicate = Command::put(b"a".to_vec(), b"x".to_vec()).with_session(0xDEAD_BEEF_0000, 5);
    assert_eq!(apply(&mut store, 10, &duplicate), response);
    let next = Command::put(b"a".to_vec(), b"y".to_vec()).with_session(0xDEAD_BEEF_0000, 6);
    apply(&mut store, 11, &next);
    assert_eq!(store.get(b"a").unwrap().value, b"y");
    assert_eq!(store.get(b"a").unwrap().metadata.version, 2);
    // Written again, it is version 6.
    let mut header_only = store.snapshot();
    header_only.truncate(header(MAGIC, 6, 11, 11, 1, 1).len());
    assert_eq!(header_only, header(MAGIC, 6, 11, 11, 1, 1));
}

/// Version 2 was written before key metadata carried a lease and outcomes a delete count:
/// its keys restore without a lease, and a cached response is converted, so a duplicate is
/// answered in the current layout.
#[test]
fn a_version_2_snapshot_restores_with_converted_metadata_and_responses() {
    let old_metadata =
        |create: u64, modified: u64, version: u64| (LogIndex(create), LogIndex(modified), version);
    // Response::Written as version 2 laid it out: a put that replaced, then a delete.
    let old_response = codec::encode(&(
        0u32, // variant Written
        LogIndex(6),
        vec![
            (
                Some(old_metadata(2, 4, 2)),
                Some(old_metadata(2, 6, 3)),
                Some(b"old".to_vec()),
            ),
            (Some(old_metadata(5, 5, 1)), None, None),
        ],
    ))
    .unwrap();
    let mut bytes = header(MAGIC, 2, 9, 6, 2, 2);
    key_record(b"a", metadata(2, 6, 3), &mut bytes);
    key_record(b"b", metadata(3, 3, 1), &mut bytes);
    session_record(3, 0, Vec::new(), 3, &mut bytes);
    session_record(7, 4, old_response, 6, &mut bytes);
    let mut store = KvStore::new();
    store.restore(&bytes).unwrap();
    store.check_invariants();
    let a = store.get(b"a").unwrap();
    assert_eq!(a.metadata, metadata(2, 6, 3));
    assert_eq!(a.metadata.lease, None);
    assert_eq!(store.session_sequence(3), Some(0));

    let duplicate = Command::put(b"a".to_vec(), b"x".to_vec()).with_session(7, 4);
    let answer = Response::decode(&apply(&mut store, 10, &duplicate)).unwrap();
    let expected = Response::Written {
        revision: LogIndex(6),
        outcomes: vec![
            WriteOutcome {
                previous: Some(metadata(2, 4, 2)),
                current: Some(metadata(2, 6, 3)),
                previous_value: Some(b"old".to_vec()),
                deleted: 0,
            },
            WriteOutcome {
                previous: Some(metadata(5, 5, 1)),
                current: None,
                previous_value: None,
                deleted: 1,
            },
        ],
    };
    assert_eq!(answer, expected);
    assert_eq!(
        store.get(b"a").unwrap().value,
        b"v",
        "the duplicate applied nothing"
    );

    // A damaged old response is refused like any other.
    let mut garbage = header(MAGIC, 2, 9, 0, 0, 1);
    session_record(7, 4, vec![0, 6, 1, 1, 0xFF], 6, &mut garbage);
    assert!(matches!(
        restore_fails(&store, &garbage),
        SnapshotError::Invalid { .. }
    ));
}

/// Version 3 (before leases were granted) restores; it has no lease table, so a key in it
/// that names a lease is refused.
#[test]
fn a_version_3_snapshot_restores_without_leases() {
    let mut bytes = header(MAGIC, 3, 5, 2, 2, 0);
    key_record_v3(b"a", metadata(1, 2, 2), &mut bytes);
    key_record_v3(b"b", metadata(2, 2, 1), &mut bytes);
    let mut store = KvStore::new();
    store.restore(&bytes).unwrap();
    assert_eq!(store.get(b"a").unwrap().metadata, metadata(1, 2, 2));
    assert_eq!(store.get(b"b").unwrap().metadata.lease, None);
    assert_eq!(store.lease_count(), 0);

    let leased = Metadata {
        lease: Some(LeaseId(42)),
        ..metadata(1, 2, 2)
    };
    let mut bytes = header(MAGIC, 3, 5, 2, 1, 0);
    key_record_v3(b"a", leased, &mut bytes);
    match restore_fails(&store, &bytes) {
        SnapshotError::Invalid { reason, .. } => assert!(reason.contains("lease"), "{reason}"),
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn well_framed_records_that_break_invariants_are_refused() {
    let store = populated();
    let invalid = |bytes: Vec<u8>| match restore_fails(&store, &bytes) {
        SnapshotError::Invalid { reason, .. } => reason,
        other => panic!("expected Invalid, got {other}"),
    };
    invalid(header(MAGIC, 1, 5, 6, 0, 0));

    let mut keys_out_of_order = header(MAGIC, 1, 9, 9, 2, 0);
    key_record(b"b", metadata(1, 1, 1), &mut keys_out_of_order);
    key_record(b"a", metadata(1, 1, 1), &mut keys_out_of_order);
    assert!(invalid(keys_out_of_order).contains("order"));

    let mut revision_ahead = header(MAGIC, 1, 9, 5, 1, 0);
    key_record(b"a", metadata(1, 6, 2), &mut revision_ahead);
    invalid(revision_ahead);

    let mut version_zero = header(MAGIC, 1, 9, 9, 1, 0);
    key_record(b"a", metadata(1, 1, 0), &mut version_zero);
    invalid(version_zero);

    let mut empty_key = header(MAGIC, 1, 9, 9, 1, 0);
    key_record(b"", metadata(1, 1, 1), &mut empty_key);
    invalid(empty_key);

    let response = Response::Written {
        revision: LogIndex(1),
        outcomes: Vec::new(),
    }
    .encode();
    let mut good_session = header(MAGIC, 1, 9, 0, 0, 1);
    session_record(3, 1, response.clone(), 4, &mut good_session);
    let mut target = store.clone();
    target.restore(&good_session).unwrap();
    assert_eq!(target.session_sequence(3), Some(1));

    // Version 1 had no sessions without a write.
    let mut sequence_zero = header(MAGIC, 1, 9, 0, 0, 1);
    session_record(3, 0, Vec::new(), 4, &mut sequence_zero);
    invalid(sequence_zero);

    // Version 2 has them (registered, nothing written), always without a cached response.
    let mut registered = header(MAGIC, 2, 9, 0, 0, 1);
    session_record(3, 0, Vec::new(), 4, &mut registered);
    let mut target = store.clone();
    target.restore(&registered).unwrap();
    assert_eq!(target.session_sequence(3), Some(0));
    let mut registered_with_response = header(MAGIC, 2, 9, 0, 0, 1);
    session_record(3, 0, response.clone(), 4, &mut registered_with_response);
    invalid(registered_with_response);
    let mut written_without_response = header(MAGIC, 2, 9, 0, 0, 1);
    session_record(3, 1, Vec::new(), 4, &mut written_without_response);
    invalid(written_without_response);

    let mut used_in_future = header(MAGIC, 1, 9, 0, 0, 1);
    session_record(3, 1, response.clone(), 10, &mut used_in_future);
    invalid(used_in_future);

    let mut same_last_use = header(MAGIC, 1, 9, 0, 0, 2);
    session_record(3, 1, response.clone(), 4, &mut same_last_use);
    session_record(4, 1, response.clone(), 4, &mut same_last_use);
    invalid(same_last_use);

    let mut clients_out_of_order = header(MAGIC, 1, 9, 0, 0, 2);
    session_record(4, 1, response.clone(), 4, &mut clients_out_of_order);
    session_record(3, 1, response, 5, &mut clients_out_of_order);
    invalid(clients_out_of_order);

    let mut garbage_response = header(MAGIC, 1, 9, 0, 0, 1);
    session_record(3, 1, vec![0xFF; 5], 4, &mut garbage_response);
    invalid(garbage_response);
}

/// Issue #12: a snapshot freezes the store in O(1) and serializes later. Whatever is applied
/// between the freeze and the serialization — new keys, overwrites, deletes, session use —
/// the bytes are the store as it was frozen, and the live store is unaffected by the frozen
/// copy.
#[test]
fn a_frozen_snapshot_serializes_the_state_at_the_freeze() {
    let mut store = populated();
    for k in 0..2_000u64 {
        let key = format!("key-{k:05}").into_bytes();
        apply(&mut store, 9 + k, &Command::put(key, vec![k as u8; 40]));
    }
    let expected = store.snapshot();
    let at_freeze = store.clone();
    let writer = store.snapshot_writer();
    let mut index = 2_009;
    for k in (0..2_000u64).step_by(3) {
        let key = format!("key-{k:05}").into_bytes();
        let command = if k % 2 == 0 {
            Command::put(key, b"changed".to_vec())
        } else {
            Command::delete(key)
        };
        apply(&mut store, index, &command);
        index += 1;
    }
    apply(
        &mut store,
        index,
        &Command::put(b"a".to_vec(), b"3".to_vec()).with_session(3, 3),
    );
    let written = writer();
    assert_eq!(written, expected, "the frozen snapshot saw later writes");
    let mut restored = KvStore::new();
    restored.restore(&written).unwrap();
    assert_eq!(restored, at_freeze);
    assert_ne!(restored, store);
    assert_eq!(
        store.get(b"key-00000").map(|versioned| versioned.value),
        Some(b"changed".to_vec())
    );
}
