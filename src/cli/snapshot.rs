//! `kvctl snapshot` (take a snapshot now) and `kvctl snapshot save FILE` (a consistent backup
//! of a running cluster: the leader's latest snapshot, downloaded in chunks, verified and
//! written atomically in the [backup format](super::backup)).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::protocol::ServerError;

use super::backup::write_backup_file;
use super::kvctl::{fail, EXIT_ERROR, EXIT_OK};

/// `kvctl snapshot` flags.
#[derive(Clone, Debug, Args)]
pub struct SnapshotArgs {
    /// The node to ask, by client address (default: the leader).
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// How long to wait for the snapshot to be taken and durable, in seconds.
    #[arg(long, default_value_t = 60, global = true)]
    pub wait_secs: u64,
    /// Save a backup instead of only taking a snapshot.
    #[command(subcommand)]
    pub action: Option<SnapshotAction>,
}

/// What `kvctl snapshot` does besides taking one.
#[derive(Clone, Debug, Subcommand)]
pub enum SnapshotAction {
    /// Download the node's latest snapshot (taking one first if it has none) and write it to
    /// FILE atomically, in the backup format `keyval restore` reads.
    Save {
        /// Where to write the backup.
        file: PathBuf,
        /// Take a fresh snapshot first, so the backup holds everything applied now (by default
        /// the latest snapshot is saved, which may be older).
        #[arg(long)]
        fresh: bool,
    },
}

/// Runs `kvctl snapshot`; returns the exit code.
pub fn run(client: &Client, args: &SnapshotArgs, timeout: Duration, json: bool) -> i32 {
    let wait_deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let target = match &args.node {
        Some(node) => node.clone(),
        None => match client.leader_endpoint(Instant::now() + timeout) {
            Ok(leader) => leader,
            Err(error) => return fail(&error, json),
        },
    };
    let result = match &args.action {
        None => take(client, &target, wait_deadline, json),
        Some(SnapshotAction::Save { file, fresh }) => {
            save(client, &target, file, *fresh, wait_deadline, json)
        }
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(Failure::Client(error)) => fail(&error, json),
        Err(Failure::Other(message)) => {
            if json {
                println!("{}", json!({ "error": message }));
            } else {
                eprintln!("kvctl: {message}");
            }
            EXIT_ERROR
        }
    }
}

enum Failure {
    Client(ClientError),
    Other(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

fn take(client: &Client, target: &str, deadline: Instant, json: bool) -> Result<(), Failure> {
    let covered = client.take_snapshot_and_wait(target, deadline)?;
    if json {
        println!(
            "{}",
            json!({ "node": target, "index": covered.index.0, "term": covered.term.0 })
        );
    } else {
        println!(
            "snapshot on {target} covers index {} (term {})",
            covered.index.0, covered.term.0
        );
    }
    Ok(())
}

fn save(
    client: &Client,
    target: &str,
    file: &Path,
    fresh: bool,
    deadline: Instant,
    json: bool,
) -> Result<(), Failure> {
    if fresh {
        client.take_snapshot_and_wait(target, deadline)?;
    }
    // A progress line on stderr for large stores: every 10 % of the download.
    let mut shown = 0;
    let mut progress = |done: u64, total: u64| {
        const LARGE: u64 = 16 * 1024 * 1024;
        if json || total < LARGE {
            return;
        }
        let tenths = done * 10 / total;
        if tenths > shown || done < total / 10 && shown > 0 {
            shown = tenths;
            eprintln!(
                "downloading snapshot: {:.1} of {:.1} MiB ({}%)",
                done as f64 / 1048576.0,
                total as f64 / 1048576.0,
                done * 100 / total
            );
        }
    };
    let snapshot = match client.download_snapshot_with_progress(target, &mut progress) {
        Err(ClientError::Server(ServerError::NoSnapshot)) => {
            client.take_snapshot_and_wait(target, deadline)?;
            client.download_snapshot_with_progress(target, &mut progress)?
        }
        other => other?,
    };
    let file_bytes = write_backup_file(file, &snapshot)
        .map_err(|error| Failure::Other(format!("writing the backup: {error}")))?;
    let last = snapshot.meta.last;
    if json {
        println!(
            "{}",
            json!({
                "node": target, "file": file.display().to_string(), "index": last.index.0,
                "term": last.term.0, "data_bytes": snapshot.data.len(), "file_bytes": file_bytes,
                "checksum": format!("{:#010x}", snapshot.checksum),
            })
        );
    } else {
        println!(
            "saved snapshot of {target} at index {} term {} to {} ({} bytes of data, {file_bytes} bytes in all, crc32 {:#010x})",
            last.index.0,
            last.term.0,
            file.display(),
            snapshot.data.len(),
            snapshot.checksum
        );
    }
    Ok(())
}
