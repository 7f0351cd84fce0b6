//! Membership changes with real `keyval` processes on 127.0.0.1, driven the way an operator
//! would: `keyval --join` to grow, `kvctl member remove` to shrink (the leader included),
//! a node replaced, `kvctl transfer-leader` — with a client writing throughout. Afterwards
//! every acknowledged write must read back (linearizably) and the remaining members must
//! agree: the same commit and applied index, and the same data read locally on each.
//! Restarting a joined node with the same command, or a removed one, must be harmless.

mod process_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use keyval::kv::{KeyRange, SCAN_LIMIT_MAX};
use keyval::protocol::Consistency;
use keyval::raft::RoleKind;
use keyval::NodeId;

use process_support::{free_address, kvctl, wait_for, NodeProcess, ProcessCluster};

/// A node started with `--join`.
struct Joiner {
    client_address: String,
    args: Vec<String>,
    log: PathBuf,
}

impl Joiner {
    /// Flags for node `id` joining through `via`, its data in the cluster's temp dir.
    fn new(cluster: &ProcessCluster, id: u64, via: &str, client_address: String) -> Joiner {
        let data_dir = cluster.dir.path().join(format!("n{id}"));
        let args = vec![
            "--id".to_string(),
            id.to_string(),
            "--join".to_string(),
            via.to_string(),
            "--peer-listen".to_string(),
            free_address(),
            "--client-listen".to_string(),
            client_address.clone(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            // Its own free metrics address: the default (client port + 1000) may be taken by
            // another test's socket, which the node reports with a warning.
            "--metrics-listen".to_string(),
            free_address(),
        ];
        Joiner {
            client_address,
            args,
            log: cluster.dir.path().join(format!("n{id}.log")),
        }
    }

    fn spawn(&self) -> NodeProcess {
        NodeProcess::spawn(self.args.clone(), self.log.clone(), None)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn client(endpoints: &[String], timeout: Duration) -> Client {
    let options = ClientOptions {
        request_timeout: timeout,
        ..ClientOptions::default()
    };
    Client::new(endpoints, options).expect("client")
}

/// Waits until the leader's configuration satisfies `condition`.
fn wait_members(client: &Client, what: &str, condition: impl Fn(&keyval::Membership) -> bool) {
    let started = Instant::now();
    let mut last = None;
    assert!(
        wait_for(|| match client.members() {
            Ok(reply) => {
                let done = condition(&reply.membership) && !reply.membership.is_joint();
                last = Some(reply);
                done
            }
            Err(_) => false,
        }),
        "{what}: last configuration {last:?}"
    );
    eprintln!("{what}: {:?}", started.elapsed());
}

fn voters(ids: &[u64]) -> impl Fn(&keyval::Membership) -> bool + '_ {
    move |membership| {
        membership.voters == ids.iter().map(|id| NodeId(*id)).collect()
            && membership.learners.is_empty()
    }
}

fn run_kvctl(endpoints: &str, args: &[&str]) {
    let started = Instant::now();
    let out = kvctl(endpoints, &[&["--timeout-ms", "20000"], args].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "kvctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kvctl {args:?}: {:?}", started.elapsed());
}

/// Writes `w/<n>` = `v<n>` until stopped, remembering which writes were acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<BTreeMap<u64, ()>>>,
    thread: Option<JoinHandle<u64>>,
}

impl Writer {
    fn start(client: Client) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let (thread_stop, thread_acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !thread_stop.load(Ordering::SeqCst) {
                n += 1;
                let (key, value) = (format!("w/{n:06}"), format!("v{n}"));
                if client.put(key.into_bytes(), value.into_bytes()).is_ok() {
                    thread_acknowledged.lock().unwrap().insert(n, ());
                }
            }
            n
        });
        Writer {
            stop,
            acknowledged,
            thread: Some(thread),
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits until `more` further writes were acknowledged (the cluster makes progress).
    fn wait_progress(&self, more: usize, during: &str) {
        let (started, target) = (Instant::now(), self.acknowledged() + more);
        assert!(
            wait_for(|| self.acknowledged() >= target),
            "writes stalled {during}"
        );
        eprintln!("{more} writes {during}: {:?}", started.elapsed());
    }

    /// Stops; returns the acknowledged write numbers and how many were attempted.
    fn stop(mut self) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let attempted = self.thread.take().unwrap().join().unwrap();
        let acknowledged = self.acknowledged.lock().unwrap().keys().copied().collect();
        (acknowledged, attempted)
    }
}

/// Every key under `w/`, read page by page with `consistency`.
fn scan_all(client: &Client, consistency: Consistency) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut range = KeyRange::prefix(b"w/");
    loop {
        let page = client
            .scan_with(range.clone(), SCAN_LIMIT_MAX, consistency)
            .expect("scan")
            .value;
        for (key, versioned) in &page.entries {
            data.push((key.clone(), versioned.value.clone()));
        }
        match (page.more, page.entries.last()) {
            (true, Some((last, _))) => range = range.after(last),
            _ => return data,
        }
    }
}

/// Waits until every node at `endpoints` has the same commit and applied index, then checks
/// they hold the same data.
fn check_agreement(client: &Client, endpoints: &[String]) {
    let mut last = Vec::new();
    assert!(
        wait_for(|| {
            last = endpoints
                .iter()
                .map(|endpoint| {
                    client
                        .status(endpoint)
                        .map(|status| (status.committed, status.applied))
                        .ok()
                })
                .collect();
            last.iter().all(|indexes| {
                indexes.is_some_and(|(committed, applied)| committed == applied)
                    && *indexes == last[0]
            })
        }),
        "the members' commit/applied indexes do not converge: {last:?}"
    );
    let local = |endpoint: &String| {
        let local = Client::new(std::slice::from_ref(endpoint), ClientOptions::default());
        scan_all(&local.unwrap(), Consistency::Stale)
    };
    let reference = local(&endpoints[0]);
    for endpoint in &endpoints[1..] {
        assert!(
            local(endpoint) == reference,
            "{endpoint} holds other data than {}",
            endpoints[0]
        );
    }
}

#[test]
fn grow_by_join_remove_the_leader_shrink_and_replace_while_writing() {
    let cluster = ProcessCluster::start(3);
    let bootstrap = cluster.client();
    cluster.wait_leader(&bootstrap);
    let client_addresses: BTreeMap<u64, String> = (1..=6)
        .map(|id| match id {
            1..=3 => (id, cluster.client_addresses[id as usize - 1].clone()),
            _ => (id, free_address()),
        })
        .collect();
    // Joiners are given the client addresses of the members when they start: some may have
    // been removed since, and a removed node no longer knows the leader.
    let via = |members: &[u64]| {
        let addresses: Vec<&str> = members
            .iter()
            .map(|id| client_addresses[id].as_str())
            .collect();
        addresses.join(",")
    };
    let mut joiners: BTreeMap<u64, Joiner> = BTreeMap::new();
    for id in [4, 5] {
        let joiner = Joiner::new(
            &cluster,
            id,
            &via(&[1, 2, 3]),
            client_addresses[&id].clone(),
        );
        joiners.insert(id, joiner);
    }
    // Every address the cluster will ever have, so the writer always knows a live one.
    let endpoints: Vec<String> = client_addresses.values().cloned().collect();
    let admin = client(&endpoints, Duration::from_secs(20));
    let writer = Writer::start(client(&endpoints, Duration::from_secs(20)));
    writer.wait_progress(20, "before any change");

    // Grow 3 -> 5 with `keyval --join`: each joins as a learner and is promoted once caught up.
    let mut joined = BTreeMap::new();
    for id in [4, 5] {
        joined.insert(id, joiners[&id].spawn());
        wait_members(
            &admin,
            &format!("n{id} joins as a voter"),
            move |membership| membership.is_voter(NodeId(id)),
        );
        writer.wait_progress(20, &format!("after n{id} joined"));
    }
    wait_members(&admin, "five voters", voters(&[1, 2, 3, 4, 5]));
    assert!(joiners[&4]
        .log_text()
        .contains("added to the cluster as a learner"));

    // Remove the current leader: it hands over and steps down; writes go on.
    let leader = admin.members().unwrap().leader.expect("a leader").0;
    run_kvctl(
        &cluster.endpoints(),
        &["member", "remove", &leader.to_string()],
    );
    let remaining: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    wait_members(&admin, "the leader removed", voters(&remaining));
    assert_ne!(admin.members().unwrap().leader, Some(NodeId(leader)));
    writer.wait_progress(20, "after the leader was removed");

    // Shrink to three: remove a follower.
    let follower = *remaining
        .iter()
        .find(|id| Some(NodeId(**id)) != admin.members().unwrap().leader)
        .unwrap();
    run_kvctl(
        &cluster.endpoints(),
        &["member", "remove", &follower.to_string()],
    );
    let mut remaining: Vec<u64> = remaining.into_iter().filter(|id| *id != follower).collect();
    wait_members(&admin, "shrunk to three", voters(&remaining));
    writer.wait_progress(20, "after shrinking");

    // Replace a node: n6 joins, then the oldest remaining member goes.
    let joiner = Joiner::new(&cluster, 6, &via(&remaining), client_addresses[&6].clone());
    joined.insert(6, joiner.spawn());
    joiners.insert(6, joiner);
    remaining.push(6);
    wait_members(&admin, "n6 joined", voters(&remaining));
    let replaced = remaining[0];
    run_kvctl(
        &cluster.endpoints(),
        &["member", "remove", &replaced.to_string()],
    );
    remaining.retain(|id| *id != replaced);
    wait_members(&admin, "n6 replaced a node", voters(&remaining));
    writer.wait_progress(20, "after the replacement");

    let (acknowledged, attempted) = writer.stop();
    eprintln!(
        "{} of {attempted} writes acknowledged; final voters {remaining:?}",
        acknowledged.len()
    );
    // Not one write was left in doubt: a removed leader answers its waiting writes early
    // (Indeterminate), and the client's retry with the same session learns their outcome.
    assert_eq!(
        acknowledged.len() as u64,
        attempted,
        "some writes failed or were left in doubt"
    );
    // Every acknowledged write reads back through linearizable reads.
    let reader = client(&endpoints, Duration::from_secs(20));
    let stored: BTreeMap<Vec<u8>, Vec<u8>> = scan_all(&reader, Consistency::Linearizable)
        .into_iter()
        .collect();
    for n in &acknowledged {
        let key = format!("w/{n:06}").into_bytes();
        let expected = format!("v{n}").into_bytes();
        assert_eq!(
            stored.get(&key),
            Some(&expected),
            "acknowledged write {n} lost"
        );
    }
    let last = format!("w/{:06}", acknowledged.last().unwrap());
    assert!(reader.get(last.into_bytes()).unwrap().is_some());
    // The remaining members agree.
    let member_endpoints: Vec<String> = remaining
        .iter()
        .map(|id| client_addresses[id].clone())
        .collect();
    reader.put(b"final".to_vec(), b"write".to_vec()).unwrap();
    check_agreement(&reader, &member_endpoints);
    drop(joined);
}

#[test]
fn rejoining_is_harmless_and_transfer_leader_checks_its_target() {
    let cluster = ProcessCluster::start(3);
    let bootstrap = cluster.client();
    cluster.wait_leader(&bootstrap);
    let endpoints = cluster.endpoints();

    // --join without an id is refused with a clear message.
    let mut no_id = Joiner::new(&cluster, 4, &cluster.client_addresses[1], free_address());
    no_id.args.drain(0..2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(&no_id.args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--join needs --id"));

    let joiner = Joiner::new(&cluster, 4, &cluster.client_addresses[1], free_address());
    let mut node = joiner.spawn();
    let mut all = cluster.client_addresses.clone();
    all.push(joiner.client_address.clone());
    let admin = client(&all, Duration::from_secs(20));
    wait_members(&admin, "n4 joins", voters(&[1, 2, 3, 4]));
    admin.put(b"before".to_vec(), b"restart".to_vec()).unwrap();
    // A normal join logs no warning (issue 14): replaying configurations from before it was
    // added, being promoted, connecting to its peers are all routine.
    let joined_log = joiner.log_text();
    let warnings: Vec<&str> = joined_log
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "a normal join warned:\n{joined_log}");

    // Another id on n4's data directory is refused.
    assert_eq!(node.terminate(), Some(0));
    let mut other = joiner.args.clone();
    other[1] = "7".into();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to node 4"), "{stderr}");

    // The same command again, on the same data: it starts from its state and stays a voter.
    let mut node = joiner.spawn();
    admin.put(b"after".to_vec(), b"restart".to_vec()).unwrap();
    let local = client(
        std::slice::from_ref(&joiner.client_address),
        Duration::from_secs(5),
    );
    assert!(
        wait_for(|| local
            .get_with(b"after".to_vec(), Consistency::Stale)
            .is_ok_and(|read| read.value.is_some())),
        "the restarted joiner catches up"
    );
    wait_members(&admin, "still four voters", voters(&[1, 2, 3, 4]));
    assert!(joiner.log_text().contains("not joining again"));

    // --join-as-learner: n5 receives the log but is not promoted.
    let mut learner = Joiner::new(&cluster, 5, &cluster.endpoints(), free_address());
    learner.args.push("--join-as-learner".into());
    let mut learner_node = learner.spawn();
    wait_members(&admin, "n5 joins as a learner", |membership| {
        membership.learners.contains(&NodeId(5)) && membership.voters.len() == 4
    });
    let learner_client = client(
        std::slice::from_ref(&learner.client_address),
        Duration::from_secs(5),
    );
    assert!(
        wait_for(|| learner_client
            .get_with(b"after".to_vec(), Consistency::Stale)
            .is_ok_and(|read| read.value.is_some())),
        "the learner receives the log"
    );
    assert!(!learner.log_text().contains("this node is a voter"));
    run_kvctl(&endpoints, &["member", "remove", "5"]);
    learner_node.kill();
    wait_members(&admin, "n5 removed", voters(&[1, 2, 3, 4]));

    // Leadership to the joined node, then to a non-member.
    let out = kvctl(&endpoints, &["--json", "transfer-leader", "4"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(wait_for(|| local
        .status(&joiner.client_address)
        .is_ok_and(|status| status.role == RoleKind::Leader)));
    let out = kvctl(&endpoints, &["transfer-leader", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a voting member"));

    // Removed (while leading), then restarted with the same command: it starts, says it is
    // not a member, and the cluster goes on undisturbed.
    let out = kvctl(
        &endpoints,
        &["--timeout-ms", "20000", "member", "remove", "4"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    wait_members(&admin, "n4 removed", voters(&[1, 2, 3]));
    assert_eq!(node.terminate(), Some(0));
    // The log file is shared with the process just stopped, which may have said it already:
    // only a new line counts for the restarted one.
    let said_before = joiner
        .log_text()
        .matches("not a member of the configuration")
        .count();
    let _node = joiner.spawn();
    assert!(
        wait_for(|| joiner
            .log_text()
            .matches("not a member of the configuration")
            .count()
            > said_before),
        "the removed node says it is not a member"
    );
    // `kvctl endpoint status` shows it as removed.
    let with_removed = format!("{endpoints},{}", joiner.client_address);
    assert!(
        wait_for(|| {
            let out = kvctl(&with_removed, &["--json", "endpoint", "status"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|rows| {
                    rows.as_array()?
                        .iter()
                        .find(|row| row["id"] == 4)
                        .map(|row| row["removed"] == true)
                })
                .unwrap_or(false)
        }),
        "endpoint status does not show the removed node as removed"
    );
    let term = |client: &Client| {
        let leader = cluster.wait_leader(client);
        client
            .status(&cluster.client_addresses[leader])
            .unwrap()
            .term
    };
    let before = term(&bootstrap);
    // Write for at least a second (several election timeouts of the removed node) and 50 puts.
    let until = Instant::now() + Duration::from_secs(1);
    let mut k = 0;
    while k < 50 || Instant::now() < until {
        bootstrap
            .put(format!("undisturbed/{k}").into_bytes(), vec![1])
            .unwrap();
        k += 1;
    }
    assert_eq!(
        term(&bootstrap),
        before,
        "the removed node disrupted the leader"
    );
    assert!(!admin.members().unwrap().membership.contains(NodeId(4)));
}
