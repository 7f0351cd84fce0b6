//! The in-process multi-node harness.
//!
//! - [`CoreNetwork`]: pure Raft cores in one thread, messages moved by the test
//!   (deterministic; for protocol tests and simulation).

mod network;

pub use network::{CoreNetwork, CoreNode};
