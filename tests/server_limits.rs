//! Client connections that never finish must not lock clients out (PITFALLS #24): idle
//! connections are closed after the idle timeout, and a frame trickled byte by byte is closed
//! at its frame deadline. Each test starts a
//! server with short limits in front of a one-node cluster and waits on the server's counters
//! (`Server::stats`) with generous deadlines; nothing sleeps and then asserts.

mod server_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyval::kv::Command;
use keyval::server::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
};
use keyval::server::{Server, ServerOptions};
use keyval::types::MemberAddress;
use keyval::NodeId;

use server_support::{wait_for, TestCluster, WAIT};

/// A second server in front of the cluster's only node, with `configure`d options.
fn limited_server(cluster: &TestCluster, configure: impl FnOnce(&mut ServerOptions)) -> Server {
    cluster.wait_leader();
    let node = Arc::clone(&cluster.nodes[0].as_ref().unwrap().node);
    let mut options = ServerOptions::new("127.0.0.1:0".parse().unwrap());
    configure(&mut options);
    Server::start(node, options).unwrap()
}

fn frame_bytes(request_id: u64, timeout_ms: u64, body: RequestBody) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_frame(
        &RequestFrame {
            request_id,
            timeout_ms,
            body,
        },
        &mut bytes,
    )
    .unwrap();
    bytes
}

/// Sends `body` on `stream` and reads one response; `None` if the connection is closed or
/// nothing comes back within `WAIT`.
fn call(stream: &mut TcpStream, request_id: u64, body: RequestBody) -> Option<ResponseFrame> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(&frame_bytes(request_id, 10_000, body))
        .ok()?;
    FrameReader::new().read_frame(stream).ok()
}

/// Whether a new connection to `address` is served a status request.
fn served(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    matches!(
        call(&mut stream, 1, RequestBody::Status),
        Some(ResponseFrame {
            result: Ok(ResponseBody::Status(_)),
            ..
        })
    )
}

/// Whether the server has closed `stream`: end of stream or a reset within `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => return false,
            Err(error) => {
                return matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionAborted
                )
            }
        }
    }
}

#[test]
fn idle_connections_at_the_cap_are_closed_so_a_new_client_is_served() {
    const CAP: usize = 8;
    let cluster = TestCluster::start(1, false);
    let server = limited_server(&cluster, |options| {
        options.connections_max = CAP;
        options.idle_timeout = Duration::from_secs(1);
    });
    let address = server.local_addr().to_string();
    // Every slot taken by a client that asks once, then says nothing more.
    let mut idle: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            assert!(call(&mut stream, 1, RequestBody::Status).is_some());
            stream
        })
        .collect();
    assert!(wait_for(|| server.stats().connections_open == CAP));
    // Refused while the slots are held; served once the idle connections are closed.
    assert!(
        wait_for(|| served(&address)),
        "no new client served: {:?}",
        server.stats()
    );
    for stream in &mut idle {
        assert!(
            closed_within(stream, WAIT),
            "an idle connection stayed open"
        );
    }
    assert!(
        wait_for(|| server.stats().connections_closed_idle >= CAP as u64),
        "{:?}",
        server.stats()
    );
}

#[test]
fn a_connection_waiting_for_an_answer_is_not_idle() {
    let cluster = TestCluster::start(1, false);
    let idle_timeout = Duration::from_millis(500);
    let server = limited_server(&cluster, |options| options.idle_timeout = idle_timeout);
    let address = server.local_addr().to_string();
    let mut stream = TcpStream::connect(&address).unwrap();
    // A voter that never answers: the promotion waits for it until the request's deadline,
    // several idle timeouts long.
    let request_timeout = Duration::from_secs(3);
    let body = RequestBody::AddMember {
        id: NodeId(9),
        address: MemberAddress {
            peer: "127.0.0.1:9".into(),
            client: "127.0.0.1:9".into(),
        },
        voter: true,
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let began = Instant::now();
    stream
        .write_all(&frame_bytes(7, request_timeout.as_millis() as u64, body))
        .unwrap();
    let answer: ResponseFrame = FrameReader::new()
        .read_frame(&mut stream)
        .expect("the answer, not a closed connection");
    assert_eq!(answer.request_id, 7);
    assert!(
        began.elapsed() >= 2 * idle_timeout,
        "answered in {:?}: the request did not outlast the idle timeout ({answer:?})",
        began.elapsed()
    );
    // Answered, it is idle now, and closed.
    assert!(closed_within(&mut stream, WAIT));
    assert!(server.stats().connections_closed_idle >= 1);
}

#[test]
fn a_frame_trickled_byte_by_byte_is_closed_at_the_frame_deadline() {
    let cluster = TestCluster::start(1, false);
    let server = limited_server(&cluster, |options| {
        options.frame_timeout = Duration::from_secs(1);
    });
    let address = server.local_addr().to_string();
    // A valid write of a few KiB, one byte every 10 ms: 40 s to send it whole.
    let frame = frame_bytes(
        1,
        10_000,
        RequestBody::Write(Command::put(b"slow".to_vec(), vec![7; 4096])),
    );
    let mut slow = TcpStream::connect(&address).unwrap();
    let began = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    let mut others_served = false;
    while sent < frame.len() && began.elapsed() < WAIT {
        if slow.write_all(&frame[sent..sent + 1]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        if sent == 10 {
            // Meanwhile, the server serves others.
            others_served = served(&address);
        }
        if closed_within(&mut slow, Duration::from_millis(10)) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the trickled frame was not closed ({sent} of {} bytes sent in {:?}): {:?}",
        frame.len(),
        began.elapsed(),
        server.stats()
    );
    assert!(sent < frame.len(), "closed only after the whole frame");
    assert!(others_served, "another client was not served meanwhile");
    assert!(served(&address));
    let stats = server.stats();
    assert!(stats.connections_closed_slow >= 1, "{stats:?}");
    assert_eq!(stats.connections_closed_bad_input, 0, "{stats:?}");
}
