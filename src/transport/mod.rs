//! Peer I/O: moving consensus messages between nodes. [`tcp`] is the real network (std TCP,
//! one writer thread per peer, one reader thread per inbound connection).

pub mod tcp;
