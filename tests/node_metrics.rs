//! What a node records for `/metrics` and says for `/readyz`, on an in-process cluster over
//! the simulated network: voters that applied what they know committed are ready, a learner
//! and a node cut off from the leader are not (each with its reason); applying and syncing
//! fill their histograms, a leader change is counted, and a proposal whose caller's deadline
//! passed is counted as failed by timeout.

use std::time::{Duration, Instant};

use keyval::metrics::{self, Metrics, Sample};
use keyval::testkit::Cluster;
use keyval::NodeId;

const WAIT: Duration = Duration::from_secs(30);

/// The value of `series` (exact name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

fn scrape(cluster: &Cluster<keyval::testkit::CommandLog>, id: NodeId) -> String {
    let node = cluster.node(id).expect("running");
    let sample_node = node.clone();
    Metrics::new(node.metrics(), move || {
        Sample::of_node(&sample_node, |_| (0, 0))
    })
    .encode()
}

#[test]
fn voters_are_ready_learners_and_cut_off_nodes_are_not() {
    let cluster = Cluster::new(3);
    let leader = cluster.wait_for_leader(WAIT);
    for k in 0..10u8 {
        cluster.propose(&[k], WAIT).expect("proposal");
    }
    for id in cluster.ids() {
        let node = cluster.node(id).expect("running");
        assert!(
            cluster.wait_for(WAIT, |_| metrics::readiness(&node, Duration::from_secs(1))
                .is_ok()),
            "{id} ready: {:?}",
            metrics::readiness(&node, Duration::ZERO)
        );
    }

    let text = scrape(&cluster, leader);
    assert_eq!(value(&text, "keyval_is_leader"), Some(1.0), "{text}");
    assert!(value(&text, "keyval_apply_duration_seconds_count").is_some_and(|n| n > 0.0));
    assert!(value(&text, "keyval_log_fsync_duration_seconds_count").is_some_and(|n| n > 0.0));
    assert!(value(&text, "keyval_log_fsync_batch_entries_sum").is_some_and(|n| n >= 10.0));
    assert!(value(&text, "keyval_leader_changes_total").is_some_and(|n| n >= 1.0));
    assert!(value(&text, "keyval_proposals_applied_total").is_some_and(|n| n >= 10.0));
    assert_eq!(value(&text, "keyval_proposals_pending"), Some(0.0));

    // A learner receives the log but is not ready.
    let learner = NodeId(4);
    cluster.add_node(learner);
    let leader_node = cluster.node(leader).expect("leader");
    leader_node
        .add_member(learner, None, false, Instant::now() + WAIT)
        .expect("learner added");
    let learner_node = cluster.node(learner).expect("learner");
    // It may hear the leader before the entry that makes it a learner reaches it (then it is
    // "not a member of the configuration in force"): wait for the configuration, and it is
    // not ready all along.
    assert!(
        cluster.wait_for(WAIT, |_| {
            learner_node.status().leader.is_some()
                && metrics::readiness(&learner_node, Duration::from_secs(1))
                    .is_err_and(|refusal| refusal.contains("learner"))
        }),
        "a learner is not ready, for being one: {:?}",
        metrics::readiness(&learner_node, Duration::from_secs(1))
    );
    let text = scrape(&cluster, learner);
    assert_eq!(value(&text, "keyval_is_learner"), Some(1.0), "{text}");

    // A follower cut off from everyone loses its leader and is not ready; a proposal on the
    // leader, cut off from its quorum, times out and is counted.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != learner)
        .expect("a follower");
    cluster.disconnect(follower);
    let follower_node = cluster.node(follower).expect("follower");
    assert!(
        cluster.wait_for(WAIT, |_| {
            metrics::readiness(&follower_node, Duration::ZERO)
                .is_err_and(|reason| reason.contains("no leader"))
        }),
        "a cut-off follower is not ready: {:?}",
        metrics::readiness(&follower_node, Duration::ZERO)
    );
    let text = scrape(&cluster, follower);
    assert_eq!(value(&text, "keyval_has_leader"), Some(0.0), "{text}");

    cluster.disconnect(leader);
    let outcome = leader_node.propose(vec![99], Instant::now() + Duration::from_millis(200));
    assert!(outcome.is_err(), "{outcome:?}");
    let text = scrape(&cluster, leader);
    assert!(
        value(&text, "keyval_proposals_failed_total{reason=\"timeout\"}").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}
