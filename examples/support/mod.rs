//! Shared by the recipe examples (`counter`, `lock`, `config_service`, `session_store`): the
//! cluster they run against. With `KEYVAL_ENDPOINTS` set (`host:port,...`), a running
//! cluster; otherwise three nodes started in this process, over TCP on 127.0.0.1 (ports
//! picked by the system), with their client servers — gone when the example ends.
//!
//! `tests/examples.rs` includes each example as a module and runs it against such a cluster,
//! so the examples are run, not just built, by `cargo test`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions};
use keyval::kv::KvStore;
use keyval::node::{Node, NodeOptions};
use keyval::raft::{Message, RoleKind};
use keyval::server::{Server, ServerOptions};
use keyval::storage::mem::MemStorage;
use keyval::transport::tcp::{TcpConfig, TcpTransport};
use keyval::transport::{inbound_channel, Transport};
use keyval::{Config, Membership, NodeId};

/// How long the in-process cluster may take to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(20);

/// The cluster an example runs against; an in-process one stops when this is dropped.
pub struct ExampleCluster {
    pub endpoints: Vec<String>,
    nodes: Vec<(Arc<Node<KvStore>>, Server)>,
}

impl ExampleCluster {
    /// `KEYVAL_ENDPOINTS` if set, else three nodes in this process.
    pub fn start() -> anyhow::Result<ExampleCluster> {
        match std::env::var("KEYVAL_ENDPOINTS") {
            Ok(endpoints) if !endpoints.trim().is_empty() => Ok(ExampleCluster {
                endpoints: endpoints.split(',').map(str::to_string).collect(),
                nodes: Vec::new(),
            }),
            _ => ExampleCluster::in_process(3),
        }
    }

    /// `size` nodes in this process, over TCP on 127.0.0.1; returns once one leads.
    pub fn in_process(size: u64) -> anyhow::Result<ExampleCluster> {
        let ids: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let mut transports = Vec::new();
        let mut inbounds = Vec::new();
        for &id in &ids {
            let (inbound_tx, inbound_rx) = inbound_channel();
            let config = TcpConfig::new(id, 1, "127.0.0.1:0".parse()?, BTreeMap::new());
            transports.push(Arc::new(TcpTransport::<Message>::start(
                config, inbound_tx,
            )?));
            inbounds.push(inbound_rx);
        }
        for transport in &transports {
            for (k, other) in transports.iter().enumerate() {
                if !Arc::ptr_eq(transport, other) {
                    transport.set_peer_address(ids[k], other.local_addr())?;
                }
            }
        }
        let mut nodes = Vec::new();
        for ((&id, transport), inbound) in ids.iter().zip(&transports).zip(inbounds) {
            let node = Arc::new(Node::start(NodeOptions {
                config: Config::new(id),
                membership: Membership::new(ids.iter().copied()),
                storage: Box::new(MemStorage::new()),
                transport: Arc::clone(transport) as Arc<dyn Transport>,
                inbound,
                state_machine: KvStore::new(),
                seed: rand::random(),
            })?);
            let server = Server::start(
                Arc::clone(&node),
                ServerOptions::new("127.0.0.1:0".parse()?),
            )?;
            nodes.push((node, server));
        }
        let endpoints = nodes
            .iter()
            .map(|(_, server)| server.local_addr().to_string())
            .collect();
        let deadline = Instant::now() + LEADER_WAIT;
        while !nodes
            .iter()
            .any(|(node, _)| node.status().role == RoleKind::Leader)
        {
            anyhow::ensure!(Instant::now() < deadline, "no leader elected");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(ExampleCluster { endpoints, nodes })
    }

    /// A client of the cluster.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.endpoints, ClientOptions::default())?)
    }
}

impl Drop for ExampleCluster {
    fn drop(&mut self) {
        for (node, mut server) in self.nodes.drain(..) {
            server.shutdown();
            node.shutdown();
        }
    }
}
