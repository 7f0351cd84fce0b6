//! Raft as a blocking library: a node with your own `StateMachine`, keyval's file storage and
//! its TCP transport. A single voter here; give `membership` more ids and `TcpConfig` their
//! addresses for a real cluster.
//!
//! Run: `cargo run --example embedded`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyval::node::{Node, NodeOptions};
use keyval::raft::{Message, RoleKind};
use keyval::state_machine::RestoreError;
use keyval::storage::file::{FileOptions, FileStorage};
use keyval::transport::tcp::{TcpConfig, TcpTransport};
use keyval::transport::{inbound_channel, Transport};
use keyval::{Config, EntryId, Membership, NodeId, StateMachine};

/// Your replicated state: a counter that commands add to.
#[derive(Default)]
struct Counter {
    total: i64,
}

impl StateMachine for Counter {
    fn apply(&mut self, _id: EntryId, command: &[u8]) -> Vec<u8> {
        let delta = command
            .try_into()
            .map(i64::from_le_bytes)
            .unwrap_or_default();
        self.total += delta;
        self.total.to_le_bytes().to_vec()
    }

    fn snapshot(&mut self) -> Vec<u8> {
        self.total.to_le_bytes().to_vec()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), RestoreError> {
        let bytes: [u8; 8] = data.try_into()?;
        self.total = i64::from_le_bytes(bytes);
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let id = NodeId(1);
    let data_dir = tempfile::tempdir()?;
    let storage = FileStorage::open(data_dir.path(), FileOptions::default())?;

    let (inbound_tx, inbound_rx) = inbound_channel();
    let tcp = TcpConfig::new(id, 1, "127.0.0.1:0".parse()?, BTreeMap::new());
    let transport: Arc<dyn Transport> = Arc::new(TcpTransport::<Message>::start(tcp, inbound_tx)?);

    let node = Node::start(NodeOptions {
        config: Config::new(id),
        membership: Membership::new([id]),
        storage: Box::new(storage),
        transport,
        inbound: inbound_rx,
        state_machine: Counter::default(),
        seed: rand::random(),
    })?;

    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status().role != RoleKind::Leader {
        anyhow::ensure!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(10));
    }
    for delta in [5i64, 10, -3] {
        let response = node.propose(delta.to_le_bytes().to_vec(), deadline)?;
        let total = i64::from_le_bytes(response.as_slice().try_into()?);
        println!("added {delta:>3}: total {total}");
    }
    // A linearizable read: confirm leadership, wait until applied, then read.
    let total = node.read(deadline, |counter| counter.total)?;
    println!("linearizable read: {total}");
    node.shutdown();
    Ok(())
}
