//! Segments written into space that is already allocated and zeroed, so that a log fsync
//! writes data and nothing else.
//!
//! A segment that grows with every append changes its size at every `fdatasync`, and on
//! ext4 (any journaling file system) a size change is metadata: each log fsync was also a
//! journal commit, and the journal is shared by every file of the file system — the
//! snapshot pieces being written, the other members' logs on a shared disk — so a log fsync
//! waited behind their metadata and data too. Measured on this machine, three processes each
//! writing 12 KiB + `fdatasync` in a loop beside a snapshot-like writer: appending, p50
//! 0.28 ms and mean 0.31 ms; overwriting a zero-filled file, p50 0.16 ms and mean 0.18 ms.
//! `fallocate` alone would not do: its blocks are "unwritten" extents, and the first write to
//! each converts it, which is a journaled metadata change again. So the space is written
//! with zeros and synced before the segment takes records (etcd's WAL preallocates its
//! segments for the same reason, with `fallocate`).
//!
//! The next segment is prepared ahead of time under a temporary name
//! ([`PREPARED_FILE_NAME`]): on the `storage-preallocate` thread once the active segment is a
//! quarter full ([`Preallocation::Background`]), or at the roll itself
//! ([`Preallocation::Inline`], for the crash tests, which count every operation in order). At
//! a roll the log writer takes it: it writes the segment's header at offset 0, syncs it and
//! renames it to the segment's name, so that a file with a segment's name always has its
//! header. A roll that finds nothing prepared (the thread fell behind) creates the segment the
//! old way, growing as it is written. Recovery reads zeros after a segment's last record as the end of its records, not
//! as damage ([`scan_segment`](super::segment::scan_segment)), and removes a prepared file a
//! crash left behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::io::FileSystem;
use crate::log;

/// The name, in the `wal` directory, of the segment file prepared for the next roll.
pub const PREPARED_FILE_NAME: &str = "prepared.seg.tmp";

/// Zeros are written and synced this many bytes at a time, like a staged snapshot's pieces:
/// a log fsync that arrives meanwhile waits for one piece at most.
const ZERO_PIECE_BYTES: usize = 1024 * 1024;

/// The background thread rests this long after each piece, spreading a segment's zeros over
/// a second or two (a 64 MiB segment fills in 4–5 s at full speed on the machine measured)
/// instead of writing them in one burst that the log's fsyncs queue behind.
const ZERO_PIECE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether and how log segments are preallocated; see the module docs of
/// `storage/file/preallocate.rs` and docs/storage.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    /// Segments grow as records are appended (every log fsync also commits the file's new
    /// size).
    #[default]
    Off,
    /// The next segment is zero-filled to `segment_bytes_max` and synced at the roll, by the
    /// caller: deterministic, for tests (a roll then writes a whole segment of zeros).
    Inline,
    /// The next segment is zero-filled and synced ahead of time on the storage's
    /// `storage-preallocate` thread; the `keyval` node uses this.
    Background,
}

/// Writes `len` zero bytes as the file `path` (replacing it), a piece at a time, syncing each
/// piece when `sync` and resting `pause` after each but the last. Gives up (an `Interrupted`
/// error, the file left partial) once `stop` is set.
pub(super) fn zero_fill(
    file_system: &dyn FileSystem,
    path: &Path,
    len: u64,
    sync: bool,
    pause: std::time::Duration,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_PIECE_BYTES];
    let mut written = 0u64;
    file_system.write_new(path, &[])?;
    while written < len {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the storage is closing",
            ));
        }
        let piece = (len - written).min(ZERO_PIECE_BYTES as u64) as usize;
        file_system.append(path, &zeros[..piece])?;
        written += piece as u64;
        if sync {
            file_system.sync_file(path)?;
        }
        if written < len && !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    if sync && len == 0 {
        file_system.sync_file(path)?;
    }
    Ok(())
}

/// Where the prepared file stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prepared {
    /// Nothing prepared, nothing being prepared.
    Nothing,
    /// The thread is writing it.
    Preparing,
    /// Zero-filled and synced: the next roll may take it.
    Ready,
}

/// The `storage-preallocate` thread, which prepares the next segment file when asked.
/// Dropping it stops a preparation in progress (the partial file is removed at the next
/// open) and joins the thread.
#[derive(Debug)]
pub(super) struct Preallocator {
    state: Arc<Mutex<Prepared>>,
    stop: Arc<AtomicBool>,
    requests: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    /// Starts the thread, which prepares `path` as `len` bytes of zeros each time it is asked;
    /// `None` if it cannot be spawned (rolls then create segments the old way).
    pub(super) fn start(
        file_system: Arc<dyn FileSystem>,
        path: PathBuf,
        len: u64,
        sync: bool,
    ) -> Option<Preallocator> {
        let state = Arc::new(Mutex::new(Prepared::Nothing));
        let stop = Arc::new(AtomicBool::new(false));
        let (requests, asked) = crossbeam_channel::unbounded::<()>();
        let thread_state = Arc::clone(&state);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("storage-preallocate".into())
            .spawn(move || {
                for () in asked {
                    let outcome = zero_fill(
                        file_system.as_ref(),
                        &path,
                        len,
                        sync,
                        ZERO_PIECE_PAUSE,
                        &thread_stop,
                    );
                    let mut state = thread_state.lock();
                    match outcome {
                        Ok(()) => *state = Prepared::Ready,
                        Err(_) if thread_stop.load(Ordering::Relaxed) => return,
                        Err(error) => {
                            // The next roll creates its segment the old way and asks again.
                            *state = Prepared::Nothing;
                            drop(state);
                            log::warn(
                                "cannot prepare the next log segment",
                                &[("file", &path.display()), ("error", &error)],
                            );
                        }
                    }
                }
            })
            .ok()?;
        Some(Preallocator {
            state,
            stop,
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Asks for the next file unless one is ready or being prepared.
    pub(super) fn request(&self) {
        let mut state = self.state.lock();
        if *state != Prepared::Nothing {
            return;
        }
        if let Some(requests) = &self.requests {
            if requests.send(()).is_ok() {
                *state = Prepared::Preparing;
            }
        }
    }

    /// Takes the prepared file if it is ready (the caller renames it away; the next is asked
    /// for once the new segment fills a quarter); false if it is not.
    pub(super) fn take(&self) -> bool {
        let mut state = self.state.lock();
        if *state == Prepared::Ready {
            *state = Prepared::Nothing;
            true
        } else {
            false
        }
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file::faulty::FaultyFileSystem;
    use std::time::Duration;

    #[test]
    fn a_prepared_file_is_zeros_of_the_asked_length_and_durable() {
        let disk = FaultyFileSystem::new();
        let file_system: Arc<dyn FileSystem> = Arc::new(disk.current());
        file_system.create_dir_all(Path::new("/d")).unwrap();
        let path = PathBuf::from("/d").join(PREPARED_FILE_NAME);
        let len = 2 * ZERO_PIECE_BYTES as u64 + 17;
        let preallocator = Preallocator::start(Arc::clone(&file_system), path.clone(), len, true)
            .expect("the thread starts");
        assert!(!preallocator.take(), "nothing was asked for");
        preallocator.request();
        preallocator.request(); // one at a time
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !preallocator.take() {
            assert!(std::time::Instant::now() < deadline, "never prepared");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let bytes = disk.file_bytes(&path).expect("prepared");
        assert_eq!(bytes.len() as u64, len);
        assert!(bytes.iter().all(|&byte| byte == 0));
        // Synced: the contents survive a power cut (the name needs a directory sync, which
        // the log writer's roll does after renaming it).
        file_system.sync_dir(Path::new("/d")).unwrap();
        disk.crash();
        assert_eq!(
            disk.file_bytes(&path).map(|bytes| bytes.len() as u64),
            Some(len)
        );
        assert!(!preallocator.take(), "taken once");
    }

    #[test]
    fn a_preparation_stops_when_the_storage_closes() {
        let disk = FaultyFileSystem::new();
        let file_system = disk.current();
        file_system.create_dir_all(Path::new("/d")).unwrap();
        let path = PathBuf::from("/d").join(PREPARED_FILE_NAME);
        let stop = AtomicBool::new(true);
        let len = 8 * ZERO_PIECE_BYTES as u64;
        let error = zero_fill(&file_system, &path, len, true, Duration::ZERO, &stop).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::Interrupted);
        assert!(disk.file_bytes(&path).unwrap().len() < len as usize);
        stop.store(false, Ordering::Relaxed);
        zero_fill(&file_system, &path, len, true, Duration::ZERO, &stop).unwrap();
        assert_eq!(disk.file_bytes(&path).unwrap().len() as u64, len);
    }
}
