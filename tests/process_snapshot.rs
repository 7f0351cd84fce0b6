//! Backup and restore through the real binaries: `kvctl snapshot`, `kvctl snapshot save` from
//! a running three-node cluster, `keyval restore` into fresh data directories for a NEW
//! cluster (new ports), which then serves every key; damaged backups and non-empty data
//! directories are refused. Every wait is a condition with a deadline.

mod process_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use keyval::client::{Client, ClientOptions};
use process_support::{free_address, wait_for, NodeProcess, ProcessCluster};

const KEYS: usize = 200;

fn key(k: usize) -> Vec<u8> {
    format!("backup/{k:04}").into_bytes()
}

fn value(k: usize) -> Vec<u8> {
    format!("value-{k}-{}", "x".repeat(k % 50)).into_bytes()
}

/// Runs `keyval restore` with `args`.
fn keyval_restore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyval"))
        .arg("restore")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run keyval restore")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes the keys, takes a snapshot, saves a backup to `file`; returns the index it covers.
fn back_up(file: &Path) -> u64 {
    let cluster = ProcessCluster::start(3);
    let client = cluster.client();
    cluster.wait_leader(&client);
    for k in 0..KEYS {
        client.put(key(k), value(k)).expect("put");
    }
    let taken = cluster.kvctl(&["snapshot"]);
    assert!(taken.status.success(), "kvctl snapshot: {}", stderr(&taken));
    assert!(
        stdout(&taken).contains("covers index"),
        "{}",
        stdout(&taken)
    );
    let saved = cluster.kvctl(&["--json", "snapshot", "save", file.to_str().unwrap()]);
    assert!(
        saved.status.success(),
        "kvctl snapshot save: {}",
        stderr(&saved)
    );
    let report: serde_json::Value = serde_json::from_slice(&saved.stdout).expect("json report");
    let index = report["index"].as_u64().expect("index");
    assert!(index > KEYS as u64, "the backup covers every put: {report}");
    assert_eq!(
        report["file_bytes"].as_u64(),
        Some(std::fs::metadata(file).unwrap().len())
    );
    index
    // The old cluster's processes are killed here.
}

#[test]
fn a_backup_restores_into_a_new_cluster_with_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.kvb");
    let index = back_up(&file);

    // A NEW cluster: new ports, fresh data directories, each restored from the same file.
    let size = 3;
    let clients: Vec<String> = (0..size).map(|_| free_address()).collect();
    let peers: Vec<String> = (0..size).map(|_| free_address()).collect();
    let spec = (0..size)
        .map(|k| format!("{}={}/{}", k + 1, peers[k], clients[k]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for id in 1..=size {
        let data_dir = dir.path().join(format!("restored-n{id}"));
        let restored = keyval_restore(&[
            "--snapshot",
            file.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--cluster",
            &spec,
        ]);
        assert!(restored.status.success(), "restore: {}", stderr(&restored));
        assert!(
            stdout(&restored).contains(&format!("at index {index}")),
            "{}",
            stdout(&restored)
        );
        let args = vec![
            "--id".to_string(),
            id.to_string(),
            "--cluster".to_string(),
            spec.clone(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ];
        let log = dir.path().join(format!("restored-n{id}.log"));
        nodes.push(NodeProcess::spawn(args, log, None));
    }
    let client = Client::connect(&clients, ClientOptions::default()).expect("connect");
    // Every key reads back (linearizably, so through the new cluster's leader).
    let mut missing = Vec::new();
    assert!(
        wait_for(|| client.get(key(0)).is_ok_and(|found| found.is_some())),
        "the restored cluster does not serve"
    );
    for k in 0..KEYS {
        match client.get(key(k)) {
            Ok(Some(found)) if found.value == value(k) => {}
            other => missing.push((k, other)),
        }
    }
    assert!(missing.is_empty(), "keys not restored: {missing:?}");
    // It is a working cluster: it takes new writes after the restored history.
    let written = client
        .put(b"after-restore".to_vec(), b"yes".to_vec())
        .expect("put");
    assert!(written.mod_revision.0 > index);
    // Every node holds the restored snapshot and the new write.
    for address in &clients {
        assert!(
            wait_for(
                || client.status(address).is_ok_and(|status| status.applied.0
                    >= written.mod_revision.0
                    && status
                        .snapshot
                        .is_some_and(|snapshot| snapshot.index.0 >= index))
            ),
            "{address} did not catch up"
        );
    }
    drop(nodes);
}

#[test]
fn damaged_backups_and_non_empty_data_dirs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.kvb");
    back_up(&file);
    let spec = format!("1={}/{}", free_address(), free_address());
    let restore = |file: &Path, data_dir: &Path| {
        keyval_restore(&[
            "--snapshot",
            file.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--id",
            "1",
            "--cluster",
            &spec,
        ])
    };

    // One flipped byte in the data.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() - 100;
    bytes[middle] ^= 0x40;
    let damaged = dir.path().join("damaged.kvb");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = dir.path().join("from-damaged");
    let refused = restore(&damaged, &target);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("checksum mismatch"),
        "{}",
        stderr(&refused)
    );
    assert!(!target.exists(), "nothing is written from a damaged backup");

    // A truncated file.
    std::fs::write(&damaged, &std::fs::read(&file).unwrap()[..200]).unwrap();
    let refused = restore(&damaged, &target);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("truncated"),
        "{}",
        stderr(&refused)
    );

    // A data directory that already holds something.
    let occupied = dir.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("keep-me"), b"precious").unwrap();
    let refused = restore(&file, &occupied);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not empty"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read(occupied.join("keep-me")).unwrap(),
        b"precious"
    );

    // The intact file restores.
    let fresh = dir.path().join("fresh");
    let restored = restore(&file, &fresh);
    assert!(restored.status.success(), "{}", stderr(&restored));
}
