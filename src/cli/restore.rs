//! `keyval restore`: seeds an empty data directory from a backup, for a node of a new cluster
//! (like `etcdutl snapshot restore`).
//!
//! The backup is verified first. The data directory gets one snapshot at the backup's index
//! and term whose membership is the **new** cluster's voters with their addresses (from
//! `--cluster`), an empty log continuing after it, and a hard state at the backup's term with
//! no vote — so the new cluster's first election is at a later term than every entry the
//! snapshot covers. Restore every node of the new cluster from the same file, then start them
//! with the same `--cluster`: they elect a leader and serve the data.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use crate::raft::SnapshotData;
use crate::storage::file::{FileOptions, FileStorage};
use crate::storage::Storage;
use crate::types::{HardState, NodeId, SnapshotMeta};

use super::backup::read_backup_file;
use super::ClusterSpec;

/// `keyval restore` flags.
#[derive(Clone, Debug, Args)]
pub struct RestoreArgs {
    /// The backup file written by `kvctl snapshot save`.
    #[arg(long, env = "KEYVAL_RESTORE_SNAPSHOT")]
    pub snapshot: PathBuf,
    /// The data directory to seed; must not exist or be empty.
    #[arg(long, env = "KEYVAL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The id of the node this directory is for; must be a member of --cluster.
    #[arg(long, env = "KEYVAL_ID")]
    pub id: u64,
    /// The NEW cluster: ID=PEER_ADDRESS/CLIENT_ADDRESS for every member, comma-separated (the
    /// same value the restored nodes are then started with).
    #[arg(long, env = "KEYVAL_CLUSTER")]
    pub cluster: String,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The snapshot written, with the new membership.
    pub meta: SnapshotMeta,
    /// Bytes of state machine data.
    pub data_bytes: u64,
}

/// Runs `keyval restore` and prints what it did.
pub fn run(args: &RestoreArgs) -> anyhow::Result<()> {
    let report = restore(args)?;
    let voters: Vec<u64> = report
        .meta
        .membership
        .voters
        .iter()
        .map(|id| id.0)
        .collect();
    println!(
        "restored snapshot at index {} term {} ({} bytes) into {} for node {} of voters {voters:?}",
        report.meta.last.index.0,
        report.meta.last.term.0,
        report.data_bytes,
        args.data_dir.display(),
        args.id,
    );
    Ok(())
}

/// Verifies the backup and seeds the data directory; see the module docs.
pub fn restore(args: &RestoreArgs) -> anyhow::Result<RestoreReport> {
    let cluster =
        ClusterSpec::parse(&args.cluster).map_err(|error| anyhow::anyhow!("--cluster: {error}"))?;
    if !cluster.members.contains_key(&NodeId(args.id)) {
        let ids: Vec<u64> = cluster.members.keys().map(|id| id.0).collect();
        bail!(
            "--id {} is not a member of --cluster (members: {ids:?})",
            args.id
        );
    }
    let backup = read_backup_file(&args.snapshot)
        .with_context(|| format!("backup {} is unusable", args.snapshot.display()))?;
    check_empty(&args.data_dir)?;
    let meta = SnapshotMeta {
        last: backup.meta.last,
        membership: cluster.membership(),
    };
    seed(&args.data_dir, &meta, &backup)
        .with_context(|| format!("seeding data directory {}", args.data_dir.display()))?;
    Ok(RestoreReport {
        meta,
        data_bytes: backup.data.len() as u64,
    })
}

/// Refuses a data directory that holds anything: restoring over a node's state would mix two
/// histories.
fn check_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "refusing to restore into {}: the data directory is not empty",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => {
            Err(error).with_context(|| format!("reading data directory {}", dir.display()))
        }
    }
}

fn seed(dir: &Path, meta: &SnapshotMeta, backup: &SnapshotData) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).context("creating the directory")?;
    let mut storage = FileStorage::open(dir, FileOptions::default())?;
    let recovered = storage.recover()?;
    if recovered.snapshot.is_some() || !recovered.entries.is_empty() {
        bail!("the data directory is not empty");
    }
    storage.save_snapshot(meta, &backup.data)?;
    storage.compact(meta.last.index)?;
    storage.save_hard_state(HardState {
        term: meta.last.term,
        vote: None,
    })?;
    storage.sync()?;
    // Read back what a node will start from: the disk boundary is crossed in pairs.
    drop(storage);
    let mut storage = FileStorage::open(dir, FileOptions::default())?;
    let recovered = storage.recover()?;
    let loaded = storage.load_snapshot()?;
    let verified = recovered.snapshot.as_ref() == Some(meta)
        && recovered.entries.is_empty()
        && recovered.hard_state.term == meta.last.term
        && loaded.is_some_and(|(loaded, data)| &loaded == meta && data == *backup.data);
    if !verified {
        bail!("the seeded data directory does not read back as written");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cli::backup::write_backup_file;
    use crate::types::{EntryId, LogIndex, Membership, Term};

    const CLUSTER: &str = "4=127.0.0.1:1/127.0.0.1:2,5=127.0.0.1:3/127.0.0.1:4";

    fn backup(dir: &Path) -> PathBuf {
        let path = dir.join("backup.kvb");
        let snapshot = SnapshotData::new(
            SnapshotMeta {
                last: EntryId::new(Term(3), LogIndex(77)),
                membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
            },
            Arc::new(b"state machine bytes".to_vec()),
        );
        write_backup_file(&path, &snapshot).unwrap();
        path
    }

    fn args(snapshot: PathBuf, data_dir: PathBuf, id: u64) -> RestoreArgs {
        RestoreArgs {
            snapshot,
            data_dir,
            id,
            cluster: CLUSTER.into(),
        }
    }

    #[test]
    fn restore_seeds_the_new_membership_at_the_backup_index() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("n4");
        let report = restore(&args(backup(dir.path()), data_dir.clone(), 4)).unwrap();
        assert_eq!(report.meta.last, EntryId::new(Term(3), LogIndex(77)));
        let mut storage = FileStorage::open(&data_dir, FileOptions::default()).unwrap();
        let recovered = storage.recover().unwrap();
        let membership = recovered.snapshot.unwrap().membership;
        assert_eq!(membership.voters, [NodeId(4), NodeId(5)].into());
        assert!(membership.learners.is_empty());
        // Addresses travel with the configuration, for members that join later.
        let cluster = ClusterSpec::parse(CLUSTER).unwrap();
        assert_eq!(membership, cluster.membership());
        assert_eq!(recovered.hard_state.term, Term(3));
        assert_eq!(storage.first_index(), LogIndex(78));
    }

    #[test]
    fn a_non_empty_directory_or_a_foreign_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup(dir.path());
        let error = restore(&args(file.clone(), dir.path().to_path_buf(), 4)).unwrap_err();
        assert!(format!("{error:#}").contains("not empty"), "{error:#}");
        let error = restore(&args(file, dir.path().join("n9"), 9)).unwrap_err();
        assert!(format!("{error:#}").contains("not a member"), "{error:#}");
    }
}
