//! A simulated network for in-process clusters: partitions, cut links, loss, delay, long
//! reordering, and counters — all from one seeded RNG.
//!
//! Messages without delay are delivered at once onto the receiver's inbound queue; delayed
//! ones wait in a time-ordered queue served by one `sim-net` thread.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::raft::Message;
use crate::transport::{Inbound, Transport};
use crate::types::NodeId;

/// Fault settings of an unreliable network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unreliable {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Each delivered message is delayed uniformly up to this.
    pub delay_max: Duration,
    /// Probability that a message is held back for a long time (reordering far past its
    /// successors), up to `long_delay_max`.
    pub long_delay_probability: f64,
    /// The longest long delay.
    pub long_delay_max: Duration,
}

impl Default for Unreliable {
    /// 10% loss, up to 25 ms delay, 1% of messages held back up to 1 s.
    fn default() -> Self {
        Unreliable {
            loss: 0.1,
            delay_max: Duration::from_millis(25),
            long_delay_probability: 0.01,
            long_delay_max: Duration::from_secs(1),
        }
    }
}

/// Message and byte counters of the network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Messages offered to the network.
    pub sent: u64,
    /// Bytes (approximate) offered to the network.
    pub sent_bytes: u64,
    /// Messages delivered onto a receiver's queue.
    pub delivered: u64,
    /// Messages dropped by a cut link, a partition, loss, a crashed receiver or a full queue.
    pub dropped: u64,
    /// Messages sent, by sender.
    pub sent_by_node: BTreeMap<NodeId, u64>,
}

#[derive(Debug)]
struct NetworkState {
    endpoints: BTreeMap<NodeId, Sender<Inbound>>,
    /// Crashed nodes: everything to or from them is dropped.
    down: BTreeSet<NodeId>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    unreliable: Option<Unreliable>,
    rng: StdRng,
    counters: NetworkCounters,
    /// (deliver at, sequence) -> message.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_messages: BTreeMap<u64, Message>,
    sequence: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<NetworkState>,
    wake: Condvar,
    stop: AtomicBool,
}

/// A simulated network. Dropping it stops its delivery thread; transports connected to it
/// then deliver only undelayed messages.
#[derive(Debug)]
pub struct SimNetwork {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// One node's sending side of a [`SimNetwork`].
#[derive(Clone, Debug)]
pub struct SimTransport {
    shared: Arc<Shared>,
}

impl SimNetwork {
    /// A reliable network whose random choices come from `seed`.
    pub fn new(seed: u64) -> SimNetwork {
        let shared = Arc::new(Shared {
            state: Mutex::new(NetworkState {
                endpoints: BTreeMap::new(),
                down: BTreeSet::new(),
                cut: BTreeSet::new(),
                unreliable: None,
                rng: StdRng::seed_from_u64(seed),
                counters: NetworkCounters::default(),
                delayed: BinaryHeap::new(),
                delayed_messages: BTreeMap::new(),
                sequence: 0,
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sim-net".into())
            .spawn(move || run_delivery(&thread_shared))
            .expect("spawn sim-net thread");
        SimNetwork {
            shared,
            thread: Some(thread),
        }
    }

    /// Connects node `id`: messages to it go onto `inbound`. Replaces an earlier endpoint
    /// (a restarted node).
    pub fn connect(&self, id: NodeId, inbound: Sender<Inbound>) -> SimTransport {
        let mut state = self.shared.state.lock();
        state.endpoints.insert(id, inbound);
        state.down.remove(&id);
        drop(state);
        SimTransport {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Takes node `id` off the network (crashed): messages to it and late messages from its
    /// dead threads are dropped until it connects again.
    pub fn remove(&self, id: NodeId) {
        let mut state = self.shared.state.lock();
        state.endpoints.remove(&id);
        state.down.insert(id);
    }

    /// Drops every message from `from` to `to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.shared.state.lock().cut.insert((from, to));
    }

    /// Cuts every link between `id` and every other node, both ways.
    pub fn isolate(&self, id: NodeId, all: &[NodeId]) {
        let mut state = self.shared.state.lock();
        for &other in all.iter().filter(|&&other| other != id) {
            state.cut.insert((id, other));
            state.cut.insert((other, id));
        }
    }

    /// Splits the nodes into groups that cannot talk to each other.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        let mut state = self.shared.state.lock();
        for (k, group) in groups.iter().enumerate() {
            for other in groups.iter().skip(k + 1) {
                for &a in group {
                    for &b in other {
                        state.cut.insert((a, b));
                        state.cut.insert((b, a));
                    }
                }
            }
        }
    }

    /// Restores links of `id` in both directions.
    pub fn reconnect(&self, id: NodeId) {
        self.shared
            .state
            .lock()
            .cut
            .retain(|&(from, to)| from != id && to != id);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.shared.state.lock().cut.clear();
    }

    /// Turns unreliable mode on (with these settings) or off.
    pub fn set_unreliable(&self, unreliable: Option<Unreliable>) {
        self.shared.state.lock().unreliable = unreliable;
    }

    /// The counters so far.
    pub fn counters(&self) -> NetworkCounters {
        self.shared.state.lock().counters.clone()
    }
}

impl Drop for SimNetwork {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn deliver(state: &mut NetworkState, message: Message) {
    if state.cut.contains(&(message.from, message.to)) || state.down.contains(&message.from) {
        state.counters.dropped += 1;
        return;
    }
    match state.endpoints.get(&message.to) {
        Some(inbound) if inbound.try_send((message.from, message)).is_ok() => {
            state.counters.delivered += 1
        }
        _ => state.counters.dropped += 1,
    }
}

impl Transport for SimTransport {
    fn send(&self, message: Message) {
        let mut state = self.shared.state.lock();
        let state = &mut *state;
        state.counters.sent += 1;
        state.counters.sent_bytes += message.size_bytes();
        *state.counters.sent_by_node.entry(message.from).or_default() += 1;
        if state.cut.contains(&(message.from, message.to)) || state.down.contains(&message.from) {
            state.counters.dropped += 1;
            return;
        }
        let Some(unreliable) = state.unreliable else {
            deliver(state, message);
            return;
        };
        if state.rng.random_bool(unreliable.loss.clamp(0.0, 1.0)) {
            state.counters.dropped += 1;
            return;
        }
        let long = state
            .rng
            .random_bool(unreliable.long_delay_probability.clamp(0.0, 1.0));
        let delay_max = if long {
            unreliable.long_delay_max
        } else {
            unreliable.delay_max
        };
        let delay = delay_max.mul_f64(state.rng.random::<f64>());
        state.sequence += 1;
        let sequence = state.sequence;
        state
            .delayed
            .push(Reverse((Instant::now() + delay, sequence)));
        state.delayed_messages.insert(sequence, message);
        self.shared.wake.notify_one();
    }
}

/// The `sim-net` thread: delivers delayed messages when their time comes.
fn run_delivery(shared: &Shared) {
    let mut state = shared.state.lock();
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        match state.delayed.peek().copied() {
            Some(Reverse((at, sequence))) if at <= now => {
                state.delayed.pop();
                if let Some(message) = state.delayed_messages.remove(&sequence) {
                    deliver(&mut state, message);
                }
            }
            Some(Reverse((at, _))) => {
                shared.wake.wait_until(&mut state, at);
            }
            None => {
                shared.wake.wait_for(&mut state, Duration::from_millis(100));
            }
        }
    }
}
