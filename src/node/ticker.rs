//! The `ticker` thread: drives the core's logical clock.

use std::time::Duration;

use crossbeam_channel::{select, Receiver};

use crate::node::Shared;

pub(super) fn run<M>(shared: &Shared<M>, tick: Duration, shutdown: &Receiver<()>) {
    let ticks = crossbeam_channel::tick(tick);
    loop {
        select! {
            recv(ticks) -> _ => {
                if !shared.is_serving() {
                    continue;
                }
                let mut core = shared.core.lock();
                core.raft.tick();
                shared.route(&mut core);
            }
            recv(shutdown) -> _ => return,
        }
    }
}
