//! Quorum arithmetic over a [`Membership`]. Every decision that needs "a majority" goes
//! through here, so joint configurations (a majority of both halves) need no other change.

use std::collections::BTreeSet;

use crate::types::{LogIndex, Membership, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer be reached.
    Lost,
    /// Still undecided.
    Pending,
}

/// The largest value that a majority of `voters` have reached, given each voter's value.
/// An empty voter set places no constraint (`u64::MAX`), which is what joint arithmetic needs
/// when the outgoing half is empty.
fn majority_value(voters: &BTreeSet<NodeId>, value_of: &impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut values: Vec<u64> = voters.iter().map(|&id| value_of(id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[voters.len() / 2]
}

fn half_vote_result(
    voters: &BTreeSet<NodeId>,
    vote_of: &impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for &id in voters {
        match vote_of(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

impl Membership {
    /// The highest index a quorum has matched, where `matched(id)` is a voter's match index.
    pub fn committed_index(&self, matched: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let value_of = |id| matched(id).0;
        let incoming = majority_value(&self.voters, &value_of);
        let outgoing = majority_value(&self.voters_outgoing, &value_of);
        LogIndex(incoming.min(outgoing))
    }

    /// The largest `u64` a quorum has reached (heartbeat rounds, say).
    pub fn quorum_value(&self, value_of: impl Fn(NodeId) -> u64) -> u64 {
        majority_value(&self.voters, &value_of)
            .min(majority_value(&self.voters_outgoing, &value_of))
    }

    /// Counts votes: `vote_of(id)` is `Some(granted)` for voters that answered.
    pub fn vote_result(&self, vote_of: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let incoming = half_vote_result(&self.voters, &vote_of);
        let outgoing = half_vote_result(&self.voters_outgoing, &vote_of);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether the voters for which `active(id)` holds form a quorum.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        self.vote_result(|id| Some(active(id))) == VoteResult::Won
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ids(list: &[u64]) -> BTreeSet<NodeId> {
        list.iter().map(|&id| NodeId(id)).collect()
    }

    #[test]
    fn committed_index_is_the_majority_match() {
        let membership = Membership::new(ids(&[1, 2, 3, 4, 5]));
        let matched: BTreeMap<u64, u64> = [(1, 9), (2, 7), (3, 5), (4, 3), (5, 1)].into();
        let index = membership.committed_index(|id| LogIndex(matched[&id.0]));
        assert_eq!(index, LogIndex(5));
    }

    #[test]
    fn joint_commit_needs_both_majorities() {
        let membership = Membership {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[3, 4, 5]),
            learners: BTreeSet::new(),
            addresses: BTreeMap::new(),
            retired: BTreeSet::new(),
        };
        let matched: BTreeMap<u64, u64> = [(1, 9), (2, 9), (3, 9), (4, 1), (5, 1)].into();
        assert_eq!(
            membership.committed_index(|id| LogIndex(matched[&id.0])),
            LogIndex(1)
        );
    }

    #[test]
    fn votes_are_counted_per_half() {
        let membership = Membership::new(ids(&[1, 2, 3]));
        assert_eq!(
            membership.vote_result(|id| (id.0 <= 2).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(
            membership.vote_result(|id| (id.0 == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(
            membership.vote_result(|id| Some(id.0 == 1)),
            VoteResult::Lost
        );
        let joint = Membership {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[4, 5, 6]),
            learners: BTreeSet::new(),
            addresses: BTreeMap::new(),
            retired: BTreeSet::new(),
        };
        assert_eq!(joint.vote_result(|id| Some(id.0 <= 3)), VoteResult::Lost);
        assert_eq!(
            joint.vote_result(|id| Some(id.0 != 3 && id.0 != 6)),
            VoteResult::Won
        );
    }

    #[test]
    fn even_cluster_needs_more_than_half() {
        let membership = Membership::new(ids(&[1, 2, 3, 4]));
        assert!(!membership.has_quorum(|id| id.0 <= 2));
        assert!(membership.has_quorum(|id| id.0 <= 3));
    }
}
