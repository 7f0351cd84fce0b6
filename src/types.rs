//! The vocabulary every layer shares: node ids, terms, log positions, entries and hard state.
//!
//! Log positions are distinct types so that an index can never be passed where a term is
//! expected. Values that arrive from the network or disk are validated once, where they enter
//! (the decoders and storage recovery); inner code relies on the types.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's persistent identity. Never an address: addresses may change, ids do not.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

/// A Raft term: a logical clock that only moves forward.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Term(pub u64);

/// A position in the replicated log. Index 0 is the empty position before the first entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl Term {
    /// The next term.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one; `LogIndex(0)` stays at zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

/// The identity of one log entry: two entries with the same id are the same entry, and the
/// logs holding them are identical up to it (Raft §5.3, Log Matching).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EntryId {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
}

impl EntryId {
    /// Builds an id from its parts.
    pub fn new(term: Term, index: LogIndex) -> EntryId {
        EntryId { term, index }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.index, self.term)
    }
}

/// Where a member can be reached: its peer (Raft) address and its client address.
///
/// Addresses travel inside the configuration, so every member (and a node that joins later)
/// learns how to reach every other from the log alone. An id never changes; an address may.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberAddress {
    /// Where the member listens for peers, `host:port`.
    #[serde(deserialize_with = "crate::codec::deserialize_string")]
    pub peer: String,
    /// Where the member listens for clients, `host:port`.
    #[serde(deserialize_with = "crate::codec::deserialize_string")]
    pub client: String,
}

/// The membership configuration: who votes, and who only listens.
///
/// `voters_outgoing` is non-empty only during a joint configuration C(old,new), when every
/// decision needs a majority of both `voters` and `voters_outgoing` (Raft §6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Voting members (of the new configuration while joint).
    pub voters: BTreeSet<NodeId>,
    /// Voting members of the old configuration while joint; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
    /// How to reach members, where known (clusters built in one process need none).
    pub addresses: BTreeMap<NodeId, MemberAddress>,
    /// Ids removed from the cluster. They are never given to a new member: logs and snapshots
    /// anywhere may still name such an id a voter, so a newcomer under it could lend a vote
    /// that belongs to an old configuration (found by the simulation).
    pub retired: BTreeSet<NodeId>,
}

/// One line: `voters [1,2,3]`, then ` outgoing [..]` while joint, ` learners [..]` if any, and
/// the members' addresses if known (` at 1=PEER/CLIENT ..`).
impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ids: &BTreeSet<NodeId>| {
            ids.iter()
                .map(|id| id.0.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "voters [{}]", list(&self.voters))?;
        if self.is_joint() {
            write!(f, " outgoing [{}]", list(&self.voters_outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners [{}]", list(&self.learners))?;
        }
        if !self.addresses.is_empty() {
            let addresses: Vec<String> = self
                .addresses
                .iter()
                .map(|(id, address)| format!("{}={}/{}", id.0, address.peer, address.client))
                .collect();
            write!(f, " at {}", addresses.join(","))?;
        }
        Ok(())
    }
}

impl Membership {
    /// A simple configuration of voters only.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            voters_outgoing: BTreeSet::new(),
            learners: BTreeSet::new(),
            addresses: BTreeMap::new(),
            retired: BTreeSet::new(),
        }
    }

    /// A simple configuration of voters with their addresses.
    pub fn with_addresses(addresses: BTreeMap<NodeId, MemberAddress>) -> Membership {
        Membership {
            voters: addresses.keys().copied().collect(),
            addresses,
            ..Membership::default()
        }
    }

    /// Every member, voting or not, once each, in id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.voters_outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// Whether the configuration names no member at all (a node that joins knows none).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.voters_outgoing.is_empty() && self.learners.is_empty()
    }

    /// Whether two configurations name the same members in the same roles at the same
    /// addresses (what a cluster is started with; the ids retired since do not count).
    pub fn same_members(&self, other: &Membership) -> bool {
        self.voters == other.voters
            && self.voters_outgoing == other.voters_outgoing
            && self.learners == other.learners
            && self.addresses == other.addresses
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is any kind of member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by a new leader to commit an entry of its own term (Raft §8).
    Noop,
    /// An opaque command for the state machine. Encoded as one block of bytes (the same
    /// format as a sequence of `u8`, decoded in one copy instead of byte by byte).
    Command(#[serde(with = "crate::codec::bytes")] Vec<u8>),
    /// A new membership configuration, effective as soon as it is appended.
    Membership(Membership),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's term and index.
    pub id: EntryId,
    /// What it carries.
    pub payload: EntryPayload,
}

/// Fixed per-entry overhead counted by flow control in addition to the payload.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// The entry's index.
    pub fn index(&self) -> LogIndex {
        self.id.index
    }

    /// The entry's term.
    pub fn term(&self) -> Term {
        self.id.term
    }

    /// An estimate of the entry's encoded size, used by flow control and batching.
    pub fn size_bytes(&self) -> u64 {
        let payload = match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(command) => command.len() as u64,
            EntryPayload::Membership(membership) => {
                let addresses: usize = membership
                    .addresses
                    .values()
                    .map(|address| address.peer.len() + address.client.len())
                    .sum();
                (8 * (membership.members().len() + membership.retired.len()) + addresses) as u64
            }
        };
        ENTRY_OVERHEAD_BYTES + payload
    }
}

/// The state that must be durable before a node says anything that depends on it.
///
/// The commit index is deliberately not here: it is learned again from the leader after a
/// restart, and leaving it out means the hard state changes only on a new term or a vote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
}

/// What a snapshot covers: the log up to `last` and the configuration in force there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry the snapshot includes.
    pub last: EntryId,
    /// The membership configuration as of `last`.
    pub membership: Membership,
}
