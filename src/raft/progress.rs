//! What a leader knows about each follower's log, and the flow control that bounds how much it
//! sends ahead of the follower's answers.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// How the leader currently replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The match point is unknown: one AppendEntries at a time until the follower accepts one.
    Probe,
    /// The follower is in step: AppendEntries are pipelined within the in-flight window.
    Replicate,
    /// The follower needs compacted entries: a snapshot is being streamed, appends wait.
    Snapshot,
}

/// The in-flight window for one follower, bounded in messages **and** bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the message, bytes of its entries), oldest first.
    messages: VecDeque<(LogIndex, u64)>,
    bytes: u64,
    messages_max: usize,
    bytes_max: u64,
}

impl Inflights {
    /// An empty window with the given bounds.
    pub fn new(messages_max: usize, bytes_max: u64) -> Inflights {
        Inflights {
            messages: VecDeque::new(),
            bytes: 0,
            messages_max,
            bytes_max,
        }
    }

    /// Records a message whose last entry is `last` carrying `bytes` of entries.
    pub fn add(&mut self, last: LogIndex, bytes: u64) {
        debug_assert!(!self.is_full());
        debug_assert!(self.messages.back().is_none_or(|&(back, _)| back < last));
        self.messages.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at or below `index` (acknowledged).
    pub fn free_to(&mut self, index: LogIndex) {
        while let Some(&(last, bytes)) = self.messages.front() {
            if last > index {
                break;
            }
            self.messages.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Forgets everything in flight.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    /// Whether the window admits no more messages.
    pub fn is_full(&self) -> bool {
        self.messages.len() >= self.messages_max || self.bytes >= self.bytes_max
    }

    /// Messages in flight.
    pub fn count(&self) -> usize {
        self.messages.len()
    }

    /// Bytes in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to match the leader's log.
    /// Invariant: `matched < next`.
    pub matched: LogIndex,
    /// The next index to send.
    pub next: LogIndex,
    /// Probe or replicate.
    pub state: ProgressState,
    /// In probe state: a probe is outstanding, so send nothing more until an answer or the
    /// next heartbeat.
    pub probe_sent: bool,
    /// The pipelining window (replicate state).
    pub inflights: Inflights,
    /// Whether the follower answered since the last check-quorum.
    pub recent_active: bool,
    /// The tick at which the follower last answered, if ever (membership changes count only
    /// members heard from within an election timeout as healthy).
    pub heard_at: Option<u64>,
    /// The latest heartbeat round the follower answered.
    pub round_acked: u64,
    /// The snapshot being streamed (snapshot state only).
    pub transfer: Option<crate::raft::snapshot::Transfer>,
}

impl Progress {
    /// A follower about which nothing is known yet: probe from `next`.
    pub fn new(next: LogIndex, messages_max: usize, bytes_max: u64) -> Progress {
        Progress {
            matched: LogIndex(0),
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(messages_max, bytes_max),
            recent_active: true,
            heard_at: None,
            round_acked: 0,
            transfer: None,
        }
    }

    /// The follower answered at tick `now`.
    pub fn mark_heard(&mut self, now: u64) {
        self.recent_active = true;
        self.heard_at = Some(now);
    }

    /// Whether nothing more may be sent now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => true,
        }
    }

    /// The follower matches up to `index`; returns whether that is news.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index.next());
        updated
    }

    /// Switches to pipelining from the match point.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.transfer = None;
        self.next = self.matched.next();
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Falls back to probing from `next`.
    pub fn become_probe(&mut self, next: LogIndex) {
        self.state = ProgressState::Probe;
        self.transfer = None;
        self.next = next.max(self.matched.next());
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records that a message ending at `last` with `bytes` of entries was sent.
    pub fn on_sent(&mut self, last: Option<LogIndex>, bytes: u64) {
        match self.state {
            ProgressState::Probe | ProgressState::Snapshot => self.probe_sent = true,
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last.next();
                    self.inflights.add(last, bytes);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_bounded_by_messages() {
        let mut inflights = Inflights::new(2, 1 << 20);
        inflights.add(LogIndex(1), 10);
        assert!(!inflights.is_full());
        inflights.add(LogIndex(2), 10);
        assert!(inflights.is_full());
        inflights.free_to(LogIndex(1));
        assert!(!inflights.is_full());
        assert_eq!(inflights.count(), 1);
    }

    #[test]
    fn window_is_bounded_by_bytes() {
        let mut inflights = Inflights::new(100, 1000);
        inflights.add(LogIndex(5), 600);
        assert!(!inflights.is_full());
        inflights.add(LogIndex(9), 600);
        assert!(inflights.is_full());
        inflights.free_to(LogIndex(8));
        assert_eq!(inflights.bytes(), 600);
        assert!(!inflights.is_full());
    }

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut progress = Progress::new(LogIndex(5), 10, 1000);
        assert!(!progress.is_paused());
        progress.on_sent(Some(LogIndex(7)), 10);
        assert!(progress.is_paused());
        assert_eq!(progress.next, LogIndex(5), "probe does not advance next");
        progress.maybe_update(LogIndex(7));
        progress.become_replicate();
        assert_eq!(progress.next, LogIndex(8));
        assert!(!progress.is_paused());
    }
}
