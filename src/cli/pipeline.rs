//! The pipelined benchmark driver, like redis-benchmark: a few connections, each driven by
//! one thread that keeps its share of the clients' requests in flight on the raw protocol.
//!
//! Each simulated client has one request in flight at a time and its own exactly-once
//! session (a random client id, sequences from 1), so the cluster does the same work as for
//! real clients; the benchmark just does not spend a thread per client. When a response
//! arrives its latency is recorded and that client's next request is queued; all queued
//! requests leave in one write once the buffered responses are handled.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::kv::{Command, ReadRequest, Response};
use crate::server::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
};

use super::bench::{micros_since, next_request, BenchArgs, BenchReport, Tally};

/// How long a connection waits for any response before giving up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

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
) -> Result<BenchReport, String> {
    let connections = connections.min(args.clients).max(1);
    let consistency = args.consistency.into();
    super::bench::drive(args, connections, |worker, tally| {
        // Spread the clients over the connections as evenly as possible.
        let clients = args.clients / connections + usize::from(worker < args.clients % connections);
        match run_connection(leader, args, value, clients, consistency, tally) {
            Ok(latencies) => latencies,
            Err(error) => {
                tally.record(Err(error));
                Vec::new()
            }
        }
    })
}

fn run_connection(
    leader: &str,
    args: &BenchArgs,
    value: &[u8],
    clients: usize,
    consistency: crate::server::protocol::Consistency,
    tally: &Tally,
) -> Result<Vec<u32>, String> {
    let mut stream = TcpStream::connect(leader).map_err(|error| format!("{leader}: {error}"))?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(RESPONSE_TIMEOUT)))
        .map_err(|error| error.to_string())?;
    let mut random = rand::rng();
    let mut sessions: Vec<SimulatedClient> = (0..clients)
        .map(|_| SimulatedClient {
            client_id: random.random_range(1..=u64::MAX),
            next_sequence: 1,
        })
        .collect();
    // Request id → (client, when sent, whether a read).
    let mut in_flight: HashMap<u64, (usize, Instant, bool)> = HashMap::new();
    let mut next_request_id = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut latencies = Vec::with_capacity(64 * 1024);
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
            }
            tally.record(outcome);
            if !tally.should_stop() {
                issue(client, &mut out, &mut in_flight, &mut sessions)?;
            }
        }
    }
    Ok(latencies)
}
