//! Writes a seed corpus of valid inputs for every target into `fuzz/corpus/<target>/`, so that
//! the fuzzer starts from real encodings (magic numbers, checksummed headers, whole records)
//! instead of finding each by itself. Run from `fuzz/`: `cargo run --example seed_corpus`.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use keyval::codec;
use keyval::kv::{Command, Expect, KvStore};
use keyval::raft::{AppendResponse, Message, MessageBody};
use keyval::storage::file::faulty::FaultyFileSystem;
use keyval::storage::file::format::{self, StateRecord};
use keyval::storage::file::{FileOptions, FileStorage};
use keyval::storage::Storage;
use keyval::types::SnapshotMeta;
use keyval::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, NodeId, StateMachine, Term,
};

fn id(term: u64, index: u64) -> EntryId {
    EntryId::new(Term(term), LogIndex(index))
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        id: id(term, index),
        payload: EntryPayload::Command(vec![index as u8; 8]),
    }
}

fn messages() -> Vec<Message> {
    let message = |from: u64, term: u64, body| Message {
        from: NodeId(from),
        to: NodeId(2),
        term: Term(term),
        body,
    };
    vec![
        message(
            1,
            1,
            MessageBody::AppendEntries {
                prev: id(1, 3),
                entries: vec![entry(1, 4), entry(2, 5)],
                leader_commit: LogIndex(4),
            },
        ),
        message(
            1,
            1,
            MessageBody::Heartbeat {
                commit: LogIndex(3),
                round: 7,
            },
        ),
        message(
            3,
            2,
            MessageBody::RequestVote {
                pre_vote: true,
                last_log: id(1, 3),
                transfer: false,
            },
        ),
        message(
            1,
            1,
            MessageBody::AppendEntriesResponse(AppendResponse::Reject {
                rejected_prev: LogIndex(3),
                hint: id(1, 2),
            }),
        ),
        message(1, 1, MessageBody::TimeoutNow { last: id(1, 3) }),
        message(
            1,
            1,
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    last: id(1, 9),
                    membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
                },
                offset: 0,
                total: 5,
                checksum: crc32fast::hash(b"state"),
                data: b"state".to_vec(),
            },
        ),
    ]
}

fn commands() -> Vec<Command> {
    vec![
        Command::put(b"a".to_vec(), b"value".to_vec()),
        Command::delete(b"b".to_vec()).with_session(1, 2),
        Command::cas(b"c".to_vec(), Expect::ModRevision(LogIndex(3)), None).with_previous(),
    ]
}

/// Writes `inputs` as `corpus/<target>/seed-<n>`.
fn write(target: &str, inputs: &[Vec<u8>]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    for (number, input) in inputs.iter().enumerate() {
        fs::write(dir.join(format!("seed-{number}")), input).expect("write a seed");
    }
    println!("{target}: {} seeds", inputs.len());
}

/// Appends `bytes` behind a little-endian `u16` length (the layout `segment_recovery` reads).
fn push_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A `segment_recovery` input: flags, state, snapshot, first segment (prefixed), second.
fn recovery_seed() -> Vec<u8> {
    let disk = FaultyFileSystem::new();
    let options = FileOptions {
        segment_bytes_max: 256,
        ..FileOptions::default()
    };
    let mut storage =
        FileStorage::open_with_file_system("/node", options, Arc::new(disk.current()))
            .expect("open");
    let entries: Vec<Entry> = (1..=6).map(|index| entry(1, index)).collect();
    storage.append(&entries).expect("append");
    storage
        .save_hard_state(HardState {
            term: Term(1),
            vote: Some(NodeId(1)),
        })
        .expect("hard state");
    storage.sync().expect("sync");
    let segments: Vec<Vec<u8>> = disk
        .paths()
        .iter()
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .filter_map(|path| disk.file_bytes(path))
        .collect();
    let state = format::encode_state(&StateRecord {
        hard_state: HardState {
            term: Term(1),
            vote: Some(NodeId(1)),
        },
        compacted_through: LogIndex(0),
    })
    .expect("state");
    let snapshot = format::encode_snapshot(
        &SnapshotMeta {
            last: id(1, 2),
            membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        },
        b"data",
    )
    .expect("snapshot");
    // State, snapshot, two segments; checksums already right.
    let mut seed = vec![0b01011];
    push_prefixed(&mut seed, &state);
    push_prefixed(&mut seed, &snapshot);
    push_prefixed(&mut seed, &segments[0]);
    if let Some(second) = segments.get(1) {
        seed.extend_from_slice(second);
    }
    seed
}

fn main() {
    let messages = messages();
    let encoded_messages: Vec<Vec<u8>> = messages
        .iter()
        .map(|message| codec::encode(message).expect("encode"))
        .collect();
    let mut records = Vec::new();
    for message in &messages {
        let mut record = Vec::new();
        codec::write_value_record(message, &mut record).expect("encode");
        records.push(record);
    }
    let mut entry_record = Vec::new();
    codec::write_value_record(&entry(1, 1), &mut entry_record).expect("encode");
    records.push(entry_record);
    write("codec_record", &records);
    write("peer_message", &encoded_messages);
    write("segment_recovery", &[recovery_seed()]);
    let encoded_commands: Vec<Vec<u8>> = commands()
        .iter()
        .map(|command| codec::encode(command).expect("encode"))
        .collect();
    write("kv_command", &encoded_commands);
    let mut store = KvStore::new();
    for (index, bytes) in encoded_commands.iter().enumerate() {
        store.apply(id(1, index as u64 + 1), bytes);
    }
    let mut snapshot_seed = vec![0];
    snapshot_seed.extend_from_slice(&store.snapshot());
    write("kv_snapshot", &[snapshot_seed]);
    let handshake_seeds: Vec<Vec<u8>> = encoded_messages
        .iter()
        .map(|message| std::iter::once(3).chain(message.iter().copied()).collect())
        .collect();
    write("tcp_handshake", &handshake_seeds);
}
