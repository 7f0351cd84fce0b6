//! Quorum-loss recovery: turn one survivor's storage into a one-member cluster that keeps
//! every entry it holds (etcd's `--force-new-cluster`).
//!
//! Raft cannot commit anything once a majority of its voters is gone for good; no message can
//! change that. The operator's way out is to tell one survivor, offline, that it is now the
//! whole cluster. [`force_new_cluster`] does that through the ordinary storage contract, so the
//! node then starts through the real recovery path ([`super::driver::recover`]) and needs no
//! special mode in the core:
//!
//! ```text
//!   old log:  … e(L)                     hard state (T, vote)
//!   step 1:                               hard state (T+1, vote = self)     sync
//!   step 2:   … e(L) C{self}@(T+1, L+1)                                     sync
//!   step 3:   bootstrap record := C{self}                                   atomic replace
//! ```
//!
//! `T` is the larger of the stored term and the last entry's term. The configuration entry
//! takes effect when it is appended (thesis §4.1), so from step 2 on every start of this data
//! directory — with or without the flag, with or without the old `--cluster` — recovers a
//! configuration in which this node is the only voter; it elects itself and its first commit
//! (a no-op of its new term) commits **the whole log**, including entries the old cluster may
//! never have committed. That is deliberate: the hard state does not record the commit index
//! (see [`crate::types::HardState`]), so this node cannot tell an entry the old majority
//! acknowledged from one it only received; dropping the tail could lose an acknowledged write,
//! while keeping it at worst applies a write whose client was told "indeterminate" (a timeout),
//! never "failed".
//!
//! **A crash between the steps** (each is durable on return): after step 1 only, the node has
//! a higher term and the old configuration — exactly a node that started an election; running
//! the operation again forces at the next term. After step 2, the one-member configuration is
//! in force; running the operation again finds this node alone and only finishes step 3.
//! Step 3 alone changes no decision of the core (the log's configuration overrides the
//! bootstrap record); it makes a later start with the old `--cluster` a
//! [`super::StartError::BootstrapConflict`] instead of a silent no-op.
//!
//! The other members' ids are **retired** in the new configuration: they are never added
//! again, so a new member cannot lend a vote that an old log still counts.
//!
//! **Given again.** While this node is still the only voter the operation forces nothing. Once
//! the new cluster has grown, forcing again would drop members that may still be a majority of
//! their own configuration; a caller that knows the storage was forced before (the binary keeps
//! a `forced` file in the data directory) says so in [`ForceOptions::forced_before`] and gets
//! [`ForceError::ForcedBefore`] instead.

use crate::error::StorageError;
use crate::storage::{self, Storage};
use crate::types::{Entry, EntryId, EntryPayload, HardState, MemberAddress, Membership, NodeId};

/// What to force.
#[derive(Clone, Debug)]
pub struct ForceOptions {
    /// The surviving node: the only voter of the new cluster.
    pub id: NodeId,
    /// Its peer address in the new configuration; `None`: the one the old configuration
    /// recorded for it.
    pub peer_address: Option<String>,
    /// Its client address; `None`: the old one.
    pub client_address: Option<String>,
    /// This storage was forced into a new cluster before (the binary records it in the data
    /// directory): refuse ([`ForceError::ForcedBefore`]) rather than force again unless this
    /// node still is the only voter. Once the new cluster has grown, a flag left on a command
    /// line would otherwise drop the new members — who may still form a majority of their
    /// own configuration, and accept writes this node never sees.
    pub forced_before: bool,
}

/// What [`force_new_cluster`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The configuration before, as the storage held it.
    pub previous: Membership,
    /// The configuration now in force: this node alone.
    pub membership: Membership,
    /// The last entry kept from the old cluster's log (or its snapshot).
    pub kept_through: EntryId,
    /// The configuration entry appended; `None` when this node already was the only voter
    /// (a repeated `--force-new-cluster`, or one that crashed after its configuration entry):
    /// nothing was forced again.
    pub appended: Option<EntryId>,
}

/// Why a forced start was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForceError {
    /// The storage holds no log and no snapshot: there is nothing to recover.
    #[error(
        "nothing to recover: the data directory holds no log and no snapshot; \
         --force-new-cluster starts a new cluster from a surviving member's data"
    )]
    NothingToRecover,
    /// The node is not a member of the configuration its storage holds (it was removed, or
    /// never added): its data may be arbitrarily stale.
    #[error(
        "{id} is not a member of the configuration this data holds ({membership}): it was \
         removed or never added, so its data may be far behind; force a member's data instead"
    )]
    NotAMember {
        /// The node asked to survive.
        id: NodeId,
        /// The configuration in force in its storage.
        membership: Box<Membership>,
    },
    /// The storage was forced before and its configuration has changed since (the new
    /// cluster grew): forcing again is refused ([`ForceOptions::forced_before`]).
    #[error(
        "this data was already forced into a new cluster, which has since changed to \
         {membership}: forcing it again would drop those members, who may still form a \
         majority and accept writes of their own"
    )]
    ForcedBefore {
        /// The configuration in force now.
        membership: Box<Membership>,
    },
    /// Storage failed; what was done before is described on [`force_new_cluster`].
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Rewrites `storage` so that the node `options.id` starts as the only voter of a cluster that
/// holds every entry of its log and snapshot; see the module docs for the steps, the choice to
/// keep the whole log, and what a crash between the steps leaves. Run it before
/// [`super::Node::start`] on the same storage (or after reopening it), never while a node runs
/// on it. Running it again when this node already is the only voter writes at most the
/// bootstrap record.
pub fn force_new_cluster(
    storage: &mut dyn Storage,
    options: &ForceOptions,
) -> Result<ForcedCluster, ForceError> {
    let id = options.id;
    let InForce {
        recovered,
        bootstrap,
        last,
        membership: previous,
    } = read_in_force(storage)?;
    let last = last.ok_or(ForceError::NothingToRecover)?;
    if !previous.contains(id) {
        return Err(ForceError::NotAMember {
            id,
            membership: Box::new(previous),
        });
    }
    let alone = previous.voters.len() == 1
        && previous.voters.contains(&id)
        && !previous.is_joint()
        && previous.learners.is_empty();
    if alone {
        // Forced before (or a one-member cluster all along): force nothing again. Finish the
        // step a crash may have cut off, so the bootstrap record names this configuration.
        if bootstrap
            .as_ref()
            .is_none_or(|recorded| !recorded.same_members(&previous))
        {
            storage.save_bootstrap(&previous)?;
        }
        return Ok(ForcedCluster {
            membership: previous.clone(),
            previous,
            kept_through: last,
            appended: None,
        });
    }
    if options.forced_before {
        return Err(ForceError::ForcedBefore {
            membership: Box::new(previous),
        });
    }
    let old_address = previous.addresses.get(&id).cloned().unwrap_or_default();
    let address = MemberAddress {
        peer: options.peer_address.clone().unwrap_or(old_address.peer),
        client: options.client_address.clone().unwrap_or(old_address.client),
    };
    let mut retired = previous.retired.clone();
    retired.extend(
        previous
            .members()
            .into_iter()
            .filter(|member| *member != id),
    );
    let membership = Membership {
        voters: [id].into(),
        addresses: [(id, address)].into(),
        retired,
        ..Membership::default()
    };
    let term = recovered.hard_state.term.max(last.term).next();
    // Step 1: the new term, voted for by this node — no other leader can own it.
    storage.save_hard_state(HardState {
        term,
        vote: Some(id),
    })?;
    storage.sync()?;
    // Step 2: the configuration entry, in force from here on.
    let entry = Entry {
        id: EntryId::new(term, last.index.next()),
        payload: EntryPayload::Membership(membership.clone()),
    };
    debug_assert!(entry.id.term > last.term && entry.index() == last.index.next());
    storage.append(std::slice::from_ref(&entry))?;
    storage.sync()?;
    // Step 3: the cluster was (re)created with this configuration.
    storage.save_bootstrap(&membership)?;
    Ok(ForcedCluster {
        previous,
        membership,
        kept_through: last,
        appended: Some(entry.id),
    })
}

/// The configuration a start from `storage` would be in (empty if it holds none), read
/// without writing anything but what every start writes ([`storage::recover_consistent`]):
/// for an operator's checks before [`force_new_cluster`], e.g. that the other members are
/// really down.
pub fn configuration_in_force(storage: &mut dyn Storage) -> Result<Membership, StorageError> {
    Ok(read_in_force(storage)?.membership)
}

/// What the storage holds, and the configuration in force there.
struct InForce {
    recovered: storage::Recovered,
    bootstrap: Option<Membership>,
    /// The last entry of the log, or of the snapshot; `None`: nothing at all.
    last: Option<EntryId>,
    membership: Membership,
}

fn read_in_force(storage: &mut dyn Storage) -> Result<InForce, StorageError> {
    let recovered = storage::recover_consistent(storage)?;
    let bootstrap = storage.load_bootstrap()?;
    let snapshot_last = recovered.snapshot.as_ref().map(|meta| meta.last);
    let last = recovered
        .entries
        .last()
        .map(|entry| entry.id)
        .or(snapshot_last);
    // The newest configuration in the log after the snapshot, else the snapshot's, else the
    // one the cluster was created with (as `Raft::new` settles it).
    let from_log = recovered
        .entries
        .iter()
        .rev()
        .filter(|entry| snapshot_last.is_none_or(|snapshot| entry.index() > snapshot.index))
        .find_map(|entry| match &entry.payload {
            EntryPayload::Membership(membership) => Some(membership.clone()),
            _ => None,
        });
    let membership = from_log
        .or_else(|| {
            recovered
                .snapshot
                .as_ref()
                .map(|meta| meta.membership.clone())
        })
        .or(bootstrap.clone())
        .unwrap_or_default();
    Ok(InForce {
        recovered,
        bootstrap,
        last,
        membership,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemStorage;
    use crate::types::{LogIndex, SnapshotMeta, Term};

    fn address(id: u64) -> MemberAddress {
        MemberAddress {
            peer: format!("127.0.0.1:{}", 5400 + id),
            client: format!("127.0.0.1:{}", 5450 + id),
        }
    }

    fn three() -> Membership {
        Membership::with_addresses((1..=3).map(|id| (NodeId(id), address(id))).collect())
    }

    fn command(term: u64, index: u64) -> Entry {
        Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            payload: EntryPayload::Command(vec![index as u8]),
        }
    }

    fn options(id: u64) -> ForceOptions {
        ForceOptions {
            id: NodeId(id),
            peer_address: None,
            client_address: None,
            forced_before: false,
        }
    }

    /// A member of a three-node cluster: bootstrap recorded, a log of terms 1 and 2, voted.
    fn survivor() -> MemStorage {
        let mut storage = MemStorage::new();
        storage.save_bootstrap(&three()).unwrap();
        let log: Vec<Entry> = (1..=5)
            .map(|index| command(1, index))
            .chain((6..=8).map(|index| command(2, index)))
            .collect();
        storage.append(&log).unwrap();
        storage
            .save_hard_state(HardState {
                term: Term(3),
                vote: Some(NodeId(2)),
            })
            .unwrap();
        storage.sync().unwrap();
        storage
    }

    #[test]
    fn the_survivor_keeps_its_whole_log_and_becomes_the_only_voter_at_a_new_term() {
        let mut storage = survivor();
        let forced = force_new_cluster(&mut storage, &options(1)).unwrap();
        assert_eq!(forced.previous, three());
        assert_eq!(forced.kept_through, EntryId::new(Term(2), LogIndex(8)));
        // Term 3 was seen (a vote), so the new term is 4.
        assert_eq!(forced.appended, Some(EntryId::new(Term(4), LogIndex(9))));
        assert_eq!(forced.membership.voters, [NodeId(1)].into());
        assert_eq!(forced.membership.addresses[&NodeId(1)], address(1));
        assert_eq!(forced.membership.retired, [NodeId(2), NodeId(3)].into());
        let recovered = storage.recover().unwrap();
        assert_eq!(recovered.entries.len(), 9, "every old entry is kept");
        assert_eq!(
            recovered.hard_state,
            HardState {
                term: Term(4),
                vote: Some(NodeId(1))
            }
        );
        assert_eq!(
            recovered.entries[8].payload,
            EntryPayload::Membership(forced.membership.clone())
        );
        assert_eq!(storage.load_bootstrap().unwrap(), Some(forced.membership));
    }

    #[test]
    fn forcing_again_changes_nothing() {
        let mut storage = survivor();
        let first = force_new_cluster(&mut storage, &options(1)).unwrap();
        let before = storage.recover().unwrap();
        let again = force_new_cluster(&mut storage, &options(1)).unwrap();
        assert_eq!(again.appended, None);
        assert_eq!(again.membership, first.membership);
        assert_eq!(storage.recover().unwrap(), before);
    }

    #[test]
    fn a_cluster_grown_since_it_was_forced_is_not_forced_again_unless_asked() {
        let mut storage = survivor();
        let forced = force_new_cluster(&mut storage, &options(1)).unwrap();
        let again = ForceOptions {
            forced_before: true,
            ..options(1)
        };
        // Still alone: harmless.
        assert_eq!(
            force_new_cluster(&mut storage, &again).unwrap().appended,
            None
        );
        // n4 joined since.
        let mut grown = forced.membership.clone();
        grown.voters.insert(NodeId(4));
        let next = forced.appended.unwrap().index.next();
        storage
            .append(&[Entry {
                id: EntryId::new(forced.appended.unwrap().term, next),
                payload: EntryPayload::Membership(grown.clone()),
            }])
            .unwrap();
        storage.sync().unwrap();
        let before = storage.recover().unwrap();
        let error = force_new_cluster(&mut storage, &again).unwrap_err();
        assert!(matches!(error, ForceError::ForcedBefore { .. }), "{error}");
        assert_eq!(storage.recover().unwrap(), before, "a refusal wrote");
        // The operator says this cluster lost its quorum too.
        let forced = force_new_cluster(&mut storage, &options(1)).unwrap();
        assert_eq!(forced.previous, grown);
        assert!(forced.membership.retired.contains(&NodeId(4)));
    }

    #[test]
    fn new_addresses_replace_the_old_and_a_snapshot_alone_is_enough() {
        let mut storage = MemStorage::new();
        storage.save_bootstrap(&three()).unwrap();
        let meta = SnapshotMeta {
            last: EntryId::new(Term(5), LogIndex(40)),
            membership: three(),
        };
        storage.save_snapshot(&meta, b"state").unwrap();
        storage.compact(LogIndex(40)).unwrap();
        let forced = force_new_cluster(
            &mut storage,
            &ForceOptions {
                peer_address: Some("127.0.0.1:5499".into()),
                ..options(2)
            },
        )
        .unwrap();
        assert_eq!(forced.appended, Some(EntryId::new(Term(6), LogIndex(41))));
        let address = &forced.membership.addresses[&NodeId(2)];
        assert_eq!(address.peer, "127.0.0.1:5499");
        assert_eq!(address.client, self::address(2).client);
    }

    #[test]
    fn an_empty_storage_or_a_non_member_is_refused_without_writing() {
        let mut empty = MemStorage::new();
        assert!(matches!(
            force_new_cluster(&mut empty, &options(1)),
            Err(ForceError::NothingToRecover)
        ));
        let mut storage = survivor();
        let before = storage.recover().unwrap();
        let error = force_new_cluster(&mut storage, &options(7)).unwrap_err();
        assert!(matches!(error, ForceError::NotAMember { .. }), "{error}");
        assert_eq!(storage.recover().unwrap(), before);
        assert_eq!(storage.load_bootstrap().unwrap(), Some(three()));
    }

    #[test]
    fn the_newest_configuration_in_the_log_is_the_one_replaced() {
        let mut storage = survivor();
        // n4 joined as a learner, after the bootstrap.
        let mut four = three();
        four.learners.insert(NodeId(4));
        storage
            .append(&[Entry {
                id: EntryId::new(Term(2), LogIndex(9)),
                payload: EntryPayload::Membership(four.clone()),
            }])
            .unwrap();
        storage.sync().unwrap();
        let forced = force_new_cluster(&mut storage, &options(3)).unwrap();
        assert_eq!(forced.previous, four);
        assert_eq!(
            forced.membership.retired,
            [NodeId(1), NodeId(2), NodeId(4)].into()
        );
    }
}
