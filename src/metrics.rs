//! Metrics in the Prometheus text format (through `prometheus-client`), and readiness.
//!
//! Two kinds of series, one registry, no global state:
//!
//! - **Recorded** as things happen, by the node's threads into a [`NodeMetrics`] the node owns
//!   ([`Node::metrics`]): log fsync durations and batch sizes (log writer), apply durations
//!   (applier), snapshot save / send / install durations, leader changes, proposal outcomes;
//!   and by the client server into [`Metrics::client_request`].
//! - **Read at scrape time** from a [`Sample`] the owner of the registry gathers
//!   ([`Node::status`], transport and server stats, the data directory, `/proc/self`): role,
//!   term, indexes, keys, bytes on disk, connections, process CPU and memory.
//!
//! The binary builds one [`Metrics`] per node and serves it over HTTP ([`http`], feature
//! `metrics-http`); an embedder may call [`Metrics::encode`] itself. Every series and what it
//! means is listed in `docs/monitoring.md`.

#[cfg(feature = "metrics-http")]
pub mod http;
mod process;

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::path::Path;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::node::{Node, NodeStatus};
use crate::protocol::{RequestBody, ServerError};
use crate::raft::RoleKind;
use crate::state_machine::StateMachine;
use crate::transport::tcp::{PeerStats, TransportStats};
use crate::types::NodeId;

/// The prefix of every keyval series (`keyval_term`, ...). Process series use the standard
/// `process_*` names every dashboard knows.
pub const PREFIX: &str = "keyval";

/// `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Buckets of duration histograms: 100 µs to ~13 s, doubling (fsyncs of 100 µs on a fast NVMe
/// disk up to a stalled disk's seconds; etcd uses the same range for its WAL fsync).
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// Buckets of round-trip times: 50 µs to ~1.6 s, doubling.
fn round_trip_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Buckets of size histograms (entries per batch): 1 to 32768, doubling.
fn count_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Seconds as a histogram observation.
fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Why a proposal ends without a result (`keyval_proposals_failed_total{reason}`).
pub const PROPOSAL_FAILURES: [&str; 5] =
    ["dropped", "indeterminate", "timeout", "storage", "shutdown"];

/// The operations of client requests, the `op` label of
/// `keyval_client_request_duration_seconds` (series for their `ok` result exist from the
/// start, at zero).
pub const CLIENT_OPERATIONS: [&str; 9] = [
    "write", "read", "status", "snapshot", "members", "admin", "lease", "watch", "auth",
];

/// The results of client requests, the `result` label: `ok`, or the protocol's error kinds
/// ([`ServerError`]) in snake case.
pub const CLIENT_RESULTS: [&str; 19] = [
    "ok",
    "not_leader",
    "busy",
    "invalid",
    "dropped",
    "indeterminate",
    "read_timeout",
    "no_lease",
    "unavailable",
    "no_snapshot",
    "snapshot_moved",
    "snapshot_offset",
    "refused",
    "transfer_failed",
    "compacted",
    "watch_canceled",
    "unauthenticated",
    "authentication_failed",
    "permission_denied",
];

/// The `op` label of a client request: one of [`CLIENT_OPERATIONS`].
pub fn request_operation(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Write(_) => "write",
        RequestBody::Read { .. } => "read",
        RequestBody::Status => "status",
        RequestBody::TakeSnapshot | RequestBody::SnapshotChunk { .. } => "snapshot",
        RequestBody::Members => "members",
        RequestBody::AddMember { .. }
        | RequestBody::PromoteMember { .. }
        | RequestBody::RemoveMember { .. }
        | RequestBody::TransferLeader { .. } => "admin",
        RequestBody::LeaseKeepAlive { .. }
        | RequestBody::LeaseTimeToLive { .. }
        | RequestBody::LeaseList => "lease",
        RequestBody::Watch(_) | RequestBody::WatchCancel { .. } | RequestBody::WatchProgress => {
            "watch"
        }
        RequestBody::Authenticate { .. }
        | RequestBody::PresentToken { .. }
        | RequestBody::Auth(_) => "auth",
    }
}

/// The `result` label of a client request's answer: one of [`CLIENT_RESULTS`]. A write the
/// state machine answered (a failed comparison included) is `ok`: it was served.
pub fn request_result<T>(outcome: Result<T, &ServerError>) -> &'static str {
    let Err(error) = outcome else {
        return "ok";
    };
    match error {
        ServerError::NotLeader { .. } => "not_leader",
        ServerError::Busy { .. } => "busy",
        ServerError::Invalid(_) => "invalid",
        ServerError::Dropped => "dropped",
        ServerError::Indeterminate { .. } => "indeterminate",
        ServerError::ReadTimeout => "read_timeout",
        ServerError::NoLease => "no_lease",
        ServerError::Unavailable { .. } => "unavailable",
        ServerError::NoSnapshot => "no_snapshot",
        ServerError::SnapshotMoved { .. } => "snapshot_moved",
        ServerError::SnapshotOffset { .. } => "snapshot_offset",
        ServerError::Refused { .. } => "refused",
        ServerError::TransferFailed { .. } => "transfer_failed",
        ServerError::Compacted { .. } => "compacted",
        ServerError::WatchCanceled { .. } => "watch_canceled",
        ServerError::Unauthenticated { .. } => "unauthenticated",
        ServerError::AuthenticationFailed => "authentication_failed",
        ServerError::PermissionDenied { .. } => "permission_denied",
    }
}

/// Label set of one label.
type Label = [(&'static str, &'static str); 1];
/// Label set naming a peer by its id.
type PeerLabel = [(&'static str, String); 1];

/// `{peer="2"}`.
fn peer_label(peer: NodeId) -> PeerLabel {
    [("peer", peer.0.to_string())]
}
/// Label set of client requests: operation and result.
type RequestLabels = [(&'static str, &'static str); 2];

/// Instruments the node's threads record into. Cloning shares them (each is an `Arc`).
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    pub(crate) log_fsync_duration: Histogram,
    pub(crate) log_fsync_batch_entries: Histogram,
    pub(crate) apply_duration: Histogram,
    pub(crate) apply_batch_entries: Histogram,
    pub(crate) snapshot_save_duration: Histogram,
    pub(crate) snapshot_save_bytes: Counter,
    pub(crate) snapshot_send_duration: Histogram,
    pub(crate) snapshot_sent_bytes: Counter,
    pub(crate) snapshot_install_duration: Histogram,
    pub(crate) leader_changes: Counter,
    pub(crate) proposals_failed: Family<Label, Counter>,
    pub(crate) peer_round_trip: Family<PeerLabel, Histogram>,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        let metrics = NodeMetrics {
            log_fsync_duration: duration_buckets(),
            log_fsync_batch_entries: count_buckets(),
            apply_duration: duration_buckets(),
            apply_batch_entries: count_buckets(),
            snapshot_save_duration: duration_buckets(),
            snapshot_save_bytes: Counter::default(),
            snapshot_send_duration: duration_buckets(),
            snapshot_sent_bytes: Counter::default(),
            snapshot_install_duration: duration_buckets(),
            leader_changes: Counter::default(),
            proposals_failed: Family::default(),
            peer_round_trip: Family::new_with_constructor(round_trip_buckets),
        };
        // Every reason exists from the start, at zero: a rate over a series that appears
        // only with the first failure misses that failure.
        for reason in PROPOSAL_FAILURES {
            metrics
                .proposals_failed
                .get_or_create_owned(&[("reason", reason)]);
        }
        metrics
    }
}

impl NodeMetrics {
    /// Registers every instrument in `registry` (give it the `keyval` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "log_fsync_duration_seconds",
            "Time to write and fsync one batch of log entries and hard state (group commit)",
            self.log_fsync_duration.clone(),
        );
        registry.register(
            "log_fsync_batch_entries",
            "Log entries made durable by one fsync (group commit batch size)",
            self.log_fsync_batch_entries.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine",
            self.apply_duration.clone(),
        );
        registry.register(
            "apply_batch_entries",
            "Committed entries applied in one batch",
            self.apply_batch_entries.clone(),
        );
        registry.register(
            "snapshot_save_duration_seconds",
            "Time to serialize, write and fsync a local snapshot (count: snapshots taken)",
            self.snapshot_save_duration.clone(),
        );
        registry.register(
            "snapshot_save_bytes",
            "Bytes of local snapshots written",
            self.snapshot_save_bytes.clone(),
        );
        registry.register(
            "snapshot_send_duration_seconds",
            "Time from a snapshot's first chunk to its last handed to the transport, as leader \
             (count: snapshots sent)",
            self.snapshot_send_duration.clone(),
        );
        registry.register(
            "snapshot_sent_bytes",
            "Bytes of snapshot chunks sent to followers",
            self.snapshot_sent_bytes.clone(),
        );
        registry.register(
            "snapshot_install_duration_seconds",
            "Time to restore a snapshot received from the leader into the state machine \
             (count: snapshots installed)",
            self.snapshot_install_duration.clone(),
        );
        registry.register(
            "leader_changes",
            "Times this node saw a new leader",
            self.leader_changes.clone(),
        );
        registry.register(
            "peer_round_trip_seconds",
            "As leader, time from a heartbeat to a peer to its answer, by peer",
            self.peer_round_trip.clone(),
        );
        registry.register(
            "proposals_failed",
            "Proposals appended by this node that ended without a result, by reason (dropped: \
             overwritten; indeterminate: outcome unknowable here; timeout: the caller's \
             deadline; storage; shutdown)",
            self.proposals_failed.clone(),
        );
    }

    /// A heartbeat to `peer` was answered `round_trip` after it was sent.
    pub(crate) fn heartbeat_answered(&self, peer: NodeId, round_trip: Duration) {
        self.peer_round_trip
            .get_or_create(&peer_label(peer))
            .observe(seconds(round_trip));
    }

    /// A proposal ended without a result for `reason` (one of [`PROPOSAL_FAILURES`]).
    pub(crate) fn proposal_failed(&self, reason: &'static str) {
        self.proposals_failed
            .get_or_create(&[("reason", reason)])
            .inc();
    }
}

/// Client-request instruments, recorded by the client server.
#[derive(Clone, Debug)]
struct ClientMetrics {
    requests: Family<RequestLabels, Histogram>,
}

/// What the scrape-time series read: gathered by the owner of the [`Metrics`] on each scrape
/// (see [`Metrics::new`]). A `None` omits the series.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// The node's status.
    pub status: Option<NodeStatus>,
    /// Proposals waiting for their outcome on this node.
    pub proposals_pending: Option<u64>,
    /// Keys in the store.
    pub store_keys: Option<u64>,
    /// Bytes of keys and values in the store.
    pub store_bytes: Option<u64>,
    /// Bytes of log segments on disk.
    pub log_bytes: Option<u64>,
    /// Bytes of snapshot files on disk.
    pub snapshot_bytes: Option<u64>,
    /// Peer transport counters.
    pub transport: Option<TransportStats>,
    /// Peer transport counters by peer.
    pub peers: Option<BTreeMap<NodeId, PeerStats>>,
    /// Client connections open now.
    pub client_connections_open: Option<u64>,
    /// Client connections accepted since start.
    pub client_connections_accepted: Option<u64>,
    /// Client connections refused (over the limit) since start.
    pub client_connections_refused: Option<u64>,
}

impl Sample {
    /// The parts of a sample that come from the node: status, pending proposals, and the
    /// store's keys and bytes as `size` counts them (one short hold of the state machine's
    /// lock: `size` must be O(1)).
    pub fn of_node<M: StateMachine>(node: &Node<M>, size: impl FnOnce(&M) -> (u64, u64)) -> Sample {
        let (keys, bytes) = node.with_state_machine(size);
        Sample {
            status: Some(node.status()),
            proposals_pending: Some(node.proposals_pending() as u64),
            store_keys: Some(keys),
            store_bytes: Some(bytes),
            ..Sample::default()
        }
    }

    /// Fills in the bytes of log segments (`<dir>/wal`) and snapshots (`<dir>/snapshot`) of a
    /// file storage's data directory.
    pub fn with_data_dir(mut self, dir: &Path) -> Sample {
        self.log_bytes = Some(directory_bytes(&dir.join("wal")));
        self.snapshot_bytes = Some(directory_bytes(&dir.join("snapshot")));
        self
    }
}

/// Bytes of the regular files directly in `dir` (0 when it cannot be read).
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

/// One node's metrics: its registry, the node's instruments, the client-request instruments
/// and the scrape-time series. Share it in an `Arc` between the node's owner, the client
/// server and the HTTP endpoint.
pub struct Metrics {
    registry: Registry,
    client: ClientMetrics,
}

impl Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with `node`'s instruments, client-request instruments, the process series,
    /// and the series read from `sample()` at each scrape.
    pub fn new(node: &NodeMetrics, sample: impl Fn() -> Sample + Send + Sync + 'static) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        let keyval = registry.sub_registry_with_prefix(PREFIX);
        node.register(keyval);
        let client = ClientMetrics {
            requests: Family::new_with_constructor(duration_buckets),
        };
        for op in CLIENT_OPERATIONS {
            client
                .requests
                .get_or_create_owned(&[("op", op), ("result", "ok")]);
        }
        keyval.register(
            "client_request_duration_seconds",
            "Client requests by operation and result, from arrival to answer",
            client.requests.clone(),
        );
        keyval.register_collector(Box::new(SampleCollector {
            sample: Box::new(sample),
        }));
        Metrics { registry, client }
    }

    /// The client server answered a request of operation `op` (one of [`CLIENT_OPERATIONS`])
    /// with `result` (one of [`CLIENT_RESULTS`]) after `latency`, measured from the request's
    /// arrival to its answer. Both are static names from a small fixed set: each pair is one
    /// series, so never pass anything derived from the request's content.
    pub fn client_request(&self, op: &'static str, result: &'static str, latency: Duration) {
        self.client
            .requests
            .get_or_create(&[("op", op), ("result", result)])
            .observe(seconds(latency));
    }

    /// Every series in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; a collector's error would leave the text short.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Whether `node` should receive traffic (`/readyz`): it is a voter that has not failed,
/// knows a leader, and has applied everything it knew committed when asked (waiting up to
/// `wait` for the applier to get there). The error is a one-line reason.
pub fn readiness<M: StateMachine>(node: &Node<M>, wait: Duration) -> Result<(), String> {
    let status = node.status();
    if status.failed {
        return Err("storage failed: the node stopped serving".into());
    }
    if !status.membership.is_voter(status.id) {
        return Err(if status.membership.learners.contains(&status.id) {
            "a learner (not a voter yet)".into()
        } else {
            "not a member of the configuration in force".into()
        });
    }
    let Some(leader) = status.leader else {
        return Err("no leader known".into());
    };
    if status.applied < status.committed {
        let deadline = std::time::Instant::now() + wait;
        if node.wait_applied(status.committed, deadline).is_err() {
            return Err(format!(
                "behind: applied {} of {} committed (leader {})",
                node.status().applied.0,
                status.committed.0,
                leader.0
            ));
        }
    }
    Ok(())
}

/// The scrape-time series, read from a [`Sample`].
struct SampleCollector {
    sample: Box<dyn Fn() -> Sample + Send + Sync>,
}

impl Debug for SampleCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SampleCollector").finish_non_exhaustive()
    }
}

/// Writes one unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl Into<i64>,
) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value.into()).encode(metric)
}

/// Writes one unlabelled counter (`_total` is appended).
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// A `u64` as a gauge value (saturating; no real count comes near).
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for SampleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let sample = (self.sample)();
        if let Some(status) = &sample.status {
            encode_status(&mut encoder, status)?;
        }
        if let Some(pending) = sample.proposals_pending {
            gauge(
                &mut encoder,
                "proposals_pending",
                "Proposals waiting on this node for their outcome",
                int(pending),
            )?;
        }
        if let Some(keys) = sample.store_keys {
            gauge(&mut encoder, "store_keys", "Keys in the store", int(keys))?;
        }
        if let Some(bytes) = sample.store_bytes {
            gauge(
                &mut encoder,
                "store_bytes",
                "Bytes of keys and values in the store",
                int(bytes),
            )?;
        }
        if let Some(bytes) = sample.log_bytes {
            gauge(
                &mut encoder,
                "log_disk_bytes",
                "Bytes of log segments on disk",
                int(bytes),
            )?;
        }
        if let Some(bytes) = sample.snapshot_bytes {
            gauge(
                &mut encoder,
                "snapshot_disk_bytes",
                "Bytes of snapshot files on disk",
                int(bytes),
            )?;
        }
        if let Some(open) = sample.client_connections_open {
            gauge(
                &mut encoder,
                "client_connections_open",
                "Client connections open now",
                int(open),
            )?;
        }
        if let Some(accepted) = sample.client_connections_accepted {
            counter(
                &mut encoder,
                "client_connections_accepted",
                "Client connections accepted",
                accepted,
            )?;
        }
        if let Some(refused) = sample.client_connections_refused {
            counter(
                &mut encoder,
                "client_connections_refused",
                "Client connections refused at the connection limit",
                refused,
            )?;
        }
        if let Some(transport) = &sample.transport {
            encode_transport(&mut encoder, transport)?;
        }
        if let Some(peers) = &sample.peers {
            encode_peers(&mut encoder, peers)?;
        }
        Ok(())
    }
}

fn encode_status(encoder: &mut DescriptorEncoder, status: &NodeStatus) -> fmt::Result {
    let is_leader = status.role == RoleKind::Leader;
    gauge(
        encoder,
        "has_leader",
        "1 when this node knows a leader (itself included)",
        i64::from(status.leader.is_some()),
    )?;
    gauge(
        encoder,
        "is_leader",
        "1 when this node is the leader",
        i64::from(is_leader),
    )?;
    gauge(
        encoder,
        "is_learner",
        "1 when this node is a learner (receives the log, does not vote)",
        i64::from(status.membership.learners.contains(&status.id)),
    )?;
    gauge(
        encoder,
        "failed",
        "1 when this node stopped serving after a storage failure",
        i64::from(status.failed),
    )?;
    {
        let help = "This node's role: 1 for the current one";
        let mut metric = encoder.encode_descriptor("role", help, None, MetricType::Gauge)?;
        for (name, role) in [
            ("follower", RoleKind::Follower),
            ("pre_candidate", RoleKind::PreCandidate),
            ("candidate", RoleKind::Candidate),
            ("leader", RoleKind::Leader),
        ] {
            let labels: Label = [("role", name)];
            let family = metric.encode_family(&labels)?;
            ConstGauge::new(i64::from(status.role == role)).encode(family)?;
        }
    }
    gauge(encoder, "term", "The current Raft term", int(status.term.0))?;
    gauge(
        encoder,
        "commit_index",
        "The highest log index this node knows committed",
        int(status.committed.0),
    )?;
    gauge(
        encoder,
        "applied_index",
        "The highest log index applied to this node's state machine",
        int(status.applied.0),
    )?;
    gauge(
        encoder,
        "last_index",
        "This node's last log index",
        int(status.last_index.0),
    )?;
    gauge(
        encoder,
        "persisted_index",
        "The highest log index durable in this node's storage",
        int(status.persisted.0),
    )?;
    counter(
        encoder,
        "proposals_committed",
        "Entries committed (the commit index, as etcd's proposals_committed_total)",
        status.committed.0,
    )?;
    counter(
        encoder,
        "proposals_applied",
        "Entries applied (the applied index, as etcd's proposals_applied_total)",
        status.applied.0,
    )?;
    gauge(
        encoder,
        "voters",
        "Voters in the configuration in force",
        int(status.membership.voters.len() as u64),
    )?;
    gauge(
        encoder,
        "learners",
        "Learners in the configuration in force",
        int(status.membership.learners.len() as u64),
    )
}

fn encode_transport(encoder: &mut DescriptorEncoder, stats: &TransportStats) -> fmt::Result {
    counter(
        encoder,
        "peer_sent_bytes",
        "Bytes sent to peers",
        stats.bytes_sent,
    )?;
    counter(
        encoder,
        "peer_received_bytes",
        "Bytes received from peers",
        stats.bytes_received,
    )?;
    counter(
        encoder,
        "peer_sent_messages",
        "Messages sent to peers",
        stats.frames_sent,
    )?;
    counter(
        encoder,
        "peer_received_messages",
        "Messages received from peers",
        stats.frames_received,
    )?;
    let help = "Messages to or from peers dropped, by reason (Raft retransmits)";
    let mut metric =
        encoder.encode_descriptor("peer_dropped_messages", help, None, MetricType::Counter)?;
    for (reason, value) in [
        ("unknown_peer", stats.dropped_unknown_peer),
        ("queue_full", stats.dropped_queue_full),
        ("unreachable", stats.dropped_unreachable),
        ("unencodable", stats.dropped_unencodable),
        ("inbound_full", stats.dropped_inbound_full),
    ] {
        let labels: Label = [("reason", reason)];
        let family = metric.encode_family(&labels)?;
        ConstCounter::new(value).encode(family)?;
    }
    Ok(())
}

fn encode_peers(
    encoder: &mut DescriptorEncoder,
    peers: &BTreeMap<NodeId, PeerStats>,
) -> fmt::Result {
    /// Name, help, type, and the value of one peer.
    type PeerSeries = (
        &'static str,
        &'static str,
        MetricType,
        fn(&PeerStats) -> u64,
    );
    let series: [PeerSeries; 3] = [
        (
            "peer_send_failures",
            "Messages to a peer that were not sent (queue full, unreachable, write failed), by peer",
            MetricType::Counter,
            |stats| stats.send_failures,
        ),
        (
            "peer_connect_failures",
            "Failed attempts to connect to a peer, by peer",
            MetricType::Counter,
            |stats| stats.connect_failures,
        ),
        (
            "peer_connected",
            "1 while a connection to the peer is open, by peer",
            MetricType::Gauge,
            |stats| u64::from(stats.connected),
        ),
    ];
    for (name, help, metric_type, value) in series {
        let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
        for (&peer, stats) in peers {
            let labels = peer_label(peer);
            let family = metric.encode_family(&labels)?;
            if metric_type == MetricType::Counter {
                ConstCounter::new(value(stats)).encode(family)?;
            } else {
                ConstGauge::new(int(value(stats))).encode(family)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_sample_still_encodes_the_recorded_series() {
        let node = NodeMetrics::default();
        node.log_fsync_duration.observe(0.002);
        node.proposal_failed("timeout");
        let metrics = Metrics::new(&node, Sample::default);
        metrics.client_request("put", "ok", Duration::from_millis(3));
        let text = metrics.encode();
        for needle in [
            "# TYPE keyval_log_fsync_duration_seconds histogram",
            "keyval_log_fsync_duration_seconds_count 1",
            "keyval_proposals_failed_total{reason=\"timeout\"} 1",
            "keyval_proposals_failed_total{reason=\"dropped\"} 0",
            "keyval_client_request_duration_seconds_count{op=\"read\",result=\"ok\"} 0",
            "keyval_client_request_duration_seconds_count{op=\"put\",result=\"ok\"} 1",
            "keyval_leader_changes_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("keyval_term"), "no status, no term");
    }

    #[test]
    fn request_labels_come_from_the_fixed_sets() {
        let bodies = [
            RequestBody::Status,
            RequestBody::Members,
            RequestBody::TakeSnapshot,
            RequestBody::LeaseList,
            RequestBody::PromoteMember {
                id: crate::types::NodeId(2),
            },
        ];
        for body in &bodies {
            assert!(CLIENT_OPERATIONS.contains(&request_operation(body)));
        }
        assert_eq!(request_result::<()>(Ok(())), "ok");
        let errors = [
            ServerError::Dropped,
            ServerError::ReadTimeout,
            ServerError::NoLease,
            ServerError::NoSnapshot,
            ServerError::Busy {
                reason: String::new(),
            },
        ];
        for error in &errors {
            assert!(CLIENT_RESULTS.contains(&request_result::<()>(Err(error))));
        }
    }

    #[test]
    fn a_sample_with_status_encodes_gauges() {
        let status = NodeStatus {
            id: crate::types::NodeId(1),
            role: RoleKind::Leader,
            term: crate::types::Term(3),
            leader: Some(crate::types::NodeId(1)),
            committed: crate::types::LogIndex(7),
            applied: crate::types::LogIndex(7),
            last_index: crate::types::LogIndex(8),
            persisted: crate::types::LogIndex(8),
            membership: crate::types::Membership {
                voters: [crate::types::NodeId(1)].into(),
                ..Default::default()
            },
            failed: false,
        };
        let sample = Sample {
            status: Some(status),
            store_keys: Some(5),
            client_connections_open: Some(2),
            ..Sample::default()
        };
        let metrics = Metrics::new(&NodeMetrics::default(), move || sample.clone());
        let text = metrics.encode();
        for needle in [
            "keyval_is_leader 1",
            "keyval_has_leader 1",
            "keyval_term 3",
            "keyval_commit_index 7",
            "keyval_proposals_applied_total 7",
            "keyval_role{role=\"leader\"} 1",
            "keyval_role{role=\"follower\"} 0",
            "keyval_store_keys 5",
            "keyval_client_connections_open 2",
            "# TYPE keyval_proposals_committed_total counter",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
