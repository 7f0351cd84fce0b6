//! Deterministic tests of snapshots in the pure core (Raft §7): a leader that compacted its log
//! streams a multi-chunk snapshot to a follower that needs compacted entries; the follower
//! verifies, installs and catches up; chunks lost, duplicated or from another snapshot are
//! handled; a corrupt snapshot is never installed.

use keyval::limits::SNAPSHOT_CHUNK_BYTES;
use keyval::raft::{AppendResponse, MessageBody, ProgressState};
use keyval::testkit::CoreNetwork;
use keyval::{LogIndex, NodeId};

const N1: NodeId = NodeId(1);
const N3: NodeId = NodeId(3);

/// A snapshot payload spanning several chunks.
fn big_snapshot() -> Vec<u8> {
    (0..(2 * SNAPSHOT_CHUNK_BYTES + 12_345))
        .map(|k| (k % 251) as u8)
        .collect()
}

fn settle(network: &mut CoreNetwork) {
    for _ in 0..60 {
        network.tick_all();
        network.stabilize();
    }
}

/// N3 is cut off while the others commit and compact; returns the network with N3 behind the
/// leader's first log index.
fn lagging_follower() -> (CoreNetwork, Vec<u8>) {
    let mut network = CoreNetwork::new(3, 21);
    network.elect(N1);
    network.propose(N1, b"before").unwrap();
    network.isolate(N3);
    for k in 0..50u8 {
        network.propose(N1, &[k]).unwrap();
    }
    let data = big_snapshot();
    let applied = network.node(N1).log().applied_handed();
    network.snapshot(N1, data.clone(), applied);
    assert!(network.node(N1).log().first_index() > network.node(N3).log().last_index().next());
    (network, data)
}

// Raft §7: a follower that needs compacted entries gets the snapshot in chunks and catches up.
#[test]
fn section_7_lagging_follower_catches_up_through_a_chunked_snapshot() {
    let (mut network, data) = lagging_follower();
    network.heal();
    let mut chunks = 0;
    network.run_with(60, |message| {
        if let MessageBody::InstallSnapshot { .. } = message.body {
            chunks += 1;
        }
        true
    });
    assert_eq!(chunks, 3, "2 MiB + a bit is three 1 MiB chunks");
    let installed = &network.nodes[&N3].installed_snapshots;
    assert_eq!(installed.len(), 1);
    let leader_last = network.node(N1).log().last_id();
    assert_eq!(network.node(N3).log().last_id(), leader_last);
    assert_eq!(network.committed(N3), network.committed(N1));
    assert_eq!(
        network.node(N3).snapshot().unwrap().data.as_slice(),
        data.as_slice()
    );
    assert_eq!(
        network.node(N1).progress(N3).unwrap().state,
        ProgressState::Replicate
    );
    // Replication continues normally after the snapshot.
    network.propose(N1, b"after").unwrap();
    settle(&mut network);
    assert_eq!(
        network.node(N3).log().last_id(),
        network.node(N1).log().last_id()
    );
}

// A lost chunk is re-sent on the next heartbeat answer; the transfer resumes, not restarts.
#[test]
fn lost_chunks_are_resent_and_the_transfer_resumes() {
    let (mut network, _) = lagging_follower();
    network.heal();
    let mut dropped = 0;
    network.run_with(80, |message| {
        let is_chunk =
            matches!(message.body, MessageBody::InstallSnapshot { offset, .. } if offset > 0);
        let drop = is_chunk && dropped < 2;
        dropped += usize::from(drop);
        !drop
    });
    assert_eq!(dropped, 2);
    assert_eq!(
        network.node(N3).log().last_id(),
        network.node(N1).log().last_id()
    );
}

// A snapshot whose bytes do not match its checksum is refused and never installed.
#[test]
fn corrupt_snapshot_is_never_installed() {
    let (mut network, _) = lagging_follower();
    network.heal();
    network.run_with(30, |message| {
        if let MessageBody::InstallSnapshot { data, .. } = &mut message.body {
            if let Some(byte) = data.first_mut() {
                *byte ^= 0xFF; // damage every chunk in transit
            }
        }
        true
    });
    assert!(network.nodes[&N3].installed_snapshots.is_empty());
    assert!(network.node(N3).log().last_index() < network.node(N1).log().first_index());
}

// A follower whose log diverges at the snapshot point discards its whole log (Raft §7).
#[test]
fn snapshot_that_does_not_match_the_log_replaces_it() {
    let (mut network, _) = lagging_follower();
    network.heal();
    settle(&mut network);
    let node = network.node(N3);
    assert!(node.log().first_index() > LogIndex(1));
    assert_eq!(
        node.log().snapshot().index,
        node.snapshot().unwrap().meta.last.index
    );
}

// A follower restarted after installing a snapshot recovers from it.
#[test]
fn follower_restarts_from_its_installed_snapshot() {
    let (mut network, _) = lagging_follower();
    network.heal();
    settle(&mut network);
    let snapshot_index = network.nodes[&N3].installed_snapshots[0].index;
    network.crash_and_restart(N3);
    // Recovered from the snapshot: the log starts after it.
    assert_eq!(network.node(N3).log().snapshot().index, snapshot_index);
    settle(&mut network);
    assert_eq!(
        network.node(N3).log().last_id(),
        network.node(N1).log().last_id()
    );
}

// Found by the simulation (seed 3694): the leader compacts past the snapshot it is streaming
// before the follower's acknowledgement arrives. The acknowledgement is about a committed
// entry the leader no longer holds, and must still count, or the follower stays stuck in
// snapshot state while the same old snapshot is re-sent forever.
#[test]
fn acknowledgement_below_a_newer_compaction_point_still_counts() {
    let mut network = CoreNetwork::new(3, 23);
    network.elect(N1);
    network.propose(N1, b"before").unwrap();
    network.isolate(N3);
    for k in 0..20u8 {
        network.propose(N1, &[k]).unwrap();
    }
    let first = network.node(N1).log().applied_handed();
    network.snapshot(N1, b"small first snapshot".to_vec(), first);
    network.heal();
    // Let the transfer happen, but hold back N3's acknowledgements to N1.
    let mut held = Vec::new();
    network.run_with(20, |message| {
        let acknowledgement = matches!(
            message.body,
            MessageBody::AppendEntriesResponse(AppendResponse::Success { .. })
        );
        if message.from == N3 && message.to == N1 && acknowledgement {
            held.push(message.clone());
            return false;
        }
        true
    });
    assert_eq!(network.nodes[&N3].installed_snapshots.len(), 1);
    // Meanwhile the leader writes more and compacts past the snapshot it sent.
    network.isolate(N3);
    for k in 20..40u8 {
        network.propose(N1, &[k]).unwrap();
    }
    let second = network.node(N1).log().applied_handed();
    network.snapshot(N1, b"second snapshot".to_vec(), second);
    network.heal();
    for message in held {
        let _ = network.node(N1).step(message);
    }
    network.process_ready(N1);
    settle(&mut network);
    assert_eq!(
        network.node(N3).log().last_id(),
        network.node(N1).log().last_id()
    );
    assert_eq!(
        network.node(N1).progress(N3).unwrap().state,
        ProgressState::Replicate
    );
}
