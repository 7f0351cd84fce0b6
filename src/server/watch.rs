//! Watches, served by the event loop that owns their connection, from the store's history.
//!
//! ```text
//!  applier ── applied a batch ──► WatchNotifier: marks the loops that hold watches, wakes them
//!  [n1-client-io-K] each iteration, after reading:
//!     one state-machine lock: the applied index, the compaction point, the revisions from
//!     the oldest one a watcher needs (shared, not copied)
//!     synced watchers (all at the loop's cursor): each change looked up by key (one-key
//!       watches) and tested against the range watches; events appended to their connections
//!     unsynced watchers (behind, or slow): each catches up from the history on its own,
//!       and joins the synced ones once it reaches the cursor
//! ```
//!
//! A watcher never holds the applier or another watcher back: the applier only appends to
//! the history, and a watcher whose connection has more than
//! [`OUTPUT_BYTES_HIGH`](super::connection::OUTPUT_BYTES_HIGH) unwritten is not fed; it falls
//! back to the unsynced set and catches up from the history once its client reads again. One
//! that falls out of the history window is canceled with [`ServerError::Compacted`] — never
//! served with a gap.
//!
//! Delivery keeps revision order per watch, sends all changes of one revision together (in
//! one frame, or in consecutive frames marked `fragment`), and says in every frame up to which
//! revision everything was delivered, so a client resumes after it, on any member.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::kv::{Event, KeyRange, KvStore, Revision};
use crate::node::{Node, Wake};
use crate::protocol::{
    ResponseBody, ServerError, WatchCreated, WatchEvents, WatchRequest,
    WATCH_PROGRESS_INTERVAL_MAX_MS, WATCH_PROGRESS_INTERVAL_MIN_MS,
};
use crate::types::LogIndex;

use super::connection::Connection;
use super::event_loop::LoopWaker;

/// Event bytes per frame, about: a frame ends at a revision boundary past this, and a single
/// revision larger than it is sent in fragments.
pub(super) const WATCH_FRAME_BYTES: usize = 1024 * 1024;

/// Revisions taken from the history per loop iteration at most (the loop goes on at once if
/// there are more).
const FETCH_REVISIONS_MAX: usize = 4096;

/// How often a loop looks for due progress notifications and leaderless nodes.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Watches one connection may hold at once.
pub const WATCHES_PER_CONNECTION_MAX: usize = 10_000;

/// What a loop and the applier's notifier share.
#[derive(Default)]
pub(super) struct WatchSignal {
    /// The store applied something since the loop last looked.
    dirty: AtomicBool,
    /// Watches the loop holds (the notifier wakes only loops that hold some).
    watchers: AtomicUsize,
}

/// Woken by the applier after each applied batch: marks and wakes the loops holding watches.
pub(super) struct WatchNotifier {
    loops: Vec<(Arc<LoopWaker>, Arc<WatchSignal>)>,
    /// Cleared when the server stops (a node outlives its server; its listener stays).
    active: AtomicBool,
}

impl WatchNotifier {
    pub(super) fn new(loops: Vec<(Arc<LoopWaker>, Arc<WatchSignal>)>) -> WatchNotifier {
        WatchNotifier {
            loops,
            active: AtomicBool::new(true),
        }
    }

    pub(super) fn deactivate(&self) {
        self.active.store(false, Ordering::SeqCst);
    }
}

impl Wake for WatchNotifier {
    fn wake(&self) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        for (waker, signal) in &self.loops {
            if signal.watchers.load(Ordering::Relaxed) > 0 {
                signal.dirty.store(true, Ordering::Release);
                waker.wake();
            }
        }
    }
}

/// A watch: the connection that opened it and its id there (the request id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct WatchKey {
    pub(super) connection: usize,
    pub(super) watch: u64,
}

struct Watcher {
    range: KeyRange,
    previous: bool,
    no_put: bool,
    no_delete: bool,
    progress_interval: Option<Duration>,
    require_leader: bool,
    /// The first revision not yet delivered, while unsynced (a synced watcher is at the
    /// loop's cursor).
    next: LogIndex,
    synced: bool,
    /// When the watch last sent a frame (events or progress).
    last_sent: Instant,
    /// The client asked for a progress notification.
    progress_requested: bool,
}

impl Watcher {
    fn wants(&self, is_put: bool) -> bool {
        if is_put {
            !self.no_put
        } else {
            !self.no_delete
        }
    }
}

/// The watches of one event loop. See the [module docs](self).
pub(super) struct Watches {
    watchers: HashMap<WatchKey, Watcher>,
    /// Synced one-key watches by their key.
    by_key: HashMap<Vec<u8>, Vec<WatchKey>>,
    /// Synced watches of other ranges.
    ranges: Vec<WatchKey>,
    synced: usize,
    unsynced: BTreeSet<WatchKey>,
    /// Synced watchers have delivered every revision before this one.
    cursor: LogIndex,
    /// Watchers with a progress interval, or a progress request pending.
    progress: BTreeSet<WatchKey>,
    /// Watchers that end when the node has no leader.
    require_leader: usize,
    leaderless_since: Option<Instant>,
    checked_at: Instant,
    signal: Arc<WatchSignal>,
    /// More history is waiting than one iteration takes: go on without waiting.
    pub(super) more: bool,
}

/// Something a pump did to a connection: it has output to write.
pub(super) type Touched = Vec<usize>;

impl Watches {
    pub(super) fn new(signal: Arc<WatchSignal>) -> Watches {
        Watches {
            watchers: HashMap::new(),
            by_key: HashMap::new(),
            ranges: Vec::new(),
            synced: 0,
            unsynced: BTreeSet::new(),
            cursor: LogIndex(0),
            progress: BTreeSet::new(),
            require_leader: 0,
            leaderless_since: None,
            checked_at: Instant::now(),
            signal,
            more: false,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Whether the loop must look again soon without an event: progress notifications and
    /// leader checks are due on a clock.
    pub(super) fn needs_ticks(&self) -> bool {
        !self.progress.is_empty() || self.require_leader > 0
    }

    /// Opens a watch for connection `key` under `watch` (its request id). Returns the answer
    /// to the request: created, or why not.
    pub(super) fn create(
        &mut self,
        node: &Node<KvStore>,
        connection: &mut Connection,
        key: usize,
        watch: u64,
        request: WatchRequest,
    ) -> Result<ResponseBody, ServerError> {
        if connection.watches.len() >= WATCHES_PER_CONNECTION_MAX {
            return Err(ServerError::Refused {
                reason: format!(
                    "this connection holds {WATCHES_PER_CONNECTION_MAX} watches already"
                ),
            });
        }
        let watch_key = WatchKey {
            connection: key,
            watch,
        };
        if self.watchers.contains_key(&watch_key) {
            return Err(ServerError::Refused {
                reason: format!("watch {watch} is open on this connection already"),
            });
        }
        if let Some(reason) = node.failure() {
            return Err(ServerError::Unavailable {
                reason: format!("storage failed: {reason}"),
            });
        }
        let (_, (applied, compacted)) =
            node.read_local(|kv| (kv.applied_index(), kv.compact_revision()));
        let start = match request.start {
            Some(start) => start.max(LogIndex(1)),
            None => LogIndex(applied.0 + 1),
        };
        if start <= compacted {
            return Err(ServerError::Compacted {
                compact_revision: compacted,
            });
        }
        let progress_interval = (request.progress_interval_ms > 0).then(|| {
            Duration::from_millis(request.progress_interval_ms.clamp(
                WATCH_PROGRESS_INTERVAL_MIN_MS,
                WATCH_PROGRESS_INTERVAL_MAX_MS,
            ))
        });
        let watcher = Watcher {
            range: request.range,
            previous: request.previous,
            no_put: request.no_put,
            no_delete: request.no_delete,
            progress_interval,
            require_leader: request.require_leader,
            next: start,
            synced: false,
            last_sent: Instant::now(),
            progress_requested: false,
        };
        if watcher.progress_interval.is_some() {
            self.progress.insert(watch_key);
        }
        if watcher.require_leader {
            self.require_leader += 1;
        }
        self.watchers.insert(watch_key, watcher);
        self.unsynced.insert(watch_key);
        connection.watches.insert(watch);
        self.signal
            .watchers
            .store(self.watchers.len(), Ordering::Relaxed);
        // The loop looks at the history in this iteration.
        self.signal.dirty.store(true, Ordering::Release);
        Ok(ResponseBody::WatchCreated(WatchCreated {
            watch,
            node: node.id(),
            revision: applied,
            start,
            compact_revision: compacted,
        }))
    }

    /// Ends watch `watch` of connection `key`, sending `last` on its stream (if the connection
    /// is still there). Returns whether it existed.
    pub(super) fn cancel(
        &mut self,
        connections: &mut Slab<Connection>,
        watch_key: WatchKey,
        last: Option<Result<ResponseBody, ServerError>>,
    ) -> bool {
        let Some(watcher) = self.remove(watch_key) else {
            return false;
        };
        drop(watcher);
        if let Some(connection) = connections.get_mut(watch_key.connection) {
            connection.watches.remove(&watch_key.watch);
            if let Some(last) = last {
                connection.respond(watch_key.watch, last);
            }
        }
        true
    }

    /// Forgets every watch of a connection that is closing (its client hears nothing more).
    pub(super) fn forget_connection(&mut self, key: usize, watches: &BTreeSet<u64>) {
        for &watch in watches {
            self.remove(WatchKey {
                connection: key,
                watch,
            });
        }
    }

    /// Marks every watch of connection `key` to send a progress notification.
    pub(super) fn request_progress(&mut self, key: usize, watches: &BTreeSet<u64>) {
        for &watch in watches {
            let watch_key = WatchKey {
                connection: key,
                watch,
            };
            if let Some(watcher) = self.watchers.get_mut(&watch_key) {
                watcher.progress_requested = true;
                self.progress.insert(watch_key);
            }
        }
        // Looked at in this iteration.
        self.checked_at = Instant::now() - CHECK_INTERVAL;
    }

    fn remove(&mut self, watch_key: WatchKey) -> Option<Watcher> {
        let watcher = self.watchers.remove(&watch_key)?;
        if watcher.synced {
            self.unsync_index(watch_key, &watcher);
        }
        self.unsynced.remove(&watch_key);
        self.progress.remove(&watch_key);
        if watcher.require_leader {
            self.require_leader -= 1;
        }
        self.signal
            .watchers
            .store(self.watchers.len(), Ordering::Relaxed);
        Some(watcher)
    }

    /// Takes a synced watcher out of the synced indexes (its `synced` flag is the caller's).
    fn unsync_index(&mut self, watch_key: WatchKey, watcher: &Watcher) {
        match watcher.range.as_single() {
            Some(single) => {
                if let Some(list) = self.by_key.get_mut(single) {
                    list.retain(|other| *other != watch_key);
                    if list.is_empty() {
                        self.by_key.remove(single);
                    }
                }
            }
            None => self.ranges.retain(|other| *other != watch_key),
        }
        self.synced -= 1;
    }

    /// Moves a synced watcher that could not be fed back to the unsynced set, at `next`.
    fn demote(&mut self, watch_key: WatchKey, next: LogIndex) {
        let Some(mut watcher) = self.watchers.remove(&watch_key) else {
            return;
        };
        if watcher.synced {
            self.unsync_index(watch_key, &watcher);
            watcher.synced = false;
        }
        watcher.next = next;
        self.watchers.insert(watch_key, watcher);
        self.unsynced.insert(watch_key);
    }

    /// Moves an unsynced watcher at the cursor into the synced set (or, with no synced
    /// watcher, moves the cursor to it).
    fn try_sync(&mut self, watch_key: WatchKey) {
        let Some(watcher) = self.watchers.get_mut(&watch_key) else {
            return;
        };
        if self.synced == 0 {
            self.cursor = watcher.next;
        }
        if watcher.next != self.cursor {
            return;
        }
        watcher.synced = true;
        match watcher.range.as_single() {
            Some(single) => self
                .by_key
                .entry(single.to_vec())
                .or_default()
                .push(watch_key),
            None => self.ranges.push(watch_key),
        }
        self.synced += 1;
        self.unsynced.remove(&watch_key);
    }

    /// Delivers what the store applied since the last look to every watcher that can take
    /// it, sends due progress notifications and ends watches that must end. Returns the
    /// connections given output.
    pub(super) fn pump(
        &mut self,
        node: &Node<KvStore>,
        connections: &mut Slab<Connection>,
        now: Instant,
    ) -> Touched {
        let mut touched = Touched::new();
        self.more = false;
        if self.watchers.is_empty() {
            return touched;
        }
        if now.saturating_duration_since(self.checked_at) >= CHECK_INTERVAL {
            self.checked_at = now;
            self.check_node(node, connections, now, &mut touched);
        }
        let dirty = self.signal.dirty.swap(false, Ordering::Acquire);
        let ready: Vec<WatchKey> = self
            .unsynced
            .iter()
            .copied()
            .filter(|watch_key| has_room(connections, watch_key.connection))
            .collect();
        if dirty || !ready.is_empty() {
            self.deliver(node, connections, &ready, now, &mut touched);
        }
        if !self.progress.is_empty() && self.checked_at == now {
            self.send_progress(node, connections, now, &mut touched);
        }
        touched
    }

    /// Ends every watch on a failed node, and those that require a leader on a node that
    /// has had none for two election timeouts.
    fn check_node(
        &mut self,
        node: &Node<KvStore>,
        connections: &mut Slab<Connection>,
        now: Instant,
        touched: &mut Touched,
    ) {
        if let Some(reason) = node.failure() {
            let all: Vec<WatchKey> = self.watchers.keys().copied().collect();
            let error = ServerError::WatchCanceled {
                reason: format!("the node's storage failed: {reason}"),
            };
            for watch_key in all {
                self.cancel(connections, watch_key, Some(Err(error.clone())));
                touched.push(watch_key.connection);
            }
            return;
        }
        if self.require_leader == 0 {
            self.leaderless_since = None;
            return;
        }
        if node.status().leader.is_some() {
            self.leaderless_since = None;
            return;
        }
        let since = *self.leaderless_since.get_or_insert(now);
        if now.saturating_duration_since(since) < 2 * node.election_timeout() {
            return;
        }
        let leaderless: Vec<WatchKey> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.require_leader)
            .map(|(watch_key, _)| *watch_key)
            .collect();
        let error = ServerError::WatchCanceled {
            reason: "the node has no leader".into(),
        };
        for watch_key in leaderless {
            self.cancel(connections, watch_key, Some(Err(error.clone())));
            touched.push(watch_key.connection);
        }
    }

    fn deliver(
        &mut self,
        node: &Node<KvStore>,
        connections: &mut Slab<Connection>,
        ready: &[WatchKey],
        now: Instant,
        touched: &mut Touched,
    ) {
        let mut from = if self.synced > 0 {
            self.cursor
        } else {
            LogIndex(u64::MAX)
        };
        for watch_key in ready {
            if let Some(watcher) = self.watchers.get(watch_key) {
                from = from.min(watcher.next);
            }
        }
        if from == LogIndex(u64::MAX) {
            return;
        }
        let (_, (applied, compacted, revisions)) = node.read_local(|kv| {
            let compacted = kv.compact_revision();
            let from = from.max(LogIndex(compacted.0 + 1));
            let revisions = kv
                .changes_since(from, FETCH_REVISIONS_MAX)
                .unwrap_or_default();
            (kv.applied_index(), compacted, revisions)
        });
        let complete = revisions.len() < FETCH_REVISIONS_MAX;
        self.more = !complete;
        // Everything up to `upto` is in `revisions`.
        let upto = if complete {
            applied
        } else {
            revisions.last().map_or(applied, |last| last.revision())
        };
        // Watchers whose next revision left the history end; they never get a gap. Synced
        // watchers share the cursor: one comparison for all of them, not one per watcher.
        let mut compacted_out: Vec<WatchKey> = self
            .unsynced
            .iter()
            .filter(|watch_key| {
                self.watchers
                    .get(watch_key)
                    .is_some_and(|watcher| watcher.next <= compacted)
            })
            .copied()
            .collect();
        if self.synced > 0 && self.cursor <= compacted {
            compacted_out.extend(
                self.watchers
                    .iter()
                    .filter(|(_, watcher)| watcher.synced)
                    .map(|(watch_key, _)| *watch_key),
            );
        }
        for watch_key in compacted_out {
            let error = ServerError::Compacted {
                compact_revision: compacted,
            };
            self.cancel(connections, watch_key, Some(Err(error)));
            touched.push(watch_key.connection);
        }
        if self.synced > 0 && self.cursor <= upto {
            self.deliver_synced(connections, &revisions, upto, now, touched);
        }
        for watch_key in ready {
            self.deliver_unsynced(connections, *watch_key, &revisions, upto, now, touched);
        }
    }

    /// Feeds the synced watchers every change from the cursor up to `upto`.
    fn deliver_synced(
        &mut self,
        connections: &mut Slab<Connection>,
        revisions: &[Arc<Revision>],
        upto: LogIndex,
        now: Instant,
        touched: &mut Touched,
    ) {
        let start = revisions.partition_point(|entry| entry.revision() < self.cursor);
        let mut outgoing: HashMap<WatchKey, Vec<Event>> = HashMap::new();
        for entry in &revisions[start..] {
            for change in entry.changes() {
                let is_put = change.is_put();
                let by_key = self.by_key.get(change.key()).into_iter().flatten();
                let ranged = self.ranges.iter().filter(|watch_key| {
                    self.watchers
                        .get(watch_key)
                        .is_some_and(|watcher| watcher.range.contains(change.key()))
                });
                for watch_key in by_key.chain(ranged) {
                    let Some(watcher) = self.watchers.get(watch_key) else {
                        continue;
                    };
                    if watcher.wants(is_put) {
                        outgoing
                            .entry(*watch_key)
                            .or_default()
                            .push(change.event(entry.revision(), watcher.previous));
                    }
                }
            }
        }
        let before = self.cursor;
        self.cursor = LogIndex(upto.0 + 1);
        for (watch_key, events) in outgoing {
            if !has_room(connections, watch_key.connection) {
                // Not fed now: it catches up from the history once its client reads.
                self.demote(watch_key, before);
                continue;
            }
            if let (Some(connection), Some(watcher)) = (
                connections.get_mut(watch_key.connection),
                self.watchers.get_mut(&watch_key),
            ) {
                send_events(connection, watch_key.watch, events, upto);
                watcher.last_sent = now;
                touched.push(watch_key.connection);
            }
        }
    }

    /// Feeds one unsynced watcher what it has not seen, up to `upto`, and syncs it if it
    /// reached the cursor.
    fn deliver_unsynced(
        &mut self,
        connections: &mut Slab<Connection>,
        watch_key: WatchKey,
        revisions: &[Arc<Revision>],
        upto: LogIndex,
        now: Instant,
        touched: &mut Touched,
    ) {
        let Some(watcher) = self.watchers.get_mut(&watch_key) else {
            return;
        };
        if watcher.synced || watcher.next > upto {
            // Synced already, or starts later than anything applied.
            if !watcher.synced && watcher.next == LogIndex(upto.0 + 1) {
                self.try_sync(watch_key);
            }
            return;
        }
        let start = revisions.partition_point(|entry| entry.revision() < watcher.next);
        let mut events = Vec::new();
        for entry in &revisions[start..] {
            if entry.revision() > upto {
                break;
            }
            for change in entry.changes() {
                if watcher.range.contains(change.key()) && watcher.wants(change.is_put()) {
                    events.push(change.event(entry.revision(), watcher.previous));
                }
            }
        }
        watcher.next = LogIndex(upto.0 + 1);
        if !events.is_empty() {
            if let Some(connection) = connections.get_mut(watch_key.connection) {
                send_events(connection, watch_key.watch, events, upto);
                watcher.last_sent = now;
                touched.push(watch_key.connection);
            }
        }
        self.try_sync(watch_key);
    }

    /// Sends an event-less frame on each caught-up watch whose progress interval passed
    /// since it last sent anything, or whose client asked.
    fn send_progress(
        &mut self,
        node: &Node<KvStore>,
        connections: &mut Slab<Connection>,
        now: Instant,
        touched: &mut Touched,
    ) {
        let (_, applied) = node.read_local(|kv| kv.applied_index());
        let due: Vec<WatchKey> = self.progress.iter().copied().collect();
        for watch_key in due {
            let cursor = self.cursor;
            let Some(watcher) = self.watchers.get_mut(&watch_key) else {
                continue;
            };
            let next = if watcher.synced { cursor } else { watcher.next };
            // Only a watch that delivered everything applied can say so.
            if next.0 <= applied.0 {
                continue;
            }
            let interval_passed = watcher.progress_interval.is_some_and(|interval| {
                now.saturating_duration_since(watcher.last_sent) >= interval
            });
            if !(interval_passed || watcher.progress_requested) {
                continue;
            }
            if !has_room(connections, watch_key.connection) {
                continue;
            }
            if let Some(connection) = connections.get_mut(watch_key.connection) {
                send_events(
                    connection,
                    watch_key.watch,
                    Vec::new(),
                    LogIndex(next.0 - 1),
                );
                touched.push(watch_key.connection);
            }
            watcher.last_sent = now;
            if watcher.progress_requested {
                watcher.progress_requested = false;
                if watcher.progress_interval.is_none() {
                    self.progress.remove(&watch_key);
                }
            }
        }
    }
}

/// Whether connection `key` can take more output now.
fn has_room(connections: &Slab<Connection>, key: usize) -> bool {
    connections
        .get(key)
        .is_some_and(Connection::takes_watch_output)
}

/// Encodes `events` (in revision order) for watch `watch` in frames of about
/// [`WATCH_FRAME_BYTES`], ending at revision boundaries where possible; the last frame says
/// everything up to `upto` was delivered.
fn send_events(connection: &mut Connection, watch: u64, events: Vec<Event>, upto: LogIndex) {
    let mut frame: Vec<Event> = Vec::new();
    let mut bytes = 0;
    let mut events = events.into_iter().peekable();
    while let Some(event) = events.next() {
        bytes += event.key.len()
            + event.value.len()
            + event
                .previous
                .as_ref()
                .map_or(0, |previous| previous.value.len())
            + 64;
        let revision = event.revision;
        frame.push(event);
        let Some(following) = events.peek() else {
            break;
        };
        if bytes >= WATCH_FRAME_BYTES {
            let fragment = following.revision == revision;
            let delivered = if fragment {
                LogIndex(revision.0.saturating_sub(1))
            } else {
                revision
            };
            let body = WatchEvents {
                watch,
                revision: delivered,
                events: std::mem::take(&mut frame),
                fragment,
            };
            connection.respond(watch, Ok(ResponseBody::WatchEvents(body)));
            bytes = 0;
        }
    }
    let body = WatchEvents {
        watch,
        revision: upto,
        events: frame,
        fragment: false,
    };
    connection.respond(watch, Ok(ResponseBody::WatchEvents(body)));
}
