//! The `ticker` thread: tells the core the time, once a tick. It reads the monotonic clock
//! rather than counting wakeups, so a pause (SIGSTOP, a VM pause, a starved thread) is seen
//! whole: the core runs every tick that elapsed (see `Raft::advance_clock`). It also logs the
//! role, leader and configuration changes the core's observer recorded since the last tick.

use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::node::Shared;
use crate::raft::Monotonic;

pub(super) fn run<M>(shared: &Shared<M>, tick: Duration, shutdown: &Receiver<()>) {
    let ticks = crossbeam_channel::tick(tick);
    loop {
        select! {
            recv(ticks) -> _ => {
                if !shared.is_serving() {
                    continue;
                }
                let changes = {
                    let mut core = shared.core.lock();
                    // Wakeups missed during a pause are dropped by the channel; the clock is
                    // not.
                    core.raft.advance_clock(clock_reading(shared.clock_origin));
                    shared.route(&mut core);
                    core.observer.take()
                };
                // Role and configuration changes seen since the last tick, logged outside
                // the core lock.
                if let Some(changes) = changes {
                    changes.log();
                }
            }
            recv(shutdown) -> _ => return,
        }
    }
}

/// The monotonic clock as the core sees it: the time since `origin` (the node's start).
pub(super) fn clock_reading(origin: Instant) -> Monotonic {
    Monotonic(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
}
