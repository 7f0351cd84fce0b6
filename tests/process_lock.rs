//! Lock safety with real processes (issue 13, "Lock safety"): holder A is a real
//! `kvctl lock --ttl 3 NAME -- sh -c ...` process whose command writes through the
//! storage-side fence with `kvctl put --fencing-token $KEYVAL_FENCING_TOKEN`. A (kvctl and its shell)
//! is frozen with SIGSTOP past its lease's TTL; B takes the lock with a higher token and
//! writes through the fence; A is thawed and tries its write with the old token: the fence
//! refuses it, so the resource's committed history (read back through a watch from the first
//! revision) never has A's write after B's. Also: `kvctl lock` passes the key, token and exit
//! code; `kvctl elect` campaigns, resigns on Ctrl-C (the next candidate leads) and observes.
//! Method: `process_support::ProcessCluster`; every wait is on a condition with a generous
//! deadline, never a sleep followed by an assertion.

mod process_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions, WatchOptions};
use keyval::kv::EventKind;
use keyval::recipes::{fence_key, fenced_put, FencedPut, Mutex, Session};
use keyval::LogIndex;
use process_support::{wait_for, ProcessCluster, WAIT};

/// A's lease TTL in seconds (above the cluster's minimum, which it would be raised to).
const HOLDER_TTL_SECONDS: &str = "3";

/// A's command: record its pid and token, write once through the fence, wait for `go`, then
/// write again through the fence with the same (by then stale) token.
const HOLDER_SCRIPT: &str = r#"
fenced() {
    "$KVCTL" put --fencing-token "$KEYVAL_FENCING_TOKEN" res "$1"
    echo "exit $?"
}
echo $$ > "$DIR/shell.pid"
fenced A-first > "$DIR/first.tmp" 2>&1 && mv "$DIR/first.tmp" "$DIR/first"
echo "$KEYVAL_FENCING_TOKEN" > "$DIR/token.tmp" && mv "$DIR/token.tmp" "$DIR/token"
while [ ! -e "$DIR/go" ]; do sleep 0.05; done
fenced A-late > "$DIR/late.tmp" 2>&1
mv "$DIR/late.tmp" "$DIR/late"
"#;

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn client(cluster: &ProcessCluster) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    Client::connect(&cluster.client_addresses, options).expect("connect")
}

#[test]
fn a_holder_paused_past_its_ttl_cannot_write_after_the_next_holder() {
    let cluster = ProcessCluster::start(3);
    let client = client(&cluster);
    cluster.wait_leader(&client);
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = std::fs::File::create(dir.path().join("kvctl.err")).expect("stderr file");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["lock", "--ttl", HOLDER_TTL_SECONDS, "locks/res", "--"])
        .args(["sh", "-c", HOLDER_SCRIPT])
        .env("KEYVAL_ENDPOINTS", cluster.endpoints())
        .env("KVCTL", env!("CARGO_BIN_EXE_kvctl"))
        .env("DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn kvctl lock");
    let token_path = dir.path().join("token");
    assert!(
        wait_for(|| read(&token_path).is_some()),
        "A never got the lock"
    );
    let token_a = LogIndex(read(&token_path).unwrap().trim().parse().expect("token"));
    let first = read(&dir.path().join("first")).expect("A's first write");
    assert!(first.contains("exit 0"), "A's first write: {first}");
    let shell: u32 = read(&dir.path().join("shell.pid"))
        .unwrap()
        .trim()
        .parse()
        .expect("pid");

    // Freeze A, lease keeper and command alike.
    signal(holder.id(), "-STOP");
    signal(shell, "-STOP");
    let frozen_at = Instant::now();
    let session = Session::with_ttl(&client, 10).expect("session");
    let guard = Mutex::new(&session, "locks/res")
        .lock_timeout(WAIT)
        .expect("B gets the lock once A's lease expires");
    // A's last renewal was at most about a third of the TTL (plus a slow round trip) before
    // the freeze: its lease cannot have expired sooner than this after it.
    assert!(
        frozen_at.elapsed() >= Duration::from_secs(1),
        "B got the lock {:?} after A froze, before A's lease could expire",
        frozen_at.elapsed()
    );
    let token_b = guard.fencing_token();
    assert!(token_b > token_a, "tokens {token_a} then {token_b}");
    let written = fenced_put(&client, b"res", b"B", token_b).expect("B writes");
    assert!(matches!(written, FencedPut::Written { .. }), "{written:?}");

    // Thaw A: it still believes it holds the lock until its keeper or clock says otherwise,
    // and tries its late write with the old token.
    std::fs::write(dir.path().join("go"), b"").expect("go");
    signal(shell, "-CONT");
    signal(holder.id(), "-CONT");
    let late_path = dir.path().join("late");
    assert!(
        wait_for(|| read(&late_path).is_some()),
        "A's late write never finished"
    );
    let late = read(&late_path).unwrap();
    assert!(
        late.contains("exit 4") && late.contains(&format!("fencing token {}", token_b.0)),
        "A's stale write was not refused: {late}"
    );
    let fence = client.get(fence_key(b"res")).expect("read").expect("fence");
    assert_eq!(fence.value, format!("{:020}", token_b.0).into_bytes());
    let exited = wait_for(|| matches!(holder.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = holder.kill();
    }
    assert!(exited, "kvctl lock did not exit after its command");
    let complaint = read(&dir.path().join("kvctl.err")).unwrap_or_default();
    assert!(
        complaint.contains("lost"),
        "kvctl did not report the lost lock: {complaint}"
    );

    // The committed history of the resource: A's first write, then B's, nothing after.
    let end = client
        .put(b"end".to_vec(), Vec::new())
        .expect("end")
        .mod_revision;
    let mut watch = client
        .watch(
            WatchOptions::key(b"res")
                .start(LogIndex(1))
                .progress_interval(Duration::from_millis(200)),
        )
        .expect("watch");
    let mut values = Vec::new();
    let deadline = Instant::now() + WAIT;
    while watch.revision() < end && Instant::now() < deadline {
        if let Some(response) = watch
            .recv_timeout(Duration::from_millis(500))
            .expect("recv")
        {
            for event in response.events {
                assert_eq!(event.kind, EventKind::Put);
                values.push(String::from_utf8_lossy(&event.value).into_owned());
            }
        }
    }
    assert!(watch.revision() >= end, "the watch never caught up");
    assert_eq!(values, ["A-first", "B"]);
    guard.unlock().expect("unlock");
    session.close().expect("close");
}

#[test]
fn kvctl_lock_passes_key_token_and_exit_code_to_its_command() {
    let cluster = ProcessCluster::start(1);
    let client = client(&cluster);
    cluster.wait_leader(&client);
    let out = cluster.kvctl(&[
        "lock",
        "jobs/nightly",
        "--",
        "sh",
        "-c",
        "echo \"$KEYVAL_LOCK_KEY $KEYVAL_FENCING_TOKEN\"; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (key, token) = printed.split_once(' ').expect("key and token");
    assert!(key.starts_with("jobs/nightly/"), "{printed}");
    let token: u64 = token.parse().expect("token");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("fencing token {token}")));
    // Released on exit: the next holder gets it at once, with a higher token.
    let out = cluster.kvctl(&["--json", "lock", "jobs/nightly", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let acquired: serde_json::Value = serde_json::from_slice(&out.stderr).expect("json on stderr");
    assert!(acquired["fencing_token"].as_u64().expect("token") > token);
    let left = client
        .get_prefix(b"jobs/nightly/", 10)
        .expect("read")
        .entries
        .len();
    assert_eq!(left, 0, "the lock was not released");
}

/// A `kvctl` child whose stdout lines arrive on a channel.
struct Lines {
    child: std::process::Child,
    lines: crossbeam_channel::Receiver<String>,
}

impl Lines {
    fn spawn(endpoints: &str, args: &[&str]) -> Lines {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .arg("--endpoints")
            .arg(endpoints)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kvctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { child, lines }
    }

    fn next(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line in time")
    }

    /// SIGINT, then the exit code.
    fn interrupt(&mut self) -> Option<i32> {
        signal(self.child.id(), "-INT");
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kvctl_elect_campaigns_resigns_on_interrupt_and_observes() {
    let cluster = ProcessCluster::start(1);
    let client = client(&cluster);
    cluster.wait_leader(&client);
    let endpoints = cluster.endpoints();
    let observer = Lines::spawn(&endpoints, &["elect", "jobs/leader", "--listen"]);
    let mut alpha = Lines::spawn(&endpoints, &["elect", "jobs/leader", "alpha"]);
    assert!(alpha.next().starts_with("jobs/leader/"));
    assert_eq!(alpha.next(), "alpha");
    assert!(observer.next().starts_with("jobs/leader/"));
    assert_eq!(observer.next(), "alpha");
    let beta = Lines::spawn(&endpoints, &["--json", "elect", "jobs/leader", "beta"]);
    // Beta waits in line behind alpha until alpha resigns on Ctrl-C.
    assert!(wait_for(|| {
        client
            .get_prefix(b"jobs/leader/", 10)
            .is_ok_and(|page| page.entries.len() == 2)
    }));
    assert_eq!(alpha.interrupt(), Some(0), "alpha resigns and exits 0");
    let elected: serde_json::Value = serde_json::from_str(&beta.next()).expect("json");
    assert_eq!(elected["value"], "beta");
    assert!(observer.next().starts_with("jobs/leader/"));
    assert_eq!(observer.next(), "beta");
}
