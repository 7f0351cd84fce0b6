//! The trait a replicated state machine implements. Users bring their own; [`crate::kv`] is the
//! key-value one.

use crate::types::EntryId;

/// Serializes a frozen state: returned by [`StateMachine::snapshot_writer`] and run on another
/// thread.
pub type SnapshotWriter = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// The error a state machine returns when a snapshot cannot be restored.
pub type RestoreError = Box<dyn std::error::Error + Send + Sync>;

/// A deterministic state machine driven by the committed log.
///
/// `apply` is called once per committed command, in log order, on every node. It must be
/// deterministic: the same commands in the same order must produce the same state and the same
/// responses everywhere. No-op and membership entries are handled by the node and never reach
/// the state machine.
pub trait StateMachine: Send + 'static {
    /// Applies the committed `command` at `id` and returns the response for its proposer.
    fn apply(&mut self, id: EntryId, command: &[u8]) -> Vec<u8>;

    /// Serializes the whole state, including anything needed for exactly-once semantics.
    fn snapshot(&mut self) -> Vec<u8>;

    /// Freezes the whole state as it is now and returns the work that serializes it, which
    /// the node runs later on its own `snapshot` thread while applying goes on. The default
    /// serializes at once ([`snapshot`](StateMachine::snapshot)), holding up apply and reads
    /// for as long as that takes; override it when the state can be frozen cheaply — a
    /// persistent (copy-on-write) map clones in O(1) — so a snapshot of a large state never
    /// stalls the applier.
    fn snapshot_writer(&mut self) -> SnapshotWriter {
        let data = self.snapshot();
        Box::new(move || data)
    }

    /// Replaces the whole state with the one `snapshot` produced.
    fn restore(&mut self, data: &[u8]) -> Result<(), RestoreError>;
}
