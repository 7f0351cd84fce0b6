//! The peer transport over real TCP on 127.0.0.1: delivery both ways, order, reconnect with
//! backoff, hostile bytes on the peer port, handshake refusal and prompt shutdown. Method:
//! transports on ephemeral ports exchanging a small serde message type; every check waits on
//! a condition with a deadline of seconds, never on a sleep. Node ids differ between tests
//! because tests run in parallel and thread names carry them.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use keyval::codec;
use keyval::limits::{FRAME_BYTES_MAX, INBOUND_QUEUE_CAPACITY};
use keyval::transport::tcp::{Handshake, TcpConfig, TcpTransport, TransportStats};
use keyval::transport::Deliver;
use keyval::NodeId;
use serde::{Deserialize, Serialize};

const CLUSTER: u64 = 0x6b76;
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum TestMessage {
    Ping { sequence: u64 },
    Blob(Vec<u8>),
}

/// A transport and the receiving end of its inbound queue.
struct Peer {
    id: NodeId,
    transport: TcpTransport<TestMessage>,
    inbound: Receiver<(NodeId, TestMessage)>,
}

impl Peer {
    fn start(id: u64, listen: SocketAddr, peers: &[(u64, SocketAddr)]) -> Peer {
        Peer::start_with(config(id, CLUSTER, listen, peers), INBOUND_QUEUE_CAPACITY)
    }

    fn start_with(config: TcpConfig, inbound_capacity: usize) -> Peer {
        let (sender, inbound) = crossbeam_channel::bounded(inbound_capacity);
        let id = config.id;
        let transport = TcpTransport::start(config, sender).expect("transport starts");
        Peer {
            id,
            transport,
            inbound,
        }
    }

    fn address(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    fn stats(&self) -> TransportStats {
        self.transport.stats()
    }
}

fn config(id: u64, cluster_id: u64, listen: SocketAddr, peers: &[(u64, SocketAddr)]) -> TcpConfig {
    let peers: BTreeMap<NodeId, SocketAddr> = peers
        .iter()
        .map(|(peer, address)| (NodeId(*peer), *address))
        .collect();
    let mut config = TcpConfig::new(NodeId(id), cluster_id, listen, peers);
    // Short enough that reconnect tests take well under a second per retry.
    config.backoff_max = Duration::from_millis(200);
    config
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An address nothing listens on (bound, then released).
fn unused_address() -> SocketAddr {
    TcpListener::bind(any_port()).unwrap().local_addr().unwrap()
}

/// Starts transports with the given ids, all knowing each other.
fn mesh(ids: &[u64]) -> Vec<Peer> {
    let peers: Vec<Peer> = ids
        .iter()
        .map(|id| Peer::start(*id, any_port(), &[]))
        .collect();
    for peer in &peers {
        for other in &peers {
            if other.id != peer.id {
                peer.transport
                    .set_peer_address(other.id, other.address())
                    .unwrap();
            }
        }
    }
    peers
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends pings from `from` to `to` until one arrives (connections and backoff may eat the
/// first ones); returns once the link works. Other messages received meanwhile are ignored.
fn ping_until_received(from: &Peer, to: &Peer) {
    let deadline = Instant::now() + DEADLINE;
    let marker = u64::MAX - from.id.0;
    loop {
        from.transport
            .send(to.id, TestMessage::Ping { sequence: marker });
        if let Ok((sender, message)) = to.inbound.recv_timeout(Duration::from_millis(20)) {
            if sender == from.id && message == (TestMessage::Ping { sequence: marker }) {
                // Discard duplicates of the marker still in flight.
                while to.inbound.recv_timeout(Duration::from_millis(20)).is_ok() {}
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached {}",
            from.id,
            to.id
        );
    }
}

fn receive(peer: &Peer) -> (NodeId, TestMessage) {
    peer.inbound
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{} received nothing", peer.id))
}

#[test]
fn two_transports_exchange_messages_both_ways() {
    let peers = mesh(&[1, 2]);
    let (one, two) = (&peers[0], &peers[1]);
    one.transport
        .send(two.id, TestMessage::Ping { sequence: 7 });
    assert_eq!(receive(two), (one.id, TestMessage::Ping { sequence: 7 }));
    two.transport
        .send(one.id, TestMessage::Blob(b"hello".to_vec()));
    assert_eq!(receive(one), (two.id, TestMessage::Blob(b"hello".to_vec())));
    // The writer counts a frame after its write returns, which may be after it arrived.
    wait_until("the frame sent is counted", || one.stats().frames_sent == 1);
    assert_eq!(one.stats().frames_received, 1);
    assert_eq!(one.stats().connections_accepted, 1);
}

#[test]
fn three_transports_exchange_messages_between_every_pair() {
    let peers = mesh(&[11, 12, 13]);
    for from in &peers {
        for to in &peers {
            if from.id != to.id {
                from.transport.send(
                    to.id,
                    TestMessage::Ping {
                        sequence: from.id.0,
                    },
                );
            }
        }
    }
    for to in &peers {
        let mut senders: Vec<u64> = (0..2).map(|_| receive(to).0 .0).collect();
        senders.sort();
        let expected: Vec<u64> = peers
            .iter()
            .map(|peer| peer.id.0)
            .filter(|id| *id != to.id.0)
            .collect();
        assert_eq!(senders, expected, "senders seen by {}", to.id);
    }
}

#[test]
fn many_messages_arrive_in_order() {
    let peers = mesh(&[21, 22]);
    let (one, two) = (&peers[0], &peers[1]);
    ping_until_received(one, two);
    // Batches below the queue capacity, so that nothing is dropped for a full queue.
    const BATCHES: u64 = 10;
    const BATCH: u64 = 2_000;
    let started = Instant::now();
    for batch in 0..BATCHES {
        for sequence in batch * BATCH..(batch + 1) * BATCH {
            one.transport.send(two.id, TestMessage::Ping { sequence });
        }
        for expected in batch * BATCH..(batch + 1) * BATCH {
            assert_eq!(
                receive(two),
                (one.id, TestMessage::Ping { sequence: expected })
            );
        }
    }
    let elapsed = started.elapsed();
    // The writer counts a frame after its write returns, which may be after it arrived.
    wait_until("every frame is counted", || {
        one.stats().frames_sent > BATCHES * BATCH
    });
    let stats = one.stats();
    assert_eq!(stats.dropped_queue_full + stats.dropped_unreachable, 0);
    eprintln!(
        "{} small messages in {elapsed:?} ({:.0} messages/s)",
        BATCHES * BATCH,
        (BATCHES * BATCH) as f64 / elapsed.as_secs_f64()
    );
}

/// Records what a direct target was handed, batch by batch, with the thread that handed it.
#[derive(Default)]
struct Recorder {
    batches: parking_lot::Mutex<Vec<(String, NodeId, Vec<TestMessage>)>>,
}

impl Deliver<TestMessage> for Recorder {
    fn deliver(&self, from: NodeId, messages: &mut Vec<TestMessage>) {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.batches
            .lock()
            .push((thread, from, std::mem::take(messages)));
    }
}

impl Recorder {
    fn messages(&self) -> Vec<TestMessage> {
        let batches = self.batches.lock();
        batches
            .iter()
            .flat_map(|(_, _, messages)| messages.iter().cloned())
            .collect()
    }
}

#[test]
fn direct_delivery_hands_batches_in_order_on_the_reader_thread() {
    let peers = mesh(&[24, 25]);
    let (one, two) = (&peers[0], &peers[1]);
    ping_until_received(one, two);
    let recorder = Arc::new(Recorder::default());
    assert!(two
        .transport
        .deliver_directly(Arc::clone(&recorder) as Arc<dyn Deliver<TestMessage>>));
    assert!(!two
        .transport
        .deliver_directly(Arc::new(Recorder::default()) as Arc<dyn Deliver<TestMessage>>));
    const COUNT: u64 = 3_000;
    for sequence in 0..COUNT {
        one.transport.send(two.id, TestMessage::Ping { sequence });
    }
    wait_until("every message is delivered", || {
        recorder.messages().len() as u64 >= COUNT
    });
    let expected: Vec<TestMessage> = (0..COUNT)
        .map(|sequence| TestMessage::Ping { sequence })
        .collect();
    assert_eq!(recorder.messages(), expected);
    for (thread, from, messages) in recorder.batches.lock().iter() {
        assert_eq!(thread, "n25-peer-recv");
        assert_eq!(*from, one.id);
        assert!(!messages.is_empty() && messages.len() <= 512);
    }
    assert!(two.inbound.is_empty(), "nothing goes through the queue");
}

#[test]
fn large_messages_arrive_intact() {
    let peers = mesh(&[31, 32]);
    let (one, two) = (&peers[0], &peers[1]);
    let blob: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|index| (index % 251) as u8)
        .collect();
    for _ in 0..3 {
        one.transport.send(two.id, TestMessage::Blob(blob.clone()));
    }
    for _ in 0..3 {
        assert_eq!(receive(two), (one.id, TestMessage::Blob(blob.clone())));
    }
}

#[test]
fn peer_started_later_is_reached_after_backoff() {
    let later_address = unused_address();
    let early = Peer::start(41, any_port(), &[(42, later_address)]);
    // Fail a few connection attempts so that the backoff has grown.
    wait_until("connection attempts fail", || {
        early
            .transport
            .send(NodeId(42), TestMessage::Ping { sequence: 0 });
        early.stats().connect_failures >= 3
    });
    let later = Peer::start(42, later_address, &[(41, early.address())]);
    ping_until_received(&early, &later);
    ping_until_received(&later, &early);
    assert!(early.stats().dropped_unreachable > 0);
}

#[test]
fn restarted_peer_on_the_same_port_is_reconnected() {
    let mut peers = mesh(&[51, 52]);
    ping_until_received(&peers[0], &peers[1]);
    let address = peers[1].address();
    peers.pop().unwrap().transport.shutdown();
    let restarted = Peer::start(52, address, &[(51, peers[0].address())]);
    ping_until_received(&peers[0], &restarted);
    assert!(peers[0].stats().connections_opened >= 2);
}

#[test]
fn moved_peer_is_dialled_at_its_new_address() {
    let mut peers = mesh(&[55, 56]);
    ping_until_received(&peers[0], &peers[1]);
    peers.pop().unwrap().transport.shutdown();
    let moved = Peer::start(56, any_port(), &[(55, peers[0].address())]);
    peers[0]
        .transport
        .set_peer_address(moved.id, moved.address())
        .unwrap();
    assert_eq!(peers[0].transport.peers()[&moved.id], moved.address());
    ping_until_received(&peers[0], &moved);
}

/// Opens a raw connection to `target`, optionally sending a handshake first.
fn raw_connection(target: SocketAddr, handshake: Option<Handshake>) -> TcpStream {
    let mut stream = TcpStream::connect(target).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    if let Some(handshake) = handshake {
        let mut bytes = Vec::new();
        codec::write_value_record(&handshake, &mut bytes).unwrap();
        stream.write_all(&bytes).unwrap();
    }
    stream
}

/// Waits for the transport to close `stream` (end of stream or reset, not a timeout).
fn assert_closed_by_remote(mut stream: TcpStream) {
    let mut scratch = [0u8; 64];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => {
                assert!(
                    !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "the transport did not close the connection"
                );
                return;
            }
        }
    }
}

/// Sends `bytes` after a valid handshake from a known peer id (and then ends the stream when
/// `end_stream`), checks that the connection is closed and counted, and that the legitimate
/// peer still gets through.
fn hostile_frame_closes_only_its_connection(first_id: u64, bytes: &[u8], end_stream: bool) {
    let impostor = first_id + 2;
    let peers = mesh(&[first_id, first_id + 1]);
    let (honest, target) = (&peers[0], &peers[1]);
    target
        .transport
        .set_peer_address(NodeId(impostor), unused_address())
        .unwrap();
    ping_until_received(honest, target);
    let mut stream = raw_connection(
        target.address(),
        Some(Handshake::new(CLUSTER, NodeId(impostor))),
    );
    stream.write_all(bytes).unwrap();
    if end_stream {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    assert_closed_by_remote(stream);
    wait_until("the bad frame is counted", || {
        target.stats().connections_closed_bad_frame == 1
    });
    ping_until_received(honest, target);
    assert_eq!(target.stats().connections_accepted, 2);
}

#[test]
fn oversized_length_prefix_closes_the_connection() {
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4]);
    hostile_frame_closes_only_its_connection(61, &bytes, false);
}

#[test]
fn bad_checksum_closes_the_connection() {
    let mut bytes = Vec::new();
    codec::write_value_record(&TestMessage::Ping { sequence: 1 }, &mut bytes).unwrap();
    bytes[4] ^= 0xFF;
    hostile_frame_closes_only_its_connection(64, &bytes, false);
}

#[test]
fn undecodable_frame_closes_the_connection() {
    let mut bytes = Vec::new();
    codec::write_record(&[0xFF; 16], &mut bytes);
    hostile_frame_closes_only_its_connection(67, &bytes, false);
}

#[test]
fn truncated_frame_at_end_of_stream_closes_the_connection() {
    let mut bytes = Vec::new();
    codec::write_value_record(&TestMessage::Blob(vec![9; 100]), &mut bytes).unwrap();
    bytes.truncate(50);
    hostile_frame_closes_only_its_connection(70, &bytes, true);
}

#[test]
fn frames_read_together_with_a_bad_one_are_delivered_before_the_connection_closes() {
    let peers = mesh(&[73, 74]);
    let target = &peers[1];
    let impostor = NodeId(77);
    target
        .transport
        .set_peer_address(impostor, unused_address())
        .unwrap();
    let mut bytes = Vec::new();
    for sequence in [1, 2] {
        codec::write_value_record(&TestMessage::Ping { sequence }, &mut bytes).unwrap();
    }
    let bad_at = bytes.len();
    codec::write_value_record(&TestMessage::Ping { sequence: 3 }, &mut bytes).unwrap();
    bytes[bad_at + 4] ^= 0xFF; // the third frame's checksum
    let mut stream = raw_connection(target.address(), Some(Handshake::new(CLUSTER, impostor)));
    stream.write_all(&bytes).unwrap();
    assert_closed_by_remote(stream);
    assert_eq!(
        receive(target),
        (impostor, TestMessage::Ping { sequence: 1 })
    );
    assert_eq!(
        receive(target),
        (impostor, TestMessage::Ping { sequence: 2 })
    );
    wait_until("the bad frame is counted", || {
        target.stats().connections_closed_bad_frame == 1
    });
    assert!(target.inbound.is_empty());
}

#[test]
fn message_larger_than_a_frame_is_dropped_and_later_ones_arrive() {
    let peers = mesh(&[75, 76]);
    let (one, two) = (&peers[0], &peers[1]);
    let too_large = vec![0u8; FRAME_BYTES_MAX as usize + 1];
    one.transport.send(two.id, TestMessage::Blob(too_large));
    one.transport
        .send(two.id, TestMessage::Ping { sequence: 3 });
    assert_eq!(receive(two), (one.id, TestMessage::Ping { sequence: 3 }));
    assert_eq!(one.stats().dropped_unencodable, 1);
}

#[test]
fn connection_without_a_handshake_is_closed_after_the_timeout() {
    let mut config = config(78, CLUSTER, any_port(), &[]);
    config.handshake_timeout = Duration::from_millis(200);
    let target = Peer::start_with(config, INBOUND_QUEUE_CAPACITY);
    let idle = raw_connection(target.address(), None);
    assert_closed_by_remote(idle);
    assert_eq!(target.stats().connections_rejected, 1);
}

/// Connects raw with `handshake` (or plain garbage when `None`) and expects a refusal.
fn refused(target: &Peer, handshake: Option<Handshake>) {
    let rejected = target.stats().connections_rejected;
    let mut stream = raw_connection(target.address(), handshake.clone());
    if handshake.is_none() {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: keyval\r\n\r\n")
            .unwrap();
    }
    assert_closed_by_remote(stream);
    wait_until("the refusal is counted", || {
        target.stats().connections_rejected == rejected + 1
    });
}

#[test]
fn bad_handshakes_are_refused_and_honest_peers_keep_working() {
    let peers = mesh(&[81, 82]);
    let (honest, target) = (&peers[0], &peers[1]);
    refused(target, None);
    refused(target, Some(Handshake::new(CLUSTER + 1, honest.id)));
    refused(target, Some(Handshake::new(CLUSTER, NodeId(999))));
    let mut old_version = Handshake::new(CLUSTER, honest.id);
    old_version.protocol_version = 0;
    refused(target, Some(old_version));
    let mut bad_magic = Handshake::new(CLUSTER, honest.id);
    bad_magic.magic = *b"HTTP/1.1";
    refused(target, Some(bad_magic));
    ping_until_received(honest, target);
    assert_eq!(target.stats().connections_closed_bad_frame, 0);
}

#[test]
fn transport_of_another_cluster_is_refused() {
    let target = Peer::start(91, any_port(), &[(92, unused_address())]);
    let stranger = Peer::start_with(
        config(92, CLUSTER + 1, any_port(), &[(91, target.address())]),
        INBOUND_QUEUE_CAPACITY,
    );
    wait_until("the stranger is refused", || {
        stranger
            .transport
            .send(target.id, TestMessage::Ping { sequence: 1 });
        target.stats().connections_rejected >= 1
    });
    assert!(target.inbound.try_recv().is_err());
    assert_eq!(target.stats().frames_received, 0);
}

#[test]
fn removed_peer_is_refused() {
    let peers = mesh(&[95, 96]);
    let (one, two) = (&peers[0], &peers[1]);
    ping_until_received(one, two);
    two.transport.remove_peer(one.id);
    assert!(two.transport.peers().is_empty());
    refused(two, Some(Handshake::new(CLUSTER, one.id)));
    two.transport
        .send(one.id, TestMessage::Ping { sequence: 1 });
    assert_eq!(two.stats().dropped_unknown_peer, 1);
}

#[test]
fn send_to_unknown_peer_is_dropped_and_counted() {
    let lonely = Peer::start(101, any_port(), &[]);
    for sequence in 0..5 {
        lonely
            .transport
            .send(NodeId(7), TestMessage::Ping { sequence });
    }
    // Sending to itself is not a peer either.
    lonely
        .transport
        .send(lonely.id, TestMessage::Ping { sequence: 5 });
    assert_eq!(lonely.stats().dropped_unknown_peer, 6);
    assert_eq!(lonely.stats().frames_sent, 0);
}

/// Names of this process's threads that start with `prefix` (Linux only).
fn threads_named(prefix: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[test]
fn shutdown_is_prompt_with_live_connections_and_a_peer_down() {
    let down = unused_address();
    let mut peers = mesh(&[111, 112]);
    peers[0]
        .transport
        .set_peer_address(NodeId(113), down)
        .unwrap();
    ping_until_received(&peers[0], &peers[1]);
    ping_until_received(&peers[1], &peers[0]);
    // An idle connection that never finishes its handshake.
    let _idle = raw_connection(peers[0].address(), None);
    wait_until("the down peer is failing", || {
        peers[0]
            .transport
            .send(NodeId(113), TestMessage::Ping { sequence: 0 });
        peers[0].stats().connect_failures >= 1
    });
    if cfg!(target_os = "linux") {
        // Listen, two senders, and readers for the honest peer and the idle connection.
        wait_until("every thread is running", || {
            threads_named("n111-peer").len() >= 5
        });
    }
    let first = peers.remove(0);
    let started = Instant::now();
    first.transport.shutdown();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "shutdown took {elapsed:?}"
    );
    assert!(threads_named("n111-peer").is_empty());
    // Dropping works the same way.
    drop(peers);
    assert!(threads_named("n112-peer").is_empty());
}

#[test]
fn stuck_consumer_does_not_wedge_readers_or_shutdown() {
    let one = Peer::start(121, any_port(), &[]);
    let two = Peer::start_with(config(122, CLUSTER, any_port(), &[(121, one.address())]), 1);
    one.transport
        .set_peer_address(two.id, two.address())
        .unwrap();
    wait_until("the full inbound queue drops messages", || {
        for sequence in 0..10 {
            one.transport.send(two.id, TestMessage::Ping { sequence });
        }
        two.stats().dropped_inbound_full >= 3
    });
    let started = Instant::now();
    two.transport.shutdown();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(two.inbound.len(), 1);
}

#[test]
fn transport_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TcpTransport<TestMessage>>();
}

/// Throughput of 256-byte messages from one node to another, keeping at most two windows of
/// 1,000 messages in flight so that the peer queue (4,096) never overflows. Run with
/// `cargo test --release --test transport_tcp -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn throughput_of_256_byte_messages() {
    let peers = mesh(&[131, 132]);
    let (one, two) = (&peers[0], &peers[1]);
    ping_until_received(one, two);
    const MESSAGES: u64 = 1_000_000;
    const WINDOW: u64 = 1_000;
    let consumer = {
        let inbound = two.inbound.clone();
        std::thread::spawn(move || {
            let mut received = 0u64;
            while inbound.recv_timeout(Duration::from_millis(500)).is_ok() {
                received += 1;
            }
            received
        })
    };
    let baseline = two.stats().frames_received;
    let started = Instant::now();
    let mut offered = 0;
    while offered < MESSAGES {
        for _ in 0..WINDOW {
            one.transport.send(two.id, TestMessage::Blob(vec![7; 256]));
        }
        offered += WINDOW;
        while two.stats().frames_received - baseline + WINDOW < offered {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    wait_until("everything is received", || {
        two.stats().frames_received - baseline >= MESSAGES
    });
    let elapsed = started.elapsed();
    let sent = one.stats();
    let delivered = consumer.join().unwrap();
    eprintln!(
        "{MESSAGES} messages of 256 bytes in {elapsed:?}: {:.0} messages/s, {:.1} MB/s; \
         {} dropped, {delivered} delivered",
        MESSAGES as f64 / elapsed.as_secs_f64(),
        sent.bytes_sent as f64 / elapsed.as_secs_f64() / 1e6,
        sent.dropped_queue_full + sent.dropped_unreachable,
    );
    assert_eq!(sent.dropped_queue_full + sent.dropped_unreachable, 0);
    assert_eq!(delivered, MESSAGES);
}
