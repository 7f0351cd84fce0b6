//! Many client connections on one real `keyval` process: the node serves them on a fixed set
//! of threads (no thread per connection), an idle connection costs little memory, writes on
//! a share of them all succeed while the rest sit idle, and closing them gives the memory back.
//!
//! The full-size run (10,000 connections, 1,000 active) is `cargo bench --bench connections`;
//! this is the same shape at a size that fits CI next to other tests.

mod process_support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use keyval::kv::{Command, Response};
use keyval::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
};
use process_support::{wait_for, ProcessCluster};

const CONNECTIONS: usize = 2_000;
const ACTIVE: usize = 200;
const WRITES_PER_ACTIVE: usize = 5;

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read tasks")
        .count()
}

fn request(stream: &mut TcpStream, id: u64, body: RequestBody) -> ResponseFrame {
    let mut out = Vec::new();
    write_frame(
        &RequestFrame {
            request_id: id,
            timeout_ms: 30_000,
            body,
        },
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).expect("send");
    let answer: ResponseFrame = FrameReader::new().read_frame(stream).expect("answer");
    assert_eq!(answer.request_id, id);
    answer
}

#[test]
fn thousands_of_connections_are_served_on_fixed_threads_and_their_memory_returns() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: reads /proc");
        return;
    }
    let cluster = ProcessCluster::start(1);
    let client = cluster.client();
    cluster.wait_leader(&client);
    client
        .put(b"warm".to_vec(), b"up".to_vec())
        .expect("first write");
    let pid = cluster.nodes[0].child.as_ref().unwrap().id();
    let threads_before = threads(pid);
    let rss_before = proc_status_kib(pid, "VmRSS:");

    let address = &cluster.client_addresses[0];
    let mut connections: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|number| {
            let mut stream = TcpStream::connect(address)
                .unwrap_or_else(|error| panic!("connection {number}: {error}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let answer = request(&mut stream, 1, RequestBody::Status);
            assert!(
                matches!(answer.result, Ok(ResponseBody::Status(_))),
                "{answer:?}"
            );
            stream
        })
        .collect();
    let threads_open = threads(pid);
    let rss_open = proc_status_kib(pid, "VmRSS:");

    // Writes on a share of the connections, all in flight at once, while the rest sit idle.
    std::thread::scope(|scope| {
        for (worker, chunk) in connections[..ACTIVE].chunks_mut(ACTIVE / 4).enumerate() {
            scope.spawn(move || {
                for round in 0..WRITES_PER_ACTIVE {
                    let mut out = Vec::new();
                    for (k, stream) in chunk.iter_mut().enumerate() {
                        let key = format!("w{worker}-c{k}-r{round}").into_bytes();
                        let frame = RequestFrame {
                            request_id: 2 + round as u64,
                            timeout_ms: 30_000,
                            body: RequestBody::Write(Command::put(key, b"v".to_vec())),
                        };
                        out.clear();
                        write_frame(&frame, &mut out).unwrap();
                        stream.write_all(&out).expect("send write");
                    }
                    for stream in chunk.iter_mut() {
                        let answer: ResponseFrame =
                            FrameReader::new().read_frame(stream).expect("write answer");
                        assert!(
                            matches!(
                                answer.result,
                                Ok(ResponseBody::Written(Response::Written { .. }))
                            ),
                            "{answer:?}"
                        );
                    }
                }
            });
        }
    });
    let rss_active = proc_status_kib(pid, "VmRSS:");
    assert_eq!(
        client
            .scan(keyval::kv::KeyRange::prefix(b"w"), 1_000)
            .expect("scan")
            .entries
            .len(),
        ACTIVE * WRITES_PER_ACTIVE
    );

    connections.clear();
    // Closed connections are dropped by the node: a new one is served, and memory settles.
    let mut rss_closed = 0;
    assert!(
        wait_for(|| {
            rss_closed = proc_status_kib(pid, "VmRSS:");
            rss_closed <= rss_before + 16 * 1024
        }),
        "memory did not return after the connections closed: {rss_before} KiB before, \
         {rss_open} KiB with {CONNECTIONS} open, {rss_closed} KiB after"
    );
    eprintln!(
        "{CONNECTIONS} connections: threads {threads_before} -> {threads_open}; RSS {rss_before} \
         KiB -> {rss_open} KiB open -> {rss_active} KiB after writes on {ACTIVE} -> {rss_closed} \
         KiB closed"
    );
    assert!(
        threads_open <= threads_before + 2,
        "threads grew with connections: {threads_before} -> {threads_open}"
    );
    let per_connection = rss_open.saturating_sub(rss_before) * 1024 / CONNECTIONS as u64;
    assert!(
        per_connection <= 16 * 1024,
        "an idle connection costs {per_connection} bytes of RSS"
    );
}
