//! When a client connection is closed for what it does not send.
//!
//! - **Idle**: nothing arrived and nothing was in flight (no request submitted and not yet
//!   answered) for the idle timeout. A connection waiting for a slow answer — a membership
//!   change, say — is busy, not idle, and its idle time starts when it has been answered.
//! - **Slow frame**: a frame's first byte arrived and the frame was not whole within the frame
//!   timeout (a slow-loris sender, or a frame that waited that long for the request-buffer
//!   budget). The idle timeout does not apply while a frame is partly received.
//!
//! Pure bookkeeping over instants the caller passes in (no clock, no thread): the event loop
//! keeps one per connection and arms the connection's timer at
//! [`ConnectionDeadlines::next_deadline`].

use std::time::{Duration, Instant};

/// Why a connection's time ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Nothing arrived and nothing was in flight for this long.
    Idle { idle_for: Duration },
    /// The frame being received started this long ago and is still incomplete.
    SlowFrame { started_ago: Duration },
}

impl std::fmt::Display for Expired {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expired::Idle { idle_for } => write!(formatter, "idle for {idle_for:?}"),
            Expired::SlowFrame { started_ago } => write!(
                formatter,
                "a frame begun {started_ago:?} ago is still incomplete"
            ),
        }
    }
}

/// The idle and frame deadlines of one connection.
///
/// Invariant: `frame_started_at` is `Some` exactly while part of a frame is buffered (as of
/// the last [`observe`](ConnectionDeadlines::observe)).
#[derive(Debug)]
pub(crate) struct ConnectionDeadlines {
    idle_timeout: Duration,
    frame_timeout: Duration,
    /// The last instant the connection was busy: bytes arrived or requests were in flight.
    busy_at: Instant,
    /// When the first byte of the frame being received was seen; `None` between frames.
    frame_started_at: Option<Instant>,
}

impl ConnectionDeadlines {
    /// A connection accepted at `now`.
    pub(crate) fn new(
        now: Instant,
        idle_timeout: Duration,
        frame_timeout: Duration,
    ) -> ConnectionDeadlines {
        ConnectionDeadlines {
            idle_timeout,
            frame_timeout,
            busy_at: now,
            frame_started_at: None,
        }
    }

    /// Bytes arrived at `now`.
    pub(crate) fn received(&mut self, now: Instant) {
        self.busy_at = self.busy_at.max(now);
    }

    /// The connection's state at `now`, after every whole frame buffered was taken: whether
    /// part of a frame is buffered, and whether requests are in flight.
    pub(crate) fn observe(&mut self, now: Instant, partial_frame: bool, in_flight: bool) {
        if in_flight {
            self.busy_at = self.busy_at.max(now);
        }
        match (partial_frame, self.frame_started_at) {
            (true, None) => self.frame_started_at = Some(now),
            (false, Some(_)) => {
                self.frame_started_at = None;
                // A frame just completed: the idle time starts now at the earliest.
                self.busy_at = self.busy_at.max(now);
            }
            _ => {}
        }
    }

    /// Whether a deadline has passed at `now`.
    pub(crate) fn expired(&self, now: Instant) -> Option<Expired> {
        match self.frame_started_at {
            Some(started) => {
                let started_ago = now.saturating_duration_since(started);
                (started_ago >= self.frame_timeout).then_some(Expired::SlowFrame { started_ago })
            }
            None => {
                let idle_for = now.saturating_duration_since(self.busy_at);
                (idle_for >= self.idle_timeout).then_some(Expired::Idle { idle_for })
            }
        }
    }

    /// The next instant at which [`expired`](ConnectionDeadlines::expired) may answer, unless
    /// something is observed before.
    pub(crate) fn next_deadline(&self) -> Instant {
        match self.frame_started_at {
            Some(started) => started + self.frame_timeout,
            None => self.busy_at + self.idle_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);
    const FRAME: Duration = Duration::from_secs(3);

    #[test]
    fn idle_counts_from_the_last_byte_or_request_in_flight() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut deadlines = ConnectionDeadlines::new(start, IDLE, FRAME);
        assert_eq!(deadlines.expired(at(9)), None);
        assert!(matches!(
            deadlines.expired(at(10)),
            Some(Expired::Idle { .. })
        ));
        deadlines.received(at(5));
        deadlines.observe(at(5), false, false);
        assert_eq!(deadlines.expired(at(14)), None);
        // A request in flight until 20 keeps it busy.
        deadlines.observe(at(20), false, true);
        assert_eq!(deadlines.expired(at(29)), None);
        assert_eq!(deadlines.next_deadline(), at(30));
        assert!(deadlines.expired(at(30)).is_some());
    }

    #[test]
    fn a_partial_frame_has_its_own_deadline_and_no_idle_one() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut deadlines = ConnectionDeadlines::new(start, IDLE, FRAME);
        deadlines.received(at(1));
        deadlines.observe(at(1), true, false);
        // Trickling bytes do not extend the frame's deadline.
        deadlines.received(at(2));
        deadlines.observe(at(2), true, false);
        assert_eq!(deadlines.expired(at(3)), None);
        assert_eq!(deadlines.next_deadline(), at(4));
        assert_eq!(
            deadlines.expired(at(4)),
            Some(Expired::SlowFrame {
                started_ago: Duration::from_secs(3)
            })
        );
        // The frame completes at 3: the next one gets a fresh deadline, idle counts from 3.
        deadlines.observe(at(3), false, false);
        assert_eq!(deadlines.expired(at(12)), None);
        deadlines.observe(at(12), true, false);
        assert_eq!(
            deadlines.expired(at(14)),
            None,
            "no idle deadline mid-frame"
        );
        assert!(matches!(
            deadlines.expired(at(15)),
            Some(Expired::SlowFrame { .. })
        ));
    }
}
