//! The authentication and auth-administration parts of the client protocol: the requests
//! behind `kvctl user|role|auth`, the token a connection authenticates with, and what a
//! denial names. See `docs/security.md` for the model.

use serde::{Deserialize, Serialize};

use crate::kv::auth::{Permission, PermissionGrant};
use crate::kv::KeyRange;
use crate::types::LogIndex;

/// A password on the wire: its `Debug` never shows it, so no log line can leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(#[serde(deserialize_with = "crate::codec::deserialize_string")] pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl From<&str> for Password {
    fn from(text: &str) -> Password {
        Password(text.to_string())
    }
}

/// A signed, time-limited proof that a connection authenticated as `user`
/// ([`RequestBody::Authenticate`](super::RequestBody::Authenticate)). Any node of the cluster
/// verifies it (the signing secret is replicated); a client treats it as opaque and presents
/// it again with [`RequestBody::PresentToken`](super::RequestBody::PresentToken) on a new
/// connection.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthToken {
    /// Who.
    #[serde(deserialize_with = "crate::codec::deserialize_string")]
    pub user: String,
    /// Until when, in milliseconds since the Unix epoch on the issuing node's clock.
    pub expires_unix_ms: u64,
    /// The user's credential revision when issued: a password change or a delete makes the
    /// token invalid.
    pub credential_revision: LogIndex,
    /// HMAC-SHA256 of the fields above with the cluster's token secret.
    pub mac: Vec<u8>,
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthToken")
            .field("user", &self.user)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .field("credential_revision", &self.credential_revision)
            .finish_non_exhaustive()
    }
}

/// The answer to an authentication: the connection's requests now run as `user`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticated {
    /// The user.
    pub user: String,
    /// The token, for other connections (and this one after a reconnect).
    pub token: AuthToken,
    /// How long the token stays valid from now, in milliseconds.
    pub ttl_ms: u64,
}

/// An auth administration request (`kvctl user|role|auth ...`). With auth enabled, only a
/// user holding the root role may send one, except [`AuthRequest::Status`] (any
/// authenticated user) and [`AuthRequest::UserGet`] of oneself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// Adds a user; the server hashes the password (Argon2id) before proposing.
    UserAdd {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
        /// Its password; `None` for a user that authenticates only with a client
        /// certificate.
        password: Option<Password>,
    },
    /// Deletes a user (not `root` while auth is enabled).
    UserDelete {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Replaces a user's password; its tokens stop being valid.
    UserChangePassword {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
        /// The new password (`None`: certificate only).
        password: Option<Password>,
    },
    /// Gives a user a role.
    UserGrantRole {
        /// The user.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        user: String,
        /// The role.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        role: String,
    },
    /// Takes a role from a user.
    UserRevokeRole {
        /// The user.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        user: String,
        /// The role.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        role: String,
    },
    /// A user's roles.
    UserGet {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Every user name.
    UserList,
    /// Adds a role.
    RoleAdd {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Deletes a role (and takes it from its users).
    RoleDelete {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Grants a role a permission on a range.
    RoleGrantPermission {
        /// The role.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        role: String,
        /// What, and where.
        grant: PermissionGrant,
    },
    /// Takes from a role its permission on exactly `range`.
    RoleRevokePermission {
        /// The role.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        role: String,
        /// The permission's range.
        range: KeyRange,
    },
    /// A role's permissions.
    RoleGet {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Every role name.
    RoleList,
    /// Enables auth (refused unless user `root` holds role `root`).
    Enable,
    /// Disables auth.
    Disable,
    /// Whether auth is enabled, and its revision.
    Status,
}

impl AuthRequest {
    /// Whether it changes the auth state (goes through the log).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            AuthRequest::UserGet { .. }
                | AuthRequest::UserList
                | AuthRequest::RoleGet { .. }
                | AuthRequest::RoleList
                | AuthRequest::Status
        )
    }
}

/// The answer to an [`AuthRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthReply {
    /// The change was committed and applied; the auth revision is now `revision`.
    Changed {
        /// The auth revision.
        revision: LogIndex,
    },
    /// A user.
    User {
        /// Its name.
        name: String,
        /// Its roles, in order.
        roles: Vec<String>,
        /// Whether it has a password (else it authenticates only by certificate).
        has_password: bool,
    },
    /// A role.
    Role {
        /// Its name.
        name: String,
        /// Its permissions (the root role lists none: it may do everything).
        permissions: Vec<PermissionGrant>,
    },
    /// User or role names, in order.
    Names(Vec<String>),
    /// Whether auth is enabled.
    Status {
        /// Enabled.
        enabled: bool,
        /// The auth revision.
        revision: LogIndex,
    },
}

/// What a denied request needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Needed {
    /// A permission on keys.
    Keys {
        /// The keys (one key is `[key, key\0)`).
        range: KeyRange,
        /// What on them.
        permission: Permission,
    },
    /// The root role, for `action`.
    Root {
        /// What was asked (e.g. "membership change", "user add").
        action: String,
    },
}

impl std::fmt::Display for Needed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Needed::Keys { range, permission } => {
                write!(f, "{permission} permission on {}", describe_range(range))
            }
            Needed::Root { action } => write!(f, "the root role ({action})"),
        }
    }
}

/// A range as people read it: one key, a prefix, or `[start, end)`, bytes escaped.
pub fn describe_range(range: &KeyRange) -> String {
    let text = |bytes: &[u8]| bytes.escape_ascii().to_string();
    match &range.end {
        Some(end)
            if end.len() == range.start.len() + 1
                && end.starts_with(&range.start)
                && end.last() == Some(&0) =>
        {
            format!("key \"{}\"", text(&range.start))
        }
        _ if *range == KeyRange::prefix(&range.start) && !range.start.is_empty() => {
            format!("prefix \"{}\"", text(&range.start))
        }
        Some(end) => format!("range [\"{}\", \"{}\")", text(&range.start), text(end)),
        None if range.start.is_empty() => "every key".to_string(),
        None => format!("range [\"{}\", end)", text(&range.start)),
    }
}

/// The range of exactly one key: `[key, key\0)`.
pub fn single_key(key: &[u8]) -> KeyRange {
    let mut end = key.to_vec();
    end.push(0);
    KeyRange::between(key.to_vec(), end)
}
