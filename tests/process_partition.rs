//! Real network partitions between real processes: each `keyval` node runs in its own network
//! namespace with one veth link per pair of nodes (peer traffic) and one link to the test's
//! namespace (client traffic). The nemesis cuts a node's peer links while clients can still
//! reach it — a deposed leader that may still believe it leads — and kills and restarts nodes.
//! Concurrent clients record every operation; the history must be linearizable.
//!
//! Needs root and iproute2 (`ip netns`); where namespaces are unavailable the test says so and
//! skips. Addresses are 10.213.X.0/24 inside namespaces this test creates and deletes itself.

mod process_support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use keyval::raft::RoleKind;
use keyval::testkit::linearizability::History;
use process_support::history::{assert_linearizable, run_recorded_client};
use process_support::wait_for;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 3;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn ip_in(namespace: &str, args: &[&str]) -> bool {
    let mut all = vec!["netns", "exec", namespace, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// Three namespaces wired as described in the module docs; deleted on drop.
struct Network {
    tag: u32,
    subnet: u32,
    namespaces: Vec<String>,
}

impl Network {
    fn create() -> Option<Network> {
        let tag = std::process::id() % 10_000;
        let subnet = 20 + std::process::id() % 200;
        let mut network = Network {
            tag,
            subnet,
            namespaces: Vec::new(),
        };
        for node in 1..=NODES {
            let namespace = format!("kv{tag}n{node}");
            if !ip(&["netns", "add", &namespace]) {
                return None;
            }
            network.namespaces.push(namespace.clone());
            let address = format!("{}/32", network.address(node));
            if !(ip_in(&namespace, &["link", "set", "lo", "up"])
                && ip_in(&namespace, &["addr", "add", &address, "dev", "lo"]))
            {
                return None;
            }
        }
        // Client links: the test's namespace to each node.
        for node in 1..=NODES {
            let (outside, inside) = (format!("kv{tag}r{node}"), format!("kv{tag}h{node}"));
            let namespace = network.namespaces[node - 1].clone();
            let ours = format!("10.213.{subnet}.254/32");
            let ok = ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]) && ip(&["link", "set", &inside, "netns", &namespace])
                && ip(&["addr", "add", &ours, "dev", &outside])
                && ip(&["link", "set", &outside, "up"])
                && ip(&[
                    "route",
                    "add",
                    &format!("{}/32", network.address(node)),
                    "dev",
                    &outside,
                ])
                && ip_in(&namespace, &["link", "set", &inside, "up"])
                && ip_in(
                    &namespace,
                    &[
                        "route",
                        "add",
                        &format!("10.213.{subnet}.254/32"),
                        "dev",
                        &inside,
                    ],
                );
            if !ok {
                return None;
            }
        }
        // Peer links: one per pair.
        for a in 1..=NODES {
            for b in a + 1..=NODES {
                let (end_a, end_b) = (network.peer_link(a, b), network.peer_link(b, a));
                let (space_a, space_b) = (
                    network.namespaces[a - 1].clone(),
                    network.namespaces[b - 1].clone(),
                );
                let ok = ip(&[
                    "link", "add", &end_a, "type", "veth", "peer", "name", &end_b,
                ]) && ip(&["link", "set", &end_a, "netns", &space_a])
                    && ip(&["link", "set", &end_b, "netns", &space_b])
                    && ip_in(&space_a, &["link", "set", &end_a, "up"])
                    && ip_in(&space_b, &["link", "set", &end_b, "up"])
                    && ip_in(
                        &space_a,
                        &[
                            "route",
                            "add",
                            &format!("{}/32", network.address(b)),
                            "dev",
                            &end_a,
                        ],
                    )
                    && ip_in(
                        &space_b,
                        &[
                            "route",
                            "add",
                            &format!("{}/32", network.address(a)),
                            "dev",
                            &end_b,
                        ],
                    );
                if !ok {
                    return None;
                }
            }
        }
        Some(network)
    }

    fn address(&self, node: usize) -> String {
        format!("10.213.{}.{node}", self.subnet)
    }

    fn peer_link(&self, from: usize, to: usize) -> String {
        format!("kv{}p{from}{to}", self.tag)
    }

    /// Cuts (or restores) every peer link of `node`; its client link stays up. Taking a link
    /// down flushes the routes through it, so restoring adds them again.
    fn set_isolated(&self, node: usize, isolated: bool) {
        let state = if isolated { "down" } else { "up" };
        for other in (1..=NODES).filter(|&other| other != node) {
            for (from, to) in [(node, other), (other, node)] {
                let link = self.peer_link(from, to);
                let namespace = &self.namespaces[from - 1];
                ip_in(namespace, &["link", "set", &link, state]);
                if !isolated {
                    let route = format!("{}/32", self.address(to));
                    ip_in(namespace, &["route", "replace", &route, "dev", &link]);
                }
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            ip(&["netns", "del", namespace]);
        }
    }
}

struct Nodes {
    children: Vec<Option<Child>>,
    spec: String,
    data: tempfile::TempDir,
}

impl Nodes {
    fn spawn(&mut self, network: &Network, node: usize) {
        let namespace = &network.namespaces[node - 1];
        let data_dir = self.data.path().join(format!("n{node}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join(format!("n{node}.log")))
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, env!("CARGO_BIN_EXE_keyval")])
            .args(["--id", &node.to_string(), "--cluster", &self.spec])
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keyval in its namespace");
        self.children[node - 1] = Some(child);
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in 1..=NODES {
            self.kill(node);
        }
        if std::thread::panicking() {
            for node in 1..=NODES {
                let path = self.data.path().join(format!("n{node}.log"));
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("---- n{node} ----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

#[test]
fn linearizable_across_real_network_partitions() {
    let Some(network) = Network::create() else {
        eprintln!(
            "SKIPPED: network namespaces are unavailable here (needs root and iproute2); \
             the partition part of the process chaos suite did not run"
        );
        return;
    };
    let seed: u64 = std::env::var("KEYVAL_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    let spec = (1..=NODES)
        .map(|node| {
            let address = network.address(node);
            format!("{node}={address}:7380/{address}:7379")
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Nodes {
        children: (0..NODES).map(|_| None).collect(),
        spec,
        data: tempfile::tempdir().expect("temp dir"),
    };
    for node in 1..=NODES {
        nodes.spawn(&network, node);
    }
    let endpoints: Vec<String> = (1..=NODES)
        .map(|node| format!("{}:7379", network.address(node)))
        .collect();
    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let clients: Vec<Client> = (0..4)
        .map(|_| Client::connect(&endpoints, options.clone()).expect("connect"))
        .collect();
    let leader = |client: &Client| {
        endpoints.iter().position(|endpoint| {
            client
                .status(endpoint)
                .is_ok_and(|status| status.role == RoleKind::Leader)
        })
    };
    assert!(wait_for(|| leader(&clients[0]).is_some()), "no leader");
    let history = History::new();
    let stop = AtomicBool::new(false);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    std::thread::scope(|scope| {
        for (k, client) in clients.iter().enumerate() {
            let (history, stop) = (&history, &stop);
            scope.spawn(move || run_recorded_client(client, history, k as u64 + 1, seed, stop));
        }
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let victim = match leader(&clients[0]) {
                Some(position) if rng.random_bool(0.7) => position + 1,
                _ => rng.random_range(1..=NODES),
            };
            if rng.random_bool(0.75) {
                faults.push(format!("isolate n{victim}"));
                network.set_isolated(victim, true);
                std::thread::sleep(Duration::from_millis(rng.random_range(400..1200)));
                network.set_isolated(victim, false);
            } else {
                faults.push(format!("kill -9 n{victim}"));
                nodes.kill(victim);
                std::thread::sleep(Duration::from_millis(rng.random_range(200..600)));
                nodes.spawn(&network, victim);
            }
            // Pacing the nemesis between faults; nothing is asserted after it.
            std::thread::sleep(Duration::from_millis(rng.random_range(200..500)));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let operations = history.snapshot();
    let known = assert_linearizable(&operations, &format!("seed {seed}, faults {faults:?}"));
    eprintln!(
        "process partitions: {} operations ({known} known), faults {faults:?}",
        operations.len()
    );
}
