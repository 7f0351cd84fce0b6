//! [`fenced_put`]: the storage-side check that refuses writes carrying a stale fencing token.

use crate::client::Client;
use crate::kv::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use crate::types::LogIndex;

use super::{text, RecipeError};

/// How many times [`fenced_put`] starts over when the fence appears or vanishes under it.
const FENCE_ATTEMPTS_MAX: usize = 8;

/// What [`fenced_put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FencedPut {
    /// The token was at least the highest the resource had seen: the value and the token
    /// were written together at `revision`.
    Written {
        /// The revision of the write.
        revision: LogIndex,
    },
    /// A later holder had already written: nothing was written.
    Refused {
        /// The highest token the resource has seen.
        highest_token: LogIndex,
    },
}

/// The key that holds the highest fencing token `resource` has seen: `<resource>/fence`.
pub fn fence_key(resource: &[u8]) -> Vec<u8> {
    let mut key = resource.to_vec();
    key.extend_from_slice(b"/fence");
    key
}

/// A token as the fence stores it: fixed-width decimal, so that byte order is number order
/// and a value compare is a number compare.
fn encode_token(token: LogIndex) -> String {
    format!("{:020}", token.0)
}

fn decode_token(fence: &[u8], value: &[u8]) -> Result<LogIndex, RecipeError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|digits| digits.len() == 20)
        .and_then(|digits| digits.parse::<u64>().ok())
        .map(LogIndex)
        .ok_or_else(|| RecipeError::InvalidFence {
            key: text(fence),
            value: text(value),
        })
}

/// Writes `value` to `resource` only if `token` is at least the highest fencing token the
/// resource has seen, and records `token` as that highest, in one transaction: "if
/// `value(<resource>/fence) <= token` then put both" (the first write creates the fence).
///
/// With every writer of the resource going through it with its [`Guard`](super::Guard)'s
/// token, a holder that lost the lock without knowing it — paused past its lease while
/// another took over — has its late writes refused once the later holder has written: the
/// resource never sees an old holder's write after a newer one's.
///
/// It does **not** make the lock exclusive in time: until the new holder's first fenced
/// write, the old holder's writes still land (before the new holder's, never after). It
/// protects only writes that go through it: a side effect outside keyval (an email, a file on
/// another system) needs its own check of the token there. An outcome of
/// [`ClientError::Indeterminate`](crate::client::ClientError::Indeterminate) means the write
/// may or may not have landed.
pub fn fenced_put(
    client: &Client,
    resource: &[u8],
    value: &[u8],
    token: LogIndex,
) -> Result<FencedPut, RecipeError> {
    let fence = fence_key(resource);
    let writes = [
        TxnOp::put(resource, value),
        TxnOp::put(fence.clone(), encode_token(token)),
    ];
    // `fence <= token` as `fence < token + 1`: values compare byte-wise, the encoding keeps
    // that the number order.
    let not_newer = Compare::value(
        fence.clone(),
        CompareOp::Less,
        encode_token(LogIndex(token.0.saturating_add(1))),
    );
    // A value compare never holds on an absent key: the first write checks absence instead.
    let absent = Compare::version(fence.clone(), CompareOp::Equal, 0);
    let mut compare = not_newer.clone();
    for _ in 0..FENCE_ATTEMPTS_MAX {
        let response = client.txn(
            Txn::new()
                .when([compare.clone()])
                .then(writes.clone())
                .otherwise([TxnOp::get(fence.clone())]),
        )?;
        if response.succeeded {
            return Ok(FencedPut::Written {
                revision: response.revision,
            });
        }
        match response.responses.first() {
            Some(TxnOpResponse::Get(Some(current))) => {
                let highest_token = decode_token(&fence, &current.value)?;
                if highest_token <= token {
                    // Lowered under us between the compare and now: try again.
                    compare = not_newer.clone();
                    continue;
                }
                return Ok(FencedPut::Refused { highest_token });
            }
            Some(TxnOpResponse::Get(None)) => compare = absent.clone(),
            _ => {
                return Err(crate::client::ClientError::Protocol {
                    reason: format!("unexpected answer to a fenced put: {response:?}"),
                }
                .into())
            }
        }
    }
    Err(crate::client::ClientError::Unavailable {
        reason: format!(
            "the fence {} kept changing under a fenced put",
            text(&fence)
        ),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_encode_in_number_order() {
        let tokens = [0, 1, 9, 10, 99, 12_345, u64::MAX - 1, u64::MAX];
        for pair in tokens.windows(2) {
            let (low, high) = (
                encode_token(LogIndex(pair[0])),
                encode_token(LogIndex(pair[1])),
            );
            assert!(low.as_bytes() < high.as_bytes(), "{low} < {high}");
        }
        for token in tokens {
            let encoded = encode_token(LogIndex(token));
            assert_eq!(decode_token(b"f", encoded.as_bytes()), Ok(LogIndex(token)));
        }
        assert!(decode_token(b"f", b"12").is_err());
        assert!(decode_token(b"f", b"0000000000000000000x").is_err());
    }
}
