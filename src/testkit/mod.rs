//! The in-process multi-node harness, public so that users can test their own code against a
//! real cluster without processes or ports.
//!
//! - [`Cluster`]: N threaded nodes over the simulated network — partitions, cut links, loss,
//!   delay, long reordering, crash and restart from durable state — with a record of what
//!   every node applied and a state-machine-safety check. A failing test prints the seed;
//!   `KEYVAL_SEED=<seed>` replays its random choices.
//! - [`CoreNetwork`]: pure Raft cores in one thread, messages moved by the test
//!   (deterministic; for protocol tests).
//! - [`linearizability`]: record concurrent clients' operations and check that the history is
//!   linearizable (Wing–Gong/Lowe search, partitioned by key; unknown outcomes allowed).
//! - [`simulation`]: seeded deterministic simulation of pure cores under faults, with the
//!   Raft safety properties checked after every step.
//!
//! ```
//! use std::time::Duration;
//! use keyval::testkit::Cluster;
//!
//! let cluster = Cluster::new(3);
//! let leader = cluster.wait_for_leader(Duration::from_secs(10));
//! cluster.propose(b"hello", Duration::from_secs(10)).unwrap();
//! cluster.disconnect(leader);
//! let new_leader = cluster.wait_for_new_leader(leader, Duration::from_secs(10));
//! assert_ne!(new_leader, leader);
//! cluster.check_applied_agreement().unwrap();
//! ```

mod cluster;
pub mod linearizability;
mod network;
mod recorder;
pub mod simulation;

pub use cluster::{
    Cluster, ClusterBuilder, ClusterNode, CommandLog, StateMachineFactory, StorageKind,
};
pub use network::{CoreNetwork, CoreNode};
pub use recorder::{AppliedRecord, Recorded};
