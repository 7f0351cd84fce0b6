//! The bodies of keyval's cargo-fuzz targets, one public function per target, so that each
//! `fuzz_targets/*.rs` is one line and everything here builds (and is checked) on stable.
//!
//! Every function takes arbitrary bytes and must return normally: a panic, an abort from an
//! oversized allocation, or a hang is a finding. Each also asserts what must hold of input it
//! accepts (round trips, invariants), so that the fuzzer finds wrong answers too, not only
//! crashes. Where a checksum guards the bytes, the harness can repair it first (a flag in the
//! input), or the fuzzer would never get past the CRC to the decoder behind it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::Receiver;
use keyval::codec::{self, RecordRead, RECORD_HEADER_BYTES};
use keyval::kv::{Command, KvStore, Response};
use keyval::limits::{FRAME_BYTES_MAX, RECORD_BYTES_MAX};
use keyval::raft::{Message, MessageBody, Raft, RoleKind};
use keyval::storage::file::faulty::FaultyFileSystem;
use keyval::storage::file::format::{SEGMENT_HEADER_BYTES, SNAPSHOT_HEADER_BYTES};
use keyval::storage::file::io::FileSystem;
use keyval::storage::file::{FileOptions, FileStorage};
use keyval::storage::Storage;
use keyval::testkit::CoreNetwork;
use keyval::transport::tcp::{Handshake, TcpConfig, TcpTransport};
use keyval::{Entry, EntryId, LogIndex, NodeId, StateMachine, Term};

/// The limits `codec_record` reads records with: tiny, the handshake's, a storage record's, a
/// frame's.
const RECORD_LIMITS: [u64; 4] = [0, 64, RECORD_BYTES_MAX, FRAME_BYTES_MAX];

/// `codec_record`: the record framing (`read_record`) under every limit the code uses, and the
/// value decoders behind it (`Entry`, `Message`, `Handshake`). Checks that a complete record
/// lies within the input and the limit, that an incomplete one asks for more than it has, and
/// that whatever decodes re-encodes to a value that decodes equal.
pub fn codec_record(data: &[u8]) {
    for limit in RECORD_LIMITS {
        match codec::read_record(data, limit) {
            Ok(RecordRead::Complete { payload, consumed }) => {
                assert!(consumed <= data.len());
                assert_eq!(consumed, RECORD_HEADER_BYTES + payload.len());
                assert!(payload.len() as u64 <= limit);
            }
            Ok(RecordRead::Incomplete { needed }) => {
                if let Some(needed) = needed {
                    assert!(
                        needed > data.len(),
                        "incomplete, yet {needed} bytes are there"
                    );
                }
            }
            Err(_) => {}
        }
    }
    // The payload decoders, on the raw bytes (no checksum in the way).
    round_trip::<Entry>(data);
    round_trip::<Message>(data);
    round_trip::<Handshake>(data);
}

/// Decodes `data` as `T`; if that works, encodes and decodes again and expects the same value.
fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = codec::decode::<T>(data) {
        let bytes = codec::encode(&value).expect("a decoded value encodes");
        let again: T = codec::decode(&bytes).expect("an encoded value decodes");
        assert_eq!(again, value);
    }
}

/// A five-node network after an election and two commands: node 1 leads, node 2 follows,
/// node 3 became a candidate (a `TimeoutNow`), node 4 a pre-candidate (its election timer).
fn cores_in_every_role() -> Vec<Raft> {
    let mut network = CoreNetwork::new(5, 7);
    network.elect(NodeId(1));
    for command in [&b"first"[..], b"second"] {
        network
            .propose(NodeId(1), command)
            .expect("the leader accepts");
    }
    let term = network.node(NodeId(1)).term();
    let last = network.node(NodeId(3)).log().last_id();
    let timeout_now = Message {
        from: NodeId(1),
        to: NodeId(3),
        term,
        body: MessageBody::TimeoutNow { last },
    };
    network
        .node(NodeId(3))
        .step(timeout_now)
        .expect("TimeoutNow is accepted");
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

/// Steps `message` into `core` and checks that the core stayed sound: invariants hold, and
/// term and commit index did not move backwards.
fn step_and_check(core: &mut Raft, message: Message) {
    let before = core.status();
    let _ = core.step(message);
    settle(core);
    core.check_invariants();
    let after = core.status();
    assert!(
        after.term >= before.term,
        "term went back: {before:?} -> {after:?}"
    );
    assert!(
        after.committed >= before.committed,
        "commit went back: {before:?} -> {after:?}"
    );
}

/// `peer_message`: the peer wire. The bytes are read as a frame (as the listener does) and,
/// independently, decoded as a `Message` payload (so the checksum does not stop the fuzzer).
/// A message that decodes is stepped, as sent and re-addressed to each, into a leader, a
/// follower, a candidate and a pre-candidate; `Raft::step` must never panic and the core's
/// invariants must hold after it.
pub fn peer_message(data: &[u8]) {
    if let Ok(RecordRead::Complete { payload, .. }) = codec::read_record(data, FRAME_BYTES_MAX) {
        let _ = codec::decode::<Message>(payload);
    }
    let Ok(message) = codec::decode::<Message>(data) else {
        return;
    };
    for mut core in cores_in_every_role() {
        step_and_check(&mut core, message.clone());
        let readdressed = Message {
            to: core.id(),
            ..message.clone()
        };
        step_and_check(&mut core, readdressed.clone());
        // A duplicate, as a retransmitting network delivers it.
        step_and_check(&mut core, readdressed);
        core.tick();
        settle(&mut core);
        core.check_invariants();
    }
}

// Input flags of `segment_recovery` (the first byte).
/// A state file is written.
const STATE_PRESENT: u8 = 1;
/// A snapshot file is written.
const SNAPSHOT_PRESENT: u8 = 1 << 1;
/// Lengths and CRCs are rewritten so that the decoders behind the checksums are reached.
const REPAIR_CHECKSUMS: u8 = 1 << 2;
/// The segment bytes are split into two segment files.
const TWO_SEGMENTS: u8 = 1 << 3;
/// The directory is opened with `FileOptions::repair`.
const REPAIR_OPTION: u8 = 1 << 4;

/// Splits `data` at a little-endian `u16` length prefix: (that many bytes, the rest).
fn take_prefixed(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let length = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let length = length.min(rest.len());
    rest.split_at(length)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// Rewrites the CRC of every whole record from `start` on, so the decoder behind it is reached.
fn repair_record_checksums(bytes: &mut [u8], start: usize) {
    let mut position = start;
    while position + RECORD_HEADER_BYTES <= bytes.len() {
        let length = u32_at(bytes, position) as usize;
        let end = position + RECORD_HEADER_BYTES + length;
        if end > bytes.len() {
            return;
        }
        let crc = crc32fast::hash(&bytes[position + RECORD_HEADER_BYTES..end]);
        bytes[position + 4..position + 8].copy_from_slice(&crc.to_le_bytes());
        position = end;
    }
}

/// Makes a state file's one record span the rest of the file, with a good CRC.
fn repair_state(bytes: &mut [u8]) {
    if bytes.len() >= 12 + RECORD_HEADER_BYTES {
        let length = (bytes.len() - 12 - RECORD_HEADER_BYTES) as u32;
        bytes[12..16].copy_from_slice(&length.to_le_bytes());
        repair_record_checksums(bytes, 12);
    }
}

/// Rewrites a segment's header CRC and every record CRC.
fn repair_segment(bytes: &mut [u8]) {
    if bytes.len() >= SEGMENT_HEADER_BYTES {
        let crc = crc32fast::hash(&bytes[..20]);
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        repair_record_checksums(bytes, SEGMENT_HEADER_BYTES);
    }
}

/// Makes a snapshot's lengths add up to its size and rewrites both checksums.
fn repair_snapshot(bytes: &mut [u8]) {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return;
    }
    let body = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
    let membership = (u32_at(bytes, 28) as u64).min(body);
    bytes[28..32].copy_from_slice(&(membership as u32).to_le_bytes());
    bytes[32..40].copy_from_slice(&(body - membership).to_le_bytes());
    let checksum = crc32fast::hash(&bytes[SNAPSHOT_HEADER_BYTES..]);
    bytes[40..44].copy_from_slice(&checksum.to_le_bytes());
    let header = crc32fast::hash(&bytes[..44]);
    bytes[44..48].copy_from_slice(&header.to_le_bytes());
}

/// The first index a segment's header names, when it has one; else 1.
fn named_first_index(segment: &[u8]) -> u64 {
    if segment.len() >= 20 {
        u64_at(segment, 12)
    } else {
        1
    }
}

/// The data directory on the in-memory disk.
const DIR: &str = "/node";

/// `segment_recovery`: `FileStorage::open` (recovery) on arbitrary file bytes, on the
/// in-memory `FaultyFileSystem` (no real I/O). Input: a flag byte (which files exist, whether
/// to repair checksums, one or two segments, the `repair` open option), then `u16`-prefixed
/// state-file and snapshot bytes, then the segment bytes (split in two at a `u16` when two).
/// Segments and the snapshot are named after what their headers say, so that a fuzzed header
/// can agree with its name. Recovery must never panic; when it succeeds the log it hands back
/// must be contiguous, and opening the directory again (after recovery's own cuts) must succeed
/// with the same log.
pub fn segment_recovery(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (state, rest) = take_prefixed(rest);
    let (snapshot, rest) = take_prefixed(rest);
    let (first_segment, second_segment) = if flags & TWO_SEGMENTS != 0 {
        take_prefixed(rest)
    } else {
        (rest, &[][..])
    };
    let repair = flags & REPAIR_CHECKSUMS != 0;
    let disk = FaultyFileSystem::new();
    let dir = Path::new(DIR);
    for sub in ["", "wal", "snapshot"] {
        disk.create_dir_all(&dir.join(sub))
            .expect("in-memory mkdir");
    }
    if flags & STATE_PRESENT != 0 {
        let mut bytes = state.to_vec();
        if repair {
            repair_state(&mut bytes);
        }
        disk.write_new(&dir.join("state"), &bytes)
            .expect("in-memory write");
    }
    if flags & SNAPSHOT_PRESENT != 0 {
        let mut bytes = snapshot.to_vec();
        if repair {
            repair_snapshot(&mut bytes);
        }
        let (index, term) = if bytes.len() >= 28 {
            (u64_at(&bytes, 12), u64_at(&bytes, 20))
        } else {
            (1, 1)
        };
        let name = format!("{term}-{index}.snap");
        disk.write_new(&dir.join("snapshot").join(name), &bytes)
            .expect("in-memory write");
    }
    for segment in [first_segment, second_segment] {
        if segment.is_empty() {
            continue;
        }
        let mut bytes = segment.to_vec();
        if repair {
            repair_segment(&mut bytes);
        }
        let name = format!("{:020}.seg", named_first_index(&bytes));
        disk.write_new(&dir.join("wal").join(name), &bytes)
            .expect("in-memory write");
    }
    let options = FileOptions {
        repair: flags & REPAIR_OPTION != 0,
        segment_bytes_max: 4096,
        cache_bytes_max: 1024,
        ..FileOptions::default()
    };
    let Some(first) = open_and_read(&disk, options.clone()) else {
        return;
    };
    let second = open_and_read(&disk, options).expect("a recovered directory opens again");
    assert_eq!(first, second, "a second open recovered something else");
}

/// Opens the directory and reads the whole log back; `None` when recovery refuses.
fn open_and_read(disk: &FaultyFileSystem, options: FileOptions) -> Option<Vec<Entry>> {
    let mut storage =
        FileStorage::open_with_file_system(DIR, options, Arc::new(disk.current())).ok()?;
    let recovered = storage.recover().expect("an opened storage recovers");
    for pair in recovered.entries.windows(2) {
        assert_eq!(pair[0].index().0 + 1, pair[1].index().0, "a gap in the log");
    }
    let _ = storage.load_snapshot();
    Some(recovered.entries)
}

/// A store holding a few keys and one session, so that fuzzed commands meet existing keys,
/// revisions and sequences.
fn populated_store() -> KvStore {
    let mut store = KvStore::new();
    let commands = [
        Command::put(b"a".to_vec(), b"1".to_vec()),
        Command::put(b"b".to_vec(), b"2".to_vec()).with_session(1, 1),
        Command::put(b"c".to_vec(), vec![3; 100]),
    ];
    for (index, command) in commands.iter().enumerate() {
        let bytes = command.encode().expect("a valid command encodes");
        store.apply(entry_id(index as u64 + 1), &bytes);
    }
    store
}

fn entry_id(index: u64) -> EntryId {
    EntryId::new(Term(1), LogIndex(index))
}

/// `kv_command`: `KvStore::apply` on arbitrary bytes, twice (the second time it may be a
/// session duplicate). The answer must always be a decodable response, the store's invariants
/// must hold, and a command that decodes must survive encode → decode unchanged.
pub fn kv_command(data: &[u8]) {
    let mut store = populated_store();
    for index in [10, 11] {
        let answer = store.apply(entry_id(index), data);
        Response::decode(&answer).expect("apply always answers with a response");
        store.check_invariants();
        assert_eq!(store.applied_index(), LogIndex(index));
    }
    if let Ok(command) = Command::decode(data) {
        let bytes = codec::encode(&command).expect("a decoded command encodes");
        assert_eq!(Command::decode(&bytes).expect("and decodes"), command);
    }
}

/// `kv_snapshot`: `KvStore::restore` on arbitrary bytes, with the record checksums optionally
/// repaired (first byte odd) so the decoders behind them are reached. A refused snapshot must
/// leave the store untouched; an accepted one must satisfy the invariants and survive
/// snapshot → restore unchanged.
pub fn kv_snapshot(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if flags & 1 != 0 {
        repair_record_checksums(&mut bytes, 0);
    }
    let mut store = populated_store();
    let before = store.clone();
    match store.restore(&bytes) {
        Ok(()) => {
            store.check_invariants();
            let snapshot = store.snapshot();
            let mut again = KvStore::new();
            again
                .restore(&snapshot)
                .expect("a store's own snapshot restores");
            assert_eq!(again, store);
        }
        Err(_) => assert_eq!(store, before, "a refused snapshot changed the store"),
    }
}

/// The cluster id of the fuzzed listener.
const CLUSTER_ID: u64 = 7;

/// A live TCP transport on loopback and the receiving end of its inbound queue.
struct Listener {
    address: SocketAddr,
    inbound: Receiver<(NodeId, Message)>,
    _transport: TcpTransport<Message>,
    /// One connection at a time, so that a finding belongs to the input that caused it.
    turn: Mutex<()>,
}

fn listener() -> &'static Listener {
    static LISTENER: OnceLock<Listener> = OnceLock::new();
    LISTENER.get_or_init(|| {
        let (sender, inbound) = crossbeam_channel::bounded(1024);
        // Node 2 is a known peer at an address nobody listens on: its writer just retries.
        let peers = [(NodeId(2), "127.0.0.1:9".parse().expect("address"))]
            .into_iter()
            .collect();
        let config = TcpConfig::new(
            NodeId(1),
            CLUSTER_ID,
            "127.0.0.1:0".parse().expect("address"),
            peers,
        );
        let transport = TcpTransport::start(config, sender).expect("the listener starts");
        Listener {
            address: transport.local_addr(),
            inbound,
            _transport: transport,
            turn: Mutex::new(()),
        }
    })
}

/// `tcp_handshake`: the real peer listener on loopback (handshake parsing is private to
/// `transport/tcp/listener.rs`, so it is reached through a socket). The first byte's low bit
/// prepends a valid handshake from node 2 (else the bytes must carry their own); its second bit
/// wraps the rest in one checksummed frame (so the `Message` decoder is reached). The bytes are
/// written, the write side shut, and the harness waits for the listener to close the
/// connection. A panic in the reader thread aborts the process (libFuzzer's panic hook).
pub fn tcp_handshake(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let listener = listener();
    let _turn = listener
        .turn
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut bytes = Vec::new();
    if flags & 1 != 0 {
        codec::write_value_record(&Handshake::new(CLUSTER_ID, NodeId(2)), &mut bytes)
            .expect("a handshake encodes");
    }
    if flags & 2 != 0 {
        codec::write_record(rest, &mut bytes);
    } else {
        bytes.extend_from_slice(rest);
    }
    let Ok(mut stream) = TcpStream::connect(listener.address) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(Shutdown::Write);
    // The listener never writes: reading returns when it closes the connection.
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    while listener.inbound.try_recv().is_ok() {}
}
