//! Client sessions for exactly-once writes: per client, the highest applied sequence and its
//! encoded response, bounded in count and bytes, evicted least recently used first.
//!
//! "Recently" is measured in log indexes, never in wall-clock time, so eviction is a pure
//! function of the applied log and every replica evicts the same sessions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

use super::{SESSIONS_MAX, SESSION_CACHE_BYTES_MAX};

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The highest sequence applied for this client. Invariant: at least 1.
    pub(crate) sequence: u64,
    /// The encoded response to that sequence, returned again to a duplicate.
    #[serde(with = "super::bytes")]
    pub(crate) response: Vec<u8>,
    /// The index of the last entry that used the session. Invariant: unique among sessions.
    pub(crate) last_used: LogIndex,
}

/// What the session table says about an incoming `(client, sequence)`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionCheck {
    /// Newer than anything applied for the client (or the client's first write): apply it.
    Apply,
    /// Already applied: here is the cached response.
    Duplicate(Vec<u8>),
    /// Older than the latest applied sequence.
    Stale {
        /// The client's latest applied sequence.
        latest: u64,
    },
    /// Unknown client with a sequence other than 1.
    Expired,
}

/// Every session, indexed by client and by last use.
///
/// Invariants: `by_last_used` holds exactly one `(last_used, client_id)` per session;
/// `cached_bytes` is the sum of the cached responses' lengths; after every `record`,
/// `len() <= SESSIONS_MAX` and `cached_bytes <= SESSION_CACHE_BYTES_MAX`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sessions {
    by_client: BTreeMap<u64, Session>,
    by_last_used: BTreeMap<LogIndex, u64>,
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

    /// Every session in client order, for snapshots.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &Session)> {
        self.by_client.iter()
    }

    /// Classifies `(client_id, sequence)`. A duplicate counts as a use at `index`, so a client
    /// that keeps retrying keeps its session.
    pub(crate) fn check(&mut self, client_id: u64, sequence: u64, index: LogIndex) -> SessionCheck {
        let Some(session) = self.by_client.get_mut(&client_id) else {
            return if sequence == 1 {
                SessionCheck::Apply
            } else {
                SessionCheck::Expired
            };
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
        let previous_use = std::mem::replace(&mut session.last_used, index);
        self.by_last_used.remove(&previous_use);
        self.by_last_used.insert(index, client_id);
        SessionCheck::Duplicate(response)
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
        if let Some(old) = self.by_client.insert(client_id, session) {
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
            let Some((_, client_id)) = self.by_last_used.pop_first() else {
                break;
            };
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
            assert!(session.sequence >= 1, "client {client_id}: sequence 0");
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
    fn new_client_must_start_at_one() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(7, 2, LogIndex(1)), SessionCheck::Expired);
        assert_eq!(sessions.check(7, 1, LogIndex(1)), SessionCheck::Apply);
    }

    #[test]
    fn duplicate_stale_and_newer() {
        let mut sessions = Sessions::default();
        recorded(&mut sessions, 7, 1, 1);
        recorded(&mut sessions, 7, 5, 2);
        assert_eq!(
            sessions.check(7, 5, LogIndex(3)),
            SessionCheck::Duplicate(vec![2; 3])
        );
        assert_eq!(
            sessions.check(7, 4, LogIndex(4)),
            SessionCheck::Stale { latest: 5 }
        );
        assert_eq!(sessions.check(7, 6, LogIndex(5)), SessionCheck::Apply);
        sessions.check_invariants(LogIndex(5));
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn eviction_takes_the_least_recently_used() {
        let mut sessions = Sessions::default();
        recorded(&mut sessions, 1, 1, 1);
        recorded(&mut sessions, 2, 1, 2);
        recorded(&mut sessions, 3, 1, 3);
        // A duplicate from client 1 makes client 2 the least recently used.
        assert!(matches!(
            sessions.check(1, 1, LogIndex(4)),
            SessionCheck::Duplicate(_)
        ));
        sessions.evict(2, usize::MAX);
        assert_eq!(sessions.sequence(2), None);
        assert_eq!(sessions.sequence(1), Some(1));
        assert_eq!(sessions.sequence(3), Some(1));
        sessions.evict(2, 3);
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions.sequence(1), Some(1));
        sessions.check_invariants(LogIndex(4));
    }
}
