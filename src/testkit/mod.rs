//! The in-process multi-node harness.
pub mod linearizability;
