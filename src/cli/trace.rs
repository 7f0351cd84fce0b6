//! `kvctl bench --trace FILE`: latency over time. Every completed request is kept as (when it
//! completed, how long it took); afterwards they are bucketed into fixed intervals, and each
//! interval's count and p50 / p99 / max go to a CSV file, so that one can see *when* the tail
//! happens (a snapshot, a segment roll, an election) rather than only how long it is.

use std::io::Write;
use std::path::Path;

/// One completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceSample {
    /// Microseconds from the start of the measurement to the response.
    pub completed_us: u64,
    /// The request's latency in microseconds.
    pub latency_us: u32,
}

/// The requests completed in one interval `[start_ms, start_ms + interval_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceInterval {
    /// Milliseconds from the start of the measurement to the start of the interval.
    pub start_ms: u64,
    /// The start of the interval on the wall clock, in milliseconds since the Unix epoch: to
    /// line the trace up with the nodes' log lines (a snapshot taken, an election).
    pub unix_ms: u64,
    /// Requests completed in the interval (0 for a stall: the interval is still listed).
    pub count: u64,
    /// Latency percentiles of those requests in microseconds (0 when `count` is 0).
    pub p50_us: u32,
    /// The 99th percentile.
    pub p99_us: u32,
    /// The slowest.
    pub max_us: u32,
}

/// The CSV header line written by [`write_csv`].
pub const CSV_HEADER: &str = "start_ms,count,p50_ms,p99_ms,max_ms,unix_ms";

/// Buckets `samples` (in any order) into consecutive intervals of `interval_ms` from 0 through
/// the last completion, empty intervals included. `origin_unix_ms` is when the measurement
/// started on the wall clock (milliseconds since the Unix epoch).
pub fn bucket(
    samples: &[TraceSample],
    interval_ms: u64,
    origin_unix_ms: u64,
) -> Vec<TraceInterval> {
    assert!(interval_ms > 0, "a trace interval of 0 ms");
    let interval_us = interval_ms * 1000;
    let Some(last) = samples.iter().map(|sample| sample.completed_us).max() else {
        return Vec::new();
    };
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); (last / interval_us) as usize + 1];
    for sample in samples {
        buckets[(sample.completed_us / interval_us) as usize].push(sample.latency_us);
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(slot, mut latencies)| {
            latencies.sort_unstable();
            let percentile = |fraction| nearest_rank(&latencies, fraction);
            TraceInterval {
                start_ms: slot as u64 * interval_ms,
                unix_ms: origin_unix_ms + slot as u64 * interval_ms,
                count: latencies.len() as u64,
                p50_us: percentile(0.50),
                p99_us: percentile(0.99),
                max_us: latencies.last().copied().unwrap_or(0),
            }
        })
        .collect()
}

/// The latency at `fraction` (0–1) of `sorted` (ascending) by the nearest-rank rule, 0 for
/// none: the rule of both the summary's percentiles and the trace's.
pub(super) fn nearest_rank(sorted: &[u32], fraction: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as f64 * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Writes `intervals` as CSV (header, then one row per interval, latencies in milliseconds).
pub fn write_csv(path: &Path, intervals: &[TraceInterval]) -> std::io::Result<()> {
    let millis = |micros: u32| f64::from(micros) / 1000.0;
    let mut out = String::with_capacity(32 * (intervals.len() + 1));
    out.push_str(CSV_HEADER);
    out.push('\n');
    for interval in intervals {
        out.push_str(&format!(
            "{},{},{:.3},{:.3},{:.3},{}\n",
            interval.start_ms,
            interval.count,
            millis(interval.p50_us),
            millis(interval.p99_us),
            millis(interval.max_us),
            interval.unix_ms
        ));
    }
    std::fs::File::create(path)?.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(completed_ms: u64, latency_us: u32) -> TraceSample {
        TraceSample {
            completed_us: completed_ms * 1000,
            latency_us,
        }
    }

    #[test]
    fn samples_fall_into_their_interval_and_gaps_are_listed() {
        let samples = [
            sample(250, 7),
            sample(0, 1),
            sample(99, 3),
            sample(100, 5),
            sample(250, 9),
        ];
        let intervals = bucket(&samples, 100, 0);
        let counts: Vec<u64> = intervals.iter().map(|interval| interval.count).collect();
        assert_eq!(counts, [2, 1, 2]);
        let starts: Vec<u64> = intervals.iter().map(|interval| interval.start_ms).collect();
        assert_eq!(starts, [0, 100, 200]);
        assert_eq!((intervals[0].p50_us, intervals[0].max_us), (1, 3));
        assert_eq!((intervals[2].p50_us, intervals[2].max_us), (7, 9));

        let stalled = bucket(&[sample(10, 1), sample(420, 2)], 100, 0);
        assert_eq!(stalled.len(), 5);
        assert_eq!(stalled[2].count, 0);
        assert_eq!((stalled[2].p99_us, stalled[2].max_us), (0, 0));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<TraceSample> = (1..=200).map(|latency| sample(5, latency)).collect();
        let interval = bucket(&samples, 100, 0)[0];
        assert_eq!(interval.count, 200);
        assert_eq!(interval.p50_us, 100);
        assert_eq!(interval.p99_us, 198);
        assert_eq!(interval.max_us, 200);
        assert!(bucket(&[], 100, 0).is_empty());
    }

    #[test]
    fn the_csv_has_a_header_and_one_row_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.csv");
        let origin = 1_796_500_000_000;
        write_csv(
            &path,
            &bucket(&[sample(0, 1500), sample(150, 250)], 100, origin),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "{CSV_HEADER}\n0,1,1.500,1.500,1.500,1796500000000\n\
                 100,1,0.250,0.250,0.250,1796500000100\n"
            )
        );
    }
}
