//! `kvctl bench`: throughput and latency percentiles of put / get / mixed workloads at N
//! concurrent clients, with a progress line every second (like redis-benchmark).
//!
//! Each of the `--clients` threads runs one request at a time, so N threads keep N requests
//! in flight. They share `--connections` [`Client`]s (one multiplexed connection per node
//! each), so the server sees pipelined requests on few connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::Rng;
use serde_json::json;

use crate::client::{Client, ClientOptions};
use crate::protocol::{write_frame, FrameReader, RequestBody, RequestFrame, ResponseFrame};

use super::kvctl::{ConsistencyArg, EXIT_ERROR, EXIT_OK};
use super::trace::{self, TraceInterval, TraceSample};

/// What the benchmark does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Only puts.
    Put,
    /// Only gets (the key space is written once first).
    Get,
    /// Gets and puts, `--read-percent` of them gets.
    Mixed,
    /// Compare-and-put transactions on the keys (`--driver threads`).
    Txn,
    /// Lease renewals: `--keys` leases granted first, then renewed at random (`--driver
    /// threads`).
    KeepAlive,
    /// Puts at full speed to the keys of `--watchers` one-key watches on one node: every
    /// event must be delivered; reports delivery latency (`--driver threads`).
    Watch,
}

/// How the benchmark drives its concurrent clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// Like redis-benchmark: each connection's thread keeps its share of the clients'
    /// requests in flight on the raw protocol (each client one request at a time, with its
    /// own session), sent to the leader. Measures the cluster, not the client library.
    Pipelined,
    /// One thread per client calling the blocking `Client` (leader discovery, retries).
    Threads,
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
    /// Connections the clients share (default 1: every connection is multiplexed, and fewer
    /// connections mean bigger batches per system call on a small machine). With `--driver
    /// threads`, the number of `Client`s the threads share: by default all threads call ONE
    /// shared `Client`, whose calls pipeline on its connection.
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
    /// How clients are driven.
    #[arg(long, value_enum, default_value = "pipelined")]
    pub driver: Driver,
    /// Write a latency-over-time trace to this CSV file: per interval, the requests completed
    /// in it and their p50 / p99 / max (pipelined driver only).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// The trace's interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub trace_interval_ms: u64,
    /// Also hold this many idle connections open to the leader during the measurement (each
    /// answers one status request first), to measure a node serving many clients of which
    /// few are active. Needs as many file descriptors (`ulimit -n`) here and on the node.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// Keep the benchmark's keys (under `__bench/`) instead of deleting them at the end.
    #[arg(long)]
    pub keep: bool,
    /// During the measurement, ask the leader for a snapshot every this many milliseconds
    /// (without waiting for the previous one; one still being written serves the request) —
    /// the write latency while snapshots are taken, in one command.
    #[arg(long)]
    pub snapshot_every_ms: Option<u64>,
    /// `watch`: the number of watches (one key each).
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// `watch`: the connections the watches share.
    #[arg(long, default_value_t = 10)]
    pub watch_connections: usize,
    /// `watch`: the node serving the watches (default: the first endpoint).
    #[arg(long)]
    pub watch_endpoint: Option<String>,
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
    /// Latency over time, one entry per `--trace-interval-ms` (empty without `--trace`).
    pub trace: Vec<TraceInterval>,
    /// The watchers' measurement (the `watch` workload only).
    pub watch: Option<super::bench_coordination::WatchReport>,
    /// Snapshots requested during the measurement (`--snapshot-every-ms`): accepted, refused.
    pub snapshots: Option<(u64, u64)>,
}

impl BenchReport {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the benchmark and prints its report; returns the exit code.
pub fn run(endpoints: &[String], options: &ClientOptions, args: &BenchArgs, json: bool) -> i32 {
    match measure(endpoints, options, args) {
        Ok(report) => {
            print_report(args, &report, json);
            if let Some(path) = &args.trace {
                if let Err(error) = trace::write_csv(path, &report.trace) {
                    eprintln!("kvctl bench: writing the trace {}: {error}", path.display());
                    return EXIT_ERROR;
                }
                print_trace_summary(path, &report.trace);
            }
            if let Some(watch) = &report.watch {
                if !super::bench_coordination::print_watch_report(watch, json) {
                    return EXIT_ERROR;
                }
            }
            if report.operations == 0 {
                EXIT_ERROR
            } else {
                EXIT_OK
            }
        }
        Err((code, error)) => {
            eprintln!("kvctl bench: {error}");
            code
        }
    }
}

/// Runs the benchmark and returns its report, or an exit code and why it could not run.
pub fn measure(
    endpoints: &[String],
    options: &ClientOptions,
    args: &BenchArgs,
) -> Result<BenchReport, (i32, String)> {
    let usage = |reason: &str| Err((super::kvctl::EXIT_USAGE, reason.to_string()));
    if args.clients == 0 || args.keys == 0 || args.read_percent > 100 {
        return usage("--clients and --keys must be at least 1, --read-percent at most 100");
    }
    if args.snapshot_every_ms == Some(0) {
        return usage("--snapshot-every-ms must be at least 1");
    }
    if args.trace.is_some() && (args.driver != Driver::Pipelined || args.trace_interval_ms == 0) {
        return usage("--trace needs --driver pipelined and --trace-interval-ms >= 1");
    }
    let coordination = matches!(
        args.workload,
        Workload::Txn | Workload::KeepAlive | Workload::Watch
    );
    let driver = if coordination {
        Driver::Threads
    } else {
        args.driver
    };
    let options = ClientOptions {
        read_consistency: args.consistency.into(),
        ..options.clone()
    };
    let tls = options.tls.as_ref();
    let connections = args.connections.unwrap_or(1).max(1);
    // The pipelined driver opens its own connections; a `Client` each is for the threads.
    let client_count = match driver {
        Driver::Pipelined => 1,
        Driver::Threads => connections,
    };
    let mut clients = Vec::new();
    for _ in 0..client_count {
        match Client::connect(endpoints, options.clone()) {
            Ok(client) => clients.push(client),
            Err(error) => return Err((EXIT_ERROR, error.to_string())),
        }
    }
    let value = vec![b'x'; args.value_size];
    if matches!(
        args.workload,
        Workload::Get | Workload::Mixed | Workload::Txn
    ) {
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
    let idle = open_idle_connections(&clients[0], args.idle_connections, tls)
        .map_err(|error| (EXIT_ERROR, error))?;
    let snapshots = match args.snapshot_every_ms {
        Some(every) => match find_leader(&clients[0]) {
            Some(leader) => Some(SnapshotRequester::start(
                clients[0].clone(),
                leader,
                Duration::from_millis(every),
            )),
            None => return Err((EXIT_ERROR, "no node says it is the leader".to_string())),
        },
        None => None,
    };
    let measured = match driver {
        Driver::Threads if coordination => super::bench_coordination::measure(
            &clients, args, &value, endpoints, tls,
        )
        .map(|(mut report, watch)| {
            report.watch = watch;
            report
        }),
        Driver::Pipelined => match find_leader(&clients[0]) {
            Some(leader) => super::pipeline::measure(&leader, args, &value, connections, tls),
            None => Err("no node says it is the leader".to_string()),
        },
        Driver::Threads => measure_with_clients(&clients, args, &value),
    };
    let snapshots = snapshots.map(SnapshotRequester::stop);
    let measured = measured.map(|report| BenchReport {
        snapshots,
        ..report
    });
    drop(idle);
    if !args.keep {
        // Leave the cluster as it was: one range delete of the benchmark's keys.
        if let Err(error) = clients[0].delete_prefix(KEY_PREFIX.as_bytes()) {
            eprintln!("kvctl bench: could not remove the {KEY_PREFIX} keys: {error}");
        }
    }
    measured.map_err(|error| (EXIT_ERROR, error))
}

/// The `--snapshot-every-ms` thread: asks the leader for a snapshot at a fixed pace until
/// stopped, counting the requests accepted and refused.
struct SnapshotRequester {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl SnapshotRequester {
    fn start(client: Client, leader: String, every: Duration) -> SnapshotRequester {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::spawn(move || {
            let (mut accepted, mut refused) = (0, 0);
            let mut next = Instant::now() + every;
            // Disconnected (the sender dropped) ends it; a timeout is the next request.
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_deadline(next)
            {
                match client.take_snapshot(&leader) {
                    Ok(_) => accepted += 1,
                    Err(error) => {
                        if refused == 0 {
                            eprintln!("kvctl bench: a snapshot request was refused: {error}");
                        }
                        refused += 1;
                    }
                }
                next = (next + every).max(Instant::now());
            }
            (accepted, refused)
        });
        SnapshotRequester { stop, thread }
    }

    fn stop(self) -> (u64, u64) {
        drop(self.stop);
        self.thread.join().unwrap_or((0, 0))
    }
}

/// Opens `count` connections to the leader, each answering one status request, for the
/// measurement to run beside them.
fn open_idle_connections(
    client: &Client,
    count: usize,
    tls: Option<&crate::tls::ClientTls>,
) -> Result<Vec<BenchStream>, String> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let leader = find_leader(client).ok_or("no node says it is the leader")?;
    let began = Instant::now();
    let mut idle = Vec::with_capacity(count);
    let mut out = Vec::new();
    for number in 0..count {
        let opened = (|| -> Result<BenchStream, String> {
            let mut stream = BenchStream::open(&leader, tls, Duration::from_secs(10))?;
            out.clear();
            let request = RequestFrame {
                request_id: 1,
                timeout_ms: 0,
                body: RequestBody::Status,
            };
            write_frame(&request, &mut out).map_err(|error| error.to_string())?;
            stream.write_all(&out).map_err(|error| error.to_string())?;
            let answer: ResponseFrame = FrameReader::new()
                .read_frame(&mut stream)
                .map_err(|error| error.to_string())?;
            answer
                .result
                .map_err(|error| format!("status refused: {error}"))?;
            Ok(stream)
        })();
        match opened {
            Ok(stream) => idle.push(stream),
            Err(error) => {
                return Err(format!(
                    "idle connection {} of {count} to {leader}: {error} (is `ulimit -n` high \
                     enough here and on the node?)",
                    number + 1
                ))
            }
        }
    }
    eprintln!(
        "{count} idle connections open to {leader} in {:.2}s",
        began.elapsed().as_secs_f64()
    );
    Ok(idle)
}

/// The client address of the node that says it leads, asking every endpoint.
fn find_leader(client: &Client) -> Option<String> {
    client
        .cluster_status()
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .find(|status| status.role == crate::raft::RoleKind::Leader)
        .map(|status| status.client_address)
}

/// Where the benchmark writes: every key is under this prefix, removed when it ends.
pub const KEY_PREFIX: &str = "__bench/";

fn key_name(key: u64) -> Vec<u8> {
    format!("{KEY_PREFIX}{key:012}").into_bytes()
}

/// Counters shared by the benchmark's workers and its progress line.
pub(super) struct Tally<'a> {
    args: &'a BenchArgs,
    done: AtomicBool,
    operations: AtomicU64,
    errors: AtomicU64,
    issued: AtomicU64,
    first_error: parking_lot::Mutex<Option<String>>,
    /// When the measurement started: trace samples are timed from here.
    start: Instant,
    /// The same moment on the wall clock (milliseconds since the Unix epoch), for the trace.
    start_unix_ms: u64,
    /// Completed requests for `--trace`, added by each worker when it finishes.
    trace: parking_lot::Mutex<Vec<TraceSample>>,
}

impl Tally<'_> {
    /// Whether a worker should stop instead of issuing another request (which this counts).
    pub(super) fn should_stop(&self) -> bool {
        if self.done.load(Ordering::Relaxed) {
            return true;
        }
        match self.args.requests {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) >= limit,
            None => false,
        }
    }

    /// Whether the run records a latency trace (workers then call [`Tally::add_trace`]).
    pub(super) fn tracing(&self) -> bool {
        self.args.trace.is_some()
    }

    /// A trace sample for a request of `latency_us` that completed just now.
    pub(super) fn trace_sample(&self, latency_us: u32) -> TraceSample {
        TraceSample {
            completed_us: self.start.elapsed().as_micros() as u64,
            latency_us,
        }
    }

    /// Hands over one worker's trace samples.
    pub(super) fn add_trace(&self, samples: Vec<TraceSample>) {
        self.trace.lock().extend(samples);
    }

    /// Counts one finished request.
    pub(super) fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.operations.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().get_or_insert(error);
            }
        }
    }
}

/// Draws the next request: a key and whether it is a read.
pub(super) fn next_request(args: &BenchArgs, random: &mut impl Rng) -> (Vec<u8>, bool) {
    let key = key_name(random.random_range(0..args.keys));
    let read = match args.workload {
        Workload::Put => false,
        Workload::Get => true,
        Workload::Mixed => random.random_range(0..100) < args.read_percent,
        Workload::Txn | Workload::KeepAlive | Workload::Watch => false,
    };
    (key, read)
}

/// Microseconds since `began`, saturated to fit a `u32`.
pub(super) fn micros_since(began: Instant) -> u32 {
    began.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// Runs `workers` copies of `work` (each returns the latencies it measured) with a progress
/// line every second, until the duration passes or the request count is reached.
pub(super) fn drive(
    args: &BenchArgs,
    workers: usize,
    work: impl Fn(usize, &Tally) -> Vec<u32> + Sync,
) -> Result<BenchReport, String> {
    let tally = Tally {
        args,
        done: AtomicBool::new(false),
        operations: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        first_error: parking_lot::Mutex::new(None),
        start: Instant::now(),
        start_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        trace: parking_lot::Mutex::new(Vec::new()),
    };
    let start = tally.start;
    let deadline = start + Duration::from_secs(args.duration_secs);
    let latencies: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let (work, tally) = (&work, &tally);
                scope.spawn(move || work(worker, tally))
            })
            .collect();
        let mut last = 0;
        let mut second = 0;
        while !handles.iter().all(|handle| handle.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            let elapsed = start.elapsed();
            if elapsed.as_secs() > second {
                second = elapsed.as_secs();
                let now = tally.operations.load(Ordering::Relaxed);
                eprintln!(
                    "[{second:>4}s] {:>8} ops/s  total {now}  errors {}",
                    now - last,
                    tally.errors.load(Ordering::Relaxed)
                );
                last = now;
            }
            if args.requests.is_none() && Instant::now() >= deadline {
                tally.done.store(true, Ordering::Relaxed);
            }
        }
        tally.done.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed();
    let mut all: Vec<u32> = latencies.into_iter().flatten().collect();
    let first_error = tally.first_error.lock().clone();
    if all.is_empty() {
        return Err(first_error.unwrap_or_else(|| "no request completed".into()));
    }
    all.sort_unstable();
    if let Some(error) = first_error {
        eprintln!("first error: {error}");
    }
    Ok(BenchReport {
        operations: tally.operations.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        elapsed,
        percentiles_us: percentiles(&all),
        trace: match args.trace {
            Some(_) => trace::bucket(
                &tally.trace.lock(),
                args.trace_interval_ms,
                tally.start_unix_ms,
            ),
            None => Vec::new(),
        },
        watch: None,
        snapshots: None,
    })
}

/// One thread per client, each calling the blocking [`Client`] (with its retries).
fn measure_with_clients(
    clients: &[Client],
    args: &BenchArgs,
    value: &[u8],
) -> Result<BenchReport, String> {
    drive_calls(clients, args, |client, random| {
        let (key, read) = next_request(args, random);
        if read {
            client.get(key).map(|_| ())
        } else {
            client.put(key, value.to_vec()).map(|_| ())
        }
    })
}

/// Runs `--clients` workers, each calling `call` through its share of `clients` until the
/// run ends, and times every call that succeeds.
pub(super) fn drive_calls(
    clients: &[Client],
    args: &BenchArgs,
    call: impl Fn(&Client, &mut rand::rngs::ThreadRng) -> Result<(), crate::client::ClientError> + Sync,
) -> Result<BenchReport, String> {
    drive(args, args.clients, |worker, tally| {
        let client = &clients[worker % clients.len()];
        let mut random = rand::rng();
        let mut latencies = Vec::with_capacity(64 * 1024);
        while !tally.should_stop() {
            let began = Instant::now();
            let result = call(client, &mut random);
            let micros = micros_since(began);
            if result.is_ok() {
                latencies.push(micros);
            }
            tally.record(result.map_err(|error| error.to_string()));
        }
        latencies
    })
}

/// p50, p90, p99, p99.9 and max of `sorted` latencies (ascending, microseconds); zeros for
/// none.
pub(super) fn percentiles(sorted: &[u32]) -> [u64; 5] {
    let at = |fraction| u64::from(trace::nearest_rank(sorted, fraction));
    [at(0.50), at(0.90), at(0.99), at(0.999), at(1.0)]
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
                "snapshots_requested": report.snapshots.map(|(accepted, refused)| json!({ "accepted": accepted, "refused": refused })),
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
        if let Some((accepted, refused)) = report.snapshots {
            println!(
                "  snapshots requested: {accepted} (every {} ms), {refused} refused",
                args.snapshot_every_ms.unwrap_or_default()
            );
        }
    }
}

/// Names the trace file and the intervals with the slowest requests (on stderr, next to the
/// progress lines), so that a look at the node logs at those moments can tell what they were.
fn print_trace_summary(path: &std::path::Path, intervals: &[TraceInterval]) {
    eprintln!(
        "trace: {} intervals written to {}",
        intervals.len(),
        path.display()
    );
    let mut worst: Vec<&TraceInterval> = intervals.iter().collect();
    worst.sort_by_key(|interval| std::cmp::Reverse(interval.max_us));
    for interval in worst.iter().take(5) {
        eprintln!(
            "  slowest at {:>7} ms: max {:.3} ms, p99 {:.3} ms, p50 {:.3} ms, {} requests",
            interval.start_ms,
            f64::from(interval.max_us) / 1000.0,
            f64::from(interval.p99_us) / 1000.0,
            f64::from(interval.p50_us) / 1000.0,
            interval.count
        );
    }
}

/// A benchmark connection on the raw protocol, over TLS when the nodes speak it.
pub(super) enum BenchStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl BenchStream {
    /// Connects to `address`; reads wait at most `read_timeout`.
    pub(super) fn open(
        address: &str,
        tls: Option<&crate::tls::ClientTls>,
        read_timeout: Duration,
    ) -> Result<BenchStream, String> {
        let stream = TcpStream::connect(address).map_err(|error| format!("{address}: {error}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(read_timeout)))
            .map_err(|error| error.to_string())?;
        Ok(match tls {
            None => BenchStream::Plain(stream),
            Some(tls) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                let session = tls.connect(host.trim_matches(|c| c == '[' || c == ']'))?;
                BenchStream::Tls(Box::new(rustls::StreamOwned::new(session, stream)))
            }
        })
    }
}

impl Read for BenchStream {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BenchStream::Plain(stream) => stream.read(buffer),
            BenchStream::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for BenchStream {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            BenchStream::Plain(stream) => stream.write(bytes),
            BenchStream::Tls(stream) => stream.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            BenchStream::Plain(stream) => stream.flush(),
            BenchStream::Tls(stream) => stream.flush(),
        }
    }
}
