//! Node configuration and its validation.

use std::time::Duration;

use crate::error::ConfigError;
use crate::limits;
use crate::types::NodeId;

/// The longest tick accepted: keeps every time computation of the core far from overflow.
pub const TICK_MAX: Duration = Duration::from_secs(60);

/// Everything a node needs to know about timing, batching and safety options.
///
/// Timeouts are measured in ticks; the core counts a tick for every `tick` of the monotonic
/// clock readings the runtime hands it, and measures leases on those readings. Defaults: 10 ms ticks, election timeout randomized in 150–300 ms, heartbeats every
/// 50 ms, pre-vote and check-quorum on.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Length of one tick of the monotonic clock. At most [`TICK_MAX`].
    pub tick: Duration,
    /// Minimum election timeout in ticks; each timeout is drawn from `[election_ticks, 2 *
    /// election_ticks)`.
    pub election_ticks: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u64,
    /// Run a pre-vote round before raising the term (Raft thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum for an election timeout, and
    /// followers that heard from a leader recently ignore vote requests (thesis §6.2, §9.6).
    pub check_quorum: bool,
    /// Serve lease reads. Requires `check_quorum`.
    pub lease_reads: bool,
    /// The bound this deployment promises on clock drift, in parts per million: any node's
    /// monotonic clock runs at most this much faster or slower than real time. The lease is
    /// sized by it (see [`Config::lease_duration`]); a clock that drifts more can make a lease
    /// read stale. Linux's `CLOCK_MONOTONIC` (what `std::time::Instant` reads) is slewed by
    /// NTP by at most 500 ppm; the default, 50,000 ppm (5 %), leaves room for poorer virtual
    /// clocks. Must be below 1,000,000.
    pub lease_clock_drift_ppm: u64,
    /// Bytes of entries per AppendEntries message.
    pub message_entries_bytes_max: u64,
    /// AppendEntries messages in flight per follower.
    pub inflight_messages_max: usize,
    /// Bytes of entries in flight per follower.
    pub inflight_bytes_max: u64,
    /// Uncommitted bytes a leader accepts before refusing proposals.
    pub uncommitted_bytes_max: u64,
    /// Take a snapshot and compact the log once this many entries were applied since the
    /// last snapshot (0: never automatically). Default 100,000, as etcd's `--snapshot-count`:
    /// a snapshot writes the whole state, so taking one every few thousand small writes spends
    /// far more I/O on snapshots than on the log (a 30 MB snapshot for 2.9 MB of commands at
    /// 10,000), and it was the tail of write latency (docs/operations.md).
    pub snapshot_entries: u64,
    /// Take a snapshot and compact the log once this many bytes of commands were applied
    /// since the last snapshot (0: no byte threshold). Whichever threshold is reached first.
    pub snapshot_bytes: u64,
    /// Entries kept in the log behind a snapshot, so that followers slightly behind catch up
    /// from the log instead of needing the whole snapshot.
    pub snapshot_margin_entries: u64,
    /// A learner is promoted to voter only when it is at most this many entries behind the
    /// leader's log (a voter far behind would stall commits while it caught up).
    pub promote_lag_entries: u64,
}

impl Config {
    /// The defaults for node `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            tick: Duration::from_millis(10),
            election_ticks: 15,
            heartbeat_ticks: 5,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            lease_clock_drift_ppm: 50_000,
            message_entries_bytes_max: limits::MESSAGE_ENTRIES_BYTES_MAX,
            inflight_messages_max: limits::INFLIGHT_MESSAGES_MAX,
            inflight_bytes_max: limits::INFLIGHT_BYTES_MAX,
            uncommitted_bytes_max: limits::UNCOMMITTED_BYTES_MAX,
            snapshot_entries: 100_000,
            snapshot_bytes: 64 * 1024 * 1024,
            snapshot_margin_entries: 1_000,
            promote_lag_entries: 1_000,
        }
    }

    /// How long a leader may serve lease reads after sending a heartbeat round that a quorum
    /// answered, measured on its monotonic clock from the moment the round was **sent**:
    ///
    /// `(election_ticks - 1) · tick · (1 - ρ) / (1 + ρ)`, with ρ = `lease_clock_drift_ppm` / 10⁶.
    ///
    /// Why this is safe: a follower that answered the round received it after it was sent, and
    /// then grants no vote or pre-vote for `election_ticks` of its ticks, which are at least
    /// `(election_ticks - 1) · tick` of its clock (it may have been just short of a tick
    /// boundary), so at least `(election_ticks - 1) · tick / (1 + ρ)` of real time. The
    /// leader's lease, `lease_duration` of its own clock, lasts at most `lease_duration / (1 -
    /// ρ)` of real time. With the formula above the second never exceeds the first: no other
    /// leader can be elected while the lease holds. (A restarted node keeps the same silence
    /// after its start; see `Raft::new`.)
    pub fn lease_duration(&self) -> Duration {
        Duration::from_nanos(self.lease_nanos())
    }

    /// [`lease_duration`](Config::lease_duration) in nanoseconds.
    pub(crate) fn lease_nanos(&self) -> u64 {
        const PPM: u128 = 1_000_000;
        let drift = u128::from(self.lease_clock_drift_ppm).min(PPM);
        let silence = u128::from(self.election_ticks.saturating_sub(1)) * self.tick.as_nanos();
        let lease = silence * (PPM - drift) / (PPM + drift);
        u64::try_from(lease).unwrap_or(u64::MAX)
    }

    /// The length of one tick in nanoseconds (validated to fit).
    pub(crate) fn tick_nanos(&self) -> u64 {
        u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Checks the relations the algorithm depends on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError::Invalid { reason });
        if self.id == NodeId(0) {
            return invalid("node id 0 is reserved; ids start at 1".into());
        }
        if self.tick.is_zero() {
            return invalid("tick must be longer than zero".into());
        }
        if self.tick > TICK_MAX {
            return invalid(format!("tick must be at most {TICK_MAX:?}"));
        }
        if self.heartbeat_ticks == 0 {
            return invalid("heartbeat_ticks must be at least 1".into());
        }
        if self.election_ticks <= 2 * self.heartbeat_ticks {
            return invalid(format!(
                "election_ticks ({}) must exceed twice heartbeat_ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.election_ticks > limits::ELECTION_TICKS_MAX {
            return invalid(format!(
                "election_ticks ({}) exceeds the limit {}",
                self.election_ticks,
                limits::ELECTION_TICKS_MAX
            ));
        }
        if self.lease_reads && !self.check_quorum {
            return invalid("lease_reads requires check_quorum".into());
        }
        if self.lease_clock_drift_ppm >= 1_000_000 {
            return invalid(format!(
                "lease_clock_drift_ppm ({}) must be below 1,000,000",
                self.lease_clock_drift_ppm
            ));
        }
        let heartbeat = self
            .tick
            .saturating_mul(u32::try_from(self.heartbeat_ticks).unwrap_or(u32::MAX));
        if self.lease_reads && self.lease_duration() <= heartbeat {
            return invalid(format!(
                "a lease of {:?} (election_ticks, tick and lease_clock_drift_ppm) must outlast \
                 the heartbeat interval ({heartbeat:?}), or it runs out before it is renewed",
                self.lease_duration()
            ));
        }
        if self.message_entries_bytes_max == 0
            || self.message_entries_bytes_max > limits::MESSAGE_ENTRIES_BYTES_MAX
        {
            return invalid(format!(
                "message_entries_bytes_max must be in 1..={}",
                limits::MESSAGE_ENTRIES_BYTES_MAX
            ));
        }
        if self.inflight_messages_max == 0 {
            return invalid("inflight_messages_max must be at least 1".into());
        }
        if self.inflight_bytes_max < self.message_entries_bytes_max {
            return invalid("inflight_bytes_max must hold at least one full message".into());
        }
        if self.uncommitted_bytes_max <= limits::COMMAND_BYTES_MAX {
            return invalid(format!(
                "uncommitted_bytes_max must exceed the largest command ({} bytes)",
                limits::COMMAND_BYTES_MAX
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::new(NodeId(1))
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn rejects_election_not_above_twice_heartbeat() {
        let mut config = Config::new(NodeId(1));
        config.election_ticks = 10;
        config.heartbeat_ticks = 5;
        assert!(config.validate().is_err());
    }

    #[test]
    fn rejects_lease_without_check_quorum() {
        let mut config = Config::new(NodeId(1));
        config.lease_reads = true;
        config.check_quorum = false;
        assert!(config.validate().is_err());
    }

    #[test]
    fn default_lease_is_the_silence_of_a_follower_shrunk_by_the_drift_bound() {
        let config = Config::new(NodeId(1));
        // (15 - 1) · 10 ms · 0.95 / 1.05 = 126.67 ms.
        assert_eq!(config.lease_duration().as_micros(), 126_666);
        let mut no_drift = config.clone();
        no_drift.lease_clock_drift_ppm = 0;
        assert_eq!(no_drift.lease_duration(), Duration::from_millis(140));
    }

    #[test]
    fn rejects_drift_of_a_whole_clock_and_a_lease_shorter_than_a_heartbeat() {
        let mut config = Config::new(NodeId(1));
        config.lease_reads = true;
        config.lease_clock_drift_ppm = 1_000_000;
        assert!(config.validate().is_err());
        config.lease_clock_drift_ppm = 600_000; // 140 ms · 0.4 / 1.6 = 35 ms < 50 ms
        assert!(config.validate().is_err());
        config.lease_clock_drift_ppm = 100_000;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_node_zero() {
        assert!(Config::new(NodeId(0)).validate().is_err());
    }
}
