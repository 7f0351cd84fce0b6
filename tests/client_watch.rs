//! Watch over TCP against a real three-node cluster: events in revision order with one
//! response per revision, previous values and filters, a start in the past replayed from the
//! history, `Compacted` for a start that left it, many watches on one raw connection, a
//! watcher whose client stops reading that holds back neither the writes nor another
//! watcher, progress notifications, and a `Client` watch that resumes on another node when
//! its node stops, missing nothing and repeating nothing.
//! Method: `server_support::TestCluster`, waiting on conditions with generous deadlines.

mod server_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keyval::client::{ClientError, WatchOptions, WatchResponse};
use keyval::kv::{Event, EventKind, HistoryLimits, KeyRange, KvStore, Txn, TxnOp};
use keyval::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame, WatchRequest,
};
use keyval::LogIndex;

use server_support::{TestCluster, WAIT};

/// Receives until `count` events arrived (or the wait runs out), with the responses.
fn collect(watch: &mut keyval::client::Watch, count: usize) -> (Vec<Event>, Vec<WatchResponse>) {
    let deadline = Instant::now() + WAIT;
    let mut events = Vec::new();
    let mut responses = Vec::new();
    while events.len() < count && Instant::now() < deadline {
        if let Some(response) = watch
            .recv_timeout(Duration::from_millis(500))
            .expect("recv")
        {
            events.extend(response.events.iter().cloned());
            responses.push(response);
        }
    }
    (events, responses)
}

fn keys(events: &[Event]) -> Vec<(EventKind, String)> {
    events
        .iter()
        .map(|event| (event.kind, String::from_utf8_lossy(&event.key).into_owned()))
        .collect()
}

#[test]
fn a_watch_sees_every_change_in_order_with_one_response_per_revision() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = cluster.client();
    let mut watch = client
        .watch(WatchOptions::prefix(b"cfg/").with_previous())
        .expect("watch");
    let first = client.put(b"cfg/a".to_vec(), b"1".to_vec()).unwrap();
    client.put(b"other".to_vec(), b"x".to_vec()).unwrap();
    let txn = client
        .txn(Txn::new().then([
            TxnOp::put("cfg/a", "2"),
            TxnOp::put("cfg/b", "3"),
            TxnOp::delete("other"),
        ]))
        .unwrap();
    client.delete(b"cfg/a".to_vec()).unwrap();
    let (events, responses) = collect(&mut watch, 4);
    use EventKind::{Delete, Put};
    assert_eq!(
        keys(&events),
        vec![
            (Put, "cfg/a".into()),
            (Put, "cfg/a".into()),
            (Put, "cfg/b".into()),
            (Delete, "cfg/a".into())
        ]
    );
    assert_eq!(events[0].revision, first.mod_revision);
    assert_eq!(events[1].revision, txn.revision);
    assert_eq!(events[1].previous.as_ref().unwrap().value, b"1");
    assert_eq!(events[3].previous.as_ref().unwrap().value, b"2");
    // The transaction's two changes came together.
    let together = responses.iter().any(|response| {
        response
            .events
            .iter()
            .filter(|event| event.revision == txn.revision)
            .count()
            == 2
    });
    assert!(together, "one revision split over responses: {responses:?}");
    assert!(watch.revision() >= events[3].revision);

    // Watches (linearizable by default) are served by any member, followers included.
    let nodes: std::collections::BTreeSet<_> = (0..3)
        .map(|_| client.watch(WatchOptions::key(b"spread")).expect("watch"))
        .map(|watch| watch.node().expect("served"))
        .collect();
    assert!(nodes.len() >= 2, "every watch went to {nodes:?}");

    // Filters, and a start in the past replayed from the history.
    let mut deletes = client
        .watch(WatchOptions::prefix(b"cfg/").start(LogIndex(1)).no_put())
        .expect("watch");
    let (replayed, _) = collect(&mut deletes, 1);
    assert_eq!(keys(&replayed), vec![(Delete, "cfg/a".into())]);
    let mut from_txn = client
        .watch(WatchOptions::key(b"cfg/b").start(txn.revision))
        .expect("watch");
    let (replayed, _) = collect(&mut from_txn, 1);
    assert_eq!(keys(&replayed), vec![(Put, "cfg/b".into())]);
}

#[test]
fn a_start_that_left_the_history_is_compacted_and_progress_is_notified() {
    let limits = HistoryLimits {
        revisions: 5,
        bytes: u64::MAX,
    };
    let cluster = TestCluster::start_with_store(
        3,
        false,
        |_| {},
        move || KvStore::with_history_limits(limits),
    );
    cluster.wait_leader();
    let client = cluster.client();
    let mut last = LogIndex(0);
    for index in 0..10 {
        last = client.put(b"k".to_vec(), vec![index]).unwrap().mod_revision;
    }
    // Every node applied the last write (the watch may go to any).
    assert!(server_support::wait_for(|| cluster
        .nodes
        .iter()
        .flatten()
        .all(|running| running.node.status().applied >= last)));
    match client.watch(WatchOptions::key(b"k").start(LogIndex(1))) {
        Err(ClientError::Compacted { compact_revision }) => {
            assert!(compact_revision >= LogIndex(1) && compact_revision < last)
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // A progress notification says the watch is up to date at the applied index.
    let mut watch = client
        .watch(WatchOptions::key(b"quiet").progress_interval(Duration::from_millis(200)))
        .expect("watch");
    let deadline = Instant::now() + WAIT;
    let progress = loop {
        assert!(Instant::now() < deadline, "no progress notification");
        if let Some(response) = watch.recv_timeout(Duration::from_millis(500)).unwrap() {
            break response;
        }
    };
    assert!(progress.is_progress());
    assert!(progress.revision >= last);
}

fn send(stream: &mut TcpStream, request_id: u64, body: RequestBody) {
    let mut bytes = Vec::new();
    let frame = RequestFrame {
        request_id,
        timeout_ms: 5000,
        body,
    };
    write_frame(&frame, &mut bytes).unwrap();
    stream.write_all(&bytes).unwrap();
}

fn watch_request(range: KeyRange) -> RequestBody {
    RequestBody::Watch(WatchRequest {
        range,
        ..WatchRequest::default()
    })
}

#[test]
fn many_watches_share_one_connection_and_a_reader_that_stops_holds_nobody_back() {
    let cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let address = cluster.address(leader);
    let client = cluster.client();

    // Three watches on one raw connection, demultiplexed by their request ids.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    send(&mut stream, 1, watch_request(KeyRange::prefix(b"a/")));
    send(&mut stream, 2, watch_request(KeyRange::prefix(b"b/")));
    send(&mut stream, 3, watch_request(KeyRange::single(b"a/1")));
    let mut reader = FrameReader::new();
    let mut created = 0;
    while created < 3 {
        let frame: ResponseFrame = reader.read_frame(&mut stream).unwrap();
        assert!(
            matches!(frame.result, Ok(ResponseBody::WatchCreated(_))),
            "{frame:?}"
        );
        created += 1;
    }
    client.put(b"a/1".to_vec(), b"x".to_vec()).unwrap();
    client.put(b"b/1".to_vec(), b"y".to_vec()).unwrap();
    client.put(b"a/2".to_vec(), b"z".to_vec()).unwrap();
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    while seen.values().map(Vec::len).sum::<usize>() < 4 {
        let frame: ResponseFrame = reader.read_frame(&mut stream).unwrap();
        if let Ok(ResponseBody::WatchEvents(events)) = frame.result {
            assert_eq!(events.watch, frame.request_id);
            for event in events.events {
                seen.entry(frame.request_id)
                    .or_default()
                    .push(String::from_utf8_lossy(&event.key).into_owned());
            }
        }
    }
    assert_eq!(seen[&1], vec!["a/1", "a/2"]);
    assert_eq!(seen[&2], vec!["b/1"]);
    assert_eq!(seen[&3], vec!["a/1"]);
    // Cancel one: its stream ends, the others go on.
    send(&mut stream, 4, RequestBody::WatchCancel { watch: 3 });

    // A connection whose watch takes no output: the writes and another watcher go on.
    let mut stalled = TcpStream::connect(&address).unwrap();
    send(&mut stalled, 1, watch_request(KeyRange::prefix(b"big/")));
    let mut live = client.watch(WatchOptions::prefix(b"big/")).expect("watch");
    let value = vec![7u8; 64 * 1024];
    let writes = 64;
    let started = Instant::now();
    for index in 0..writes {
        client
            .put(format!("big/{index}").into_bytes(), value.clone())
            .unwrap();
    }
    let (events, _) = collect(&mut live, writes);
    assert_eq!(events.len(), writes, "the live watcher got everything");
    assert!(started.elapsed() < WAIT);
    // The stalled reader's connection still answers in order once it reads: whatever it was
    // sent is contiguous from the first write.
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = FrameReader::new();
    let mut received = Vec::new();
    while let Ok(frame) = reader.read_frame::<ResponseFrame>(&mut stalled) {
        match frame.result {
            Ok(ResponseBody::WatchEvents(body)) => received.extend(body.events),
            Ok(ResponseBody::WatchCreated(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
        if received.len() == writes {
            break;
        }
    }
    let expected: Vec<String> = (0..writes).map(|index| format!("big/{index}")).collect();
    let got: Vec<String> = received
        .iter()
        .map(|event| String::from_utf8_lossy(&event.key).into_owned())
        .collect();
    assert_eq!(got, expected[..got.len()].to_vec());
    assert_eq!(got.len(), writes, "it caught up once it read");
}

#[test]
fn a_client_watch_resumes_on_another_node_without_gaps_or_repeats() {
    let mut cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = cluster.client();
    let mut watch = client
        .watch(WatchOptions::prefix(b"n/").silence_timeout(Duration::from_secs(2)))
        .expect("watch");
    let writer = {
        let client = client.clone();
        std::thread::spawn(move || {
            let mut written = Vec::new();
            for index in 0..300u32 {
                let key = format!("n/{index:04}").into_bytes();
                match client.put(key.clone(), index.to_be_bytes().to_vec()) {
                    Ok(metadata) => written.push((metadata.mod_revision, key)),
                    Err(error) => panic!("put {index}: {error}"),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            written
        })
    };
    let (mut events, _) = collect(&mut watch, 50);
    // Stop the node serving the watch; the cluster keeps a majority.
    let serving = watch.node().expect("served").0 as usize - 1;
    cluster.stop(serving);
    let written = writer.join().unwrap();
    let (rest, _) = collect(&mut watch, written.len() - events.len());
    events.extend(rest);
    let seen: Vec<(LogIndex, Vec<u8>)> = events
        .iter()
        .map(|event| (event.revision, event.key.clone()))
        .collect();
    assert_eq!(seen, written, "every write exactly once, in order");
    assert_ne!(watch.node(), Some(keyval::NodeId(serving as u64 + 1)));
}
