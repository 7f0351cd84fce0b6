//! Client sessions for exactly-once writes: per registered client, the highest applied
//! sequence and its encoded response, bounded in count and bytes, evicted least recently used
//! first.
//!
//! "Recently" is measured in log indexes, never in wall-clock time, so eviction is a pure
//! function of the applied log and every replica evicts the same sessions.
//!
//! A session exists only once registered through the log (Raft thesis §6.3): a write from a
//! client the table does not hold is refused, whatever its sequence. Were an unknown client
//! at sequence 1 taken for a new one, the retry of a first write whose session was evicted
//! meanwhile would be applied a second time.

use std::sync::Arc;

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

use super::{SESSIONS_MAX, SESSION_CACHE_BYTES_MAX};

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The highest sequence applied for this client; 0 for a session registered that has
    /// applied no write yet.
    pub(crate) sequence: u64,
    /// The encoded response to that sequence, returned again to a duplicate. Invariant: empty
    /// exactly when `sequence` is 0.
    #[serde(with = "super::bytes")]
    pub(crate) response: Vec<u8>,
    /// The index of the last entry that used the session. Invariant: unique among sessions.
    pub(crate) last_used: LogIndex,
}

/// What the session table says about an incoming `(client, sequence)`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionCheck {
    /// Newer than anything applied for the client: apply it.
    Apply,
    /// Already applied: here is the cached response.
    Duplicate(Vec<u8>),
    /// Older than the latest applied sequence.
    Stale {
        /// The client's latest applied sequence.
        latest: u64,
    },
    /// No session for the client: evicted, or never registered.
    Expired,
}

/// Every session, indexed by client and by last use.
///
/// Invariants: `by_last_used` holds exactly one `(last_used, client_id)` per session;
/// `cached_bytes` is the sum of the cached responses' lengths; after every `record`,
/// `len() <= SESSIONS_MAX` and `cached_bytes <= SESSION_CACHE_BYTES_MAX`.
///
/// The maps are persistent (O(1) clone, see [`super::KvStore`]'s data); sessions are shared
/// between clones until one is changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sessions {
    by_client: OrdMap<u64, Arc<Session>>,
    by_last_used: OrdMap<LogIndex, u64>,
    cached_bytes: usize,
}

impl Sessions {
    /// How many sessions are kept.
    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// The latest applied sequence of `client_id`, if it has a session.
    pub(crate) fn sequence(&self, client_id: u64) -> Option<u64> {
        self.by_client
            .get(&client_id)
            .map(|session| session.sequence)
    }

    /// Whether some session was last used at `index`.
    pub(crate) fn is_used_at(&self, index: LogIndex) -> bool {
        self.by_last_used.contains_key(&index)
    }

    /// Bytes of cached responses held, all sessions together.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Every session in client order, for snapshots.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &Session)> {
        self.by_client
            .iter()
            .map(|(client_id, session)| (client_id, &**session))
    }

    /// Classifies `(client_id, sequence)`. A duplicate counts as a use at `index`, so a client
    /// that keeps retrying keeps its session.
    pub(crate) fn check(&mut self, client_id: u64, sequence: u64, index: LogIndex) -> SessionCheck {
        debug_assert!(sequence >= 1, "sequence 0 passed validation");
        let Some(session) = self.by_client.get(&client_id) else {
            return SessionCheck::Expired;
        };
        if sequence > session.sequence {
            return SessionCheck::Apply;
        }
        if sequence < session.sequence {
            return SessionCheck::Stale {
                latest: session.sequence,
            };
        }
        let response = session.response.clone();
        let previous_use = session.last_used;
        if let Some(session) = self.by_client.get_mut(&client_id) {
            Arc::make_mut(session).last_used = index;
        }
        self.by_last_used.remove(&previous_use);
        self.by_last_used.insert(index, client_id);
        SessionCheck::Duplicate(response)
    }

    /// Registers a session at `index`, which becomes its client id, then evicts the least
    /// recently used sessions until the table is within its bounds. Returns the client id.
    ///
    /// Ids given this way are log indexes, hence unique. A session restored from a snapshot of
    /// a build that let clients pick random ids may hold the same id; it is replaced, which to
    /// its client looks like an eviction (its next write is refused, never applied twice).
    pub(crate) fn register(&mut self, index: LogIndex) -> u64 {
        let client_id = index.0;
        let session = Session {
            sequence: 0,
            response: Vec::new(),
            last_used: index,
        };
        self.insert(client_id, session);
        self.evict(SESSIONS_MAX, SESSION_CACHE_BYTES_MAX);
        client_id
    }

    /// Records `response` as the answer to `(client_id, sequence)` applied at `index`, then
    /// evicts the least recently used sessions until the table is within its bounds.
    pub(crate) fn record(
        &mut self,
        client_id: u64,
        sequence: u64,
        response: Vec<u8>,
        index: LogIndex,
    ) {
        let session = Session {
            sequence,
            response,
            last_used: index,
        };
        self.insert(client_id, session);
        self.evict(SESSIONS_MAX, SESSION_CACHE_BYTES_MAX);
    }

    /// Adds or replaces the session of `client_id` without evicting anything.
    pub(crate) fn insert(&mut self, client_id: u64, session: Session) {
        let added = session.response.len();
        let used = session.last_used;
        if let Some(old) = self.by_client.insert(client_id, Arc::new(session)) {
            self.by_last_used.remove(&old.last_used);
            self.cached_bytes -= old.response.len();
        }
        let displaced = self.by_last_used.insert(used, client_id);
        assert!(
            !matches!(displaced, Some(other) if other != client_id),
            "sessions {client_id} and {displaced:?} both last used at {used}"
        );
        self.cached_bytes += added;
    }

    /// Evicts least recently used sessions until at most `count_max` remain holding at most
    /// `bytes_max` of responses.
    pub(crate) fn evict(&mut self, count_max: usize, bytes_max: usize) {
        while self.by_client.len() > count_max || self.cached_bytes > bytes_max {
            let Some((last_used, client_id)) = self.by_last_used.get_min().copied() else {
                break;
            };
            self.by_last_used.remove(&last_used);
            let session = self
                .by_client
                .remove(&client_id)
                .expect("every indexed session exists");
            self.cached_bytes -= session.response.len();
        }
    }

    /// Whether the table is within its bounds.
    pub(crate) fn is_within_bounds(&self) -> bool {
        self.by_client.len() <= SESSIONS_MAX && self.cached_bytes <= SESSION_CACHE_BYTES_MAX
    }

    /// Panics if an invariant is broken.
    pub(crate) fn check_invariants(&self, applied: LogIndex) {
        assert_eq!(self.by_client.len(), self.by_last_used.len());
        let mut bytes = 0;
        for (client_id, session) in &self.by_client {
            assert_eq!(
                session.sequence == 0,
                session.response.is_empty(),
                "client {client_id}: sequence {} with {} bytes of response",
                session.sequence,
                session.response.len()
            );
            assert!(
                session.last_used <= applied,
                "client {client_id}: used in the future"
            );
            assert_eq!(self.by_last_used.get(&session.last_used), Some(client_id));
            bytes += session.response.len();
        }
        assert_eq!(bytes, self.cached_bytes);
        assert!(self.is_within_bounds());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(sessions: &mut Sessions, client_id: u64, sequence: u64, index: u64) {
        assert_eq!(
            sessions.check(client_id, sequence, LogIndex(index)),
            SessionCheck::Apply
        );
        sessions.record(client_id, sequence, vec![index as u8; 3], LogIndex(index));
    }

    #[test]
    fn only_registered_clients_are_known() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(7, 1, LogIndex(1)), SessionCheck::Expired);
        assert_eq!(sessions.check(7, 2, LogIndex(1)), SessionCheck::Expired);
        assert_eq!(sessions.register(LogIndex(7)), 7, "the id is the index");
        assert_eq!(sessions.sequence(7), Some(0));
        sessions.check_invariants(LogIndex(7));
        assert_eq!(sessions.check(7, 1, LogIndex(8)), SessionCheck::Apply);
        // Sequences may skip: a write that failed definitely leaves a gap.
        assert_eq!(sessions.check(7, 3, LogIndex(8)), SessionCheck::Apply);
    }

    #[test]
    fn registering_over_an_existing_id_replaces_that_session() {
        let mut sessions = Sessions::default();
        sessions.register(LogIndex(1));
        recorded(&mut sessions, 1, 4, 2);
        // Only a session restored from an older build (random ids) can hold a future index.
        sessions.insert(
            9,
            Session {
                sequence: 3,
                response: vec![1],
                last_used: LogIndex(3),
            },
        );
        assert_eq!(sessions.register(LogIndex(9)), 9);
        assert_eq!(sessions.sequence(9), Some(0));
        assert_eq!(sessions.len(), 2);
        sessions.check_invariants(LogIndex(9));
    }

    #[test]
    fn duplicate_stale_and_newer() {
        let mut sessions = Sessions::default();
        let client = sessions.register(LogIndex(1));
        recorded(&mut sessions, client, 1, 2);
        recorded(&mut sessions, client, 5, 3);
        assert_eq!(
            sessions.check(client, 5, LogIndex(4)),
            SessionCheck::Duplicate(vec![3; 3])
        );
        assert_eq!(
            sessions.check(client, 4, LogIndex(5)),
            SessionCheck::Stale { latest: 5 }
        );
        assert_eq!(sessions.check(client, 6, LogIndex(6)), SessionCheck::Apply);
        sessions.check_invariants(LogIndex(6));
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn eviction_takes_the_least_recently_used() {
        let mut sessions = Sessions::default();
        for index in 1..=3 {
            sessions.register(LogIndex(index));
        }
        recorded(&mut sessions, 1, 1, 4);
        recorded(&mut sessions, 2, 1, 5);
        recorded(&mut sessions, 3, 1, 6);
        // A duplicate from client 1 makes client 2 the least recently used.
        assert!(matches!(
            sessions.check(1, 1, LogIndex(7)),
            SessionCheck::Duplicate(_)
        ));
        sessions.evict(2, usize::MAX);
        assert_eq!(sessions.sequence(2), None);
        assert_eq!(sessions.sequence(1), Some(1));
        assert_eq!(sessions.sequence(3), Some(1));
        sessions.evict(2, 3);
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions.sequence(1), Some(1));
        sessions.check_invariants(LogIndex(7));
        // A registration is a use too, and counts against the bound like any session.
        sessions.register(LogIndex(8));
        sessions.evict(1, usize::MAX);
        assert_eq!(sessions.sequence(1), None);
        assert_eq!(sessions.sequence(8), Some(0));
    }
}
