//! An in-memory [`FileSystem`] with the crash semantics of a real disk and injectable faults.
//!
//! Every file has what readers see now and what is durable. [`sync_file`](FileSystem::sync_file)
//! makes a file's contents durable; [`sync_dir`](FileSystem::sync_dir) makes the names in a
//! directory durable (creations, renames, removals). [`FaultyFileSystem::crash`] throws away
//! everything that was not made durable, as a power cut would. Directories themselves are
//! always durable (a simplification: the storage creates them once, at open).
//!
//! Faults, each armed for the next matching call: a failed write, a failed sync, and a torn
//! write (a prefix of the write reaches the disk, then the power goes out: every call fails
//! until [`crash`](FaultyFileSystem::crash)).
//!
//! Like [`MemDisk`](crate::storage::mem::MemDisk), a crash fences off the instances that ran
//! before it: a handle from before the crash fails every file operation afterwards (so a
//! crashed node's threads, still running for a moment, cannot write to the disk of its
//! successor). Open the successor on [`FaultyFileSystem::current`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::io::{DirectoryLock, FileSystem};

/// One file's bytes.
#[derive(Clone, Debug, Default)]
struct Inode {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Invariant: `current[..same_prefix] == durable[..same_prefix]`, so a sync copies only
    /// the bytes after it.
    same_prefix: usize,
}

impl Inode {
    fn sync(&mut self) {
        self.durable.truncate(self.same_prefix);
        self.durable
            .extend_from_slice(&self.current[self.same_prefix..]);
        self.same_prefix = self.current.len();
    }
}

#[derive(Debug, Default)]
struct DiskState {
    inodes: HashMap<u64, Inode>,
    inode_next: u64,
    /// The namespace as reads see it.
    names: BTreeMap<PathBuf, u64>,
    /// The namespace as it survives a crash.
    durable_names: BTreeMap<PathBuf, u64>,
    directories: BTreeSet<PathBuf>,
    locked: BTreeSet<PathBuf>,
    fail_next_write: bool,
    fail_next_sync: bool,
    tear_next_write_at: Option<usize>,
    /// Set by a torn write: the machine is off until `crash`.
    powered_off: bool,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    /// The power goes out instead of the mutation after this many more.
    power_cut_after: Option<u64>,
    writes: u64,
    syncs: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} does not exist", path.display()),
    )
}

impl DiskState {
    /// Refuses calls while the power is off, and calls from before the last crash.
    fn check_power(&self, generation: u64) -> io::Result<()> {
        if self.powered_off {
            return Err(io::Error::other("injected: the power is off"));
        }
        if generation != self.generation {
            return Err(io::Error::other("this instance was crashed"));
        }
        Ok(())
    }

    /// Counts one mutation (write, truncate, sync, rename, remove) down to an armed power cut.
    fn count_mutation(&mut self) -> io::Result<()> {
        match self.power_cut_after {
            Some(0) => {
                self.power_cut_after = None;
                self.powered_off = true;
                Err(io::Error::other("injected: the power went out"))
            }
            Some(remaining) => {
                self.power_cut_after = Some(remaining - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn inode(&mut self, path: &Path) -> io::Result<&mut Inode> {
        let id = *self.names.get(path).ok_or_else(|| not_found(path))?;
        self.inodes.get_mut(&id).ok_or_else(|| not_found(path))
    }

    fn create(&mut self, path: &Path) -> io::Result<&mut Inode> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if !self.directories.contains(parent) {
            return Err(not_found(parent));
        }
        if !self.names.contains_key(path) {
            self.inode_next += 1;
            self.inodes.insert(self.inode_next, Inode::default());
            self.names.insert(path.to_path_buf(), self.inode_next);
        }
        self.inode(path)
    }

    /// Writes `bytes` to `path` where `place` says, applying the armed write faults.
    fn write(
        &mut self,
        generation: u64,
        path: &Path,
        place: Place,
        bytes: &[u8],
    ) -> io::Result<()> {
        self.check_power(generation)?;
        self.count_mutation()?;
        if std::mem::take(&mut self.fail_next_write) {
            return Err(io::Error::other("injected write failure"));
        }
        self.writes += 1;
        let torn_at = self.tear_next_write_at.take();
        let inode = match place {
            Place::At(_) => self.inode(path)?,
            Place::End | Place::Replace => self.create(path)?,
        };
        let offset = match place {
            Place::Replace => {
                inode.current.clear();
                inode.same_prefix = 0;
                0
            }
            Place::End => inode.current.len(),
            Place::At(offset) => usize::try_from(offset)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?,
        };
        // What reaches the disk: all of it, or up to the tear.
        let written = &bytes[..torn_at.map_or(bytes.len(), |at| at.min(bytes.len()))];
        let end = offset + written.len();
        if inode.current.len() < end {
            inode.current.resize(end, 0);
        }
        inode.current[offset..end].copy_from_slice(written);
        // Bytes before `offset` are untouched; the durable copy may differ from here on.
        inode.same_prefix = inode.same_prefix.min(offset);
        if torn_at.is_none() {
            return Ok(());
        }
        // The power goes out mid-write: the file up to the tear reaches the disk.
        inode.sync();
        // The file's name reaches the disk with it, as a journaled create would.
        if let Some(&id) = self.names.get(path) {
            self.durable_names.insert(path.to_path_buf(), id);
        }
        self.powered_off = true;
        Err(io::Error::other("injected torn write: the power went out"))
    }
}

/// Where a write goes.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// At the end of the file (created if missing).
    End,
    /// Over the whole file, emptied first (created if missing).
    Replace,
    /// At this offset of an existing file.
    At(u64),
}

/// An in-memory disk with crash semantics and fault injection; see the module docs. Clones
/// share the disk, so a test keeps one to inject faults into the storage that uses another.
#[derive(Clone, Debug, Default)]
pub struct FaultyFileSystem {
    state: Arc<Mutex<DiskState>>,
    /// The crash generation this handle belongs to.
    generation: u64,
}

impl FaultyFileSystem {
    /// An empty disk.
    pub fn new() -> FaultyFileSystem {
        FaultyFileSystem::default()
    }

    /// A handle on the same disk that is alive now (after the latest crash). Fault controls
    /// work through any handle; file operations only through a live one.
    pub fn current(&self) -> FaultyFileSystem {
        FaultyFileSystem {
            state: Arc::clone(&self.state),
            generation: self.state.lock().generation,
        }
    }

    /// The next write or append fails and changes nothing.
    pub fn fail_next_write(&self) {
        self.state.lock().fail_next_write = true;
    }

    /// The next file or directory sync fails and makes nothing durable.
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
    }

    /// The next write reaches the disk only up to `at_byte` of its bytes (and everything before
    /// it in that file becomes durable too); then the power goes out: every call fails until
    /// [`crash`](FaultyFileSystem::crash).
    pub fn tear_next_write(&self, at_byte: usize) {
        self.state.lock().tear_next_write_at = Some(at_byte);
    }

    /// The power goes out instead of the mutation (write, truncate, sync, rename, removal)
    /// that follows `mutations` more successful ones: a crash at an exact step. Every call
    /// then fails until [`crash`](FaultyFileSystem::crash).
    pub fn cut_power_after(&self, mutations: u64) {
        self.state.lock().power_cut_after = Some(mutations);
    }

    /// A power cut and reboot: every name and byte not made durable is lost, locks are
    /// released, armed faults are disarmed, and every handle from before is dead.
    pub fn crash(&self) {
        let mut state = self.state.lock();
        state.generation += 1;
        state.names = state.durable_names.clone();
        let live: BTreeSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|id, _| live.contains(id));
        for inode in state.inodes.values_mut() {
            inode.current = inode.durable.clone();
            inode.same_prefix = inode.current.len();
        }
        state.locked.clear();
        state.fail_next_write = false;
        state.fail_next_sync = false;
        state.tear_next_write_at = None;
        state.power_cut_after = None;
        state.powered_off = false;
    }

    /// The current bytes of a file, if it exists.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let mut state = self.state.lock();
        state.inode(path).ok().map(|inode| inode.current.clone())
    }

    /// Flips bit `bit` (0–7) of byte `offset` of a file, on the disk and in what reads see: media
    /// damage. Returns false when the file or the byte does not exist.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> bool {
        let mut state = self.state.lock();
        let Ok(inode) = state.inode(path) else {
            return false;
        };
        let offset = offset as usize;
        if offset >= inode.current.len() || offset >= inode.durable.len() {
            return false;
        }
        inode.current[offset] ^= 1 << (bit % 8);
        inode.durable[offset] ^= 1 << (bit % 8);
        true
    }

    /// Every file path that exists now, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.lock().names.keys().cloned().collect()
    }

    /// How many writes and syncs (file and directory) have succeeded so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.writes, state.syncs)
    }
}

struct FaultyLock {
    state: Arc<Mutex<DiskState>>,
    path: PathBuf,
    generation: u64,
}

impl Drop for FaultyLock {
    fn drop(&mut self) {
        let mut state = self.state.lock();
        // A crash released this lock already; the path may be locked by a successor now.
        if state.generation == self.generation {
            state.locked.remove(&self.path);
        }
    }
}

impl FileSystem for FaultyFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        for ancestor in dir.ancestors() {
            state.directories.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        state.check_power(self.generation)?;
        if !state.directories.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        Ok(state.inode(path)?.current.clone())
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        Ok(state.inode(path)?.current.len() as u64)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        let current = &state.inode(path)?.current;
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= current.len() => Ok(current[start..end].to_vec()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            )),
        }
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.state
            .lock()
            .write(self.generation, path, Place::End, bytes)
    }

    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.state
            .lock()
            .write(self.generation, path, Place::At(offset), bytes)
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.state
            .lock()
            .write(self.generation, path, Place::Replace, bytes)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        state.count_mutation()?;
        let inode = state.inode(path)?;
        inode.current.truncate(len as usize);
        inode.same_prefix = inode.same_prefix.min(inode.current.len());
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        state.count_mutation()?;
        if std::mem::take(&mut state.fail_next_sync) {
            return Err(io::Error::other("injected fsync failure"));
        }
        state.syncs += 1;
        state.inode(path)?.sync();
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        state.count_mutation()?;
        if std::mem::take(&mut state.fail_next_sync) {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        state.syncs += 1;
        let in_dir = |path: &PathBuf| path.parent() == Some(dir);
        state.durable_names.retain(|path, _| !in_dir(path));
        let current: Vec<(PathBuf, u64)> = state
            .names
            .iter()
            .filter(|(path, _)| in_dir(path))
            .map(|(path, id)| (path.clone(), *id))
            .collect();
        state.durable_names.extend(current);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        state.count_mutation()?;
        let id = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        state.count_mutation()?;
        state.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<DirectoryLock>> {
        let mut state = self.state.lock();
        state.check_power(self.generation)?;
        if !state.locked.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(DirectoryLock::new(Box::new(FaultyLock {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
            generation: self.generation,
        }))))
    }
}
