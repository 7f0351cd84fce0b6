//! The line of contenders a [`Mutex`](super::Mutex) or [`Election`](super::Election) keeps
//! under its prefix: enqueue (create my key), wait until first (watch only the predecessor),
//! read the line, leave it. See the [module docs](super).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex as Lock;

use crate::client::{Client, ClientError, WatchOptions};
use crate::kv::{
    Compare, CompareOp, EventKind, KeyRange, KvError, Txn, TxnOp, TxnOpResponse, Versioned,
    SCAN_LIMIT_MAX,
};
use crate::protocol::Consistency;
use crate::types::LogIndex;

use super::{text, RecipeError, Session};

/// How often a waiter looks at its own session while it waits for its predecessor's delete
/// (a local check, no request).
const SESSION_CHECK_PERIOD: Duration = Duration::from_millis(200);

/// How many times a write whose outcome was unknown is sent (each attempt is idempotent: a
/// transaction guarded by a compare). Small: each unknown outcome already cost a whole
/// request timeout, and a guard's drop may be waiting on it.
const INDETERMINATE_RETRIES_MAX: usize = 3;

/// The pause before a read or watch is tried again after the cluster was unavailable.
pub(crate) const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(200);

/// What a waiter is doing, for diagnostics and tests: whom it watches and how often it was
/// woken. Shared by clones; get one from [`Mutex::probe`](super::Mutex::probe) or
/// [`Election::probe`](super::Election::probe).
#[derive(Clone, Debug, Default)]
pub struct WaitProbe {
    inner: Arc<ProbeInner>,
}

#[derive(Debug, Default)]
struct ProbeInner {
    waiting_on: Lock<Option<Vec<u8>>>,
    wakeups: AtomicU64,
}

impl WaitProbe {
    /// The predecessor key being watched now, if waiting.
    pub fn waiting_on(&self) -> Option<Vec<u8>> {
        self.inner.waiting_on.lock().clone()
    }

    /// How many times a wait ended because the watched predecessor was deleted.
    pub fn wakeups(&self) -> u64 {
        self.inner.wakeups.load(Ordering::Acquire)
    }

    fn set_waiting_on(&self, key: Option<Vec<u8>>) {
        *self.inner.waiting_on.lock() = key;
    }

    fn woken(&self) {
        self.inner.wakeups.fetch_add(1, Ordering::AcqRel);
    }
}

/// One key of the line.
#[derive(Clone, Debug)]
pub(crate) struct Contender {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: LogIndex,
    pub mod_revision: LogIndex,
}

/// The line under `prefix`, as one session sees it.
pub(crate) struct Queue {
    pub session: Session,
    /// `name/`.
    pub prefix: Vec<u8>,
    /// The name, for errors.
    pub name: String,
    pub probe: WaitProbe,
}

impl Queue {
    pub fn new(session: &Session, name: &str) -> Queue {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(b'/');
        Queue {
            session: session.clone(),
            prefix,
            name: name.to_string(),
            probe: WaitProbe::default(),
        }
    }

    fn client(&self) -> &Client {
        self.session.client()
    }

    /// This session's key: `name/<lease-id-hex>`.
    pub fn own_key(&self) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{:x}", self.session.lease().0).as_bytes());
        key
    }

    /// Puts `key` = `value` with the session's lease if it does not exist; returns its create
    /// revision. An existing key is this call's own only if an earlier attempt's outcome was
    /// unknown and it holds `value`; otherwise the session is already in line
    /// ([`RecipeError::SessionInUse`]).
    pub fn enqueue(&self, key: &[u8], value: &[u8]) -> Result<LogIndex, RecipeError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .then([TxnOp::put(key, value).with_lease(self.session.lease())])
            .otherwise([TxnOp::get(key)]);
        let mut retried = false;
        for _ in 0..INDETERMINATE_RETRIES_MAX {
            if self.session.done() {
                return Err(RecipeError::SessionExpired);
            }
            let response = match self.client().txn(txn.clone()) {
                Ok(response) => response,
                Err(error) if error.is_indeterminate() => {
                    retried = true;
                    continue;
                }
                Err(ClientError::Rejected(KvError::LeaseNotFound { .. })) => {
                    return Err(RecipeError::SessionExpired)
                }
                Err(error) => return Err(error.into()),
            };
            match response.responses.first() {
                Some(TxnOpResponse::Put(outcome)) if response.succeeded => {
                    if let Some(metadata) = outcome.current {
                        return Ok(metadata.create_revision);
                    }
                }
                Some(TxnOpResponse::Get(Some(Versioned {
                    value: held,
                    metadata,
                }))) => {
                    if retried && held.as_slice() == value {
                        return Ok(metadata.create_revision);
                    }
                    return Err(RecipeError::SessionInUse { key: text(key) });
                }
                // Gone between two attempts: try again.
                Some(TxnOpResponse::Get(None)) => continue,
                _ => {}
            }
            return Err(ClientError::Protocol {
                reason: format!("unexpected answer to an enqueue: {response:?}"),
            }
            .into());
        }
        Err(ClientError::Indeterminate {
            reason: format!("enqueueing {} kept timing out", text(key)),
        }
        .into())
    }

    /// Deletes `key` if it is still the incarnation created at `create_revision`; returns
    /// whether it was (false: already gone, its lease expired or revoked).
    pub fn remove(&self, key: &[u8], create_revision: LogIndex) -> Result<bool, RecipeError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                key,
                CompareOp::Equal,
                create_revision.0,
            )])
            .then([TxnOp::delete(key)]);
        let mut last_error = None;
        for _ in 0..INDETERMINATE_RETRIES_MAX {
            match self.client().txn(txn.clone()) {
                // After an unknown outcome, "already gone" may be our own delete.
                Ok(response) => return Ok(response.succeeded || last_error.is_some()),
                Err(error) if error.is_indeterminate() => last_error = Some(error),
                Err(error) => return Err(error.into()),
            }
        }
        Err(last_error
            .unwrap_or(ClientError::Indeterminate {
                reason: "removing a key".into(),
            })
            .into())
    }

    /// Every contender in line, in key order, and a revision the read is at or after.
    pub fn read(&self) -> Result<(LogIndex, Vec<Contender>), RecipeError> {
        read_line(self.client(), &self.prefix)
    }

    /// The first in line: the smallest create revision.
    pub fn first(contenders: &[Contender]) -> Option<&Contender> {
        contenders
            .iter()
            .min_by_key(|contender| contender.create_revision)
    }

    /// Waits until `key` (created at `create_revision`) is first in line, or `deadline`.
    ///
    /// Why a line read page by page is enough: keys created before ours can only disappear
    /// (a key created again gets a later revision), so one not seen is gone for good; and a
    /// predecessor seen alive at a read at or after revision `r` is deleted, if ever, at a
    /// revision after `r`, so a watch from `r + 1` cannot miss it.
    pub fn wait_first(
        &self,
        key: &[u8],
        create_revision: LogIndex,
        deadline: Option<Instant>,
    ) -> Result<(), RecipeError> {
        let result = self.wait_first_inner(key, create_revision, deadline);
        self.probe.set_waiting_on(None);
        result
    }

    fn wait_first_inner(
        &self,
        key: &[u8],
        create_revision: LogIndex,
        deadline: Option<Instant>,
    ) -> Result<(), RecipeError> {
        loop {
            self.check(deadline)?;
            let (revision, contenders) = match self.read() {
                Ok(read) => read,
                Err(RecipeError::Client(error)) if transient(&error) => {
                    std::thread::sleep(UNAVAILABLE_PAUSE);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let present = contenders.iter().any(|contender| {
                contender.key == key && contender.create_revision == create_revision
            });
            if !present {
                if self.session.done() {
                    return Err(RecipeError::SessionExpired);
                }
                return Err(RecipeError::Lost { key: text(key) });
            }
            let predecessor = contenders
                .iter()
                .filter(|contender| contender.create_revision < create_revision)
                .max_by_key(|contender| contender.create_revision);
            let Some(predecessor) = predecessor else {
                return Ok(());
            };
            self.probe.set_waiting_on(Some(predecessor.key.clone()));
            if self.wait_deleted(&predecessor.key, revision.max(create_revision), deadline)? {
                self.probe.woken();
            }
        }
    }

    /// Watches `key` from `after + 1` until it is deleted (true), or until the watch cannot
    /// tell and the line must be read again (false). Only this one key is watched.
    pub fn wait_deleted(
        &self,
        key: &[u8],
        after: LogIndex,
        deadline: Option<Instant>,
    ) -> Result<bool, RecipeError> {
        let options = WatchOptions::key(key).start(after.next()).no_put();
        let mut watch = loop {
            self.check(deadline)?;
            match self.client().watch(options.clone()) {
                Ok(watch) => break watch,
                // The history moved past `after`: the key may be gone; read again.
                Err(ClientError::Compacted { .. }) => return Ok(false),
                Err(error) if transient(&error) => std::thread::sleep(UNAVAILABLE_PAUSE),
                Err(error) => return Err(error.into()),
            }
        };
        loop {
            self.check(deadline)?;
            let slice = match deadline {
                Some(deadline) => {
                    SESSION_CHECK_PERIOD.min(deadline.saturating_duration_since(Instant::now()))
                }
                None => SESSION_CHECK_PERIOD,
            };
            match watch.recv_timeout(slice) {
                Ok(Some(response)) => {
                    if response
                        .events
                        .iter()
                        .any(|event| event.kind == EventKind::Delete)
                    {
                        return Ok(true);
                    }
                }
                Ok(None) => {}
                Err(ClientError::Compacted { .. }) => return Ok(false),
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Errors if the session is over or the deadline passed.
    fn check(&self, deadline: Option<Instant>) -> Result<(), RecipeError> {
        if self.session.done() {
            return Err(RecipeError::SessionExpired);
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(RecipeError::Timeout {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// Every key under `prefix`, in key order, and a revision the read is at or after (a
/// linearizable read, page by page: see [`Queue::wait_first`] for why that is enough).
pub(crate) fn read_line(
    client: &Client,
    prefix: &[u8],
) -> Result<(LogIndex, Vec<Contender>), RecipeError> {
    let whole = KeyRange::prefix(prefix);
    let mut range = whole.clone();
    let mut revision = None;
    let mut contenders = Vec::new();
    loop {
        let page = client.scan_with(range, SCAN_LIMIT_MAX, Consistency::Linearizable)?;
        revision.get_or_insert(page.applied);
        let more = page.value.more;
        for (key, versioned) in page.value.entries {
            contenders.push(Contender {
                key,
                value: versioned.value,
                create_revision: versioned.metadata.create_revision,
                mod_revision: versioned.metadata.mod_revision,
            });
        }
        match contenders.last() {
            Some(last) if more => range = whole.after(&last.key),
            _ => break,
        }
    }
    Ok((revision.unwrap_or(LogIndex(0)), contenders))
}

/// Whether a read or watch that failed with `error` may succeed if tried again (no leader
/// for now, nodes unreachable).
pub(crate) fn transient(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unavailable { .. } | ClientError::Timeout { .. }
    )
}
