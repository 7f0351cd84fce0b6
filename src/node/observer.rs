//! Watches the core for what an operator wants to hear about — elections, leader changes,
//! configuration changes, snapshots sent to followers — logs it and counts it. The pure core (`crate::raft`) does no I/O, so the
//! runtime notices instead: [`Observer::observe`] runs after every routed Ready under the
//! core lock and only records (cheap comparisons, a push onto a bounded list); the ticker
//! thread takes the records once a tick and writes them outside the lock (STYLE 10: no I/O
//! under the core lock).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::metrics::NodeMetrics;
use crate::raft::{Message, MessageBody, Raft, RoleKind};
use crate::types::{EntryId, Membership, NodeId, Term};

/// Changes recorded between two ticks at most; more (a storm of elections within one tick)
/// are counted and reported as a number.
const CHANGES_MAX: usize = 64;

/// One change worth a log line.
#[derive(Debug)]
pub(super) enum Change {
    /// The role, term or known leader changed.
    Role {
        role: RoleKind,
        term: Term,
        leader: Option<NodeId>,
        /// The leader known before, if any.
        previous_leader: Option<NodeId>,
    },
    /// A new configuration is in force.
    Membership(Membership),
    /// A snapshot started or finished going out to a follower.
    SnapshotSend {
        to: NodeId,
        last: EntryId,
        bytes: u64,
        /// `None`: the first chunk went out; else the time from the first to the last.
        took: Option<Duration>,
    },
}

/// What the runtime last saw of the core, and the changes not yet logged.
#[derive(Debug)]
pub(super) struct Observer {
    id: NodeId,
    last: (RoleKind, Term, Option<NodeId>),
    changes: Vec<Change>,
    dropped: u64,
    /// The last leader known, kept across terms without one, so a leader change is counted
    /// once (a term with no leader in between does not count a returning leader again).
    last_leader: Option<NodeId>,
    /// Snapshots going out, by follower: when the first chunk went.
    snapshot_sends: HashMap<NodeId, (EntryId, Instant)>,
    /// As leader, the last heartbeat round sent to each peer and when (for round trips).
    heartbeats: HashMap<NodeId, (u64, Instant)>,
    metrics: NodeMetrics,
}

impl Observer {
    /// Starts from the core as recovered; its configuration is the first change to log.
    pub(super) fn new(raft: &Raft, metrics: &NodeMetrics) -> Observer {
        let mut changes = Vec::new();
        if !raft.membership().voters.is_empty() || !raft.membership().learners.is_empty() {
            changes.push(Change::Membership(raft.membership().clone()));
        }
        Observer {
            id: raft.id(),
            last: (raft.role(), raft.term(), raft.leader()),
            changes,
            dropped: 0,
            last_leader: raft.leader(),
            snapshot_sends: HashMap::new(),
            heartbeats: HashMap::new(),
            metrics: metrics.clone(),
        }
    }

    /// Records a change of role, term or leader. Call under the core lock after routing.
    pub(super) fn observe(&mut self, raft: &Raft) {
        let now = (raft.role(), raft.term(), raft.leader());
        if now == self.last {
            return;
        }
        let previous_leader = self.last.2;
        self.last = now;
        if let Some(leader) = now.2 {
            if self.last_leader != Some(leader) {
                self.last_leader = Some(leader);
                self.metrics.leader_changes.inc();
            }
        }
        self.record(Change::Role {
            role: now.0,
            term: now.1,
            leader: now.2,
            previous_leader,
        });
    }

    /// Counts snapshot chunks going out, and records a snapshot's first and last chunk. Call
    /// for every message sent (only `InstallSnapshot` does anything).
    pub(super) fn message_sent(&mut self, message: &Message) {
        if let MessageBody::Heartbeat { round, .. } = &message.body {
            self.heartbeats.insert(message.to, (*round, Instant::now()));
            return;
        }
        let MessageBody::InstallSnapshot {
            meta,
            offset,
            total,
            data,
            ..
        } = &message.body
        else {
            return;
        };
        self.metrics.snapshot_sent_bytes.inc_by(data.len() as u64);
        let to = message.to;
        if *offset == 0 {
            self.snapshot_sends.insert(to, (meta.last, Instant::now()));
            self.record(Change::SnapshotSend {
                to,
                last: meta.last,
                bytes: *total,
                took: None,
            });
        }
        if offset + data.len() as u64 >= *total {
            if let Some((last, started)) = self.snapshot_sends.remove(&to) {
                let took = started.elapsed();
                self.metrics
                    .snapshot_send_duration
                    .observe(took.as_secs_f64());
                self.record(Change::SnapshotSend {
                    to,
                    last,
                    bytes: *total,
                    took: Some(took),
                });
            }
        }
    }

    /// Measures a heartbeat's round trip when its answer arrives. Call for every message
    /// received (only `HeartbeatResponse` does anything).
    pub(super) fn message_received(&mut self, message: &Message) {
        let MessageBody::HeartbeatResponse { round } = &message.body else {
            return;
        };
        if let Some((sent_round, sent_at)) = self.heartbeats.get(&message.from) {
            if sent_round == round {
                self.metrics
                    .heartbeat_answered(message.from, sent_at.elapsed());
                self.heartbeats.remove(&message.from);
            }
        }
    }

    /// Records a new configuration in force.
    pub(super) fn membership_changed(&mut self, membership: &Membership) {
        self.record(Change::Membership(membership.clone()));
    }

    fn record(&mut self, change: Change) {
        if self.changes.len() < CHANGES_MAX {
            self.changes.push(change);
        } else {
            self.dropped += 1;
        }
    }

    /// Takes what was recorded, to log outside the lock.
    pub(super) fn take(&mut self) -> Option<Recorded> {
        if self.changes.is_empty() && self.dropped == 0 {
            return None;
        }
        Some(Recorded {
            id: self.id,
            changes: std::mem::take(&mut self.changes),
            dropped: std::mem::take(&mut self.dropped),
        })
    }
}

/// Changes taken from an [`Observer`], to be logged.
#[derive(Debug)]
pub(super) struct Recorded {
    id: NodeId,
    changes: Vec<Change>,
    dropped: u64,
}

impl Recorded {
    /// Writes one log line per change (info: these are what operators follow).
    pub(super) fn log(self) {
        let id = self.id;
        for change in self.changes {
            match change {
                Change::Role {
                    role,
                    term,
                    leader,
                    previous_leader,
                } => log_role(id, role, term, leader, previous_leader),
                Change::Membership(membership) => log_membership(id, &membership),
                Change::SnapshotSend {
                    to,
                    last,
                    bytes,
                    took: None,
                } => tracing::info!(
                    to = to.0,
                    index = last.index.0,
                    term = last.term.0,
                    bytes,
                    "sending a snapshot to a follower"
                ),
                Change::SnapshotSend {
                    to,
                    last,
                    bytes,
                    took: Some(took),
                } => tracing::info!(
                    to = to.0,
                    index = last.index.0,
                    bytes,
                    ms = took.as_millis() as u64,
                    "snapshot sent to a follower"
                ),
            }
        }
        if self.dropped > 0 {
            tracing::info!(
                changes = self.dropped,
                "more role changes than one tick can log; some were not logged"
            );
        }
    }
}

/// `1,2,3` (empty: `-`).
fn ids(set: &std::collections::BTreeSet<NodeId>) -> String {
    if set.is_empty() {
        return "-".into();
    }
    set.iter()
        .map(|id| id.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn log_role(
    id: NodeId,
    role: RoleKind,
    term: Term,
    leader: Option<NodeId>,
    previous_leader: Option<NodeId>,
) {
    let term = term.0;
    match role {
        RoleKind::Leader => tracing::info!(term, "elected leader"),
        RoleKind::Candidate => tracing::info!(term, "election started: campaigning"),
        RoleKind::PreCandidate => {
            tracing::info!(term, "leader not heard from: asking for pre-votes")
        }
        RoleKind::Follower => match leader {
            Some(leader) if Some(leader) != previous_leader && leader != id => {
                tracing::info!(term, leader = leader.0, "following a new leader")
            }
            Some(_) => tracing::debug!(term, "term changed"),
            None if previous_leader.is_some() => {
                tracing::info!(
                    term,
                    previous_leader = previous_leader.map_or(0, |leader| leader.0),
                    "leader lost"
                )
            }
            None => tracing::debug!(term, "follower without a leader"),
        },
    }
}

fn log_membership(id: NodeId, membership: &Membership) {
    let standing = if membership.is_voter(id) {
        "voter"
    } else if membership.learners.contains(&id) {
        "learner"
    } else {
        "not a member"
    };
    let voters = ids(&membership.voters);
    let outgoing = ids(&membership.voters_outgoing);
    let learners = ids(&membership.learners);
    if membership.contains(id) {
        tracing::info!(
            this_node = standing,
            voters = %voters,
            outgoing = %outgoing,
            learners = %learners,
            "configuration"
        );
    } else if membership.retired.contains(&id) {
        tracing::warn!(
            voters = %voters,
            outgoing = %outgoing,
            learners = %learners,
            "this node is not a member of the configuration in force: removed from the \
             cluster, it stays out of elections; stop it"
        );
    } else {
        // A node that joins replays configurations from before it was added: normal.
        tracing::info!(
            this_node = standing,
            voters = %voters,
            outgoing = %outgoing,
            learners = %learners,
            "this node is not a member of the configuration in force yet: catching up after \
             a join"
        );
    }
}
