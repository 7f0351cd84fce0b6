//! Many clients on one node: 10,000 concurrent client connections to a real `keyval` process
//! (release build, default flags, fsync on), 1,000 of them active (`kvctl bench put`, one
//! request in flight each) while the other 9,000 sit idle; the node's resident memory and
//! thread count at each step, and after the connections close.
//!
//! ```sh
//! cargo bench --bench connections                      # 10,000 connections, 1,000 active
//! KEYVAL_BENCH_CONNECTIONS=20000 KEYVAL_BENCH_ACTIVE=2000 cargo bench --bench connections
//! ```
//!
//! Needs `ulimit -n` above the connection count (the node raises its own soft limit to the
//! hard one; this process must be allowed as many).

mod support;

use support::{env_or, free_port, Processes};

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyval::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
};

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

/// Asks the node for its status; returns whether it knows a leader.
fn status(stream: &mut TcpStream) -> Result<bool, String> {
    let mut out = Vec::new();
    let request = RequestFrame {
        request_id: 1,
        timeout_ms: 0,
        body: RequestBody::Status,
    };
    write_frame(&request, &mut out).map_err(|error| error.to_string())?;
    stream.write_all(&out).map_err(|error| error.to_string())?;
    let answer: ResponseFrame = FrameReader::new()
        .read_frame(stream)
        .map_err(|error| error.to_string())?;
    match answer.result {
        Ok(ResponseBody::Status(status)) => Ok(status.leader.is_some()),
        Ok(other) => Err(format!("unexpected answer to status: {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo test --benches` lists; nothing to list
    }
    let total = env_or("KEYVAL_BENCH_CONNECTIONS", 10_000);
    let active = env_or("KEYVAL_BENCH_ACTIVE", 1_000).min(total);
    let seconds = env_or("KEYVAL_BENCH_SECONDS", 10);
    let dir = tempfile::tempdir().expect("temp dir");
    let (peer, client) = (free_port(), free_port());
    let address = format!("127.0.0.1:{client}");
    let node = Processes(vec![Command::new(env!("CARGO_BIN_EXE_keyval"))
        .args(["--id", "1", "--cluster"])
        .arg(format!("1=127.0.0.1:{peer}/{address}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keyval")]);
    let pid = node.0[0].id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&address)
        .map_err(|error| error.to_string())
        .and_then(|mut stream| status(&mut stream))
        // The load needs a leader, not only a listening node.
        .and_then(|leader| {
            leader
                .then_some(())
                .ok_or_else(|| "no leader yet".to_string())
        })
        .is_err()
    {
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss_start, threads_start) = (rss_mib(pid), threads(pid));

    let idle_count = total - active;
    let began = Instant::now();
    let mut idle = Vec::with_capacity(idle_count);
    for number in 0..idle_count {
        let mut stream = TcpStream::connect(&address)
            .unwrap_or_else(|error| panic!("connection {number}: {error} (ulimit -n?)"));
        status(&mut stream).unwrap_or_else(|error| panic!("connection {number}: {error}"));
        idle.push(stream);
    }
    let opened_in = began.elapsed();
    let (rss_idle, threads_idle) = (rss_mib(pid), threads(pid));

    let mut bench = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args([
            "--endpoints",
            &address,
            "bench",
            "put",
            "--json",
            "--keys",
            "100000",
        ])
        .args(["--clients", &active.to_string()])
        .args(["--connections", &active.to_string()])
        .args(["--duration-secs", &seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvctl");
    let mut rss_peak: f64 = 0.0;
    let mut threads_peak = 0;
    while bench.try_wait().expect("kvctl").is_none() {
        rss_peak = rss_peak.max(rss_mib(pid));
        threads_peak = threads_peak.max(threads(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = bench.wait_with_output().expect("kvctl output");
    let report = String::from_utf8_lossy(&output.stdout);
    let rss_loaded = rss_mib(pid);
    drop(idle);
    std::thread::sleep(Duration::from_secs(2));
    let rss_closed = rss_mib(pid);

    println!("{total} client connections on one node, {active} active (kvctl bench put, one request in flight each), {idle_count} idle");
    println!(
        "  {idle_count} idle connections opened in {:.2}s",
        opened_in.as_secs_f64()
    );
    println!("  node at start:          RSS {rss_start:7.1} MiB, {threads_start} threads");
    println!(
        "  with {idle_count} idle:       RSS {rss_idle:7.1} MiB, {threads_idle} threads ({:.0} bytes per connection)",
        (rss_idle - rss_start) * 1024.0 * 1024.0 / idle_count.max(1) as f64
    );
    println!("  during the load (peak): RSS {rss_peak:7.1} MiB, {threads_peak} threads");
    println!("  after the load:         RSS {rss_loaded:7.1} MiB (the store now holds up to 100,000 keys and its log)");
    println!("  all connections closed: RSS {rss_closed:7.1} MiB");
    println!("  load: {}", report.trim());
}
