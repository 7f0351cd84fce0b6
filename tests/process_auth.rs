//! Auth through the real binaries (ports 5550–5599 on 127.0.0.1): `kvctl user|role|auth`
//! set up users and roles as pasted from docs/security.md; permissions hold across a
//! restart of every node and through `kvctl snapshot save` + `keyval restore` into a new
//! cluster; a wrong password is logged with the remote address; with `--client-cert-auth`
//! a client certificate's common name is the user, and an expired client certificate is
//! refused with a log line that says so. Every wait is on a condition with a deadline.

mod cert_support;
mod process_support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

use cert_support::Ca;
use process_support::{wait_for, NodeProcess};

/// The next free port of this binary's share of 5500–5599 (5550–5599).
fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(5550);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 5600, "out of test ports 5550-5599");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A cluster of `keyval` processes with fixed flags per node.
struct Cluster {
    nodes: Vec<NodeProcess>,
    clients: Vec<String>,
    args: Vec<Vec<String>>,
    dir: PathBuf,
}

impl Cluster {
    /// `size` nodes in `dir`, data under `name`; `extra` flags for every node; data dirs
    /// prepared by `prepare` (a restore) before the nodes start.
    fn start(
        dir: &Path,
        name: &str,
        size: usize,
        extra: &[String],
        prepare: impl Fn(usize, &str, &Path),
    ) -> Cluster {
        let clients: Vec<String> = (0..size).map(|_| format!("127.0.0.1:{}", port())).collect();
        let peers: Vec<String> = (0..size).map(|_| format!("127.0.0.1:{}", port())).collect();
        let spec = (0..size)
            .map(|k| format!("{}={}/{}", k + 1, peers[k], clients[k]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            clients,
            args: Vec::new(),
            dir: dir.to_path_buf(),
        };
        for k in 0..size {
            let data_dir = dir.join(format!("{name}-n{}", k + 1));
            prepare(k + 1, &spec, &data_dir);
            let mut args = vec![
                "--id".to_string(),
                (k + 1).to_string(),
                "--cluster".to_string(),
                spec.clone(),
                "--data-dir".to_string(),
                data_dir.display().to_string(),
                "--metrics-listen".to_string(),
                "off".to_string(),
            ];
            args.extend_from_slice(extra);
            let log = dir.join(format!("{name}-n{}.log", k + 1));
            cluster
                .nodes
                .push(NodeProcess::spawn(args.clone(), log, None));
            cluster.args.push(args);
        }
        cluster
    }

    fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for (k, node) in self.nodes.iter_mut().enumerate() {
            let log = self.dir.join(format!("restart-n{}.log", k + 1));
            *node = NodeProcess::spawn(self.args[k].clone(), log, None);
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| std::fs::read_to_string(&node.log).unwrap_or_default())
            .collect()
    }

    fn kvctl(&self, args: &[&str]) -> Output {
        kvctl(&self.clients.join(","), args, &[])
    }
}

fn kvctl(endpoints: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoints", endpoints, "--timeout-ms", "10000"])
        .args(args)
        .env_remove("KEYVAL_USER")
        .env_remove("KEYVAL_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[track_caller]
fn ok(output: Output) -> String {
    assert!(output.status.success(), "kvctl failed: {}", text(&output));
    text(&output)
}

#[track_caller]
fn refused(output: Output, words: &str) {
    assert_eq!(output.status.code(), Some(6), "{}", text(&output));
    assert!(
        text(&output).to_lowercase().contains(words),
        "{:?} lacks {words:?}",
        text(&output)
    );
}

const ROOT: &str = "root:root-pw";
const ALICE: &str = "alice:alice-pw";

/// The commands of docs/security.md's walkthrough.
fn set_up(cluster: &Cluster) {
    assert!(
        wait_for(|| cluster.kvctl(&["put", "warmup", "1"]).status.success()),
        "the cluster never served"
    );
    ok(cluster.kvctl(&["user", "add", ROOT]));
    ok(cluster.kvctl(&["user", "grant-role", "root", "root"]));
    ok(cluster.kvctl(&["role", "add", "app"]));
    let granted = ok(cluster.kvctl(&[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "app/",
        "--prefix",
    ]));
    assert!(granted.contains("prefix \"app/\""), "{granted}");
    ok(cluster.kvctl(&["role", "grant-permission", "app", "read", "config"]));
    ok(cluster.kvctl(&["user", "add", ALICE]));
    ok(cluster.kvctl(&["user", "grant-role", "alice", "app"]));
    ok(cluster.kvctl(&["put", "secret/1", "s"]));
    let enabled = ok(cluster.kvctl(&["auth", "enable"]));
    assert!(enabled.contains("Authentication Enabled"), "{enabled}");
}

/// What alice may and may not do, and that an unauthenticated kvctl is refused.
fn check_permissions(cluster: &Cluster) {
    assert!(
        wait_for(|| cluster
            .kvctl(&["--user", ALICE, "put", "app/1", "v"])
            .status
            .success()),
        "alice cannot write her prefix"
    );
    refused(
        cluster.kvctl(&["--user", ALICE, "put", "secret/2", "x"]),
        "permission denied",
    );
    refused(
        cluster.kvctl(&["--user", ALICE, "get", "secret/1"]),
        "read permission",
    );
    refused(
        cluster.kvctl(&["--user", ALICE, "put", "config", "x"]),
        "write permission",
    );
    refused(cluster.kvctl(&["get", "app/1"]), "unauthenticated");
    refused(
        cluster.kvctl(&["--user", ALICE, "user", "list"]),
        "root role",
    );
    // The password from the environment.
    let endpoints = cluster.clients.join(",");
    let got = ok(kvctl(
        &endpoints,
        &["--user", "alice", "get", "app/1"],
        &[("KEYVAL_PASSWORD", "alice-pw")],
    ));
    assert_eq!(got.trim(), "v");
    let secret = ok(cluster.kvctl(&["--user", ROOT, "get", "secret/1"]));
    assert_eq!(secret.trim(), "s");
}

#[test]
fn kvctl_sets_up_auth_and_permissions_survive_restart_and_backup_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), "a", 3, &[], |_, _, _| {});
    set_up(&cluster);
    check_permissions(&cluster);

    let status = ok(cluster.kvctl(&["--user", ALICE, "auth", "status"]));
    assert!(status.contains("Authentication Status: true"), "{status}");
    let role = ok(cluster.kvctl(&["--user", ROOT, "role", "get", "app"]));
    assert!(
        role.contains("KV readwrite permission: prefix \"app/\""),
        "{role}"
    );
    assert!(
        role.contains("KV read permission: key \"config\""),
        "{role}"
    );
    let users = ok(cluster.kvctl(&["--user", ROOT, "user", "list"]));
    assert_eq!(
        users.split_whitespace().collect::<Vec<_>>(),
        ["alice", "root"]
    );

    // A wrong password is refused, and logged with the remote address.
    refused(
        cluster.kvctl(&["--user", "alice:wrong", "get", "app/1"]),
        "authentication failed",
    );
    assert!(
        wait_for(|| cluster
            .logs()
            .lines()
            .any(|line| line.contains("authentication failed") && line.contains("remote"))),
        "no log line for the failed authentication"
    );

    // Restart every node: the auth state comes back from disk.
    cluster.restart_all();
    check_permissions(&cluster);

    // Backup: root may save a snapshot, alice may not.
    refused(cluster.kvctl(&["--user", ALICE, "snapshot"]), "root role");
    ok(cluster.kvctl(&["--user", ROOT, "snapshot"]));
    let file = dir.path().join("backup.kvb");
    ok(cluster.kvctl(&["--user", ROOT, "snapshot", "save", file.to_str().unwrap()]));
    refused(
        cluster.kvctl(&[
            "--user",
            ALICE,
            "snapshot",
            "save",
            dir.path().join("x").to_str().unwrap(),
        ]),
        "root role",
    );
    drop(cluster);

    // Restore into a new one-node cluster: the same users, roles and permissions.
    let restored = Cluster::start(dir.path(), "restored", 1, &[], |id, spec, data_dir| {
        let output = Command::new(env!("CARGO_BIN_EXE_keyval"))
            .args(["restore", "--snapshot", file.to_str().unwrap()])
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--id", &id.to_string(), "--cluster", spec])
            .output()
            .expect("keyval restore");
        assert!(output.status.success(), "restore: {}", text(&output));
    });
    check_permissions(&restored);
}

#[test]
fn a_client_certificate_names_the_user_and_an_expired_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    // Paths as the command-line arguments they become.
    let sign = |file: &str, user: &str, names: &[&str], expired: bool| {
        let (cert, key) = ca.sign_named(file, Some(user), names, expired);
        (cert.display().to_string(), key.display().to_string())
    };
    let (node_cert, node_key) = sign("node", "node", &["127.0.0.1"], false);
    let ca_path = ca.cert_path().display().to_string();
    let flags = [
        "--cert-file",
        &node_cert,
        "--key-file",
        &node_key,
        "--trusted-ca-file",
        &ca_path,
        "--client-cert-auth",
    ]
    .map(str::to_string);
    let cluster = Cluster::start(dir.path(), "tls", 1, &flags, |_, _, _| {});
    let endpoints = cluster.clients.join(",");
    let (root_cert, root_key) = sign("root", "root", &[], false);
    let (alice_cert, alice_key) = sign("alice", "alice", &[], false);
    let (old_cert, old_key) = sign("expired", "alice", &[], true);
    let as_client = |cert: &str, key: &str, args: &[&str]| {
        let mut all = vec!["--cacert", &ca_path, "--cert", cert, "--key", key];
        all.extend_from_slice(args);
        kvctl(&endpoints, &all, &[])
    };
    let root = |args: &[&str]| as_client(&root_cert, &root_key, args);
    assert!(
        wait_for(|| root(&["put", "warmup", "1"]).status.success()),
        "the TLS node never served"
    );
    // Certificate-only users: no passwords at all.
    ok(root(&["user", "add", "root", "--no-password"]));
    ok(root(&["user", "grant-role", "root", "root"]));
    ok(root(&["role", "add", "app"]));
    ok(root(&[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "app/",
        "--prefix",
    ]));
    ok(root(&["user", "add", "alice", "--no-password"]));
    ok(root(&["user", "grant-role", "alice", "app"]));
    ok(root(&["auth", "enable"]));

    let alice = |args: &[&str]| as_client(&alice_cert, &alice_key, args);
    ok(alice(&["put", "app/1", "v"]));
    refused(alice(&["put", "secret/1", "v"]), "\"alice\"");
    ok(root(&["put", "secret/1", "v"]));
    // A password cannot stand in for a certificate-only user.
    refused(
        as_client(
            &alice_cert,
            &alice_key,
            &["--user", "root:guess", "get", "app/1"],
        ),
        "authentication failed",
    );

    // An expired certificate (from the trusted CA, naming alice) is refused at the handshake.
    let expired = as_client(&old_cert, &old_key, &["get", "app/1"]);
    assert!(
        !expired.status.success(),
        "an expired certificate was served"
    );
    assert!(
        wait_for(|| cluster
            .logs()
            .lines()
            .any(|line| line.contains("closing client connection")
                && line.to_lowercase().contains("expired"))),
        "no log line names the expired certificate:\n{}\nkvctl: {}",
        cluster.logs(),
        text(&expired)
    );
    ok(alice(&["get", "app/1"]));
}

#[test]
fn a_node_joins_a_cluster_with_auth_enabled_as_root() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "join", 1, &[], |_, _, _| {});
    set_up(&cluster);
    let client = format!("127.0.0.1:{}", port());
    let args = |user: Option<&str>| {
        let mut args = vec![
            "--id".to_string(),
            "2".to_string(),
            "--join".to_string(),
            cluster.clients[0].clone(),
            "--peer-listen".to_string(),
            format!("127.0.0.1:{}", port()),
            "--client-listen".to_string(),
            client.clone(),
            "--data-dir".to_string(),
            dir.path().join("joiner").display().to_string(),
            "--metrics-listen".to_string(),
            "off".to_string(),
        ];
        if let Some(user) = user {
            args.extend(["--join-user".to_string(), user.to_string()]);
        }
        args
    };
    // Without credentials the cluster refuses to add it, and says why.
    let log = dir.path().join("joiner-refused.log");
    let mut refused = NodeProcess::spawn(args(None), log.clone(), None);
    assert!(
        wait_for(|| std::fs::read_to_string(&log)
            .unwrap_or_default()
            .to_lowercase()
            .contains("unauthenticated")),
        "the refusal was not logged"
    );
    refused.kill();
    let _ = std::fs::remove_dir_all(dir.path().join("joiner"));
    // As root it joins.
    let _joiner = NodeProcess::spawn_with_env(
        args(Some("root")),
        &[("KEYVAL_JOIN_PASSWORD", "root-pw".to_string())],
        dir.path().join("joiner.log"),
        None,
    );
    assert!(
        wait_for(|| ok(cluster.kvctl(&["--user", ROOT, "member", "list"])).contains(&client)),
        "the node never joined"
    );
    let endpoints = format!("{},{client}", cluster.clients[0]);
    assert!(wait_for(|| kvctl(
        &endpoints,
        &["--user", ALICE, "get", "app/1", "--consistency", "stale"],
        &[]
    )
    .status
    .code()
        == Some(3)));
}
