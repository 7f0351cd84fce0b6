//! The byte layouts of every file in a data directory (drawn as tables in `docs/storage.md`).
//!
//! Every file opens with an 8-byte magic and a little-endian `u32` format version. A wrong magic
//! is corruption; a right magic with another version is refused as
//! [`StorageError::UnknownVersion`], so that an older build never misreads a newer file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec::{self, RecordRead};
use crate::error::StorageError;
use crate::limits;
use crate::limits::RECORD_BYTES_MAX;
use crate::types::{EntryId, HardState, LogIndex, Membership, SnapshotMeta, Term};

/// The one format version this build reads and writes, for every file kind.
pub const FORMAT_VERSION: u32 = 2;

/// Magic of a log segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KVSEGMNT";
/// Magic of the state file.
pub const STATE_MAGIC: [u8; 8] = *b"KVSTATE\0";
/// Magic of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"KVSNAPSH";

/// Bytes of a segment header: magic, version, first index, header CRC.
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Bytes of a snapshot header before the membership bytes.
pub const SNAPSHOT_HEADER_BYTES: usize = 48;
/// The largest state record accepted when reading the state file.
const STATE_RECORD_BYTES_MAX: u64 = 4096;

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Checks the magic and version at the start of `bytes`, which holds at least 12 bytes.
fn check_magic_and_version(
    file: &Path,
    bytes: &[u8],
    magic: &[u8; 8],
    kind: &str,
) -> Result<(), StorageError> {
    if bytes.len() < 12 || &bytes[..8] != magic {
        return Err(corrupt(
            file,
            0,
            format!("not a keyval {kind} file (bad magic)"),
        ));
    }
    let found = u32_at(bytes, 8);
    if found != FORMAT_VERSION {
        return Err(StorageError::UnknownVersion {
            file: file.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// The file name of the segment whose first entry is `first_index`.
pub fn segment_file_name(first_index: LogIndex) -> String {
    format!("{:020}.seg", first_index.0)
}

/// The first index named by a segment file name, or `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|&index| index <= limits::INDEX_MAX)
        .map(LogIndex)
}

/// A segment header for a segment starting at `first_index`.
pub fn encode_segment_header(first_index: LogIndex) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    header.extend_from_slice(&SEGMENT_MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&first_index.0.to_le_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(header.len(), SEGMENT_HEADER_BYTES);
    header
}

/// The first index stored in a whole segment header.
pub fn decode_segment_header(file: &Path, header: &[u8]) -> Result<LogIndex, StorageError> {
    check_magic_and_version(file, header, &SEGMENT_MAGIC, "segment")?;
    if header.len() < SEGMENT_HEADER_BYTES {
        return Err(corrupt(file, 0, "segment header is cut short"));
    }
    let stored = u32_at(header, 20);
    if crc32fast::hash(&header[..20]) != stored {
        return Err(corrupt(file, 0, "segment header checksum mismatch"));
    }
    Ok(LogIndex(u64_at(header, 12)))
}

/// The payload of the state file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Term and vote.
    pub hard_state: HardState,
    /// Every entry at or below this index has been compacted away; the log starts after it.
    pub compacted_through: LogIndex,
}

/// The whole state file for `record`.
pub fn encode_state(record: &StateRecord) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&STATE_MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    codec::write_value_record(record, &mut bytes).map_err(|error| StorageError::Misuse {
        reason: format!("cannot encode the state record: {error}"),
    })?;
    Ok(bytes)
}

/// Reads a whole state file.
pub fn decode_state(file: &Path, bytes: &[u8]) -> Result<StateRecord, StorageError> {
    check_magic_and_version(file, bytes, &STATE_MAGIC, "state")?;
    let body = &bytes[12..];
    match codec::read_record(body, STATE_RECORD_BYTES_MAX) {
        Ok(RecordRead::Complete { payload, consumed }) if consumed == body.len() => {
            let record: StateRecord =
                codec::decode(payload).map_err(|error| corrupt(file, 12, error.to_string()))?;
            if record.compacted_through.0 > limits::INDEX_MAX
                || record.hard_state.term.0 > limits::TERM_MAX
            {
                return Err(corrupt(file, 12, "term or index beyond the limit"));
            }
            Ok(record)
        }
        Ok(RecordRead::Complete { .. }) => Err(corrupt(file, 12, "bytes after the state record")),
        Ok(RecordRead::Incomplete { .. }) => Err(corrupt(file, 12, "state record is cut short")),
        Err(error) => Err(corrupt(file, 12, error.to_string())),
    }
}

/// The file name of the snapshot covering the log through `last`.
pub fn snapshot_file_name(last: EntryId) -> String {
    format!("{}-{}.snap", last.term.0, last.index.0)
}

/// The id named by a snapshot file name, or `None` for any other name.
pub fn parse_snapshot_file_name(name: &str) -> Option<EntryId> {
    let stem = name.strip_suffix(".snap")?;
    let (term, index) = stem.split_once('-')?;
    let term = term.parse().ok().filter(|&term| term <= limits::TERM_MAX)?;
    let index = index
        .parse()
        .ok()
        .filter(|&index| index <= limits::INDEX_MAX)?;
    Some(EntryId::new(Term(term), LogIndex(index)))
}

/// The whole snapshot file for `meta` and the state machine's `data`.
pub fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut bytes = encode_snapshot_head(meta, data)?;
    bytes.extend_from_slice(data);
    Ok(bytes)
}

/// The start of the snapshot file for `meta` and `data`: the header and the membership, which
/// `data` follows. Writing the two pieces in turn saves copying a large snapshot once more.
pub fn encode_snapshot_head(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, StorageError> {
    let membership = codec::encode(&meta.membership).map_err(|error| StorageError::Misuse {
        reason: format!("cannot encode the snapshot membership: {error}"),
    })?;
    let mut checksum = crc32fast::Hasher::new();
    checksum.update(&membership);
    checksum.update(data);
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + membership.len());
    bytes.extend_from_slice(&SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&meta.last.index.0.to_le_bytes());
    bytes.extend_from_slice(&meta.last.term.0.to_le_bytes());
    bytes.extend_from_slice(&(membership.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&checksum.finalize().to_le_bytes());
    let header_crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(bytes.len(), SNAPSHOT_HEADER_BYTES);
    bytes.extend_from_slice(&membership);
    Ok(bytes)
}

/// A verified snapshot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The last entry the snapshot covers.
    pub last: EntryId,
    /// Bytes of the encoded membership after the header.
    pub membership_bytes: u64,
    /// Bytes of state machine data after the membership.
    pub data_bytes: u64,
    /// CRC-32 of the membership bytes followed by the data.
    pub checksum: u32,
}

/// Reads the fixed header of a snapshot file of `file_bytes` bytes in all.
pub fn decode_snapshot_header(
    file: &Path,
    header: &[u8],
    file_bytes: u64,
) -> Result<SnapshotHeader, StorageError> {
    check_magic_and_version(file, header, &SNAPSHOT_MAGIC, "snapshot")?;
    if header.len() < SNAPSHOT_HEADER_BYTES {
        return Err(corrupt(file, 0, "snapshot header is cut short"));
    }
    if crc32fast::hash(&header[..44]) != u32_at(header, 44) {
        return Err(corrupt(file, 0, "snapshot header checksum mismatch"));
    }
    let decoded = SnapshotHeader {
        last: EntryId::new(Term(u64_at(header, 20)), LogIndex(u64_at(header, 12))),
        membership_bytes: u32_at(header, 28) as u64,
        data_bytes: u64_at(header, 32),
        checksum: u32_at(header, 40),
    };
    if decoded.membership_bytes > RECORD_BYTES_MAX {
        return Err(corrupt(
            file,
            28,
            "snapshot membership length over the limit",
        ));
    }
    let expected = (SNAPSHOT_HEADER_BYTES as u64)
        .checked_add(decoded.membership_bytes)
        .and_then(|bytes| bytes.checked_add(decoded.data_bytes));
    if expected != Some(file_bytes) {
        return Err(corrupt(
            file,
            32,
            format!("snapshot lengths do not add up to the file's {file_bytes} bytes"),
        ));
    }
    Ok(decoded)
}

/// Verifies a whole snapshot file and splits it into metadata and data.
pub fn decode_snapshot(file: &Path, bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
    let header = decode_snapshot_header(file, bytes, bytes.len() as u64)?;
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    let computed = crc32fast::hash(body);
    if computed != header.checksum {
        return Err(corrupt(
            file,
            SNAPSHOT_HEADER_BYTES as u64,
            format!(
                "snapshot checksum mismatch: stored {:#010x}, computed {computed:#010x}",
                header.checksum
            ),
        ));
    }
    let (membership_bytes, data) = body.split_at(header.membership_bytes as usize);
    let membership: Membership = codec::decode(membership_bytes)
        .map_err(|error| corrupt(file, SNAPSHOT_HEADER_BYTES as u64, error.to_string()))?;
    let meta = SnapshotMeta {
        last: header.last,
        membership,
    };
    Ok((meta, data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn path() -> &'static Path {
        Path::new("/test/file")
    }

    #[test]
    fn file_names_round_trip_and_others_are_ignored() {
        let name = segment_file_name(LogIndex(42));
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_file_name(&name), Some(LogIndex(42)));
        for other in [
            "42.seg",
            "0000000000000000004x.seg",
            "00000000000000000042.tmp",
        ] {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
        let id = EntryId::new(Term(3), LogIndex(17));
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(id)), Some(id));
        assert_eq!(parse_snapshot_file_name("3-17.snap.tmp"), None);
    }

    #[test]
    fn state_round_trip_and_damage() {
        let record = StateRecord {
            hard_state: HardState {
                term: Term(5),
                vote: Some(NodeId(2)),
            },
            compacted_through: LogIndex(99),
        };
        let bytes = encode_state(&record).unwrap();
        assert_eq!(decode_state(path(), &bytes).unwrap(), record);
        for cut in 0..bytes.len() {
            assert!(decode_state(path(), &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[14] ^= 4;
        assert!(matches!(
            decode_state(path(), &flipped),
            Err(StorageError::Corrupt { offset: 12, .. })
        ));
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let meta = SnapshotMeta {
            last: EntryId::new(Term(2), LogIndex(10)),
            membership: Membership::new([NodeId(1), NodeId(2)]),
        };
        let bytes = encode_snapshot(&meta, b"state machine").unwrap();
        let (decoded, data) = decode_snapshot(path(), &bytes).unwrap();
        assert_eq!((decoded, data.as_slice()), (meta, &b"state machine"[..]));
        for cut in 0..bytes.len() {
            assert!(
                decode_snapshot(path(), &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for offset in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[offset] ^= 0x20;
            assert!(
                decode_snapshot(path(), &flipped).is_err(),
                "flip at {offset}"
            );
        }
    }

    #[test]
    fn huge_snapshot_lengths_are_refused_before_allocating() {
        let meta = SnapshotMeta::default();
        let mut bytes = encode_snapshot(&meta, b"x").unwrap();
        bytes[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..44]);
        bytes[44..48].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_snapshot(path(), &bytes),
            Err(StorageError::Corrupt { offset: 32, .. })
        ));
    }
}
