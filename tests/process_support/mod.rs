//! Shared by the process tests: real `keyval` processes on loopback with temporary data
//! directories, killed (and their logs shown on failure) when the test ends however it ends.
#![allow(dead_code)]

pub mod history;
pub mod watchers;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use keyval::raft::RoleKind;

/// How long a test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds or [`WAIT`] passes.
pub fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A free port on 127.0.0.1 (bound, then released for the process to take).
///
/// A random address in 127.0.0.0/8 with a random port, checked free: unlike "bind port 0 on
/// 127.0.0.1, release, bind again", nothing running in parallel (tests binding ephemeral
/// ports) is likely to take it in between.
pub fn free_address() -> String {
    loop {
        let [b, c, d] = rand::random::<[u8; 3]>();
        let port = 20_000 + rand::random::<u16>() % 40_000;
        let address = std::net::SocketAddr::from(([127, b, c, d.max(1)], port));
        if let Ok(listener) = TcpListener::bind(address) {
            drop(listener);
            return address.to_string();
        }
    }
}

/// A free port on 127.0.0.1 itself (for a listener that must be on that address, such as one
/// named in a TLS certificate): random and below Linux's ephemeral range (32768 and up), so
/// that no outgoing connection or port-0 listener of a test running beside takes it between
/// this check and the child's bind. Binding port 0 and releasing it lost that race on CI: a
/// node died with "Address already in use".
pub fn free_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One `keyval` process; killed on drop.
pub struct NodeProcess {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub args: Vec<String>,
}

impl NodeProcess {
    /// Spawns `keyval` with `args`, its stderr going to `log`.
    pub fn spawn(args: Vec<String>, log: PathBuf, cwd: Option<&std::path::Path>) -> NodeProcess {
        NodeProcess::spawn_with_env(args, &[], log, cwd)
    }

    /// Spawns `keyval` with `args` and extra environment variables.
    pub fn spawn_with_env(
        args: Vec<String>,
        env: &[(&str, String)],
        log: PathBuf,
        cwd: Option<&std::path::Path>,
    ) -> NodeProcess {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyval"));
        command
            .args(&args)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let child = command.spawn().expect("spawn keyval");
        NodeProcess {
            child: Some(child),
            log,
            args,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {} (last lines) ----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A cluster of `keyval` processes.
pub struct ProcessCluster {
    pub nodes: Vec<NodeProcess>,
    pub client_addresses: Vec<String>,
    pub peer_addresses: Vec<String>,
    /// Where each node serves /metrics, /livez and /readyz.
    pub metrics_addresses: Vec<String>,
    pub spec: String,
    pub dir: tempfile::TempDir,
}

impl ProcessCluster {
    /// Starts `size` nodes with fsync on.
    pub fn start(size: usize) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_addresses: Vec<String> = (0..size).map(|_| free_address()).collect();
        let peer_addresses: Vec<String> = (0..size).map(|_| free_address()).collect();
        let metrics_addresses: Vec<String> = (0..size).map(|_| free_address()).collect();
        let spec = (0..size)
            .map(|k| format!("{}={}/{}", k + 1, peer_addresses[k], client_addresses[k]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = ProcessCluster {
            nodes: Vec::new(),
            client_addresses,
            peer_addresses,
            metrics_addresses,
            spec,
            dir,
        };
        for position in 0..size {
            let node = cluster.spawn(position);
            cluster.nodes.push(node);
        }
        cluster
    }

    fn spawn(&self, position: usize) -> NodeProcess {
        let data_dir = self.dir.path().join(format!("n{}", position + 1));
        let args = vec![
            "--id".to_string(),
            (position + 1).to_string(),
            "--cluster".to_string(),
            self.spec.clone(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--metrics-listen".to_string(),
            self.metrics_addresses[position].clone(),
        ];
        let log = self.dir.path().join(format!("n{}.log", position + 1));
        NodeProcess::spawn(args, log, None)
    }

    /// Starts the node at `position` again (same flags, same data).
    pub fn restart(&mut self, position: usize) {
        self.nodes[position].kill();
        self.nodes[position] = self.spawn(position);
    }

    /// The endpoints flag value.
    pub fn endpoints(&self) -> String {
        self.client_addresses.join(",")
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        Client::connect(&self.client_addresses, ClientOptions::default()).expect("connect")
    }

    /// Waits until a live node says it is the leader; returns its position.
    pub fn wait_leader(&self, client: &Client) -> usize {
        let mut found = None;
        let live: Vec<bool> = self.nodes.iter().map(|node| node.child.is_some()).collect();
        assert!(
            wait_for(|| {
                found = self
                    .client_addresses
                    .iter()
                    .enumerate()
                    .find_map(|(k, address)| {
                        if !live[k] {
                            return None;
                        }
                        let status = client.status(address).ok()?;
                        (status.role == RoleKind::Leader).then_some(k)
                    });
                found.is_some()
            }),
            "no leader"
        );
        found.unwrap()
    }

    /// Runs `kvctl` against this cluster.
    pub fn kvctl(&self, args: &[&str]) -> Output {
        kvctl(&self.endpoints(), args)
    }
}

/// `GET http://<address><path>` over a plain TCP connection: the status code and the body,
/// or why the request failed.
pub fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let address: std::net::SocketAddr = address.parse().map_err(|error| format!("{error}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|error| format!("connect {address}: {error}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|error| error.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| format!("send: {error}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|error| format!("read: {error}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Runs `kvctl --endpoints <endpoints> <args>`.
pub fn kvctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl")
}
