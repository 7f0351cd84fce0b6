//! The leader's lease keeper: when each lease expires, renewals, and the revokes of expired
//! leases.
//!
//! The state machine holds each lease's TTL and attached keys and nothing about time, so
//! apply stays deterministic. Time lives here, on the leader only, in memory, on the monotonic
//! clock (`Instant`), as in etcd's lessor:
//!
//! ```text
//!  [n1-leases] every LEASE_TICK:  status ─► took office in a new term?  ─► every lease:
//!                                                                          deadline = now + TTL
//!                                   │      still leader: leases new in the store get now + TTL,
//!                                   │      revoked ones are forgotten
//!                                   └────► expired (≤ LEASE_REVOKES_PER_TICK_MAX) ─► propose
//!                                          Command::lease_revoke (again after REVOKE_RETRY)
//!  event loops: LeaseKeepAlive / LeaseTimeToLive / LeaseList ─► read barrier (leader, all
//!               acknowledged grants applied) ─► LeaseKeeper::serve ─► deadline = now + TTL
//! ```
//!
//! Consequences, by design:
//! - **Followers never expire anything**, and a keep-alive is answered only by the leader;
//!   a renewal is not replicated, so it costs no log entry.
//! - **After a leader change every lease gets its full TTL again** from the moment the new
//!   leader's keeper takes office (it cannot know when the old leader last renewed), so no
//!   lease expires early because of a failover; a lease may live up to one TTL longer.
//! - A revoke proposed for a lease that is already gone is refused by apply as
//!   `LeaseNotFound` and changes nothing, so retrying a revoke is safe.
//! - TTLs shorter than the minimum (`ceil(3/2 · election timeout)` in whole seconds, etcd's
//!   `minTTL`) are raised to it, so an election cannot by itself outlast a lease.
//!
//! The keeper's decisions are a plain value ([`LeaseClock`]) driven with the time passed in,
//! so a deterministic simulation could drive it; the thread around it only reads the clock
//! and proposes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::kv::{Command, KvError, KvStore, LeaseId};
use crate::log;
use crate::node::{CompletionSender, Node, ProposalCompletion};
use crate::protocol::{LeaseTimeToLiveReply, ResponseBody, ServerError};
use crate::raft::RoleKind;
use crate::types::Term;

/// How often the keeper looks at leadership and at expired leases.
pub const LEASE_TICK: Duration = Duration::from_millis(100);

/// The most revokes the keeper proposes per tick (the rest wait for the next tick).
pub const LEASE_REVOKES_PER_TICK_MAX: usize = 64;

/// How long after proposing a lease's revoke the keeper proposes it again if the lease is
/// still in the store (the proposal was dropped by a leader change, say).
pub const REVOKE_RETRY: Duration = Duration::from_secs(1);

/// Completions of revokes in flight at most; the channel holds every one.
const REVOKE_COMPLETIONS_MAX: usize = 4 * LEASE_REVOKES_PER_TICK_MAX;

const _: () = assert!(REVOKE_COMPLETIONS_MAX >= LEASE_REVOKES_PER_TICK_MAX);

/// A lease request the keeper serves after a read barrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaseRequest {
    /// Renew.
    KeepAlive(LeaseId),
    /// Time to live, with the keys or not.
    TimeToLive(LeaseId, bool),
    /// Every lease.
    List,
}

/// One lease's clock on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadline {
    /// The TTL it is renewed to (the granted one, at least `ttl_min`).
    ttl: Duration,
    /// When it expires unless renewed.
    expires: Instant,
    /// When its revoke was last proposed, if it was.
    revoke_proposed: Option<Instant>,
}

/// The keeper's decisions as a value: which term it keeps leases for and each lease's
/// deadline. Every method takes the time; none reads a clock.
///
/// Invariant: `deadlines` is empty unless `term` is `Some`.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// The term in which this node leads and loaded the leases; `None` when not leading.
    term: Option<Term>,
    deadlines: BTreeMap<LeaseId, Deadline>,
    ttl_min: Duration,
}

impl LeaseClock {
    /// A clock for a node that does not lead yet; TTLs below `ttl_min` count as `ttl_min`.
    pub fn new(ttl_min: Duration) -> LeaseClock {
        LeaseClock {
            term: None,
            deadlines: BTreeMap::new(),
            ttl_min,
        }
    }

    fn ttl(&self, ttl_seconds: u64) -> Duration {
        Duration::from_secs(ttl_seconds).max(self.ttl_min)
    }

    fn deadline(&self, ttl_seconds: u64, now: Instant) -> Deadline {
        let ttl = self.ttl(ttl_seconds);
        Deadline {
            ttl,
            // An absurd TTL that does not fit the clock never expires.
            expires: now
                .checked_add(ttl)
                .unwrap_or(now + Duration::from_secs(1 << 40)),
            revoke_proposed: None,
        }
    }

    /// Brings the clock up to date: `leading` is `Some(term)` while this node leads in
    /// `term`; `leases` lists the store's leases with their TTLs (seconds). Taking office in a
    /// new term gives every lease its full TTL from `now`; while leading, a lease new to the
    /// clock gets its full TTL from `now` and a lease gone from the store is forgotten.
    pub fn observe(&mut self, leading: Option<Term>, leases: &[(LeaseId, u64)], now: Instant) {
        if leading != self.term {
            self.deadlines.clear();
            self.term = leading;
            if let Some(term) = leading {
                log::info(
                    "lease keeper took office: every lease gets its full TTL",
                    &[("term", &term.0), ("leases", &leases.len())],
                );
            }
        }
        if self.term.is_none() {
            return;
        }
        let mut kept = BTreeMap::new();
        for (lease, ttl_seconds) in leases {
            let deadline = match self.deadlines.get(lease) {
                Some(deadline) => *deadline,
                None => self.deadline(*ttl_seconds, now),
            };
            kept.insert(*lease, deadline);
        }
        self.deadlines = kept;
    }

    /// Expired leases whose revoke should be proposed now (never proposed, or not for
    /// [`REVOKE_RETRY`]), at most `limit`, earliest first; marks them proposed at `now`.
    pub fn take_expired(&mut self, now: Instant, limit: usize) -> Vec<LeaseId> {
        let mut due: Vec<(Instant, LeaseId)> = self
            .deadlines
            .iter()
            .filter(|(_, deadline)| {
                deadline.expires <= now
                    && deadline
                        .revoke_proposed
                        .is_none_or(|at| now.saturating_duration_since(at) >= REVOKE_RETRY)
            })
            .map(|(lease, deadline)| (deadline.expires, *lease))
            .collect();
        due.sort();
        due.truncate(limit);
        for (_, lease) in &due {
            if let Some(deadline) = self.deadlines.get_mut(lease) {
                deadline.revoke_proposed = Some(now);
            }
        }
        due.into_iter().map(|(_, lease)| lease).collect()
    }

    /// Renews `lease` (granted `ttl_seconds`, `None` if the store does not hold it) to its
    /// full TTL from `now`. An expired lease is not renewed: its revoke is on the way.
    pub fn renew(
        &mut self,
        lease: LeaseId,
        ttl_seconds: Option<u64>,
        now: Instant,
    ) -> Result<(), KvError> {
        let not_found = KvError::LeaseNotFound { lease };
        let ttl_seconds = ttl_seconds.ok_or_else(|| not_found.clone())?;
        if self.term.is_none() {
            return Err(not_found);
        }
        if let Some(deadline) = self.deadlines.get(&lease) {
            if deadline.expires <= now {
                return Err(not_found);
            }
        }
        let deadline = self.deadline(ttl_seconds, now);
        self.deadlines.insert(lease, deadline);
        Ok(())
    }

    /// How long `lease` (granted `ttl_seconds`) has left at `now`: its full TTL if the clock
    /// has not seen it yet (it starts now), zero once expired.
    pub fn remaining(&mut self, lease: LeaseId, ttl_seconds: u64, now: Instant) -> Duration {
        if self.term.is_none() {
            return self.ttl(ttl_seconds);
        }
        let deadline = match self.deadlines.get(&lease) {
            Some(deadline) => *deadline,
            None => {
                let deadline = self.deadline(ttl_seconds, now);
                self.deadlines.insert(lease, deadline);
                deadline
            }
        };
        deadline.expires.saturating_duration_since(now)
    }

    /// The term the clock keeps leases for, if this node leads.
    pub fn term(&self) -> Option<Term> {
        self.term
    }
}

/// The keeper shared by the server's event loops and its `leases` thread.
pub(crate) struct LeaseKeeper {
    node: Arc<Node<KvStore>>,
    /// Guards the clock; held briefly, never across I/O or a proposal. Lock order: this lock,
    /// then the node's state-machine lock (reads of the store's leases).
    clock: Mutex<LeaseClock>,
    ttl_min: Duration,
}

impl LeaseKeeper {
    /// A keeper for `node`; the minimum TTL is `ceil(3/2 · election timeout)` in seconds.
    pub(crate) fn new(node: Arc<Node<KvStore>>) -> LeaseKeeper {
        let ttl_min = ttl_min(node.election_timeout());
        LeaseKeeper {
            node,
            clock: Mutex::new(LeaseClock::new(ttl_min)),
            ttl_min,
        }
    }

    /// The shortest TTL a lease gets, in whole seconds: grants asking for less are raised to
    /// it.
    pub(crate) fn ttl_min_seconds(&self) -> u64 {
        self.ttl_min.as_secs()
    }

    /// The term this node leads in, if it does.
    fn leading(&self) -> Option<Term> {
        let status = self.node.status();
        (status.role == RoleKind::Leader).then_some(status.term)
    }

    /// Updates the clock from the node's role and the store's leases.
    fn observe(&self, now: Instant) {
        let leading = self.leading();
        let leases = match leading {
            Some(_) => self.node.with_state_machine(KvStore::lease_table).ttls(),
            None => Vec::new(),
        };
        self.clock.lock().observe(leading, &leases, now);
    }

    /// Serves `request` after its read barrier completed (so this node led and had applied
    /// every grant acknowledged before the request).
    pub(crate) fn serve(&self, request: &LeaseRequest) -> Result<ResponseBody, ServerError> {
        let now = Instant::now();
        let leading = self.leading();
        let mut clock = self.clock.lock();
        if leading != clock.term() {
            // Took office since the last tick: load every lease first (full TTLs).
            let leases = match leading {
                Some(_) => self.node.with_state_machine(KvStore::lease_table).ttls(),
                None => Vec::new(),
            };
            clock.observe(leading, &leases, now);
        }
        if leading.is_none() {
            return Err(ServerError::NotLeader {
                leader_id: self.node.status().leader,
                leader_client_address: None,
            });
        }
        match request {
            LeaseRequest::KeepAlive(lease) => {
                let ttl_seconds = self.node.with_state_machine(|kv| kv.lease_ttl(*lease));
                clock
                    .renew(*lease, ttl_seconds, now)
                    .map_err(ServerError::Invalid)?;
                Ok(ResponseBody::LeaseKeptAlive {
                    lease: *lease,
                    ttl_seconds: ttl_seconds.unwrap_or_default(),
                })
            }
            LeaseRequest::TimeToLive(lease, with_keys) => {
                let found = self.node.with_state_machine(|kv| {
                    let ttl = kv.lease_ttl(*lease)?;
                    let keys = if *with_keys {
                        kv.lease_keys(*lease).unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    Some((ttl, keys))
                });
                let (granted_ttl_seconds, keys) =
                    found.ok_or(ServerError::Invalid(KvError::LeaseNotFound {
                        lease: *lease,
                    }))?;
                let remaining = clock.remaining(*lease, granted_ttl_seconds, now);
                Ok(ResponseBody::LeaseTimeToLive(LeaseTimeToLiveReply {
                    lease: *lease,
                    granted_ttl_seconds,
                    remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                    keys,
                }))
            }
            LeaseRequest::List => {
                let leases = self.node.with_state_machine(KvStore::lease_table).ttls();
                Ok(ResponseBody::Leases(
                    leases.into_iter().map(|(lease, _)| lease).collect(),
                ))
            }
        }
    }

    /// One tick of the `leases` thread: update the clock, propose the revokes due.
    fn tick(&self, completions: &CompletionSender<Result<Vec<u8>, crate::ProposeError>>) {
        let now = Instant::now();
        self.observe(now);
        let expired = self
            .clock
            .lock()
            .take_expired(now, LEASE_REVOKES_PER_TICK_MAX);
        if expired.is_empty() {
            return;
        }
        let batch: Vec<(Vec<u8>, u64)> = expired
            .iter()
            .filter_map(|lease| {
                let bytes = Command::lease_revoke(*lease).encode().ok()?;
                Some((bytes, lease.0))
            })
            .collect();
        for (tag, outcome) in self.node.submit_proposals(batch, completions) {
            match outcome {
                Ok(_) => log::info("lease expired: revoke proposed", &[("lease", &tag)]),
                // Retried after REVOKE_RETRY if this node still leads.
                Err(error) => log::warn(
                    "lease expired, revoke not proposed",
                    &[("lease", &tag), ("error", &error)],
                ),
            }
        }
    }
}

/// `ceil(3/2 · election_timeout)` in whole seconds, at least 1 s (etcd's `minTTL`).
pub(crate) fn ttl_min(election_timeout: Duration) -> Duration {
    let nanos = election_timeout.as_nanos().saturating_mul(3) / 2;
    let seconds = nanos.div_ceil(1_000_000_000).max(1);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(u64::MAX))
}

/// Starts the `{id}-leases` thread; it stops when `stop` is dropped or sent to.
pub(crate) fn spawn(
    keeper: Arc<LeaseKeeper>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("{}-leases", keeper.node.id());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || run(&keeper, &stop))
}

fn run(keeper: &LeaseKeeper, stop: &Receiver<()>) {
    let (completions_tx, completions_rx): (Sender<ProposalCompletion>, _) =
        crossbeam_channel::bounded(REVOKE_COMPLETIONS_MAX);
    let completions = CompletionSender::from(completions_tx);
    loop {
        match stop.recv_timeout(LEASE_TICK) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        // Outcomes only matter for the log: a revoke that failed is proposed again.
        for completion in completions_rx.try_iter() {
            if let Err(error) = completion.outcome {
                log::warn(
                    "lease revoke did not apply",
                    &[("lease", &completion.tag), ("error", &error)],
                );
            }
        }
        keeper.tick(&completions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L1: LeaseId = LeaseId(1);
    const L2: LeaseId = LeaseId(2);

    #[test]
    fn ttl_min_is_three_halves_of_the_election_timeout_in_whole_seconds() {
        assert_eq!(ttl_min(Duration::from_millis(150)), Duration::from_secs(1));
        assert_eq!(ttl_min(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(ttl_min(Duration::from_secs(2)), Duration::from_secs(3));
    }

    #[test]
    fn a_new_term_gives_every_lease_its_full_ttl() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(Duration::from_secs(1));
        clock.observe(Some(Term(2)), &[(L1, 5), (L2, 10)], start);
        let later = start + Duration::from_secs(4);
        assert_eq!(clock.remaining(L1, 5, later), Duration::from_secs(1));
        // Deposed, then leading again: the clock starts over.
        clock.observe(None, &[], later);
        assert_eq!(clock.take_expired(later + Duration::from_secs(60), 10), []);
        clock.observe(Some(Term(4)), &[(L1, 5), (L2, 10)], later);
        assert_eq!(clock.remaining(L1, 5, later), Duration::from_secs(5));
        assert_eq!(clock.take_expired(later + Duration::from_secs(5), 10), [L1]);
    }

    #[test]
    fn expiry_renewal_and_retry() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(Duration::from_secs(2));
        // A 1 s lease is raised to the 2 s minimum.
        clock.observe(Some(Term(1)), &[(L1, 1), (L2, 3)], start);
        let at = |millis| start + Duration::from_millis(millis);
        assert_eq!(clock.take_expired(at(1_999), 10), []);
        clock.renew(L2, Some(3), at(1_500)).unwrap();
        assert_eq!(clock.take_expired(at(2_000), 10), [L1]);
        // Proposed once; again only after REVOKE_RETRY.
        assert_eq!(clock.take_expired(at(2_500), 10), []);
        assert_eq!(clock.take_expired(at(3_000), 10), [L1]);
        // An expired lease is not renewed; an unknown one neither.
        assert!(clock.renew(L1, Some(1), at(3_000)).is_err());
        assert!(clock.renew(LeaseId(9), None, at(3_000)).is_err());
        // The revoke applied: the lease is gone from the store, and from the clock.
        clock.observe(Some(Term(1)), &[(L2, 3)], at(3_100));
        assert_eq!(clock.take_expired(at(4_499), 10), []);
        assert_eq!(clock.take_expired(at(4_500), 10), [L2]);
        // The bound per tick, earliest first.
        let many: Vec<_> = (10..20).map(|id| (LeaseId(id), 5 + id)).collect();
        clock.observe(Some(Term(3)), &many, start);
        assert_eq!(
            clock.take_expired(at(100_000), 3),
            [LeaseId(10), LeaseId(11), LeaseId(12)]
        );
    }

    #[test]
    fn a_follower_clock_keeps_nothing() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(Duration::from_secs(1));
        clock.observe(None, &[(L1, 1)], start);
        assert_eq!(clock.take_expired(start + Duration::from_secs(100), 10), []);
        assert!(clock.renew(L1, Some(1), start).is_err());
    }
}
