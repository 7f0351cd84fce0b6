//! The blocking `Client`'s retry contract against real nodes over TCP: a write (a
//! transaction too) retried after its response was lost applies once; a write whose outcome cannot be learned ends
//! `Indeterminate`, never a guess; the client carries on across a leader failover.

mod server_support;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientError, ClientOptions};
use keyval::kv::{Command, Compare, CompareOp, Response, Txn, TxnOp, SESSIONS_MAX};
use keyval::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
};

use server_support::TestCluster;

/// Whether `frame` answers a write that was applied (not a session registration).
fn is_applied_write(frame: &ResponseFrame) -> bool {
    matches!(
        frame.result,
        Ok(ResponseBody::Written(
            Response::Written { .. } | Response::Txn(_)
        ))
    )
}

/// A proxy in front of `upstream` that drops the first answer to an applied write and cuts
/// that connection: the write was served, the client never hears of it.
fn start_lossy_proxy(upstream: String) -> String {
    start_holding_proxy(upstream, Arc::new(AtomicBool::new(true)))
}

/// A proxy in front of `upstream` that drops the first answer to an applied write and cuts
/// that connection, then holds every later connection (accepted, not forwarded) until `release` is set: the
/// client's retry waits while the test changes the cluster behind its back.
fn start_holding_proxy(upstream: String, release: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let dropped = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (upstream, release, dropped) =
                (upstream.clone(), Arc::clone(&release), Arc::clone(&dropped));
            std::thread::spawn(move || {
                if dropped.load(Ordering::SeqCst) {
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                relay_dropping_first_applied_write(client, &upstream, &dropped);
            });
        }
    });
    address
}

/// Relays one client connection to `upstream`, except that the first answer to an applied
/// write (across every connection sharing `dropped`) is swallowed and both sides are cut.
fn relay_dropping_first_applied_write(mut client: TcpStream, upstream: &str, dropped: &AtomicBool) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut client_reader, mut server_writer) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_reader, &mut server_writer);
    });
    let mut frames = FrameReader::new();
    while let Ok(frame) = frames.read_frame::<ResponseFrame>(&mut server) {
        if is_applied_write(&frame) && !dropped.swap(true, Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        let mut bytes = Vec::new();
        write_frame(&frame, &mut bytes).unwrap();
        if client.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// Registers `count` new sessions on the leader at `address` through raw pipelined requests,
/// enough to evict every older session; returns once all are answered.
fn create_sessions(address: &str, count: u64) {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader_stream = stream.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut frames = FrameReader::new();
        for _ in 0..count {
            let frame: ResponseFrame = frames.read_frame(&mut reader_stream).unwrap();
            assert!(
                matches!(
                    frame.result,
                    Ok(ResponseBody::Written(Response::SessionRegistered { .. }))
                ),
                "{frame:?}"
            );
        }
    });
    let mut writer = std::io::BufWriter::new(stream);
    for n in 0..count {
        let mut bytes = Vec::new();
        let frame = RequestFrame {
            request_id: n,
            timeout_ms: 60_000,
            body: RequestBody::Write(Command::register_session()),
        };
        write_frame(&frame, &mut bytes).unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.flush().unwrap();
    reader.join().unwrap();
}

/// Issue item 4 (PITFALLS #22) end to end: a session's first write is applied and its answer
/// lost; before the retry arrives, other clients evict the session. The retry must not apply
/// the write again, and the client must say it does not know the outcome.
#[test]
fn a_first_write_whose_session_was_evicted_before_the_retry_is_indeterminate() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let release = Arc::new(AtomicBool::new(false));
    let proxy = start_holding_proxy(cluster.address(0), Arc::clone(&release));
    let options = ClientOptions {
        request_timeout: Duration::from_secs(120),
        ..ClientOptions::default()
    };
    let client = Client::connect(&[proxy], options).unwrap();
    let writer = std::thread::spawn(move || client.put(b"once".to_vec(), b"v".to_vec()));
    let direct = Client::connect(&[cluster.address(0)], ClientOptions::default()).unwrap();
    assert!(
        server_support::wait_for(|| direct.get(b"once".to_vec()).unwrap().is_some()),
        "the first attempt was never applied"
    );
    create_sessions(&cluster.address(0), SESSIONS_MAX as u64 + 1);
    release.store(true, Ordering::SeqCst);
    let result = writer.join().unwrap();
    let stored = direct.get(b"once".to_vec()).unwrap().unwrap();
    assert_eq!(stored.metadata.version, 1, "the put was applied twice");
    assert!(
        matches!(result, Err(ClientError::Indeterminate { .. })),
        "the client reported {result:?}"
    );
}

#[test]
fn a_write_retried_after_a_lost_response_applies_once() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let proxy = start_lossy_proxy(cluster.address(0));
    let client = Client::connect(&[proxy], ClientOptions::default()).unwrap();
    // The first answer is lost; the client retries the same session and gets the cached one.
    let metadata = client.put(b"once".to_vec(), b"v".to_vec()).unwrap();
    assert_eq!(metadata.version, 1, "the put was applied twice");
    let direct = Client::connect(&[cluster.address(0)], ClientOptions::default()).unwrap();
    let stored = direct.get(b"once".to_vec()).unwrap().unwrap();
    assert_eq!(stored.metadata.version, 1, "the put was applied twice");
    // One more write through the proxy is a new write: version 2.
    assert_eq!(
        client.put(b"once".to_vec(), b"w".to_vec()).unwrap().version,
        2
    );
}

/// A transaction is a write like any other: retried after its answer was lost, it is
/// answered from the session cache — the branch it took the first time, not the other one
/// its compares would pick now.
#[test]
fn a_transaction_retried_after_a_lost_response_applies_once() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let proxy = start_lossy_proxy(cluster.address(0));
    let client = Client::connect(&[proxy], ClientOptions::default()).unwrap();
    let create = Txn::new()
        .when([Compare::version("once", CompareOp::Equal, 0)])
        .then([TxnOp::put("once", "created")])
        .otherwise([TxnOp::put("once", "applied twice")]);
    let response = client.txn(create).unwrap();
    assert!(
        response.succeeded,
        "the retry was applied again: {response:?}"
    );
    let direct = Client::connect(&[cluster.address(0)], ClientOptions::default()).unwrap();
    let stored = direct.get(b"once".to_vec()).unwrap().unwrap();
    assert_eq!(stored.value, b"created");
    assert_eq!(
        stored.metadata.version, 1,
        "the transaction was applied twice"
    );
    assert_eq!(stored.metadata.mod_revision, response.revision);
}

#[test]
fn a_write_without_quorum_is_indeterminate_after_its_deadline() {
    let mut cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let leader_address = cluster.address(leader);
    let options = ClientOptions {
        request_timeout: Duration::from_millis(800),
        ..ClientOptions::default()
    };
    let client = Client::connect(&[leader_address], options).unwrap();
    client.put(b"k".to_vec(), b"1".to_vec()).unwrap();
    // Take both followers away: the leader appends the write but can never commit it.
    for position in 0..3 {
        if position != leader {
            cluster.nodes[position].as_ref().unwrap().node.shutdown();
        }
    }
    let error = client.put(b"k".to_vec(), b"2".to_vec()).unwrap_err();
    assert!(
        matches!(error, ClientError::Indeterminate { .. }),
        "expected Indeterminate, got {error:?}"
    );
    assert!(error.is_indeterminate());
    // Stop the rest before the cluster's drop, so the shut-down nodes are not stopped twice
    // with their servers still up (harmless either way).
    for position in 0..3 {
        cluster.stop(position);
    }
}

#[test]
fn the_client_carries_on_across_a_leader_failover() {
    let mut cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let client = Client::connect(&cluster.endpoints(), ClientOptions::default()).unwrap();
    for k in 0..20u32 {
        client
            .put(format!("k{k}").into_bytes(), k.to_le_bytes().to_vec())
            .unwrap();
    }
    cluster.stop(leader);
    for k in 20..40u32 {
        client
            .put(format!("k{k}").into_bytes(), k.to_le_bytes().to_vec())
            .unwrap();
    }
    for k in 0..40u32 {
        let value = client.get(format!("k{k}").into_bytes()).unwrap().unwrap();
        assert_eq!(value.value, k.to_le_bytes());
    }
    assert_ne!(client.leader(), Some(cluster.address(leader)));
}

/// A "frozen" node: a listener that accepts connections and never answers, like a
/// SIGSTOPped process whose kernel still completes TCP handshakes. Returns its address; the
/// accepted connections stay open as long as the test runs.
fn start_frozen_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            held.push(stream);
        }
    });
    address
}

/// Issue item 6 (PITFALLS #23): an endpoint that accepts and never answers, listed first,
/// must not hold a write for its whole deadline while a healthy node is listed second —
/// neither for a client made with `Client::new` (as `kvctl` makes it), whose first write goes
/// to the first endpoint, nor for one made with `Client::connect`.
#[test]
fn a_frozen_endpoint_listed_first_does_not_hold_a_write() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let frozen = start_frozen_endpoint();
    let endpoints = [frozen, cluster.address(0)];
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let started = Instant::now();
    let client = Client::new(&endpoints, options.clone()).unwrap();
    let metadata = client.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(metadata.version, 1);
    assert!(
        elapsed < Duration::from_secs(5),
        "the write took {elapsed:?} of its 10 s deadline"
    );
    // Later writes go straight to the node that answered.
    let started = Instant::now();
    client.put(b"k".to_vec(), b"w".to_vec()).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // `connect` checks that a node answers, not that a connection opens.
    let started = Instant::now();
    let client = Client::connect(&endpoints, options).unwrap();
    client.put(b"k".to_vec(), b"x".to_vec()).unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "connect and a write took {elapsed:?}"
    );
}

#[test]
fn a_client_is_shared_by_threads() {
    let cluster = TestCluster::start(1, false);
    cluster.wait_leader();
    let client = Client::connect(&cluster.endpoints(), ClientOptions::default()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let client = client.clone();
            std::thread::spawn(move || {
                for k in 0..50 {
                    client
                        .put(format!("t{thread}/{k}").into_bytes(), vec![thread])
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let page = client
        .scan(keyval::kv::KeyRange::prefix(b"t"), 1000)
        .unwrap();
    assert_eq!(page.entries.len(), 400);
}
