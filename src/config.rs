//! Node configuration and its validation.

use std::time::Duration;

use crate::error::ConfigError;
use crate::limits;
use crate::types::NodeId;

/// Everything a node needs to know about timing, batching and safety options.
///
/// Time is measured in ticks in the consensus core; `tick` converts ticks to wall time in the
/// runtime. Defaults: 10 ms ticks, election timeout randomized in 150–300 ms, heartbeats every
/// 50 ms, pre-vote and check-quorum on.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Wall-clock length of one tick (runtime only; the core counts ticks).
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
    /// Ticks subtracted from the election timeout to bound clock drift when sizing the lease.
    pub lease_drift_ticks: u64,
    /// Bytes of entries per AppendEntries message.
    pub message_entries_bytes_max: u64,
    /// AppendEntries messages in flight per follower.
    pub inflight_messages_max: usize,
    /// Bytes of entries in flight per follower.
    pub inflight_bytes_max: u64,
    /// Uncommitted bytes a leader accepts before refusing proposals.
    pub uncommitted_bytes_max: u64,
    /// Take a snapshot and compact the log once this many entries were applied since the
    /// last snapshot (0: never automatically).
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
            lease_drift_ticks: 3,
            message_entries_bytes_max: limits::MESSAGE_ENTRIES_BYTES_MAX,
            inflight_messages_max: limits::INFLIGHT_MESSAGES_MAX,
            inflight_bytes_max: limits::INFLIGHT_BYTES_MAX,
            uncommitted_bytes_max: limits::UNCOMMITTED_BYTES_MAX,
            snapshot_entries: 10_000,
            snapshot_bytes: 64 * 1024 * 1024,
            snapshot_margin_entries: 1_000,
            promote_lag_entries: 1_000,
        }
    }

    /// The lease length in ticks: shorter than the minimum election timeout by the drift margin.
    pub fn lease_ticks(&self) -> u64 {
        self.election_ticks.saturating_sub(self.lease_drift_ticks)
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
        if self.lease_reads && self.lease_ticks() <= self.heartbeat_ticks {
            return invalid(format!(
                "lease of {} ticks (election_ticks - lease_drift_ticks) must exceed \
                 heartbeat_ticks ({})",
                self.lease_ticks(),
                self.heartbeat_ticks
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
    fn rejects_node_zero() {
        assert!(Config::new(NodeId(0)).validate().is_err());
    }
}
