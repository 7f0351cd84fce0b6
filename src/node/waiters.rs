//! Callers waiting for their proposal to apply or their read to be confirmed.

use std::collections::{BTreeMap, HashMap};

use crossbeam_channel::Sender;

use crate::error::{ProposeError, ReadError};
use crate::raft::ReadState;
use crate::types::{EntryId, LogIndex, Term};

type ProposalSender = Sender<Result<Vec<u8>, ProposeError>>;
type ReadSender = Sender<Result<LogIndex, ReadError>>;

/// Waiting proposals by log index, and waiting reads by context.
#[derive(Default)]
pub(super) struct Waiters {
    proposals: BTreeMap<LogIndex, (Term, ProposalSender)>,
    reads: HashMap<u64, ReadSender>,
}

impl Waiters {
    pub(super) fn add_proposal(&mut self, id: EntryId, sender: ProposalSender) {
        // An earlier waiter at this index belongs to an entry that was overwritten.
        if let Some((_, earlier)) = self.proposals.insert(id.index, (id.term, sender)) {
            let _ = earlier.try_send(Err(ProposeError::Dropped));
        }
    }

    pub(super) fn remove_proposal(&mut self, id: EntryId) {
        if self
            .proposals
            .get(&id.index)
            .is_some_and(|(term, _)| *term == id.term)
        {
            self.proposals.remove(&id.index);
        }
    }

    /// The entry `id` was applied with `output` (None for entries without a response). The
    /// waiter at that index gets the output if its entry is the one applied, else `Dropped`:
    /// another leader's entry took the index, so the waiter's entry will never commit.
    pub(super) fn complete_proposal(&mut self, id: EntryId, output: Option<Vec<u8>>) {
        let Some((term, sender)) = self.proposals.remove(&id.index) else {
            return;
        };
        let outcome = match output {
            Some(output) if term == id.term => Ok(output),
            _ if term == id.term => Ok(Vec::new()),
            _ => Err(ProposeError::Dropped),
        };
        let _ = sender.try_send(outcome);
    }

    pub(super) fn add_read(&mut self, context: u64, sender: ReadSender) {
        self.reads.insert(context, sender);
    }

    pub(super) fn remove_read(&mut self, context: u64) {
        self.reads.remove(&context);
    }

    pub(super) fn complete_reads(&mut self, read_states: Vec<ReadState>) {
        for read_state in read_states {
            if let Some(sender) = self.reads.remove(&read_state.context) {
                let _ = sender.try_send(read_state.outcome);
            }
        }
    }

    /// Storage failed: every waiter learns it.
    pub(super) fn fail_all(&mut self, reason: &str) {
        for (_, (_, sender)) in std::mem::take(&mut self.proposals) {
            let _ = sender.try_send(Err(ProposeError::Storage {
                reason: reason.to_string(),
            }));
        }
        for (_, sender) in self.reads.drain() {
            let _ = sender.try_send(Err(ReadError::Shutdown));
        }
    }

    /// The node is shutting down: outcomes are unknown.
    pub(super) fn shut_down(&mut self) {
        for (_, (_, sender)) in std::mem::take(&mut self.proposals) {
            let _ = sender.try_send(Err(ProposeError::Shutdown));
        }
        for (_, sender) in self.reads.drain() {
            let _ = sender.try_send(Err(ReadError::Shutdown));
        }
    }
}
