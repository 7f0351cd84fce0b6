//! Log replication (Raft §5.3), the commit rule (§5.4.2), flow control, and read-index
//! confirmation — the leader's side and the follower's side.

use crate::raft::log::AppendRejection;
use crate::raft::message::{AppendResponse, MessageBody};
use crate::raft::progress::ProgressState;
use crate::raft::{PendingRead, Raft, ReadState, Role, StepError, ROUNDS_REMEMBERED_MAX};
use crate::types::{EntryId, LogIndex, NodeId};

impl Raft {
    // ---- leader ------------------------------------------------------------------------

    /// Sends what the Ready should carry: new entries (one message per follower for all
    /// proposals since the last Ready), commit news, and a heartbeat round for waiting reads.
    pub(super) fn flush_leader_broadcasts(&mut self) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let append = std::mem::take(&mut leader.append_needed);
        let commit_news = std::mem::take(&mut leader.commit_news);
        let read_round = leader.read_round_due();
        if append || commit_news {
            self.broadcast_append(commit_news);
        }
        if read_round {
            self.broadcast_heartbeat();
        }
    }

    fn broadcast_append(&mut self, allow_empty: bool) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let peers: Vec<NodeId> = leader.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, allow_empty);
        }
    }

    /// Sends one AppendEntries to `to` if its flow control allows. An empty message is sent
    /// only to probe or when `allow_empty` (to carry a new commit index).
    pub(super) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let bytes_max = self.config.message_entries_bytes_max;
        let term = self.term;
        let committed = self.log.committed();
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        let Some(progress) = leader.progress.get_mut(&to) else {
            return false;
        };
        if progress.is_paused() {
            return false;
        }
        let prev_index = progress.next.prev();
        let Some(prev_term) = self.log.term(prev_index) else {
            // The entries this follower needs were compacted into a snapshot (Raft §7).
            return self.start_snapshot_transfer(to);
        };
        let entries = self.log.entries_from(progress.next, bytes_max);
        if entries.is_empty() && progress.state == ProgressState::Replicate && !allow_empty {
            return false;
        }
        let bytes = entries.iter().map(|entry| entry.size_bytes()).sum();
        progress.on_sent(entries.last().map(|entry| entry.index()), bytes);
        let body = MessageBody::AppendEntries {
            prev: EntryId::new(prev_term, prev_index),
            entries,
            leader_commit: committed,
        };
        self.send(to, term, body);
        true
    }

    /// Sends a heartbeat round to every member. Each round is remembered with the clock when it
    /// left — never later than the real send time, as the runtime reads its clock before it
    /// steps the core — so that a quorum's answer dates the lease and confirms waiting reads.
    pub(super) fn broadcast_heartbeat(&mut self) {
        let term = self.term;
        let now = self.clock;
        let committed = self.log.committed();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.heartbeat_elapsed = 0;
        leader.round += 1;
        // Every waiting read is confirmed by this round (each waits for the round after the
        // latest sent when it arrived).
        leader.read_round_needed = false;
        let round = leader.round;
        leader.rounds_sent_at.push_back((round, now));
        if leader.rounds_sent_at.len() > ROUNDS_REMEMBERED_MAX {
            leader.rounds_sent_at.pop_front();
        }
        let heartbeats: Vec<(NodeId, LogIndex)> = leader
            .progress
            .iter()
            .map(|(&peer, progress)| (peer, progress.matched.min(committed)))
            .collect();
        for (peer, commit) in heartbeats {
            self.send(peer, term, MessageBody::Heartbeat { commit, round });
        }
        // A single voter is its own quorum.
        self.advance_quorum_round();
    }

    /// Commits the highest index a quorum has durably matched, if it is of the current term
    /// (Raft §5.4.2: entries of earlier terms commit only indirectly). Returns whether the
    /// commit index moved.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let id = self.id;
        let persisted = self.log.persisted();
        let Role::Leader(leader) = &self.role else {
            return false;
        };
        let candidate = self.membership.committed_index(|voter| {
            if voter == id {
                persisted
            } else {
                leader
                    .progress
                    .get(&voter)
                    .map_or(LogIndex(0), |progress| progress.matched)
            }
        });
        if candidate <= self.log.committed() || self.log.term(candidate) != Some(self.term) {
            return false;
        }
        let old_committed = self.log.committed();
        let first_in_term = self.log.term(old_committed) != Some(self.term);
        self.log.commit_to(candidate);
        let released: u64 = (old_committed.0 + 1..=candidate.0)
            .filter_map(|index| self.log.entry(LogIndex(index)))
            .map(|entry| entry.size_bytes())
            .sum();
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        leader.uncommitted_bytes = leader.uncommitted_bytes.saturating_sub(released);
        leader.commit_news = true;
        if first_in_term {
            let waiting = std::mem::take(&mut leader.reads_awaiting_commit);
            for context in waiting {
                self.start_read(context);
            }
        }
        self.after_commit_as_leader();
        true
    }

    /// Records a read at the current commit index, confirmed by the next heartbeat round.
    pub(super) fn start_read(&mut self, context: u64) {
        let index = self.log.committed();
        let id = self.id;
        let single_voter = self
            .membership
            .vote_result(|voter| (voter == id).then_some(true))
            == crate::raft::quorum::VoteResult::Won;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if single_voter {
            self.read_states.push(ReadState {
                context,
                outcome: Ok(index),
            });
            return;
        }
        leader.pending_reads.push_back(PendingRead {
            context,
            index,
            round: leader.round + 1,
        });
        leader.read_round_needed = true;
    }

    pub(super) fn handle_append_response(&mut self, from: NodeId, response: AppendResponse) {
        let now = self.ticks;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        progress.mark_heard(now);
        match response {
            AppendResponse::Success { matched } => {
                // An answer about an entry we no longer hold at that index is stale (ABA).
                // At or below our snapshot the entries are committed and can never be
                // overwritten: such an answer is current even though we no longer hold them.
                if !self.log.matches(matched) && matched.index > self.log.snapshot().index {
                    return;
                }
                if progress.state == ProgressState::Snapshot {
                    // The snapshot is installed (or was not needed): replicate from there.
                    progress.maybe_update(matched.index);
                    progress.become_replicate();
                    self.maybe_commit();
                } else if progress.maybe_update(matched.index) {
                    match progress.state {
                        ProgressState::Probe | ProgressState::Snapshot => {
                            progress.become_replicate()
                        }
                        ProgressState::Replicate => progress.inflights.free_to(matched.index),
                    }
                    self.maybe_commit();
                } else if progress.state == ProgressState::Replicate {
                    progress.inflights.free_to(matched.index);
                }
                self.maybe_send_timeout_now(from);
            }
            AppendResponse::Reject {
                rejected_prev,
                hint,
            } => {
                let stale = match progress.state {
                    ProgressState::Replicate => rejected_prev <= progress.matched,
                    ProgressState::Probe => rejected_prev != progress.next.prev(),
                    ProgressState::Snapshot => true,
                };
                if stale {
                    return;
                }
                let next = self
                    .log
                    .find_conflict_by_term(hint)
                    .next()
                    .min(rejected_prev);
                progress.become_probe(next);
            }
        }
        self.send_pending(from);
    }

    /// Keeps the pipeline to `to` full: sends while the window allows and entries remain.
    fn send_pending(&mut self, to: NodeId) {
        let last = self.log.last_index();
        loop {
            let Role::Leader(leader) = &self.role else {
                return;
            };
            let Some(progress) = leader.progress.get(&to) else {
                return;
            };
            if progress.next > last || progress.is_paused() {
                return;
            }
            let probing = progress.state == ProgressState::Probe;
            if !self.send_append(to, false) || probing {
                return;
            }
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, round: u64) {
        let now = self.ticks;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        progress.mark_heard(now);
        // The follower is alive: allow another probe if one was outstanding.
        progress.probe_sent = false;
        progress.round_acked = progress.round_acked.max(round);
        if progress.state == ProgressState::Snapshot {
            self.retry_snapshot_chunk(from);
            self.advance_quorum_round();
            return;
        }
        // A follower behind the leader may have lost an append: an append from `next`
        // (empty if need be) either carries the missing entries or is rejected, which sends
        // the follower back to probing. A heartbeat answer proves the follower alive, not the
        // window lost — a slow disk holds acknowledgements back while heartbeats are answered
        // at once — so it never frees a slot: with the window full, the append is an empty
        // one that takes none.
        if progress.matched < self.log.last_index() {
            if progress.state == ProgressState::Replicate && progress.inflights.is_full() {
                self.send_loss_probe(from);
            } else {
                self.send_append(from, true);
            }
        }
        self.advance_quorum_round();
    }

    /// Asks a follower whose window is full whether it holds the window's last entry: an empty
    /// AppendEntries after it, outside flow control. A follower that lost part of the window
    /// rejects it and the leader probes back from its answer; one that holds it answers after
    /// its sync, like the appends themselves, so a slow disk is never sent more than the
    /// window. One per heartbeat answer at most.
    fn send_loss_probe(&mut self, to: NodeId) {
        let term = self.term;
        let committed = self.log.committed();
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let Some(progress) = leader.progress.get(&to) else {
            return;
        };
        let prev_index = progress.next.prev();
        let Some(prev_term) = self.log.term(prev_index) else {
            // The window's entries were compacted since: only a snapshot can repair a loss.
            self.start_snapshot_transfer(to);
            return;
        };
        let body = MessageBody::AppendEntries {
            prev: EntryId::new(prev_term, prev_index),
            entries: Vec::new(),
            leader_commit: committed,
        };
        self.send(to, term, body);
    }

    /// Moves the quorum-confirmed round forward: releases reads that waited on it. Extends the
    /// lease from the time the latest round answered by a quorum **of followers that hold this
    /// term durably** was sent: a follower's heartbeat answer leaves before the term it adopted
    /// is durable, and one that crashed before the sync would restart without the term — as a
    /// node with empty storage, not silent after its restart (see `Raft::new`). Acknowledging
    /// an append in this term proves the term durable: those answers leave after a sync.
    fn advance_quorum_round(&mut self) {
        let id = self.id;
        let lease_nanos = self.config.lease_nanos();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let own_round = leader.round;
        let progress = &leader.progress;
        let quorum_round = self.membership.quorum_value(|voter| {
            if voter == id {
                own_round
            } else {
                progress
                    .get(&voter)
                    .map_or(0, |progress| progress.round_acked)
            }
        });
        let lease_round = self.membership.quorum_value(|voter| {
            if voter == id {
                own_round
            } else {
                progress
                    .get(&voter)
                    .filter(|progress| progress.matched > LogIndex(0))
                    .map_or(0, |progress| progress.round_acked)
            }
        });
        if lease_round > leader.lease_rounds_after {
            if let Some(sent_at) = leader.round_sent_at(lease_round) {
                leader.lease_expires_at =
                    leader.lease_expires_at.max(sent_at.plus_nanos(lease_nanos));
            }
        }
        if quorum_round <= leader.quorum_round {
            return;
        }
        leader.quorum_round = quorum_round;
        while let Some(read) = leader.pending_reads.front() {
            if read.round > quorum_round {
                break;
            }
            self.read_states.push(ReadState {
                context: read.context,
                outcome: Ok(read.index),
            });
            leader.pending_reads.pop_front();
        }
    }

    // ---- follower ----------------------------------------------------------------------

    pub(super) fn handle_append_entries(
        &mut self,
        from: NodeId,
        prev: EntryId,
        entries: &[crate::types::Entry],
        leader_commit: LogIndex,
    ) -> Result<(), StepError> {
        let committed = self.log.committed();
        if prev.index < committed {
            // Everything up to our commit index matches any leader's log; a message from
            // before it is stale. Tell the leader where we are.
            let matched = EntryId::new(self.log.term(committed).unwrap_or_default(), committed);
            let body = MessageBody::AppendEntriesResponse(AppendResponse::Success { matched });
            self.send_after_persist(from, body);
            return Ok(());
        }
        let body = match self.log.maybe_append(prev, entries, leader_commit) {
            Ok(last) => {
                // A truncation may have removed a configuration; appended ones take effect.
                let forgotten = self.configs.forget_truncated(&self.log);
                let recorded = self.configs.record(entries);
                if forgotten || recorded {
                    self.membership_changed();
                }
                let term = self.log.term(last).unwrap_or_default();
                AppendResponse::Success {
                    matched: EntryId::new(term, last),
                }
            }
            Err(AppendRejection::Mismatch { hint }) => AppendResponse::Reject {
                rejected_prev: prev.index,
                hint,
            },
            Err(AppendRejection::WouldOverwriteCommitted) => {
                return Err(StepError::Malformed {
                    from,
                    reason: "append would overwrite committed entries",
                });
            }
        };
        // Acknowledged only once durable: the leader counts this toward a commit.
        self.send_after_persist(from, MessageBody::AppendEntriesResponse(body));
        Ok(())
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, commit: LogIndex, round: u64) {
        self.log.commit_to(commit);
        self.send(from, self.term, MessageBody::HeartbeatResponse { round });
    }
}
