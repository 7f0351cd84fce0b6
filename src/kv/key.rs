//! A stored key: up to [`INLINE_BYTES_MAX`] bytes held inline, longer ones shared on the heap.
//!
//! The store's persistent map compares keys at every level of every lookup. With each key a
//! reference-counted allocation of its own, every comparison read another cache line: on the
//! leader during puts at 64 clients on a 100k-key store, the lookup before each put was 10.8 %
//! of the node's CPU, `memcmp` through those pointers 6.4 % of it (`perf`, docs/operations.md).
//! A short key held in the tree's own node is compared where the node already is, and costs
//! no allocation (24 bytes in the node instead of 16 plus a 16-byte counter block, the key
//! and the allocator's overhead).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The longest key held inline.
pub(super) const INLINE_BYTES_MAX: usize = 22;

/// A key of the store; cloning copies at most 24 bytes or a reference count. Compares,
/// hashes and borrows as its bytes.
#[derive(Clone)]
pub(super) enum Key {
    /// `bytes[..len]`.
    Inline {
        len: u8,
        bytes: [u8; INLINE_BYTES_MAX],
    },
    /// Longer keys.
    Shared(Arc<[u8]>),
}

impl Key {
    /// The key `bytes`.
    pub(super) fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= INLINE_BYTES_MAX {
            let mut inline = [0u8; INLINE_BYTES_MAX];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Key::Shared(Arc::from(bytes))
        }
    }
}

impl From<Vec<u8>> for Key {
    /// As [`Key::new`]: an `Arc<[u8]>` is a new allocation (with its counts) either way.
    fn from(bytes: Vec<u8>) -> Key {
        Key::new(&bytes)
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key::new(bytes)
    }
}

impl Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        **self == **other
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_and_compare_as_their_bytes_inline_or_not() {
        let long = vec![b'k'; INLINE_BYTES_MAX + 1];
        let samples: Vec<Vec<u8>> = vec![
            vec![],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"ab".to_vec(),
            vec![b'k'; INLINE_BYTES_MAX],
            long.clone(),
            [long.as_slice(), b"z"].concat(),
            vec![0xff; 40],
        ];
        for left in &samples {
            let key = Key::from(left.clone());
            assert_eq!(&*key, left.as_slice());
            assert_eq!(
                matches!(key, Key::Inline { .. }),
                left.len() <= INLINE_BYTES_MAX
            );
            assert_eq!(Key::new(left), key);
            for right in &samples {
                assert_eq!(
                    key.cmp(&Key::new(right)),
                    left.cmp(right),
                    "{left:?} {right:?}"
                );
            }
        }
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }
}
