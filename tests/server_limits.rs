//! Client connections that never finish must not lock clients out or pin memory (PITFALLS
//! #24): idle connections are closed after the idle timeout, a frame trickled byte by byte is
//! closed at its frame deadline, many large frames at once never hold more than the
//! request-buffer budget, and bad input closes only its own connection. Each test starts a
//! server with short limits in front of a one-node cluster and waits on the server's counters
//! (`Server::stats`) with generous deadlines; nothing sleeps and then asserts.

mod server_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyval::codec::RECORD_HEADER_BYTES;
use keyval::kv::Command;
use keyval::limits::FRAME_BYTES_MAX;
use keyval::protocol::{
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
        options.idle_timeout = Duration::from_secs(2);
    });
    let address = server.local_addr().to_string();
    // Every slot taken by a client that asks once, then says nothing more. (Whether all are
    // open at one instant depends on how fast a loaded machine opens them; the counts below
    // show that each was closed for idling.)
    let mut idle: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            assert!(call(&mut stream, 1, RequestBody::Status).is_some());
            stream
        })
        .collect();
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

/// A frame header claiming `length` payload bytes (the checksum is never checked: the frame
/// is never completed).
fn header(length: u64) -> Vec<u8> {
    let mut bytes = (length as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4]);
    bytes
}

#[test]
fn many_trickled_near_maximal_frames_never_hold_more_than_the_budget() {
    const SENDERS: usize = 6;
    const FRAMES_IN_BUDGET: u64 = 2;
    // Every frame claims the maximal length; all but its last KiB are sent at once, then one
    // byte every 100 ms: none completes before its deadline.
    let frame_total = FRAME_BYTES_MAX + RECORD_HEADER_BYTES as u64;
    let budget = FRAMES_IN_BUDGET * frame_total;
    let cluster = TestCluster::start(1, false);
    let server = limited_server(&cluster, |options| {
        options.request_buffer_bytes_max = budget;
        options.frame_timeout = Duration::from_secs(6);
    });
    let address = server.local_addr().to_string();
    let payload = Arc::new(vec![0u8; FRAME_BYTES_MAX as usize]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..SENDERS {
            let (address, payload, stop) = (&address, Arc::clone(&payload), &stop);
            scope.spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                // A server that stops reading makes writes time out: that is back-pressure.
                stream
                    .set_write_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut pending = header(FRAME_BYTES_MAX);
                pending.extend_from_slice(&payload[..payload.len() - 1024]);
                let mut sent = 0;
                let mut trickled = 0;
                while !stop.load(Ordering::SeqCst) {
                    let chunk = if sent < pending.len() {
                        &pending[sent..(sent + 64 * 1024).min(pending.len())]
                    } else if trickled < 1023 {
                        std::thread::sleep(Duration::from_millis(100)); // trickle pacing
                        &payload[..1]
                    } else {
                        return;
                    };
                    match stream.write(chunk) {
                        Ok(0) => return,
                        Ok(written) if sent < pending.len() => sent += written,
                        Ok(_) => trickled += 1,
                        Err(error)
                            if matches!(
                                error.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return, // closed by the server
                    }
                }
            });
        }
        // Two frames hold the whole budget and at least one other waits for room.
        let full = wait_for(|| {
            let stats = server.stats();
            stats.request_buffer_bytes == budget && stats.request_buffer_waits >= 1
        });
        let during = server.stats();
        // Small requests need no budget: others are served while it is full.
        let others_served = served(&address);
        // Every trickled frame is closed at its deadline and every reservation returned.
        let drained = wait_for(|| {
            let stats = server.stats();
            stats.connections_closed_slow >= SENDERS as u64 && stats.request_buffer_bytes == 0
        });
        stop.store(true, Ordering::SeqCst);
        let after = server.stats();
        assert!(
            after.request_buffer_bytes_max <= budget,
            "{} bytes buffered at once, budget {budget}: {after:?}",
            after.request_buffer_bytes_max
        );
        assert!(
            full,
            "the budget was never full with frames waiting: {during:?}"
        );
        assert!(
            others_served,
            "no other client served while the budget was full"
        );
        assert!(
            drained,
            "trickled frames not all closed, or budget not returned: {after:?}"
        );
    });
    assert!(served(&address));
}

#[test]
fn bad_input_closes_only_that_connection_and_returns_its_reservation() {
    let cluster = TestCluster::start(1, false);
    let server = limited_server(&cluster, |_| {});
    let address = server.local_addr().to_string();
    let mut good = TcpStream::connect(&address).unwrap();
    assert!(call(&mut good, 1, RequestBody::Status).is_some());

    // A whole 1 MiB frame with a wrong checksum: reserved, received, refused, returned.
    let length = 1024 * 1024;
    let mut bad = TcpStream::connect(&address).unwrap();
    let mut bytes = header(length);
    bytes.resize(bytes.len() + length as usize, 0x5a);
    bad.write_all(&bytes).unwrap();
    assert!(closed_within(&mut bad, WAIT));
    assert!(wait_for(|| server.stats().request_buffer_bytes == 0));
    let stats = server.stats();
    assert_eq!(
        stats.request_buffer_bytes_max,
        length + RECORD_HEADER_BYTES as u64,
        "the large frame was received under a reservation of its size: {stats:?}"
    );
    assert_eq!(stats.connections_closed_bad_input, 1, "{stats:?}");

    // An oversized length prefix is refused before anything is reserved or allocated.
    let mut oversized = TcpStream::connect(&address).unwrap();
    oversized.write_all(&header(u32::MAX as u64)).unwrap();
    assert!(closed_within(&mut oversized, WAIT));
    assert!(wait_for(|| server.stats().connections_closed_bad_input == 2));
    assert_eq!(
        server.stats().request_buffer_bytes_max,
        length + RECORD_HEADER_BYTES as u64
    );

    // The good connection, and new ones, are still served.
    let answer = call(&mut good, 2, RequestBody::Status).expect("still served");
    assert!(matches!(answer.result, Ok(ResponseBody::Status(_))));
    assert!(served(&address));
}
