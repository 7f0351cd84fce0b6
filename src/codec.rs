//! The one place where bytes meet values: serde + bincode 2 with explicit size limits, and the
//! record framing shared by log segments and network frames.
//!
//! Record layout (all integers little-endian):
//!
//! ```text
//! +----------------+----------------+----------------------+
//! | len: u32       | crc32: u32     | payload: len bytes   |
//! +----------------+----------------+----------------------+
//! ```
//!
//! `crc32` is CRC-32 (IEEE) of the payload. A length above the caller's limit is rejected before
//! anything is allocated, so a hostile or corrupt prefix can never make us allocate gigabytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CodecError;
use crate::limits::FRAME_BYTES_MAX;

pub(crate) mod bytes;

/// Bytes in a record header (`len` + `crc32`).
pub const RECORD_HEADER_BYTES: usize = 8;

/// The bincode configuration every encoding uses: varint integers, little-endian, and a decode
/// allocation limit so that no length inside a value can exceed a frame.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ FRAME_BYTES_MAX as usize }>()
}

/// Deserializes a `String` through `deserialize_str` (use with `#[serde(deserialize_with)]` on
/// string fields of values that arrive from the network or disk). bincode's borrowing decoder
/// then checks the claimed length against the bytes actually present and the string is copied
/// at its real size; `String`'s own impl asks for an owned string, which bincode allocates from
/// the claimed length first (fuzzing: 4 MiB from a 45-byte message).
pub fn deserialize_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    struct StrVisitor;
    impl serde::de::Visitor<'_> for StrVisitor {
        type Value = String;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_owned())
        }
    }
    deserializer.deserialize_str(StrVisitor)
}

/// [`deserialize_string`] for an optional string (`#[serde(deserialize_with)]` on an
/// `Option<String>` field).
pub fn deserialize_optional_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Bounded(#[serde(deserialize_with = "deserialize_string")] String);
    let value: Option<Bounded> = serde::Deserialize::deserialize(deserializer)?;
    Ok(value.map(|Bounded(text)| text))
}

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|error| CodecError::Encode {
        reason: error.to_string(),
    })
}

/// Encodes `value`, appending to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|error| CodecError::Encode {
            reason: error.to_string(),
        })
}

/// Decodes exactly one `T` from all of `bytes`; trailing bytes are an error.
///
/// Decodes through bincode's borrowing decoder: a byte string deserialized with
/// `deserialize_bytes` is then taken from `bytes` and checked against what is actually present,
/// instead of being allocated up front from its claimed length (fuzzing found a 10-byte input
/// that made the owned decoder allocate 16 MiB).
/// Decodes a `T` from the start of `bytes`; returns it with the bytes it took (the rest is
/// the caller's).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice::<T, _>(bytes, config()).map_err(|error| {
        CodecError::Malformed {
            reason: error.to_string(),
        }
    })
}

/// Decodes `bytes`, all of them, as a `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::borrow_decode_from_slice::<T, _>(bytes, config()).map_err(|error| {
            CodecError::Malformed {
                reason: error.to_string(),
            }
        })?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Appends one framed record holding `payload` to `out`.
pub fn write_record(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() as u64 <= u32::MAX as u64);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Encodes `value` and appends it as one framed record to `out`.
pub fn write_value_record<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    encode_into(value, out)?;
    let payload_len = out.len() - start - RECORD_HEADER_BYTES;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The outcome of looking for one record at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordRead<'a> {
    /// A whole, checksummed record: its payload and the bytes it occupied.
    Complete {
        /// The payload.
        payload: &'a [u8],
        /// Header plus payload length.
        consumed: usize,
    },
    /// The buffer ends inside the record; `needed` bytes in all would complete it.
    Incomplete {
        /// Total bytes the record needs (header included), when the header is whole.
        needed: Option<usize>,
    },
}

/// Reads the record at the start of `buffer`, refusing lengths above `limit` before allocating
/// or waiting for them, and checking the checksum.
pub fn read_record(buffer: &[u8], limit: u64) -> Result<RecordRead<'_>, CodecError> {
    if buffer.len() < RECORD_HEADER_BYTES {
        return Ok(RecordRead::Incomplete { needed: None });
    }
    let len = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as u64;
    let stored = u32::from_le_bytes([buffer[4], buffer[5], buffer[6], buffer[7]]);
    if len > limit {
        return Err(CodecError::TooLarge {
            what: "record",
            bytes: len,
            limit,
        });
    }
    let total = RECORD_HEADER_BYTES + len as usize;
    if buffer.len() < total {
        return Ok(RecordRead::Incomplete {
            needed: Some(total),
        });
    }
    let payload = &buffer[RECORD_HEADER_BYTES..total];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(RecordRead::Complete {
        payload,
        consumed: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, EntryId, EntryPayload, LogIndex, Term};

    fn entry() -> Entry {
        Entry {
            id: EntryId::new(Term(3), LogIndex(7)),
            payload: EntryPayload::Command(b"hello".to_vec()),
        }
    }

    #[test]
    fn value_round_trip() {
        let bytes = encode(&entry()).unwrap();
        assert_eq!(decode::<Entry>(&bytes).unwrap(), entry());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&entry()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Entry>(&bytes),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn record_round_trip_and_incomplete_prefixes() {
        let mut out = Vec::new();
        write_value_record(&entry(), &mut out).unwrap();
        let RecordRead::Complete { payload, consumed } = read_record(&out, 1 << 20).unwrap() else {
            panic!("expected a complete record");
        };
        assert_eq!(consumed, out.len());
        assert_eq!(decode::<Entry>(payload).unwrap(), entry());
        for cut in 0..out.len() {
            assert!(matches!(
                read_record(&out[..cut], 1 << 20).unwrap(),
                RecordRead::Incomplete { .. }
            ));
        }
    }

    #[test]
    fn flipped_bit_is_a_checksum_error() {
        let mut out = Vec::new();
        write_record(b"payload", &mut out);
        let last = out.len() - 1;
        out[last] ^= 0x10;
        assert!(matches!(
            read_record(&out, 1 << 20),
            Err(CodecError::Checksum { .. })
        ));
    }

    #[test]
    fn huge_length_prefix_is_refused_before_allocation() {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            read_record(&out, 1024),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_inner_length_does_not_allocate() {
        // A Command whose varint length claims ~2^60 bytes: bincode's limit must refuse it.
        let mut bytes = encode(&entry()).unwrap();
        bytes.truncate(3);
        bytes.extend_from_slice(&[1, 0xFF, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(decode::<Entry>(&bytes).is_err());
    }

    /// `EntryPayload::Command` goes through the block adapter: the bytes on disk and on the
    /// wire must stay those of the plain derive (logs written by older builds still read).
    #[test]
    fn a_command_entry_encodes_as_with_the_plain_derive() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        enum PlainPayload {
            Noop,
            Command(Vec<u8>),
        }
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct PlainEntry {
            id: crate::types::EntryId,
            payload: PlainPayload,
        }
        for command in [Vec::new(), b"hello".to_vec(), vec![0xAB; 70_000]] {
            let entry = Entry {
                id: EntryId::new(Term(3), LogIndex(7)),
                payload: EntryPayload::Command(command.clone()),
            };
            let plain = PlainEntry {
                id: entry.id,
                payload: PlainPayload::Command(command),
            };
            let bytes = encode(&entry).unwrap();
            assert_eq!(bytes, encode(&plain).unwrap());
            assert_eq!(decode::<PlainEntry>(&bytes).unwrap(), plain);
            assert_eq!(decode::<Entry>(&bytes).unwrap(), entry);
        }
        let noop = PlainEntry {
            id: EntryId::new(Term(1), LogIndex(1)),
            payload: PlainPayload::Noop,
        };
        let decoded = decode::<Entry>(&encode(&noop).unwrap()).unwrap();
        assert_eq!(decoded.payload, EntryPayload::Noop);
    }
}
