//! The `snapshot` thread: serializes the state machine's frozen state off the applier's path
//! (STYLE 10: apply and acknowledgements never wait for a snapshot's serialization), writes
//! and syncs the bytes beside the storage ([`SnapshotStager`]), then hands them to the log
//! writer, which only renames them into place and compacts the log behind them — so neither
//! applying nor persisting the log waits for a large snapshot.
//!
//! At most one snapshot is in flight: the applier freezes a new one only after the log
//! writer has finished with the previous one (`Shared::snapshot_in_flight`).
//!
//! The thread also frees what compaction took out of the core (a snapshot interval of log
//! entries and the superseded snapshot): freed under the core's lock that took 8–15 ms per
//! snapshot on a 100k-key store, every client request waiting (the p99.9 of puts).

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{select, Receiver};

use crate::node::driver::PendingSnapshot;
use crate::node::Shared;
use crate::raft::Compacted;
use crate::storage::SnapshotStager;

pub(super) fn run<M>(
    shared: &Shared<M>,
    stager: Box<dyn SnapshotStager>,
    pending: &Receiver<PendingSnapshot>,
    disposal: &Receiver<Compacted>,
    shutdown: &Receiver<()>,
) {
    lower_priority();
    loop {
        let snapshot = select! {
            recv(pending) -> snapshot => match snapshot {
                Ok(snapshot) => snapshot,
                Err(_) => return,
            },
            recv(disposal) -> compacted => {
                drop(compacted);
                continue;
            }
            recv(shutdown) -> _ => return,
        };
        let started = Instant::now();
        let mut local = snapshot.write();
        let serialized = started.elapsed();
        // Write and sync the bytes here too, so the log writer only renames the file: a
        // large snapshot's fsync never holds up the log's.
        match stager.stage(&local.snapshot.meta, &local.snapshot.data) {
            Ok(staged) => local.staged = Some(staged),
            Err(error) => {
                shared.fail(format!("writing a snapshot: {error}"));
                return;
            }
        }
        if !shared.is_serving() {
            return;
        }
        let took = started.elapsed();
        let bytes = local.snapshot.data.len() as u64;
        shared
            .metrics
            .snapshot_save_duration
            .observe(took.as_secs_f64());
        shared.metrics.snapshot_save_bytes.inc_by(bytes);
        tracing::info!(
            index = local.snapshot.meta.last.index.0,
            term = local.snapshot.meta.last.term.0,
            bytes,
            ms = took.as_millis() as u64,
            serialize_ms = serialized.as_millis() as u64,
            "snapshot taken"
        );
        shared.core.lock().local_snapshot = Some(local);
        let _ = shared.persist_wake.try_send(());
    }
}

/// Hands what compaction dropped to the snapshot thread to free; frees it here if that
/// thread is busy with a backlog or gone.
pub(super) fn dispose<M>(shared: &Shared<M>, compacted: Compacted) {
    // A failed send hands `compacted` back inside the error, which drops it here.
    let _ = shared.disposal_tx.try_send(compacted);
}

/// Runs this thread below the others of the node (nice 10, `SCHED_BATCH`): serializing a
/// large state machine is throughput work and should give way to the threads that persist
/// and acknowledge writes. It still gets the idle time and about a tenth of a busy core's; a
/// snapshot that takes longer only delays compacting the log. Where the platform refuses,
/// the thread runs as before. (On the two-core benchmark machine the effect on write tail
/// latency was within the run-to-run spread: docs/operations.md.)
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadSchedulePolicy,
        };
        // The crate maps its portable 0–99 scale onto nice values for the normal policies:
        // 22 is nice 10 (tested below).
        let priority =
            ThreadPriority::Crossplatform(SNAPSHOT_PRIORITY.try_into().unwrap_or_default());
        if let Err(error) = set_thread_priority_and_policy(
            thread_native_id(),
            priority,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        ) {
            tracing::debug!(?error, "cannot lower the snapshot thread's priority");
        }
    }
}

/// The snapshot thread's priority on thread-priority's portable scale (0–99): nice 10.
#[cfg(target_os = "linux")]
const SNAPSHOT_PRIORITY: u8 = 22;

/// The log writer is done with the snapshot in flight (saved, or skipped as older than one
/// already saved): the applier may freeze the next.
pub(super) fn done<M>(shared: &Shared<M>) {
    shared.snapshot_in_flight.store(false, Ordering::SeqCst);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_snapshot_thread_runs_at_nice_10_under_sched_batch() {
        let (nice, policy) = std::thread::spawn(|| {
            super::lower_priority();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
            // Fields after the command's closing parenthesis: state is field 3, nice is 19.
            let after = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            let nice: i64 = after
                .split_whitespace()
                .nth(16)
                .and_then(|field| field.parse().ok())
                .unwrap_or(i64::MIN);
            let policy: i64 = after
                .split_whitespace()
                .nth(38)
                .and_then(|field| field.parse().ok())
                .unwrap_or(i64::MIN);
            (nice, policy)
        })
        .join()
        .expect("the thread runs");
        assert_eq!(nice, 10);
        // SCHED_BATCH is policy 3.
        assert_eq!(policy, 3);
    }
}
