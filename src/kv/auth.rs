//! The replicated auth state — users, roles, their permissions, whether auth is enabled —
//! and how committed [`AuthOperation`]s change it.
//!
//! The model is etcd v3's: a user holds roles, a role holds permissions, a permission is
//! read, write or readwrite on a [`KeyRange`] (one key is the range `[key, key\0)`, a prefix
//! is [`KeyRange::prefix`]). The role named [`ROOT_ROLE`] is built in: it may do everything,
//! membership, snapshots and auth administration included, and it cannot be added, deleted or
//! given permissions. Auth can only be enabled while the user [`ROOT_USER`] exists holding
//! the root role, and that user can neither be deleted nor lose the role while auth is
//! enabled, so nobody is locked out.
//!
//! Apply never hashes and never reads a clock: password hashes are made by the server before
//! it proposes ([`AuthOperation::UserAdd`] carries the PHC string), and the secret that signs
//! tokens travels in [`AuthOperation::AuthEnable`], so every replica holds the same state and
//! any node verifies any node's token. Every refusal is deterministic ([`AuthError`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

use super::command::KeyRange;

/// The built-in role that may do everything.
pub const ROOT_ROLE: &str = "root";

/// The user that must exist, holding [`ROOT_ROLE`], before auth can be enabled.
pub const ROOT_USER: &str = "root";

/// The longest user or role name, in bytes.
pub const AUTH_NAME_BYTES_MAX: usize = 128;

/// The most users the store holds.
pub const USERS_MAX: usize = 16 * 1024;

/// The most roles the store holds (the built-in root role not counted).
pub const ROLES_MAX: usize = 16 * 1024;

/// The most roles one user holds.
pub const USER_ROLES_MAX: usize = 64;

/// The most permissions one role holds (a role is one snapshot record: 256 permissions of
/// maximal bounds take about 2 MiB).
pub const ROLE_PERMISSIONS_MAX: usize = 256;

/// The longest password hash (a PHC string) a user record may carry.
pub const PASSWORD_HASH_BYTES_MAX: usize = 512;

/// The length of the token-signing secret, in bytes.
pub const AUTH_SECRET_BYTES: usize = 32;

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// Get and scan.
    Read,
    /// Put, delete and the other writes.
    Write,
    /// Both.
    ReadWrite,
}

impl Permission {
    /// Whether holding `self` allows what `wanted` asks (`ReadWrite` wants both halves).
    pub fn allows(self, wanted: Permission) -> bool {
        self == Permission::ReadWrite || self == wanted
    }

    /// The name kvctl and the docs use: `read`, `write`, `readwrite`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::ReadWrite => "readwrite",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Permission {
    type Err = String;

    fn from_str(text: &str) -> Result<Permission, String> {
        match text.to_ascii_lowercase().as_str() {
            "read" => Ok(Permission::Read),
            "write" => Ok(Permission::Write),
            "readwrite" | "read-write" | "rw" => Ok(Permission::ReadWrite),
            _ => Err(format!(
                "unknown permission {text:?}: read, write or readwrite"
            )),
        }
    }
}

/// One permission of a role: what it allows on which keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionGrant {
    /// What it allows.
    pub permission: Permission,
    /// On which keys.
    pub range: KeyRange,
}

/// A user as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The password's Argon2 PHC string, or `None` for a user that authenticates only with a
    /// client certificate.
    pub password_hash: Option<String>,
    /// The roles it holds.
    pub roles: BTreeSet<String>,
    /// The index of the entry that created the user or last changed its password: a token
    /// names it, so a password change or a delete (and re-add) makes older tokens invalid.
    pub credential_revision: LogIndex,
}

/// A role as the store holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its permissions, in the order granted; at most one per range.
    pub permissions: Vec<PermissionGrant>,
}

/// The whole auth state. Shared as an `Arc` between the store and the servers' permission
/// checks; apply replaces it copy-on-write, which is cheap because it changes rarely.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthState {
    /// Whether requests are checked.
    pub(super) enabled: bool,
    /// The index of the latest change; `LogIndex(0)` before any.
    pub(super) revision: LogIndex,
    /// The token-signing secret of the latest `auth enable` (empty before the first).
    pub(super) secret: Vec<u8>,
    /// Users by name.
    pub(super) users: BTreeMap<String, User>,
    /// Roles by name (the built-in root role is not stored).
    pub(super) roles: BTreeMap<String, Role>,
}

/// A change to the auth state, proposed by the server (never sent by a client as is).
///
/// New variants are only ever added at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOperation {
    /// Adds a user.
    UserAdd {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
        /// Its password's PHC string (`None`: certificate only).
        #[serde(deserialize_with = "crate::codec::deserialize_optional_string")]
        password_hash: Option<String>,
    },
    /// Deletes a user.
    UserDelete {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Replaces a user's password.
    UserChangePassword {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
        /// The new password's PHC string (`None`: certificate only).
        #[serde(deserialize_with = "crate::codec::deserialize_optional_string")]
        password_hash: Option<String>,
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
    /// Adds a role without permissions.
    RoleAdd {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Deletes a role, and takes it from every user holding it.
    RoleDelete {
        /// Its name.
        #[serde(deserialize_with = "crate::codec::deserialize_string")]
        name: String,
    },
    /// Grants a role a permission on a range; replaces the permission it held on exactly
    /// that range, if any (as etcd does).
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
        /// The range of the permission.
        range: KeyRange,
    },
    /// Enables auth with a new token-signing secret (tokens signed with an older one stop
    /// being valid). Refused unless [`ROOT_USER`] exists holding [`ROOT_ROLE`].
    AuthEnable {
        /// [`AUTH_SECRET_BYTES`] random bytes, made by the proposing server.
        #[serde(with = "super::bytes")]
        secret: Vec<u8>,
    },
    /// Disables auth: every request is served unchecked again.
    AuthDisable,
}

/// Why the store refused an auth change; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A user or role name is empty, too long, or holds control characters.
    #[error("invalid name {name:?}: 1 to {AUTH_NAME_BYTES_MAX} bytes, no control characters")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// The user exists already.
    #[error("user {name:?} exists already")]
    UserExists {
        /// The name.
        name: String,
    },
    /// No such user.
    #[error("user {name:?} not found")]
    UserNotFound {
        /// The name.
        name: String,
    },
    /// The role exists already (or is the built-in root role).
    #[error("role {name:?} exists already")]
    RoleExists {
        /// The name.
        name: String,
    },
    /// No such role.
    #[error("role {name:?} not found")]
    RoleNotFound {
        /// The name.
        name: String,
    },
    /// The user does not hold the role.
    #[error("user {user:?} does not hold role {role:?}")]
    RoleNotGranted {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// The role holds no permission on exactly this range.
    #[error("role {role:?} holds no permission on that range")]
    PermissionNotGranted {
        /// The role.
        role: String,
    },
    /// The built-in root role cannot be changed this way.
    #[error("the root role is built in: it cannot be added, deleted or given permissions")]
    RootRoleBuiltIn,
    /// Auth cannot be enabled: nobody could administer it.
    #[error("auth enable refused: user \"root\" must exist and hold role \"root\" first")]
    RootMissing,
    /// The change would lock everyone out while auth is enabled.
    #[error("refused while auth is enabled: user \"root\" must keep role \"root\"")]
    RootRequired,
    /// A limit of the auth state would be passed.
    #[error("limit reached: {what}")]
    LimitReached {
        /// Which limit.
        what: String,
    },
    /// A field is malformed (a password hash that is not a PHC string, a bad secret, an
    /// invalid range).
    #[error("invalid auth change: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// Checks a user or role name.
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let bad = name.is_empty()
        || name.len() > AUTH_NAME_BYTES_MAX
        || name.chars().any(|character| character.is_control());
    if bad {
        return Err(AuthError::InvalidName {
            name: name.chars().take(AUTH_NAME_BYTES_MAX).collect(),
        });
    }
    Ok(())
}

fn validate_hash(hash: &Option<String>) -> Result<(), AuthError> {
    match hash {
        Some(hash) if hash.len() > PASSWORD_HASH_BYTES_MAX || !hash.starts_with('$') => {
            Err(AuthError::Invalid {
                reason: "the password hash is not a PHC string".into(),
            })
        }
        _ => Ok(()),
    }
}

/// Checks a permission's range: a non-empty start of a valid key's length, an end after it.
pub(super) fn validate_range(range: &KeyRange) -> Result<(), AuthError> {
    let invalid = |reason: &str| AuthError::Invalid {
        reason: reason.to_string(),
    };
    range
        .validate()
        .map_err(|_| invalid("range bound longer than a key"))?;
    if let Some(end) = &range.end {
        if end.as_slice() <= range.start.as_slice() {
            return Err(invalid("range end not after its start"));
        }
    }
    Ok(())
}

impl AuthOperation {
    /// Checks what can be checked without the state (names, hashes, ranges, the secret).
    pub fn validate(&self) -> Result<(), AuthError> {
        match self {
            AuthOperation::UserAdd {
                name,
                password_hash,
            }
            | AuthOperation::UserChangePassword {
                name,
                password_hash,
            } => {
                validate_name(name)?;
                validate_hash(password_hash)
            }
            AuthOperation::UserDelete { name }
            | AuthOperation::RoleAdd { name }
            | AuthOperation::RoleDelete { name } => validate_name(name),
            AuthOperation::UserGrantRole { user, role }
            | AuthOperation::UserRevokeRole { user, role } => {
                validate_name(user)?;
                validate_name(role)
            }
            AuthOperation::RoleGrantPermission { role, grant } => {
                validate_name(role)?;
                validate_range(&grant.range)
            }
            AuthOperation::RoleRevokePermission { role, range } => {
                validate_name(role)?;
                validate_range(range)
            }
            AuthOperation::AuthEnable { secret } => {
                if secret.len() != AUTH_SECRET_BYTES {
                    return Err(AuthError::Invalid {
                        reason: format!("the secret must be {AUTH_SECRET_BYTES} bytes"),
                    });
                }
                Ok(())
            }
            AuthOperation::AuthDisable => Ok(()),
        }
    }

    /// The bytes of names, hashes and ranges it carries.
    pub(super) fn payload_bytes(&self) -> usize {
        let hash = |hash: &Option<String>| hash.as_ref().map_or(0, String::len);
        let range = |range: &KeyRange| range.start.len() + range.end.as_ref().map_or(0, Vec::len);
        match self {
            AuthOperation::UserAdd {
                name,
                password_hash,
            }
            | AuthOperation::UserChangePassword {
                name,
                password_hash,
            } => name.len() + hash(password_hash),
            AuthOperation::UserDelete { name }
            | AuthOperation::RoleAdd { name }
            | AuthOperation::RoleDelete { name } => name.len(),
            AuthOperation::UserGrantRole { user, role }
            | AuthOperation::UserRevokeRole { user, role } => user.len() + role.len(),
            AuthOperation::RoleGrantPermission { role, grant } => role.len() + range(&grant.range),
            AuthOperation::RoleRevokePermission {
                role,
                range: bounds,
            } => role.len() + range(bounds),
            AuthOperation::AuthEnable { secret } => secret.len(),
            AuthOperation::AuthDisable => 0,
        }
    }
}

impl AuthState {
    /// Whether requests are checked.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The index of the latest auth change; `LogIndex(0)` before any.
    pub fn revision(&self) -> LogIndex {
        self.revision
    }

    /// The secret that signs tokens (empty before auth was first enabled). Never sent to a
    /// client.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The role called `name` (the built-in root role has no record: `None`).
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user name, in order.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Every role name, in order, the built-in root role included.
    pub fn role_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.roles.keys().cloned().collect();
        if let Err(position) = names.binary_search_by(|name| name.as_str().cmp(ROOT_ROLE)) {
            names.insert(position, ROOT_ROLE.to_string());
        }
        names
    }

    /// Whether user `name` exists and holds the root role.
    pub fn is_root(&self, name: &str) -> bool {
        self.users
            .get(name)
            .is_some_and(|user| user.roles.contains(ROOT_ROLE))
    }

    /// Applies one validated operation at `index`; on an error nothing changed.
    pub(super) fn apply(
        &mut self,
        index: LogIndex,
        operation: AuthOperation,
    ) -> Result<(), AuthError> {
        operation.validate()?;
        self.change(index, operation)?;
        self.revision = index;
        Ok(())
    }

    fn change(&mut self, index: LogIndex, operation: AuthOperation) -> Result<(), AuthError> {
        match operation {
            AuthOperation::UserAdd {
                name,
                password_hash,
            } => {
                if self.users.contains_key(&name) {
                    return Err(AuthError::UserExists { name });
                }
                if self.users.len() >= USERS_MAX {
                    return Err(limit("USERS_MAX users exist already"));
                }
                let user = User {
                    password_hash,
                    roles: BTreeSet::new(),
                    credential_revision: index,
                };
                self.users.insert(name, user);
            }
            AuthOperation::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::RootRequired);
                }
                if self.users.remove(&name).is_none() {
                    return Err(AuthError::UserNotFound { name });
                }
            }
            AuthOperation::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.user_mut(&name)?;
                user.password_hash = password_hash;
                user.credential_revision = index;
            }
            AuthOperation::UserGrantRole { user, role } => {
                if role != ROOT_ROLE && !self.roles.contains_key(&role) {
                    return Err(AuthError::RoleNotFound { name: role });
                }
                let holder = self.user_mut(&user)?;
                if holder.roles.len() >= USER_ROLES_MAX && !holder.roles.contains(&role) {
                    return Err(limit("USER_ROLES_MAX roles per user"));
                }
                holder.roles.insert(role);
            }
            AuthOperation::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::RootRequired);
                }
                let holder = self.user_mut(&user)?;
                if !holder.roles.remove(&role) {
                    return Err(AuthError::RoleNotGranted { user, role });
                }
            }
            AuthOperation::RoleAdd { name } => {
                if name == ROOT_ROLE || self.roles.contains_key(&name) {
                    return Err(AuthError::RoleExists { name });
                }
                if self.roles.len() >= ROLES_MAX {
                    return Err(limit("ROLES_MAX roles exist already"));
                }
                self.roles.insert(name, Role::default());
            }
            AuthOperation::RoleDelete { name } => {
                if name == ROOT_ROLE {
                    return Err(AuthError::RootRoleBuiltIn);
                }
                if self.roles.remove(&name).is_none() {
                    return Err(AuthError::RoleNotFound { name });
                }
                for user in self.users.values_mut() {
                    user.roles.remove(&name);
                }
            }
            AuthOperation::RoleGrantPermission { role, grant } => {
                let permissions = &mut self.role_mut(&role)?.permissions;
                let held = permissions
                    .iter()
                    .position(|held| held.range == grant.range);
                match held {
                    Some(position) => permissions[position].permission = grant.permission,
                    None if permissions.len() >= ROLE_PERMISSIONS_MAX => {
                        return Err(limit("ROLE_PERMISSIONS_MAX permissions per role"));
                    }
                    None => permissions.push(grant),
                }
            }
            AuthOperation::RoleRevokePermission { role, range } => {
                let permissions = &mut self.role_mut(&role)?.permissions;
                let before = permissions.len();
                permissions.retain(|held| held.range != range);
                if permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted { role });
                }
            }
            AuthOperation::AuthEnable { secret } => {
                if !self.is_root(ROOT_USER) {
                    return Err(AuthError::RootMissing);
                }
                self.enabled = true;
                self.secret = secret;
            }
            AuthOperation::AuthDisable => self.enabled = false,
        }
        Ok(())
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, AuthError> {
        self.users
            .get_mut(name)
            .ok_or_else(|| AuthError::UserNotFound { name: name.into() })
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut Role, AuthError> {
        if name == ROOT_ROLE {
            return Err(AuthError::RootRoleBuiltIn);
        }
        self.roles
            .get_mut(name)
            .ok_or_else(|| AuthError::RoleNotFound { name: name.into() })
    }

    /// Whether `user` may do `wanted` on every key of `range` (the root role may do
    /// everything). An inverted or empty range asks for its start key.
    pub fn allows(&self, user: &str, range: &KeyRange, wanted: Permission) -> bool {
        let Some(holder) = self.users.get(user) else {
            return false;
        };
        if holder.roles.contains(ROOT_ROLE) {
            return true;
        }
        let mut granted: Vec<&KeyRange> = holder
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| role.permissions.iter())
            .filter(|grant| grant.permission.allows(wanted))
            .map(|grant| &grant.range)
            .collect();
        granted.sort_by(|left, right| left.start.cmp(&right.start));
        covers(&granted, range)
    }

    /// Checks the whole state as a snapshot restore must: names, limits, references, and
    /// that an enabled state has its root user and a secret.
    pub(super) fn check(&self, applied: LogIndex) -> Result<(), &'static str> {
        if self.revision > applied {
            return Err("auth revision after the applied index");
        }
        if self.users.len() > USERS_MAX || self.roles.len() > ROLES_MAX {
            return Err("more users or roles than the limits");
        }
        if !(self.secret.is_empty() || self.secret.len() == AUTH_SECRET_BYTES) {
            return Err("auth secret of a wrong length");
        }
        if self.enabled && (self.secret.is_empty() || !self.is_root(ROOT_USER)) {
            return Err("auth enabled without a root user or a secret");
        }
        for (name, user) in &self.users {
            validate_name(name).map_err(|_| "invalid user name")?;
            validate_hash(&user.password_hash).map_err(|_| "invalid password hash")?;
            if user.credential_revision > self.revision || user.roles.len() > USER_ROLES_MAX {
                return Err("user record out of bounds");
            }
            let dangling = user
                .roles
                .iter()
                .any(|role| role != ROOT_ROLE && !self.roles.contains_key(role));
            if dangling {
                return Err("user holds a role that does not exist");
            }
        }
        for (name, role) in &self.roles {
            validate_name(name).map_err(|_| "invalid role name")?;
            if name == ROOT_ROLE || role.permissions.len() > ROLE_PERMISSIONS_MAX {
                return Err("role record out of bounds");
            }
            for grant in &role.permissions {
                validate_range(&grant.range).map_err(|_| "invalid permission range")?;
            }
        }
        Ok(())
    }
}

fn limit(what: &str) -> AuthError {
    AuthError::LimitReached { what: what.into() }
}

/// Whether the union of `granted` (sorted by start) covers every key of `wanted`.
fn covers(granted: &[&KeyRange], wanted: &KeyRange) -> bool {
    let empty = matches!(&wanted.end, Some(end) if end.as_slice() <= wanted.start.as_slice());
    let single;
    let wanted = if empty {
        let mut end = wanted.start.clone();
        end.push(0);
        single = KeyRange::between(wanted.start.clone(), end);
        &single
    } else {
        wanted
    };
    // Sweep: `covered` is the first key not yet known to be covered.
    let mut covered: Vec<u8> = wanted.start.clone();
    for range in granted {
        if range.start.as_slice() > covered.as_slice() {
            break;
        }
        match &range.end {
            None => return true,
            Some(end) if end.as_slice() > covered.as_slice() => covered = end.clone(),
            Some(_) => {}
        }
        if let Some(wanted_end) = &wanted.end {
            if covered.as_slice() >= wanted_end.as_slice() {
                return true;
            }
        }
    }
    false
}

mod published;
#[cfg(test)]
mod tests;

pub(super) use published::split_checked;
pub use published::{wrap_checked, AuthPublisher, AUTH_CHECKED_OVERHEAD_BYTES, AUTH_CHECKED_TAG};
