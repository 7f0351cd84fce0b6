//! One log segment: its in-memory index of record offsets, and the scan that validates a
//! segment's bytes at recovery.
//!
//! A segment is a header (see [`format`](super::format)) followed by one codec record per entry,
//! in index order with no gaps, starting at the index in its name, and possibly by zeros to
//! the end of the file: the space of a preallocated segment not written yet
//! ([`Preallocation`](super::Preallocation)).

use std::path::{Path, PathBuf};

use crate::codec::{self, RecordRead, RECORD_HEADER_BYTES};
use crate::error::StorageError;
use crate::limits::RECORD_BYTES_MAX;
use crate::types::{Entry, LogIndex};

use super::format::{decode_segment_header, SEGMENT_HEADER_BYTES};

/// Where each record of one segment file lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The segment file.
    pub path: PathBuf,
    /// The index of the first record (also in the file name and header).
    pub first_index: LogIndex,
    /// Byte offset of each record: `offsets[k]` holds entry `first_index + k`.
    /// Invariant: strictly increasing, all `>= SEGMENT_HEADER_BYTES`, all `< end`.
    pub offsets: Vec<u64>,
    /// The byte just past the last record: the file's valid length.
    pub end: u64,
}

impl Segment {
    /// A segment holding only its header.
    pub fn new(path: PathBuf, first_index: LogIndex) -> Segment {
        Segment {
            path,
            first_index,
            offsets: Vec::new(),
            end: SEGMENT_HEADER_BYTES as u64,
        }
    }

    /// The last index held; `first_index - 1` when the segment holds no record.
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.first_index.0 + self.offsets.len() as u64 - 1)
    }

    /// Whether `index` is held here.
    pub fn contains(&self, index: LogIndex) -> bool {
        index >= self.first_index && index.0 < self.first_index.0 + self.offsets.len() as u64
    }

    /// The byte range (start, end) of the records for `from..to`, all of which must be held.
    pub fn byte_range(&self, from: LogIndex, to: LogIndex) -> (u64, u64) {
        debug_assert!(from < to && self.contains(from) && self.contains(to.prev()));
        let start = self.offsets[(from.0 - self.first_index.0) as usize];
        let end_slot = (to.0 - self.first_index.0) as usize;
        let end = self.offsets.get(end_slot).copied().unwrap_or(self.end);
        (start, end)
    }

    /// Drops the records from `index` on; returns the new valid length of the file.
    pub fn truncate_from(&mut self, index: LogIndex) -> u64 {
        debug_assert!(self.contains(index));
        let slot = (index.0 - self.first_index.0) as usize;
        self.end = self.offsets[slot];
        self.offsets.truncate(slot);
        self.end
    }

    /// Records that a record of `bytes` bytes for the next index was written at the end.
    pub fn push_record(&mut self, bytes: u64) {
        self.offsets.push(self.end);
        self.end += bytes;
    }
}

/// Damage found while scanning a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The byte offset where the valid prefix of the file ends.
    pub offset: u64,
    /// What was found there.
    pub reason: String,
    /// Whether this is a torn tail: damage in the last segment with no intact record after it,
    /// as an interrupted write leaves. Anything else is mid-log damage.
    pub torn: bool,
}

/// What a scan of one segment found: the valid prefix, its entries, and any damage after it.
#[derive(Debug)]
pub struct SegmentScan {
    /// The index of the valid prefix.
    pub segment: Segment,
    /// The entries of the valid prefix, in order.
    pub entries: Vec<Entry>,
    /// Damage after the valid prefix, if any.
    pub damage: Option<Damage>,
}

/// Where the first record from `from` on (at any byte offset) lies that has a good checksum
/// and decodes to an entry: proof that the damage before it is not a torn tail, unless a
/// write is seen not to have reached the disk in between ([`unwritten_sector_in`]).
fn intact_record_after(bytes: &[u8], from: usize) -> Option<usize> {
    // A record's header holds its (non-zero) length, so none starts in the trailing zeros (a
    // preallocated segment's unwritten space: megabytes that need no trying).
    let written = bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1);
    let last_start = written.min(bytes.len().saturating_sub(RECORD_HEADER_BYTES));
    (from..last_start).find(|&offset| {
        match codec::read_record(&bytes[offset..], RECORD_BYTES_MAX) {
            Ok(RecordRead::Complete { payload, .. }) => {
                !payload.is_empty() && codec::decode::<Entry>(payload).is_ok()
            }
            _ => false,
        }
    })
}

/// The unit a disk writes atomically at least.
const SECTOR_BYTES: usize = 512;

/// Whether `bytes[from..to]` holds a whole sector of zeros. In a preallocated segment that is
/// space a write had not reached when the power went out; a disk may persist the sectors of
/// unsynced writes out of order, so intact records after it can be later writes that happened
/// to land, and the damage is still a torn tail (nothing from it on was synced: a sync covers
/// every earlier write).
fn unwritten_sector_in(bytes: &[u8], from: usize, to: usize) -> bool {
    let mut start = from.next_multiple_of(SECTOR_BYTES);
    while start + SECTOR_BYTES <= to {
        if bytes[start..start + SECTOR_BYTES]
            .iter()
            .all(|&byte| byte == 0)
        {
            return true;
        }
        start += SECTOR_BYTES;
    }
    false
}

/// Validates the bytes of the segment file `path`, named as starting at `named_first`.
/// `is_last` says whether it is the newest segment, the only one that may have a torn tail.
///
/// Returns `Err` only for a header of an unknown format version; other damage is described in
/// the scan, for the caller to refuse or repair.
pub fn scan_segment(
    path: &Path,
    bytes: &[u8],
    named_first: LogIndex,
    is_last: bool,
) -> Result<SegmentScan, StorageError> {
    let mut scan = SegmentScan {
        segment: Segment::new(path.to_path_buf(), named_first),
        entries: Vec::new(),
        damage: None,
    };
    scan.segment.end = 0;
    if bytes.len() < SEGMENT_HEADER_BYTES {
        scan.damage = Some(Damage {
            offset: 0,
            reason: format!("segment header cut short at {} bytes", bytes.len()),
            torn: is_last,
        });
        return Ok(scan);
    }
    match decode_segment_header(path, &bytes[..SEGMENT_HEADER_BYTES]) {
        Ok(first) if first == named_first => {}
        Ok(first) => {
            scan.damage = Some(Damage {
                offset: 0,
                reason: format!("header says first index {first}, the name says {named_first}"),
                torn: false,
            });
            return Ok(scan);
        }
        Err(error @ StorageError::UnknownVersion { .. }) => return Err(error),
        Err(error) => {
            scan.damage = Some(Damage {
                offset: 0,
                reason: error.to_string(),
                torn: false,
            });
            return Ok(scan);
        }
    }
    let mut position = SEGMENT_HEADER_BYTES;
    scan.segment.end = position as u64;
    while position < bytes.len() {
        let expected = LogIndex(named_first.0 + scan.entries.len() as u64);
        let (reason, may_be_torn) = match codec::read_record(&bytes[position..], RECORD_BYTES_MAX) {
            Ok(RecordRead::Complete { payload, consumed }) => {
                match codec::decode::<Entry>(payload) {
                    Ok(entry) if entry.index() == expected => {
                        scan.entries.push(entry);
                        scan.segment.push_record(consumed as u64);
                        position += consumed;
                        continue;
                    }
                    Ok(entry) => (
                        format!("entry {} where {expected} was expected", entry.index()),
                        false,
                    ),
                    // An all-zero stretch reads as an empty record with a good checksum.
                    Err(_) if payload.is_empty() => ("an empty record".to_string(), true),
                    Err(error) => (format!("undecodable entry: {error}"), false),
                }
            }
            Ok(RecordRead::Incomplete { .. }) => ("a record cut short".to_string(), true),
            Err(error) => (error.to_string(), true),
        };
        if bytes[position..].iter().all(|&byte| byte == 0) {
            // Nothing but zeros after the last record: the unwritten space of a preallocated
            // segment (no entry's record is all zeros), so the records end here.
            break;
        }
        let torn = is_last
            && may_be_torn
            && intact_record_after(bytes, position + 1)
                .is_none_or(|intact| unwritten_sector_in(bytes, position, intact));
        scan.damage = Some(Damage {
            offset: position as u64,
            reason,
            torn,
        });
        break;
    }
    debug_assert_eq!(scan.entries.len(), scan.segment.offsets.len());
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file::format::encode_segment_header;
    use crate::types::{EntryId, EntryPayload, Term};

    fn segment_bytes(first: u64, count: u64) -> Vec<u8> {
        let mut bytes = encode_segment_header(LogIndex(first));
        for index in first..first + count {
            let entry = Entry {
                id: EntryId::new(Term(1), LogIndex(index)),
                payload: EntryPayload::Command(vec![7; 10]),
            };
            codec::write_value_record(&entry, &mut bytes).unwrap();
        }
        bytes
    }

    fn scan(bytes: &[u8], is_last: bool) -> SegmentScan {
        scan_segment(Path::new("/wal/seg"), bytes, LogIndex(5), is_last).unwrap()
    }

    #[test]
    fn a_whole_segment_scans_clean() {
        let bytes = segment_bytes(5, 4);
        let scanned = scan(&bytes, true);
        assert_eq!(scanned.damage, None);
        assert_eq!(scanned.entries.len(), 4);
        assert_eq!(scanned.segment.last_index(), LogIndex(8));
        assert_eq!(scanned.segment.end, bytes.len() as u64);
    }

    #[test]
    fn every_cut_of_the_last_segment_is_a_torn_tail_and_of_others_is_damage() {
        let bytes = segment_bytes(5, 3);
        for cut in 0..bytes.len() {
            let last = scan(&bytes[..cut], true);
            let earlier = scan(&bytes[..cut], false);
            if let Some(damage) = &last.damage {
                assert!(damage.torn, "cut at {cut}: {damage:?}");
                assert_eq!(damage.offset, last.segment.end);
                assert!(!earlier.damage.unwrap().torn);
            }
        }
    }

    #[test]
    fn zeros_after_the_records_end_them_in_any_segment() {
        // A preallocated segment: its records, then the unwritten rest of its space.
        let mut bytes = segment_bytes(5, 2);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 3 * SECTOR_BYTES + 100]);
        for is_last in [true, false] {
            let found = scan(&bytes, is_last);
            assert_eq!(found.damage, None);
            assert_eq!(found.entries.len(), 2);
            assert_eq!(
                found.segment.end, end,
                "the next record goes where the zeros start"
            );
        }
        // Fewer zeros than a record header are the end too.
        let mut short = segment_bytes(5, 2);
        short.extend_from_slice(&[0; 3]);
        assert_eq!(scan(&short, true).damage, None);
    }

    #[test]
    fn a_torn_write_into_preallocated_space_is_a_torn_tail() {
        let whole = segment_bytes(5, 3);
        let third = SEGMENT_HEADER_BYTES + 2 * (whole.len() - SEGMENT_HEADER_BYTES) / 3;
        let mut bytes = whole.clone();
        // Part of the third record reached the disk; the rest of the space is still zeros.
        bytes[third + 12..].fill(0);
        bytes.extend_from_slice(&[0; 2 * SECTOR_BYTES]);
        let damage = scan(&bytes, true).damage.unwrap();
        assert!(damage.torn);
        assert_eq!(damage.offset, third as u64);
    }

    #[test]
    fn records_landing_after_unwritten_sectors_are_still_a_torn_tail() {
        // Unsynced writes whose sectors reached the disk out of order: the first record's
        // space is still zeros, a later record landed after a whole zero sector.
        let later = segment_bytes(5, 2);
        let later_record =
            &later[SEGMENT_HEADER_BYTES + (later.len() - SEGMENT_HEADER_BYTES) / 2..];
        let mut bytes = segment_bytes(5, 1);
        let end = bytes.len();
        bytes.resize(end + 2 * SECTOR_BYTES, 0);
        bytes.extend_from_slice(later_record);
        bytes.extend_from_slice(&[0; SECTOR_BYTES]);
        let damage = scan(&bytes, true).damage.unwrap();
        assert!(damage.torn, "{damage:?}");
        assert_eq!(damage.offset, end as u64);
        // In an older segment the same bytes are damage: it was sealed by a sync.
        assert!(!scan(&bytes, false).damage.unwrap().torn);
    }

    #[test]
    fn damage_followed_by_an_intact_record_is_not_torn() {
        let mut bytes = segment_bytes(5, 3);
        let second_record = SEGMENT_HEADER_BYTES + (bytes.len() - SEGMENT_HEADER_BYTES) / 3;
        bytes[second_record + 10] ^= 1;
        let damage = scan(&bytes, true).damage.unwrap();
        assert!(!damage.torn);
        assert_eq!(damage.offset, second_record as u64);
    }

    #[test]
    fn a_header_naming_another_index_is_damage() {
        let bytes = segment_bytes(6, 1);
        let damage = scan(&bytes, true).damage.unwrap();
        assert!(!damage.torn && damage.offset == 0, "{damage:?}");
    }
}
