//! The in-process multi-node harness.
