//! The history model — requests, responses, outcomes, operations — and [`History`], the
//! thread-safe recorder that concurrent clients write into.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The client that issued an operation. A client is expected to issue one operation at a
/// time, but the checker does not rely on it: only the invocation and completion times order
/// operations.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "c{}", self.0)
    }
}

/// What a client asked the store to do. Every request touches exactly one key, which is what
/// lets the checker split a history by key (P-compositionality).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Request {
    /// Set `key` to `value`.
    Put {
        /// The key written.
        key: Vec<u8>,
        /// The value written.
        value: Vec<u8>,
    },
    /// Read `key`.
    Get {
        /// The key read.
        key: Vec<u8>,
    },
    /// Remove `key`; removing an absent key is not an error.
    Delete {
        /// The key removed.
        key: Vec<u8>,
    },
    /// Set `key` to `new` if and only if its current value is `expected` (`None`: the key must
    /// be absent). Answered by [`Response::CompareAndSwap`] with whether it took effect.
    CompareAndSwap {
        /// The key compared and written.
        key: Vec<u8>,
        /// The value the key must hold for the swap to happen; `None` means absent.
        expected: Option<Vec<u8>>,
        /// The value written when the comparison holds.
        new: Vec<u8>,
    },
}

impl Request {
    /// A [`Request::Put`].
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A [`Request::Get`].
    pub fn get(key: impl Into<Vec<u8>>) -> Request {
        Request::Get { key: key.into() }
    }

    /// A [`Request::Delete`].
    pub fn delete(key: impl Into<Vec<u8>>) -> Request {
        Request::Delete { key: key.into() }
    }

    /// A [`Request::CompareAndSwap`].
    pub fn compare_and_swap(
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Request {
        Request::CompareAndSwap {
            key: key.into(),
            expected,
            new: new.into(),
        }
    }

    /// The one key this request touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Request::Put { key, .. }
            | Request::Get { key }
            | Request::Delete { key }
            | Request::CompareAndSwap { key, .. } => key,
        }
    }

    /// Whether `response` is the kind of answer this request gets (a `Get` is answered by
    /// [`Response::Get`], and so on).
    pub fn is_answered_by(&self, response: &Response) -> bool {
        matches!(
            (self, response),
            (Request::Put { .. }, Response::Put)
                | (Request::Get { .. }, Response::Get(_))
                | (Request::Delete { .. }, Response::Delete)
                | (Request::CompareAndSwap { .. }, Response::CompareAndSwap(_))
        )
    }
}

impl fmt::Display for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Put { key, value } => {
                write!(formatter, "put({}, {})", Bytes(key), Bytes(value))
            }
            Request::Get { key } => write!(formatter, "get({})", Bytes(key)),
            Request::Delete { key } => write!(formatter, "delete({})", Bytes(key)),
            Request::CompareAndSwap { key, expected, new } => write!(
                formatter,
                "cas({}, {}, {})",
                Bytes(key),
                MaybeBytes(expected.as_deref()),
                Bytes(new)
            ),
        }
    }
}

/// What the store answered to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    /// The put took effect.
    Put,
    /// The value read; `None` if the key was absent.
    Get(Option<Vec<u8>>),
    /// The delete took effect.
    Delete,
    /// Whether the compare-and-swap found its expected value and wrote its new one.
    CompareAndSwap(bool),
}

impl fmt::Display for Response {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Put | Response::Delete => formatter.write_str("ok"),
            Response::Get(value) => write!(formatter, "{}", MaybeBytes(value.as_deref())),
            Response::CompareAndSwap(swapped) => write!(formatter, "{swapped}"),
        }
    }
}

/// How an operation ended, as far as the client knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The store answered: the operation took effect exactly once, at some instant between its
    /// invocation and its completion, and this is what it returned.
    Ok(Response),
    /// The client does not know: the request timed out, the connection broke, the node it
    /// talked to crashed. The operation may have taken effect once, at any instant after its
    /// invocation — even after the client gave up and moved on — or never. The checker treats
    /// its completion time as +infinity and its result as unconstrained. A `Get` with an
    /// unknown outcome constrains nothing at all.
    Unknown,
}

/// One operation of a history: who asked what, when, and what came of it.
///
/// Times are monotonic nanoseconds on one clock shared by every client of the history (for
/// [`History`], nanoseconds since the recorder was created). Operation `a` precedes operation
/// `b` in real time exactly when `a.completed_at < b.invoked_at`; equal times count as
/// overlapping, which can only make the checker more permissive.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// Who issued it.
    pub client: ClientId,
    /// What was asked.
    pub request: Request,
    /// When the client sent it.
    pub invoked_at: u64,
    /// When the client received the answer or gave up. Ignored by the checker when the outcome
    /// is [`Outcome::Unknown`] (an operation still pending when a [`History`] is snapshotted
    /// has `u64::MAX` here).
    ///
    /// Invariant: `invoked_at <= completed_at`.
    pub completed_at: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// An operation that completed with `response` (outcome [`Outcome::Ok`]).
    pub fn completed(
        client: ClientId,
        request: Request,
        response: Response,
        invoked_at: u64,
        completed_at: u64,
    ) -> Operation {
        Operation {
            client,
            request,
            invoked_at,
            completed_at,
            outcome: Outcome::Ok(response),
        }
    }

    /// An operation with an [`Outcome::Unknown`] outcome, invoked at `invoked_at`.
    pub fn unknown(client: ClientId, request: Request, invoked_at: u64) -> Operation {
        Operation {
            client,
            request,
            invoked_at,
            completed_at: u64::MAX,
            outcome: Outcome::Unknown,
        }
    }

    /// The one key this operation touches.
    pub fn key(&self) -> &[u8] {
        self.request.key()
    }

    /// Whether the outcome is known.
    pub fn is_known(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {} -> ", self.client, self.request)?;
        match &self.outcome {
            Outcome::Ok(response) => write!(
                formatter,
                "{response} [{}, {}]",
                self.invoked_at, self.completed_at
            ),
            Outcome::Unknown => write!(formatter, "unknown [{}, inf)", self.invoked_at),
        }
    }
}

/// Why a history cannot be checked at all: it is malformed, which is a bug in whatever
/// recorded it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The response is not the kind of answer the request gets.
    #[error("operation {index}: {request} answered by a {response:?} response")]
    MismatchedResponse {
        /// The operation's position in the history.
        index: usize,
        /// Its request.
        request: Request,
        /// The response that does not fit it.
        response: Response,
    },
    /// The operation completed before it was invoked.
    #[error(
        "operation {index}: completed at {completed_at}, before its invocation at {invoked_at}"
    )]
    CompletedBeforeInvoked {
        /// The operation's position in the history.
        index: usize,
        /// When it was invoked.
        invoked_at: u64,
        /// When it completed.
        completed_at: u64,
    },
}

/// Checks that every operation is well formed: its response fits its request and it did not
/// complete before it was invoked. [`check`](super::check) panics on a history that fails this;
/// call it first on histories read from outside the process.
pub fn validate(operations: &[Operation]) -> Result<(), HistoryError> {
    for (index, operation) in operations.iter().enumerate() {
        if let Outcome::Ok(response) = &operation.outcome {
            if !operation.request.is_answered_by(response) {
                return Err(HistoryError::MismatchedResponse {
                    index,
                    request: operation.request.clone(),
                    response: response.clone(),
                });
            }
            if operation.completed_at < operation.invoked_at {
                return Err(HistoryError::CompletedBeforeInvoked {
                    index,
                    invoked_at: operation.invoked_at,
                    completed_at: operation.completed_at,
                });
            }
        }
    }
    Ok(())
}

/// Tells recorders apart, so that a [`PendingOperation`] is never completed in the wrong one.
static NEXT_RECORDER_ID: AtomicU64 = AtomicU64::new(0);

/// A thread-safe recorder of a history. Clones share the same history, so each client thread
/// takes a clone:
///
/// ```
/// use keyval::testkit::linearizability::{check, ClientId, History, Outcome, Request, Response};
///
/// let history = History::new();
/// let recorder = history.clone();
/// std::thread::spawn(move || {
///     let pending = recorder.invoke(ClientId(1), Request::put("x", "1"));
///     // ... send the request, wait for the answer ...
///     recorder.complete(pending, Outcome::Ok(Response::Put));
/// })
/// .join()
/// .unwrap();
/// assert!(check(&history.snapshot()).is_linearizable());
/// ```
///
/// Times come from one monotonic clock read under the recorder's lock and are made strictly
/// increasing, so the recorded real-time order of events is exactly the order in which the
/// calls to [`invoke`](History::invoke) and [`complete`](History::complete) were made. Call
/// `invoke` just before sending a request and `complete` just after its answer arrives.
#[derive(Clone, Debug)]
pub struct History {
    recording: Arc<Mutex<Recording>>,
    recorder_id: u64,
}

/// What the lock in [`History`] guards: held only to stamp a time and push or update one
/// operation, never across a client's request.
#[derive(Debug)]
struct Recording {
    epoch: Instant,
    /// Invariant: every time handed out so far is at most this; the next is strictly greater.
    last_time: u64,
    operations: Vec<Operation>,
}

impl Recording {
    fn next_time(&mut self) -> u64 {
        let elapsed = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_time = elapsed.max(self.last_time + 1);
        self.last_time
    }
}

/// An operation that has been invoked and not yet completed, handed out by
/// [`History::invoke`]. Consumed by [`History::complete`] or [`History::unknown`]; one that is
/// dropped instead stays in the history with an [`Outcome::Unknown`] outcome.
#[derive(Debug)]
#[must_use = "complete the operation, or mark its outcome unknown"]
pub struct PendingOperation {
    index: usize,
    recorder_id: u64,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            recording: Arc::new(Mutex::new(Recording {
                epoch: Instant::now(),
                last_time: 0,
                operations: Vec::new(),
            })),
            recorder_id: NEXT_RECORDER_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Records that `client` is about to send `request`. Until completed, the operation's
    /// outcome is [`Outcome::Unknown`].
    pub fn invoke(&self, client: ClientId, request: Request) -> PendingOperation {
        let mut recording = self.recording.lock();
        let invoked_at = recording.next_time();
        let index = recording.operations.len();
        recording
            .operations
            .push(Operation::unknown(client, request, invoked_at));
        PendingOperation {
            index,
            recorder_id: self.recorder_id,
        }
    }

    /// Records how `pending` ended.
    ///
    /// # Panics
    /// If `pending` came from another recorder, or the response does not fit the request (a
    /// `Get` answered by `Response::Put`, ...): both are bugs in the caller.
    pub fn complete(&self, pending: PendingOperation, outcome: Outcome) {
        assert_eq!(
            pending.recorder_id, self.recorder_id,
            "operation {} completed in a recorder other than the one that invoked it",
            pending.index
        );
        let mut recording = self.recording.lock();
        let completed_at = recording.next_time();
        let operation = &mut recording.operations[pending.index];
        if let Outcome::Ok(response) = &outcome {
            assert!(
                operation.request.is_answered_by(response),
                "operation {}: {} answered by a {response:?} response",
                pending.index,
                operation.request
            );
        }
        operation.completed_at = completed_at;
        operation.outcome = outcome;
    }

    /// Records that the outcome of `pending` is unknown (timed out, connection lost): it may
    /// take effect at any time from its invocation on, or never.
    pub fn unknown(&self, pending: PendingOperation) {
        self.complete(pending, Outcome::Unknown);
    }

    /// A copy of every operation recorded so far, in invocation order. Operations still
    /// pending appear with an [`Outcome::Unknown`] outcome.
    pub fn snapshot(&self) -> Vec<Operation> {
        self.recording.lock().operations.clone()
    }

    /// How many operations have been invoked.
    pub fn len(&self) -> usize {
        self.recording.lock().operations.len()
    }

    /// Whether no operation has been invoked yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shows bytes as a quoted string when they are printable ASCII, as hex otherwise.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self
            .0
            .iter()
            .all(|byte| byte.is_ascii_graphic() || *byte == b' ')
        {
            write!(formatter, "{:?}", String::from_utf8_lossy(self.0))
        } else {
            formatter.write_str("0x")?;
            self.0
                .iter()
                .try_for_each(|byte| write!(formatter, "{byte:02x}"))
        }
    }
}

/// Shows an optional value, `absent` for `None`.
pub(crate) struct MaybeBytes<'a>(pub(crate) Option<&'a [u8]>);

impl fmt::Display for MaybeBytes<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => Bytes(bytes).fmt(formatter),
            None => formatter.write_str("absent"),
        }
    }
}
