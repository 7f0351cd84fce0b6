//! The `snapshot` thread: serializes the state machine's frozen state off the applier's path
//! (STYLE 10: apply and acknowledgements never wait for a snapshot's serialization), then
//! hands the bytes to the log writer, which saves them and compacts the log behind them.
//!
//! At most one snapshot is in flight: the applier freezes a new one only after the log
//! writer has finished with the previous one (`Shared::snapshot_in_flight`).

use std::sync::atomic::Ordering;

use crossbeam_channel::{select, Receiver};

use crate::node::driver::PendingSnapshot;
use crate::node::Shared;

pub(super) fn run<M>(
    shared: &Shared<M>,
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
        let local = snapshot.write();
        if !shared.is_serving() {
            return;
        }
        shared.core.lock().local_snapshot = Some(local);
        let _ = shared.persist_wake.try_send(());
    }
}

/// The log writer is done with the snapshot in flight (saved, or skipped as older than one
/// already saved): the applier may freeze the next.
pub(super) fn done<M>(shared: &Shared<M>) {
    shared.snapshot_in_flight.store(false, Ordering::SeqCst);
}
