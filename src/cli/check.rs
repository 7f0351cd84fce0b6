//! `kvctl check perf`: a short write load against the cluster with a pass/fail verdict
//! against stated thresholds, like `etcdctl check perf` — to tell whether a cluster (its
//! disks above all: every write waits for an fsync) can carry a given load.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::ClientOptions;

use super::bench::{self, BenchArgs};
use super::kvctl::{EXIT_ERROR, EXIT_OK, EXIT_USAGE};

/// `kvctl check ...`.
#[derive(Clone, Debug, Subcommand)]
pub enum CheckCommand {
    /// Run a short write load and say whether the cluster meets the thresholds for it (exit 1
    /// if not). The keys are written under `__bench/` and deleted afterwards.
    Perf(PerfArgs),
}

/// `kvctl check perf` flags.
#[derive(Clone, Debug, Args)]
pub struct PerfArgs {
    /// The load: s (50 clients), m (200), l (500), xl (1000), each one put in flight.
    #[arg(long, value_enum, default_value = "s")]
    pub load: Load,
    /// How long the load runs.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
}

/// A named load and what it must achieve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Load {
    /// 50 clients; at least 2,000 puts/s.
    S,
    /// 200 clients; at least 5,000 puts/s.
    M,
    /// 500 clients; at least 10,000 puts/s.
    L,
    /// 1,000 clients; at least 20,000 puts/s.
    Xl,
}

impl Load {
    /// (clients, the least puts per second).
    fn shape(self) -> (usize, f64) {
        match self {
            Load::S => (50, 2_000.0),
            Load::M => (200, 5_000.0),
            Load::L => (500, 10_000.0),
            Load::Xl => (1_000, 20_000.0),
        }
    }
}

/// The 99th percentile may take at most this long, for any load.
const P99_MS_MAX: f64 = 100.0;
/// No request may take longer.
const SLOWEST_MS_MAX: f64 = 1_000.0;

/// Runs `kvctl check ...`; returns the exit code.
pub fn run(
    endpoints: &[String],
    options: &ClientOptions,
    command: &CheckCommand,
    json: bool,
) -> i32 {
    let CheckCommand::Perf(perf) = command;
    if perf.duration_secs == 0 {
        eprintln!("kvctl check perf: --duration-secs must be at least 1");
        return EXIT_USAGE;
    }
    let (clients, throughput_min) = perf.load.shape();
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        bench: BenchArgs,
    }
    let flags = Flags::try_parse_from([
        "check".to_string(),
        "put".to_string(),
        format!("--clients={clients}"),
        format!("--connections={}", clients.div_ceil(50)),
        format!("--duration-secs={}", perf.duration_secs),
        "--keys=100000".to_string(),
        "--value-size=256".to_string(),
    ]);
    let args = match flags {
        Ok(flags) => flags.bench,
        Err(error) => {
            eprintln!("kvctl check perf: {error}");
            return EXIT_ERROR;
        }
    };
    if !json {
        eprintln!(
            "check perf: load {:?}, {clients} clients putting 256-byte values for {} s...",
            perf.load, perf.duration_secs
        );
    }
    let report = match bench::measure(endpoints, options, &args) {
        Ok(report) => report,
        Err((code, error)) => {
            eprintln!("kvctl check perf: {error}");
            return code;
        }
    };
    let [_, _, p99_us, _, max_us] = report.percentiles_us;
    let (p99, slowest) = (p99_us as f64 / 1000.0, max_us as f64 / 1000.0);
    let throughput = report.throughput();
    let checks = [
        (
            "throughput",
            format!("{throughput:.0} puts/s"),
            format!(">= {throughput_min:.0}"),
            throughput >= throughput_min,
        ),
        (
            "p99 latency",
            format!("{p99:.1} ms"),
            format!("<= {P99_MS_MAX:.0} ms"),
            p99 <= P99_MS_MAX,
        ),
        (
            "slowest request",
            format!("{slowest:.1} ms"),
            format!("<= {SLOWEST_MS_MAX:.0} ms"),
            slowest <= SLOWEST_MS_MAX,
        ),
        (
            "errors",
            report.errors.to_string(),
            "0".to_string(),
            report.errors == 0,
        ),
    ];
    let passed = checks.iter().all(|(_, _, _, ok)| *ok);
    if json {
        let rows: Vec<_> = checks
            .iter()
            .map(|(name, got, needs, ok)| json!({ "check": name, "got": got, "needs": needs, "pass": ok }))
            .collect();
        println!(
            "{}",
            json!({ "load": format!("{:?}", perf.load), "pass": passed, "checks": rows })
        );
    } else {
        for (name, got, needs, ok) in &checks {
            println!(
                "{name:<16} {got:>16}   needs {needs:<12} {}",
                if *ok { "PASS" } else { "FAIL" }
            );
        }
        println!("{}", if passed { "PASS" } else { "FAIL" });
    }
    if passed {
        EXIT_OK
    } else {
        EXIT_ERROR
    }
}
