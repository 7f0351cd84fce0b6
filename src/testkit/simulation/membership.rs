//! Membership changes in the simulation: the leader is asked, at random steps, to add
//! learners, promote them, add voters directly, remove voters or learners (itself included),
//! or several of these at once; refusals are normal and counted. A node joins empty, knowing
//! no configuration. An id is never added again once it was a member, not even on a fresh
//! disk: the committed history (logs, snapshots) still names it a voter in old configurations,
//! and a newcomer replaying that history — or a removed node that missed its removal — would
//! give the old voting rights to the new node (seeds 1342 and 40742). A removed machine that
//! comes back takes a new id from the pool.
//!
//! Checked: every node's configuration is the latest one its log holds (else its snapshot's,
//! else its bootstrap) — a configuration left in force after its entry was truncated breaks
//! this; a node never leads after applying a configuration that removed it; and at the end no
//! node outside the final configuration leads.

use rand::Rng;

use super::{Simulation, SimulationFailure};
use crate::error::MembershipError;
use crate::raft::{MemberChange, Raft};
use crate::types::{EntryId, EntryPayload, LogIndex, Membership, NodeId};

/// Probability that one request carries several changes.
const COMBINED_PROBABILITY: f64 = 0.15;
/// The most changes in one request.
const COMBINED_CHANGES_MAX: usize = 3;

/// A configuration in one line.
pub(super) fn describe(membership: &Membership) -> String {
    membership.to_string()
}

fn refusal(error: &MembershipError) -> &'static str {
    match error {
        MembershipError::NotLeader { .. } => "not leader",
        MembershipError::Busy { reason } => reason,
        MembershipError::Invalid { .. } => "invalid",
        MembershipError::NotCaughtUp { .. } => "not caught up",
        MembershipError::WouldLoseQuorum { .. } => "would lose quorum",
        _ => "other",
    }
}

/// Checks that a core's configuration is the latest one its log holds, else the one its
/// snapshot carries, else the one it booted with. `scanned` remembers the configuration's
/// index, how far the log was found free of later configurations and where the log started,
/// so that each entry is looked at about once and an unchanged log is not looked at again.
fn check_configuration(
    id: NodeId,
    raft: &Raft,
    bootstrap: &Membership,
    scanned: &mut Option<(LogIndex, EntryId, EntryId)>,
) -> Result<(), String> {
    let log = raft.log();
    let index = raft.membership_index();
    if *scanned == Some((index, log.last_id(), log.snapshot())) {
        return Ok(());
    }
    let carried = if index == LogIndex(0) {
        raft.snapshot()
            .map_or(bootstrap, |snapshot| &snapshot.meta.membership)
    } else {
        match log.entry(index).map(|entry| &entry.payload) {
            Some(EntryPayload::Membership(membership)) => membership,
            _ => {
                return Err(format!(
                    "configuration: {id} is in {} from {index}, where its log holds none",
                    describe(raft.membership())
                ))
            }
        }
    };
    if raft.membership() != carried {
        return Err(format!(
            "configuration: {id} is in {} but its log says {} (from {index})",
            describe(raft.membership()),
            describe(carried)
        ));
    }
    let from = match *scanned {
        Some((at, through, _)) if at == index && log.matches(through) => through.index.next(),
        _ => index.next().max(log.first_index()),
    };
    for later in from.0..=log.last_index().0 {
        if let Some(EntryPayload::Membership(membership)) =
            log.entry(LogIndex(later)).map(|entry| &entry.payload)
        {
            return Err(format!(
                "configuration: {id} is in {} (from {index}) but its log holds {} at {later}",
                describe(raft.membership()),
                describe(membership)
            ));
        }
    }
    *scanned = Some((index, log.last_id(), log.snapshot()));
    Ok(())
}

impl Simulation {
    /// The alive leader of the highest term, if any.
    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, node)| node.raft.as_ref().map(|raft| (id, raft)))
            .filter(|(_, raft)| raft.is_leader())
            .max_by_key(|(_, raft)| raft.term())
            .map(|(id, _)| id)
    }

    fn pick(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())])
    }

    /// Asks the current leader for a random membership change.
    pub(super) fn change_membership(&mut self) -> Result<(), SimulationFailure> {
        let Some(leader) = self.current_leader() else {
            return Ok(());
        };
        let raft = self.nodes[&leader].raft.as_ref().expect("alive leader");
        let membership = raft.membership().clone();
        // Nodes are started for a change only when the leader would accept one.
        let accepting = !raft.membership_change_pending() && raft.committed_in_current_term();
        let outsiders: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|&id| !membership.contains(id))
            .collect();
        let learners: Vec<NodeId> = membership.learners.iter().copied().collect();
        let members: Vec<NodeId> = membership.members().into_iter().collect();
        let count = if self.rng.random_bool(COMBINED_PROBABILITY) {
            self.rng.random_range(2..=COMBINED_CHANGES_MAX)
        } else {
            1
        };
        let mut changes = Vec::new();
        for _ in 0..count {
            // Learners are there to be promoted: prefer that when there are some.
            let promote = if learners.is_empty() { 0 } else { 45 };
            let change = match self.rng.random_range(0..100 + promote) {
                0..40 => self
                    .pick(&outsiders)
                    .map(|id| MemberChange::AddLearner { id, address: None }),
                40..65 => self.pick(&learners).map(MemberChange::Promote),
                65..90 => self.pick(&members).map(MemberChange::Remove),
                90..100 => {
                    let candidates: Vec<NodeId> =
                        outsiders.iter().chain(&learners).copied().collect();
                    self.pick(&candidates)
                        .map(|id| MemberChange::AddVoter { id, address: None })
                }
                _ => self.pick(&learners).map(MemberChange::Promote),
            };
            changes.extend(change);
        }
        // Ids are never reused (see the module docs).
        changes.retain(|change| {
            let adds = matches!(
                change,
                MemberChange::AddLearner { .. } | MemberChange::AddVoter { .. }
            );
            let id = change.id();
            !adds || membership.contains(id) || !self.nodes[&id].ever_member
        });
        if changes.is_empty() {
            return Ok(());
        }
        let joining: Vec<NodeId> = changes
            .iter()
            .filter(|change| {
                matches!(
                    change,
                    MemberChange::AddLearner { .. } | MemberChange::AddVoter { .. }
                )
            })
            .map(MemberChange::id)
            .filter(|&id| !membership.contains(id))
            .collect();
        if accepting {
            for &id in &joining {
                self.prepare_joiner(id);
            }
        }
        let raft = self
            .nodes
            .get_mut(&leader)
            .and_then(|node| node.raft.as_mut())
            .expect("alive leader");
        match raft.propose_membership(&changes) {
            Ok(entry) => {
                debug_assert!(
                    accepting,
                    "a change was accepted that was predicted refused"
                );
                self.report.membership_proposed += 1;
                for id in joining {
                    self.nodes.get_mut(&id).expect("pool node").ever_member = true;
                }
                self.membership_requests.insert(entry, changes);
            }
            Err(error) => {
                *self
                    .report
                    .membership_refused
                    .entry(refusal(&error))
                    .or_default() += 1;
            }
        }
        self.drain_ready(leader)
    }

    /// Makes sure a node about to be added runs: started empty (knowing no configuration) if it
    /// never ran.
    fn prepare_joiner(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        if node.raft.is_none() {
            if !node.started {
                self.report.joins += 1;
            }
            self.start(id);
        }
    }

    /// The node's applied configuration changed: note whether it is a member, or was removed.
    pub(super) fn note_applied_membership(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let applied = node.applier.last_applied().index;
        // Never cleared: a node that applied its removal is never added again.
        if node.applier.membership().contains(id) {
            node.member_applied = true;
        } else if node.member_applied && node.removed_applied.is_none() {
            node.removed_applied = Some(applied);
        }
    }

    /// A membership entry was applied somewhere: count the request it starts as committed.
    pub(super) fn note_committed_request(&mut self, entry: EntryId) {
        let Some(changes) = self.membership_requests.remove(&entry) else {
            return;
        };
        self.report.membership_committed += 1;
        self.report.learners_promoted += changes
            .iter()
            .filter(|change| matches!(change, MemberChange::Promote(_)))
            .count() as u64;
    }

    /// Per step: each core's configuration is the one its log says, and no node leads after
    /// applying its own removal.
    pub(super) fn check_memberships(&mut self) -> Result<(), SimulationFailure> {
        for (&id, node) in &mut self.nodes {
            let Some(raft) = node.raft.as_ref() else {
                continue;
            };
            if let Err(violation) =
                check_configuration(id, raft, &node.bootstrap, &mut node.config_scanned)
            {
                return Err(SimulationFailure {
                    seed: self.seed,
                    step: self.step,
                    violation,
                });
            }
            if let (true, Some(index)) = (raft.is_leader(), node.removed_applied) {
                return Err(SimulationFailure {
                    seed: self.seed,
                    step: self.step,
                    violation: format!(
                        "removed leader: {id} leads {} after applying its removal at {index}",
                        raft.term()
                    ),
                });
            }
        }
        Ok(())
    }

    /// At the end: no node outside the final configuration leads.
    pub(super) fn check_no_outsider_leads(
        &self,
        members: &[NodeId],
    ) -> Result<(), SimulationFailure> {
        for (&id, node) in &self.nodes {
            let leads = node.raft.as_ref().is_some_and(|raft| raft.is_leader());
            if leads && !members.contains(&id) {
                return Err(self.fail(format!(
                    "{id} leads at the end but is not in the final configuration"
                )));
            }
        }
        Ok(())
    }

    /// The final configuration, once it is settled: the leader of the highest term holds a
    /// committed configuration that is not joint, and every member of it runs and holds the
    /// same. Returns its members.
    pub(super) fn settled_configuration(&self) -> Option<Vec<NodeId>> {
        let leader = self.current_leader()?;
        let raft = self.nodes[&leader].raft.as_ref()?;
        if raft.membership_change_pending() {
            return None;
        }
        let membership = raft.membership();
        let members: Vec<NodeId> = membership.members().into_iter().collect();
        let agreed = members.iter().all(|id| {
            self.nodes[id]
                .raft
                .as_ref()
                .is_some_and(|raft| raft.membership() == membership)
        });
        agreed.then_some(members)
    }
}
