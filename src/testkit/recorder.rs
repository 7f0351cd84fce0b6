//! A state-machine wrapper that records every applied command by index, so that the harness
//! can check that no two nodes (nor one node across restarts) applied different commands at
//! the same index.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::state_machine::{RestoreError, StateMachine};
use crate::types::{EntryId, LogIndex};

/// What one node applied, kept across its restarts.
#[derive(Debug, Default)]
pub struct AppliedRecord {
    /// The command applied at each index.
    pub commands: BTreeMap<LogIndex, Vec<u8>>,
    /// The first inconsistency seen, if any.
    pub violation: Option<String>,
}

/// A state machine `M` whose applies are recorded. Dereferences to `M`.
pub struct Recorded<M> {
    inner: M,
    record: Arc<Mutex<AppliedRecord>>,
}

impl<M> Recorded<M> {
    /// Wraps `inner`, recording into `record`.
    pub fn new(inner: M, record: Arc<Mutex<AppliedRecord>>) -> Recorded<M> {
        Recorded { inner, record }
    }
}

impl<M> Deref for Recorded<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.inner
    }
}

impl<M> DerefMut for Recorded<M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.inner
    }
}

impl<M: StateMachine> StateMachine for Recorded<M> {
    fn apply(&mut self, id: EntryId, command: &[u8]) -> Vec<u8> {
        {
            let mut record = self.record.lock();
            match record.commands.get(&id.index) {
                Some(seen) if seen.as_slice() != command && record.violation.is_none() => {
                    record.violation = Some(format!(
                        "applied a different command at {} after a restart",
                        id.index
                    ));
                }
                Some(_) => {}
                None => {
                    record.commands.insert(id.index, command.to_vec());
                }
            }
        }
        self.inner.apply(id, command)
    }

    fn snapshot(&mut self) -> Vec<u8> {
        self.inner.snapshot()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), RestoreError> {
        self.inner.restore(data)
    }
}
