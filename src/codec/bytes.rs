//! Serde adapters that encode byte strings as one block instead of element by element.
//!
//! Serde sees a `Vec<u8>` as a sequence of `u8`s, which the codec writes and reads one element
//! at a time: about 4 ms for a 1 MiB value. Marking byte fields `#[serde(with = "bytes")]`
//! makes them a single `serialize_bytes` / `deserialize_byte_buf`, copied in one piece. The
//! encoding is the same (a varint length, then the bytes), so the adapters change speed, not
//! format; a test below holds them to that.

use std::fmt;

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serializes a byte string as one block.
pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserializes a byte string written by [`serialize`] (or as a sequence of `u8`).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    // `deserialize_bytes`, not `_byte_buf`: with the codec's borrowing decoder the bytes come
    // from the input, so a claimed length larger than the input allocates nothing.
    deserializer.deserialize_bytes(ByteStringVisitor)
}

/// Accepts every shape a byte string may arrive in.
struct ByteStringVisitor;

impl<'de> Visitor<'de> for ByteStringVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Vec<u8>, A::Error> {
        // The size hint comes from the input: never trust it for more than a small allocation.
        let mut bytes = Vec::with_capacity(sequence.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = sequence.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

/// The same for an optional byte string.
pub(crate) mod option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Borrows the bytes so they serialize through the block adapter.
    #[derive(Serialize)]
    struct Borrowed<'a>(#[serde(with = "super")] &'a Vec<u8>);

    /// Owns bytes deserialized through the block adapter.
    #[derive(Deserialize)]
    struct Owned(#[serde(with = "super")] Vec<u8>);

    /// Serializes an optional byte string, the bytes as one block.
    pub(crate) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        bytes.as_ref().map(Borrowed).serialize(serializer)
    }

    /// Deserializes an optional byte string written by [`serialize`].
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Owned>::deserialize(deserializer)?.map(|Owned(bytes)| bytes))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::codec;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        value: Vec<u8>,
        maybe: Option<Vec<u8>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Block {
        #[serde(with = "super")]
        value: Vec<u8>,
        #[serde(with = "super::option")]
        maybe: Option<Vec<u8>>,
    }

    #[test]
    fn block_encoding_is_the_plain_encoding() {
        for (value, maybe) in [
            (Vec::new(), None),
            (vec![1, 2, 3], Some(Vec::new())),
            (vec![0xFF; 300], Some(vec![9; 70_000])),
        ] {
            let plain = Plain {
                value: value.clone(),
                maybe: maybe.clone(),
            };
            let block = Block { value, maybe };
            let plain_bytes = codec::encode(&plain).unwrap();
            let block_bytes = codec::encode(&block).unwrap();
            assert_eq!(plain_bytes, block_bytes);
            assert_eq!(codec::decode::<Block>(&plain_bytes).unwrap(), block);
            assert_eq!(codec::decode::<Plain>(&block_bytes).unwrap(), plain);
        }
    }

    #[test]
    fn hostile_lengths_are_refused() {
        // A length of about 2^60 bytes followed by nothing.
        let bytes = [0xFD, 0, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert!(codec::decode::<Block>(&bytes).is_err());
    }
}
