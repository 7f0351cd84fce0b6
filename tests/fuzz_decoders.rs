//! Hostile input against every decoder keyval has — the record framing, peer messages, storage
//! files (state, segments, snapshots, whole-directory recovery), kv commands and kv snapshots —
//! and `Raft::step` on arbitrary messages. Goal: no input panics, no length read from the input
//! sizes an allocation beyond the limit that guards it, and valid encodings round-trip.
//! Method: proptest over arbitrary bytes and over *mutations of valid encodings* (bit flips,
//! truncations, inflated length prefixes, splices), with a counting global allocator that
//! records the largest single allocation made on the test's own thread.
//!
//! Tests named after a bug pin panics and an out-of-proportion allocation that fuzzing found
//! (all fixed since). The cargo-fuzz targets in `fuzz/` cover the same decoders
//! without time limits.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;

use keyval::codec::{self, RecordRead, RECORD_HEADER_BYTES};
use keyval::error::CodecError;
use keyval::kv::auth::{AuthOperation, Permission, PermissionGrant};
use keyval::kv::{
    Command, Compare, CompareOp, CompareTarget, Expect, KeyRange, KvError, KvStore, LeaseId,
    Operation, Response, Txn, TxnOp,
};
use keyval::limits::{FRAME_BYTES_MAX, RECORD_BYTES_MAX};
use keyval::protocol::auth::{AuthRequest, AuthToken, Password};
use keyval::protocol::{RequestBody, RequestFrame};
use keyval::raft::{AppendResponse, Message, MessageBody, Raft, RoleKind};
use keyval::storage::file::faulty::FaultyFileSystem;
use keyval::storage::file::format::{self, StateRecord, SEGMENT_HEADER_BYTES};
use keyval::storage::file::io::FileSystem;
use keyval::storage::file::{FileOptions, FileStorage};
use keyval::storage::Storage;
use keyval::testkit::CoreNetwork;
use keyval::transport::tcp::Handshake;
use keyval::types::{MemberAddress, SnapshotMeta};
use keyval::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, NodeId, StateMachine,
    StorageError, Term,
};

// ---- the largest allocation ----------------------------------------------------------------

/// The system allocator, noting the largest single request made on each thread.
struct CountingAllocator;

thread_local! {
    /// The largest allocation (or reallocation target) on this thread since the last reset.
    static LARGEST_ALLOCATION_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(bytes: usize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = LARGEST_ALLOCATION_BYTES.try_with(|largest| largest.set(largest.get().max(bytes)));
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping touches only a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(pointer, layout, new_size) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `action` and returns its result with the largest single allocation it made.
fn largest_allocation<T>(action: impl FnOnce() -> T) -> (T, usize) {
    LARGEST_ALLOCATION_BYTES.with(|largest| largest.set(0));
    let result = action();
    let largest = LARGEST_ALLOCATION_BYTES.with(Cell::get);
    (result, largest)
}

/// Serde pre-allocates a sequence from its (input-provided) length only up to 1 MiB
/// (`serde::de::size_hint::cautious`); that much may be allocated whatever the input's size.
const SERDE_PREALLOCATION_BYTES_MAX: usize = 1024 * 1024;

/// Room for the decoders' own bookkeeping (error strings, small collections).
const ALLOCATION_SLACK_BYTES: usize = 64 * 1024;

/// The most a decoder may allocate at once for `input_bytes` of input when every length inside
/// is checked against the input before allocating: a few times the input, plus serde's
/// capped pre-allocation.
fn allocation_bound(input_bytes: usize) -> usize {
    4 * input_bytes + SERDE_PREALLOCATION_BYTES_MAX + ALLOCATION_SLACK_BYTES
}

/// The most any codec decode may allocate at once: bincode sizes a byte string or a string by
/// its length prefix, checked against the codec's limit (`FRAME_BYTES_MAX`) but not against the
/// bytes actually present. See `kv_command_allocation_is_bounded_by_its_input`.
const CODEC_ALLOCATION_MAX: usize = FRAME_BYTES_MAX as usize + ALLOCATION_SLACK_BYTES;

// ---- mutations of valid encodings ----------------------------------------------------------

/// One way to damage an encoding.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flips one bit.
    FlipBit { at: Index, bit: u8 },
    /// Cuts the bytes short.
    Truncate { at: Index },
    /// Overwrites bytes with a huge length: as a little-endian `u32` (record prefixes, snapshot
    /// headers) or as a bincode varint `u64` (lengths inside values).
    InflateLength { at: Index, varint: bool, value: u64 },
    /// Inserts foreign bytes.
    Splice { at: Index, bytes: Vec<u8> },
    /// Copies a stretch of the encoding elsewhere in it (a duplicated record, say).
    Duplicate {
        from: Index,
        to: Index,
        bytes: usize,
    },
    /// Removes a stretch.
    Remove { at: Index, bytes: usize },
}

/// Lengths an attacker would claim: just past each limit, 2 and 4 GiB, everything.
fn hostile_length() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u32::MAX as u64),
        Just(1 << 31),
        Just(FRAME_BYTES_MAX + 1),
        Just(RECORD_BYTES_MAX + 1),
        Just(u64::MAX),
        Just(1 << 60),
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        3 => (any::<Index>(), any::<bool>(), hostile_length())
            .prop_map(|(at, varint, value)| Mutation::InflateLength { at, varint, value }),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
        1 => (any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(from, to, bytes)| Mutation::Duplicate { from, to, bytes }),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, bytes)| Mutation::Remove { at, bytes }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

/// Applies `mutation` to `bytes` (positions are taken modulo the current length).
fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let length = bytes.len();
    match mutation {
        Mutation::FlipBit { at, bit } => bytes[at.index(length)] ^= 1 << bit,
        Mutation::Truncate { at } => bytes.truncate(at.index(length)),
        Mutation::InflateLength { at, varint, value } => {
            let at = at.index(length);
            let encoded: Vec<u8> = if *varint {
                // bincode's varint: 253 announces a little-endian u64.
                std::iter::once(253).chain(value.to_le_bytes()).collect()
            } else {
                (*value as u32).to_le_bytes().to_vec()
            };
            for (offset, byte) in encoded.into_iter().enumerate() {
                match bytes.get_mut(at + offset) {
                    Some(slot) => *slot = byte,
                    None => bytes.push(byte),
                }
            }
        }
        Mutation::Splice {
            at,
            bytes: inserted,
        } => {
            let at = at.index(length + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Duplicate {
            from,
            to,
            bytes: count,
        } => {
            let from = from.index(length);
            let end = (from + count).min(length);
            let copied = bytes[from..end].to_vec();
            let to = to.index(length + 1);
            bytes.splice(to..to, copied);
        }
        Mutation::Remove { at, bytes: count } => {
            let at = at.index(length);
            let end = (at + count).min(length);
            bytes.drain(at..end);
        }
    }
}

fn mutated(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        mutate(&mut bytes, mutation);
    }
    bytes
}

/// Rewrites the CRC of every whole record from `start` on, so that a mutation reaches the
/// decoder behind the checksum instead of stopping at it.
fn repair_record_checksums(bytes: &mut [u8], start: usize) {
    let mut position = start;
    while position + RECORD_HEADER_BYTES <= bytes.len() {
        let length = u32::from_le_bytes(bytes[position..position + 4].try_into().unwrap());
        let end = position + RECORD_HEADER_BYTES + length as usize;
        if end > bytes.len() {
            return;
        }
        let crc = crc32fast::hash(&bytes[position + RECORD_HEADER_BYTES..end]);
        bytes[position + 4..position + 8].copy_from_slice(&crc.to_le_bytes());
        position = end;
    }
}

// ---- values ---------------------------------------------------------------------------------

/// Terms and indexes mostly stay at or below this in the properties. Values near `u64::MAX`
/// once overflowed `Term::next` / `LogIndex::next`; the core and storage now refuse anything
/// beyond `limits::TERM_MAX` / `limits::INDEX_MAX`, which the bug-named tests check.
const VALUE_SAFE_MAX: u64 = u64::MAX - 1024;

fn node_id() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        6 => (1u64..=5).prop_map(NodeId),
        1 => Just(NodeId(0)),
        1 => any::<u64>().prop_map(NodeId),
    ]
}

/// Mostly near the terms a small cluster reaches, sometimes term 0, sometimes huge.
fn term() -> impl Strategy<Value = Term> {
    prop_oneof![
        8 => (0u64..6).prop_map(Term),
        1 => (1u64 << 32..=VALUE_SAFE_MAX).prop_map(Term),
    ]
}

fn log_index() -> impl Strategy<Value = LogIndex> {
    prop_oneof![
        8 => (0u64..12).prop_map(LogIndex),
        1 => (1u64 << 32..=VALUE_SAFE_MAX).prop_map(LogIndex),
    ]
}

fn entry_id() -> impl Strategy<Value = EntryId> {
    (term(), log_index()).prop_map(|(term, index)| EntryId::new(term, index))
}

fn node_set() -> impl Strategy<Value = BTreeSet<NodeId>> {
    prop::collection::btree_set(node_id(), 0..4)
}

fn membership() -> impl Strategy<Value = Membership> {
    let address = ("[a-z0-9.:]{0,12}", "[a-z0-9.:]{0,12}")
        .prop_map(|(peer, client)| MemberAddress { peer, client });
    let addresses = prop::collection::btree_map(node_id(), address, 0..3);
    (node_set(), node_set(), node_set(), addresses, node_set()).prop_map(
        |(voters, voters_outgoing, learners, addresses, retired)| Membership {
            voters,
            voters_outgoing,
            learners,
            addresses,
            retired,
        },
    )
}

fn entry_payload() -> impl Strategy<Value = EntryPayload> {
    prop_oneof![
        Just(EntryPayload::Noop),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(EntryPayload::Command),
        membership().prop_map(EntryPayload::Membership),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (entry_id(), entry_payload()).prop_map(|(id, payload)| Entry { id, payload })
}

fn message_body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        1 => (any::<bool>(), entry_id(), any::<bool>()).prop_map(|(pre_vote, last_log, transfer)| {
            MessageBody::RequestVote {
                pre_vote,
                last_log,
                transfer,
            }
        }),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(pre_vote, granted)| MessageBody::RequestVoteResponse { pre_vote, granted }),
        3 => (entry_id(), prop::collection::vec(entry(), 0..6), log_index()).prop_map(
            |(prev, entries, leader_commit)| MessageBody::AppendEntries {
                prev,
                entries,
                leader_commit,
            }
        ),
        2 => entry_id().prop_map(|matched| {
            MessageBody::AppendEntriesResponse(AppendResponse::Success { matched })
        }),
        1 => (log_index(), entry_id()).prop_map(|(rejected_prev, hint)| {
            MessageBody::AppendEntriesResponse(AppendResponse::Reject {
                rejected_prev,
                hint,
            })
        }),
        1 => (log_index(), any::<u64>())
            .prop_map(|(commit, round)| MessageBody::Heartbeat { commit, round }),
        1 => any::<u64>().prop_map(|round| MessageBody::HeartbeatResponse { round }),
        1 => entry_id().prop_map(|last| MessageBody::TimeoutNow { last }),
        2 => install_snapshot(),
        1 => (entry_id(), chunk_offset()).prop_map(|(last, next_offset)| {
            MessageBody::InstallSnapshotResponse { last, next_offset }
        }),
    ]
}

/// Small offsets and lengths, sometimes huge ones (past `SNAPSHOT_BYTES_MAX`, near `u64::MAX`).
fn chunk_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..48,
        1 => Just(keyval::limits::SNAPSHOT_BYTES_MAX + 1),
        1 => any::<u64>(),
    ]
}

/// A snapshot chunk: half the time a whole, correctly checksummed snapshot in one chunk (so
/// that installation is reached), else arbitrary offset, length and checksum.
fn install_snapshot() -> impl Strategy<Value = MessageBody> {
    (
        entry_id(),
        membership(),
        prop::collection::vec(any::<u8>(), 0..32),
        chunk_offset(),
        chunk_offset(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(last, membership, data, offset, total, checksum, whole)| {
            let (offset, total, checksum) = if whole {
                (0, data.len() as u64, crc32fast::hash(&data))
            } else {
                (offset, total, checksum)
            };
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta { last, membership },
                offset,
                total,
                checksum,
                data,
            }
        })
}

/// Makes an `AppendEntries` well-shaped: entries numbered on from `prev`, terms between
/// `prev.term` and the message's term. Half the generated appends get this, so that the core's
/// deeper paths (matching, truncation, commit) are reached, not only its shape checks.
fn well_shaped(mut message: Message) -> Message {
    let message_term = message.term;
    if let MessageBody::AppendEntries { prev, entries, .. } = &mut message.body {
        prev.term = prev.term.min(message_term);
        let mut term = prev.term;
        for (offset, entry) in entries.iter_mut().enumerate() {
            term = entry.id.term.clamp(term, message_term.max(term));
            entry.id = EntryId::new(term, LogIndex(prev.index.0 + 1 + offset as u64));
        }
    }
    message
}

/// A message with arbitrary fields: any sender (itself, unknown nodes, node 0), any term
/// (0, stale, current, future, huge), any body.
fn message() -> impl Strategy<Value = Message> {
    (node_id(), node_id(), term(), message_body(), any::<bool>()).prop_map(
        |(from, to, term, body, shaped)| {
            let message = Message {
                from,
                to,
                term,
                body,
            };
            if shaped {
                well_shaped(message)
            } else {
                message
            }
        },
    )
}

fn hard_state() -> impl Strategy<Value = HardState> {
    (term(), prop::option::of(node_id())).prop_map(|(term, vote)| HardState { term, vote })
}

// ---- the record framing ---------------------------------------------------------------------

/// Every limit the code reads records with.
fn record_limit() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(64),
        Just(4096),
        Just(RECORD_BYTES_MAX),
        Just(FRAME_BYTES_MAX),
        any::<u32>().prop_map(u64::from),
    ]
}

/// Checks what `read_record` said about `bytes`.
fn check_record_read(bytes: &[u8], limit: u64, read: &Result<RecordRead<'_>, CodecError>) {
    match read {
        Ok(RecordRead::Complete { payload, consumed }) => {
            assert!(*consumed <= bytes.len());
            assert_eq!(*consumed, RECORD_HEADER_BYTES + payload.len());
            assert!(payload.len() as u64 <= limit);
        }
        Ok(RecordRead::Incomplete {
            needed: Some(needed),
        }) => {
            assert!(*needed > bytes.len());
            assert!((*needed - RECORD_HEADER_BYTES) as u64 <= limit);
        }
        Ok(RecordRead::Incomplete { needed: None }) => {
            assert!(bytes.len() < RECORD_HEADER_BYTES)
        }
        Err(_) => {}
    }
}

#[test]
fn four_gibibyte_record_prefix_is_refused_before_allocating() {
    for limit in [64, RECORD_BYTES_MAX, FRAME_BYTES_MAX] {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 12]);
        let (read, largest) = largest_allocation(|| codec::read_record(&bytes, limit));
        assert!(
            matches!(
                read,
                Err(CodecError::TooLarge {
                    bytes: 0xFFFF_FFFF,
                    ..
                })
            ),
            "{read:?}"
        );
        assert_eq!(largest, 0, "read_record allocates nothing");
    }
}

#[test]
fn inner_length_claiming_exabytes_is_refused_before_allocating() {
    // An entry whose command claims 2^60 bytes, in a 20-byte payload.
    let entry = Entry {
        id: EntryId::new(Term(1), LogIndex(1)),
        payload: EntryPayload::Command(vec![1, 2, 3]),
    };
    let valid = codec::encode(&entry).unwrap();
    let length_at = valid.len() - 4;
    assert_eq!(valid[length_at], 3, "the command's length prefix");
    let mut hostile = valid[..length_at].to_vec();
    hostile.push(253);
    hostile.extend_from_slice(&(1u64 << 60).to_le_bytes());
    hostile.extend_from_slice(&[1, 2, 3]);
    let (decoded, largest) = largest_allocation(|| codec::decode::<Entry>(&hostile));
    assert!(
        matches!(decoded, Err(CodecError::Malformed { .. })),
        "{decoded:?}"
    );
    assert!(
        largest <= allocation_bound(hostile.len()),
        "{largest} bytes"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16384, ..ProptestConfig::default() })]

    #[test]
    fn record_reader_survives_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..96),
        limit in record_limit(),
    ) {
        let (read, largest) = largest_allocation(|| codec::read_record(&bytes, limit));
        check_record_read(&bytes, limit, &read);
        prop_assert_eq!(largest, 0);
    }

    #[test]
    fn record_round_trips_and_survives_mutation(
        payload in prop::collection::vec(any::<u8>(), 0..64),
        mutations in mutations(),
        limit in record_limit(),
    ) {
        let mut valid = Vec::new();
        codec::write_record(&payload, &mut valid);
        match codec::read_record(&valid, FRAME_BYTES_MAX) {
            Ok(RecordRead::Complete { payload: read, consumed }) => {
                prop_assert_eq!(read, &payload[..]);
                prop_assert_eq!(consumed, valid.len());
            }
            other => prop_assert!(false, "a valid record reads back: {:?}", other),
        }
        let damaged = mutated(valid, &mutations);
        let (read, largest) = largest_allocation(|| codec::read_record(&damaged, limit));
        check_record_read(&damaged, limit, &read);
        prop_assert_eq!(largest, 0);
    }
}

// ---- peer messages and values ---------------------------------------------------------------

/// Decodes `bytes` as `T` within the allocation bound; re-encodes whatever decodes.
fn check_decode<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let (decoded, largest) = largest_allocation(|| codec::decode::<T>(bytes));
    prop_assert!(
        largest <= allocation_bound(bytes.len()),
        "{} bytes allocated decoding {} bytes",
        largest,
        bytes.len()
    );
    if let Ok(value) = decoded {
        let again: T = codec::decode(&codec::encode(&value).unwrap()).unwrap();
        prop_assert_eq!(again, value);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

    #[test]
    fn value_decoders_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        check_decode::<Message>(&bytes)?;
        check_decode::<Entry>(&bytes)?;
        check_decode::<Handshake>(&bytes)?;
        check_decode::<SnapshotMeta>(&bytes)?;
        check_decode::<RequestFrame>(&bytes)?;
    }

    #[test]
    fn message_round_trips_and_survives_mutation(message in message(), mutations in mutations()) {
        let valid = codec::encode(&message).unwrap();
        prop_assert_eq!(&codec::decode::<Message>(&valid).unwrap(), &message);
        // As a frame on the wire, too.
        let mut frame = Vec::new();
        codec::write_value_record(&message, &mut frame).unwrap();
        let Ok(RecordRead::Complete { payload, .. }) = codec::read_record(&frame, FRAME_BYTES_MAX)
        else {
            return Err(TestCaseError::fail("a valid frame reads back"));
        };
        prop_assert_eq!(codec::decode::<Message>(payload).unwrap(), message);
        check_decode::<Message>(&mutated(valid, &mutations))?;
    }

    #[test]
    fn handshake_round_trips_and_survives_mutation(
        cluster_id in any::<u64>(),
        from in any::<u64>(),
        mutations in mutations(),
    ) {
        let handshake = Handshake::new(cluster_id, NodeId(from));
        let valid = codec::encode(&handshake).unwrap();
        prop_assert_eq!(codec::decode::<Handshake>(&valid).unwrap(), handshake);
        check_decode::<Handshake>(&mutated(valid, &mutations))?;
    }
}

// ---- Raft::step on arbitrary messages -------------------------------------------------------

/// A five-node network after an election and two commands: node 1 leads, node 2 follows,
/// node 3 became a candidate (a `TimeoutNow`), node 4 a pre-candidate (its election timer).
fn cores_in_every_role() -> Vec<Raft> {
    let mut network = CoreNetwork::new(5, 7);
    network.elect(NodeId(1));
    for command in [&b"first"[..], b"second"] {
        network.propose(NodeId(1), command).unwrap();
    }
    let term = network.node(NodeId(1)).term();
    let last = network.node(NodeId(3)).log().last_id();
    let timeout_now = Message {
        from: NodeId(1),
        to: NodeId(3),
        term,
        body: MessageBody::TimeoutNow { last },
    };
    network.node(NodeId(3)).step(timeout_now).unwrap();
    network.node(NodeId(4)).start_election();
    let mut cores: Vec<Raft> = [1, 2, 3, 4]
        .into_iter()
        .filter_map(|id| network.nodes.remove(&NodeId(id)))
        .map(|node| node.raft)
        .collect();
    let roles: Vec<RoleKind> = cores.iter().map(Raft::role).collect();
    assert_eq!(
        roles,
        [
            RoleKind::Leader,
            RoleKind::Follower,
            RoleKind::Candidate,
            RoleKind::PreCandidate
        ]
    );
    for core in &mut cores {
        settle(core);
    }
    cores
}

/// Takes the core's Ready and reports its entries durable, as the runtime does.
fn settle(core: &mut Raft) {
    let ready = core.take_ready();
    if let Some(last) = ready.entries.last() {
        core.on_persisted(last.id);
    }
}

/// What the properties hold the core to between steps.
fn check_core(core: &Raft, before: &keyval::raft::Status) -> Result<(), TestCaseError> {
    core.check_invariants();
    let after = core.status();
    prop_assert!(
        after.term >= before.term,
        "term went back: {:?} -> {:?}",
        before,
        after
    );
    prop_assert!(
        after.committed >= before.committed,
        "commit went back: {:?} -> {:?}",
        before,
        after
    );
    prop_assert!(after.applied <= after.committed);
    prop_assert!(after.committed <= after.last_index);
    Ok(())
}

/// One thing that happens to a core: a message (re-addressed to the core or sent as
/// generated), or a tick.
#[derive(Clone, Debug)]
enum Event {
    Deliver {
        message: Box<Message>,
        readdress: bool,
    },
    Tick,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (message(), prop::bool::weighted(0.9))
            .prop_map(|(message, readdress)| Event::Deliver {
                message: Box::new(message),
                readdress
            }),
        1 => Just(Event::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

    #[test]
    fn raft_step_never_panics_and_keeps_its_invariants(
        role in 0usize..4,
        events in prop::collection::vec(event(), 1..32),
    ) {
        let mut core = cores_in_every_role().swap_remove(role);
        for event in events {
            let before = core.status();
            match event {
                Event::Deliver { mut message, readdress } => {
                    if readdress {
                        message.to = core.id();
                    }
                    let _ = core.step(*message);
                }
                Event::Tick => core.tick(),
            }
            check_core(&core, &before)?;
            settle(&mut core);
            check_core(&core, &before)?;
        }
    }
}

/// Steps `message` into a fresh core in every role.
fn step_in_every_role(message: &Message) {
    for mut core in cores_in_every_role() {
        let message = Message {
            to: core.id(),
            ..message.clone()
        };
        let _ = core.step(message);
        settle(&mut core);
        core.check_invariants();
    }
}

#[test]
fn append_entries_with_prev_index_at_u64_max() {
    step_in_every_role(&Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::AppendEntries {
            prev: EntryId::new(Term(1), LogIndex(u64::MAX)),
            entries: vec![],
            leader_commit: LogIndex(0),
        },
    });
}

#[test]
fn append_entries_with_an_entry_at_u64_max() {
    step_in_every_role(&Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::AppendEntries {
            prev: EntryId::new(Term(1), LogIndex(u64::MAX - 1)),
            entries: vec![Entry {
                id: EntryId::new(Term(1), LogIndex(u64::MAX)),
                payload: EntryPayload::Noop,
            }],
            leader_commit: LogIndex(0),
        },
    });
}

#[test]
fn timeout_now_at_term_u64_max() {
    step_in_every_role(&Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(u64::MAX),
        body: MessageBody::TimeoutNow {
            last: EntryId::default(),
        },
    });
}

#[test]
fn election_after_adopting_term_u64_max() {
    let mut network = CoreNetwork::new(3, 1);
    let heartbeat = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(u64::MAX),
        body: MessageBody::Heartbeat {
            commit: LogIndex(0),
            round: 0,
        },
    };
    let _ = network.node(NodeId(2)).step(heartbeat);
    network.node(NodeId(2)).start_election();
}

#[test]
fn install_snapshot_at_index_u64_max() {
    let data = b"abc".to_vec();
    step_in_every_role(&Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                last: EntryId::new(Term(1), LogIndex(u64::MAX)),
                membership: Membership::new([NodeId(1), NodeId(2)]),
            },
            offset: 0,
            total: 3,
            checksum: crc32fast::hash(&data),
            data,
        },
    });
}

// ---- storage files --------------------------------------------------------------------------

const DIR: &str = "/node";

fn file_options() -> FileOptions {
    FileOptions {
        segment_bytes_max: 512,
        cache_bytes_max: 256,
        ..FileOptions::default()
    }
}

fn command_entry(term: u64, index: u64, bytes: usize) -> Entry {
    Entry {
        id: EntryId::new(Term(term), LogIndex(index)),
        payload: EntryPayload::Command(vec![index as u8; bytes]),
    }
}

/// A data directory on the in-memory disk with `count` entries over several segments, a state
/// file and, when `snapshot`, a snapshot.
fn populated_disk(count: u64, snapshot: bool) -> FaultyFileSystem {
    let disk = FaultyFileSystem::new();
    let mut storage =
        FileStorage::open_with_file_system(DIR, file_options(), Arc::new(disk.current())).unwrap();
    let entries: Vec<Entry> = (1..=count)
        .map(|index| command_entry(1, index, 40))
        .collect();
    storage.append(&entries).unwrap();
    storage
        .save_hard_state(HardState {
            term: Term(1),
            vote: Some(NodeId(1)),
        })
        .unwrap();
    storage.sync().unwrap();
    if snapshot {
        let meta = SnapshotMeta {
            last: EntryId::new(Term(1), LogIndex(2)),
            membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        };
        storage
            .save_snapshot(&meta, b"state machine bytes")
            .unwrap();
    }
    disk
}

/// Opens the directory; whatever recovery decides, it must not panic, must refuse only with a
/// corruption or version error, and must allocate within what the files justify. Returns the
/// recovered log when it opened.
fn check_open(disk: &FaultyFileSystem, repair: bool) -> Result<Option<Vec<Entry>>, TestCaseError> {
    let file_bytes: usize = disk
        .paths()
        .iter()
        .filter_map(|path| disk.file_bytes(path))
        .map(|bytes| bytes.len())
        .max()
        .unwrap_or(0);
    let options = FileOptions {
        repair,
        ..file_options()
    };
    let (opened, largest) = largest_allocation(|| {
        FileStorage::open_with_file_system(DIR, options, Arc::new(disk.current()))
            .and_then(|mut storage| storage.recover().map(|recovered| recovered.entries))
    });
    prop_assert!(
        largest <= allocation_bound(file_bytes),
        "{} bytes allocated opening files of at most {} bytes",
        largest,
        file_bytes
    );
    match opened {
        Ok(entries) => {
            for pair in entries.windows(2) {
                prop_assert_eq!(pair[0].index().next(), pair[1].index());
            }
            Ok(Some(entries))
        }
        Err(StorageError::Corrupt { .. } | StorageError::UnknownVersion { .. }) => Ok(None),
        Err(other) => Err(TestCaseError::fail(format!(
            "recovery refused with {other}"
        ))),
    }
}

/// Which file of a populated directory a mutation hits.
#[derive(Clone, Copy, Debug)]
enum Target {
    State,
    FirstSegment,
    LastSegment,
    Snapshot,
}

fn target_path(disk: &FaultyFileSystem, target: Target) -> std::path::PathBuf {
    let paths = disk.paths();
    let with_extension = |extension: &str| -> Vec<std::path::PathBuf> {
        paths
            .iter()
            .filter(|path| path.extension().is_some_and(|found| found == extension))
            .cloned()
            .collect()
    };
    match target {
        Target::State => Path::new(DIR).join("state"),
        Target::FirstSegment => with_extension("seg").first().unwrap().clone(),
        Target::LastSegment => with_extension("seg").last().unwrap().clone(),
        Target::Snapshot => with_extension("snap").first().unwrap().clone(),
    }
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::State),
        Just(Target::FirstSegment),
        Just(Target::LastSegment),
        Just(Target::Snapshot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn state_file_round_trips_and_survives_mutation(
        hard_state in hard_state(),
        compacted_through in log_index(),
        mutations in mutations(),
    ) {
        // A valid record stays within the limits; beyond them the file is refused as corrupt
        // (state_file_compacted_through_u64_max).
        let hard_state = HardState {
            term: Term(hard_state.term.0.min(keyval::limits::TERM_MAX)),
            ..hard_state
        };
        let compacted_through = LogIndex(compacted_through.0.min(keyval::limits::INDEX_MAX));
        let record = StateRecord { hard_state, compacted_through };
        let valid = format::encode_state(&record).unwrap();
        let path = Path::new("/node/state");
        prop_assert_eq!(format::decode_state(path, &valid).unwrap(), record);
        let damaged = mutated(valid, &mutations);
        let (decoded, largest) = largest_allocation(|| format::decode_state(path, &damaged));
        prop_assert!(largest <= allocation_bound(damaged.len()));
        if let Err(error) = decoded {
            prop_assert!(
                matches!(error, StorageError::Corrupt { .. } | StorageError::UnknownVersion { .. }),
                "{}", error
            );
        }
    }

    #[test]
    fn snapshot_file_round_trips_and_survives_mutation(
        last in entry_id(),
        membership in membership(),
        data in prop::collection::vec(any::<u8>(), 0..64),
        mutations in mutations(),
    ) {
        let meta = SnapshotMeta { last, membership };
        let valid = format::encode_snapshot(&meta, &data).unwrap();
        let path = Path::new("/node/snapshot/x.snap");
        let (decoded, decoded_data) = format::decode_snapshot(path, &valid).unwrap();
        prop_assert_eq!((decoded, decoded_data), (meta, data));
        let damaged = mutated(valid, &mutations);
        let (decoded, largest) = largest_allocation(|| format::decode_snapshot(path, &damaged));
        prop_assert!(largest <= allocation_bound(damaged.len()));
        if let Err(error) = decoded {
            prop_assert!(
                matches!(error, StorageError::Corrupt { .. } | StorageError::UnknownVersion { .. }),
                "{}", error
            );
        }
    }

    #[test]
    fn segment_scan_survives_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..160),
        is_last in any::<bool>(),
    ) {
        let mut bytes = bytes;
        // Half the time behind a valid header, so the record scan is reached.
        if bytes.first().is_some_and(|byte| byte % 2 == 0) {
            let mut with_header = format::encode_segment_header(LogIndex(1));
            with_header.extend_from_slice(&bytes);
            repair_record_checksums(&mut with_header, SEGMENT_HEADER_BYTES);
            bytes = with_header;
        }
        let path = Path::new("/node/wal/00000000000000000001.seg");
        let (scan, largest) = largest_allocation(|| {
            keyval::storage::file::segment::scan_segment(path, &bytes, LogIndex(1), is_last)
        });
        prop_assert!(largest <= allocation_bound(bytes.len()));
        if let Ok(scan) = scan {
            prop_assert_eq!(scan.entries.len(), scan.segment.offsets.len());
            prop_assert!(scan.segment.end <= bytes.len() as u64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Whole-directory recovery with one file damaged, the checksums behind the damage
    /// optionally repaired so that decoding (not only the CRC) is attacked.
    #[test]
    fn recovery_survives_a_mutated_file(
        count in 1u64..30,
        target in target(),
        mutations in mutations(),
        repair_checksums in any::<bool>(),
        repair in any::<bool>(),
    ) {
        let disk = populated_disk(count, true);
        let expected: Vec<Entry> = (1..=count).map(|index| command_entry(1, index, 40)).collect();
        prop_assert_eq!(check_open(&disk, false)?, Some(expected), "the valid directory");
        let path = target_path(&disk, target);
        let mut bytes = mutated(disk.file_bytes(&path).unwrap(), &mutations);
        if repair_checksums {
            match target {
                // The state file's record: only with its CRC left alone, since a repaired
                // compaction point of u64::MAX panics (see the `finds bug` test below).
                Target::State => {}
                Target::FirstSegment | Target::LastSegment => {
                    if bytes.len() >= SEGMENT_HEADER_BYTES {
                        let crc = crc32fast::hash(&bytes[..20]);
                        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
                    }
                    repair_record_checksums(&mut bytes, SEGMENT_HEADER_BYTES);
                }
                Target::Snapshot => {
                    if bytes.len() >= 48 {
                        let checksum = crc32fast::hash(&bytes[48..]);
                        bytes[40..44].copy_from_slice(&checksum.to_le_bytes());
                        let header = crc32fast::hash(&bytes[..44]);
                        bytes[44..48].copy_from_slice(&header.to_le_bytes());
                    }
                }
            }
        }
        disk.write_new(&path, &bytes).unwrap();
        if let Some(first) = check_open(&disk, repair)? {
            // Recovery's own cuts are final: a second open finds the same log.
            prop_assert_eq!(check_open(&disk, repair)?, Some(first));
        }
    }

    /// Recovery of a directory whose state file holds any well-formed record.
    #[test]
    fn recovery_survives_any_state_record(
        count in 0u64..12,
        hard_state in hard_state(),
        compacted_through in log_index(),
    ) {
        let disk = populated_disk(count.max(1), false);
        let record = StateRecord { hard_state, compacted_through };
        disk.write_new(&Path::new(DIR).join("state"), &format::encode_state(&record).unwrap())
            .unwrap();
        check_open(&disk, false)?;
    }
}

#[test]
fn huge_lengths_in_storage_files_are_refused_before_allocating() {
    // A segment record claiming 4 GiB.
    let disk = populated_disk(3, false);
    let path = target_path(&disk, Target::LastSegment);
    let mut bytes = disk.file_bytes(&path).unwrap();
    bytes[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    disk.write_new(&path, &bytes).unwrap();
    let (opened, largest) = largest_allocation(|| {
        FileStorage::open_with_file_system(DIR, file_options(), Arc::new(disk.current())).map(drop)
    });
    assert!(largest <= allocation_bound(bytes.len()), "{largest} bytes");
    // Intact records follow the damaged first one: mid-log damage, refused where it starts.
    assert!(
        matches!(
            &opened,
            Err(StorageError::Corrupt { offset, reason, .. })
                if *offset == SEGMENT_HEADER_BYTES as u64 && reason.contains("4294967295")
        ),
        "{opened:?}"
    );

    // A snapshot whose membership claims 4 GiB.
    let meta = SnapshotMeta::default();
    let mut snapshot = format::encode_snapshot(&meta, b"x").unwrap();
    snapshot[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    let header = crc32fast::hash(&snapshot[..44]);
    snapshot[44..48].copy_from_slice(&header.to_le_bytes());
    let path = Path::new("/node/snapshot/0-0.snap");
    let (decoded, largest) = largest_allocation(|| format::decode_snapshot(path, &snapshot));
    assert!(
        matches!(decoded, Err(StorageError::Corrupt { offset: 28, .. })),
        "{decoded:?}"
    );
    assert!(
        largest <= allocation_bound(snapshot.len()),
        "{largest} bytes"
    );
}

#[test]
fn state_file_compacted_through_u64_max() {
    let disk = FaultyFileSystem::new();
    disk.create_dir_all(Path::new(DIR)).unwrap();
    let record = StateRecord {
        hard_state: HardState::default(),
        compacted_through: LogIndex(u64::MAX),
    };
    disk.write_new(
        &Path::new(DIR).join("state"),
        &format::encode_state(&record).unwrap(),
    )
    .unwrap();
    let opened = FileStorage::open_with_file_system(DIR, file_options(), Arc::new(disk.current()));
    assert!(matches!(opened, Err(StorageError::Corrupt { .. })));
}

// ---- kv commands and snapshots --------------------------------------------------------------

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..3, 0..3)
}

fn operation() -> impl Strategy<Value = Operation> {
    let value = || prop::collection::vec(any::<u8>(), 0..8);
    prop_oneof![
        (small_key(), value()).prop_map(|(key, value)| Operation::Put { key, value }),
        small_key().prop_map(|key| Operation::Delete { key }),
        (
            small_key(),
            prop_oneof![
                value().prop_map(Expect::Value),
                Just(Expect::Absent),
                log_index().prop_map(Expect::ModRevision),
            ],
            prop::option::of(value()),
        )
            .prop_map(|(key, expect, value)| Operation::Cas { key, expect, value }),
        (small_key(), prop::option::of(small_key())).prop_map(|(start, end)| {
            Operation::DeleteRange {
                range: KeyRange { start, end },
            }
        }),
        txn().prop_map(Operation::Txn),
        auth_operation().prop_map(Operation::Auth),
    ]
}

/// Names from a small set, so that changes meet each other (and `root` is common enough for
/// an enable to succeed now and then).
fn auth_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("root"),
        Just("a"),
        Just("b"),
        Just(""),
        Just("r\u{7f}")
    ]
    .prop_map(str::to_string)
}

fn auth_operation() -> impl Strategy<Value = AuthOperation> {
    let hash = || {
        prop::option::of(prop_oneof![
            Just("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string()),
            Just("plain".to_string()),
        ])
    };
    let range = || {
        (small_key(), prop::option::of(small_key()))
            .prop_map(|(start, end)| KeyRange { start, end })
    };
    let permission = prop_oneof![
        Just(Permission::Read),
        Just(Permission::Write),
        Just(Permission::ReadWrite)
    ];
    prop_oneof![
        (auth_name(), hash()).prop_map(|(name, password_hash)| AuthOperation::UserAdd {
            name,
            password_hash
        }),
        auth_name().prop_map(|name| AuthOperation::UserDelete { name }),
        (auth_name(), hash()).prop_map(|(name, password_hash)| {
            AuthOperation::UserChangePassword {
                name,
                password_hash,
            }
        }),
        (auth_name(), auth_name())
            .prop_map(|(user, role)| AuthOperation::UserGrantRole { user, role }),
        (auth_name(), auth_name())
            .prop_map(|(user, role)| AuthOperation::UserRevokeRole { user, role }),
        auth_name().prop_map(|name| AuthOperation::RoleAdd { name }),
        auth_name().prop_map(|name| AuthOperation::RoleDelete { name }),
        (auth_name(), permission, range()).prop_map(|(role, permission, range)| {
            AuthOperation::RoleGrantPermission {
                role,
                grant: PermissionGrant { permission, range },
            }
        }),
        (auth_name(), range())
            .prop_map(|(role, range)| AuthOperation::RoleRevokePermission { role, range }),
        prop::collection::vec(any::<u8>(), 31..34)
            .prop_map(|secret| AuthOperation::AuthEnable { secret }),
        Just(AuthOperation::AuthDisable),
    ]
}

/// The auth requests a client sends: authentication, tokens, administration.
fn auth_request_body() -> impl Strategy<Value = RequestBody> {
    let text = || prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter);
    prop_oneof![
        (text(), text()).prop_map(|(user, password)| RequestBody::Authenticate {
            user,
            password: Password(password),
        }),
        (
            text(),
            any::<u64>(),
            log_index(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(user, expires_unix_ms, credential_revision, mac)| {
                RequestBody::PresentToken {
                    token: AuthToken {
                        user,
                        expires_unix_ms,
                        credential_revision,
                        mac,
                    },
                }
            }),
        (text(), prop::option::of(text())).prop_map(|(name, password)| {
            RequestBody::Auth(AuthRequest::UserAdd {
                name,
                password: password.map(Password),
            })
        }),
        auth_operation().prop_map(|operation| RequestBody::Write(Command::auth(operation))),
        Just(RequestBody::Auth(AuthRequest::Enable)),
        Just(RequestBody::Auth(AuthRequest::Status)),
    ]
}

fn txn() -> impl Strategy<Value = Txn> {
    let value = || prop::collection::vec(any::<u8>(), 0..8);
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Less,
        CompareOp::Greater,
    ]);
    let target = prop_oneof![
        value().prop_map(CompareTarget::Value),
        any::<u64>().prop_map(CompareTarget::Version),
        log_index().prop_map(CompareTarget::CreateRevision),
        log_index().prop_map(CompareTarget::ModRevision),
        prop::option::of(any::<u64>()).prop_map(|lease| CompareTarget::Lease(lease.map(LeaseId))),
    ];
    let compare =
        (small_key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target });
    let range = || {
        (small_key(), prop::option::of(small_key()))
            .prop_map(|(start, end)| KeyRange { start, end })
    };
    let txn_op = || {
        prop_oneof![
            (
                small_key(),
                value(),
                any::<bool>(),
                prop::option::of(any::<u64>())
            )
                .prop_map(|(key, value, return_previous, lease)| TxnOp::Put {
                    key,
                    value,
                    return_previous,
                    lease: lease.map(LeaseId),
                }),
            (small_key(), any::<bool>()).prop_map(|(key, return_previous)| TxnOp::Delete {
                key,
                return_previous
            }),
            (range(), any::<bool>()).prop_map(|(range, return_previous)| TxnOp::DeleteRange {
                range,
                return_previous
            }),
            small_key().prop_map(|key| TxnOp::Get { key }),
            (range(), 0usize..3).prop_map(|(range, limit)| TxnOp::Range { range, limit }),
        ]
    };
    (
        prop::collection::vec(compare, 0..3),
        prop::collection::vec(txn_op(), 0..3),
        prop::collection::vec(txn_op(), 0..3),
    )
        .prop_map(|(compares, then, otherwise)| Txn {
            compares,
            then,
            otherwise,
        })
}

fn command() -> impl Strategy<Value = Command> {
    (
        prop::option::of((0u64..4, 0u64..4)),
        prop::collection::vec(operation(), 0..4),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(session, operations, return_previous, register)| {
            if register {
                return Command::register_session();
            }
            let mut command = Command::batch(operations);
            command.return_previous = return_previous;
            match session {
                Some((client_id, sequence)) => command.with_session(client_id, sequence),
                None => command,
            }
        })
}

/// A store with a few keys and sessions (clients 1 and 2, registered at indexes 1 and 2), so
/// that commands meet existing state.
fn populated_store() -> KvStore {
    let mut store = KvStore::new();
    let commands = [
        Command::register_session(),
        Command::register_session(),
        Command::put(vec![0], b"zero".to_vec()),
        Command::put(vec![1], b"one".to_vec()).with_session(1, 1),
        Command::put(vec![2, 2], vec![7; 40]).with_session(2, 1),
    ];
    for (index, command) in commands.iter().enumerate() {
        store.apply(
            EntryId::new(Term(1), LogIndex(index as u64 + 1)),
            &command.encode().unwrap(),
        );
    }
    store
}

/// Applies `bytes` as the command at `index`: the answer must be a response, the invariants
/// must hold, and nothing may be allocated beyond the codec's limit.
fn check_apply(store: &mut KvStore, index: u64, bytes: &[u8]) -> Result<(), TestCaseError> {
    let (answer, largest) =
        largest_allocation(|| store.apply(EntryId::new(Term(1), LogIndex(index)), bytes));
    prop_assert!(largest <= CODEC_ALLOCATION_MAX, "{} bytes", largest);
    prop_assert!(Response::decode(&answer).is_ok());
    store.check_invariants();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn kv_apply_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        let mut store = populated_store();
        check_apply(&mut store, 10, &bytes)?;
        check_apply(&mut store, 11, &bytes)?;
    }

    #[test]
    fn kv_command_round_trips_and_survives_mutation(command in command(), mutations in mutations()) {
        let valid = codec::encode(&command).unwrap();
        prop_assert_eq!(Command::decode(&valid).unwrap(), command);
        let damaged = mutated(valid, &mutations);
        let mut store = populated_store();
        check_apply(&mut store, 10, &damaged)?;
        if let Ok(decoded) = Command::decode(&damaged) {
            prop_assert_eq!(Command::decode(&codec::encode(&decoded).unwrap()).unwrap(), decoded);
        }
    }

    #[test]
    fn auth_request_frames_round_trip_and_survive_mutation(
        body in auth_request_body(),
        mutations in mutations(),
    ) {
        let frame = RequestFrame { request_id: 7, timeout_ms: 100, body };
        let valid = codec::encode(&frame).unwrap();
        prop_assert_eq!(&codec::decode::<RequestFrame>(&valid).unwrap(), &frame);
        check_decode::<RequestFrame>(&mutated(valid, &mutations))?;
    }

    #[test]
    fn kv_snapshot_round_trips_and_survives_mutation(
        commands in prop::collection::vec(command(), 0..8),
        mutations in mutations(),
        repair_checksums in any::<bool>(),
    ) {
        let mut source = populated_store();
        for (offset, command) in commands.iter().enumerate() {
            let bytes = codec::encode(command).unwrap();
            source.apply(EntryId::new(Term(1), LogIndex(10 + offset as u64)), &bytes);
        }
        let valid = source.snapshot();
        let mut restored = KvStore::new();
        restored.restore(&valid).unwrap();
        prop_assert_eq!(&restored, &source);

        let mut damaged = mutated(valid, &mutations);
        if repair_checksums {
            repair_record_checksums(&mut damaged, 0);
        }
        let mut store = populated_store();
        let before = store.clone();
        let (restored, largest) = largest_allocation(|| store.restore(&damaged));
        prop_assert!(largest <= CODEC_ALLOCATION_MAX, "{} bytes", largest);
        match restored {
            Ok(()) => {
                store.check_invariants();
                let mut again = KvStore::new();
                again.restore(&store.snapshot()).unwrap();
                prop_assert_eq!(again, store);
            }
            Err(_) => prop_assert_eq!(store, before, "a refused snapshot changed the store"),
        }
    }

    #[test]
    fn kv_restore_survives_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
        repair_checksums in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if repair_checksums {
            repair_record_checksums(&mut bytes, 0);
        }
        let mut store = populated_store();
        let before = store.clone();
        let (restored, largest) = largest_allocation(|| store.restore(&bytes));
        prop_assert!(largest <= CODEC_ALLOCATION_MAX, "{} bytes", largest);
        if restored.is_err() {
            prop_assert_eq!(store, before);
        } else {
            store.check_invariants();
        }
    }
}

#[test]
fn oversized_kv_command_is_refused_before_decoding() {
    let bytes = vec![0u8; keyval::limits::COMMAND_BYTES_MAX as usize + 1];
    assert!(matches!(
        Command::decode(&bytes),
        Err(KvError::CommandTooLarge { .. })
    ));
}

#[test]
fn kv_snapshot_header_announcing_u64_max_keys_is_refused_without_allocating() {
    // The header of a valid snapshot of an empty store (then its empty lease table, left
    // out), with its key count raised to u64::MAX.
    let mut header = KvStore::new().snapshot();
    let length = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    header.truncate(RECORD_HEADER_BYTES + length);
    let keys_at = header.len() - 2;
    assert_eq!(&header[keys_at..], &[0, 0], "keys and sessions are 0");
    header.truncate(keys_at);
    header.push(253);
    header.extend_from_slice(&u64::MAX.to_le_bytes());
    header.push(0);
    let new_length = (header.len() - RECORD_HEADER_BYTES) as u32;
    header[..4].copy_from_slice(&new_length.to_le_bytes());
    repair_record_checksums(&mut header, 0);
    let mut store = KvStore::new();
    let (restored, largest) = largest_allocation(|| store.restore(&header));
    let error = restored.expect_err("no key records follow");
    assert!(error.to_string().contains("truncated"), "{error}");
    assert!(largest <= allocation_bound(header.len()), "{largest} bytes");
}

#[test]
fn kv_command_allocation_is_bounded_by_its_input() {
    // Command { session: CommandSession::None, operations: [Delete { key: <claims
    // FRAME_BYTES_MAX - 64> }] }
    let claimed = FRAME_BYTES_MAX - 64;
    let mut bytes = vec![0, 1, 1, 252];
    bytes.extend_from_slice(&(claimed as u32).to_le_bytes());
    bytes.extend_from_slice(b"ab");
    let (decoded, largest) = largest_allocation(|| Command::decode(&bytes));
    assert!(decoded.is_err());
    assert!(
        largest <= allocation_bound(bytes.len()),
        "{largest} bytes allocated for {} bytes of input",
        bytes.len()
    );
}

#[test]
fn kv_snapshot_allocation_is_bounded_by_its_input() {
    // The header of an empty store announcing one key, then a key record: key "a", and a
    // value that claims FRAME_BYTES_MAX - 64 bytes.
    let mut snapshot = KvStore::new().snapshot();
    let keys_at = snapshot.len() - 2;
    snapshot[keys_at] = 1;
    let mut key_record = vec![1, b'a', 252];
    key_record.extend_from_slice(&((FRAME_BYTES_MAX - 64) as u32).to_le_bytes());
    key_record.extend_from_slice(b"ab");
    codec::write_record(&key_record, &mut snapshot);
    repair_record_checksums(&mut snapshot, 0);
    let mut store = KvStore::new();
    let (restored, largest) = largest_allocation(|| store.restore(&snapshot));
    assert!(restored.is_err());
    assert!(
        largest <= allocation_bound(snapshot.len()),
        "{largest} bytes allocated for {} bytes of input",
        snapshot.len()
    );
}

#[test]
fn member_address_allocation_is_bounded_by_its_input() {
    // An AppendEntries carrying a configuration whose member's peer address claims 4 MiB but
    // holds a few bytes (a claim near FRAME_BYTES_MAX trips bincode's limit instead).
    let membership = Membership {
        voters: [NodeId(1)].into(),
        addresses: [(
            NodeId(1),
            MemberAddress {
                peer: "\u{7f}".into(),
                client: "c".into(),
            },
        )]
        .into(),
        ..Membership::default()
    };
    let message = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::AppendEntries {
            prev: EntryId::default(),
            entries: vec![Entry {
                id: EntryId::new(Term(1), LogIndex(1)),
                payload: EntryPayload::Membership(membership),
            }],
            leader_commit: LogIndex(0),
        },
    };
    let valid = codec::encode(&message).unwrap();
    // The peer string is encoded as [1, 0x7f]: its length byte goes, a u32 varint claim comes.
    let at = valid
        .windows(2)
        .position(|pair| pair == [1, 0x7f])
        .expect("the peer address is in the encoding");
    let mut bytes = valid[..at].to_vec();
    bytes.push(252);
    bytes.extend_from_slice(&4_198_401u32.to_le_bytes());
    bytes.extend_from_slice(&valid[at + 1..]);
    let (decoded, largest) = largest_allocation(|| codec::decode::<Message>(&bytes));
    assert!(decoded.is_err());
    assert!(
        largest <= allocation_bound(bytes.len()),
        "{largest} bytes allocated for {} bytes of input",
        bytes.len()
    );
}
