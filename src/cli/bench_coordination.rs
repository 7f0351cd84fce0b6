//! `kvctl bench txn|keep-alive|watch`: the coordination workloads, each driven by
//! `--clients` threads calling shared blocking [`Client`]s.
//!
//! - `txn`: compare-and-put transactions (`if version(k) > 0 then put k else get k`) on the
//!   preloaded keys.
//! - `keep-alive`: `--keys` leases are granted first, then renewed at random.
//! - `watch`: `--watchers` one-key watches on one node (`--watch-endpoint`, default the first
//!   endpoint), spread over `--watch-connections` raw connections, while the clients put those
//!   keys at full speed; each value carries its send time, so every delivered event gives a
//!   delivery latency (put sent → event received). Every acknowledged put must be delivered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use crate::client::Client;
use crate::kv::{Compare, CompareOp, KeyRange, LeaseId, Txn, TxnOp};
use crate::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame, WatchRequest,
};

use super::bench::{
    drive_calls, percentiles, BenchArgs, BenchReport, BenchStream, Workload, KEY_PREFIX,
};

/// What the watch workload measured besides the puts.
#[derive(Clone, Debug)]
pub struct WatchReport {
    /// Events received by all watchers.
    pub delivered: u64,
    /// Puts acknowledged (each must be delivered to its key's watcher).
    pub acknowledged: u64,
    /// Delivery latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub percentiles_us: [u64; 5],
}

/// Runs a coordination workload; returns the clients' report (and the watchers' for
/// `watch`).
pub fn measure(
    clients: &[Client],
    args: &BenchArgs,
    value: &[u8],
    endpoints: &[String],
    tls: Option<&crate::tls::ClientTls>,
) -> Result<(BenchReport, Option<WatchReport>), String> {
    match args.workload {
        Workload::Txn => txn(clients, args, value).map(|report| (report, None)),
        Workload::KeepAlive => keep_alive(clients, args),
        Workload::Watch => watch(clients, args, value, endpoints, tls),
        _ => Err("not a coordination workload".into()),
    }
}

fn key(index: u64) -> Vec<u8> {
    format!("{KEY_PREFIX}{index:012}").into_bytes()
}

fn txn(clients: &[Client], args: &BenchArgs, value: &[u8]) -> Result<BenchReport, String> {
    drive_calls(clients, args, |client, random| {
        let key = key(random.random_range(0..args.keys));
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
            .then([TxnOp::put(key.clone(), value.to_vec())])
            .otherwise([TxnOp::get(key)]);
        client.txn(txn).map(|_| ())
    })
}

fn keep_alive(
    clients: &[Client],
    args: &BenchArgs,
) -> Result<(BenchReport, Option<WatchReport>), String> {
    eprintln!("granting {} leases...", args.keys);
    let leases: Vec<LeaseId> = std::thread::scope(|scope| {
        let per_worker = args.keys.div_ceil(args.clients.min(64) as u64);
        let handles: Vec<_> = (0..args.clients.min(64))
            .map(|worker| {
                let client = clients[worker % clients.len()].clone();
                scope.spawn(move || {
                    (0..per_worker)
                        .filter_map(|_| client.lease_grant(600).ok().map(|grant| grant.lease))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .take(args.keys as usize)
            .collect()
    });
    if leases.is_empty() {
        return Err("no lease could be granted".into());
    }
    let report = drive_calls(clients, args, |client, random| {
        let lease = leases[random.random_range(0..leases.len())];
        client.lease_keep_alive(lease).map(|_| ())
    });
    if !args.keep {
        eprintln!("revoking {} leases...", leases.len());
        std::thread::scope(|scope| {
            for (worker, chunk) in leases.chunks(leases.len().div_ceil(16)).enumerate() {
                let client = clients[worker % clients.len()].clone();
                scope.spawn(move || {
                    for lease in chunk {
                        let _ = client.lease_revoke(*lease);
                    }
                });
            }
        });
    }
    report.map(|report| (report, None))
}

fn watch(
    clients: &[Client],
    args: &BenchArgs,
    value: &[u8],
    endpoints: &[String],
    tls: Option<&crate::tls::ClientTls>,
) -> Result<(BenchReport, Option<WatchReport>), String> {
    let watchers = args.watchers.max(1) as u64;
    let connections = args.watch_connections.clamp(1, watchers as usize);
    let endpoint = args
        .watch_endpoint
        .clone()
        .or_else(|| endpoints.first().cloned())
        .ok_or("no endpoint")?;
    let epoch = Instant::now();
    let stop = AtomicBool::new(false);
    let delivered = AtomicU64::new(0);
    let watch_key = |index: u64| format!("{KEY_PREFIX}w{index:08}").into_bytes();
    // Open every watch before the first put.
    let mut streams = Vec::new();
    for connection in 0..connections {
        let mut stream = BenchStream::open(&endpoint, tls, Duration::from_millis(200))?;
        let mut bytes = Vec::new();
        let mine: Vec<u64> = (0..watchers)
            .filter(|index| *index as usize % connections == connection)
            .collect();
        for &index in &mine {
            let frame = RequestFrame {
                request_id: index + 1,
                timeout_ms: 10_000,
                body: RequestBody::Watch(WatchRequest {
                    range: KeyRange::single(&watch_key(index)),
                    ..WatchRequest::default()
                }),
            };
            write_frame(&frame, &mut bytes).map_err(|error| error.to_string())?;
        }
        std::io::Write::write_all(&mut stream, &bytes).map_err(|error| error.to_string())?;
        let mut reader = FrameReader::new();
        let mut created = 0;
        let opened_by = Instant::now() + Duration::from_secs(30);
        while created < mine.len() {
            if Instant::now() > opened_by {
                return Err(format!("only {created} of {} watches opened", mine.len()));
            }
            match reader.read_frame::<ResponseFrame>(&mut stream) {
                Ok(ResponseFrame {
                    result: Ok(ResponseBody::WatchCreated(_)),
                    ..
                }) => created += 1,
                Ok(other) => return Err(format!("opening a watch: {other:?}")),
                Err(crate::protocol::FrameError::Io(error))
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => return Err(format!("opening a watch: {error}")),
            }
        }
        streams.push((stream, reader));
    }
    eprintln!("{watchers} watches open on {endpoint} over {connections} connections");
    let acknowledged = AtomicU64::new(0);
    let mut latencies: Vec<u32> = Vec::new();
    let report = std::thread::scope(|scope| {
        let readers: Vec<_> = streams
            .into_iter()
            .map(|(mut stream, mut reader)| {
                let (stop, delivered) = (&stop, &delivered);
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(64 * 1024);
                    while !stop.load(Ordering::Relaxed) {
                        match reader.read_frame::<ResponseFrame>(&mut stream) {
                            Ok(ResponseFrame {
                                result: Ok(ResponseBody::WatchEvents(body)),
                                ..
                            }) => {
                                let now = epoch.elapsed().as_micros() as u64;
                                for event in &body.events {
                                    let sent = event
                                        .value
                                        .get(..8)
                                        .and_then(|bytes| bytes.try_into().ok())
                                        .map_or(now, u64::from_le_bytes);
                                    latencies
                                        .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                                }
                                delivered.fetch_add(body.events.len() as u64, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(crate::protocol::FrameError::Io(error))
                                if matches!(
                                    error.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                    latencies
                })
            })
            .collect();
        let report = drive_calls(clients, args, |client, random| {
            let key = watch_key(random.random_range(0..watchers));
            let mut payload = value.to_vec();
            payload.resize(value.len().max(8), b'x');
            let sent = epoch.elapsed().as_micros() as u64;
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            client.put(key, payload)?;
            acknowledged.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        // Every acknowledged put must reach its watcher.
        let wait_until = Instant::now() + Duration::from_secs(30);
        while delivered.load(Ordering::Relaxed) < acknowledged.load(Ordering::Relaxed)
            && Instant::now() < wait_until
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            latencies.extend(reader.join().unwrap_or_default());
        }
        report
    })?;
    if !args.keep {
        let _ = clients[0].delete_prefix(format!("{KEY_PREFIX}w").as_bytes());
    }
    latencies.sort_unstable();
    let watch = WatchReport {
        delivered: delivered.load(Ordering::Relaxed),
        acknowledged: acknowledged.load(Ordering::Relaxed),
        percentiles_us: percentiles(&latencies),
    };
    Ok((report, Some(watch)))
}

/// Prints the watchers' part of the report.
pub fn print_watch_report(report: &WatchReport, json: bool) -> bool {
    let [p50, p90, p99, p999, max] = report.percentiles_us;
    let millis = |micros: u64| micros as f64 / 1000.0;
    let complete = report.delivered >= report.acknowledged;
    if json {
        println!(
            "{}",
            json!({
                "watch": {
                    "delivered": report.delivered,
                    "acknowledged": report.acknowledged,
                    "complete": complete,
                    "delivery_latency_ms": { "p50": millis(p50), "p90": millis(p90), "p99": millis(p99), "p99.9": millis(p999), "max": millis(max) },
                }
            })
        );
    } else {
        println!(
            "  watch: {} events delivered for {} acknowledged puts{}",
            report.delivered,
            report.acknowledged,
            if complete { "" } else { " — EVENTS MISSING" }
        );
        println!(
            "  delivery latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            millis(p50),
            millis(p90),
            millis(p99),
            millis(p999),
            millis(max)
        );
    }
    complete
}
