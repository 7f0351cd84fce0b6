//! `kvctl user ...`, `kvctl role ...` and `kvctl auth ...`: auth administration, as
//! etcdctl does it. With auth enabled they need a user holding the root role
//! (`kvctl --user root ...`).
//!
//! Passwords are never prompted for: `user add NAME:PASSWORD` (etcdctl's form), or the
//! password in `KEYVAL_NEW_PASSWORD`, or `--no-password` for a user that authenticates only
//! with a client certificate.

use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::kv::auth::{Permission, PermissionGrant};
use crate::kv::KeyRange;
use crate::protocol::auth::{describe_range, AuthReply, AuthRequest, Password};

use super::kvctl::{fail, EXIT_OK, EXIT_USAGE};

/// The environment variable a new password is read from when the command line has none.
pub const NEW_PASSWORD_ENV: &str = "KEYVAL_NEW_PASSWORD";

/// `kvctl user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add user NAME (`NAME:PASSWORD`, or the password in KEYVAL_NEW_PASSWORD).
    Add {
        /// The name, optionally `:PASSWORD`.
        name: String,
        /// A user without a password: it authenticates only with a client certificate
        /// whose common name is NAME.
        #[arg(long)]
        no_password: bool,
    },
    /// Delete user NAME.
    Delete {
        /// The name.
        name: String,
    },
    /// Change user NAME's password (`NAME:PASSWORD`, or KEYVAL_NEW_PASSWORD); its tokens stop
    /// being valid.
    Passwd {
        /// The name, optionally `:PASSWORD`.
        name: String,
    },
    /// Give user NAME the role ROLE.
    GrantRole {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// Take the role ROLE from user NAME.
    RevokeRole {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// Print user NAME's roles.
    Get {
        /// The user.
        name: String,
    },
    /// List every user.
    List,
}

/// `kvctl role` subcommands.
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add role NAME.
    Add {
        /// The name.
        name: String,
    },
    /// Delete role NAME (and take it from its users).
    Delete {
        /// The name.
        name: String,
    },
    /// Grant role NAME read, write or readwrite on KEY, on [KEY, END), or with --prefix on
    /// every key starting with KEY.
    GrantPermission {
        /// The role.
        name: String,
        /// read, write or readwrite.
        permission: Permission,
        /// The key (with END: the range's start; with --prefix: the prefix).
        key: String,
        /// The end of a range, exclusive.
        #[arg(conflicts_with = "prefix")]
        end: Option<String>,
        /// Every key starting with KEY (an empty KEY: every key).
        #[arg(long)]
        prefix: bool,
    },
    /// Take from role NAME its permission on KEY (or [KEY, END), or --prefix KEY).
    RevokePermission {
        /// The role.
        name: String,
        /// The key (with END: the range's start; with --prefix: the prefix).
        key: String,
        /// The end of a range, exclusive.
        #[arg(conflicts_with = "prefix")]
        end: Option<String>,
        /// The permission was granted with --prefix.
        #[arg(long)]
        prefix: bool,
    },
    /// Print role NAME's permissions.
    Get {
        /// The role.
        name: String,
    },
    /// List every role.
    List,
}

/// `kvctl auth` subcommands.
#[derive(Clone, Copy, Debug, Subcommand)]
pub enum AuthCommand {
    /// Enable auth: every request must then authenticate (refused unless user root exists
    /// holding role root).
    Enable,
    /// Disable auth.
    Disable,
    /// Print whether auth is enabled.
    Status,
}

/// The range a permission command names.
fn permission_range(key: &str, end: Option<&str>, prefix: bool) -> KeyRange {
    match end {
        Some(end) => KeyRange::between(key.as_bytes().to_vec(), end.as_bytes().to_vec()),
        None if prefix => KeyRange::prefix(key.as_bytes()),
        None => crate::protocol::auth::single_key(key.as_bytes()),
    }
}

/// `NAME[:PASSWORD]`: the name and the password, from the argument or the environment.
fn name_and_password(argument: &str) -> Result<(String, Password), String> {
    if let Some((name, password)) = argument.split_once(':') {
        return Ok((name.to_string(), Password(password.to_string())));
    }
    match std::env::var(NEW_PASSWORD_ENV) {
        Ok(password) => Ok((argument.to_string(), Password(password))),
        Err(_) => Err(format!(
            "no password for {argument:?}: give NAME:PASSWORD, set {NEW_PASSWORD_ENV}, or \
             --no-password"
        )),
    }
}

/// Runs `kvctl user ...`.
pub fn run_user(client: &Client, command: UserCommand, json: bool) -> i32 {
    let request = match command {
        UserCommand::Add { name, no_password } => {
            let (name, password) = if no_password {
                (name, None)
            } else {
                match name_and_password(&name) {
                    Ok((name, password)) => (name, Some(password)),
                    Err(message) => return usage(&message),
                }
            };
            AuthRequest::UserAdd { name, password }
        }
        UserCommand::Delete { name } => AuthRequest::UserDelete { name },
        UserCommand::Passwd { name } => match name_and_password(&name) {
            Ok((name, password)) => AuthRequest::UserChangePassword {
                name,
                password: Some(password),
            },
            Err(message) => return usage(&message),
        },
        UserCommand::GrantRole { name, role } => AuthRequest::UserGrantRole { user: name, role },
        UserCommand::RevokeRole { name, role } => AuthRequest::UserRevokeRole { user: name, role },
        UserCommand::Get { name } => AuthRequest::UserGet { name },
        UserCommand::List => AuthRequest::UserList,
    };
    send(client, request, json)
}

/// Runs `kvctl role ...`.
pub fn run_role(client: &Client, command: RoleCommand, json: bool) -> i32 {
    let request = match command {
        RoleCommand::Add { name } => AuthRequest::RoleAdd { name },
        RoleCommand::Delete { name } => AuthRequest::RoleDelete { name },
        RoleCommand::GrantPermission {
            name,
            permission,
            key,
            end,
            prefix,
        } => AuthRequest::RoleGrantPermission {
            role: name,
            grant: PermissionGrant {
                permission,
                range: permission_range(&key, end.as_deref(), prefix),
            },
        },
        RoleCommand::RevokePermission {
            name,
            key,
            end,
            prefix,
        } => AuthRequest::RoleRevokePermission {
            role: name,
            range: permission_range(&key, end.as_deref(), prefix),
        },
        RoleCommand::Get { name } => AuthRequest::RoleGet { name },
        RoleCommand::List => AuthRequest::RoleList,
    };
    send(client, request, json)
}

/// Runs `kvctl auth ...`.
pub fn run_auth(client: &Client, command: AuthCommand, json: bool) -> i32 {
    let request = match command {
        AuthCommand::Enable => AuthRequest::Enable,
        AuthCommand::Disable => AuthRequest::Disable,
        AuthCommand::Status => AuthRequest::Status,
    };
    send(client, request, json)
}

fn usage(message: &str) -> i32 {
    eprintln!("kvctl: {message}");
    EXIT_USAGE
}

fn send(client: &Client, request: AuthRequest, json: bool) -> i32 {
    let what = describe(&request);
    match client.auth_request(request) {
        Ok(reply) => {
            print_reply(&what, &reply, json);
            EXIT_OK
        }
        Err(error) => fail(&error, json),
    }
}

/// What a change did, for its confirmation line (etcdctl's wording).
fn describe(request: &AuthRequest) -> String {
    match request {
        AuthRequest::UserAdd { name, .. } => format!("User {name} created"),
        AuthRequest::UserDelete { name } => format!("User {name} deleted"),
        AuthRequest::UserChangePassword { name, .. } => format!("Password of {name} updated"),
        AuthRequest::UserGrantRole { user, role } => {
            format!("Role {role} is granted to user {user}")
        }
        AuthRequest::UserRevokeRole { user, role } => {
            format!("Role {role} is revoked from user {user}")
        }
        AuthRequest::RoleAdd { name } => format!("Role {name} created"),
        AuthRequest::RoleDelete { name } => format!("Role {name} deleted"),
        AuthRequest::RoleGrantPermission { role, grant } => format!(
            "Role {role} updated: {} on {}",
            grant.permission,
            describe_range(&grant.range)
        ),
        AuthRequest::RoleRevokePermission { role, range } => {
            format!(
                "Permission on {} revoked from role {role}",
                describe_range(range)
            )
        }
        AuthRequest::Enable => "Authentication Enabled".into(),
        AuthRequest::Disable => "Authentication Disabled".into(),
        AuthRequest::UserGet { .. }
        | AuthRequest::UserList
        | AuthRequest::RoleGet { .. }
        | AuthRequest::RoleList
        | AuthRequest::Status => String::new(),
    }
}

fn print_reply(what: &str, reply: &AuthReply, json: bool) {
    match reply {
        AuthReply::Changed { revision } => {
            if json {
                println!("{}", json!({ "ok": true, "auth_revision": revision.0 }));
            } else {
                println!("{what}");
            }
        }
        AuthReply::User {
            name,
            roles,
            has_password,
        } => {
            if json {
                println!(
                    "{}",
                    json!({ "user": name, "roles": roles, "has_password": has_password })
                );
            } else {
                println!("User: {name}");
                println!("Roles: {}", roles.join(" "));
                if !has_password {
                    println!("(no password: client certificate only)");
                }
            }
        }
        AuthReply::Role { name, permissions } => {
            if json {
                let permissions: Vec<_> = permissions
                    .iter()
                    .map(|grant| {
                        json!({
                            "permission": grant.permission.name(),
                            "range": describe_range(&grant.range),
                        })
                    })
                    .collect();
                println!("{}", json!({ "role": name, "permissions": permissions }));
            } else {
                println!("Role {name}");
                if name == crate::kv::auth::ROOT_ROLE {
                    println!("(built in: may do everything)");
                }
                for permission in [Permission::Read, Permission::Write, Permission::ReadWrite] {
                    let ranges: Vec<String> = permissions
                        .iter()
                        .filter(|grant| grant.permission == permission)
                        .map(|grant| describe_range(&grant.range))
                        .collect();
                    if !ranges.is_empty() {
                        println!("KV {permission} permission: {}", ranges.join(", "));
                    }
                }
            }
        }
        AuthReply::Names(names) => {
            if json {
                println!("{}", json!(names));
            } else {
                for name in names {
                    println!("{name}");
                }
            }
        }
        AuthReply::Status { enabled, revision } => {
            if json {
                println!(
                    "{}",
                    json!({ "enabled": enabled, "auth_revision": revision.0 })
                );
            } else {
                println!("Authentication Status: {enabled}");
                println!("AuthRevision: {}", revision.0);
            }
        }
    }
}

/// The `--user NAME[:PASSWORD]` flag as credentials; without a password in it, the password
/// comes from `KEYVAL_PASSWORD`.
pub fn credentials(user: &str) -> Result<crate::client::Credentials, String> {
    if let Some((name, password)) = user.split_once(':') {
        return Ok(crate::client::Credentials::new(name, password));
    }
    match std::env::var("KEYVAL_PASSWORD") {
        Ok(password) => Ok(crate::client::Credentials::new(user, password)),
        Err(_) => Err(format!(
            "--user {user:?} has no password: give NAME:PASSWORD or set KEYVAL_PASSWORD"
        )),
    }
}

/// Whether `error` is a refusal of who the client is or what it may do.
pub fn is_denial(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Server(
            crate::protocol::ServerError::PermissionDenied { .. }
                | crate::protocol::ServerError::Unauthenticated { .. }
                | crate::protocol::ServerError::AuthenticationFailed
        )
    )
}
