//! Shared by the server and client tests: a cluster of real nodes, each with its peer
//! transport and client server on 127.0.0.1, in this process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use keyval::kv::KvStore;
use keyval::node::{Node, NodeOptions};
use keyval::protocol::{write_frame, FrameReader, RequestBody, RequestFrame, ResponseFrame};
use keyval::raft::{Message, RoleKind};
use keyval::server::{Server, ServerOptions};
use keyval::storage::mem::MemStorage;
use keyval::transport::tcp::{TcpConfig, TcpTransport};
use keyval::transport::{inbound_channel, Inbound, Transport};
use keyval::{Config, Membership, NodeId};

/// One TCP transport per id on 127.0.0.1 (a free port each), every one knowing every other's
/// address, with the receiving ends of their inbound queues in the same order.
pub fn tcp_mesh(ids: &[NodeId]) -> (Vec<Arc<TcpTransport<Message>>>, Vec<Receiver<Inbound>>) {
    let mut transports = Vec::new();
    let mut receivers = Vec::new();
    for &id in ids {
        let (inbound_tx, inbound_rx) = inbound_channel();
        let config = TcpConfig::new(id, 7, "127.0.0.1:0".parse().unwrap(), BTreeMap::new());
        let transport = Arc::new(TcpTransport::<Message>::start(config, inbound_tx).unwrap());
        transports.push(transport);
        receivers.push(inbound_rx);
    }
    for transport in &transports {
        for (k, other) in transports.iter().enumerate() {
            if !Arc::ptr_eq(transport, other) {
                transport
                    .set_peer_address(ids[k], other.local_addr())
                    .unwrap();
            }
        }
    }
    (transports, receivers)
}

/// Sends one raw request (id 42) with the given timeout on a new connection and reads one
/// response.
pub fn raw_call(address: &str, body: RequestBody, timeout_ms: u64) -> ResponseFrame {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    write_frame(
        &RequestFrame {
            request_id: 42,
            timeout_ms,
            body,
        },
        &mut bytes,
    )
    .unwrap();
    stream.write_all(&bytes).unwrap();
    FrameReader::new().read_frame(&mut stream).unwrap()
}

/// How long a test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds or [`WAIT`] passes.
pub fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A free port on 127.0.0.1 (bound and released; good enough on a test machine).
///
/// A random address in 127.0.0.0/8 with a random port, checked free: unlike "bind port 0 on
/// 127.0.0.1, release, bind again", nothing running in parallel (tests binding ephemeral
/// ports) is likely to take it in between.
pub fn free_address() -> SocketAddr {
    loop {
        let [b, c, d] = rand::random::<[u8; 3]>();
        let port = 20_000 + rand::random::<u16>() % 40_000;
        let address = SocketAddr::from(([127, b, c, d.max(1)], port));
        if let Ok(listener) = TcpListener::bind(address) {
            drop(listener);
            return address;
        }
    }
}

/// One running node with its server.
pub struct Running {
    pub node: Arc<Node<KvStore>>,
    pub server: Server,
    pub transport: Arc<TcpTransport<Message>>,
}

/// A cluster of nodes over TCP on loopback with client servers.
pub struct TestCluster {
    pub nodes: Vec<Option<Running>>,
    pub client_addresses: BTreeMap<NodeId, String>,
}

impl TestCluster {
    /// Starts `size` nodes; `lease_reads` turns lease reads on.
    pub fn start(size: u64, lease_reads: bool) -> TestCluster {
        TestCluster::start_with(size, lease_reads, |_| {})
    }

    /// [`start`](TestCluster::start), with `configure` adjusting each server's options.
    pub fn start_with(
        size: u64,
        lease_reads: bool,
        configure: impl Fn(&mut ServerOptions),
    ) -> TestCluster {
        TestCluster::start_with_store(size, lease_reads, configure, KvStore::new)
    }

    /// [`start_with`](TestCluster::start_with), each node's store made by `store` (to set its
    /// history limits, say).
    pub fn start_with_store(
        size: u64,
        lease_reads: bool,
        configure: impl Fn(&mut ServerOptions),
        store: impl Fn() -> KvStore,
    ) -> TestCluster {
        let addresses = (0..size).map(|_| free_address().to_string()).collect();
        TestCluster::start_at_with_store(addresses, lease_reads, configure, store)
    }

    /// [`start_with`](TestCluster::start_with) with the client servers on
    /// `client_addresses`, one node per address.
    pub fn start_at(
        client_addresses: Vec<String>,
        lease_reads: bool,
        configure: impl Fn(&mut ServerOptions),
    ) -> TestCluster {
        TestCluster::start_at_with_store(client_addresses, lease_reads, configure, KvStore::new)
    }

    fn start_at_with_store(
        client_addresses: Vec<String>,
        lease_reads: bool,
        configure: impl Fn(&mut ServerOptions),
        store: impl Fn() -> KvStore,
    ) -> TestCluster {
        let ids: Vec<NodeId> = (1..=client_addresses.len() as u64).map(NodeId).collect();
        let membership = Membership::new(ids.iter().copied());
        let client_addresses: BTreeMap<NodeId, String> =
            ids.iter().copied().zip(client_addresses).collect();
        let (transports, receivers) = tcp_mesh(&ids);
        let mut nodes = Vec::new();
        for (k, inbound) in receivers.into_iter().enumerate() {
            let transport: Arc<dyn Transport> = transports[k].clone();
            let mut config = Config::new(ids[k]);
            config.lease_reads = lease_reads;
            let node = Arc::new(
                Node::start(NodeOptions {
                    config,
                    membership: membership.clone(),
                    storage: Box::new(MemStorage::new()),
                    transport,
                    inbound,
                    state_machine: store(),
                    seed: k as u64,
                })
                .unwrap(),
            );
            let mut options = ServerOptions::new(client_addresses[&ids[k]].parse().unwrap());
            options.client_addresses = client_addresses.clone();
            configure(&mut options);
            let server = Server::start(Arc::clone(&node), options).unwrap();
            nodes.push(Some(Running {
                node,
                server,
                transport: Arc::clone(&transports[k]),
            }));
        }
        TestCluster {
            nodes,
            client_addresses,
        }
    }

    /// Every client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_addresses.values().cloned().collect()
    }

    /// A client of every node, with room for a loaded machine: 30 s per call, 5 s per
    /// attempt on one node.
    pub fn client(&self) -> keyval::client::Client {
        let options = keyval::client::ClientOptions {
            request_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            ..keyval::client::ClientOptions::default()
        };
        keyval::client::Client::connect(&self.endpoints(), options).expect("connect")
    }

    /// The position of the current leader, waiting for one.
    pub fn wait_leader(&self) -> usize {
        let mut found = None;
        assert!(
            wait_for(|| {
                found = self.nodes.iter().position(|running| {
                    running
                        .as_ref()
                        .is_some_and(|running| running.node.status().role == RoleKind::Leader)
                });
                found.is_some()
            }),
            "no leader elected"
        );
        found.unwrap()
    }

    /// A node that is not the leader.
    pub fn follower(&self) -> usize {
        let leader = self.wait_leader();
        (0..self.nodes.len())
            .find(|k| *k != leader && self.nodes[*k].is_some())
            .expect("a follower")
    }

    /// The client address of the node at `position`.
    pub fn address(&self, position: usize) -> String {
        self.client_addresses[&NodeId(position as u64 + 1)].clone()
    }

    /// Starts a node `id` that joins the running cluster: its transport first (the address the
    /// cluster is told), then `join` — which asks the cluster to add it and returns the
    /// configuration to start from — then the node, knowing every running node's peer address,
    /// and its server at `client_address`. Returns its position.
    pub fn start_joiner(
        &mut self,
        id: NodeId,
        client_address: String,
        join: impl FnOnce(SocketAddr) -> Membership,
    ) -> usize {
        let (inbound_tx, inbound) = inbound_channel();
        let config = TcpConfig::new(id, 7, "127.0.0.1:0".parse().unwrap(), BTreeMap::new());
        let transport = Arc::new(TcpTransport::<Message>::start(config, inbound_tx).unwrap());
        for running in self.nodes.iter().flatten() {
            transport
                .set_peer_address(running.node.id(), running.transport.local_addr())
                .unwrap();
        }
        let membership = join(transport.local_addr());
        let node = Arc::new(
            Node::start(NodeOptions {
                config: Config::new(id),
                membership,
                storage: Box::new(MemStorage::new()),
                transport: Arc::clone(&transport) as Arc<dyn Transport>,
                inbound,
                state_machine: KvStore::new(),
                seed: id.0,
            })
            .unwrap(),
        );
        let mut options = ServerOptions::new(client_address.parse().unwrap());
        options.client_addresses = self.client_addresses.clone();
        options.client_addresses.insert(id, client_address.clone());
        let server = Server::start(Arc::clone(&node), options).unwrap();
        self.client_addresses.insert(id, client_address);
        self.nodes.push(Some(Running {
            node,
            server,
            transport,
        }));
        self.nodes.len() - 1
    }

    /// Stops the node at `position` (server first, then node and transport).
    pub fn stop(&mut self, position: usize) {
        if let Some(mut running) = self.nodes[position].take() {
            running.server.shutdown();
            running.node.shutdown();
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for position in 0..self.nodes.len() {
            self.stop(position);
        }
    }
}
