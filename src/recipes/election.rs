//! [`Election`]: campaign, proclaim, observe, resign — leader election on the same line of
//! contenders as the [`Mutex`](super::Mutex).

use std::time::{Duration, Instant};

use crate::client::{Client, ClientError, Watch, WatchOptions};
use crate::kv::{Compare, CompareOp, EventKind, Txn, TxnOp};
use crate::types::LogIndex;

use super::queue::{read_line, transient, Contender, Queue, WaitProbe, UNAVAILABLE_PAUSE};
use super::{text, RecipeError, Session};

/// The leader of an election, as read from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's key (`name/<lease-id-hex>`).
    pub key: Vec<u8>,
    /// The value it campaigned with or last proclaimed.
    pub value: Vec<u8>,
    /// The revision at which its key was created: increases with every new leader, so it
    /// serves as a fencing token for the leadership.
    pub revision: LogIndex,
    /// The revision of its last proclaim (or of its campaign).
    pub mod_revision: LogIndex,
}

impl Leader {
    fn from_contender(contender: &Contender) -> Leader {
        Leader {
            key: contender.key.clone(),
            value: contender.value.clone(),
            revision: contender.create_revision,
            mod_revision: contender.mod_revision,
        }
    }
}

/// Leader election named `name` (keys under `name/`), through a [`Session`]: the candidate
/// whose key is oldest leads; the others wait in line, each watching only its predecessor.
/// Leadership ends with [`resign`](Election::resign) or with the session.
pub struct Election {
    queue: Queue,
    /// Our key and its create revision, while we lead.
    leadership: Option<(Vec<u8>, LogIndex)>,
}

impl Election {
    /// The election `name`, campaigned in through `session`.
    pub fn new(session: &Session, name: &str) -> Election {
        Election {
            queue: Queue::new(session, name),
            leadership: None,
        }
    }

    /// Blocks until this candidate leads, announcing `value`; errors if the session ends
    /// first. Campaigning again while leading proclaims the new value.
    pub fn campaign(&mut self, value: &[u8]) -> Result<Leader, RecipeError> {
        self.campaign_until(value, None)
    }

    /// Like [`campaign`](Election::campaign), giving up after `timeout` with
    /// [`RecipeError::Timeout`] (and leaving the line).
    pub fn campaign_timeout(
        &mut self,
        value: &[u8],
        timeout: Duration,
    ) -> Result<Leader, RecipeError> {
        self.campaign_until(value, Some(Instant::now() + timeout))
    }

    fn campaign_until(
        &mut self,
        value: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Leader, RecipeError> {
        if self.leadership.is_some() {
            self.proclaim(value)?;
        }
        let key = self.queue.own_key();
        let revision = match &self.leadership {
            Some((_, revision)) => *revision,
            None => self.queue.enqueue(&key, value)?,
        };
        match self.queue.wait_first(&key, revision, deadline) {
            Ok(()) => {
                self.leadership = Some((key.clone(), revision));
                Ok(Leader {
                    key,
                    value: value.to_vec(),
                    revision,
                    mod_revision: revision,
                })
            }
            Err(error) => {
                self.leadership = None;
                let _ = self.queue.remove(&key, revision);
                Err(error)
            }
        }
    }

    /// Announces a new `value` while still leader: written only if this candidate's key is
    /// still the one its campaign created (a transaction on its create revision), so a
    /// deposed leader cannot overwrite its successor's. [`RecipeError::NotLeader`] otherwise.
    pub fn proclaim(&mut self, value: &[u8]) -> Result<LogIndex, RecipeError> {
        let Some((key, revision)) = self.leadership.clone() else {
            return Err(self.not_leader());
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                revision.0,
            )])
            .then([TxnOp::put(key, value).with_lease(self.queue.session.lease())]);
        let response = self.queue.session.client().txn(txn)?;
        if response.succeeded {
            Ok(response.revision)
        } else {
            self.leadership = None;
            Err(self.not_leader())
        }
    }

    /// Gives up the leadership (or does nothing if not leading): deletes this candidate's
    /// key, which makes the next in line leader.
    pub fn resign(&mut self) -> Result<(), RecipeError> {
        if let Some((key, revision)) = self.leadership.take() {
            self.queue.remove(&key, revision)?;
        }
        Ok(())
    }

    /// Whether this candidate leads as far as this process can tell: it won a campaign, has
    /// not resigned, and its session is not over.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_some() && !self.queue.session.done()
    }

    /// The current leader, if any (a linearizable read).
    pub fn leader(&self) -> Result<Option<Leader>, RecipeError> {
        current_leader(self.queue.session.client(), &self.queue.prefix)
    }

    /// A receiver of leader changes, starting with the current leader.
    pub fn observe(&self) -> Observer {
        Observer::new(self.queue.session.client(), &self.queue.name)
    }

    /// What this candidate's waits are doing, for diagnostics and tests.
    pub fn probe(&self) -> WaitProbe {
        self.queue.probe.clone()
    }

    fn not_leader(&self) -> RecipeError {
        RecipeError::NotLeader {
            name: self.queue.name.clone(),
        }
    }
}

fn current_leader(client: &Client, prefix: &[u8]) -> Result<Option<Leader>, RecipeError> {
    let (_, line) = read_line(client, prefix)?;
    Ok(Queue::first(&line).map(Leader::from_contender))
}

/// Follows an election's leader: each [`recv`](Observer::recv) returns the next leader (or
/// the current leader's newly proclaimed value), starting with the leader at the time of the
/// first call. Needs no session. Changes that follow each other faster than they are
/// received may be seen only as their result. Also an [`Iterator`] (of `Result`s, blocking).
///
/// It watches the leader's key only, from the revision it read it at; when that key goes it
/// reads the line again (or, with nobody in line, watches the prefix for a candidate).
pub struct Observer {
    client: Client,
    prefix: Vec<u8>,
    state: ObserverState,
    last: Option<Leader>,
}

enum ObserverState {
    /// Read the line again.
    Find,
    /// Watching the leader's key.
    Leading { watch: Watch, leader: Leader },
    /// Nobody in line: watching the prefix for a put.
    Empty { watch: Watch },
}

impl Observer {
    /// Observes the election `name` through `client`.
    pub fn new(client: &Client, name: &str) -> Observer {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(b'/');
        Observer {
            client: client.clone(),
            prefix,
            state: ObserverState::Find,
            last: None,
        }
    }

    /// Blocks until the leader changes (the first call: until there is one).
    pub fn recv(&mut self) -> Result<Leader, RecipeError> {
        loop {
            if let Some(leader) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(leader);
            }
        }
    }

    /// Like [`recv`](Observer::recv), `Ok(None)` if nothing changed within `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Leader>, RecipeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match std::mem::replace(&mut self.state, ObserverState::Find) {
                ObserverState::Find => {
                    if let Some(leader) = self.find()? {
                        return Ok(Some(leader));
                    }
                }
                ObserverState::Leading { mut watch, leader } => match watch.recv_timeout(left) {
                    Ok(Some(response)) => {
                        let mut current = Some(leader);
                        for event in &response.events {
                            match (&event.kind, &event.metadata, &current) {
                                (EventKind::Put, Some(metadata), Some(leader))
                                    if metadata.create_revision == leader.revision =>
                                {
                                    current = Some(Leader {
                                        value: event.value.clone(),
                                        mod_revision: metadata.mod_revision,
                                        ..leader.clone()
                                    });
                                }
                                _ => current = None,
                            }
                        }
                        if let Some(leader) = current {
                            self.state = ObserverState::Leading {
                                watch,
                                leader: leader.clone(),
                            };
                            if let Some(changed) = self.changed(leader) {
                                return Ok(Some(changed));
                            }
                        }
                    }
                    Ok(None) => self.state = ObserverState::Leading { watch, leader },
                    Err(ClientError::Compacted { .. }) => {}
                    Err(error) => return Err(error.into()),
                },
                ObserverState::Empty { mut watch } => match watch.recv_timeout(left) {
                    Ok(Some(response)) if response.events.is_empty() => {
                        self.state = ObserverState::Empty { watch };
                    }
                    Ok(Some(_)) | Err(ClientError::Compacted { .. }) => {}
                    Ok(None) => self.state = ObserverState::Empty { watch },
                    Err(error) => return Err(error.into()),
                },
            }
        }
    }

    /// Reads the line and starts watching its leader (or the prefix); returns the leader if
    /// it is news.
    fn find(&mut self) -> Result<Option<Leader>, RecipeError> {
        let (revision, line) = match read_line(&self.client, &self.prefix) {
            Ok(read) => read,
            Err(RecipeError::Client(error)) if transient(&error) => {
                std::thread::sleep(UNAVAILABLE_PAUSE);
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let leader = Queue::first(&line).map(Leader::from_contender);
        let options = match &leader {
            Some(leader) => WatchOptions::key(&leader.key),
            None => WatchOptions::prefix(&self.prefix).no_delete(),
        };
        let watch = match self.client.watch(options.start(revision.next())) {
            Ok(watch) => watch,
            Err(error) if transient(&error) => {
                std::thread::sleep(UNAVAILABLE_PAUSE);
                return Ok(None);
            }
            Err(ClientError::Compacted { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        match leader {
            Some(leader) => {
                self.state = ObserverState::Leading {
                    watch,
                    leader: leader.clone(),
                };
                Ok(self.changed(leader))
            }
            None => {
                self.state = ObserverState::Empty { watch };
                Ok(None)
            }
        }
    }

    /// `leader` if it differs from the last one returned (and remembers it).
    fn changed(&mut self, leader: Leader) -> Option<Leader> {
        if self.last.as_ref() == Some(&leader) {
            return None;
        }
        self.last = Some(leader.clone());
        Some(leader)
    }
}

impl Iterator for Observer {
    type Item = Result<Leader, RecipeError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.recv())
    }
}

impl std::fmt::Debug for Election {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Election")
            .field("name", &self.queue.name)
            .field(
                "leadership",
                &self
                    .leadership
                    .as_ref()
                    .map(|(key, revision)| (text(key), *revision)),
            )
            .finish()
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Observer")
            .field("prefix", &text(&self.prefix))
            .field("last", &self.last)
            .finish()
    }
}
