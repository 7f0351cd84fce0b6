//! Membership changes by joint consensus (Raft §6, thesis ch. 4), learners, and the
//! configuration history that lets a follower undo a configuration its log loses.
//!
//! A configuration takes effect as soon as its entry is appended, committed or not. A change of
//! voters goes through C(old,new), where every election and commit needs a majority of both
//! halves, and the leader appends C(new) by itself once C(old,new) commits. A change of
//! learners only is one simple entry. At most one change is in flight: none is accepted while
//! the latest configuration is joint or uncommitted, nor before the leader has committed an
//! entry of its own term (thesis §4.1: otherwise a change could be lost with the previous
//! leader's uncommitted one, and two configurations could each elect a leader).

use std::collections::BTreeSet;

use crate::error::MembershipError;
use crate::raft::log::RaftLog;
use crate::raft::progress::{Progress, ProgressState};
use crate::raft::{Raft, Role};
use crate::types::{Entry, EntryId, EntryPayload, LogIndex, MemberAddress, Membership, NodeId};

/// One part of a membership change; a request may hold several (all applied at once).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberChange {
    /// Adds a non-voting member that receives the log (and snapshots).
    AddLearner {
        /// The new member's id.
        id: NodeId,
        /// How to reach it (none in clusters built in one process).
        address: Option<MemberAddress>,
    },
    /// Adds a voter directly (a learner is promoted instead). It counts toward quorums at once,
    /// so it must be reachable: the change is refused unless the new voters have a healthy
    /// quorum without it.
    AddVoter {
        /// The new member's id.
        id: NodeId,
        /// How to reach it.
        address: Option<MemberAddress>,
    },
    /// Makes a learner that has caught up a voter.
    Promote(NodeId),
    /// Removes a member, voter or learner (the leader itself included: it steps down once the
    /// change commits).
    Remove(NodeId),
}

impl MemberChange {
    /// The member the change is about.
    pub fn id(&self) -> NodeId {
        match self {
            MemberChange::AddLearner { id, .. } | MemberChange::AddVoter { id, .. } => *id,
            MemberChange::Promote(id) | MemberChange::Remove(id) => *id,
        }
    }
}

/// The configurations the log holds, so that truncating the log can restore the one before
/// (a follower that appended an uncommitted configuration and then learns it was overwritten).
#[derive(Clone, Debug)]
pub(crate) struct ConfigHistory {
    /// The configuration in force at the log's start (from the snapshot or the bootstrap).
    base: Membership,
    /// Configurations carried by entries still in the log, oldest first.
    entries: Vec<(EntryId, Membership)>,
}

impl ConfigHistory {
    pub(crate) fn new(base: Membership) -> ConfigHistory {
        ConfigHistory {
            base,
            entries: Vec::new(),
        }
    }

    /// The configuration in force: the latest in the log.
    pub(crate) fn latest(&self) -> &Membership {
        self.entries
            .last()
            .map_or(&self.base, |(_, membership)| membership)
    }

    /// The index of the entry that carries the latest configuration (0 when it predates the
    /// log: bootstrap or snapshot, and therefore committed).
    pub(crate) fn latest_index(&self) -> LogIndex {
        self.entries.last().map_or(LogIndex(0), |(id, _)| id.index)
    }

    /// Whether `id` votes in the latest configuration or in one the log may still fall back
    /// to: each configuration back to the latest committed one (`committed` is the commit
    /// index).
    pub(crate) fn may_vote(&self, id: NodeId, committed: LogIndex) -> bool {
        for (entry, membership) in self.entries.iter().rev() {
            if membership.is_voter(id) {
                return true;
            }
            if entry.index <= committed {
                return false;
            }
        }
        self.base.is_voter(id)
    }

    /// The configuration in force at `index` (the latest one at or before it), for a snapshot
    /// taken there. `index` must not precede the log's start.
    pub(crate) fn at(&self, index: LogIndex) -> &Membership {
        self.entries
            .iter()
            .rev()
            .find(|(id, _)| id.index <= index)
            .map_or(&self.base, |(_, membership)| membership)
    }

    /// Records the configurations among `entries`, just appended to the log. Returns whether
    /// any was new.
    pub(crate) fn record(&mut self, entries: &[Entry]) -> bool {
        let before = self.entries.len();
        for entry in entries {
            if let EntryPayload::Membership(membership) = &entry.payload {
                let newer = self
                    .entries
                    .last()
                    .is_none_or(|(last, _)| last.index < entry.index());
                if newer {
                    self.entries.push((entry.id, membership.clone()));
                }
            }
        }
        self.entries.len() != before
    }

    /// Forgets configurations whose entries the log no longer holds (a truncation). Returns
    /// whether any was forgotten.
    pub(crate) fn forget_truncated(&mut self, log: &RaftLog) -> bool {
        let before = self.entries.len();
        let snapshot = log.snapshot().index;
        self.entries
            .retain(|(id, _)| id.index <= snapshot || log.matches(*id));
        self.entries.len() != before
    }

    /// The log was compacted through `through`: configurations at or before it become the base.
    pub(crate) fn compact(&mut self, through: LogIndex) {
        while self
            .entries
            .first()
            .is_some_and(|(id, _)| id.index <= through)
        {
            let (_, membership) = self.entries.remove(0);
            self.base = membership;
        }
    }

    /// A snapshot from the leader replaced the log's prefix: its configuration is the base, and
    /// only configurations in the kept suffix remain.
    pub(crate) fn restore(&mut self, base: Membership, log: &RaftLog) {
        let snapshot = log.snapshot().index;
        self.base = base;
        self.entries
            .retain(|(id, _)| id.index > snapshot && log.matches(*id));
    }
}

impl Raft {
    /// Proposes a membership change (see the module docs). Returns the id of the entry that
    /// starts it; the change is complete once a configuration that is not joint is committed
    /// ([`Raft::membership_change_pending`] turns false).
    pub fn propose_membership(
        &mut self,
        changes: &[MemberChange],
    ) -> Result<EntryId, MembershipError> {
        let leader_hint = self.leader();
        let Role::Leader(leader) = &self.role else {
            return Err(MembershipError::NotLeader { leader_hint });
        };
        if leader.transfer.is_some() {
            return Err(MembershipError::Busy {
                reason: "leadership transfer in progress",
            });
        }
        if !self.committed_in_current_term() {
            return Err(MembershipError::Busy {
                reason: "the new leader has not committed an entry of its term yet",
            });
        }
        if self.membership_change_pending() {
            return Err(MembershipError::Busy {
                reason: "another membership change is in progress",
            });
        }
        let current = self.membership.clone();
        let target = self.apply_changes(&current, changes)?;
        let next = if target.voters == current.voters {
            target
        } else {
            Membership {
                voters: target.voters.clone(),
                voters_outgoing: current.voters.clone(),
                learners: target.learners.clone(),
                addresses: {
                    // Outgoing voters stay reachable until C(new) reaches them.
                    let mut addresses = current.addresses.clone();
                    addresses.extend(target.addresses.clone());
                    addresses
                },
                retired: target.retired.clone(),
            }
        };
        self.check_healthy_quorum(&next)?;
        Ok(self.append_membership(next))
    }

    /// Whether a membership change is under way: the latest configuration is joint or not yet
    /// committed.
    pub fn membership_change_pending(&self) -> bool {
        self.membership.is_joint() || self.configs.latest_index() > self.log.committed()
    }

    /// The configuration in force at `index` — what a snapshot taken there must carry (the
    /// latest configuration may be later and uncommitted). `None` when `index` precedes the
    /// log's start (compacted).
    pub fn membership_at(&self, index: LogIndex) -> Option<Membership> {
        (index >= self.log.snapshot().index).then(|| self.configs.at(index).clone())
    }

    /// The index of the entry carrying the configuration in force (0 when it came from a
    /// snapshot or the bootstrap).
    pub fn membership_index(&self) -> LogIndex {
        self.configs.latest_index()
    }

    /// Applies `changes` to the simple configuration `current`, checking each.
    fn apply_changes(
        &self,
        current: &Membership,
        changes: &[MemberChange],
    ) -> Result<Membership, MembershipError> {
        let invalid = |reason: String| Err(MembershipError::Invalid { reason });
        if changes.is_empty() {
            return invalid("no changes given".into());
        }
        let mut seen = BTreeSet::new();
        let mut next = current.clone();
        for change in changes {
            let id = change.id();
            if id == NodeId(0) {
                return invalid("node id 0 is invalid".into());
            }
            if !seen.insert(id) {
                return invalid(format!("{id} appears twice in one change"));
            }
            let adding = matches!(
                change,
                MemberChange::AddLearner { .. } | MemberChange::AddVoter { .. }
            );
            if adding && current.retired.contains(&id) {
                return invalid(format!(
                    "{id} was removed from the cluster and ids are never reused (an old log or \
                     snapshot may still count it as a voter): give the new node a new id"
                ));
            }
            match change {
                MemberChange::AddLearner { address, .. } => {
                    if current.contains(id) {
                        return invalid(format!("{id} is already a member"));
                    }
                    next.learners.insert(id);
                    if let Some(address) = address {
                        next.addresses.insert(id, address.clone());
                    }
                }
                MemberChange::AddVoter { address, .. } => {
                    if current.is_voter(id) {
                        return invalid(format!("{id} is already a voter"));
                    }
                    if current.learners.contains(&id) {
                        self.check_caught_up(id)?;
                        next.learners.remove(&id);
                    }
                    next.voters.insert(id);
                    if let Some(address) = address {
                        next.addresses.insert(id, address.clone());
                    }
                }
                MemberChange::Promote(_) => {
                    if !current.learners.contains(&id) {
                        return invalid(format!("{id} is not a learner"));
                    }
                    self.check_caught_up(id)?;
                    next.learners.remove(&id);
                    next.voters.insert(id);
                }
                MemberChange::Remove(_) => {
                    if !current.contains(id) {
                        return invalid(format!("{id} is not a member"));
                    }
                    next.voters.remove(&id);
                    next.learners.remove(&id);
                    next.addresses.remove(&id);
                    next.retired.insert(id);
                }
            }
        }
        if next.voters.is_empty() {
            return invalid("the change would leave no voters".into());
        }
        Ok(next)
    }

    /// A learner may become a voter only once it holds nearly all of the leader's log: a voter
    /// that is far behind would stall commits while it catches up.
    fn check_caught_up(&self, id: NodeId) -> Result<(), MembershipError> {
        let last = self.log.last_index();
        // Only a learner that answered recently and is replicating (it acknowledged an append
        // that matched) counts as caught up: one never heard from may not even be running.
        let replicating = match &self.role {
            Role::Leader(leader) => leader.progress.get(&id).and_then(|progress| {
                (progress.state == ProgressState::Replicate && self.is_healthy(id))
                    .then_some(progress.matched)
            }),
            _ => None,
        };
        match replicating {
            Some(matched) if matched.0 + self.config.promote_lag_entries >= last.0 => Ok(()),
            other => Err(MembershipError::NotCaughtUp {
                id,
                matched: other.unwrap_or_default(),
                last,
            }),
        }
    }

    /// Refuses a configuration that could not reach a quorum with the members heard from
    /// within an election timeout (both halves, if joint).
    fn check_healthy_quorum(&self, next: &Membership) -> Result<(), MembershipError> {
        let healthy: Vec<NodeId> = next
            .members()
            .into_iter()
            .filter(|&id| self.is_healthy(id))
            .collect();
        if next.has_quorum(|id| healthy.contains(&id)) {
            return Ok(());
        }
        let mut voters: BTreeSet<NodeId> = next.voters.clone();
        voters.extend(next.voters_outgoing.iter().copied());
        Err(MembershipError::WouldLoseQuorum {
            voters: voters.into_iter().collect(),
            healthy,
        })
    }

    /// The leader itself, or a follower that answered within an election timeout.
    fn is_healthy(&self, id: NodeId) -> bool {
        if id == self.id {
            return true;
        }
        let Role::Leader(leader) = &self.role else {
            return false;
        };
        leader
            .progress
            .get(&id)
            .and_then(|progress| progress.heard_at)
            .is_some_and(|heard| self.ticks.saturating_sub(heard) < self.config.election_ticks)
    }

    /// Appends a configuration entry as leader; it takes effect at once.
    fn append_membership(&mut self, membership: Membership) -> EntryId {
        let entry = Entry {
            id: EntryId::new(self.term, self.log.last_index().next()),
            payload: EntryPayload::Membership(membership),
        };
        let id = entry.id;
        self.configs.record(std::slice::from_ref(&entry));
        self.log.append_own(entry);
        self.membership_changed();
        if let Role::Leader(leader) = &mut self.role {
            leader.append_needed = true;
        }
        // A single voter commits by itself.
        self.maybe_commit();
        id
    }

    /// The configuration in force may have changed: adopt the history's latest, and as leader
    /// track every new member and void the lease (it was earned under the old quorum).
    pub(super) fn membership_changed(&mut self) {
        let latest = self.configs.latest();
        if *latest == self.membership {
            return;
        }
        self.membership = latest.clone();
        self.membership_version += 1;
        let next = self.log.last_index().next();
        let (messages_max, bytes_max) = (
            self.config.inflight_messages_max,
            self.config.inflight_bytes_max,
        );
        let id = self.id;
        let members = self.membership.members();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.void_lease();
        leader.config_committed_at = None;
        for member in members {
            if member != id {
                leader
                    .progress
                    .entry(member)
                    .or_insert_with(|| Progress::new(next, messages_max, bytes_max));
            }
        }
    }

    /// After the commit index moved, as leader: finish a joint change by appending C(new), step
    /// down if C(new) left this node out, and stop replicating to removed members once they
    /// hold the configuration that removed them (or after two election timeouts).
    pub(super) fn after_commit_as_leader(&mut self) {
        if !self.is_leader() || self.configs.latest_index() > self.log.committed() {
            return;
        }
        if self.membership.is_joint() {
            // C(new): the joint configuration without its outgoing half (and their addresses).
            let mut final_config = Membership {
                voters_outgoing: BTreeSet::new(),
                ..self.membership.clone()
            };
            let members = final_config.members();
            final_config.addresses.retain(|id, _| members.contains(id));
            self.append_membership(final_config);
            return;
        }
        if !self.membership.is_voter(self.id) {
            self.step_down_removed();
            return;
        }
        self.forget_removed_members();
    }

    /// Drops the progress of non-members that already hold the configuration without them.
    pub(super) fn forget_removed_members(&mut self) {
        let config_index = self.configs.latest_index();
        let membership = &self.membership;
        let now = self.ticks;
        let grace = 2 * self.config.election_ticks;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let since = *leader.config_committed_at.get_or_insert(now);
        leader.progress.retain(|id, progress| {
            membership.contains(*id)
                || (progress.matched < config_index && now.saturating_sub(since) < grace)
        });
    }

    /// This leader is not in the committed configuration: hand over to the most up-to-date
    /// voter if it holds the whole log (saving an election timeout), then step down.
    fn step_down_removed(&mut self) {
        let last = self.log.last_index();
        let term = self.term;
        let successor = self.most_up_to_date_voter().filter(|id| {
            self.progress(*id)
                .is_some_and(|progress| progress.matched == last)
        });
        if let Some(successor) = successor {
            let last = self.log.last_id();
            self.send(
                successor,
                term,
                crate::raft::MessageBody::TimeoutNow { last },
            );
        }
        self.become_follower(self.term, None);
    }
}
