//! Time, terms and elections: `tick`, the term rules of `step`, pre-vote, voting,
//! check-quorum, and the role transitions.

use std::collections::{BTreeMap, VecDeque};

use crate::error::ReadError;
use crate::limits;
use crate::raft::message::{AppendResponse, Message, MessageBody};
use crate::raft::progress::Progress;
use crate::raft::quorum::VoteResult;
use crate::raft::{LeaderState, Monotonic, Raft, ReadState, Role, StepError};
use crate::types::{Entry, EntryId, EntryPayload, LogIndex, NodeId, Term};

/// The largest log index a message carries, for the bound check at the door (no allocation:
/// this runs for every message).
fn largest_index(body: &MessageBody) -> crate::types::LogIndex {
    use crate::types::LogIndex;
    match body {
        MessageBody::RequestVote { last_log, .. } => last_log.index,
        MessageBody::AppendEntries {
            prev,
            entries,
            leader_commit,
        } => {
            // Entries are contiguous after prev (checked next): bound the last one.
            let last = LogIndex(prev.index.0.saturating_add(entries.len() as u64));
            let last_entry = entries.last().map_or(LogIndex(0), |entry| entry.index());
            prev.index.max(*leader_commit).max(last).max(last_entry)
        }
        MessageBody::AppendEntriesResponse(AppendResponse::Success { matched }) => matched.index,
        MessageBody::AppendEntriesResponse(AppendResponse::Reject {
            rejected_prev,
            hint,
        }) => (*rejected_prev).max(hint.index),
        MessageBody::Heartbeat { commit, .. } => *commit,
        MessageBody::InstallSnapshot { meta, .. } => meta.last.index,
        MessageBody::InstallSnapshotResponse { last, .. } => last.index,
        MessageBody::TimeoutNow { last } => last.index,
        MessageBody::RequestVoteResponse { .. } | MessageBody::HeartbeatResponse { .. } => {
            LogIndex(0)
        }
    }
}

impl Raft {
    /// Advances time by one tick, moving the clock to the end of it: followers and candidates
    /// count toward an election, leaders toward a heartbeat and a check-quorum. Harnesses in
    /// virtual time drive the core with `tick` alone; the runtime uses
    /// [`advance_clock`](Raft::advance_clock) with its monotonic clock instead.
    pub fn tick(&mut self) {
        let tick_end = Monotonic((self.ticks + 1).saturating_mul(self.config.tick_nanos()));
        self.run_tick(tick_end, true);
    }

    /// One tick ending at `tick_end`; `broadcast` is false on the ticks of a catch-up but the
    /// last, so that a pause does not end in a burst of heartbeat rounds.
    pub(super) fn run_tick(&mut self, tick_end: Monotonic, broadcast: bool) {
        self.ticks += 1;
        self.clock = self.clock.max(tick_end);
        self.election_elapsed += 1;
        if let Role::Leader(leader) = &mut self.role {
            leader.heartbeat_elapsed += 1;
            if let Some((_, elapsed)) = &mut leader.transfer {
                *elapsed += 1;
                if *elapsed >= self.config.election_ticks {
                    leader.transfer = None; // abandoned: accept proposals again
                    self.fence_abandoned_transfer();
                }
            }
            let Role::Leader(leader) = &mut self.role else {
                return;
            };
            let heartbeat_due = leader.heartbeat_elapsed >= self.config.heartbeat_ticks;
            if self.election_elapsed >= self.config.election_ticks {
                self.election_elapsed = 0;
                if self.config.check_quorum && !self.check_quorum_active() {
                    self.become_follower(self.term, None);
                    return;
                }
            }
            if heartbeat_due && broadcast {
                self.broadcast_heartbeat();
            }
            if !self.membership_change_pending() {
                self.forget_removed_members();
            }
            return;
        }
        if self.election_elapsed >= self.randomized_election_timeout && self.is_promotable() {
            self.campaign(self.config.pre_vote, false);
        }
    }

    /// Starts an election now, as if the election timeout had fired (with a pre-vote round
    /// first when pre-vote is on). Does nothing on a leader or a non-voter.
    pub fn start_election(&mut self) {
        if !self.is_leader() && self.is_promotable() {
            self.campaign(self.config.pre_vote, false);
        }
    }

    /// Whether this node may become leader: voters campaign, and so does a node that an
    /// uncommitted configuration leaves out while it votes in the committed one (thesis
    /// §4.2.2: it may be needed to commit the change; its own vote counts only where it is a
    /// voter, and once it knows the change committed it stops).
    fn is_promotable(&self) -> bool {
        self.configs.may_vote(self.id, self.log.committed())
    }

    /// Check-quorum (thesis §6.2): a leader that has not heard from a quorum within an
    /// election timeout steps down, so that a partitioned leader stops accepting work.
    /// Resets the activity marks for the next period.
    fn check_quorum_active(&mut self) -> bool {
        let id = self.id;
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        let progress = &leader.progress;
        let active = self.membership.has_quorum(|voter| {
            voter == id || progress.get(&voter).is_some_and(|p| p.recent_active)
        });
        for progress in leader.progress.values_mut() {
            progress.recent_active = false;
        }
        active
    }

    /// Whether this node leads, or heard from a leader within the minimum election timeout —
    /// or restarted less than an election timeout ago, which counts as having heard from one.
    /// Such a node refuses pre-votes and (with check-quorum) ignores vote requests, so a node
    /// that was partitioned away cannot depose a healthy leader (thesis §4.2.3), and a lease
    /// holder can rely on every node that answered its heartbeat, even one that crashed or
    /// changed its term since.
    ///
    /// A leadership-transfer campaign skips this check, also in a restarted node: the leader
    /// that sent TimeoutNow voided its lease first, and no other lease can be running.
    fn leader_is_active(&self) -> bool {
        self.is_leader() || self.ticks < self.leader_heard_until
    }

    /// Processes one message from a peer. Messages that are stale, misaddressed or malformed
    /// are ignored with a reason, never a panic.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        self.validate(&message)?;
        let from = message.from;
        if message.term > self.term {
            match &message.body {
                // A pre-vote never changes anyone's term; a granted pre-vote answer carries
                // the term the pre-candidate would campaign in.
                MessageBody::RequestVote { pre_vote: true, .. }
                | MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::RequestVote {
                    pre_vote: false,
                    transfer,
                    ..
                } => {
                    if self.config.check_quorum && !transfer && self.leader_is_active() {
                        return Err(StepError::LeaderActive { from });
                    }
                    self.become_follower(message.term, None);
                }
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(message.term, Some(from));
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.term {
            match &message.body {
                // A leader from an older term: tell it our term so it steps down. Without
                // this, a node whose term rose while partitioned could be ignored forever.
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.send(from, self.term, MessageBody::HeartbeatResponse { round: 0 });
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    let body = MessageBody::RequestVoteResponse {
                        pre_vote: true,
                        granted: false,
                    };
                    self.send(from, self.term, body);
                }
                _ => {}
            }
            return Err(StepError::StaleTerm {
                message_term: message.term,
                term: self.term,
            });
        }

        match message.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log,
                transfer,
            } => self.handle_request_vote(from, message.term, pre_vote, last_log, transfer),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(from, pre_vote, granted);
                Ok(())
            }
            MessageBody::AppendEntries {
                prev,
                entries,
                leader_commit,
            } => {
                self.follow(from)?;
                self.handle_append_entries(from, prev, &entries, leader_commit)
            }
            MessageBody::Heartbeat { commit, round } => {
                self.follow(from)?;
                self.handle_heartbeat(from, commit, round);
                Ok(())
            }
            MessageBody::AppendEntriesResponse(response) => {
                self.handle_append_response(from, response);
                Ok(())
            }
            MessageBody::HeartbeatResponse { round } => {
                self.handle_heartbeat_response(from, round);
                Ok(())
            }
            MessageBody::TimeoutNow { last } => {
                // Only for the transfer it was sent for: a leader that abandoned the transfer
                // appended its fence since, and we either hold it (our log ends past `last`)
                // or cannot win against the quorum that does.
                if self.is_promotable() && !self.is_leader() && self.log.last_id() == last {
                    self.campaign(false, true);
                }
                Ok(())
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                total,
                checksum,
                data,
            } => {
                self.follow(from)?;
                self.handle_install_snapshot(from, meta, offset, total, checksum, data)
            }
            MessageBody::InstallSnapshotResponse { last, next_offset } => {
                self.handle_snapshot_response(from, last, next_offset);
                Ok(())
            }
        }
    }

    /// Checks a message's shape before anything acts on it.
    fn validate(&self, message: &Message) -> Result<(), StepError> {
        let from = message.from;
        let malformed = |reason| Err(StepError::Malformed { from, reason });
        if message.to != self.id {
            return Err(StepError::WrongRecipient {
                id: self.id,
                to: message.to,
            });
        }
        if from == self.id {
            return malformed("message from ourselves");
        }
        if message.term == Term(0) {
            return malformed("term 0");
        }
        if message.term.0 > limits::TERM_MAX {
            return malformed("term beyond the limit");
        }
        if largest_index(&message.body).0 > limits::INDEX_MAX {
            return malformed("log index beyond the limit");
        }
        match &message.body {
            MessageBody::RequestVote {
                last_log, transfer, ..
            } => {
                if last_log.term > message.term {
                    return malformed("candidate's last term is ahead of its term");
                }
                // Thesis §4.1: a vote goes to a candidate outside our latest configuration too
                // (a voter added by an entry we have not received may need it to win; a node
                // that joined empty knows no voters at all). Removed servers cannot disrupt:
                // a leader that is active makes us ignore them, and pre-vote stops them. Only
                // a transfer campaign, which skips that check, must come from a voter we know.
                if *transfer && !self.membership.is_voter(from) {
                    return Err(StepError::NotAMember { from });
                }
            }
            MessageBody::InstallSnapshot { meta, .. } if meta.last.term > message.term => {
                return malformed("snapshot term ahead of the leader's term");
            }
            MessageBody::TimeoutNow { last } if last.term > message.term => {
                return malformed("TimeoutNow's last term is ahead of the leader's term");
            }
            MessageBody::AppendEntries { prev, entries, .. } => {
                if prev.term > message.term {
                    return malformed("prev term ahead of the leader's term");
                }
                let mut expected = prev.index.next();
                let mut term = prev.term;
                for entry in entries {
                    if entry.index() != expected {
                        return malformed("entries are not contiguous after prev");
                    }
                    if entry.term() < term || entry.term() > message.term {
                        return malformed("entry terms out of order");
                    }
                    expected = expected.next();
                    term = entry.term();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A message from the leader of our term arrived: make sure we follow it.
    fn follow(&mut self, from: NodeId) -> Result<(), StepError> {
        match &mut self.role {
            Role::Leader(_) => Err(StepError::Malformed {
                from,
                reason: "a second leader in our term",
            }),
            Role::Follower { leader } => {
                *leader = Some(from);
                self.election_elapsed = 0;
                self.leader_heard_until = self.ticks + self.config.election_ticks;
                Ok(())
            }
            Role::PreCandidate { .. } | Role::Candidate { .. } => {
                self.become_follower(self.term, Some(from));
                self.leader_heard_until = self.ticks + self.config.election_ticks;
                Ok(())
            }
        }
    }

    fn handle_request_vote(
        &mut self,
        from: NodeId,
        message_term: crate::types::Term,
        pre_vote: bool,
        last_log: EntryId,
        transfer: bool,
    ) -> Result<(), StepError> {
        let up_to_date = self.log.is_up_to_date(last_log);
        if pre_vote {
            // Thesis §9.6: grant only if the candidate could win a real vote and we have not
            // heard from a leader within the election timeout.
            let granted = message_term > self.term && up_to_date && !self.leader_is_active();
            let term = if granted { message_term } else { self.term };
            self.send(
                from,
                term,
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted,
                },
            );
            return Ok(());
        }
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader().is_none());
        // In our own term without a leader, and still within the election timeout of hearing
        // from one: our term moved on a message that named no leader (a stale answer from a
        // node in a newer term). Ignore the request as a higher term's would be (see `step`).
        if self.config.check_quorum
            && !transfer
            && self.vote.is_none()
            && self.leader().is_none()
            && self.leader_is_active()
        {
            return Err(StepError::LeaderActive { from });
        }
        let granted = can_vote && up_to_date;
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        // Sent only after the vote is durable (a forgotten vote allows two leaders a term).
        self.send_after_persist(
            from,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted,
            },
        );
        Ok(())
    }

    fn handle_vote_response(&mut self, from: NodeId, pre_vote: bool, granted: bool) {
        let votes = match (&mut self.role, pre_vote) {
            (Role::PreCandidate { votes }, true) | (Role::Candidate { votes }, false) => votes,
            _ => return,
        };
        votes.insert(from, granted);
        let votes = votes.clone();
        match self.membership.vote_result(|id| votes.get(&id).copied()) {
            VoteResult::Won if pre_vote => self.campaign(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    /// Starts an election (or a pre-vote round first). A real campaign raises the term and
    /// votes for itself; its vote requests leave only after that is durable.
    pub(crate) fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        self.reset_election_timer();
        let campaign_term = if pre_vote {
            self.abandon_leadership();
            self.role = Role::PreCandidate {
                votes: BTreeMap::from([(self.id, true)]),
            };
            self.term.next()
        } else {
            self.abandon_leadership();
            self.term = self.term.next();
            self.vote = Some(self.id);
            self.role = Role::Candidate {
                votes: BTreeMap::from([(self.id, true)]),
            };
            self.term
        };
        let id = self.id;
        if self
            .membership
            .vote_result(|voter| (voter == id).then_some(true))
            == VoteResult::Won
        {
            if pre_vote {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
                if let Role::Leader(leader) = &mut self.role {
                    leader.term_durable = false;
                }
            }
            return;
        }
        let last_log = self.log.last_id();
        let voters: Vec<NodeId> = self
            .membership
            .members()
            .into_iter()
            .filter(|&voter| voter != id && self.membership.is_voter(voter))
            .collect();
        for voter in voters {
            let body = MessageBody::RequestVote {
                pre_vote,
                last_log,
                transfer,
            };
            if pre_vote {
                self.send(voter, campaign_term, body);
            } else {
                self.send_after_persist(voter, body);
            }
        }
    }

    /// Becomes a follower in `term` (raising the term clears the vote; keeping the term keeps
    /// it — a candidate stepping down must not forget whom it voted for).
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        debug_assert!(term >= self.term);
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.abandon_leadership();
        self.role = Role::Follower { leader };
        self.reset_election_timer();
    }

    /// Fails every read a leader was holding, so that waiting clients learn at once.
    fn abandon_leadership(&mut self) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let contexts: Vec<u64> = leader
            .pending_reads
            .drain(..)
            .map(|read| read.context)
            .chain(leader.reads_awaiting_commit.drain(..))
            .collect();
        for context in contexts {
            self.read_states.push(ReadState {
                context,
                outcome: Err(ReadError::NotLeader { leader_hint: None }),
            });
        }
    }

    fn become_leader(&mut self) {
        debug_assert!(matches!(self.role, Role::Candidate { .. }));
        let next = self.log.last_index().next();
        let progress = self
            .membership
            .members()
            .into_iter()
            .filter(|&member| member != self.id)
            .map(|member| {
                let progress = Progress::new(
                    next,
                    self.config.inflight_messages_max,
                    self.config.inflight_bytes_max,
                );
                (member, progress)
            })
            .collect();
        self.role = Role::Leader(Box::new(LeaderState {
            progress,
            heartbeat_elapsed: 0,
            round: 0,
            rounds_sent_at: VecDeque::new(),
            quorum_round: 0,
            lease_expires_at: Monotonic::default(),
            lease_rounds_after: 0,
            lease_fence: LogIndex(0),
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            read_round_needed: false,
            append_needed: true,
            commit_news: false,
            uncommitted_bytes: 0,
            transfer: None,
            config_committed_at: None,
            term_durable: true,
        }));
        self.election_elapsed = 0;
        // Raft §8: commit an entry of our own term before anything else counts.
        let noop = Entry {
            id: EntryId::new(self.term, self.log.last_index().next()),
            payload: EntryPayload::Noop,
        };
        self.log.append_own(noop);
        self.maybe_commit();
    }
}
