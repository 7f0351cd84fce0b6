//! The backup file of `kvctl snapshot save`, read back by `keyval restore`.
//!
//! ```text
//! +--------------------+------------------+----------------------------------------------+
//! | magic "KVBACKUP"   | version: u32 LE  | header: one codec record                     |
//! | 8 bytes            | 4 bytes (= 1)    | [len u32][crc32 u32][bincode BackupHeader]   |
//! +--------------------+------------------+----------------------------------------------+
//! | data: BackupHeader.data_bytes bytes of the state machine's snapshot                   |
//! +---------------------------------------------------------------------------------------+
//! ```
//!
//! `BackupHeader` holds the snapshot's last entry (index, term), the membership it was taken
//! under, the data's length and its CRC-32 — the same checksum the node computed when it took
//! the snapshot, so a backup is verified end to end. The file must be exactly as long as the
//! header says. A flipped bit anywhere is caught: in the magic or version by their values, in
//! the header by its record checksum, in the data by the data checksum.
//!
//! The file is written atomically: a temporary file beside it, fsynced, renamed over the
//! target, and the directory fsynced.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{self, RecordRead, RECORD_HEADER_BYTES};
use crate::error::CodecError;
use crate::limits::{RECORD_BYTES_MAX, SNAPSHOT_BYTES_MAX};
use crate::raft::SnapshotData;
use crate::types::{EntryId, Membership, SnapshotMeta};

/// The first bytes of every backup file.
pub const BACKUP_MAGIC: [u8; 8] = *b"KVBACKUP";

/// The backup format version written, and the only one read.
pub const BACKUP_VERSION: u32 = 1;

/// Bytes before the header record: magic and version.
const PREAMBLE_BYTES: usize = 12;

/// What precedes the data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BackupHeader {
    last: EntryId,
    membership: Membership,
    data_bytes: u64,
    checksum: u32,
}

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a keyval backup.
    #[error("not a keyval backup file (bad magic)")]
    BadMagic,
    /// The file is a backup of another format version.
    #[error("unsupported backup format version {0} (this build reads {BACKUP_VERSION})")]
    UnsupportedVersion(u32),
    /// The header is damaged.
    #[error("backup header is damaged: {0}")]
    Header(#[source] CodecError),
    /// The file is shorter or longer than its header says.
    #[error("backup is {actual} bytes, its header says {expected}: truncated or extended")]
    Length {
        /// What the header says.
        expected: u64,
        /// What the file holds.
        actual: u64,
    },
    /// The data does not match its checksum.
    #[error("backup data checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// From the header.
        stored: u32,
        /// Of the data as read.
        computed: u32,
    },
    /// The snapshot is larger than any snapshot may be.
    #[error("backup data of {bytes} bytes exceeds the snapshot limit of {SNAPSHOT_BYTES_MAX}")]
    TooLarge {
        /// Its size.
        bytes: u64,
    },
}

/// The bytes before the data: magic, version and the header record.
fn encode_preamble_and_header(snapshot: &SnapshotData) -> Result<Vec<u8>, BackupError> {
    let header = BackupHeader {
        last: snapshot.meta.last,
        membership: snapshot.meta.membership.clone(),
        data_bytes: snapshot.data.len() as u64,
        checksum: snapshot.checksum,
    };
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(&BACKUP_MAGIC);
    bytes.extend_from_slice(&BACKUP_VERSION.to_le_bytes());
    codec::write_value_record(&header, &mut bytes).map_err(BackupError::Header)?;
    // Asserted in pairs across the disk boundary: what is written must read back.
    debug_assert!(matches!(
        decode_header(&bytes),
        Ok((decoded, _)) if decoded == header
    ));
    Ok(bytes)
}

/// The whole backup of `snapshot`, in memory.
pub fn encode_backup(snapshot: &SnapshotData) -> Result<Vec<u8>, BackupError> {
    let mut bytes = encode_preamble_and_header(snapshot)?;
    bytes.extend_from_slice(&snapshot.data);
    Ok(bytes)
}

/// Checks magic and version and decodes the header; returns it with the data's offset.
fn decode_header(bytes: &[u8]) -> Result<(BackupHeader, usize), BackupError> {
    if bytes.len() < PREAMBLE_BYTES || bytes[..8] != BACKUP_MAGIC {
        return Err(BackupError::BadMagic);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != BACKUP_VERSION {
        return Err(BackupError::UnsupportedVersion(version));
    }
    match codec::read_record(&bytes[PREAMBLE_BYTES..], RECORD_BYTES_MAX)
        .map_err(BackupError::Header)?
    {
        RecordRead::Complete { payload, consumed } => {
            let header: BackupHeader = codec::decode(payload).map_err(BackupError::Header)?;
            Ok((header, PREAMBLE_BYTES + consumed))
        }
        RecordRead::Incomplete { .. } => Err(BackupError::Header(CodecError::Malformed {
            reason: format!(
                "the file ends inside the header ({} bytes)",
                bytes
                    .len()
                    .saturating_sub(PREAMBLE_BYTES + RECORD_HEADER_BYTES)
            ),
        })),
    }
}

/// Verifies a whole backup and returns its snapshot.
pub fn decode_backup(bytes: &[u8]) -> Result<SnapshotData, BackupError> {
    let (header, data_offset) = decode_header(bytes)?;
    if header.data_bytes > SNAPSHOT_BYTES_MAX {
        return Err(BackupError::TooLarge {
            bytes: header.data_bytes,
        });
    }
    let expected = data_offset as u64 + header.data_bytes;
    if bytes.len() as u64 != expected {
        return Err(BackupError::Length {
            expected,
            actual: bytes.len() as u64,
        });
    }
    let data = &bytes[data_offset..];
    let computed = crc32fast::hash(data);
    if computed != header.checksum {
        return Err(BackupError::Checksum {
            stored: header.checksum,
            computed,
        });
    }
    Ok(SnapshotData {
        meta: SnapshotMeta {
            last: header.last,
            membership: header.membership,
        },
        data: Arc::new(data.to_vec()),
        checksum: computed,
    })
}

/// Writes the backup of `snapshot` to `path` atomically (temporary file, fsync, rename,
/// directory fsync). Returns the file's size.
pub fn write_backup_file(path: &Path, snapshot: &SnapshotData) -> Result<u64, BackupError> {
    let preamble = encode_preamble_and_header(snapshot)?;
    let io = |operation: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io {
            operation,
            path,
            source,
        }
    };
    let mut temporary_name = path.file_name().unwrap_or_default().to_os_string();
    temporary_name.push(".tmp");
    let temporary = path.with_file_name(temporary_name);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
        file.write_all(&preamble)
            .and_then(|()| file.write_all(&snapshot.data))
            .map_err(io("write", &temporary))?;
        file.sync_all().map_err(io("fsync", &temporary))?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(io("rename to", path))
    })();
    if let Err(error) = written {
        // Leave no half-written file behind; the target, if any, is untouched.
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(io("fsync directory", directory))?;
    Ok(preamble.len() as u64 + snapshot.data.len() as u64)
}

/// Reads and verifies the backup at `path`.
pub fn read_backup_file(path: &Path) -> Result<SnapshotData, BackupError> {
    let io = |operation: &'static str| {
        move |source| BackupError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    let size = std::fs::metadata(path).map_err(io("read"))?.len();
    // The header is tiny; anything beyond the largest snapshot plus a generous header is
    // refused before it is read into memory.
    if size > SNAPSHOT_BYTES_MAX + RECORD_BYTES_MAX {
        return Err(BackupError::TooLarge { bytes: size });
    }
    let bytes = std::fs::read(path).map_err(io("read"))?;
    decode_backup(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogIndex, NodeId, Term};

    fn snapshot(bytes: usize) -> SnapshotData {
        let data: Vec<u8> = (0..bytes).map(|byte| (byte % 251) as u8).collect();
        SnapshotData::new(
            SnapshotMeta {
                last: EntryId::new(Term(7), LogIndex(1234)),
                membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
            },
            Arc::new(data),
        )
    }

    #[test]
    fn a_backup_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.kvb");
        let original = snapshot(100_000);
        let size = write_backup_file(&path, &original).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert!(!dir.path().join("backup.kvb.tmp").exists());
        assert_eq!(read_backup_file(&path).unwrap(), original);
        assert_eq!(&std::fs::read(&path).unwrap()[..8], b"KVBACKUP");
        let error = write_backup_file(&dir.path().join("missing/backup.kvb"), &original);
        assert!(error.unwrap_err().to_string().contains("create"));
    }

    #[test]
    fn an_empty_snapshot_round_trips() {
        let original = snapshot(0);
        assert_eq!(
            decode_backup(&encode_backup(&original).unwrap()).unwrap(),
            original
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode_backup(&snapshot(64)).unwrap();
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(
                decode_backup(&damaged).is_err(),
                "a flipped byte at {position} went unnoticed"
            );
        }
    }

    #[test]
    fn damage_is_named() {
        let bytes = encode_backup(&snapshot(1000)).unwrap();
        let mut data_flipped = bytes.clone();
        let last = data_flipped.len() - 1;
        data_flipped[last] ^= 1;
        assert!(matches!(
            decode_backup(&data_flipped),
            Err(BackupError::Checksum { .. })
        ));
        let mut header_flipped = bytes.clone();
        header_flipped[PREAMBLE_BYTES + RECORD_HEADER_BYTES] ^= 1;
        assert!(matches!(
            decode_backup(&header_flipped),
            Err(BackupError::Header(_))
        ));
        let mut version = bytes.clone();
        version[8] = 9;
        assert!(matches!(
            decode_backup(&version),
            Err(BackupError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            decode_backup(&bytes[..bytes.len() - 1]),
            Err(BackupError::Length { .. })
        ));
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(matches!(
            decode_backup(&extended),
            Err(BackupError::Length { .. })
        ));
        assert!(matches!(
            decode_backup(b"KVSNAPSH...."),
            Err(BackupError::BadMagic)
        ));
        assert!(decode_backup(&bytes[..PREAMBLE_BYTES + 3]).is_err());
        assert!(decode_backup(&[]).is_err());
    }
}
