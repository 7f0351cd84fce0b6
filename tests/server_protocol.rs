//! The client protocol against real nodes over TCP on 127.0.0.1: every operation and read
//! consistency through the blocking `Client`, redirects from followers, raw frames for the
//! server's answers, limits, and bad input that must close only its own connection.

mod server_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keyval::client::{CasOutcome, Client, ClientError, ClientOptions};
use keyval::kv::{
    Command, Expect, KeyRange, KvError, Operation, Response, KEY_BYTES_MAX, VALUE_BYTES_MAX,
};
use keyval::protocol::{
    write_frame, Consistency, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
    ServerError,
};
use keyval::NodeId;

use server_support::{raw_call, wait_for, TestCluster};

fn client(endpoints: &[String]) -> Client {
    Client::connect(endpoints, ClientOptions::default()).expect("connect")
}

/// Whether the server closes a connection after `bytes` (reads until end of stream).
fn closes_after(address: &str, bytes: &[u8], half_close: bool) -> bool {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => {
                return matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            }
        }
    }
}

#[test]
fn every_operation_through_the_client() {
    let cluster = TestCluster::start(3, true);
    cluster.wait_leader();
    let client = client(&cluster.endpoints());

    let metadata = client.put(b"a".to_vec(), b"1".to_vec()).unwrap();
    assert_eq!(metadata.version, 1);
    let got = client.get(b"a".to_vec()).unwrap().unwrap();
    assert_eq!(got.value, b"1");
    assert_eq!(got.metadata, metadata);
    assert_eq!(client.get(b"missing".to_vec()).unwrap(), None);

    // Compare-and-swap on the value, on absence, on the revision; a failing one changes nothing.
    let swapped = client
        .cas(
            b"a".to_vec(),
            Expect::Value(b"1".to_vec()),
            Some(b"2".to_vec()),
        )
        .unwrap();
    let CasOutcome::Swapped {
        current: Some(after),
    } = swapped
    else {
        panic!("expected a swap, got {swapped:?}");
    };
    let failed = client
        .cas(
            b"a".to_vec(),
            Expect::Value(b"1".to_vec()),
            Some(b"3".to_vec()),
        )
        .unwrap();
    assert!(
        matches!(failed, CasOutcome::Failed { current: Some(ref current) } if current.value == b"2")
    );
    assert!(matches!(
        client
            .cas(b"new".to_vec(), Expect::Absent, Some(b"x".to_vec()))
            .unwrap(),
        CasOutcome::Swapped { .. }
    ));
    assert!(matches!(
        client
            .cas(b"a".to_vec(), Expect::ModRevision(after.mod_revision), None)
            .unwrap(),
        CasOutcome::Swapped { current: None }
    ));
    assert_eq!(client.get(b"a".to_vec()).unwrap(), None);

    // Delete says whether the key existed.
    assert!(client.delete(b"new".to_vec()).unwrap());
    assert!(!client.delete(b"new".to_vec()).unwrap());

    // An atomic batch, then scans by prefix with a limit.
    let operations = (0..5)
        .map(|k| Operation::Put {
            key: format!("p/{k}").into_bytes(),
            value: vec![k],
        })
        .collect();
    assert!(client.batch(operations).unwrap().is_written());
    let page = client.scan(KeyRange::prefix(b"p/"), 3).unwrap();
    assert_eq!(page.entries.len(), 3);
    assert!(page.more);
    assert_eq!(page.entries[0].0, b"p/0");
    let all = client.scan(KeyRange::prefix(b"p/"), 100).unwrap();
    assert_eq!(all.entries.len(), 5);
    assert!(!all.more);

    // Every consistency mode reads the latest write (lease once the lease is held).
    client.put(b"c".to_vec(), b"v".to_vec()).unwrap();
    let linearizable = client
        .get_with(b"c".to_vec(), Consistency::Linearizable)
        .unwrap();
    assert_eq!(linearizable.value.unwrap().value, b"v");
    assert_eq!(linearizable.behind, 0);
    assert!(wait_for(|| matches!(
        client.get_with(b"c".to_vec(), Consistency::Lease),
        Ok(ref read) if read.value.as_ref().is_some_and(|versioned| versioned.value == b"v")
    )));
    let stale = client
        .scan_with(KeyRange::all(), 10, Consistency::Stale)
        .unwrap();
    assert!(stale.applied.0 > 0);

    // Status of every node: one leader, all agreeing on it.
    let statuses = client.cluster_status();
    assert_eq!(statuses.len(), 3);
    let leaders: Vec<_> = statuses
        .iter()
        .filter_map(|(_, status)| status.as_ref().ok())
        .filter(|status| status.role == keyval::raft::RoleKind::Leader)
        .collect();
    assert_eq!(leaders.len(), 1);
}

#[test]
fn follower_redirects_and_serves_stale_reads() {
    let cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let follower = cluster.follower();
    let follower_address = cluster.address(follower);
    // The follower must know the leader before it can point at it.
    assert!(wait_for(|| cluster.nodes[follower]
        .as_ref()
        .unwrap()
        .node
        .status()
        .leader
        .is_some()));

    let frame = raw_call(
        &follower_address,
        RequestBody::Write(Command::put(b"k".to_vec(), b"v".to_vec())),
        2000,
    );
    assert_eq!(frame.request_id, 42);
    match frame.result {
        Err(ServerError::NotLeader {
            leader_id,
            leader_client_address,
        }) => {
            assert_eq!(leader_id, Some(NodeId(leader as u64 + 1)));
            assert_eq!(leader_client_address, Some(cluster.address(leader)));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // A client given only the follower follows the redirect.
    let client = client(std::slice::from_ref(&follower_address));
    client.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    assert_eq!(client.leader(), Some(cluster.address(leader)));

    // A stale read from the follower says who served it and how far behind it was.
    let stale_client = Client::new(&[follower_address], ClientOptions::default()).unwrap();
    assert!(wait_for(|| {
        let read = stale_client
            .get_with(b"k".to_vec(), Consistency::Stale)
            .unwrap();
        read.node == NodeId(follower as u64 + 1) && read.value.is_some()
    }));

    // Status over the raw protocol.
    let status = raw_call(&cluster.address(leader), RequestBody::Status, 2000);
    let Ok(ResponseBody::Status(status)) = status.result else {
        panic!("expected a status");
    };
    assert_eq!(status.id, NodeId(leader as u64 + 1));
    assert_eq!(status.client_address, cluster.address(leader));
}

#[test]
fn limits_are_rejected_with_clear_errors() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let address = cluster.address(0);
    let client = client(std::slice::from_ref(&address));

    let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
    let error = client.put(long_key.clone(), b"v".to_vec()).unwrap_err();
    assert!(
        matches!(error, ClientError::Rejected(KvError::KeyTooLarge { .. })),
        "{error}"
    );
    let big_value = vec![0u8; VALUE_BYTES_MAX + 1];
    let error = client.put(b"k".to_vec(), big_value.clone()).unwrap_err();
    assert!(
        matches!(error, ClientError::Rejected(KvError::ValueTooLarge { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("exceeds the limit"));

    // The server checks too, whatever the client does.
    let frame = raw_call(
        &address,
        RequestBody::Write(Command::put(b"k".to_vec(), big_value)),
        2000,
    );
    assert!(matches!(
        frame.result,
        Err(ServerError::Invalid(KvError::ValueTooLarge { .. }))
    ));
    let frame = raw_call(
        &address,
        RequestBody::Read {
            request: keyval::kv::ReadRequest::Get { key: long_key },
            consistency: Consistency::Linearizable,
        },
        2000,
    );
    assert!(matches!(
        frame.result,
        Err(ServerError::Invalid(KvError::KeyTooLarge { .. }))
    ));
    // A maximal value is fine.
    client
        .put(b"k".to_vec(), vec![1u8; VALUE_BYTES_MAX])
        .unwrap();
}

#[test]
fn bad_input_closes_only_that_connection() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let address = cluster.address(0);
    let client = client(std::slice::from_ref(&address));
    client.put(b"before".to_vec(), b"1".to_vec()).unwrap();

    // Garbage: a plausible length but a wrong checksum.
    let garbage: Vec<u8> = (0..64u8).map(|k| k.wrapping_mul(37)).collect();
    let mut garbage_frame = 16u32.to_le_bytes().to_vec();
    garbage_frame.extend_from_slice(&garbage);
    assert!(closes_after(&address, &garbage_frame, false));
    // A valid record whose payload is not a request.
    let mut not_a_request = Vec::new();
    keyval::codec::write_record(b"hello, server", &mut not_a_request);
    assert!(closes_after(&address, &not_a_request, false));
    // An oversized length prefix is refused before anything is allocated.
    let mut oversized = u32::MAX.to_le_bytes().to_vec();
    oversized.extend_from_slice(&[0; 4]);
    assert!(closes_after(&address, &oversized, false));
    // A truncated frame, then end of stream.
    let mut truncated = Vec::new();
    write_frame(
        &RequestFrame {
            request_id: 1,
            timeout_ms: 100,
            body: RequestBody::Status,
        },
        &mut truncated,
    )
    .unwrap();
    truncated.truncate(truncated.len() - 3);
    assert!(closes_after(&address, &truncated, true));

    let stats = cluster.nodes[0].as_ref().unwrap().server.stats();
    assert!(stats.connections_closed_bad_input >= 4, "{stats:?}");
    // The node keeps serving, on the old connection and new ones.
    client.put(b"after".to_vec(), b"2".to_vec()).unwrap();
    let fresh = Client::connect(&[address], ClientOptions::default()).unwrap();
    assert_eq!(fresh.get(b"before".to_vec()).unwrap().unwrap().value, b"1");
}

#[test]
fn pipelined_requests_on_one_connection_all_complete() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let mut stream = TcpStream::connect(cluster.address(0)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    for request_id in 0..200u64 {
        let body = if request_id % 2 == 0 {
            RequestBody::Write(Command::put(format!("k{request_id}").into_bytes(), vec![1]))
        } else {
            RequestBody::Read {
                request: keyval::kv::ReadRequest::Get {
                    key: b"k0".to_vec(),
                },
                consistency: Consistency::Linearizable,
            }
        };
        write_frame(
            &RequestFrame {
                request_id,
                timeout_ms: 5000,
                body,
            },
            &mut bytes,
        )
        .unwrap();
    }
    stream.write_all(&bytes).unwrap();
    let mut frames = FrameReader::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let frame: ResponseFrame = frames.read_frame(&mut stream).unwrap();
        match &frame.result {
            Ok(ResponseBody::Written(Response::Written { .. })) | Ok(ResponseBody::Read(_)) => {}
            other => panic!("request {} failed: {other:?}", frame.request_id),
        }
        seen.insert(frame.request_id);
    }
    assert_eq!(seen.len(), 200);
}

/// More pipelined writes in one buffer than the connection may have in flight: the reader must
/// propose the writes it collected before it waits for a permit, or their permits never come
/// back and every one of them expires unproposed (`Indeterminate`).
#[test]
fn pipelined_writes_beyond_the_in_flight_limit_all_commit() {
    let cluster = TestCluster::start_with(1, false, |options| {
        options.inflight_per_connection_max = 4;
    });
    cluster.wait_leader();
    let mut stream = TcpStream::connect(cluster.address(0)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    for request_id in 0..100u64 {
        let body = RequestBody::Write(Command::put(format!("k{request_id}").into_bytes(), vec![1]));
        write_frame(
            &RequestFrame {
                request_id,
                timeout_ms: 5000,
                body,
            },
            &mut bytes,
        )
        .unwrap();
    }
    stream.write_all(&bytes).unwrap();
    let mut frames = FrameReader::new();
    for _ in 0..100 {
        let frame: ResponseFrame = frames.read_frame(&mut stream).unwrap();
        match &frame.result {
            Ok(ResponseBody::Written(Response::Written { .. })) => {}
            other => panic!("request {} failed: {other:?}", frame.request_id),
        }
    }
}

#[test]
fn shutdown_answers_requests_in_flight_then_closes() {
    let mut cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let mut stream = TcpStream::connect(cluster.address(0)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    for request_id in 0..50u64 {
        write_frame(
            &RequestFrame {
                request_id,
                timeout_ms: 5000,
                body: RequestBody::Write(Command::put(
                    format!("s{request_id}").into_bytes(),
                    vec![1],
                )),
            },
            &mut bytes,
        )
        .unwrap();
    }
    stream.write_all(&bytes).unwrap();
    // Wait until the server has read them all, then stop it while they are in flight.
    let running = cluster.nodes[0].as_mut().unwrap();
    assert!(wait_for(|| running.server.stats().requests == 50));
    running.server.shutdown();
    // Every request was answered before the connection closed, none left hanging.
    let mut frames = FrameReader::new();
    let mut answered = 0;
    while let Ok(frame) = frames.read_frame::<ResponseFrame>(&mut stream) {
        assert!(
            matches!(frame.result, Ok(ResponseBody::Written(_))),
            "{frame:?}"
        );
        answered += 1;
    }
    assert_eq!(answered, 50);
    // The listener is gone: no new connections.
    assert!(TcpStream::connect(cluster.address(0)).is_err());
}

#[test]
fn connections_beyond_the_limit_are_closed() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let node = std::sync::Arc::clone(&cluster.nodes[0].as_ref().unwrap().node);
    let mut options = keyval::server::ServerOptions::new("127.0.0.1:0".parse().unwrap());
    options.connections_max = 1;
    let server = keyval::server::Server::start(node, options).unwrap();
    let address = server.local_addr().to_string();
    let first = Client::connect(std::slice::from_ref(&address), ClientOptions::default()).unwrap();
    first.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    // A second connection is closed at once.
    assert!(closes_after(&address, &[], false));
    assert_eq!(server.stats().connections_refused, 1);
    // Once the first goes away, a new connection is served.
    drop(first);
    assert!(wait_for(|| server.stats().connections_open == 0));
    let second = Client::connect(&[address], ClientOptions::default()).unwrap();
    assert_eq!(second.get(b"k".to_vec()).unwrap().unwrap().value, b"v");
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_shutdown_is_not_held() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let node = std::sync::Arc::clone(&cluster.nodes[0].as_ref().unwrap().node);
    let mut options = keyval::server::ServerOptions::new("127.0.0.1:0".parse().unwrap());
    options.write_timeout = Duration::from_millis(200);
    let mut server = keyval::server::Server::start(node, options).unwrap();
    let address = server.local_addr().to_string();
    let client = Client::connect(std::slice::from_ref(&address), ClientOptions::default()).unwrap();
    client
        .put(b"big".to_vec(), vec![7u8; VALUE_BYTES_MAX])
        .unwrap();
    // Ask for the 1 MiB value many times and never read: the responses fill the socket.
    let mut silent = TcpStream::connect(&address).unwrap();
    let mut bytes = Vec::new();
    for request_id in 0..64 {
        write_frame(
            &RequestFrame {
                request_id,
                timeout_ms: 5000,
                body: RequestBody::Read {
                    request: keyval::kv::ReadRequest::Get {
                        key: b"big".to_vec(),
                    },
                    consistency: Consistency::Stale,
                },
            },
            &mut bytes,
        )
        .unwrap();
    }
    silent.write_all(&bytes).unwrap();
    // The writer gives up on the silent client; the connection closes on its own.
    assert!(wait_for(|| server.stats().connections_open <= 1));
    assert_eq!(
        client.get(b"big".to_vec()).unwrap().unwrap().value.len(),
        VALUE_BYTES_MAX
    );
    let began = std::time::Instant::now();
    server.shutdown();
    assert!(began.elapsed() < Duration::from_secs(5));
    drop(silent);
}
