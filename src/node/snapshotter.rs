//! The `snapshot` thread: serializes the state machine's frozen state off the applier's path
//! (STYLE 10: apply and acknowledgements never wait for a snapshot's serialization), writes
//! and syncs the bytes beside the storage ([`SnapshotStager`]), then hands them to the log
//! writer, which only renames them into place and compacts the log behind them — so neither
//! applying nor persisting the log waits for a large snapshot.
//!
//! At most one snapshot is in flight: the applier freezes a new one only after the log
//! writer has finished with the previous one (`Shared::snapshot_in_flight`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{select, Receiver};

use crate::node::driver::PendingSnapshot;
use crate::node::Shared;
use crate::storage::SnapshotStager;

pub(super) fn run<M>(
    shared: &Shared<M>,
    stager: Box<dyn SnapshotStager>,
    pending: &Receiver<PendingSnapshot>,
    shutdown: &Receiver<()>,
) {
    loop {
        let snapshot = select! {
            recv(pending) -> snapshot => match snapshot {
                Ok(snapshot) => snapshot,
                Err(_) => return,
            },
            recv(shutdown) -> _ => return,
        };
        let started = Instant::now();
        let mut local = snapshot.write();
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
            "snapshot taken"
        );
        shared.core.lock().local_snapshot = Some(local);
        let _ = shared.persist_wake.try_send(());
    }
}

/// The log writer is done with the snapshot in flight (saved, or skipped as older than one
/// already saved): the applier may freeze the next.
pub(super) fn done<M>(shared: &Shared<M>) {
    shared.snapshot_in_flight.store(false, Ordering::SeqCst);
}
