//! Quorum-loss recovery with real `keyval` processes, the way an operator would run it: a
//! three-node cluster loses two members for good (SIGKILL, data directories deleted), the
//! survivor is restarted with `--force-new-cluster`, and the cluster is grown back to three
//! with `keyval --join`. Every acknowledged write must be there — on the survivor, then on
//! every member — writes must work at each stage, and no restart afterwards (with or without
//! the flag) may go back to the old configuration. Bad usage is refused with a clear message.

mod process_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use keyval::kv::{KeyRange, SCAN_LIMIT_MAX};
use keyval::protocol::Consistency;
use keyval::NodeId;

use process_support::{free_address, wait_for, NodeProcess, ProcessCluster};

fn client(endpoints: &[String]) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    Client::new(endpoints, options).expect("client")
}

/// Every key under `k/`, read page by page with `consistency`; `None` if a read failed.
fn scan_all(client: &Client, consistency: Consistency) -> Option<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut data = BTreeMap::new();
    let mut range = KeyRange::prefix(b"k/");
    loop {
        let page = client
            .scan_with(range.clone(), SCAN_LIMIT_MAX, consistency)
            .ok()?
            .value;
        for (key, versioned) in &page.entries {
            data.insert(key.clone(), versioned.value.clone());
        }
        match (page.more, page.entries.last()) {
            (true, Some((last, _))) => range = range.after(last),
            _ => return Some(data),
        }
    }
}

/// Waits until the configuration `client` reports has exactly `ids` as voters, no learners
/// and no joint phase.
fn wait_voters(client: &Client, what: &str, ids: &[u64]) {
    let wanted: std::collections::BTreeSet<NodeId> = ids.iter().map(|id| NodeId(*id)).collect();
    let mut last = None;
    assert!(
        wait_for(|| match client.members() {
            Ok(reply) => {
                let membership = reply.membership;
                let done = membership.voters == wanted
                    && membership.learners.is_empty()
                    && !membership.is_joint();
                last = Some(membership);
                done
            }
            Err(_) => false,
        }),
        "{what}: last configuration {last:?}"
    );
}

/// Waits until a write through `client` is acknowledged.
fn wait_write(client: &Client, key: &str, what: &str) {
    let started = Instant::now();
    assert!(
        wait_for(|| client
            .put(key.as_bytes().to_vec(), b"written".to_vec())
            .is_ok()),
        "{what}: no write acknowledged"
    );
    eprintln!("{what}: {:?}", started.elapsed());
}

/// Runs `keyval` to completion with `args`: its exit code and stderr.
fn run_keyval(args: &[String]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(args)
        .output()
        .expect("run keyval");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn survivor_args(data_dir: &Path, metrics: &str) -> Vec<String> {
    vec![
        "--id".into(),
        "1".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--metrics-listen".into(),
        metrics.into(),
    ]
}

#[test]
fn a_survivor_forced_into_a_new_cluster_keeps_every_acknowledged_write_and_grows_back() {
    const KEYS: usize = 300;
    let mut cluster = ProcessCluster::start(3);
    let writer = cluster.client();
    cluster.wait_leader(&writer);
    let mut acknowledged = BTreeMap::new();
    for n in 0..KEYS {
        if n == KEYS / 2 {
            // Half of the data behind a snapshot on the survivor, half in its log.
            writer
                .take_snapshot_and_wait(
                    &cluster.client_addresses[0],
                    Instant::now() + Duration::from_secs(30),
                )
                .expect("snapshot on n1");
        }
        let (key, value) = (format!("k/{n:04}"), format!("v{n}"));
        if writer
            .put(key.clone().into_bytes(), value.clone().into_bytes())
            .is_ok()
        {
            acknowledged.insert(key.into_bytes(), value.into_bytes());
        }
    }
    assert!(acknowledged.len() > KEYS / 2, "too few writes acknowledged");
    eprintln!("{} of {KEYS} writes acknowledged", acknowledged.len());
    drop(writer);

    // Forcing while the others still run is refused, and writes nothing.
    cluster.nodes[0].kill();
    let n1_dir = cluster.dir.path().join("n1");
    let metrics = cluster.metrics_addresses[0].clone();
    let mut forced_args = survivor_args(&n1_dir, &metrics);
    forced_args.push("--force-new-cluster".into());
    let (code, stderr) = run_keyval(&forced_args);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("answers at"), "{stderr}");
    assert!(!n1_dir.join("forced").exists(), "a refused force wrote");

    // The majority is gone for good (the survivor stopped as hard as they did).
    for position in [1, 2] {
        cluster.nodes[position].kill();
        std::fs::remove_dir_all(cluster.dir.path().join(format!("n{}", position + 1)))
            .expect("delete a dead member's data");
    }
    let n1_client = cluster.client_addresses[0].clone();

    // Forced start, without --cluster: the recorded addresses are kept.
    let log = cluster.dir.path().join("n1-forced.log");
    cluster.nodes[0] = NodeProcess::spawn(forced_args.clone(), log.clone(), None);
    let survivor = client(std::slice::from_ref(&n1_client));
    wait_write(&survivor, "after/force", "the forced node takes writes");
    wait_voters(&survivor, "the forced node is alone", &[1]);
    let stored = scan_all(&survivor, Consistency::Linearizable).expect("scan the survivor");
    for (key, value) in &acknowledged {
        assert_eq!(
            stored.get(key),
            Some(value),
            "acknowledged write {} lost",
            String::from_utf8_lossy(key)
        );
    }
    let forced_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(forced_log.contains("forced a new cluster"), "{forced_log}");

    // The same command again (the flag left in place): harmless, still one member.
    assert_eq!(cluster.nodes[0].terminate(), Some(0));
    cluster.nodes[0] = NodeProcess::spawn(forced_args.clone(), log.clone(), None);
    wait_write(&survivor, "after/force-again", "forced again: writes");
    wait_voters(&survivor, "forced again: still alone", &[1]);
    let forced_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        forced_log.contains("already is the only voter"),
        "{forced_log}"
    );

    // A plain restart: still one member, never the old three.
    assert_eq!(cluster.nodes[0].terminate(), Some(0));
    let plain = survivor_args(&n1_dir, &metrics);
    cluster.nodes[0] = NodeProcess::spawn(plain.clone(), log.clone(), None);
    wait_write(&survivor, "after/restart", "restarted: writes");
    wait_voters(&survivor, "restarted: still alone", &[1]);

    // Grow back to three with new ids (the dead members' ids are retired).
    let mut joiners = Vec::new();
    let mut endpoints = vec![n1_client.clone()];
    for id in [4, 5] {
        let client_address = free_address();
        let args = vec![
            "--id".to_string(),
            id.to_string(),
            "--join".to_string(),
            n1_client.clone(),
            "--peer-listen".to_string(),
            free_address(),
            "--client-listen".to_string(),
            client_address.clone(),
            "--data-dir".to_string(),
            cluster
                .dir
                .path()
                .join(format!("n{id}"))
                .display()
                .to_string(),
            "--metrics-listen".to_string(),
            "off".to_string(),
        ];
        let log = cluster.dir.path().join(format!("n{id}.log"));
        joiners.push(NodeProcess::spawn(args, log, None));
        endpoints.push(client_address);
        wait_voters(
            &client(&endpoints),
            &format!("n{id} joins"),
            &[&[1][..], &[4, 5][..id as usize - 3]].concat(),
        );
    }
    let all = client(&endpoints);
    wait_write(&all, "after/grow", "grown: writes");
    // Every member holds every acknowledged write, read locally (stale) on each.
    for endpoint in &endpoints {
        let local = client(std::slice::from_ref(endpoint));
        let mut last = None;
        assert!(
            wait_for(|| {
                last = scan_all(&local, Consistency::Stale);
                last.as_ref().is_some_and(|stored| {
                    acknowledged
                        .iter()
                        .all(|(key, value)| stored.get(key) == Some(value))
                })
            }),
            "{endpoint} does not hold every acknowledged write: {} of {} keys",
            last.map_or(0, |stored| stored.len()),
            acknowledged.len()
        );
    }

    // The survivor restarted with the OLD cluster's flags is refused, and so is the forced
    // start's command left in place (it would drop n4 and n5, still a majority of theirs);
    // without flags it rejoins the grown cluster, not the old one.
    assert_eq!(cluster.nodes[0].terminate(), Some(0));
    let (code, stderr) = run_keyval(&forced_args);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already forced"), "{stderr}");
    assert!(stderr.contains("remove it"), "{stderr}");
    let mut old_flags = plain.clone();
    old_flags.extend(["--cluster".to_string(), cluster.spec.clone()]);
    let (code, stderr) = run_keyval(&old_flags);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("storage records"), "{stderr}");
    cluster.nodes[0] = NodeProcess::spawn(plain, log, None);
    wait_voters(&all, "after the survivor's restart", &[1, 4, 5]);
    wait_write(&all, "after/last", "grown and restarted: writes");
    // ...and the survivor itself follows the grown cluster: it receives that write.
    let local = client(std::slice::from_ref(&n1_client));
    assert!(
        wait_for(|| local
            .get_with(b"after/last".to_vec(), Consistency::Stale)
            .is_ok_and(|read| read.value.is_some())),
        "the restarted survivor does not follow the grown cluster"
    );
    drop(joiners);
}

#[test]
fn force_new_cluster_refuses_an_empty_data_directory_a_join_and_a_larger_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    let base = |data_dir: &Path| {
        vec![
            "--id".to_string(),
            "1".to_string(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--force-new-cluster".to_string(),
            "--metrics-listen".to_string(),
            "off".to_string(),
            "--client-listen".to_string(),
            free_address(),
            "--peer-listen".to_string(),
            free_address(),
        ]
    };
    let (code, stderr) = run_keyval(&base(&empty));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing to recover"), "{stderr}");
    assert!(
        !empty.join("bootstrap").exists() && !empty.join("node-id").exists(),
        "a refused start wrote state"
    );

    let mut join = base(&empty);
    join.extend(["--join".to_string(), free_address()]);
    let (code, stderr) = run_keyval(&join);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--join"), "{stderr}");

    let mut larger = base(&empty);
    larger.extend([
        "--cluster".to_string(),
        format!(
            "1={}/{},2={}/{}",
            free_address(),
            free_address(),
            free_address(),
            free_address()
        ),
    ]);
    let (code, stderr) = run_keyval(&larger);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("only member"), "{stderr}");
}
