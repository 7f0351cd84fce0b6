//! Every bound in keyval, named, with the relations between them checked at compile time.
//!
//! A limit that is not written down is a limit discovered in production. Each queue is bounded
//! by one of these, each decoder refuses anything larger than one of these.

/// The largest command a client may propose, in bytes.
pub const COMMAND_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// AppendEntries carries entries up to this many bytes (at least one entry, however large).
pub const MESSAGE_ENTRIES_BYTES_MAX: u64 = 1024 * 1024;

/// A leader keeps at most this many AppendEntries in flight to one follower.
pub const INFLIGHT_MESSAGES_MAX: usize = 256;

/// ... and at most this many bytes of entries in flight to one follower.
pub const INFLIGHT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A leader refuses new proposals while this many bytes of its log are uncommitted.
pub const UNCOMMITTED_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// At most this many bytes of committed entries are handed to the applier per Ready.
pub const COMMITTED_BYTES_PER_READY_MAX: u64 = 8 * 1024 * 1024;

/// A leader queues at most this many pending read-index requests.
pub const PENDING_READS_MAX: usize = 4096;

/// The largest frame (peer message or client request) any decoder accepts.
pub const FRAME_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// The largest single record (one encoded entry or hard state) in a storage file.
pub const RECORD_BYTES_MAX: u64 = COMMAND_BYTES_MAX + 4096;

/// The largest term any message or file may carry. Real clusters never come near it (a new
/// term every millisecond for a hundred million years); the bound is there so that hostile or
/// corrupt input can never overflow a term (found by fuzzing: a TimeoutNow at `u64::MAX`).
pub const TERM_MAX: u64 = 1 << 62;

/// The largest log index any message or file may carry (same reasoning as [`TERM_MAX`]).
pub const INDEX_MAX: u64 = 1 << 62;

/// InstallSnapshot streams a snapshot in chunks of this many bytes.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// The largest snapshot a follower accepts from a leader.
pub const SNAPSHOT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Capacity of a node's inbound message queue (messages from peers, before stepping).
pub const INBOUND_QUEUE_CAPACITY: usize = 8192;

/// Capacity of each per-peer outbound queue (batches of messages).
pub const PEER_QUEUE_CAPACITY: usize = 4096;

/// The largest election timeout, in ticks, a configuration may ask for.
pub const ELECTION_TICKS_MAX: u64 = 10_000;

// A single maximal entry plus a full batch must fit in one frame.
const _: () = assert!(MESSAGE_ENTRIES_BYTES_MAX + COMMAND_BYTES_MAX + 4096 < FRAME_BYTES_MAX);
// A full in-flight window must hold at least one maximal message.
const _: () = assert!(INFLIGHT_BYTES_MAX >= MESSAGE_ENTRIES_BYTES_MAX + COMMAND_BYTES_MAX);
// The uncommitted cap must admit at least one maximal command.
const _: () = assert!(UNCOMMITTED_BYTES_MAX > COMMAND_BYTES_MAX);
const _: () = assert!(RECORD_BYTES_MAX <= FRAME_BYTES_MAX);
// A snapshot chunk and its header fit one frame.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES + 64 * 1024 < FRAME_BYTES_MAX);
