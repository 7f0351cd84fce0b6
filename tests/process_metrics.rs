//! The metrics and health endpoint of real `keyval` processes, over real HTTP: a 3-node
//! cluster is written to, then each node's `/metrics` is scraped and parsed (one leader among
//! them, indexes that moved, the fsync histogram filled), `/livez` and `/readyz` answer 200,
//! `promtool check metrics` accepts the exposition (when Prometheus's `promtool` is on PATH),
//! and every series named by docs/grafana-dashboard.json and docs/alerts.yml exists.

mod process_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use process_support::{http_get, wait_for, ProcessCluster};

/// A scrape: sample values by `name{labels}`, and every series name the exposition declares
/// (`# TYPE` lines, with `_bucket`/`_sum`/`_count` for histograms, `_total` as written).
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
    names: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let mut parts = declared.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                names.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let name = series.split('{').next().unwrap_or(series);
            names.insert(name.to_string());
            samples.insert(series.to_string(), value.parse().expect("a number"));
        }
        Scrape {
            text,
            samples,
            names,
        }
    }

    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from:\n{}", self.text))
    }
}

fn scrape(address: &str) -> Scrape {
    let (status, body) = http_get(address, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body)
}

/// The metric names a PromQL expression uses: identifiers starting `keyval_` or `process_`.
fn series_in(expression: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = expression.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let rest = &expression[start..];
        let at_word_start = start == 0 || {
            let before = bytes[start - 1];
            !(before.is_ascii_alphanumeric() || before == b'_')
        };
        if at_word_start && (rest.starts_with("keyval_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            found.push(rest[..end].to_string());
            start += end;
        } else {
            start += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    found
}

/// Every `"expr"` string in a Grafana dashboard, however deeply nested.
fn dashboard_expressions(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expression)) => {
                        found.push(expression.clone())
                    }
                    _ => dashboard_expressions(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_expressions(item, found);
            }
        }
        _ => {}
    }
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool_check_metrics(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("promtool is not on PATH: skipping `promtool check metrics` (CI installs it)");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `promtool check rules` on docs/alerts.yml, when promtool is installed.
fn promtool_check_rules(path: &std::path::Path) {
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(path)
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(_) => println!("promtool is not on PATH: skipping `promtool check rules`"),
    }
}

#[test]
fn a_three_node_cluster_serves_metrics_and_health_over_http() {
    let cluster = ProcessCluster::start(3);
    let client = cluster.client();
    cluster.wait_leader(&client);
    for k in 0..20u32 {
        client
            .put(
                format!("metrics/{k}").into_bytes(),
                k.to_le_bytes().to_vec(),
            )
            .unwrap();
    }

    for address in &cluster.metrics_addresses {
        assert_eq!(http_get(address, "/livez").expect("livez").0, 200);
        let mut last = None;
        assert!(
            wait_for(|| {
                last = http_get(address, "/readyz").ok();
                last.as_ref().is_some_and(|(status, _)| *status == 200)
            }),
            "{address} /readyz: {last:?}"
        );
        let (status, _) = http_get(address, "/nowhere").expect("404");
        assert_eq!(status, 404);
    }

    // Every node has applied the writes and sees the same single leader.
    let mut scrapes = Vec::new();
    assert!(
        wait_for(|| {
            scrapes = cluster
                .metrics_addresses
                .iter()
                .map(|address| scrape(address))
                .collect();
            let leaders: f64 = scrapes
                .iter()
                .map(|scrape| scrape.value("keyval_is_leader"))
                .sum();
            leaders == 1.0
                && scrapes
                    .iter()
                    .all(|scrape| scrape.value("keyval_store_keys") >= 20.0)
        }),
        "one leader and every write applied on every node"
    );
    for scrape in &scrapes {
        assert_eq!(scrape.value("keyval_has_leader"), 1.0);
        assert!(scrape.value("keyval_term") >= 1.0);
        assert!(scrape.value("keyval_applied_index") >= 20.0);
        assert!(scrape.value("keyval_commit_index") >= scrape.value("keyval_applied_index"));
        assert!(scrape.value("keyval_last_index") >= scrape.value("keyval_commit_index"));
        assert!(scrape.value("keyval_log_fsync_duration_seconds_count") > 0.0);
        assert!(scrape.value("keyval_log_disk_bytes") > 0.0);
        // 20 keys of 9 or 10 bytes, each with a 4-byte value.
        assert!(scrape.value("keyval_store_bytes") >= 20.0 * 13.0);
        assert!(scrape.value("keyval_leader_changes_total") >= 1.0);
        assert!(scrape.value("keyval_peer_sent_messages_total") > 0.0);
        assert!(scrape.value("keyval_client_connections_open") >= 0.0);
        assert!(scrape.value("keyval_proposals_pending") >= 0.0);
        assert!(scrape.value("process_resident_memory_bytes") > 0.0);
        assert!(scrape.value("process_open_fds") > 0.0);
        assert_eq!(scrape.value("keyval_failed"), 0.0);
        let connected = scrape
            .samples
            .iter()
            .filter(|(series, value)| {
                series.starts_with("keyval_peer_connected{") && **value == 1.0
            })
            .count();
        assert!(connected >= 1, "no peer connected:\n{}", scrape.text);
    }
    // The leader measures each follower's heartbeat round trip.
    let leader = scrapes
        .iter()
        .position(|scrape| scrape.value("keyval_is_leader") == 1.0)
        .expect("a leader");
    let mut leader_scrape = None;
    assert!(
        wait_for(|| {
            let scrape = scrape(&cluster.metrics_addresses[leader]);
            let measured = scrape
                .samples
                .iter()
                .filter(|(series, value)| {
                    series.starts_with("keyval_peer_round_trip_seconds_count{") && **value > 0.0
                })
                .count();
            leader_scrape = Some(scrape);
            measured == 2
        }),
        "round trips to both followers:\n{}",
        leader_scrape.map(|scrape| scrape.text).unwrap_or_default()
    );
    // The leader's client server counted the writes it answered, with their latency.
    let written = leader_scrape
        .as_ref()
        .map(|scrape| {
            scrape
                .samples
                .iter()
                .filter(|(series, _)| {
                    series.starts_with("keyval_client_request_duration_seconds_count{")
                        && series.contains("op=\"write\"")
                        && series.contains("result=\"ok\"")
                })
                .map(|(_, value)| *value)
                .sum::<f64>()
        })
        .unwrap_or_default();
    assert!(written >= 1.0, "no answered write was counted");
    scrapes.extend(leader_scrape);
    promtool_check_metrics(&scrapes[0].text);

    // The docs' dashboard and alert rules name only series that exist.
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut expressions = Vec::new();
    dashboard_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 10, "{expressions:?}");
    let rules = std::fs::read_to_string(docs.join("alerts.yml")).expect("alert rules");
    expressions.extend(
        rules
            .lines()
            .filter_map(|line| line.trim().strip_prefix("expr:"))
            .map(str::to_string),
    );
    // Some series appear only on the leader (round trips), so take them from every node.
    let known: BTreeSet<String> = scrapes
        .iter()
        .flat_map(|scrape| scrape.names.iter().cloned())
        .collect();
    for expression in &expressions {
        let named = series_in(expression);
        assert!(!named.is_empty(), "{expression:?} names no keyval series");
        for name in named {
            assert!(
                known.contains(&name),
                "{name} (in {expression:?}) is not a series of /metrics"
            );
        }
    }
    promtool_check_rules(&docs.join("alerts.yml"));
}

#[test]
fn series_names_are_found_in_promql() {
    assert_eq!(
        series_in("sum(rate(keyval_leader_changes_total[1h])) > 3 and process_open_fds"),
        vec!["keyval_leader_changes_total", "process_open_fds"]
    );
    assert!(series_in("up{job=\"keyval\"}").is_empty());
}
