//! keyval beside etcd on this machine, interleaved: three `keyval` processes (release build,
//! default flags, fsync on) and three `etcd` processes (3.4, default flags: fsync on, snapshot
//! every 100,000 entries), each preloaded with 100,000 keys of 256 bytes, then puts at 64
//! clients (one request in flight each) against each in turn, for several rounds.
//!
//! ```sh
//! apt-get install etcd-server     # etcd 3.4 on Debian 12
//! cargo bench --bench versus_etcd # KEYVAL_BENCH_ROUNDS (2), KEYVAL_BENCH_SECONDS (10), KEYVAL_BENCH_CLIENTS (64)
//! ```
//!
//! What is measured:
//! - **etcd**: 64 threads, each with one keep-alive HTTP/1.1 connection to the leader's
//!   gRPC gateway (`POST /v3/kv/put`, JSON). etcd's own `benchmark` tool (gRPC) is not packaged
//!   by Debian; the gateway costs etcd a JSON translation per request, so etcd's figures here
//!   may be somewhat below what it does over gRPC.
//! - **keyval, pipelined**: `kvctl bench put --clients 64` (each client one request in flight
//!   with its own exactly-once session, over one connection to the leader).
//! - **keyval, blocking `Client`**: `kvctl bench put --clients 64 --driver threads`: 64 threads
//!   calling one shared `Client`.
//!
//! Skips (with a message) when `etcd` is not on the PATH.

mod support;

use support::{
    env_or, free_port, kvctl_bench, preload_keys, start_keyval, wait_until, Figures, Processes,
    KEYS, VALUE_BYTES,
};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

// ---- etcd over its HTTP gateway ----

fn start_etcd(dir: &Path) -> (Processes, Vec<String>) {
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial = (0..3)
        .map(|k| format!("e{k}=http://127.0.0.1:{}", peers[k]))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for k in 0..3 {
        let log = std::fs::File::create(dir.join(format!("etcd{k}.log"))).expect("etcd log");
        children.push(
            Command::new("etcd")
                .arg(format!("--name=e{k}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("etcd{k}")).display()
                ))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{}",
                    clients[k]
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{}",
                    clients[k]
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", peers[k]))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                    peers[k]
                ))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=keyval-bench")
                .arg("--logger=zap")
                .arg("--log-level=error")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd"),
        );
    }
    let addresses = clients
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    (Processes(children), addresses)
}

/// A keep-alive HTTP/1.1 connection.
struct Http {
    address: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Http {
    fn connect(address: &str) -> std::io::Result<Http> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Http {
            address: address.to_string(),
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// POSTs `body` as JSON; returns the status code and the response body.
    fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.address,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.writer.write_all(&request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)
                    .map_err(|error| std::io::Error::other(error.to_string()))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut chunk = vec![0; length.unwrap_or(0)];
            self.reader.read_exact(&mut chunk)?;
            body = chunk;
        }
        Ok((status, body))
    }
}

fn put_body(key: &[u8], value: &[u8]) -> Vec<u8> {
    let engine = base64::engine::general_purpose::STANDARD;
    format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        engine.encode(key),
        engine.encode(value)
    )
    .into_bytes()
}

fn etcd_leader(addresses: &[String]) -> Option<String> {
    for address in addresses {
        let Ok(mut http) = Http::connect(address) else {
            continue;
        };
        let Ok((200, body)) = http.post("/v3/maintenance/status", b"{}") else {
            continue;
        };
        let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let member = status["header"]["member_id"].as_str()?.to_string();
        let leader = status["leader"].as_str()?.to_string();
        if member == leader {
            return Some(address.clone());
        }
    }
    None
}

/// `clients` threads putting random keys through their own connections, for `duration`
/// (or, with `sequential`, each key of the key space once).
fn etcd_puts(leader: &str, clients: u64, duration: Duration, sequential: bool) -> Figures {
    let value = vec![b'x'; VALUE_BYTES];
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + duration;
    let latencies: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let (next, value) = (&next, &value);
                scope.spawn(move || {
                    let mut http = Http::connect(leader).expect("connect to etcd");
                    let mut latencies = Vec::new();
                    loop {
                        let key = if sequential {
                            let key = next.fetch_add(1, Ordering::Relaxed);
                            if key >= KEYS {
                                break;
                            }
                            key
                        } else {
                            if Instant::now() >= deadline {
                                break;
                            }
                            rand::random::<u64>() % KEYS
                        };
                        let body = put_body(format!("key{key:08}").as_bytes(), value);
                        let began = Instant::now();
                        match http.post("/v3/kv/put", &body) {
                            Ok((200, _)) => latencies.push(began.elapsed().as_micros() as u32),
                            Ok((status, body)) => panic!(
                                "etcd put failed: {status} {}",
                                String::from_utf8_lossy(&body)
                            ),
                            Err(error) => panic!("etcd put failed: {error}"),
                        }
                    }
                    latencies
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut all: Vec<u32> = latencies.into_iter().flatten().collect();
    all.sort_unstable();
    let percentile = |fraction: f64| {
        let index = ((all.len() as f64 * fraction).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[index]) / 1000.0
    };
    Figures {
        throughput: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
        p999_ms: percentile(0.999),
    }
}

fn print(name: &str, figures: &Figures) {
    println!(
        "  {name:<32} {:>9.0} puts/s   p50 {:>7.2} ms   p99 {:>7.2} ms   p99.9 {:>7.2} ms",
        figures.throughput, figures.p50_ms, figures.p99_ms, figures.p999_ms
    );
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        println!("skipped: no `etcd` on the PATH (apt-get install etcd-server)");
        return;
    }
    let rounds = env_or("KEYVAL_BENCH_ROUNDS", 2);
    let seconds = env_or("KEYVAL_BENCH_SECONDS", 10);
    let clients = env_or("KEYVAL_BENCH_CLIENTS", 64);
    let dir = tempfile::tempdir().expect("temp dir");

    let (_etcd, etcd_addresses) = start_etcd(dir.path());
    let mut etcd_leader_address = None;
    wait_until("an etcd leader", || {
        etcd_leader_address = etcd_leader(&etcd_addresses);
        etcd_leader_address.is_some()
    });
    let etcd_leader_address = etcd_leader_address.expect("leader");
    let (_keyval, endpoints) = start_keyval(dir.path(), None);

    eprintln!("preloading {KEYS} keys into each...");
    etcd_puts(&etcd_leader_address, 64, Duration::ZERO, true);
    preload_keys(&endpoints);

    let clients_flag = clients.to_string();
    let seconds_flag = seconds.to_string();
    let duration = Duration::from_secs(seconds);
    let mut results: Vec<(&str, Vec<Figures>)> = vec![
        ("etcd 3.4 (HTTP gateway)", Vec::new()),
        ("keyval (kvctl bench, pipelined)", Vec::new()),
        ("keyval (blocking Client, threads)", Vec::new()),
    ];
    for round in 1..=rounds {
        println!("round {round}: puts at {clients} clients, {KEYS} keys of {VALUE_BYTES} bytes, {seconds} s each");
        let etcd = etcd_puts(&etcd_leader_address, clients, duration, false);
        print(results[0].0, &etcd);
        results[0].1.push(etcd);
        let common = [
            "put",
            "--clients",
            &clients_flag,
            "--duration-secs",
            &seconds_flag,
        ];
        if let Some(figures) = kvctl_bench(&endpoints, &common, None) {
            print(results[1].0, &figures);
            results[1].1.push(figures);
        }
        let threads: Vec<&str> = common
            .iter()
            .copied()
            .chain(["--driver", "threads"])
            .collect();
        if let Some(figures) = kvctl_bench(&endpoints, &threads, None) {
            print(results[2].0, &figures);
            results[2].1.push(figures);
        }
    }
    println!("median over {rounds} rounds (by throughput):");
    let mut medians = Vec::new();
    for (name, runs) in &mut results {
        if runs.is_empty() {
            continue;
        }
        runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
        let median = runs[runs.len() / 2].clone();
        print(name, &median);
        medians.push(median);
    }
    if medians.len() == 3 {
        println!(
            "  keyval pipelined / etcd: {:.1}x throughput, p99 {:.2}x of etcd's; blocking Client / etcd: {:.1}x",
            medians[1].throughput / medians[0].throughput,
            medians[1].p99_ms / medians[0].p99_ms,
            medians[2].throughput / medians[0].throughput
        );
    }
}
