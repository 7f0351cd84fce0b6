//! The binaries' command lines: `keyval` with no flags runs a working single-node store in
//! its working directory and stops with exit 0 on SIGTERM; wrong flags and bad cluster specs
//! exit non-zero with a clear message; kvctl reports usage errors with exit code 2; `kvctl txn`
//! reads etcdctl's format from stdin or a file, and `get`/`del` take a prefix or a range.

mod process_support;

use std::process::{Command, Stdio};

use keyval::client::{Client, ClientOptions};

use process_support::{kvctl, NodeProcess};

fn keyval(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn no_flags_runs_a_single_node_store_and_sigterm_exits_zero() {
    assert!(
        std::net::TcpListener::bind("127.0.0.1:7379").is_ok(),
        "127.0.0.1:7379 is busy: stop the keyval running there, this test needs the default port"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("keyval.log");
    let mut node = NodeProcess::spawn(Vec::new(), log.clone(), Some(dir.path()));
    let client = Client::connect(&["127.0.0.1:7379"], ClientOptions::default())
        .expect("the default node listens on 127.0.0.1:7379");
    client.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    assert_eq!(client.get(b"k".to_vec()).unwrap().unwrap().value, b"v");
    let out = kvctl("127.0.0.1:7379", &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    assert!(dir.path().join("keyval-data").is_dir());
    assert_eq!(node.terminate(), Some(0), "SIGTERM must exit 0");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("msg=stopped"), "{log}");
    assert!(log.contains("node=n1"), "{log}");
}

#[test]
fn wrong_flags_exit_non_zero_with_a_message() {
    let out = keyval(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    let out = keyval(&["--fsync", "sometimes"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));

    for (args, needle) in [
        (
            vec!["--id", "4", "--cluster", "1=127.0.0.1:1/127.0.0.1:2"],
            "not a member",
        ),
        (
            vec!["--cluster", "1=127.0.0.1:1"],
            "PEER_ADDRESS/CLIENT_ADDRESS",
        ),
        (vec!["--id", "0"], "ids start at 1"),
        (vec!["--election-ticks", "3"], "election_ticks"),
        (vec!["--client-idle-timeout-ms", "0"], "at least 1"),
        (
            vec!["--client-buffer-bytes-max", "1024"],
            "one maximal frame",
        ),
    ] {
        let out = keyval(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }

    let out = kvctl("127.0.0.1:1", &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = kvctl("127.0.0.1:1", &["cas", "k", "v"]);
    assert_eq!(out.status.code(), Some(2), "cas needs a condition");
    // Nothing listens there: a clear error, exit 1.
    let out = kvctl("127.0.0.1:1", &["--timeout-ms", "300", "get", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kvctl:"));
}

#[test]
fn environment_twins_configure_the_node_and_the_log_level_filters() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("keyval.log");
    let client_address = process_support::free_address();
    let env = [
        ("KEYVAL_ID", "7".to_string()),
        ("KEYVAL_CLIENT_LISTEN", client_address.clone()),
        ("KEYVAL_PEER_LISTEN", process_support::free_address()),
        (
            "KEYVAL_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("KEYVAL_LOG_LEVEL", "warn".to_string()),
    ];
    let mut node = NodeProcess::spawn_with_env(Vec::new(), &env, log.clone(), None);
    let client = Client::connect(
        std::slice::from_ref(&client_address),
        ClientOptions::default(),
    )
    .expect("the node listens where KEYVAL_CLIENT_LISTEN says");
    client.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    let status = client.status(&client_address).unwrap();
    assert_eq!(status.id, keyval::NodeId(7));
    assert!(dir.path().join("data").is_dir());
    assert_eq!(node.terminate(), Some(0));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        !log.contains(" INFO "),
        "info lines printed at warn level:\n{log}"
    );
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|error| {
        panic!(
            "not JSON ({error}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn kvctl_lists_and_changes_members_and_transfers_leadership() {
    let cluster = process_support::ProcessCluster::start(3);
    let client = cluster.client();
    let leader = cluster.wait_leader(&client);

    let out = cluster.kvctl(&["member", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    for k in 0..3 {
        assert!(text.contains(&cluster.peer_addresses[k]), "{text}");
        assert!(text.contains(&cluster.client_addresses[k]), "{text}");
    }
    assert_eq!(text.matches("voter").count(), 3, "{text}");
    let out = cluster.kvctl(&["--json", "member", "list"]);
    let listed = json_of(&out);
    assert_eq!(listed["leader"], leader as u64 + 1);
    assert_eq!(listed["members"].as_array().unwrap().len(), 3);
    assert_eq!(listed["members"][leader]["leader"], true);
    assert_eq!(listed["members"][0]["role"], "voter");

    // Hand leadership to a follower, then to a non-member: a clear refusal, exit 1.
    let target = (leader + 1) % 3 + 1;
    let out = cluster.kvctl(&["transfer-leader", &target.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.wait_leader(&client), target - 1);
    let out = cluster.kvctl(&["transfer-leader", "9"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a voting member"), "{stderr}");
    let out = cluster.kvctl(&["--json", "member", "remove", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(json_of(&out)["error"]
        .as_str()
        .unwrap()
        .contains("not a member"));

    // A learner (never started: it only receives the log) is added and removed again.
    let (peer, client_address) = (
        process_support::free_address(),
        process_support::free_address(),
    );
    let out = cluster.kvctl(&[
        "--json",
        "member",
        "add",
        "4",
        "--peer",
        &peer,
        "--client",
        &client_address,
        "--learner",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", out);
    let added = json_of(&out);
    let learner = added["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["id"] == 4)
        .expect("n4 listed")
        .clone();
    assert_eq!(learner["role"], "learner");
    assert_eq!(learner["peer"], peer.as_str());
    assert_eq!(learner["client"], client_address.as_str());
    let out = cluster.kvctl(&[
        "member",
        "add",
        "4",
        "--peer",
        "127.0.0.1:1",
        "--client",
        &client_address,
        "--learner",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "another address for n4 is refused"
    );
    let out = cluster.kvctl(&["member", "remove", "4"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", out);
    let out = cluster.kvctl(&["member", "list"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&peer));
    let out = cluster.kvctl(&["member", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Runs `keyval` with `args` and waits (up to a generous deadline) for it to exit by itself;
/// returns its exit code and log. A node that keeps running is killed and reported as `None`.
fn run_until_exit(args: Vec<String>, log: std::path::PathBuf) -> (Option<i32>, String) {
    let mut node = NodeProcess::spawn(args, log.clone(), None);
    let mut child = node.child.take().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(log).unwrap_or_default())
}

/// Issue #11 item 5 (PITFALLS #21): the configuration a cluster is created with, and its
/// cluster id, are recorded in each data directory at first start. A member restarted
/// without `--cluster` rejoins its cluster (it used to lead a one-node cluster of its own on
/// its old data and acknowledge writes); one restarted with another `--cluster` or
/// `--cluster-id` is refused with a message saying why.
#[test]
fn a_member_restarted_with_other_flags_never_forms_a_cluster_of_its_own() {
    let mut cluster = process_support::ProcessCluster::start(3);
    let client = cluster.client();
    client.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    let data_dir = cluster.dir.path().join("n1").display().to_string();
    let log = |name: &str| cluster.dir.path().join(name);
    cluster.nodes[0].kill();

    // Another cluster: refused.
    let other = format!(
        "1={}/{}",
        cluster.peer_addresses[0], cluster.client_addresses[0]
    );
    let (code, output) = run_until_exit(
        vec![
            "--id".into(),
            "1".into(),
            "--cluster".into(),
            other,
            "--data-dir".into(),
            data_dir.clone(),
        ],
        log("other-cluster.log"),
    );
    assert_eq!(
        code,
        Some(1),
        "a conflicting --cluster was accepted:\n{output}"
    );
    assert!(
        output.contains("records that its cluster was created as"),
        "{output}"
    );
    // Another cluster id: refused.
    let (code, output) = run_until_exit(
        vec![
            "--id".into(),
            "1".into(),
            "--cluster".into(),
            cluster.spec.clone(),
            "--cluster-id".into(),
            "9".into(),
            "--data-dir".into(),
            data_dir.clone(),
        ],
        log("other-id.log"),
    );
    assert_eq!(
        code,
        Some(1),
        "a conflicting --cluster-id was accepted:\n{output}"
    );
    assert!(output.contains("belongs to cluster 1"), "{output}");

    // No --cluster at all: the recorded configuration, at the recorded addresses.
    cluster.nodes[0] = NodeProcess::spawn(
        vec!["--id".into(), "1".into(), "--data-dir".into(), data_dir],
        log("no-cluster.log"),
        None,
    );
    let address = cluster.client_addresses[0].clone();
    assert!(
        process_support::wait_for(|| client
            .status(&address)
            .is_ok_and(|status| status.leader.is_some_and(|leader| leader.0 != 1)
                || (status.role == keyval::raft::RoleKind::Leader && status.term.0 > 1))),
        "the restarted member did not rejoin its cluster at its recorded address"
    );
    assert!(cluster_has_one_leader(&cluster));
    // Its writes reach the whole cluster: it is a member of the old one, not a new one.
    client.put(b"k2".to_vec(), b"v2".to_vec()).unwrap();
    for address in &cluster.client_addresses {
        let node =
            Client::connect(std::slice::from_ref(address), ClientOptions::default()).unwrap();
        assert!(process_support::wait_for(|| node
            .get_with(b"k2".to_vec(), keyval::protocol::Consistency::Stale)
            .is_ok_and(|read| read
                .value
                .is_some_and(|value| value.value == b"v2"))));
    }
}

/// Whether exactly one node of the cluster says it leads.
fn cluster_has_one_leader(cluster: &process_support::ProcessCluster) -> bool {
    let client = cluster.client();
    cluster
        .client_addresses
        .iter()
        .filter(|address| {
            client
                .status(address)
                .is_ok_and(|status| status.role == keyval::raft::RoleKind::Leader)
        })
        .count()
        == 1
}

#[test]
fn kvctl_bench_trace_writes_latency_over_time_as_csv() {
    let cluster = process_support::ProcessCluster::start(1);
    cluster.wait_leader(&cluster.client());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.csv");
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = unix_ms();
    let out = small_bench_put(
        &cluster,
        &["--requests", "200", "--trace", path.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let csv = std::fs::read_to_string(&path).unwrap();
    let mut lines = csv.lines();
    let after = unix_ms();
    assert_eq!(lines.next(), Some(keyval::cli::trace::CSV_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|row| row.split(',').collect()).collect();
    let counted: u64 = rows.iter().map(|row| row[1].parse::<u64>().unwrap()).sum();
    // Each interval also says when it started on the wall clock, to line up with node logs.
    let first_unix_ms: u64 = rows[0][5].parse().unwrap();
    assert!((before..=after).contains(&first_unix_ms), "{csv}");
    // Every successful request falls in one interval; all 200 succeed unless one errs.
    assert!((1..=200).contains(&counted), "{csv}");
}

/// `kvctl bench put` with 4 clients over 100 keys, then `extra`.
fn small_bench_put(
    cluster: &process_support::ProcessCluster,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["bench", "put", "--clients", "4", "--keys", "100"];
    args.extend_from_slice(extra);
    cluster.kvctl(&args)
}

/// `--snapshot-every-ms` asks the leader for snapshots while the benchmark writes, says how
/// many it asked for, and the node does take them.
#[test]
fn kvctl_bench_takes_snapshots_while_it_writes() {
    let cluster = process_support::ProcessCluster::start(1);
    let client = cluster.client();
    cluster.wait_leader(&client);
    let out = small_bench_put(
        &cluster,
        &[
            "--duration-secs",
            "2",
            "--snapshot-every-ms",
            "200",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    let accepted = report["snapshots_requested"]["accepted"]
        .as_u64()
        .expect("the report counts the snapshot requests");
    // Two seconds at one every 200 ms: about ten, however slow this machine is now.
    assert!(accepted >= 3, "{report}");
    let endpoint = cluster.endpoints();
    assert!(
        process_support::wait_for(|| client
            .status(&endpoint)
            .is_ok_and(|status| status.snapshot.is_some_and(|last| last.index.0 > 0))),
        "no snapshot was taken: {:?}",
        client.status(&endpoint)
    );
    let usage = cluster.kvctl(&["bench", "put", "--snapshot-every-ms", "0"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

/// Runs `kvctl --endpoints <endpoints> <args>` with `input` on its stdin.
fn kvctl_with_stdin(endpoints: &str, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvctl");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("kvctl output")
}

#[test]
fn kvctl_txn_reads_etcdctl_format_from_stdin_and_files_and_ranges_work() {
    let cluster = process_support::ProcessCluster::start(1);
    let client = cluster.client();
    cluster.wait_leader(&client);
    let endpoints = cluster.endpoints();
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

    // Create-if-absent: the first run takes the lock, the second reads the holder.
    let lock =
        "version(\"lock\") = \"0\"\n\nput lock alice\nput config/a 1\nput config/b 2\n\nget lock\n";
    let out = kvctl_with_stdin(&endpoints, &["txn"], lock);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "SUCCESS\n\nOK\n\nOK\n\nOK\n");
    let out = kvctl_with_stdin(&endpoints, &["txn"], &lock.replace("alice", "bob"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "FAILURE\n\nalice\n");

    // --json, and a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txn.txt");
    std::fs::write(
        &file,
        "value(\"lock\") = \"alice\"\nmod(\"lock\") > \"0\"\n\ndel lock --prev-kv\nget --prefix config/\n",
    )
    .unwrap();
    let out = cluster.kvctl(&["--json", "txn", "--file", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["succeeded"], true, "{answer}");
    assert!(answer["revision"].as_u64().unwrap() > 0);
    assert_eq!(answer["responses"][0]["delete"]["deleted"], 1);
    assert_eq!(
        answer["responses"][0]["delete"]["previous"][0]["value"],
        "alice"
    );
    let entries = answer["responses"][1]["range"]["entries"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 2, "{answer}");
    assert_eq!(entries[0]["key"], "config/a");

    // A parse error names its line and exits 2, sending nothing.
    let out = kvctl_with_stdin(&endpoints, &["txn"], "\nput k v\nfrob k\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{out:?}"
    );
    assert!(client.get(b"k".to_vec()).unwrap().is_none());

    // get --prefix, del KEY END, del --prefix.
    let out = cluster.kvctl(&["get", "config/", "--prefix"]);
    assert_eq!(stdout(&out), "config/a\t1\nconfig/b\t2\n");
    let out = cluster.kvctl(&["del", "config/a", "config/b"]);
    assert_eq!(stdout(&out).trim(), "1");
    let out = cluster.kvctl(&["--json", "del", "config/", "--prefix"]);
    assert_eq!(stdout(&out).trim(), r#"{"deleted":1}"#);
    let out = cluster.kvctl(&["get", "config/", "--prefix"]);
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), String::new()));
}

#[test]
fn kvctl_grants_attaches_inspects_and_revokes_a_lease() {
    let cluster = process_support::ProcessCluster::start(1);
    let client = cluster.client();
    cluster.wait_leader(&client);
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

    let out = cluster.kvctl(&["lease", "grant", "600"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // "lease 1f granted with TTL(600s)", the id in hex as etcdctl prints it.
    let granted = stdout(&out);
    let id = granted
        .strip_prefix("lease ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{granted}"))
        .to_string();
    assert!(granted.ends_with("granted with TTL(600s)\n"), "{granted}");
    let lease = keyval::cli::lease::parse_lease_id(&id).unwrap();

    let out = cluster.kvctl(&["put", "session/a", "1", "--lease", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cluster.kvctl(&[
        "put",
        "session/b",
        "2",
        "--lease",
        &format!("0d{}", lease.0),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        client
            .get(b"session/a".to_vec())
            .unwrap()
            .unwrap()
            .metadata
            .lease,
        Some(lease)
    );

    let out = cluster.kvctl(&["lease", "ttl", &id, "--keys"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = stdout(&out);
    assert!(
        line.starts_with(&format!("lease {id} granted with TTL(600s), remaining(")),
        "{line}"
    );
    assert!(
        line.contains("attached keys([session/a session/b])"),
        "{line}"
    );

    let out = cluster.kvctl(&["lease", "keep-alive", &id, "--once"]);
    assert_eq!(
        stdout(&out),
        format!("lease {id} keepalived with TTL(600)\n")
    );
    let out = cluster.kvctl(&["--json", "lease", "list"]);
    let listed = json_of(&out);
    assert_eq!(listed["leases"][0]["id"], lease.0, "{listed}");

    let out = cluster.kvctl(&["lease", "revoke", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout(&out),
        format!("lease {id} revoked (2 keys deleted)\n")
    );
    assert!(client.get(b"session/a".to_vec()).unwrap().is_none());
    assert!(client.get(b"session/b".to_vec()).unwrap().is_none());

    // Gone: refused with exit 1; a put on it writes nothing; lease 0 is a usage error.
    let out = cluster.kvctl(&["lease", "keep-alive", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = cluster.kvctl(&["put", "session/c", "3", "--lease", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    assert!(client.get(b"session/c".to_vec()).unwrap().is_none());
    let out = cluster.kvctl(&["put", "k", "v", "--lease", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Issue #14: kvctl carries binary values and keys, and reports endpoints honestly.
#[test]
fn kvctl_carries_binary_data_and_endpoint_checks_fail_when_a_node_is_down() {
    let mut cluster = process_support::ProcessCluster::start(3);
    let client = cluster.client();
    cluster.wait_leader(&client);
    let endpoints = cluster.endpoints();
    let dir = tempfile::tempdir().unwrap();

    // Every byte value, from a file and back to a file, unchanged.
    let value: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    let input = dir.path().join("value.bin");
    std::fs::write(&input, &value).unwrap();
    let put = cluster.kvctl(&["put", "blob", "--from-file", input.to_str().unwrap()]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let output = dir.path().join("out.bin");
    let get = cluster.kvctl(&["get", "blob", "--output", output.to_str().unwrap()]);
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(std::fs::read(&output).unwrap(), value);
    // As hexadecimal and base64.
    let small = [0u8, 1, 254, 255];
    std::fs::write(&input, small).unwrap();
    assert!(cluster
        .kvctl(&["put", "small", "--from-file", input.to_str().unwrap()])
        .status
        .success());
    let hex = cluster.kvctl(&["get", "small", "--hex"]);
    assert_eq!(String::from_utf8_lossy(&hex.stdout).trim(), "0001feff");
    let base64 = cluster.kvctl(&["get", "small", "--base64"]);
    assert_eq!(String::from_utf8_lossy(&base64.stdout).trim(), "AAH+/w==");
    // A value from stdin (`-`), and a binary key given as hexadecimal.
    let piped = kvctl_with_stdin(
        &endpoints,
        &["--hex-keys", "put", "00ff", "-"],
        "from stdin",
    );
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let read = client
        .get(vec![0x00, 0xff])
        .unwrap()
        .expect("the binary key");
    assert_eq!(read.value, b"from stdin");
    let scan = cluster.kvctl(&["--hex-keys", "get", "00", "--prefix", "--hex"]);
    assert_eq!(
        String::from_utf8_lossy(&scan.stdout).trim(),
        format!(
            "00ff\t{}",
            "from stdin"
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    );
    // Usage errors exit 2 and say why.
    let bad = cluster.kvctl(&["--hex-keys", "get", "zz"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not hexadecimal"));
    assert_eq!(cluster.kvctl(&["put", "novalue"]).status.code(), Some(2));

    let invalid = process_support::kvctl("no-port-here", &["get", "k"]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("invalid endpoint"));
    // bench writes under __bench/ and removes its keys unless --keep.
    let bench = cluster.kvctl(&["bench", "put", "--clients", "2", "--requests", "50"]);
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let left = client
        .scan(keyval::kv::KeyRange::prefix(b"__bench/"), 1000)
        .unwrap();
    assert!(
        left.entries.is_empty(),
        "bench left {} keys",
        left.entries.len()
    );

    // check perf: a short load with a verdict per threshold; the exit code follows it.
    let perf = cluster.kvctl(&["check", "perf", "--duration-secs", "2"]);
    let said = String::from_utf8_lossy(&perf.stdout);
    for check in ["throughput", "p99 latency", "slowest request", "errors"] {
        assert!(said.contains(check), "{check} missing from:\n{said}");
    }
    let verdict = said.lines().last().unwrap_or_default().trim().to_string();
    assert!(verdict == "PASS" || verdict == "FAIL", "{said}");
    assert_eq!(
        perf.status.code(),
        Some(if verdict == "PASS" { 0 } else { 1 })
    );
    let left = client
        .scan(keyval::kv::KeyRange::prefix(b"__bench/"), 1000)
        .unwrap();
    assert!(left.entries.is_empty(), "check perf left its keys");

    // All up: status and health pass.
    let status = cluster.kvctl(&["endpoint", "status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let health = cluster.kvctl(&["endpoint", "health"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&health.stdout)
            .matches("is healthy")
            .count(),
        3
    );
    // One node down: both fail, naming it as refused.
    cluster.nodes[2].kill();
    let status = cluster.kvctl(&["endpoint", "status"]);
    assert_eq!(status.status.code(), Some(1));
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("unreachable: connection refused"), "{said}");
    assert_eq!(cluster.kvctl(&["status"]).status.code(), Some(1));
    let health = cluster.kvctl(&["endpoint", "health"]);
    assert_eq!(health.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&health.stdout).contains("is unhealthy"));
}

/// Issue #14: `--config FILE` (TOML), with flags > KEYVAL_* environment > file > defaults;
/// `--print-config` says where each value came from; an unknown key is refused with its line.
#[test]
fn a_config_file_sets_every_flag_below_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyval.toml");
    std::fs::write(
        &file,
        "# a node's settings\ndata-dir = \"/srv/keyval\"\nsnapshot_entries = 5000\n\
         tick-ms = 15\nlease-reads = true\nlog-level = \"debug\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args([
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--tick-ms",
            "20",
        ])
        .env("KEYVAL_SNAPSHOT_ENTRIES", "777")
        .output()
        .expect("keyval");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    for line in [
        "data-dir = \"/srv/keyval\"  # file",
        "snapshot-entries = 777  # environment",
        "tick-ms = 20  # flag",
        "lease-reads = true  # file",
        "log-level = \"debug\"  # file",
        "election-ticks = 15  # default",
    ] {
        assert!(printed.contains(line), "{line:?} missing from:\n{printed}");
    }
    // What --print-config prints is itself a valid config file.
    let echoed = dir.path().join("echoed.toml");
    std::fs::write(&echoed, printed.as_bytes()).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(["--config", echoed.to_str().unwrap(), "--print-config"])
        .output()
        .expect("keyval");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("snapshot-entries = 777  # file"));

    // The documented example file is a valid configuration.
    let example = Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(["--print-config", "--config"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/keyval.example.toml"))
        .output()
        .expect("keyval");
    assert!(
        example.status.success(),
        "{}",
        String::from_utf8_lossy(&example.stderr)
    );

    std::fs::write(&file, "data-dir = \"x\"\n\nsnapshot-entires = 5\n").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(["--config", file.to_str().unwrap()])
        .output()
        .expect("keyval");
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("unknown key `snapshot-entires` at line 3"),
        "{said}"
    );
}

#[test]
fn kvctl_watch_prints_live_and_replayed_changes_and_bench_watch_delivers_every_event() {
    let cluster = process_support::ProcessCluster::start(1);
    let client = cluster.client();
    cluster.wait_leader(&client);
    let first = client.put(b"w/a".to_vec(), b"1".to_vec()).unwrap();
    // Live: a watcher started now sees the next two changes, in etcdctl's layout.
    let watcher = {
        let endpoints = cluster.endpoints();
        std::thread::spawn(move || {
            process_support::kvctl(&endpoints, &["watch", "w/", "--prefix", "--count", "2"])
        })
    };
    // Wait until the watch is open: its progress is invisible, so write until it has seen
    // two changes (a write before the watch opened is simply not printed).
    let mut writes = 0;
    while !watcher.is_finished() {
        writes += 1;
        assert!(writes < 2000, "the watcher never saw two changes");
        client
            .put(b"w/b".to_vec(), format!("v{writes}").into_bytes())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = watcher.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert_eq!((lines[0], lines[1]), ("PUT", "w/b"), "{text}");
    // Replayed from the history, as JSON with revisions.
    client.delete(b"w/a".to_vec()).unwrap();
    let out = cluster.kvctl(&[
        "--json",
        "watch",
        "w/a",
        "--rev",
        &first.mod_revision.0.to_string(),
        "--count",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "PUT");
    assert_eq!(events[0]["revision"], first.mod_revision.0);
    assert_eq!(events[1]["type"], "DELETE");
    // The benchmark: every acknowledged put reaches its key's watcher.
    let out = cluster.kvctl(&[
        "--json",
        "bench",
        "watch",
        "--watchers",
        "50",
        "--watch-connections",
        "5",
        "--clients",
        "4",
        "--requests",
        "300",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout} {out:?}");
    let watch = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|value| value.get("watch").cloned())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(watch["complete"], true, "{stdout}");
    assert!(watch["acknowledged"].as_u64().unwrap() > 0, "{stdout}");
}
