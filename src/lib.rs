//! keyval: a strongly consistent, Raft-replicated key-value store, and Raft as a blocking
//! library with its storage and transport included.
#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod error;
pub mod kv;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod raft;
pub mod recipes;
pub mod server;
pub mod state_machine;
pub mod storage;
pub mod testkit;
pub mod tls;
pub mod transport;
pub mod types;

pub use config::Config;
pub use error::{Error, MembershipError, ProposeError, ReadError, StorageError};
pub use raft::MemberChange;
pub use state_machine::StateMachine;
pub use types::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, MemberAddress, Membership, NodeId, Term,
};
