//! What the process-level benchmarks share: settings from the environment, free ports,
//! child processes that die with the benchmark, and a three-node `keyval` cluster driven by
//! `kvctl bench`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Keys the cluster benchmarks write and read (the README's figures: a 100k-key store).
pub const KEYS: u64 = 100_000;

/// Bytes of each value.
pub const VALUE_BYTES: usize = 256;

/// The environment variable `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A port on 127.0.0.1 free now (bound, then released for a child to take).
pub fn free_port() -> u16 {
    // Random and below Linux's ephemeral range (32768 and up): a port-0 port, released, can be
    // taken by any outgoing connection before the child binds it.
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Child processes killed and reaped when dropped, however the benchmark ends.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` every 100 ms; panics after a minute.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct Figures {
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// `program` as a command, under `taskset -c cpus` when `cpus` is given (a CPU list such as
/// `0-1` or `2,3`), so that nodes and client can be kept off each other's cores.
fn command(program: &str, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpus, program]);
            command
        }
        None => Command::new(program),
    }
}

/// Starts three release `keyval` nodes with default flags on free ports, data and logs in
/// `dir`, and waits until they serve a write; returns them and the client endpoints.
pub fn start_keyval(dir: &Path, cpus: Option<&str>) -> (Processes, String) {
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let spec = (0..3)
        .map(|k| format!("{}=127.0.0.1:{}/127.0.0.1:{}", k + 1, peers[k], clients[k]))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for k in 0..3 {
        let log = std::fs::File::create(dir.join(format!("keyval{k}.log"))).expect("keyval log");
        children.push(
            command(env!("CARGO_BIN_EXE_keyval"), cpus)
                .args(["--id", &(k + 1).to_string(), "--cluster", &spec])
                .arg("--data-dir")
                .arg(dir.join(format!("keyval{k}")))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn keyval (under `taskset` when CPUs are given)"),
        );
    }
    let endpoints = clients
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = Processes(children);
    wait_until("a keyval leader", || {
        kvctl_bench(
            &endpoints,
            &["put", "--clients", "1", "--requests", "1"],
            None,
        )
        .is_some()
    });
    (nodes, endpoints)
}

/// Writes every one of the [`KEYS`] keys once (a get run with one request per client
/// writes the whole key space first).
pub fn preload_keys(endpoints: &str) {
    kvctl_bench(
        endpoints,
        &["get", "--clients", "64", "--requests", "1"],
        None,
    )
    .expect("preloading the keys");
}

/// Runs `kvctl bench ARGS` over [`KEYS`] keys of [`VALUE_BYTES`] bytes, keeping them, and
/// reads its JSON report; `None` when it failed (no leader yet, say).
pub fn kvctl_bench(endpoints: &str, args: &[&str], cpus: Option<&str>) -> Option<Figures> {
    let output = command(env!("CARGO_BIN_EXE_kvctl"), cpus)
        .args(["--endpoints", endpoints, "bench"])
        .args(args)
        .args(["--json", "--keep", "--keys", &KEYS.to_string()])
        .args(["--value-size", &VALUE_BYTES.to_string()])
        .stderr(Stdio::null())
        .output()
        .expect("run kvctl (under `taskset` when CPUs are given)");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let latency = &report["latency_ms"];
    Some(Figures {
        throughput: report["throughput"].as_f64()?,
        p50_ms: latency["p50"].as_f64()?,
        p99_ms: latency["p99"].as_f64()?,
        p999_ms: latency["p99.9"].as_f64()?,
    })
}
