//! The pipelined benchmark driver, like redis-benchmark: a few connections, each driven by
//! one thread that keeps its share of the clients' requests in flight on the raw protocol.
//!
//! Each simulated client has one request in flight at a time and its own exactly-once
//! session (registered before the measurement starts, sequences from 1), so the cluster does
//! the same work as for real clients; the benchmark just does not spend a thread per client.
//! When a response arrives its latency is recorded and that client's next request is queued;
//! all queued requests leave in one write once the buffered responses are handled.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::kv::{Command, ReadRequest, Response};
use crate::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
};

use super::bench::{
    micros_since, next_request, BenchArgs, BenchReport, BenchStream, Tally, Workload,
};
use crate::tls::ClientTls;

/// How long a connection waits for any response before giving up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Session registrations sent at once before their answers are read: below the server's
/// default in-flight limit per connection, so the server never stops reading while the
/// answers wait in our receive buffer.
const REGISTRATIONS_IN_FLIGHT_MAX: usize = 256;

/// One simulated client's session.
struct SimulatedClient {
    client_id: u64,
    next_sequence: u64,
}

/// Runs the benchmark against `leader` over `connections` connections.
pub(super) fn measure(
    leader: &str,
    args: &BenchArgs,
    value: &[u8],
    connections: usize,
    tls: Option<&ClientTls>,
) -> Result<BenchReport, String> {
    let connections = connections.min(args.clients).max(1);
    let consistency = args.consistency.into();
    let client_ids = match args.workload {
        Workload::Get => Vec::new(), // reads only: no sessions
        Workload::Put | Workload::Mixed => register_sessions(leader, args.clients, tls)?,
        Workload::Txn | Workload::KeepAlive | Workload::Watch => {
            return Err("the coordination workloads run with the threads driver".into())
        }
    };
    // Spread the clients over the connections as evenly as possible.
    let shares: Vec<usize> = (0..connections)
        .map(|worker| args.clients / connections + usize::from(worker < args.clients % connections))
        .collect();
    super::bench::drive(args, connections, |worker, tally| {
        let clients = shares[worker];
        let first: usize = shares[..worker].iter().sum();
        let ids = client_ids.get(first..first + clients).unwrap_or(&[]);
        match run_connection(leader, tls, args, value, clients, ids, consistency, tally) {
            Ok(latencies) => latencies,
            Err(error) => {
                tally.record(Err(error));
                Vec::new()
            }
        }
    })
}

/// Registers `count` sessions on `leader` (outside the measurement), a batch of them in
/// flight at a time; returns their client ids.
fn register_sessions(
    leader: &str,
    count: usize,
    tls: Option<&ClientTls>,
) -> Result<Vec<u64>, String> {
    let mut stream = BenchStream::open(leader, tls, RESPONSE_TIMEOUT)?;
    let mut frames = FrameReader::new();
    let mut client_ids = Vec::with_capacity(count);
    let mut out = Vec::new();
    while client_ids.len() < count {
        let batch = (count - client_ids.len()).min(REGISTRATIONS_IN_FLIGHT_MAX);
        for request_id in 0..batch as u64 {
            let frame = RequestFrame {
                request_id,
                timeout_ms: RESPONSE_TIMEOUT.as_millis() as u64,
                body: RequestBody::Write(Command::register_session()),
            };
            write_frame(&frame, &mut out).map_err(|error| error.to_string())?;
        }
        stream.write_all(&out).map_err(|error| error.to_string())?;
        out.clear();
        for _ in 0..batch {
            let frame = frames
                .read_frame::<ResponseFrame>(&mut stream)
                .map_err(|error| error.to_string())?;
            match frame.result {
                Ok(ResponseBody::Written(Response::SessionRegistered { client_id })) => {
                    client_ids.push(client_id);
                }
                Ok(other) => return Err(format!("unexpected answer to a registration: {other:?}")),
                Err(error) => return Err(format!("registering a session: {error}")),
            }
        }
    }
    Ok(client_ids)
}

#[allow(clippy::too_many_arguments)]
fn run_connection(
    leader: &str,
    tls: Option<&ClientTls>,
    args: &BenchArgs,
    value: &[u8],
    clients: usize,
    client_ids: &[u64],
    consistency: crate::protocol::Consistency,
    tally: &Tally,
) -> Result<Vec<u32>, String> {
    let mut stream = BenchStream::open(leader, tls, RESPONSE_TIMEOUT)?;
    let mut random = rand::rng();
    // Clients without a registered session (a read-only workload) never write.
    let mut sessions: Vec<SimulatedClient> = (0..clients)
        .map(|client| SimulatedClient {
            client_id: client_ids.get(client).copied().unwrap_or(0),
            next_sequence: 1,
        })
        .collect();
    // Request id → (client, when sent, whether a read).
    let mut in_flight: HashMap<u64, (usize, Instant, bool)> = HashMap::new();
    let mut next_request_id = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut trace = Vec::new();
    let mut issue = |client: usize,
                     out: &mut Vec<u8>,
                     in_flight: &mut HashMap<u64, (usize, Instant, bool)>,
                     sessions: &mut Vec<SimulatedClient>|
     -> Result<(), String> {
        let (key, read) = next_request(args, &mut random);
        let body = if read {
            RequestBody::Read {
                request: ReadRequest::Get { key },
                consistency,
            }
        } else {
            let session = &mut sessions[client];
            let command = Command::put(key, value.to_vec())
                .with_session(session.client_id, session.next_sequence);
            session.next_sequence += 1;
            RequestBody::Write(command)
        };
        next_request_id += 1;
        let frame = RequestFrame {
            request_id: next_request_id,
            timeout_ms: 5000,
            body,
        };
        write_frame(&frame, out).map_err(|error| error.to_string())?;
        in_flight.insert(next_request_id, (client, Instant::now(), read));
        Ok(())
    };
    for client in 0..clients {
        if tally.should_stop() {
            break;
        }
        issue(client, &mut out, &mut in_flight, &mut sessions)?;
    }
    let mut frames = FrameReader::new();
    while !in_flight.is_empty() {
        if !out.is_empty() {
            stream.write_all(&out).map_err(|error| error.to_string())?;
            out.clear();
        }
        // Wait for one response, then take every response already buffered.
        let mut responses = vec![frames
            .read_frame::<ResponseFrame>(&mut stream)
            .map_err(|error| error.to_string())?];
        while let Some(frame) = frames
            .next_buffered::<ResponseFrame>()
            .map_err(|error| error.to_string())?
        {
            responses.push(frame);
        }
        for response in responses {
            let Some((client, sent, read)) = in_flight.remove(&response.request_id) else {
                continue;
            };
            let micros = micros_since(sent);
            let outcome = match response.result {
                Ok(ResponseBody::Written(Response::Written { .. })) if !read => Ok(()),
                Ok(ResponseBody::Read(_)) if read => Ok(()),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(error) => Err(error.to_string()),
            };
            if outcome.is_ok() {
                latencies.push(micros);
                if tally.tracing() {
                    trace.push(tally.trace_sample(micros));
                }
            }
            tally.record(outcome);
            if !tally.should_stop() {
                issue(client, &mut out, &mut in_flight, &mut sessions)?;
            }
        }
    }
    tally.add_trace(trace);
    Ok(latencies)
}
