//! Callers waiting for their proposal to apply or their read to be confirmed and applied.
//!
//! Every waiter is a (tag, [`CompletionSender`]) pair supplied by the caller, so one channel can
//! collect the completions of many requests (a server's event loop, say) and no thread has to
//! block per request. Completions are delivered with `try_send`: the caller sizes its channel
//! for the requests it keeps in flight (or uses an unbounded one). A sender may carry a
//! [`Wake`], called after each delivery, for a thread that waits on something other than the
//! channel (an event loop blocked in `epoll_wait`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::error::{ProposeError, ReadError};
use crate::metrics::NodeMetrics;
use crate::raft::ReadState;
use crate::types::{EntryId, LogIndex, Term};

/// The outcome of one tagged request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion<T> {
    /// The caller's tag, as passed with the request.
    pub tag: u64,
    /// The outcome.
    pub outcome: T,
}

/// The outcome of a proposal: the state machine's response, or why there is none.
pub type ProposalCompletion = Completion<Result<Vec<u8>, ProposeError>>;

/// The outcome of a read barrier: the index the state machine has applied through, at or
/// after the read point, or why the read cannot be served.
pub type ReadCompletion = Completion<Result<LogIndex, ReadError>>;

/// Wakes a thread that drains a completion channel but does not block on it.
///
/// Called (from the node's threads, under the node's waiter lock) after every completion sent
/// through a [`CompletionSender`] that carries it: it must be quick and must not block — an
/// atomic flag and an eventfd write, say.
pub trait Wake: Send + Sync {
    /// A completion was sent.
    fn wake(&self);
}

/// Where the completions of tagged requests go: a channel, and optionally a [`Wake`] to call
/// after each one. Made from a plain `Sender` with `From`; cloning is cheap.
pub struct CompletionSender<T> {
    sender: Sender<Completion<T>>,
    wake: Option<Arc<dyn Wake>>,
}

impl<T> CompletionSender<T> {
    /// Completions go to `sender`, and `wake` is called after each.
    pub fn with_wake(sender: Sender<Completion<T>>, wake: Arc<dyn Wake>) -> CompletionSender<T> {
        CompletionSender {
            sender,
            wake: Some(wake),
        }
    }

    fn send(&self, completion: Completion<T>) {
        if self.sender.try_send(completion).is_ok() {
            if let Some(wake) = &self.wake {
                wake.wake();
            }
        }
    }
}

impl<T> Clone for CompletionSender<T> {
    fn clone(&self) -> CompletionSender<T> {
        CompletionSender {
            sender: self.sender.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> From<Sender<Completion<T>>> for CompletionSender<T> {
    fn from(sender: Sender<Completion<T>>) -> CompletionSender<T> {
        CompletionSender { sender, wake: None }
    }
}

impl<T> std::fmt::Debug for CompletionSender<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CompletionSender")
            .field("wakes", &self.wake.is_some())
            .finish()
    }
}

struct Waiter<T> {
    tag: u64,
    sender: CompletionSender<T>,
}

impl<T> Waiter<T> {
    fn complete(self, outcome: T) {
        self.sender.send(Completion {
            tag: self.tag,
            outcome,
        });
    }
}

type ProposalWaiter = Waiter<Result<Vec<u8>, ProposeError>>;
type ReadWaiter = Waiter<Result<LogIndex, ReadError>>;

/// Waiting proposals by log index, reads by context and then by the index they wait for.
///
/// Contract: every proposal added gets exactly one completion — its output when its entry is
/// applied, `Dropped` only when another entry is applied at its index (so it can never commit),
/// `Indeterminate` when this node can no longer learn the outcome, or the node's failure or
/// shutdown — unless its caller removes it first (a deadline).
#[derive(Default)]
pub(super) struct Waiters {
    /// Counts proposals that end without a result, by reason.
    metrics: NodeMetrics,
    /// Several proposals can wait at one index: entries this node proposed in different terms,
    /// the older overwritten in its own log but possibly still committed through another node.
    proposals: BTreeMap<LogIndex, Vec<(Term, ProposalWaiter)>>,
    reads: HashMap<u64, ReadWaiter>,
    reads_awaiting_apply: BTreeMap<LogIndex, Vec<ReadWaiter>>,
}

impl Waiters {
    pub(super) fn new(metrics: NodeMetrics) -> Waiters {
        Waiters {
            metrics,
            ..Waiters::default()
        }
    }

    /// Proposals waiting for their outcome.
    pub(super) fn proposals_pending(&self) -> usize {
        self.proposals.values().map(Vec::len).sum()
    }

    pub(super) fn add_proposal(
        &mut self,
        id: EntryId,
        tag: u64,
        sender: CompletionSender<Result<Vec<u8>, ProposeError>>,
    ) {
        // An earlier waiter at this index belongs to an entry that was overwritten in this
        // node's log. It may still commit (another node may hold it and win an election), so
        // it keeps waiting until some entry at this index is applied.
        self.proposals
            .entry(id.index)
            .or_default()
            .push((id.term, Waiter { tag, sender }));
    }

    pub(super) fn remove_proposal(&mut self, id: EntryId) {
        if let Some(waiting) = self.proposals.get_mut(&id.index) {
            let before = waiting.len();
            waiting.retain(|(term, _)| *term != id.term);
            if waiting.len() < before {
                // Its caller's deadline passed.
                self.metrics.proposal_failed("timeout");
            }
            if waiting.is_empty() {
                self.proposals.remove(&id.index);
            }
        }
    }

    /// The entry `id` was applied with `output` (None for entries without a response). A
    /// waiter at that index gets the output if its entry is the one applied, else `Dropped`:
    /// another entry committed at the index, so the waiter's entry never will.
    pub(super) fn complete_proposal(&mut self, id: EntryId, output: Option<Vec<u8>>) {
        let Some(waiting) = self.proposals.remove(&id.index) else {
            return;
        };
        let mut output = output;
        for (term, waiter) in waiting {
            if term == id.term {
                waiter.complete(Ok(output.take().unwrap_or_default()));
            } else {
                self.metrics.proposal_failed("dropped");
                waiter.complete(Err(ProposeError::Dropped));
            }
        }
    }

    /// This node can no longer learn what happens after `index` (it was removed from the
    /// cluster): proposals waiting beyond it may or may not commit.
    pub(super) fn complete_unknowable_after(&mut self, index: LogIndex) {
        while let Some(entry) = self.proposals.last_entry() {
            if *entry.key() <= index {
                break;
            }
            for (_, waiter) in entry.remove() {
                self.metrics.proposal_failed("indeterminate");
                waiter.complete(Err(ProposeError::Indeterminate));
            }
        }
    }

    /// A snapshot from the leader now covers everything through `index`: proposals waiting
    /// there cannot learn whether their entry or another one committed.
    pub(super) fn complete_covered_by_snapshot(&mut self, index: LogIndex) {
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > index {
                break;
            }
            for (_, waiter) in entry.remove() {
                self.metrics.proposal_failed("indeterminate");
                waiter.complete(Err(ProposeError::Indeterminate));
            }
        }
    }

    pub(super) fn add_read(
        &mut self,
        context: u64,
        tag: u64,
        sender: CompletionSender<Result<LogIndex, ReadError>>,
    ) {
        self.reads.insert(context, Waiter { tag, sender });
    }

    /// A read whose read point `index` is known already (a lease read): completes at once if
    /// `applied` (read under this lock) has reached it, else once it does. Returns whether it
    /// completed at once.
    pub(super) fn add_read_at(
        &mut self,
        index: LogIndex,
        applied: LogIndex,
        tag: u64,
        sender: CompletionSender<Result<LogIndex, ReadError>>,
    ) {
        let waiter = Waiter { tag, sender };
        if index <= applied {
            waiter.complete(Ok(applied));
        } else {
            self.reads_awaiting_apply
                .entry(index)
                .or_default()
                .push(waiter);
        }
    }

    pub(super) fn remove_read(&mut self, context: u64) {
        self.reads.remove(&context);
    }

    /// Read points arrived. A read completes once `applied` reaches its index; until then it
    /// waits for [`Waiters::complete_applied`]. The caller reads `applied` under this lock.
    pub(super) fn complete_reads(&mut self, read_states: Vec<ReadState>, applied: LogIndex) {
        for read_state in read_states {
            let Some(waiter) = self.reads.remove(&read_state.context) else {
                continue;
            };
            match read_state.outcome {
                Ok(index) if index <= applied => waiter.complete(Ok(applied)),
                Ok(index) => self
                    .reads_awaiting_apply
                    .entry(index)
                    .or_default()
                    .push(waiter),
                Err(error) => waiter.complete(Err(error)),
            }
        }
    }

    /// The state machine applied through `applied`: release the reads waiting for it.
    pub(super) fn complete_applied(&mut self, applied: LogIndex) {
        while let Some(entry) = self.reads_awaiting_apply.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for waiter in entry.remove() {
                waiter.complete(Ok(applied));
            }
        }
    }

    /// Storage failed: every waiter learns it.
    pub(super) fn fail_all(&mut self, reason: &str) {
        for (_, waiting) in std::mem::take(&mut self.proposals) {
            for (_, waiter) in waiting {
                self.metrics.proposal_failed("storage");
                waiter.complete(Err(ProposeError::Storage {
                    reason: reason.to_string(),
                }));
            }
        }
        self.fail_reads();
    }

    /// The node is shutting down: outcomes are unknown.
    pub(super) fn shut_down(&mut self) {
        for (_, waiting) in std::mem::take(&mut self.proposals) {
            for (_, waiter) in waiting {
                self.metrics.proposal_failed("shutdown");
                waiter.complete(Err(ProposeError::Shutdown));
            }
        }
        self.fail_reads();
    }

    fn fail_reads(&mut self) {
        for (_, waiter) in self.reads.drain() {
            waiter.complete(Err(ReadError::Shutdown));
        }
        for (_, waiters) in std::mem::take(&mut self.reads_awaiting_apply) {
            for waiter in waiters {
                waiter.complete(Err(ReadError::Shutdown));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(term: u64, index: u64) -> EntryId {
        EntryId::new(Term(term), LogIndex(index))
    }

    /// Issue #11 item 8: a proposal whose entry this node's own log overwrote may still
    /// commit through another node; it is `Dropped` only once another entry is applied there.
    #[test]
    fn an_overwritten_proposal_is_dropped_only_when_another_entry_commits_there() {
        let (sender, receiver) = crossbeam_channel::bounded(4);
        let mut waiters = Waiters::default();
        waiters.add_proposal(id(1, 5), 1, sender.clone().into());
        // This node, leader again in term 3, proposes at the same index.
        waiters.add_proposal(id(3, 5), 2, sender.into());
        assert!(
            receiver.try_recv().is_err(),
            "a proposal was answered before anything was applied at its index"
        );
        // The term-1 entry committed after all (through another node).
        waiters.complete_proposal(id(1, 5), Some(b"ok".to_vec()));
        let mut completions: Vec<_> = receiver.try_iter().collect();
        completions.sort_by_key(|completion| completion.tag);
        assert_eq!(
            completions,
            vec![
                Completion {
                    tag: 1,
                    outcome: Ok(b"ok".to_vec())
                },
                Completion {
                    tag: 2,
                    outcome: Err(ProposeError::Dropped)
                },
            ]
        );
    }
}
