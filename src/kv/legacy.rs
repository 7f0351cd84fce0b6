//! The layouts of snapshot versions 1 and 2, which this build still reads.
//!
//! Before version 3 a key's [`Metadata`] had no `lease` and a [`WriteOutcome`] no `deleted`
//! count. bincode is not self-describing, so both the key records and the responses cached in
//! sessions must be read with the old layout and converted; a cached response is re-encoded in
//! the current layout, so a duplicate write answers in the format clients of this build read.

use serde::{Deserialize, Serialize};

use crate::error::CodecError;
use crate::types::LogIndex;

use super::command::KvError;
use super::response::{Metadata, Response, Versioned, WriteOutcome};

/// [`Metadata`] before version 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MetadataV2 {
    pub(super) create_revision: LogIndex,
    pub(super) mod_revision: LogIndex,
    pub(super) version: u64,
}

impl From<MetadataV2> for Metadata {
    fn from(old: MetadataV2) -> Metadata {
        Metadata {
            create_revision: old.create_revision,
            mod_revision: old.mod_revision,
            version: old.version,
            lease: None,
        }
    }
}

/// [`Versioned`] before version 3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct VersionedV2 {
    #[serde(with = "super::bytes")]
    pub(super) value: Vec<u8>,
    pub(super) metadata: MetadataV2,
}

impl From<VersionedV2> for Versioned {
    fn from(old: VersionedV2) -> Versioned {
        Versioned {
            value: old.value,
            metadata: old.metadata.into(),
        }
    }
}

/// [`WriteOutcome`] before version 3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WriteOutcomeV2 {
    pub(super) previous: Option<MetadataV2>,
    pub(super) current: Option<MetadataV2>,
    #[serde(with = "super::bytes::option")]
    pub(super) previous_value: Option<Vec<u8>>,
}

/// [`Response`] before version 3: the same variants, up to `SessionRegistered`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum ResponseV2 {
    Written {
        revision: LogIndex,
        outcomes: Vec<WriteOutcomeV2>,
    },
    ComparisonFailed {
        operation: usize,
        current: Option<VersionedV2>,
    },
    Rejected(KvError),
    SessionRegistered {
        client_id: u64,
    },
}

impl From<ResponseV2> for Response {
    fn from(old: ResponseV2) -> Response {
        match old {
            ResponseV2::Written { revision, outcomes } => Response::Written {
                revision,
                outcomes: outcomes
                    .into_iter()
                    .map(|outcome| WriteOutcome {
                        previous: outcome.previous.map(Metadata::from),
                        current: outcome.current.map(Metadata::from),
                        deleted: u64::from(outcome.previous.is_some() && outcome.current.is_none()),
                        previous_value: outcome.previous_value,
                    })
                    .collect(),
            },
            ResponseV2::ComparisonFailed { operation, current } => Response::ComparisonFailed {
                operation,
                current: current.map(Versioned::from),
            },
            ResponseV2::Rejected(error) => Response::Rejected(error),
            ResponseV2::SessionRegistered { client_id } => {
                Response::SessionRegistered { client_id }
            }
        }
    }
}

/// Re-encodes a response cached by a build before version 3 in the current layout.
pub(super) fn transcode_response(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    let old: ResponseV2 = crate::codec::decode(bytes)?;
    Ok(Response::from(old).encode())
}
