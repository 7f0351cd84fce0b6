//! The file layer under [`FileStorage`](super::FileStorage): the few file operations the storage
//! uses, behind a trait so that tests can swap in
//! [`FaultyFileSystem`](super::faulty::FaultyFileSystem), which fails writes and syncs, tears
//! writes and loses unsynced bytes at a simulated crash.
//!
//! The interface is by path. [`RealFileSystem`] keeps the files it writes open in a small map so
//! that an append or a sync does not reopen the file.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Proof that this process holds a data directory's lock; dropping it releases the lock.
pub struct DirectoryLock {
    _held: Box<dyn Send + Sync>,
}

impl DirectoryLock {
    /// Wraps whatever keeps the lock held (an open, locked file for the real file system).
    pub fn new(held: Box<dyn Send + Sync>) -> DirectoryLock {
        DirectoryLock { _held: held }
    }
}

impl fmt::Debug for DirectoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirectoryLock")
    }
}

/// The file operations [`FileStorage`](super::FileStorage) performs. Writes are visible to reads
/// at once; they are durable only after [`sync_file`](FileSystem::sync_file) (contents) and
/// [`sync_dir`](FileSystem::sync_dir) of the parent (creation, rename, removal).
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the regular files in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole contents of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Exactly `len` bytes at `offset`.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Appends `bytes`, creating the file if it is missing.
    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Writes `bytes` at byte `offset` of an existing file, over what is there and past its
    /// end if they reach beyond it (an offset past the end leaves zeros between).
    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Creates the file (or empties an existing one) and writes `bytes`.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// The file's length in bytes. The default reads the whole file; implementations that
    /// can ask for the length alone should.
    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(self.read(path)?.len() as u64)
    }
    /// Cuts the file to `len` bytes.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes the file's contents durable (fsync).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on the lock file `path`, creating it; `None` when another
    /// holder has it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<DirectoryLock>>;
}

/// At most this many files are kept open by [`RealFileSystem`]; beyond it, clean (synced)
/// handles are closed. A handle with unsynced writes stays open until its sync, so that a
/// write-back error is reported to the fsync that must see it.
pub const OPEN_FILES_MAX: usize = 32;

/// An open file and whether it has writes not yet synced through it.
#[derive(Debug)]
struct OpenFile {
    file: File,
    dirty: bool,
}

/// The operating system's file system.
#[derive(Debug, Default)]
pub struct RealFileSystem {
    /// Files kept open, by path. The map's lock is held only to find or insert a handle,
    /// never across the I/O: the snapshot thread syncs 1 MiB pieces of a staged snapshot
    /// through this file system while the log writer appends and syncs the log through it,
    /// and with the lock held across each call every log write waited for the snapshot's
    /// fsync (measured: the write stalls of up to 10 ms while a snapshot was written). Each
    /// handle has its own lock, so calls on one file stay in order.
    open_files: Mutex<HashMap<PathBuf, Arc<Mutex<OpenFile>>>>,
}

impl RealFileSystem {
    /// A file system with no files open yet.
    pub fn new() -> RealFileSystem {
        RealFileSystem::default()
    }

    /// Runs `operation` on the cached handle of `path`, opening it (read + write; created if
    /// missing only when `create`) on first use. `writes` says whether the operation leaves
    /// the handle dirty (a write) or clean (a sync); `None` for reads.
    fn with_file<T>(
        &self,
        path: &Path,
        create: bool,
        writes: Option<bool>,
        operation: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> io::Result<T> {
        let handle = {
            let mut open_files = self.open_files.lock();
            match open_files.get(path) {
                Some(handle) => Arc::clone(handle),
                None => {
                    if open_files.len() >= OPEN_FILES_MAX {
                        // A handle another call is using (its clone taken under this
                        // lock) stays too: its write may be about to make it dirty.
                        open_files
                            .retain(|_, open| Arc::strong_count(open) > 1 || open.lock().dirty);
                    }
                    // Not O_APPEND: on Linux a positioned write (`write_at`) to a file opened
                    // for appending lands at the end whatever its offset.
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(create)
                        .open(path)?;
                    let handle = Arc::new(Mutex::new(OpenFile { file, dirty: false }));
                    open_files.insert(path.to_path_buf(), Arc::clone(&handle));
                    handle
                }
            }
        };
        let mut open = handle.lock();
        let outcome = operation(&mut open.file);
        match writes {
            Some(dirty) if outcome.is_ok() => open.dirty = dirty,
            Some(_) => open.dirty = true,
            None => {}
        }
        outcome
    }

    fn forget(&self, path: &Path) {
        self.open_files.lock().remove(path);
    }
}

impl FileSystem for RealFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            if item.file_type()?.is_file() {
                if let Some(name) = item.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.with_file(path, false, None, |file| {
            let mut bytes = vec![0u8; len];
            file.read_exact_at(&mut bytes, offset)?;
            Ok(bytes)
        })
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.with_file(path, true, Some(true), |file| {
            file.seek(SeekFrom::End(0))?;
            file.write_all(bytes)
        })
    }

    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.with_file(path, false, Some(true), |file| {
            file.write_all_at(bytes, offset)
        })
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.forget(path);
        File::create(path)?;
        self.append(path, bytes)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.with_file(path, false, Some(true), |file| file.set_len(len))
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.with_file(path, false, Some(false), |file| file.sync_data())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from);
        self.forget(to);
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.forget(path);
        fs::remove_file(path)
    }

    // `File::try_lock` is stable since Rust 1.89; the crate's `rust-version` (1.80) should be
    // raised to match (the toolchain here is 1.95). Until then, allowed here only.
    fn try_lock(&self, path: &Path) -> io::Result<Option<DirectoryLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DirectoryLock::new(Box::new(file)))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A slow call on one file (the snapshot thread's fsync of a staged piece) must not hold
    /// up calls on other files (the log writer's appends and syncs).
    #[test]
    fn a_slow_call_on_one_file_does_not_hold_up_another() {
        let dir = tempfile::tempdir().unwrap();
        let file_system = Arc::new(RealFileSystem::new());
        let (slow, fast) = (dir.path().join("slow"), dir.path().join("fast"));
        let (entered_tx, entered) = crossbeam_channel::bounded::<()>(1);
        let (release, released) = crossbeam_channel::bounded::<()>(1);
        let blocked = {
            let file_system = Arc::clone(&file_system);
            std::thread::spawn(move || {
                file_system.with_file(&slow, true, Some(true), |file| {
                    entered_tx.send(()).unwrap();
                    // Stands for a long fsync: held until the other file's calls are done.
                    released.recv_timeout(Duration::from_secs(60)).unwrap();
                    file.write_all(b"slow")
                })
            })
        };
        entered.recv_timeout(Duration::from_secs(60)).unwrap();
        let (done_tx, done) = crossbeam_channel::bounded::<io::Result<Vec<u8>>>(1);
        {
            let file_system = Arc::clone(&file_system);
            std::thread::spawn(move || {
                let outcome = file_system
                    .append(&fast, b"fast")
                    .and_then(|()| file_system.sync_file(&fast))
                    .and_then(|()| file_system.read(&fast));
                let _ = done_tx.send(outcome);
            });
        }
        let outcome = done.recv_timeout(Duration::from_secs(30));
        release.send(()).unwrap();
        blocked.join().unwrap().unwrap();
        assert_eq!(
            outcome
                .expect("an append to another file waited for the slow call")
                .unwrap(),
            b"fast"
        );
    }
}
