//! One `Client` shared by many threads (issue #12): every call completes with the right
//! answer, and the calls are in flight together on the client's one connection per node —
//! proved against a real cluster through the server's in-flight high-water mark, and against
//! a scripted server that answers nothing until many requests have arrived on one connection
//! (a client that sends one request at a time would never be answered there).

mod server_support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use keyval::client::{Client, ClientOptions};
use keyval::kv::ReadRequest;
use keyval::protocol::{
    write_frame, FrameReader, ReadReply, RequestBody, RequestFrame, ResponseBody, ResponseFrame,
};
use keyval::{LogIndex, NodeId};

use server_support::TestCluster;

/// Threads sharing the one client.
const THREADS: usize = 32;

/// Puts (then as many gets) per thread.
const CALLS_PER_THREAD: usize = 40;

#[test]
fn threads_sharing_one_client_pipeline_on_one_connection_and_all_succeed() {
    let cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    // Start at the leader, so the calls go to it without a redirect.
    let mut endpoints = vec![cluster.address(leader)];
    endpoints.extend(cluster.endpoints());
    // Generous attempts: on a loaded test machine a slow answer must not make the client
    // give up on the connection and open another.
    let options = ClientOptions {
        request_timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let client = Client::connect(&endpoints, options).expect("connect");
    let accepted_before = cluster.nodes[leader]
        .as_ref()
        .unwrap()
        .server
        .stats()
        .connections_accepted;
    let start = Arc::new(Barrier::new(THREADS));
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (client, start) = (&client, Arc::clone(&start));
            scope.spawn(move || {
                start.wait();
                for call in 0..CALLS_PER_THREAD {
                    let key = format!("t{thread}/k{call}").into_bytes();
                    let value = format!("v{thread}.{call}").into_bytes();
                    client.put(key, value).expect("put");
                }
                for call in 0..CALLS_PER_THREAD {
                    let key = format!("t{thread}/k{call}").into_bytes();
                    let read = client.get(key).expect("get").expect("the key exists");
                    assert_eq!(read.value, format!("v{thread}.{call}").into_bytes());
                }
            });
        }
    });
    let stats = cluster.nodes[leader].as_ref().unwrap().server.stats();
    // One connection, opened by `connect` (or not at all if it asked another node first).
    assert!(
        stats.connections_accepted <= accepted_before.max(1),
        "the shared client opened more than one connection to the leader: {stats:?}"
    );
    // A client that waits for each answer before it sends the next request never has two
    // requests in flight on a connection.
    assert!(
        stats.requests_in_flight_max > 1,
        "the calls never overlapped on the connection: {stats:?}"
    );
}

/// A scripted server that answers nothing on a connection until `THREADS` requests have
/// arrived on it, then answers all of them in reverse order. The threads start together on
/// a client with no connection yet: one opens it, the others wait for it.
#[test]
fn a_shared_client_has_its_threads_requests_in_flight_at_once_answered_out_of_order() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let done = Arc::new(AtomicBool::new(false));
    let server_done = Arc::clone(&done);
    let server = std::thread::spawn(move || {
        let mut handlers = Vec::new();
        for stream in listener.incoming() {
            if server_done.load(Ordering::SeqCst) {
                break;
            }
            let stream = stream.unwrap();
            handlers.push(std::thread::spawn(move || answer_when_all_arrived(stream)));
        }
        let connections = handlers.len();
        let answered: usize = handlers
            .into_iter()
            .map(|handler| handler.join().unwrap())
            .sum();
        (connections, answered)
    });
    let options = ClientOptions {
        request_timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let client = Client::new(std::slice::from_ref(&address), options).unwrap();
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (client, start) = (&client, &start);
            scope.spawn(move || {
                start.wait();
                let key = format!("key{thread}").into_bytes();
                let read = client.get(key.clone()).expect("get").expect("a value");
                assert_eq!(read.value, key, "thread {thread} got another's answer");
            });
        }
    });
    drop(client);
    done.store(true, Ordering::SeqCst);
    // Wake the accepting thread so it sees `done`.
    let _ = TcpStream::connect(&address);
    let (connections, answered) = server.join().unwrap();
    assert_eq!(answered, THREADS, "one connection carried every request");
    // The threads that found no connection waited for the one being opened.
    assert_eq!(connections, 1, "the threads opened a connection each");
}

/// Reads requests on `stream` until `THREADS` are in flight, answers them in reverse order,
/// and returns how many it answered (0 if the client closed the connection first).
fn answer_when_all_arrived(mut stream: TcpStream) -> usize {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut frames = FrameReader::new();
    let mut requests = Vec::new();
    while requests.len() < THREADS {
        match frames.read_frame::<RequestFrame>(&mut stream) {
            Ok(request) => requests.push(request),
            Err(_) => return 0,
        }
    }
    let mut bytes = Vec::new();
    for request in requests.iter().rev() {
        let RequestBody::Read {
            request: ReadRequest::Get { key },
            ..
        } = &request.body
        else {
            panic!("unexpected request {:?}", request.body);
        };
        // Answer each get with its own key as the value.
        let response = ResponseFrame {
            request_id: request.request_id,
            result: Ok(ResponseBody::Read(ReadReply {
                node: NodeId(1),
                applied: LogIndex(1),
                behind: 0,
                response: keyval::kv::ReadResponse::Get(Some(keyval::kv::Versioned {
                    value: key.clone(),
                    metadata: keyval::kv::Metadata::created(LogIndex(1)),
                })),
            })),
        };
        write_frame(&response, &mut bytes).unwrap();
    }
    stream.write_all(&bytes).unwrap();
    // Hold the connection until the client closes it.
    let _ = frames.read_frame::<RequestFrame>(&mut stream);
    requests.len()
}
