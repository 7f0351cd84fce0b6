//! Real network partitions between real processes: each `keyval` node runs in its own network
//! namespace with one veth link per pair of nodes (peer traffic) and one link to the test's
//! namespace (client traffic). The nemesis cuts a node's peer links while clients can still
//! reach it — a deposed leader that may still believe it leads — and kills and restarts nodes.
//! Concurrent clients record every operation; the history must be linearizable, and three
//! watchers of every key, resuming across the faults, must see exactly the committed writes
//! (`process_support::watchers`).
//!
//! A second test runs the nodes with check-quorum off (the test-only `--check-quorum false`)
//! and isolates the leader for seconds at a time while clients pinned to it keep reading and
//! writing, and other clients read and write through the new leader on the majority side: an
//! old leader that serves a read without a quorum-answered heartbeat round reads stale data.
//! ReadIndex safety must not lean on check-quorum (which steps such a leader down within an
//! election timeout and so hides the bug).
//!
//! Needs root and iproute2 (`ip netns`); where namespaces are unavailable the tests say so and
//! skip. Addresses are 10.213.X.0/24 inside namespaces the tests create and delete themselves;
//! the tests take turns (one network at a time). `KEYVAL_CHAOS_SECONDS` lengthens both
//! (default 8 s of nemesis, and 12 s of isolated leaders in 4 s rounds).

mod process_support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use keyval::protocol::StatusReply;
use keyval::raft::RoleKind;
use keyval::testkit::linearizability::History;
use keyval::types::Term;
use process_support::history::{
    assert_linearizable, record_while, run_recorded_client_mix, GETS_IN_TEN_DEFAULT,
};
use process_support::{wait_for, watchers};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Nodes in the check-quorum-off test.
const NODES: usize = 3;

/// Isolated-leader rounds of the check-quorum-off test: how long the leader is cut off while
/// the clients run.
const ISOLATION: Duration = Duration::from_secs(4);

/// Gets in every ten operations of the clients pinned to an isolated leader: mostly reads,
/// which are what a broken ReadIndex answers wrongly; the writes there time out.
const PINNED_GETS_IN_TEN: u32 = 7;

/// One network at a time: the tests of this file share address ranges and the machine's two
/// cores.
static NETWORK_TURN: Mutex<()> = Mutex::new(());

/// Networks created by this process, so that each gets its own names.
static NETWORKS_CREATED: AtomicU32 = AtomicU32::new(0);

fn take_network_turn() -> MutexGuard<'static, ()> {
    // A test that failed while holding the turn poisons it; the next may still run.
    NETWORK_TURN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn seed() -> u64 {
    env_u64("KEYVAL_SEED").unwrap_or_else(rand::random)
}

fn skipped() {
    eprintln!(
        "SKIPPED: network namespaces are unavailable here (needs root and iproute2); \
         the partition part of the process chaos suite did not run"
    );
}

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
    /// Nodes in the cluster.
    size: usize,
    tag: u32,
    subnet: u32,
    namespaces: Vec<String>,
}

impl Network {
    fn create(size: usize) -> Option<Network> {
        let created = NETWORKS_CREATED.fetch_add(1, Ordering::SeqCst) % 4;
        let tag = std::process::id() % 1_000 * 4 + created;
        let subnet = 20 + (std::process::id() % 50 * 4 + created);
        let mut network = Network {
            size,
            tag,
            subnet,
            namespaces: Vec::new(),
        };
        for node in 1..=size {
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
        for node in 1..=size {
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
        for a in 1..=size {
            for b in a + 1..=size {
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
        for other in (1..=self.size).filter(|&other| other != node) {
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
    /// Flags every node gets besides its id, the cluster and its data directory.
    extra_args: Vec<String>,
    data: tempfile::TempDir,
}

impl Nodes {
    /// Starts every node of `network` with `extra_args`.
    fn start(network: &Network, extra_args: &[&str]) -> Nodes {
        let spec = (1..=network.size)
            .map(|node| {
                let address = network.address(node);
                format!("{node}={address}:7380/{address}:7379")
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Nodes {
            children: (0..network.size).map(|_| None).collect(),
            spec,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            data: tempfile::tempdir().expect("temp dir"),
        };
        for node in 1..=network.size {
            nodes.spawn(network, node);
        }
        nodes
    }

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
            // The namespaces' addresses are not loopback; the test network is trusted.
            .arg("--insecure")
            .args(&self.extra_args)
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
        for node in 1..=self.children.len() {
            self.kill(node);
        }
        if std::thread::panicking() {
            for node in 1..=self.children.len() {
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
    partitions(3);
}

#[test]
fn linearizable_across_real_network_partitions_of_five_nodes() {
    partitions(5);
}

/// `size` nodes; the nemesis cuts a minority off (one node of three, one or two of five; the
/// leader most often) or kills and restarts one.
fn partitions(size: usize) {
    let _turn = take_network_turn();
    let Some(network) = Network::create(size) else {
        skipped();
        return;
    };
    let seconds = env_u64("KEYVAL_CHAOS_SECONDS").unwrap_or(8);
    let seed = seed();
    let mut nodes = Nodes::start(&network, &[]);
    let endpoints: Vec<String> = (1..=size)
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
    let watching = watchers::start(&endpoints, 3);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let history = record_while(&clients, seed, seconds, || {
        let victim = match leader(&clients[0]) {
            Some(position) if rng.random_bool(0.7) => position + 1,
            _ => rng.random_range(1..=size),
        };
        if rng.random_bool(0.75) {
            // With five nodes, sometimes a second node is cut off too (each on its own).
            let mut victims = vec![victim];
            if size >= 5 && rng.random_bool(0.5) {
                victims.push(victim % size + 1);
            }
            for &victim in &victims {
                faults.push(format!("isolate n{victim}"));
                network.set_isolated(victim, true);
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(400..1200)));
            for &victim in &victims {
                network.set_isolated(victim, false);
            }
        } else {
            faults.push(format!("kill -9 n{victim}"));
            nodes.kill(victim);
            std::thread::sleep(Duration::from_millis(rng.random_range(200..600)));
            nodes.spawn(&network, victim);
        }
        // Pacing the nemesis between faults; nothing is asserted after it.
        std::thread::sleep(Duration::from_millis(rng.random_range(200..500)));
    });
    let operations = history.snapshot();
    let context = format!("seed {seed}, faults {faults:?}");
    let known = assert_linearizable(&operations, &context);
    // Healed: each key's final value, then every watcher must have seen exactly the writes.
    assert!(
        wait_for(|| leader(&clients[0]).is_some()),
        "no leader after healing"
    );
    let mut finals = std::collections::BTreeMap::new();
    for key in 0..process_support::history::KEYS {
        let key = format!("k{key}").into_bytes();
        let value = clients[0]
            .get(key.clone())
            .expect("read after healing")
            .map(|versioned| versioned.value);
        finals.insert(key, value);
    }
    let watched = watching.finish(&clients[0]);
    watchers::check(&watched, &operations, &finals, &context);
    eprintln!(
        "process partitions, {size} nodes: {} operations ({known} known), {} watch events per \
         watcher, faults {faults:?}",
        operations.len(),
        watched[0].len()
    );
}

/// The position and term of the one leader every node follows: all answer, one leads, and
/// all are at its term and name it. A healed cluster comes back to this state; it also shows
/// that the peer connections work again (TCP retransmissions across a link that was down back
/// off for seconds).
fn settled_leader(client: &Client, endpoints: &[String]) -> Option<(usize, Term)> {
    let statuses: Vec<StatusReply> = endpoints
        .iter()
        .map(|endpoint| client.status(endpoint).ok())
        .collect::<Option<_>>()?;
    let mut leaders = statuses
        .iter()
        .enumerate()
        .filter(|(_, status)| status.role == RoleKind::Leader);
    let (position, leader) = leaders.next()?;
    let agreed = leaders.next().is_none()
        && statuses
            .iter()
            .all(|status| status.term == leader.term && status.leader == Some(leader.id));
    agreed.then_some((position, leader.term))
}

/// Whether `endpoint` leads at a term above `term`.
fn leads_above(client: &Client, endpoint: &str, term: Term) -> bool {
    client
        .status(endpoint)
        .is_ok_and(|status| status.role == RoleKind::Leader && status.term > term)
}

/// The role `endpoint` reports, asking until it answers (a status call is one attempt, and a
/// busy or reconnecting node may miss one).
fn role(client: &Client, endpoint: &str) -> RoleKind {
    let mut answer = None;
    let mut last_error = String::new();
    let answered = wait_for(|| match client.status(endpoint) {
        Ok(status) => {
            answer = Some(status.role);
            true
        }
        Err(error) => {
            last_error = error.to_string();
            false
        }
    });
    assert!(answered, "{endpoint} answered no status: {last_error}");
    answer.expect("answered above")
}

/// With check-quorum off, an isolated leader keeps leading until it hears a newer term — for
/// as long as the partition lasts — and clients that know it keep asking it. ReadIndex must
/// still make it refuse (here: never answer) reads while the majority side commits writes.
#[test]
fn read_index_is_linearizable_with_check_quorum_off() {
    let _turn = take_network_turn();
    let Some(network) = Network::create(NODES) else {
        skipped();
        return;
    };
    let isolated_seconds = env_u64("KEYVAL_CHAOS_SECONDS").unwrap_or(12);
    let rounds = (isolated_seconds / ISOLATION.as_secs()).max(1);
    let seed = seed();
    let _nodes = Nodes::start(&network, &["--check-quorum", "false"]);
    let endpoints: Vec<String> = (1..=NODES)
        .map(|node| format!("{}:7379", network.address(node)))
        .collect();
    let options = ClientOptions {
        request_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    let observer = Client::connect(&endpoints, options.clone()).expect("connect");
    let settled = |when: &str| {
        let mut found = None;
        assert!(
            wait_for(|| {
                found = settled_leader(&observer, &endpoints);
                found.is_some()
            }),
            "the cluster did not settle on one leader {when}: {:?}",
            observer.cluster_status()
        );
        found.expect("found above")
    };
    let history = History::new();
    let mut leaders = Vec::new();
    for round in 0..rounds {
        let settling = Instant::now();
        let (old, old_term) = settled(&format!("before round {round}"));
        eprintln!("round {round}: settled in {:?}", settling.elapsed());
        network.set_isolated(old + 1, true);
        let mut new = None;
        assert!(
            wait_for(|| {
                new = (0..NODES).find(|&position| {
                    position != old && leads_above(&observer, &endpoints[position], old_term)
                });
                new.is_some()
            }),
            "the majority side elected no leader in round {round}"
        );
        let new = new.expect("found above");
        leaders.push(format!("n{} isolated, n{} elected", old + 1, new + 1));
        // Two clients know only the isolated leader; two know only the majority side. Fresh
        // clients each round, so none keeps a leader from an earlier round.
        let pinned = [endpoints[old].clone()];
        let majority: Vec<String> = (0..NODES)
            .filter(|&position| position != old)
            .map(|position| endpoints[position].clone())
            .collect();
        let clients: Vec<(Client, u32)> = (0..4)
            .map(|k| {
                let (targets, gets_in_ten) = if k < 2 {
                    (&pinned[..], PINNED_GETS_IN_TEN)
                } else {
                    (&majority[..], GETS_IN_TEN_DEFAULT)
                };
                let client = Client::connect(targets, options.clone()).expect("connect");
                (client, gets_in_ten)
            })
            .collect();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for (k, (client, gets_in_ten)) in clients.iter().enumerate() {
                let (history, stop) = (&history, &stop);
                let id = round * 4 + k as u64 + 1;
                scope.spawn(move || {
                    run_recorded_client_mix(client, history, id, seed, stop, *gets_in_ten)
                });
            }
            // The length of the isolation, with the clients running; nothing is asserted
            // after it but what must have held throughout.
            std::thread::sleep(ISOLATION);
            stop.store(true, Ordering::SeqCst);
        });
        // The test means something only if the isolated node kept leading: with check-quorum
        // on it would have stepped down within an election timeout.
        assert_eq!(
            role(&observer, &endpoints[old]),
            RoleKind::Leader,
            "round {round}: isolated n{} stopped leading although check-quorum is off",
            old + 1
        );
        network.set_isolated(old + 1, false);
    }
    // Healed: the old leader of the last round has heard the newer term.
    settled("after the last round");
    let operations = history.snapshot();
    let context = format!("seed {seed}, check-quorum off, rounds {leaders:?}");
    let known = assert_linearizable(&operations, &context);
    eprintln!(
        "check-quorum off: {} operations ({known} known), {leaders:?}",
        operations.len()
    );
}

/// Sends one write straight to `endpoint` on the raw protocol (no redirects, no retries) and
/// returns its answer, or why none came.
fn raw_write(
    endpoint: &str,
    command: keyval::kv::Command,
) -> Result<keyval::protocol::ResponseFrame, String> {
    use keyval::protocol::{write_frame, FrameReader, RequestBody, RequestFrame};
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(endpoint).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|error| error.to_string())?;
    let mut bytes = Vec::new();
    let frame = RequestFrame {
        request_id: 1,
        timeout_ms: 3000,
        body: RequestBody::Write(command),
    };
    write_frame(&frame, &mut bytes).map_err(|error| error.to_string())?;
    stream
        .write_all(&bytes)
        .map_err(|error| error.to_string())?;
    FrameReader::new()
        .read_frame(&mut stream)
        .map_err(|error| error.to_string())
}

/// A revoke sent to a leader cut off from the others never takes effect (it cannot commit;
/// the keys stay on the majority side), a revoke through the majority's new leader deletes
/// every attached key at once, and once healed the old leader holds neither the lease nor
/// its keys.
#[test]
fn a_lease_revoke_under_a_partition_takes_effect_only_through_the_majority() {
    let _turn = take_network_turn();
    let Some(network) = Network::create(NODES) else {
        skipped();
        return;
    };
    let _nodes = Nodes::start(&network, &[]);
    let endpoints: Vec<String> = (1..=NODES)
        .map(|node| format!("{}:7379", network.address(node)))
        .collect();
    let options = ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let client = Client::connect(&endpoints, options.clone()).expect("connect");
    let mut settled = None;
    assert!(
        wait_for(|| {
            settled = settled_leader(&client, &endpoints);
            settled.is_some()
        }),
        "no settled leader"
    );
    let (old, term) = settled.expect("found above");
    let grant = client.lease_grant(600).expect("grant");
    for key in ["held/a", "held/b"] {
        client
            .put_with_lease(key.into(), b"v".to_vec(), grant.lease)
            .expect("put with the lease");
    }
    network.set_isolated(old + 1, true);
    match raw_write(
        &endpoints[old],
        keyval::kv::Command::lease_revoke(grant.lease),
    ) {
        Ok(frame) => assert!(
            frame.result.is_err(),
            "the isolated leader acknowledged a revoke: {frame:?}"
        ),
        Err(reason) => eprintln!("the isolated leader gave no answer: {reason}"),
    }
    let majority: Vec<String> = (0..NODES)
        .filter(|&position| position != old)
        .map(|position| endpoints[position].clone())
        .collect();
    assert!(
        wait_for(|| majority
            .iter()
            .any(|endpoint| leads_above(&client, endpoint, term))),
        "the majority elected no new leader"
    );
    let majority_client = Client::connect(&majority, options).expect("connect to the majority");
    for key in ["held/a", "held/b"] {
        assert!(
            majority_client.get(key.into()).expect("read").is_some(),
            "{key} vanished: the cut-off revoke took effect"
        );
    }
    assert_eq!(
        majority_client.lease_revoke(grant.lease).expect("revoke"),
        2
    );
    assert_eq!(
        majority_client
            .get_prefix(b"held/", 10)
            .expect("read")
            .entries
            .len(),
        0
    );
    network.set_isolated(old + 1, false);
    let stale = Client::connect(
        &[endpoints[old].clone()],
        ClientOptions {
            read_consistency: keyval::protocol::Consistency::Stale,
            ..ClientOptions::default()
        },
    )
    .expect("connect to the old leader");
    assert!(
        wait_for(|| stale
            .get_prefix(b"held/", 10)
            .is_ok_and(|page| page.entries.is_empty())),
        "the healed old leader still holds the revoked lease's keys"
    );
}
