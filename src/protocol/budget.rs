//! The request-buffer budget: one cap on the bytes all client connections together may hold
//! for frames they are still receiving, beyond each connection's fixed read buffer.
//!
//! A connection reads into a buffer of `READ_BUFFER_BYTES` (64 KiB, bounded in total by the
//! connection limit). A frame longer than that needs room for all of it before it can be
//! decoded: the connection reserves the frame's whole length — announced by its length
//! prefix, already checked against [`FRAME_BYTES_MAX`](crate::limits::FRAME_BYTES_MAX) — from
//! the server's [`ByteBudget`] *before* it grows its buffer, and the [`Reservation`] goes back
//! when the frame has been decoded, or when the connection closes for any reason (it is
//! returned on drop). Nothing is ever allocated for a claimed length that is not reserved.
//!
//! A frame the budget cannot cover waits (back-pressure): the connection stops reading, so
//! its client is slowed by TCP, and the frame's deadline keeps running. Every reservation is
//! returned within one frame deadline (its frame completes or its connection is closed), so a
//! waiting frame of an honest client gets room unless the budget stays full for its whole
//! deadline. Waiting is not first come, first served.
//!
//! ```text
//!   header read ──► frame > read buffer? ──no──► read into the buffer
//!                         │ yes
//!                         ▼
//!                try_reserve(frame length) ──none──► wait for room (stop reading)
//!                         │ reservation
//!                         ▼
//!                grow the buffer to the frame ──► frame decoded ──► buffer shrinks,
//!                                                                   reservation dropped
//! ```
//!
//! The type knows nothing of threads or sockets: a reservation is a value that returns its
//! bytes when dropped, so an event loop can hold one per connection the same way. Only
//! [`ByteBudget::wait_for_room`] blocks, for a blocking reader ([`FrameReader::read_frame`](super::FrameReader::read_frame)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A shared cap on reserved bytes.
///
/// Invariant: `reserved <= limit` at every instant (reservations are taken by
/// compare-and-swap), hence `reserved_max <= limit`.
#[derive(Debug)]
pub struct ByteBudget {
    limit: u64,
    /// Bytes reserved now.
    reserved: AtomicU64,
    /// The most bytes ever reserved at once.
    reserved_max: AtomicU64,
    /// Frames that had to wait for room at least once.
    waits: AtomicU64,
    /// Held by a waiter between its failed check and its wait, and by a release before it
    /// notifies: a release can never slip between the two unnoticed.
    waiters: Mutex<()>,
    released: Condvar,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> ByteBudget {
        ByteBudget {
            limit,
            reserved: AtomicU64::new(0),
            reserved_max: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            waiters: Mutex::new(()),
            released: Condvar::new(),
        }
    }

    /// The cap.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// The most bytes reserved at once since the budget was made; never above
    /// [`limit`](ByteBudget::limit).
    pub fn reserved_max(&self) -> u64 {
        self.reserved_max.load(Ordering::Acquire)
    }

    /// How many frames had to wait for room.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` if they fit under the cap with everything reserved already.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut current = self.reserved.load(Ordering::Acquire);
        let total = loop {
            let total = current
                .checked_add(bytes)
                .filter(|&total| total <= self.limit)?;
            match self.reserved.compare_exchange_weak(
                current,
                total,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break total,
                Err(actual) => current = actual,
            }
        };
        self.reserved_max.fetch_max(total, Ordering::AcqRel);
        Some(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Reserves room for a frame of `bytes`, or counts the frame as waiting for room — once
    /// per frame: `counted` remembers it (reset once the frame gets its room).
    pub(crate) fn reserve_for_frame(
        self: &Arc<Self>,
        bytes: u64,
        counted: &mut bool,
    ) -> Option<Reservation> {
        let reservation = self.try_reserve(bytes);
        match reservation {
            Some(_) => *counted = false,
            None if !*counted => {
                *counted = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        reservation
    }

    /// Blocks until `bytes` would fit or `timeout` passes (it reserves nothing: the caller
    /// tries again, and may lose the room to another).
    pub fn wait_for_room(&self, bytes: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut guard = self.waiters.lock();
        while self.reserved().saturating_add(bytes) > self.limit {
            if self.released.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
    }

    fn release(&self, bytes: u64) {
        let before = self.reserved.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(
            before >= bytes,
            "released {bytes} of {before} reserved bytes"
        );
        let _guard = self.waiters.lock();
        self.released.notify_all();
    }
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl Reservation {
    /// The bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_the_limit_and_return_on_drop() {
        let budget = Arc::new(ByteBudget::new(100));
        let first = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(41).is_none(), "60 + 41 > 100");
        let second = budget.try_reserve(40).expect("fits exactly");
        assert_eq!(budget.reserved(), 100);
        assert!(budget.try_reserve(1).is_none());
        drop(first);
        assert_eq!(budget.reserved(), 40);
        assert_eq!(second.bytes(), 40);
        drop(second);
        assert_eq!(budget.reserved(), 0);
        assert_eq!(budget.reserved_max(), 100);
        assert!(budget.try_reserve(u64::MAX).is_none(), "no overflow");
    }

    #[test]
    fn concurrent_reservations_stay_under_the_limit() {
        let budget = Arc::new(ByteBudget::new(1000));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for round in 0..10_000u64 {
                        if let Some(reservation) = budget.try_reserve(1 + round % 300) {
                            assert!(budget.reserved() <= 1000);
                            drop(reservation);
                        }
                    }
                });
            }
        });
        assert_eq!(budget.reserved(), 0);
        assert!(budget.reserved_max() <= 1000);
    }

    #[test]
    fn a_waiter_wakes_when_room_is_released() {
        let budget = Arc::new(ByteBudget::new(10));
        let held = budget.try_reserve(10).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let began = Instant::now();
                budget.wait_for_room(5, Duration::from_secs(30));
                began.elapsed()
            });
            drop(held);
            let waited = waiter.join().unwrap();
            assert!(waited < Duration::from_secs(30), "woken by the release");
        });
        assert!(budget.try_reserve(5).is_some());
    }
}
