//! `kvctl bench`: throughput and latency percentiles of put / get / mixed workloads at N
//! concurrent clients, with a progress line every second (like redis-benchmark).
//!
//! Each of the `--clients` threads runs one request at a time, so N threads keep N requests
//! in flight. They share `--connections` [`Client`]s (one multiplexed connection per node
//! each), so the server sees pipelined requests on few connections.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::Rng;
use serde_json::json;

use crate::client::{Client, ClientOptions};

use super::kvctl::{ConsistencyArg, EXIT_ERROR, EXIT_OK};

/// What the benchmark does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Only puts.
    Put,
    /// Only gets (the key space is written once first).
    Get,
    /// Gets and puts, `--read-percent` of them gets.
    Mixed,
}

/// `kvctl bench` flags.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum, default_value = "put")]
    pub workload: Workload,
    /// Concurrent clients (threads, one request in flight each).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Client connections they share (default: min(clients, 2); each is multiplexed, and
    /// fewer connections mean bigger batches per system call).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Run this many seconds (unless --requests is given).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Run this many requests in all instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Percentage of gets in the mixed workload.
    #[arg(long, default_value_t = 50)]
    pub read_percent: u8,
    /// Consistency of gets.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyArg,
}

/// The measured result.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Successful requests.
    pub operations: u64,
    /// Failed requests.
    pub errors: u64,
    /// Wall time of the measurement.
    pub elapsed: Duration,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub percentiles_us: [u64; 5],
}

impl BenchReport {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the benchmark and prints its report; returns the exit code.
pub fn run(endpoints: &[String], timeout_ms: u64, args: &BenchArgs, json: bool) -> i32 {
    if args.clients == 0 || args.keys == 0 || args.read_percent > 100 {
        eprintln!(
            "kvctl bench: --clients and --keys must be at least 1, --read-percent at most 100"
        );
        return super::kvctl::EXIT_USAGE;
    }
    let options = ClientOptions {
        request_timeout: Duration::from_millis(timeout_ms.max(1)),
        read_consistency: args.consistency.into(),
        ..ClientOptions::default()
    };
    let connections = args.connections.unwrap_or(args.clients.min(2)).max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        match Client::connect(endpoints, options.clone()) {
            Ok(client) => clients.push(client),
            Err(error) => {
                eprintln!("kvctl bench: {error}");
                return EXIT_ERROR;
            }
        }
    }
    let value = vec![b'x'; args.value_size];
    if args.workload != Workload::Put {
        eprintln!("preloading {} keys...", args.keys);
        let next = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for worker in 0..args.clients.min(64) {
                let client = clients[worker % clients.len()].clone();
                let (next, value) = (&next, &value);
                scope.spawn(move || loop {
                    let key = next.fetch_add(1, Ordering::Relaxed);
                    if key >= args.keys {
                        return;
                    }
                    let _ = client.put(key_name(key), value.clone());
                });
            }
        });
    }
    match measure(&clients, args, &value) {
        Ok(report) => {
            print_report(args, &report, json);
            if report.operations == 0 {
                EXIT_ERROR
            } else {
                EXIT_OK
            }
        }
        Err(error) => {
            eprintln!("kvctl bench: {error}");
            EXIT_ERROR
        }
    }
}

fn key_name(key: u64) -> Vec<u8> {
    format!("bench/{key:012}").into_bytes()
}

fn measure(clients: &[Client], args: &BenchArgs, value: &[u8]) -> Result<BenchReport, String> {
    let done = AtomicBool::new(false);
    let operations = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let issued = AtomicU64::new(0);
    let first_error = parking_lot::Mutex::new(None::<String>);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration_secs);
    let latencies: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.clients)
            .map(|worker| {
                let client = clients[worker % clients.len()].clone();
                let (done, operations, errors, issued, first_error) =
                    (&done, &operations, &errors, &issued, &first_error);
                scope.spawn(move || {
                    let mut random = rand::rng();
                    let mut latencies = Vec::with_capacity(64 * 1024);
                    while !done.load(Ordering::Relaxed) {
                        if let Some(limit) = args.requests {
                            if issued.fetch_add(1, Ordering::Relaxed) >= limit {
                                break;
                            }
                        }
                        let key = key_name(random.random_range(0..args.keys));
                        let read = match args.workload {
                            Workload::Put => false,
                            Workload::Get => true,
                            Workload::Mixed => random.random_range(0..100) < args.read_percent,
                        };
                        let began = Instant::now();
                        let result = if read {
                            client.get(key).map(|_| ())
                        } else {
                            client.put(key, value.to_vec()).map(|_| ())
                        };
                        let micros = began.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        match result {
                            Ok(()) => {
                                latencies.push(micros);
                                operations.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(error) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().get_or_insert(error.to_string());
                            }
                        }
                    }
                    latencies
                })
            })
            .collect();
        // Progress once a second, until the duration passes or the workers finish.
        let mut last = 0;
        let mut second = 0;
        while !workers.iter().all(|worker| worker.is_finished()) {
            std::thread::sleep(Duration::from_millis(50).min(Duration::from_secs(1)));
            let elapsed = start.elapsed();
            if elapsed.as_secs() > second {
                second = elapsed.as_secs();
                let now = operations.load(Ordering::Relaxed);
                eprintln!(
                    "[{second:>4}s] {:>8} ops/s  total {now}  errors {}",
                    now - last,
                    errors.load(Ordering::Relaxed)
                );
                last = now;
            }
            if args.requests.is_none() && Instant::now() >= deadline {
                done.store(true, Ordering::Relaxed);
            }
        }
        done.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed();
    let mut all: Vec<u32> = latencies.into_iter().flatten().collect();
    if all.is_empty() {
        return Err(first_error
            .lock()
            .clone()
            .unwrap_or_else(|| "no request completed".into()));
    }
    all.sort_unstable();
    let percentile = |fraction: f64| {
        let index = ((all.len() as f64 * fraction).ceil() as usize).clamp(1, all.len()) - 1;
        u64::from(all[index])
    };
    if let Some(error) = first_error.lock().as_ref() {
        eprintln!("first error: {error}");
    }
    Ok(BenchReport {
        operations: operations.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        percentiles_us: [
            percentile(0.50),
            percentile(0.90),
            percentile(0.99),
            percentile(0.999),
            u64::from(all[all.len() - 1]),
        ],
    })
}

fn print_report(args: &BenchArgs, report: &BenchReport, json: bool) {
    let [p50, p90, p99, p999, max] = report.percentiles_us;
    let millis = |micros: u64| micros as f64 / 1000.0;
    if json {
        println!(
            "{}",
            json!({
                "workload": format!("{:?}", args.workload).to_lowercase(),
                "clients": args.clients,
                "value_size": args.value_size,
                "keys": args.keys,
                "operations": report.operations,
                "errors": report.errors,
                "elapsed_secs": report.elapsed.as_secs_f64(),
                "throughput": report.throughput(),
                "latency_ms": { "p50": millis(p50), "p90": millis(p90), "p99": millis(p99), "p99.9": millis(p999), "max": millis(max) },
            })
        );
    } else {
        println!(
            "{:?}: {} clients, {}-byte values, {} keys",
            args.workload, args.clients, args.value_size, args.keys
        );
        println!(
            "  {} requests in {:.2}s, {} errors",
            report.operations,
            report.elapsed.as_secs_f64(),
            report.errors
        );
        println!("  throughput: {:.0} requests/s", report.throughput());
        println!(
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            millis(p50),
            millis(p90),
            millis(p99),
            millis(p999),
            millis(max)
        );
    }
}
